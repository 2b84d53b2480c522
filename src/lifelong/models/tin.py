"""TIN: Temporal Interest Network.

Paper: Zhou, Pan et al., "Temporal Interest Network for User Response Prediction", arXiv 2308.08487
(WWW'24 companion); official code ``zhouxy1003/TIN``.
Mechanism:
  - Target-aware temporal encoding (TTE): every behavior and the target get a temporal embedding
    relative to the target, either its position (TTE-P: target 0, most recent behavior 1, ...) or
    its discretised time interval to the target (TTE-T: target bucket 0).
  - Target-aware attention (TA): ``alpha_i = softmax_i(<e~_i, v~_t> / sqrt(d))``, a scaled dot product
    over the real behaviors (no MLP).
  - Target-aware representation (TR): ``u = sum_i alpha_i (e~_i * v~_t)``, the explicit 4-way
    interaction of behavior semantics, target semantics, behavior time and target time.
  - ``u`` and the target embedding go through an MLP to the click logit.

Deviations:
  - The temporal embedding is *added* to the semantic embedding (``e~_i = e_i + p_i``,
    ``v~_t = v_t + p_0``) as in the released code; the paper writes a concatenation (⊕).
  - The prediction MLP takes ``[u, v_t]`` with Dice layers (200, 80) like DIN; the released code
    uses BN -> Dense(128) -> [u, i, u*i] -> 80 sigmoid -> 40 sigmoid plus an item bias.
  - TTE-T buckets are ``1 + floor(log2(1 + gap_seconds / 60))`` clipped to ``n_buckets - 1``
    (target 0); the paper does not give its discretisation. ``temporal_encoding="both"`` sums the
    two encodings and ``"none"`` (ablation) uses no temporal table; both are options, not the paper's.
  - Relative positions beyond ``max_positions - 1`` share the last row (the released table has 431).
  - A behavior is its item and category embeddings concatenated, plus the dataset's declared features
    (:class:`lifelong.nn.features.FeatureEmbedding`: attribute bag, content vector, the event's
    behavior type added); the user features join ``u`` and the target at the MLP's input. The optional mini-batch aware L2 regulariser on the embeddings is DIN's (as in din.py).
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import torch
from torch import nn

from lifelong.batch import Batch
from lifelong.models.ranking import Candidates, RankingConfig, RankingModel, UserState, with_user
from lifelong.models.registry import ModelOutput, register
from lifelong.nn import ACTIVATIONS, MLP, relative_positions
from lifelong.nn.features import FeatureEmbedding

TEMPORAL_ENCODINGS = ("position", "interval", "both", "none")


@dataclass
class TINConfig(RankingConfig):
    """Args:
        embedding_dim: size of each id embedding (a behavior is 2x this: item and category).
        temporal_encoding: ``position`` (TTE-P), ``interval`` (TTE-T), ``both`` (their sum) or ``none``.
        max_positions: rows of the position table; larger relative positions are clipped to the last.
        n_buckets: rows of the interval table (bucket 0 is the target).
        dnn_hidden: MLP sizes after the concatenation of ``u`` and the target.
        dnn_activation: activation of the MLP (``dice`` like DIN).
        dropout: dropout after each MLP layer.
        l2_mba: weight of the mini-batch aware L2 regulariser (0 = off).
    """

    model_type = "tin"
    temporal_encoding: str = "position"
    max_positions: int = 512
    n_buckets: int = 32
    dnn_hidden: tuple[int, ...] = (200, 80)
    dnn_activation: str = "dice"
    dropout: float = 0.0
    l2_mba: float = 0.0

    def validate(self) -> None:
        super().validate()
        if self.temporal_encoding not in TEMPORAL_ENCODINGS:
            raise ValueError(f"tin: temporal_encoding must be one of {TEMPORAL_ENCODINGS}, "
                             f"got {self.temporal_encoding!r}")
        if self.max_positions < 2:
            raise ValueError(f"tin: max_positions must be at least 2 (target and one behavior), "
                             f"got {self.max_positions}")
        if self.n_buckets < 2:
            raise ValueError(f"tin: n_buckets must be at least 2 (target and one interval), got {self.n_buckets}")
        if self.dnn_activation not in ACTIVATIONS:
            raise ValueError(f"tin: dnn_activation must be one of {ACTIVATIONS}, got {self.dnn_activation!r}")
        if not 0.0 <= self.dropout < 1.0 or self.l2_mba < 0:
            raise ValueError("tin: dropout must be in [0, 1) and l2_mba non-negative")

    @property
    def uses_position(self) -> bool:
        return self.temporal_encoding in ("position", "both")

    @property
    def uses_interval(self) -> bool:
        return self.temporal_encoding in ("interval", "both")

    def batch_needs(self) -> dict:
        return {**super().batch_needs(), **({"with_timestamps": True} if self.uses_interval else {})}


def interval_buckets(timestamps: torch.Tensor, history_timestamps: torch.Tensor, mask: torch.Tensor,
                     n_buckets: int) -> torch.Tensor:
    """Log2 buckets of the time between each behavior and the target.

    Args:
        timestamps: (B,) sample time, unix seconds.
        history_timestamps: (B, T) behavior times, unix seconds.
        mask: (B, T) bool.
        n_buckets: table rows; bucket 0 is the target.

    Returns:
        (B, T) int64 ``1 + floor(log2(1 + gap / 60))`` clipped to ``n_buckets - 1``; 0 at padding.
    """
    gap = (timestamps[:, None] - history_timestamps).clamp(min=0).double()  # (B, T) seconds
    buckets = 1 + torch.floor(torch.log2(1 + gap / 60.0)).long()
    return torch.where(mask, buckets.clamp(max=n_buckets - 1), torch.zeros_like(buckets))


@dataclass
class TINState(UserState):
    """TIN's user side.

    Attributes:
        history: (B, T, 2E) behavior embeddings plus their position encoding ``e_i + p_i`` (the plain
            embeddings without TTE-P).
        mask: (B, T) bool, True at real behaviors.
        history_timestamps: (B, T) int64 behavior times, unix seconds (TTE-T buckets them against the
            scoring time), or None without TTE-T.
        user: (B, U) user features, or None.
    """

    history: torch.Tensor
    mask: torch.Tensor
    history_timestamps: torch.Tensor | None
    user: torch.Tensor | None = None


@register(TINConfig)
class TIN(RankingModel):
    """Target-aware temporal encoding + target-aware attention and representation -> MLP -> logit.

    The user side is the behaviors with their position encoding; the interval encoding depends on the
    time the candidates are scored at, so it is added on the candidate side (one (B, T) lookup per
    call, shared by the user's candidates). Each candidate then costs a dot product and a weighted sum
    over the behaviors: ``u = sum_i alpha_i (e~_i * v~_t) = (sum_i alpha_i e~_i) * v~_t``.

    Example:
        >>> model = TIN(TINConfig(n_items=10, n_cates=4, embedding_dim=4, dnn_hidden=(8,)))
        >>> batch = Batch(history_items=torch.tensor([[2, 3, 0]]), history_cates=torch.tensor([[1, 2, 0]]),
        ...               history_mask=torch.tensor([[True, True, False]]), target_items=torch.tensor([4]),
        ...               target_cates=torch.tensor([2]), labels=torch.tensor([1.0]), users=torch.tensor([0]))
        >>> candidates = Candidates(items=torch.tensor([[4, 5, 6]]), cates=torch.tensor([[2, 2, 3]]))
        >>> model.eval().score(model.encode_user(batch), candidates).shape  # 3 candidates, one user
        torch.Size([1, 3])
    """

    def __init__(self, config: TINConfig) -> None:
        super().__init__()
        self.config = config
        self.embedding = FeatureEmbedding.of(config)
        width = self.embedding.out_dim
        self.position = nn.Embedding(config.max_positions, width) if config.uses_position else None
        self.interval = nn.Embedding(config.n_buckets, width) if config.uses_interval else None
        for table in (self.position, self.interval):
            if table is not None:
                nn.init.normal_(table.weight, std=1e-2)
        self.dnn = MLP(2 * width + self.embedding.user_dim, list(config.dnn_hidden), config.dnn_activation, out_dim=1,
                       dropout=config.dropout)

    def position_embeddings(self, mask: torch.Tensor) -> torch.Tensor | None:
        """TTE-P of the behaviors: (B, T) mask -> (B, T, 2E) rows ``l - t`` (clipped), or None."""
        if self.position is None:
            return None
        return self.position(relative_positions(mask).clamp(max=self.config.max_positions - 1))

    def interval_embeddings(self, timestamps: torch.Tensor | None, history_timestamps: torch.Tensor,
                            mask: torch.Tensor) -> torch.Tensor | None:
        """TTE-T of the behaviors scored at ``timestamps`` (B,): (B, T, 2E), or None without TTE-T."""
        if self.interval is None:
            return None
        if timestamps is None:
            raise ValueError("tin: temporal_encoding='interval'/'both' needs the scoring time (batch.timestamps, "
                             "or candidates.timestamps) and batch.history_timestamps; build the collator with "
                             "with_timestamps=True (config.batch_needs() says so)")
        return self.interval(interval_buckets(timestamps, history_timestamps, mask, self.config.n_buckets))

    def target_temporal(self) -> torch.Tensor | None:
        """The target's temporal embedding (2E,): row 0 of each temporal table, or None."""
        rows = [table.weight[0] for table in (self.position, self.interval) if table is not None]
        return sum(rows) if rows else None

    def encode_user(self, batch: Batch) -> TINState:
        history = self.embedding.history(batch)  # (B, T, 2E)
        positions = self.position_embeddings(batch.history_mask)
        if positions is not None:
            history = history + positions  # e_i + p_i
        if self.interval is not None and batch.history_timestamps is None:
            raise ValueError("tin: temporal_encoding='interval'/'both' needs batch.history_timestamps and "
                             "batch.timestamps; build the collator with with_timestamps=True "
                             "(config.batch_needs() says so)")
        return TINState(history=history, mask=batch.history_mask,
                        history_timestamps=batch.history_timestamps if self.interval is not None else None,
                        user=self.embedding.user(batch))

    def attend(self, state: TINState, candidates: Candidates) -> dict[str, torch.Tensor]:
        """The candidate side's intermediate tensors: ``history`` e~ (B, T, 2E), ``target`` v~ (B, K, 2E),
        ``plain_target`` v (B, K, 2E), ``weights`` alpha (B, K, T) and ``interest`` u (B, K, 2E)."""
        plain_target = self.embedding.candidates(candidates)  # (B, K, 2E)
        history, target = state.history, plain_target
        intervals = self.interval_embeddings(candidates.timestamps, state.history_timestamps, state.mask)
        if intervals is not None:
            history = history + intervals  # (B, T, 2E)  e~_i = e_i + p_i
        target_time = self.target_temporal()
        if target_time is not None:
            target = target + target_time  # (B, K, 2E)  v~_t = v_t + p_0
        mask = state.mask.unsqueeze(1)  # (B, 1, T)
        scores = torch.einsum("btd,bkd->bkt", history, target) / math.sqrt(history.shape[-1])  # (B, K, T)
        scores = scores.masked_fill(~mask, torch.finfo(scores.dtype).min)
        weights = torch.softmax(scores, dim=-1) * mask  # (B, K, T), exactly 0 at padding
        interest = (weights @ history) * target  # (B, K, 2E)  sum_i alpha_i (e~_i * v~_t)
        return {"history": history, "target": target, "plain_target": plain_target,
                "weights": weights, "interest": interest}

    def score(self, state: TINState, candidates: Candidates) -> torch.Tensor:
        candidates.validate(len(state))
        parts = self.attend(state, candidates)
        features = torch.cat([parts["interest"], parts["plain_target"]], dim=-1)  # (B, K, 4E)
        return self.dnn(with_user(features, state.user).flatten(0, 1)).view(candidates.items.shape)  # (B, K)

    def forward(self, batch: Batch) -> ModelOutput:
        batch.validate()
        logits = self.score(self.encode_user(batch), Candidates.from_targets(batch)).squeeze(1)  # (B,)
        aux = {}
        if self.config.l2_mba > 0 and self.training:
            aux["l2_mba"] = self.config.l2_mba * self.embedding.batch_l2(batch)
        return ModelOutput(logits=logits, aux_losses=aux)
