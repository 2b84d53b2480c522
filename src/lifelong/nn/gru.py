"""GRUs over left-aligned histories: the plain GRU of the DIEN paper's equations and its attentional
variants (AUGRU, AIGRU, AGRU), with padded steps skipped."""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

EVOLUTIONS = ("augru", "aigru", "agru")  # the attentional kinds (DIEN's interest evolving layer)


class TimeMajor:
    """Time-major packing of left-aligned histories, samples sorted longest first (like
    ``PackedSequence``), with gathers and scatters whose gradients are single index operations.

    Example:
        >>> steps = TimeMajor(torch.tensor([[True, False], [True, True]]))
        >>> steps.batch_sizes, steps.order.tolist()
        ([2, 1], [1, 0])
    """

    def __init__(self, mask: torch.Tensor) -> None:
        lengths = mask.sum(dim=1)  # (B,)
        self.order = torch.argsort(lengths, descending=True, stable=True)  # (B,) sorted -> original
        self.inverse = torch.argsort(self.order)  # (B,) original -> sorted
        self.width = mask.shape[1]
        sorted_mask = mask[self.order]  # (B, T), real rows first at every step
        self.step, self.row = sorted_mask.T.nonzero(as_tuple=True)  # (N,), (N,) time-major
        sizes = sorted_mask.sum(dim=0)
        self.batch_sizes = [int(n) for n in sizes[sizes > 0]]

    def gather(self, padded: torch.Tensor) -> torch.Tensor:
        """(B, T, F) batch-first -> (N, F) real steps, time-major."""
        return padded[self.order[self.row], self.step]

    def unpack(self, packed: torch.Tensor) -> torch.Tensor:
        """(N, F) -> (B, T, F) batch-first in the original order, 0 at padding."""
        out = packed.new_zeros(self.order.shape[0], self.width, packed.shape[-1])
        return out.index_put((self.order[self.row], self.step), packed)


