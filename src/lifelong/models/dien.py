"""DIEN: Deep Interest Evolution Network.

Paper: Zhou et al., "Deep Interest Evolution Network for Click-Through Rate Prediction", AAAI 2019.
Mechanism:
  - interest extractor: a GRU over the behaviors gives one interest state ``h_t`` per behavior;
  - auxiliary loss: ``h_t`` is supervised with the next clicked behavior ``e[t+1]`` against a sampled
    item the user never clicked (``L = L_target + alpha * L_aux``, alpha = 1 in the paper); the data
    pipeline draws the negatives with the run's seed (:func:`lifelong.batch.event_negatives`);
  - attention of the target over the interest states, ``a_t = softmax_t(h_t W e_a)`` (the paper's
    bilinear form), over the real behaviors only;
  - interest evolving layer: AUGRU, a GRU whose update gate is scaled by ``a_t``
    (``u~_t = a_t * u_t; h'_t = (1 - u~_t) h'_{t-1} + u~_t h~_t``); AIGRU (``i'_t = a_t h_t`` into a
    plain GRU) and AGRU (``a_t`` replaces the update gate) as ablation options;
  - the final evolved interest ``h'_T`` goes with the target into an MLP.

Deviations:
  - The MLP input is ``[target, sum-pooled behaviors, target * sum-pooled, h'_T]``, as in the authors'
    released model (``Model_DIN_V2_Gru_Vec_attGru_Neg``); the paper text names ``h'_T`` with the ad,
    profile and context embeddings (no profile or context features exist here; no user-id embedding).
  - The auxiliary classifier is the released code's small MLP on ``[h_t, e]`` (100 -> 50, sigmoid,
    without its batch norm) rather than the paper's inner product ``sigma(h_t . e)``, which would tie
    the GRU width to the embedding width.
  - ``L_aux`` is the mean over the supervised steps of the batch (steps ``t`` whose next behavior is
    real), not the sum over steps, so its scale does not grow with history length.
  - Negatives are drawn uniformly from the items the user never interacted with (in the whole
    prepared log, validation and test events included), one per event, fixed for the run (the
    released code draws from the review list, i.e. by frequency, per position).
  - Both GRUs follow the paper's equations (biases outside the reset gate); they skip padded steps.
  - Optional mini-batch aware L2 regulariser of the DIN paper (``l2_mba``), as in din.py, over the
    ids of the histories and targets (not over the sampled negatives).
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import nn

from lifelong.batch import Batch
from lifelong.models.registry import ModelConfig, ModelOutput, register
from lifelong.nn import ACTIVATIONS, MLP, BehaviorEmbedding

EVOLUTIONS = ("augru", "aigru", "agru")


@dataclass
class DIENConfig(ModelConfig):
    """Args:
        embedding_dim: size of each id embedding (a behavior is 2x this: item and category).
        hidden_size: width of both GRUs (0 = the behavior width, as the released code).
        evolution: ``augru`` (paper), ``aigru`` or ``agru`` (ablations).
        aux_weight: alpha, the weight of the auxiliary loss (1.0 in the paper; 0 switches it off).
        aux_hidden: hidden sizes of the auxiliary classifier.
        dnn_hidden: MLP sizes of the final predictor.
        dnn_activation: ``dice`` as in the released code.
        dropout: dropout after each MLP layer.
        l2_mba: weight of the mini-batch aware L2 regulariser (0 = off).
    """

    model_type = "dien"
    hidden_size: int = 0
    evolution: str = "augru"
    aux_weight: float = 1.0
    aux_hidden: tuple[int, ...] = (100, 50)
    dnn_hidden: tuple[int, ...] = (200, 80)
    dnn_activation: str = "dice"
    dropout: float = 0.0
    l2_mba: float = 0.0

    def validate(self) -> None:
        super().validate()
        if self.evolution not in EVOLUTIONS:
            raise ValueError(f"dien: evolution must be one of {EVOLUTIONS}, got {self.evolution!r}")
        if self.dnn_activation not in ACTIVATIONS:
            raise ValueError(f"dien: dnn_activation must be one of {ACTIVATIONS}, got {self.dnn_activation!r}")
        if self.hidden_size < 0 or self.aux_weight < 0 or self.l2_mba < 0 or not 0.0 <= self.dropout < 1.0:
            raise ValueError("dien: hidden_size, aux_weight and l2_mba must be non-negative, dropout in [0, 1)")

    def batch_needs(self) -> dict[str, bool]:
        return {"with_negatives": self.aux_weight > 0}


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

    Args:
        input_size: width of the inputs.
        hidden_size: state width.
        kind: ``gru``, ``augru``, ``aigru`` or ``agru``.

    Example:
        >>> gru = AttentionalGRU(4, 3, "augru")
        >>> gru(torch.randn(2, 5, 4), torch.ones(2, 5, dtype=torch.bool), torch.rand(2, 5)).shape
        torch.Size([2, 3])
    """

    def __init__(self, input_size: int, hidden_size: int, kind: str = "augru") -> None:
        super().__init__()
        if kind not in ("gru", *EVOLUTIONS):
            raise ValueError(f"kind must be 'gru' or one of {EVOLUTIONS}, got {kind!r}")
        gates = 2 if kind == "agru" else 3  # AGRU has no update gate: (reset, candidate)
        self.kind, self.hidden_size, self.gates = kind, hidden_size, gates
        self.input_proj = nn.Linear(input_size, gates * hidden_size)  # W i + b, every step at once
        self.state_proj = nn.Linear(hidden_size, gates * hidden_size, bias=False)  # U h

    def forward(self, inputs: torch.Tensor, mask: torch.Tensor, attention: torch.Tensor | None = None,
                initial: torch.Tensor | None = None, all_states: bool = False) -> torch.Tensor:
        """Args:
            inputs: (B, T, I).
            mask: (B, T) bool, True at real steps.
            attention: (B, T) attention scores (0 at padding); required unless ``kind="gru"``.
            initial: (B, H) initial state (zeros by default).
            all_states: return every step's state instead of the last one.

        Returns:
            (B, H) the state after the last real step (the initial state for an empty history), or
            (B, T, H) every state (0 at padding) when ``all_states``.
        """
        b = inputs.shape[0]
        if self.kind != "gru" and attention is None:
            raise ValueError(f"{self.kind} needs attention scores")
        if self.kind == "aigru":
            inputs = inputs * attention.unsqueeze(-1)
        state = inputs.new_zeros(b, self.hidden_size) if initial is None else initial
        steps = TimeMajor(mask)
        # Step s updates only the samples with more than s real behaviors (sorted longest first), so the
        # cost follows the real events, not the padded width. (torch.nn.GRU on a PackedSequence does the
        # same, but its CPU backward zero-fills a full-size gradient per step.)
        projected = self.input_proj(steps.gather(inputs)).split(steps.batch_sizes)  # T x (n_s, G*H)
        if attention is not None:
            scores = attention[steps.order[steps.row], steps.step].unsqueeze(-1).split(steps.batch_sizes)  # T x (n_s, 1)
        sorted_state = state[steps.order]  # (B, H)
        current, finished, outputs = sorted_state, [], []
        for step, n in enumerate(steps.batch_sizes):
            if n < current.shape[0]:  # the shortest histories ended: their state is final
                finished.append(current[n:])
                current = current[:n]
            x_parts = projected[step].chunk(self.gates, dim=-1)
            h_parts = self.state_proj(current).chunk(self.gates, dim=-1)
            reset = torch.sigmoid(x_parts[0] + h_parts[0])  # (n, H)
            candidate = torch.tanh(x_parts[-1] + reset * h_parts[-1])  # (n, H)
            if self.kind == "agru":
                update = scores[step]  # (n, 1)
            else:
                update = torch.sigmoid(x_parts[1] + h_parts[1])
                if self.kind == "augru":
                    update = scores[step] * update
            current = (1 - update) * current + update * candidate
            outputs.append(current)
        if all_states:
            if not outputs:
                return inputs.new_zeros(*mask.shape, self.hidden_size)
            return steps.unpack(torch.cat(outputs))  # (B, T, H)
        if steps.batch_sizes:
            sorted_state = torch.cat([current, *reversed(finished)])  # longest first again
        return sorted_state[steps.inverse]  # (B, H)


