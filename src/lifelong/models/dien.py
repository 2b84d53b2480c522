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
from lifelong.models.ranking import Candidates, RankingModel, UserState
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


@dataclass
class DIENState(UserState):
    """DIEN's user side: all but the candidate's attention and the AUGRU it drives.

    Attributes:
        history: (B, T, D) behavior embeddings (0 at padding).
        mask: (B, T) bool, True at real behaviors.
        interests: (B, T, H) the interest extractor's states ``h_t`` (0 at padding).
        keys: (B, T, D) ``h_t W``, the user's half of the bilinear attention ``h_t W e_a``.
        evolution_inputs: (B, T, G * H) the AUGRU's input projection of ``h_t``
            (:meth:`AttentionalGRU.project`).
        pooled: (B, D) sum-pooled behaviors.
    """

    history: torch.Tensor
    mask: torch.Tensor
    interests: torch.Tensor
    keys: torch.Tensor
    evolution_inputs: torch.Tensor
    pooled: torch.Tensor


@register(DIENConfig)
class DIEN(RankingModel):
    """GRU interest extractor (+ auxiliary loss) -> target attention -> AUGRU -> MLP -> logit.

    The user side runs the interest extractor once per user; each candidate then costs its attention
    over the interest states and one AUGRU pass (the AUGRU's gates depend on the candidate), which
    reuses the states' input projection.

    Example:
        >>> model = DIEN(DIENConfig(n_items=10, n_cates=4, embedding_dim=4, aux_hidden=(8,), dnn_hidden=(8,)))
        >>> batch = Batch(history_items=torch.tensor([[2, 3, 0]]), history_cates=torch.tensor([[1, 2, 0]]),
        ...               history_mask=torch.tensor([[True, True, False]]), target_items=torch.tensor([4]),
        ...               target_cates=torch.tensor([2]), labels=torch.tensor([1.0]), users=torch.tensor([0]))
        >>> candidates = Candidates(items=torch.tensor([[4, 5, 6]]), cates=torch.tensor([[2, 2, 3]]))
        >>> model.eval().score(model.encode_user(batch), candidates).shape  # 3 candidates, one user
        torch.Size([1, 3])
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

    def attention_scores(self, keys: torch.Tensor, target: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
        """``softmax_t(h_t W e_a)`` over the real steps, for each of K candidates.

        Args:
            keys: (B, T, D) ``h_t W`` (:attr:`DIENState.keys`).
            target: (B, K, D) candidate embeddings ``e_a``.
            mask: (B, T) bool.

        Returns:
            (B, K, T) weights, 0 at padding.
        """
        logits = torch.einsum("btd,bkd->bkt", keys, target)  # (B, K, T)
        weights = torch.softmax(logits.masked_fill(~mask.unsqueeze(1), float("-inf")), dim=-1)
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

    def encode_user(self, batch: Batch) -> DIENState:
        mask = batch.history_mask  # (B, T)
        history = self.embedding(batch.history_items, batch.history_cates)  # (B, T, D)
        interests = self.extract(history, mask)  # (B, T, H)
        return DIENState(
            history=history, mask=mask, interests=interests,
            keys=self.attention(interests),  # (B, T, D)
            evolution_inputs=self.evolution.project(interests),  # (B, T, G*H)
            pooled=(history * mask.unsqueeze(-1)).sum(dim=1),  # (B, D)
        )

    def score(self, state: DIENState, candidates: Candidates) -> torch.Tensor:
        candidates.validate(len(state))
        target = self.embedding(candidates.items, candidates.cates)  # (B, K, D)
        weights = self.attention_scores(state.keys, target, state.mask)  # (B, K, T)
        evolved = self.evolution(None, state.mask, weights, projected=state.evolution_inputs)  # (B, K, H)
        pooled = state.pooled.unsqueeze(1).expand_as(target)  # (B, K, D)
        features = torch.cat([target, pooled, target * pooled, evolved], dim=-1)  # (B, K, 3D + H)
        return self.dnn(features.flatten(0, 1)).view(candidates.items.shape)  # (B, K)

    def forward(self, batch: Batch) -> ModelOutput:
        batch.validate()
        state = self.encode_user(batch)
        logits = self.score(state, Candidates.from_targets(batch)).squeeze(1)  # (B,)
        aux = {}
        if self.training and self.config.aux_weight > 0:
            if batch.history_negative_items is None or batch.history_negative_cates is None:
                raise ValueError("dien: training with aux_weight > 0 needs history_negative_items and "
                                 "history_negative_cates (build the Collator with with_negatives=True), "
                                 "or set aux_weight=0")
            negatives = self.embedding(batch.history_negative_items, batch.history_negative_cates)  # (B, T, D)
            aux["auxiliary"] = self.config.aux_weight * self.auxiliary_loss(state.interests, state.history,
                                                                            negatives, state.mask)
        if self.config.l2_mba > 0 and self.training:
            aux["l2_mba"] = self.config.l2_mba * self.embedding.batch_l2(batch)
        return ModelOutput(logits=logits, aux_losses=aux)
