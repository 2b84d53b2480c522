"""ETA: End-to-end Target Attention.

Paper: Chen et al., "End-to-End User Behavior Retrieval in Click-Through Rate Prediction Model"
(arXiv 2108.04468), Alibaba.
Mechanism: the search stage hashes the behaviors and the candidate with SimHash (``m`` fixed random
projections of the embeddings, never trained; bit ``j`` = ``1[r_j . e >= 0]``) and keeps the ``top_k``
behaviors of smallest Hamming distance to the candidate; the exact stage is multi-head target
attention over them. The hashes reuse the embeddings the model trains, so the search follows the
model as it learns (end to end) with no separate index or pre-trained embeddings, and its cost is
``O(L m)`` bit work per candidate instead of ``O(L d)`` attention.

``encode_user`` hashes the whole history once per user; a candidate then costs its own hash, one
Hamming distance per behavior and a top-k. torch has no popcount, so the distances come from one
matrix product of +-1 signatures, ``hamming = (m - <s_q, s_h>) / 2`` (``search_impl="matmul"``, exact:
integers), with a last column that folds in the tie-break, so the product is the whole search key:
``key = T <s_q, s_h> + position`` (more agreeing bits first, then the most recent; padding below all).
``search_impl="popcount"`` is the reference: xor and a bit count of packed int64 signatures. Both
select the same events (tested).

The overall model: a DIN over the last ``short_length`` events, the ETA interest over the whole
history, the target and the user features -> MLP (Dice) -> logit (as SIM and SDIM have it).

Deviations:
  - ``m`` defaults to 64 bits (one int64 word). On random embeddings the Hamming top-50 of 1,000
    events recalls about 27% of the inner-product top-50 for i.i.d. Gaussian vectors (width 64), and
    about 60% when half of each vector is one of 20 category embeddings, as this model's items are
    (``tests/test_eta.py``; chance is 5%). Trained embeddings should fare better (not measured here).
  - Ties in Hamming distance go to the most recent behavior. The matmul key is exact in float32 while
    ``(2 m + 2) T < 2**24`` (T up to 129,000 events at m = 64); longer histories use float64.
  - The search runs without gradients (it is not differentiable); only the retrieved events are
    embedded with gradients, so training never keeps a (B, L, W) tensor for the gradient. The
    projections are a buffer drawn from ``hash_seed``.
  - Memory: the ``matmul`` state holds ``m + 1`` float32 per event (260 bytes at m = 64, as much as
    32 int64 id fields), which is what makes serving's product fast;
    ``search_impl="popcount"`` holds one int64 word per event and costs about 20 integer passes over
    (B, K, T) per call, the better choice for training or evaluating very long histories with few
    candidates per user (K = 1), the worse for serving 200 candidates.
  - Without gradients (evaluation, serving) the history is grouped by distinct event key (item,
    category, context: equal keys hash equally) when the keys are at most half the events, as in
    lifelong histories (a 100,000-event user of the lifelong synthetic log has about 5,600): each key
    is hashed once and a candidate costs one Hamming distance per key, then at most ``top_k`` events
    read from the best keys (:func:`lifelong.nn.search.top_k_distinct`); the same selection (tested).
    ``distinct=False`` hashes every event.
  - A time-gap embedding in the exact stage is available (``time_gap``, off by default: the paper has
    none); the exact stage's heads default to 2.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch

from lifelong.batch import Batch
from lifelong.models.long_sequence import (
    LongSequenceModel, LongSequenceState, TwoStageConfig, exact_interest,
)
from lifelong.models.ranking import Candidates
from lifelong.models.registry import register
from lifelong.nn.hashing import hash_bits, pack_bits, packed_hamming, random_projections, signs
from lifelong.nn.search import DistinctKeys, ExactAttention, top_k_distinct, top_k_events

EXACT_FLOAT32 = 2 ** 24  # integers up to this are exact in float32


@dataclass
class ETAConfig(TwoStageConfig):
    """Args:
        hashes: SimHash bits ``m`` (at most 64).
        hash_seed: seed of the fixed random projections.
        search_impl: ``matmul`` (fast) or ``popcount`` (reference); the same selection.
        distinct: without gradients (evaluation, serving), hash each distinct event key (item, category,
            context) once and search over the distinct keys when they are at most half the history
            (:func:`lifelong.nn.search.distinct_keys`); the same selection.
        (and :class:`TwoStageConfig`'s ``top_k``, ESU heads, time gap, short sequence and MLP fields;
        ``time_gap`` is off by default.)
    """

    model_type = "eta"
    hashes: int = 64
    hash_seed: int = 0
    search_impl: str = "matmul"
    distinct: bool = True
    time_gap: bool = False

    def validate(self) -> None:
        super().validate()
        if not 1 <= self.hashes <= 64:
            raise ValueError(f"eta: hashes must be in [1, 64] (one int64 signature), got {self.hashes}")
        if self.search_impl not in ("matmul", "popcount"):
            raise ValueError(f"eta: search_impl must be 'matmul' or 'popcount', got {self.search_impl!r}")


@dataclass
class ETAState(LongSequenceState):
    """ETA's user side: the history (see :class:`LongSequenceState`) and its signatures.

    Attributes:
        signatures: (B, m + 1, T) (``matmul``) each behavior's +-1 signature and its position in the last
            row; padding: a zero signature and position ``-(m + 1) T`` (below every real key). Stored
            transposed, the layout of the search's product.
        packed: (B, T, 1) int64 (``popcount``) the signatures' bits packed.
        distinct: the history grouped by key when the search runs over distinct keys
            (:func:`lifelong.nn.search.distinct_keys`); ``signatures`` is then (B, m + 1, D), one column per
            key, its last row the position of the key's most recent event.
    """

    signatures: torch.Tensor | None = None
    packed: torch.Tensor | None = None
    distinct: DistinctKeys | None = None


@register(ETAConfig)
class ETA(LongSequenceModel):
    """Short-term DIN + SimHash top-k by Hamming distance + multi-head target attention -> MLP -> logit.

    Example (scoring as :class:`lifelong.models.sim.SIM`'s example shows):
        >>> model = ETA(ETAConfig(n_items=10, n_cates=4, embedding_dim=4, hashes=8))
        >>> model.projections.shape  # m fixed directions over the item width 2E
        torch.Size([8, 8])
    """

    state_class = ETAState

    def __init__(self, config: ETAConfig) -> None:
        super().__init__(config)
        width = self.embedding.out_dim
        self.register_buffer("projections", random_projections(config.hashes, width, config.hash_seed))
        self.esu = ExactAttention(width, config.heads, "concat" if config.time_gap else "none", config.gap_buckets)
        self.build_head(self.esu.out_dim)

    def encode_long(self, batch: Batch, history: LongSequenceState) -> dict:
        if self.config.search_impl == "matmul" and self.config.distinct and not torch.is_grad_enabled():
            distinct = self.encode_distinct(history)
            if distinct is not None:
                return distinct
        bits = self.history_keys(history, lambda events: hash_bits(events, self.projections))  # (B, T, m) bool
        if self.config.search_impl == "popcount":
            return {"packed": pack_bits(bits)}
        positions = torch.arange(bits.shape[1], device=bits.device).expand(history.mask.shape)
        return {"signatures": self.signature_matrix(bits, history.mask, positions, bits.shape[1])}  # (B, m + 1, T)

    @staticmethod
    def signature_matrix(bits: torch.Tensor, mask: torch.Tensor, positions: torch.Tensor, t: int) -> torch.Tensor:
        """(B, m + 1, N) the +-1 signatures of ``bits`` (B, N, m) over their columns, 0 where ``mask`` is
        False, and a last row of ``positions`` (``-(m + 1) t`` at padding): the search's product layout."""
        b, n, m = bits.shape
        signatures = torch.empty(b, m + 1, n, device=bits.device)  # built in the search's layout, one copy
        sign_rows = signatures[:, :m]
        sign_rows.copy_(bits.transpose(1, 2))  # in place to +-1, 0 at padding: no (B, m, N) temporaries
        sign_rows.mul_(2).sub_(1).mul_(mask.unsqueeze(1))
        signatures[:, m] = torch.where(mask, positions.float(), float(-(m + 1) * t))
        return signatures

    def encode_distinct(self, history: LongSequenceState) -> dict | None:
        """The search over distinct event keys: each key hashed once (its most recent event), or None when
        the keys are more than half the history (then every event is hashed)."""
        t = history.mask.shape[1]
        found = self.distinct_history(history, self.config.top_k)
        if found is None:
            return None
        grouped, events = found  # events: (B, D, W) each key's latest
        first = grouped.first
        bits = hash_bits(events, self.projections)  # (B, D, m)
        # the last row 0: the product is T <s_q, s_h> alone, ties go to the most recent (top_k_distinct)
        return {"signatures": self.signature_matrix(bits, first >= 0, torch.zeros_like(first), t), "distinct": grouped,
                "distinct_events": events}

    def search(self, state: ETAState, candidates: Candidates, target: torch.Tensor) -> torch.Tensor:
        """(B, K, min(top_k, T)) positions of the behaviors of smallest Hamming distance to each candidate
        (and a (B, K, n) validity mask when the search runs over distinct keys)."""
        t = state.items.shape[1]
        bits = hash_bits(target.detach(), self.projections)  # (B, K, m)
        m = bits.shape[-1]
        if self.config.search_impl == "popcount":
            distance = packed_hamming(pack_bits(bits), state.packed)  # (B, K, T)
            positions = torch.arange(t, device=bits.device)
            keys = torch.where(state.mask.unsqueeze(1), -distance * t + positions, -(m + 1) * t)
            return top_k_events(keys, self.config.top_k, ties=False)
        query = torch.cat([signs(bits) * t, torch.ones_like(bits[..., :1], dtype=torch.float32)], dim=-1)  # (B, K, m + 1)
        signatures = state.signatures
        if (2 * m + 2) * t >= EXACT_FLOAT32:  # beyond float32's exact integers
            query, signatures = query.double(), signatures.double()
        keys = torch.bmm(query, signatures)  # (B, K, T) T <s_q, s_h> + position, distinct
        if state.distinct is not None:  # (B, K, D) T <s_q, s_h> per distinct key
            # the events of a key differ by recency alone: no per-event term
            return top_k_distinct(keys, None, state.distinct, t, self.config.top_k, integral=True)
        return top_k_events(keys, self.config.top_k, ties=False)

    def long_interest(self, state: ETAState, candidates: Candidates, target: torch.Tensor) -> torch.Tensor:
        with torch.no_grad():
            found = self.search(state, candidates, target)
        index, valid = found if isinstance(found, tuple) else (found, None)
        return exact_interest(self, state, candidates, target, index, valid)