@register(DIENConfig)
class DIEN(nn.Module):
    """GRU interest extractor (+ auxiliary loss) -> target attention -> AUGRU -> MLP -> logit.

    Example:
        >>> model = DIEN(DIENConfig(n_items=10, n_cates=4, embedding_dim=4, aux_hidden=(8,), dnn_hidden=(8,)))
    """

    def __init__(self, config: DIENConfig) -> None:
        super().__init__()
        self.config = config
        self.embedding = BehaviorEmbedding(config.n_items, config.n_cates, config.embedding_dim)
        width = self.embedding.out_dim
        hidden = config.hidden_size or width
        self.extractor = AttentionalGRU(width, hidden, "gru")
        self.attention = nn.Linear(hidden, width, bias=False)  # the bilinear W of h_t W e_a
        self.evolution = AttentionalGRU(hidden, hidden, config.evolution)
        if config.aux_weight > 0:
            self.aux_net = MLP(hidden + width, list(config.aux_hidden), "sigmoid", out_dim=1)
        self.dnn = MLP(3 * width + hidden, list(config.dnn_hidden), config.dnn_activation, out_dim=1,
                       dropout=config.dropout)

    def extract(self, history: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
        """The interest extractor GRU over the real behaviors only: (B, T, D) -> (B, T, H), 0 at padding."""
        return self.extractor(history, mask, all_states=True)

    def attention_scores(self, states: torch.Tensor, target: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
        """``softmax_t(h_t W e_a)`` over the real steps: (B, T, H), (B, D), (B, T) -> (B, T), 0 at padding."""
        logits = torch.einsum("btd,bd->bt", self.attention(states), target)  # (B, T)
        weights = torch.softmax(logits.masked_fill(~mask, float("-inf")), dim=1)
        return weights.nan_to_num(0.0)  # an empty history gives all zeros

    def auxiliary_loss(self, states: torch.Tensor, next_clicked: torch.Tensor, next_negative: torch.Tensor,
                       mask: torch.Tensor) -> torch.Tensor:
        """The mean over supervised steps of ``-log s(h_t, e[t+1]) - log(1 - s(h_t, e^[t+1]))``.

        Args:
            states: (B, T, H) interest states ``h_t``.
            next_clicked: (B, T, D) embeddings of the behaviors (``e[t]``; step ``t`` uses ``t + 1``).
            next_negative: (B, T, D) embeddings of each behavior's sampled negative.
            mask: (B, T) bool, True at real behaviors.

        Returns:
            A scalar; steps whose next behavior is padding (and padded steps) get no gradient.
        """
        supervised = mask[:, :-1] & mask[:, 1:]  # (B, T-1): h_t with a real e[t+1]
        if not bool(supervised.any()):
            return states.new_zeros(())
        rows, steps = supervised.nonzero(as_tuple=True)  # (N,), (N,)
        h = states[rows, steps]  # (N, H)
        positive = self.aux_net(torch.cat([h, next_clicked[rows, steps + 1]], dim=-1)).squeeze(-1)  # (N,)
        negative = self.aux_net(torch.cat([h, next_negative[rows, steps + 1]], dim=-1)).squeeze(-1)  # (N,)
        return F.binary_cross_entropy_with_logits(positive, torch.ones_like(positive)) + \
            F.binary_cross_entropy_with_logits(negative, torch.zeros_like(negative))

    def forward(self, batch: Batch) -> ModelOutput:
        batch.validate()
        mask = batch.history_mask  # (B, T)
        history = self.embedding(batch.history_items, batch.history_cates)  # (B, T, D)
        target = self.embedding(batch.target_items, batch.target_cates)  # (B, D)
        states = self.extract(history, mask)  # (B, T, H)
        weights = self.attention_scores(states, target, mask)  # (B, T)
        evolved = self.evolution(states, mask, weights)  # (B, H)
        pooled = (history * mask.unsqueeze(-1)).sum(dim=1)  # (B, D)
        logits = self.dnn(torch.cat([target, pooled, target * pooled, evolved], dim=-1)).squeeze(-1)  # (B,)
        aux = {}
        if self.training and self.config.aux_weight > 0:
            if batch.history_negative_items is None or batch.history_negative_cates is None:
                raise ValueError("dien: training with aux_weight > 0 needs history_negative_items and "
                                 "history_negative_cates (build the Collator with with_negatives=True), "
                                 "or set aux_weight=0")
            negatives = self.embedding(batch.history_negative_items, batch.history_negative_cates)  # (B, T, D)
            aux["auxiliary"] = self.config.aux_weight * self.auxiliary_loss(states, history, negatives, mask)
        if self.config.l2_mba > 0 and self.training:
            aux["l2_mba"] = self.config.l2_mba * self.embedding.batch_l2(batch)
        return ModelOutput(logits=logits, aux_losses=aux)