class AttentionalGRU(nn.Module):
    """A GRU over left-aligned histories, optionally driven by attention scores ``a_t`` (B, T).

    ``gru`` is the plain GRU of the paper's equations (the interest extractor); ``augru`` scales the
    update gate by ``a_t``; ``agru`` uses ``a_t`` as the update gate; ``aigru`` scales the input by
    ``a_t``. Padded steps are skipped: the state after a history is the state after its last real step.

    Several attention sequences over the same inputs (attention (B, K, T): one per candidate) run as
    ``B * K`` rows that share the inputs' projection, computed once per history (:meth:`project`, which
    a caller may compute once and pass in).

    Args:
        input_size: width of the inputs.
        hidden_size: state width.
        kind: ``gru``, ``augru``, ``aigru`` or ``agru``.

    Example:
        >>> gru = AttentionalGRU(4, 3, "augru")
        >>> gru(torch.randn(2, 5, 4), torch.ones(2, 5, dtype=torch.bool), torch.rand(2, 5)).shape
        torch.Size([2, 3])
        >>> gru(torch.randn(2, 5, 4), torch.ones(2, 5, dtype=torch.bool), torch.rand(2, 7, 5)).shape
        torch.Size([2, 7, 3])
    """

    def __init__(self, input_size: int, hidden_size: int, kind: str = "augru") -> None:
        super().__init__()
        if kind not in ("gru", *EVOLUTIONS):
            raise ValueError(f"kind must be 'gru' or one of {EVOLUTIONS}, got {kind!r}")
        gates = 2 if kind == "agru" else 3  # AGRU has no update gate: (reset, candidate)
        self.kind, self.hidden_size, self.gates = kind, hidden_size, gates
        self.input_proj = nn.Linear(input_size, gates * hidden_size)  # W i + b, every step at once
        self.state_proj = nn.Linear(hidden_size, gates * hidden_size, bias=False)  # U h

    def project(self, inputs: torch.Tensor) -> torch.Tensor:
        """The input side of the gates, ``W i + b``: (..., I) -> (..., G * H). For ``aigru`` it is
        ``W i`` without the bias: the step scales it by ``a_t`` (``W (a_t i) = a_t W i``) and adds ``b``."""
        if self.kind == "aigru":
            return F.linear(inputs, self.input_proj.weight)
        return self.input_proj(inputs)

    def forward(self, inputs: torch.Tensor | None, mask: torch.Tensor, attention: torch.Tensor | None = None,
                initial: torch.Tensor | None = None, all_states: bool = False,
                projected: torch.Tensor | None = None) -> torch.Tensor:
        """Args:
            inputs: (B, T, I); may be None when ``projected`` is given.
            mask: (B, T) bool, True at real steps.
            attention: (B, T) attention scores (0 at padding), or (B, K, T) for K sequences of scores
                over the same inputs; required unless ``kind="gru"``.
            initial: (B, H) initial state (zeros by default).
            all_states: return every step's state instead of the last one (not with (B, K, T) scores).
            projected: (B, T, G * H) :meth:`project` of ``inputs``, when already computed.

        Returns:
            (B, H) the state after the last real step (the initial state for an empty history), (B, K, H)
            for (B, K, T) scores, or (B, T, H) every state (0 at padding) when ``all_states``.
        """
        if self.kind != "gru" and attention is None:
            raise ValueError(f"{self.kind} needs attention scores")
        several = attention is not None and attention.dim() == 3
        if several and all_states:
            raise ValueError("all_states needs one sequence of attention scores per history, (B, T)")
        b, hidden = mask.shape[0], self.hidden_size
        k = attention.shape[1] if several else 1
        steps = TimeMajor(mask)
        # Step s updates only the samples with more than s real behaviors (sorted longest first), so the
        # cost follows the real events, not the padded width. (torch.nn.GRU on a PackedSequence does the
        # same, but its CPU backward zero-fills a full-size gradient per step.)
        packed = self.project(steps.gather(inputs)) if projected is None else steps.gather(projected)  # (N, G*H)
        projected_steps = packed.unsqueeze(1).split(steps.batch_sizes)  # T x (n_s, 1, G*H), shared by the K rows
        if attention is not None:
            scores = attention.reshape(b, k, -1).transpose(1, 2)  # (B, T, K)
            scores = scores[steps.order[steps.row], steps.step].unsqueeze(-1)  # (N, K, 1)
            scores = scores.split(steps.batch_sizes)  # T x (n_s, K, 1)
        if initial is None:
            state = packed.new_zeros(b, k, hidden)
        else:
            state = initial.unsqueeze(1).expand(b, k, hidden)  # (B, K, H)
        sorted_state = state[steps.order]  # (B, K, H)
        gated = (self.gates - 1) * hidden  # reset (and update) gates
        current, finished, outputs = sorted_state, [], []
        for step, n in enumerate(steps.batch_sizes):
            if n < current.shape[0]:  # the shortest histories ended: their state is final
                finished.append(current[n:])
                current = current[:n]
            x = projected_steps[step]  # (n, 1, G*H)
            if self.kind == "aigru":  # W (a_t i_t) + b
                x = torch.addcmul(self.input_proj.bias, scores[step], x)  # (n, K, G*H)
            x_gates, x_candidate = x.split([gated, hidden], dim=-1)
            h_gates, h_candidate = self.state_proj(current).split([gated, hidden], dim=-1)  # (n, K, (G-1)*H), (n, K, H)
            gates = torch.sigmoid(x_gates + h_gates)
            if self.kind == "agru":
                reset, update = gates, scores[step]  # (n, K, H), (n, K, 1)
            else:
                reset, update = gates.chunk(2, dim=-1)
                if self.kind == "augru":
                    update = scores[step] * update
            candidate = torch.tanh(torch.addcmul(x_candidate, reset, h_candidate))  # (n, K, H)
            current = torch.lerp(current, candidate, update)  # (1 - u) h + u h~
            outputs.append(current)
        if all_states:
            if not outputs:
                return packed.new_zeros(*mask.shape, hidden)
            return steps.unpack(torch.cat(outputs).squeeze(1))  # (B, T, H)
        if steps.batch_sizes:
            sorted_state = torch.cat([current, *reversed(finished)])  # longest first again
        final = sorted_state[steps.inverse]  # (B, K, H)
        return final if several else final.squeeze(1)
