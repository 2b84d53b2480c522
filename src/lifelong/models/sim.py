"""SIM: Search-based user Interest Modeling.

Paper: Pi, Zhou et al., "Search-based User Interest Modeling with Lifelong Sequential Behavior Data for
Click-Through Rate Prediction", CIKM 2020 (arXiv 2006.05639).
Mechanism: two cascaded units over the lifelong history.

- General search unit (GSU), one of
  - ``search="hard"``: the behaviors of the candidate's category (the paper's User Behavior Tree,
    user -> category -> behaviors). ``encode_user`` builds the per-user category index: the history's
    positions sorted by (category, time); a candidate finds its category's run by binary search and
    takes its last ``top_k`` events (the most recent), ``O(log L + k)`` per candidate;
  - ``search="soft"``: ``r_i = (W_b e_i) . (W_a e_a)``, the top ``top_k`` by inner product (the paper's
    MIPS). ``W_b e_i`` is projected once per behavior in ``encode_user``; a candidate costs one
    matrix-vector product over the history and a top-k. The search embeddings are trained by the
    paper's auxiliary CTR task on the long-term sequence: ``U_r = sum_i r_i e_i`` and the target into an
    MLP, its logloss added to the model's (``L = alpha L_GSU + beta L_ESU``, ``alpha = aux_weight``,
    ``beta = 1``).
- Exact search unit (ESU): multi-head target attention over the retrieved ``[e_i, d_i]``, ``d_i`` an
  embedding of the time gap between the behavior and the scoring time (``time_gap``, the deployed
  "SIM hard + timeinfo").

The overall model is the paper's: a DIN over the last ``short_length`` events (the short-term interest),
the ESU's long-term interest, the target and the user features -> MLP (Dice) -> logit.

Deviations:
  - The search is not differentiable (as in the paper): it runs without gradients, and only the
    retrieved events are embedded with gradients, so training never holds a (B, L, W) tensor for the
    gradient (the soft search's keys, (B, L, search_dim), are computed in chunks without gradients).
    The auxiliary loss reads every event of the long sequence, so it is computed in chunks under
    activation checkpointing: ``U_r = M (W_a e_a)`` with ``M = sum_i e_i (W_b e_i)^T``, one (W,
    search_dim) matrix per user; backward embeds each chunk again instead of keeping it.
  - ``U_r`` is divided by the number of behaviors (a mean, not the paper's sum), so its scale does not
    grow with the history's length.
  - Hard search keeps the ``top_k`` most recent events of the category (the paper caps the retrieved
    set, K <= 200, without saying which are kept). A candidate of a category the user never touched
    retrieves nothing: its long-term interest is 0.
  - Soft search: ties in ``r_i`` are broken towards the most recent event
    (:func:`lifelong.nn.search.top_k_events`). The GSU and ESU share the id embeddings (one
    :class:`lifelong.nn.features.FeatureEmbedding`).
  - Soft search without gradients (evaluation, serving): the history is grouped by distinct event
    (item, category, context: equal events score equally) when those are at most half the events, as in
    lifelong histories; each is projected once and a candidate costs one product per distinct event,
    then at most ``top_k`` events read from the best (:func:`lifelong.nn.search.top_k_distinct`); the
    same selection (tested). ``distinct=False`` projects every event.
  - Time gaps are TIN's log2-minute buckets (:func:`lifelong.models.tin.interval_buckets`), embedded and
    concatenated to the event (the paper's ``e_i ⊕ d_i``); ``top_k`` defaults to 100.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import nn
from torch.utils.checkpoint import checkpoint

from lifelong.batch import Batch
from lifelong.models.long_sequence import (
    LongSequenceModel, LongSequenceState, TwoStageConfig, event_fields, exact_interest,
)
from lifelong.models.ranking import Candidates
from lifelong.models.registry import register
from lifelong.nn import MLP
from lifelong.nn.search import (
    NEGATIVE, DistinctKeys, ExactAttention, embed_events, top_k_distinct, top_k_events,
)


@dataclass
class SIMConfig(TwoStageConfig):
    """Args:
        search: ``hard`` (same category as the candidate) or ``soft`` (inner product of projections).
        search_dim: width of the soft search's projections ``W_a``, ``W_b``.
        aux_weight: ``alpha``, the weight of the soft search's auxiliary loss.
        aux_hidden: the auxiliary MLP's hidden sizes (ReLU).
        distinct: soft search without gradients (evaluation, serving): project each distinct event (item,
            category, context) once and search over the distinct ones when they are at most half the
            history (the same selection).
        (and :class:`TwoStageConfig`'s ``top_k``, ESU heads, time gap, short sequence and MLP fields.)
    """

    model_type = "sim"
    search: str = "hard"
    search_dim: int = 32
    aux_weight: float = 1.0
    aux_hidden: tuple[int, ...] = (64, 32)
    distinct: bool = True

    def validate(self) -> None:
        super().validate()
        if self.search not in ("hard", "soft"):
            raise ValueError(f"sim: search must be 'hard' or 'soft', got {self.search!r}")
        if self.search_dim < 1 or self.aux_weight < 0:
            raise ValueError(f"sim: search_dim must be positive and aux_weight non-negative, "
                             f"got {self.search_dim} and {self.aux_weight}")


@dataclass
class SIMState(LongSequenceState):
    """SIM's user side: the history (see :class:`LongSequenceState`) and its search index.

    Attributes:
        sorted_cates: (B, T) int64 (hard search) the history's categories sorted by (category, time),
            padding last (as ``n_cates``, above every category); None for soft search.
        cate_order: (B, T) int64 (hard search) the position of each of them.
        search_keys: (B, search_dim + 1, T) (soft search) ``W_b e_i`` and a last row that is 0 at real
            events and a large negative at padding (so one product scores and masks), transposed (the
            layout of the search's product); None for hard. With ``distinct``: (B, search_dim, D), one
            column per distinct event.
        distinct: (soft search without gradients) the history grouped by event
            (:func:`lifelong.nn.search.distinct_keys`), or None.
    """

    sorted_cates: torch.Tensor | None = None
    cate_order: torch.Tensor | None = None
    search_keys: torch.Tensor | None = None
    distinct: DistinctKeys | None = None


@register(SIMConfig)
class SIM(LongSequenceModel):
    """Short-term DIN + GSU (hard or soft search) + ESU over the retrieved events -> MLP -> logit.

    Example:
        >>> model = SIM(SIMConfig(n_items=10, n_cates=4, embedding_dim=4, top_k=2, short_length=2,
        ...                       time_gap=False, attention_hidden=(4,), dnn_hidden=(8,)))
        >>> batch = Batch(history_items=torch.tensor([[2, 3, 5]]), history_cates=torch.tensor([[2, 3, 2]]),
        ...               history_mask=torch.tensor([[True, True, True]]), target_items=torch.tensor([4]),
        ...               target_cates=torch.tensor([2]), labels=torch.tensor([1.0]), users=torch.tensor([0]))
        >>> candidates = Candidates(items=torch.tensor([[4, 5, 6]]), cates=torch.tensor([[2, 2, 3]]))
        >>> model.eval().score(model.encode_user(batch), candidates).shape
        torch.Size([1, 3])
    """

    state_class = SIMState

    def __init__(self, config: SIMConfig) -> None:
        super().__init__(config)
        width = self.embedding.out_dim
        self.esu = ExactAttention(width, config.heads, "concat" if config.time_gap else "none", config.gap_buckets)
        if config.search == "soft":
            self.search_history = nn.Linear(width, config.search_dim, bias=False)  # W_b
            self.search_target = nn.Linear(width, config.search_dim, bias=False)  # W_a
            self.aux_dnn = MLP(2 * width, list(config.aux_hidden), "relu", out_dim=1)
        self.build_head(self.esu.out_dim)

    def encode_long(self, batch: Batch, history: LongSequenceState) -> dict:
        if self.config.search == "hard":
            t = history.items.shape[1]
            cates = torch.where(history.mask, history.cates, self.config.n_cates)  # padding after every category
            positions = torch.arange(t, device=cates.device)
            sorted_keys, order = torch.sort(cates * t + positions, dim=1)  # (category, time), unique
            return {"sorted_cates": torch.div(sorted_keys, t, rounding_mode="floor"), "cate_order": order}

        if self.config.distinct and not torch.is_grad_enabled():
            found = self.distinct_history(history, self.config.top_k)
            if found is not None:
                grouped, events = found  # (B, D, W)
                keys = self.search_history(events) * (grouped.first >= 0).unsqueeze(-1)  # (B, D, search_dim)
                return {"search_keys": keys.transpose(1, 2).contiguous(), "distinct": grouped,
                        "distinct_events": events}

        def keys(events: torch.Tensor) -> torch.Tensor:  # (B, n, W) -> (B, n, D + 1); padding fixed below
            return torch.cat([self.search_history(events), torch.zeros_like(events[..., :1])], dim=-1)

        search_keys = self.history_keys(history, keys, transposed=True)  # (B, D + 1, T) W_b e_i and 0
        search_keys[:, -1].masked_fill_(~history.mask, NEGATIVE)
        return {"search_keys": search_keys}

    def search(self, state: SIMState, candidates: Candidates, target: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """The GSU: (B, K, n) positions of each candidate's retrieved events and their (B, K, n) validity."""
        k = min(self.config.top_k, state.items.shape[1])
        if self.config.search == "hard":
            query = candidates.cates.to(state.sorted_cates.dtype).contiguous()  # (B, K)
            start = torch.searchsorted(state.sorted_cates, query, side="left")  # (B, K) the category's run
            end = torch.searchsorted(state.sorted_cates, query, side="right")
            slots = end.unsqueeze(-1) - k + torch.arange(k, device=query.device)  # (B, K, k) its last k
            valid = slots >= start.unsqueeze(-1)
            rows = torch.arange(len(query), device=query.device).view(-1, 1, 1)
            return state.cate_order[rows, slots.clamp(min=0)], valid
        with torch.no_grad():
            if state.distinct is not None:  # r_i per distinct event; its events differ by recency alone
                grouped = state.distinct
                base = torch.bmm(self.search_target(target), state.search_keys)  # (B, K, D)
                return top_k_distinct(base, None, grouped, state.mask.shape[1], self.config.top_k)
            query = torch.cat([self.search_target(target), torch.ones_like(target[..., :1])], dim=-1)  # (B, K, D + 1)
            scores = torch.bmm(query, state.search_keys)  # (B, K, T) r_i, padding NEGATIVE
        index = top_k_events(scores, k)
        return index, torch.ones_like(index, dtype=torch.bool)

    def long_interest(self, state: SIMState, candidates: Candidates, target: torch.Tensor) -> torch.Tensor:
        index, valid = self.search(state, candidates, target)
        return exact_interest(self, state, candidates, target, index, valid)

    def aux_losses(self, batch: Batch, state: SIMState) -> dict[str, torch.Tensor]:
        """Soft search: the GSU's own CTR loss on the long-term sequence, ``alpha * logloss(MLP([U_r, e_a]))``."""
        if self.config.search != "soft" or self.config.aux_weight == 0:
            return {}
        b, t = batch.history_items.shape
        chunk = self.config.chunk_length
        moments = 0
        for start in range(0, t, chunk):  # M = sum_i e_i (W_b e_i)^T, chunk by chunk, each recomputed in backward
            part = event_fields(state, slice(start, start + chunk))
            moments = moments + checkpoint(self.search_moments, *part, use_reentrant=False)  # (B, W, D)
        target = self.embedding.side(batch.target_items, batch.target_cates, batch.target_side)  # (B, W)
        lengths = batch.history_mask.sum(dim=1, keepdim=True).clamp(min=1)
        pooled = (moments @ self.search_target(target).unsqueeze(-1)).squeeze(-1) / lengths  # (B, W) U_r
        logits = self.aux_dnn(torch.cat([pooled, target], dim=-1)).squeeze(-1)
        return {"gsu": self.config.aux_weight * F.binary_cross_entropy_with_logits(logits, batch.labels)}

    def search_moments(self, items: torch.Tensor, cates: torch.Tensor, behaviors: torch.Tensor | None = None,
                       attrs: torch.Tensor | None = None, dense: torch.Tensor | None = None) -> torch.Tensor:
        """``sum_i e_i (W_b e_i)^T`` over some events (B, c): (B, W, search_dim); padding embeds to 0."""
        events = embed_events(self.embedding, items, cates, behaviors, attrs, dense)  # (B, c, W)
        return events.transpose(1, 2) @ self.search_history(events)
