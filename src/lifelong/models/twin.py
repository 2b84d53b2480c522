"""TWIN: TWo-stage Interest Network.

Paper: Chang et al., "TWIN: TWo-stage Interest Network for Lifelong User Behavior Modeling in CTR
Prediction at Kuaishou", KDD 2023 (arXiv 2302.02352).
Mechanism: the search stage is the exact stage's own target attention (the consistency-preserving GSU,
CP-GSU): the same heads and parameters score every behavior, and the ``top_k`` best go to the exact
stage. To make that affordable over the whole history, the behavior features are split:

- inherent features ``K_h`` (the behavior's item: id, category, side features, event context) are
  projected once per behavior, ``K_h W^h``, in ``encode_user`` (the paper refreshes them offline);
- user-item cross features ``K_c`` (here the time gap between the behavior and the scoring time) are
  compressed to one scalar per head, ``(K_c W^c) beta``, added to the attention logits;

so ``alpha = (K_h W^h)(q W^q)^T / sqrt(d) + (K_c W^c) beta``. A candidate costs one matrix-vector
product over the pre-projected keys and a top-k; the cross-feature bias is computed once per user and
call (it depends on the scoring time, not on the candidate). The exact stage then runs the same
attention over the retrieved behaviors, with values from ``[K_h, K_c]``.

The overall model: a DIN over the last ``short_length`` events, the TWIN interest over the whole
history, the target and the user features -> MLP (Dice) -> logit.

Deviations:
  - The paper's GSU keeps, for each of its 4 heads, the top behaviors until 100 distinct are collected;
    here one ranking by the sum of the heads' logits (one product of the concatenated heads), top
    ``top_k``. With one head it is exactly the paper's rule; ``heads`` defaults to 4.
  - The cross features are the time gap alone (TIN's log2-minute buckets, an embedding of width ``W``
    in the values and a learned scalar per head and bucket in the logits, which is ``(K_c W^c) beta``
    for a one-hot ``K_c``); ``time_gap=False`` leaves the inherent features only.
  - Ties go to the most recent behavior (:func:`lifelong.nn.search.top_k_events`).
  - Without gradients (evaluation, serving) the behaviors are grouped by distinct inherent features
    (item, category, context) when those are at most half the history: each is projected once, a
    candidate costs one product per distinct behavior, and each behavior's events are ranked by their
    cross-feature bias for the call (:meth:`TWIN.search_distinct`); the same selection as scoring every
    event (tested). That listing depends on the user and the scoring time alone: a state keeps its last
    one and reuses it while the events' gap buckets (log2 minutes: they move rarely between a user's
    requests) and the bias table are unchanged; within :func:`bucket_horizon` of the listing's time no
    bucket has moved, and the buckets are not even computed. ``distinct=False`` projects every event.
  - The search runs without gradients (it is not differentiable); only the retrieved behaviors are
    embedded and projected again with gradients, by the same parameters, so training keeps no (B, L, W)
    tensor for the gradient and the search and the exact stage stay consistent.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch

from lifelong.batch import Batch
from lifelong.models.long_sequence import (
    LongSequenceModel, LongSequenceState, TwoStageConfig, exact_interest, interval_buckets,
)
from lifelong.models.ranking import Candidates
from lifelong.models.registry import register
from lifelong.nn.search import (
    NEGATIVE, DistinctKeys, ExactAttention, Levels, level_table, top_k_distinct, top_k_events,
)


@dataclass
class TWINConfig(TwoStageConfig):
    """Args: :class:`TwoStageConfig`'s ``top_k`` (100, the paper's), ``heads`` (4, the paper's), ``time_gap``
    (the cross feature), ``gap_buckets``, and the short sequence and MLP fields; ``distinct``: without
    gradients (evaluation, serving), project each distinct behavior (item, category, context) once and
    search over the distinct ones when they are at most half the history (the same selection)."""

    model_type = "twin"
    heads: int = 4
    distinct: bool = True


@dataclass
class TWINState(LongSequenceState):
    """TWIN's user side: the history (see :class:`LongSequenceState`) and its pre-projected keys.

    Attributes:
        keys: (B, H * d, T) ``K_h W^h`` of every behavior, the heads concatenated (0 at padding), stored
            transposed (the layout of the search's product); (B, H * d, D), one per distinct behavior,
            when ``distinct`` is set.
        distinct: the history grouped by behavior (:func:`lifelong.nn.search.distinct_keys`), or None.
    """

    keys: torch.Tensor | None = None
    distinct: DistinctKeys | None = None


@dataclass
class GapListing:
    """A state's distinct behaviors with their events listed by time-gap bias at one scoring time
    (:meth:`TWIN.list_by_bias`), kept for the next calls while it holds.

    Attributes:
        keys: the behaviors, their events by bias (highest first, then the most recent).
        offsets: (P,) each listed event's bias; levels: their :class:`lifelong.nn.search.Levels`.
        gaps: (B, T) the gap buckets it was listed at; table: (G,) the bias of each bucket.
        time: (B,) the scoring time it was listed at; horizon: (B,) :func:`bucket_horizon` from it.
    """

    keys: DistinctKeys
    offsets: torch.Tensor
    levels: Levels
    gaps: torch.Tensor
    table: torch.Tensor
    time: torch.Tensor
    horizon: torch.Tensor

    def holds(self, timestamps: torch.Tensor, table: torch.Tensor, gaps: torch.Tensor | None = None) -> bool:
        """The listing is the one for scoring time ``timestamps`` and bias ``table``: the same table, and the
        same gap buckets (``gaps``, or without them: no event can have moved, the time being within the
        horizon)."""
        if not torch.equal(self.table, table):
            return False
        if gaps is not None:
            return torch.equal(self.gaps, gaps)
        moved = timestamps - self.time  # (B,) seconds since the listing's scoring time
        return bool(((moved >= 0) & (moved < self.horizon)).all())


def bucket_horizon(timestamps: torch.Tensor, history_timestamps: torch.Tensor, mask: torch.Tensor,
                   buckets: torch.Tensor, n_buckets: int) -> torch.Tensor:
    """(B,) int64: how many seconds after ``timestamps`` every event of each user stays in its gap bucket
    (``buckets``, :func:`lifelong.models.tin.interval_buckets` at ``timestamps``), one second kept as a
    margin: the bucket ``b`` of an event ``gap`` seconds old ends when ``1 + gap / 60`` reaches ``2 ** b``;
    the last bucket never ends. A later scoring time within the horizon gives the same buckets."""
    gap = timestamps[:, None] - history_timestamps  # (B, T) seconds, negative for events after the time
    ends = 60 * (torch.pow(2.0, buckets.double()) - 1)  # (B, T) the gap at which each event's bucket ends
    left = torch.floor(ends - gap.double()).long() - 1  # (B, T) seconds left, one kept as a margin
    lasting = (~mask) | (buckets >= n_buckets - 1)  # padding and the last bucket never move
    never = torch.iinfo(torch.int64).max
    return torch.where(lasting, never, left).amin(dim=1) if left.shape[1] else left.new_full((left.shape[0],), never)


@register(TWINConfig)
class TWIN(LongSequenceModel):
    """Short-term DIN + consistency-preserving search (the exact stage's own attention over pre-projected
    behaviors) + the exact stage over the top-k -> MLP -> logit.

    Example (scoring as :class:`lifelong.models.sim.SIM`'s example shows):
        >>> model = TWIN(TWINConfig(n_items=10, n_cates=4, embedding_dim=4, heads=2))
        >>> model.esu.keys(torch.zeros(5, 8)).shape  # a behavior's pre-projected key: (heads, head width)
        torch.Size([5, 2, 4])
    """

    state_class = TWINState

    def __init__(self, config: TWINConfig) -> None:
        super().__init__(config)
        width = self.embedding.out_dim
        self.esu = ExactAttention(width, config.heads, "bias" if config.time_gap else "none", config.gap_buckets)
        self.build_head(self.esu.out_dim)

    def encode_long(self, batch: Batch, history: LongSequenceState) -> dict:
        if self.config.distinct and not torch.is_grad_enabled():
            found = self.distinct_history(history, history.mask.shape[1])
            if found is not None:
                grouped, events = found  # (B, D, W)
                keys = self.esu.keys(events).flatten(-2) * (grouped.first >= 0).unsqueeze(-1)  # (B, D, H d)
                return {"keys": keys.transpose(1, 2).contiguous(), "distinct": grouped,  # (B, H d, D)
                        "distinct_events": events}
        return {"keys": self.history_keys(history, lambda events: self.esu.keys(events).flatten(-2),
                                          transposed=True)}  # (B, H d, T)

    def search_distinct(self, state: TWINState, candidates: Candidates,
                        target: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """The CP-GSU over distinct behaviors: a behavior's logit is its key's product with the query plus
        its cross-feature bias, so each key lists its events by bias (then recency) for this call and
        :func:`lifelong.nn.search.top_k_distinct` picks the same top k as scoring every event."""
        t = state.mask.shape[1]
        base = torch.bmm(self.esu.queries(target).flatten(-2), state.keys)  # (B, K, D)
        if self.config.time_gap:
            if candidates.timestamps is None:
                raise ValueError("twin: the time gap needs the scoring time: candidates.timestamps (build the "
                                 "collator with with_timestamps=True, as config.batch_needs() says)")
            table = self.esu.bias(torch.arange(self.config.gap_buckets, device=base.device)).sum(dim=-1)  # (G,)
            listing = getattr(state, "_listing", None)  # this state's last listing, reused while it still holds
            if listing is None or not listing.holds(candidates.timestamps, table):
                gaps = interval_buckets(candidates.timestamps, state.timestamps, state.mask, self.config.gap_buckets)
                if listing is None or not listing.holds(candidates.timestamps, table, gaps):
                    listing = state._listing = self.list_by_bias(state, candidates.timestamps, gaps, table)
            return top_k_distinct(base, listing.offsets, listing.keys, t, self.config.top_k, levels=listing.levels)
        return top_k_distinct(base, None, state.distinct, t, self.config.top_k)  # no per-event term

    def list_by_bias(self, state: TWINState, timestamps: torch.Tensor, gaps: torch.Tensor,
                     table: torch.Tensor) -> GapListing:
        """Each distinct behavior's events by their cross-feature bias at scoring time ``timestamps``
        (gap buckets ``gaps`` (B, T), bias per bucket ``table`` (G,)), highest first, then the most recent."""
        grouped = state.distinct
        segment = grouped.segments()
        listed_gaps = gaps[segment // grouped.first.shape[1], grouped.positions]  # (P,) bucket of each event
        values, bucket_rank = torch.unique(table, return_inverse=True)  # dense ranks of the bucket biases
        offsets, rank = table[listed_gaps], bucket_rank[listed_gaps]  # (P,)
        n, p = values.numel(), offsets.numel()
        # each key's events by bias, highest first; ties keep the listing's recency order
        b, d = grouped.first.shape
        code = segment * n + (n - 1 - rank)  # (user, behavior), then the bias level, highest first
        if b * d * n < 2 ** 31:
            code = code.int()  # a faster sort
        order = torch.sort(code, stable=True).indices  # stable: the listing's recency order within a level
        positions, offsets = grouped.positions[order], offsets[order]
        first = torch.where(grouped.first >= 0, positions[grouped.start.clamp(max=p - 1)], -1) if p else \
            torch.full_like(grouped.first, -1)  # no event at all (a user with no history)
        # how many events of each behavior fall in each bias level (ascending)
        levels = level_table(values, torch.bincount(code, minlength=b * d * n).view(b, d, n).flip(-1))
        horizon = bucket_horizon(timestamps, state.timestamps, state.mask, gaps, self.config.gap_buckets)
        return GapListing(DistinctKeys(first, grouped.start, grouped.count, positions), offsets, levels, gaps, table,
                          timestamps.clone(), horizon)

    def search_scores(self, state: TWINState, candidates: Candidates, target: torch.Tensor) -> torch.Tensor:
        """The CP-GSU's score of every behavior: the exact stage's logits summed over heads, (B, K, T);
        :data:`NEGATIVE` at padding."""
        bias = state.keys.new_zeros(state.mask.shape)  # (B, T) the cross features, per user and call
        if self.config.time_gap:
            if candidates.timestamps is None:
                raise ValueError("twin: the time gap needs the scoring time: candidates.timestamps (build the "
                                 "collator with with_timestamps=True, as config.batch_needs() says)")
            gaps = interval_buckets(candidates.timestamps, state.timestamps, state.mask, self.config.gap_buckets)
            bias = self.esu.bias(gaps).sum(dim=-1)  # (B, T)
        bias = torch.where(state.mask, bias, NEGATIVE).unsqueeze(1)  # (B, 1, T)
        query = self.esu.queries(target).flatten(-2)  # (B, K, H d), scaled
        if query.shape[1] <= state.keys.shape[1]:  # few candidates (training): add the bias to the (B, K, T) scores
            return torch.baddbmm(bias, query, state.keys)  # (B, K, T) sum_h (q_h . k_h / sqrt(d) + b_h)
        # many candidates (serving): one (B, H d + 1, T) copy per call instead of a pass over (B, K, T)
        query = torch.cat([query, torch.ones_like(query[..., :1])], dim=-1)
        return torch.bmm(query, torch.cat([state.keys, bias], dim=1))

    def long_interest(self, state: TWINState, candidates: Candidates, target: torch.Tensor) -> torch.Tensor:
        with torch.no_grad():
            if state.distinct is not None:
                index, valid = self.search_distinct(state, candidates, target)
                return exact_interest(self, state, candidates, target, index, valid)
            index = top_k_events(self.search_scores(state, candidates, target), self.config.top_k)
        return exact_interest(self, state, candidates, target, index)
