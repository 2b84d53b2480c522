"""What the long-history ranking models (SIM, ETA, SDIM, TWIN) share: config fields, the user state's
history and short sequence, and the head (:class:`lifelong.nn.search.LifelongHead`).

Each model keeps its own mechanism in its own file: what its user side precomputes for the long
history (``encode_long``) and how a candidate turns it into a long-term interest (``long_interest``).
Here is only the frame around it:

- the user state holds the history's ids (items, categories, contexts, side features, times), so the
  events a search retrieves can be embedded, with gradients, after the search; the whole history is
  never embedded with gradients;
- the short-term sequence (the last ``short_length`` events) is embedded in ``encode_user``;
- ``score`` = ``long_interest`` + DIN over the short sequence + target + user features -> MLP.

Memory of long histories in training: no model keeps a (B, L, W) tensor for the gradient (tested in
``tests/test_search.py``). The searches run without gradients on keys computed chunk by chunk
(``chunk_length`` events at a time) and only the retrieved events are embedded with gradients; SDIM's
bucket sums and SIM soft's auxiliary loss read every event with gradients, chunk by chunk under
activation checkpointing. Measured (``benchmarks/long_cost.py memory``, 2026-12-07): one training
step (forward, backward, Adam) on 32 users x 10,000 events, ``embedding_dim`` 32 (W = 64), 100,000
items, 1 thread, peaks at 522 MB resident for SDIM, 431 MB for SIM hard, 520 MB for SIM soft, 517 MB
for ETA and 473 MB for TWIN, against 344 MB for the process that only builds the model and the batch
(one (B, L, W) float32 tensor is 82 MB). What stays is O(B L) ids and O(B L X) search keys without
gradients (ETA: m + 1 = 65 floats per event, TWIN: W, SIM soft: ``search_dim`` + 1).
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass

import torch

from lifelong.batch import Batch
from lifelong.models.ranking import Candidates, RankingConfig, RankingModel, UserState
from lifelong.models.registry import ModelOutput
from lifelong.models.tin import interval_buckets
from lifelong.nn import ACTIVATIONS, TargetAttention
from lifelong.nn.features import FeatureEmbedding
from lifelong.nn.search import (
    DistinctKeys, LifelongHead, distinct_keys, embed_events, embed_in_chunks, gather_events, last_events,
)


@dataclass
class LongSequenceConfig(RankingConfig):
    """Fields every long-history model has.

    Args:
        short_length: events of the short-term sequence (the last ones), read by a DIN.
        attention_hidden, attention_activation: the short-term DIN's activation unit.
        dnn_hidden, dnn_activation, dropout: the final MLP.
        chunk_length: history events embedded at once when the user side computes its search keys
            (bounds the memory of long histories; the result does not depend on it).
    """

    short_length: int = 50
    attention_hidden: tuple[int, ...] = (64, 32)
    attention_activation: str = "dice"
    dnn_hidden: tuple[int, ...] = (200, 80)
    dnn_activation: str = "dice"
    dropout: float = 0.0
    chunk_length: int = 2048

    def validate(self) -> None:
        super().validate()
        name = self.model_type
        for field in ("attention_activation", "dnn_activation"):
            if getattr(self, field) not in ACTIVATIONS:
                raise ValueError(f"{name}: {field} must be one of {ACTIVATIONS}, got {getattr(self, field)!r}")
        if self.short_length < 1 or self.chunk_length < 1:
            raise ValueError(f"{name}: short_length and chunk_length must be positive, "
                             f"got {self.short_length} and {self.chunk_length}")
        if not self.attention_hidden:
            raise ValueError(f"{name}: attention_hidden needs at least one layer")
        if not 0.0 <= self.dropout < 1.0:
            raise ValueError(f"{name}: dropout must be in [0, 1), got {self.dropout}")

    @property
    def uses_time(self) -> bool:
        """Whether the model reads event and scoring times (a time-gap feature); subclasses say."""
        return False

    def batch_needs(self) -> dict:
        return {**super().batch_needs(), **({"with_timestamps": True} if self.uses_time else {})}


@dataclass
class LongSequenceState(UserState):
    """The history part of a long-history model's user state (a model's own state adds its precomputation).

    Attributes:
        items, cates: (B, T) int64 the history's ids (0 at padding).
        mask: (B, T) bool, True at real events.
        behaviors: (B, T) int64 event contexts, or None when the model reads none.
        attrs: (B, T, A) attribute bags, or None.
        dense: (B, T, D) content vectors, or None.
        timestamps: (B, T) int64 event times, or None when the model reads no time.
        short: (B, S) the last ``short_length`` events, embedded: (B, S, W).
        short_mask: (B, S) bool.
        user: (B, U) user features, or None.
        distinct_events: (B, D, W) each distinct event embedded, without gradients, when the search runs over
            distinct keys (the state's ``distinct``, whose ``slots`` map events to them), or None.
    """

    items: torch.Tensor | None = None
    cates: torch.Tensor | None = None
    mask: torch.Tensor | None = None
    behaviors: torch.Tensor | None = None
    attrs: torch.Tensor | None = None
    dense: torch.Tensor | None = None
    timestamps: torch.Tensor | None = None
    short: torch.Tensor | None = None
    short_mask: torch.Tensor | None = None
    user: torch.Tensor | None = None
    distinct_events: torch.Tensor | None = None


class LongSequenceModel(RankingModel):
    """Base of SIM, ETA, SDIM and TWIN: a subclass defines ``encode_long(batch, history) -> dict`` (its
    own state fields) and ``long_interest(state, candidates, target) -> (B, K, X)``, sets ``state_class``
    and calls :meth:`build_head` with the width ``X`` of its long-term interest."""

    state_class: type[LongSequenceState] = LongSequenceState

    def __init__(self, config: LongSequenceConfig) -> None:
        super().__init__()
        self.config = config
        self.embedding = FeatureEmbedding.of(config)

    def build_head(self, long_dim: int) -> None:
        """The short-term DIN and the MLP over ``[short interest, long interest (long_dim), target, user]``."""
        config, width = self.config, self.embedding.out_dim
        attention = TargetAttention(width, list(config.attention_hidden), config.attention_activation)
        self.head = LifelongHead(width, long_dim, self.embedding.user_dim, attention,
                                 (config.dnn_hidden, config.dnn_activation, config.dropout))

    def history(self, batch: Batch) -> LongSequenceState:
        """The history's ids, the embedded short sequence and the user features (the frame of ``encode_user``)."""
        if self.config.uses_time and batch.history_timestamps is None:
            raise ValueError(f"{self.config.model_type}: the time gap needs batch.history_timestamps and the "
                             "scoring time; build the collator with with_timestamps=True (config.batch_needs() "
                             "says so), or turn the time gap off")
        side = batch.history_side
        state = LongSequenceState(
            items=batch.history_items, cates=batch.history_cates, mask=batch.history_mask,
            behaviors=batch.history_behaviors if self.embedding.behavior is not None else None,
            attrs=side.attrs if side is not None and self.embedding.attr is not None else None,
            dense=side.dense if side is not None and self.embedding.dense is not None else None,
            timestamps=batch.history_timestamps if self.config.uses_time else None,
            user=self.embedding.user(batch))
        index, state.short_mask = last_events(batch.history_mask, self.config.short_length)  # (B, S)
        state.short = self.events(state, index.unsqueeze(1)).squeeze(1)  # (B, S, W)
        return state

    def events(self, state: LongSequenceState, index: torch.Tensor) -> torch.Tensor:
        """History events ``index`` (B, K, n) of each user, embedded with gradients: (B, K, n, W)."""
        pick = [gather_events(getattr(state, name), index)
                for name in ("items", "cates", "behaviors", "attrs", "dense")]
        return embed_events(self.embedding, *pick)

    def history_keys(self, state: LongSequenceState, keys, transposed: bool = False) -> torch.Tensor:
        """``keys`` ((..., W) embedded events -> (..., X)) of the whole history, in chunks, without
        gradients: (B, T, X) (the search keys), or (B, X, T) when ``transposed``. Each chunk's distinct
        events (:meth:`distinct_events`) are embedded and keyed once: a lifelong history repeats items."""
        def embed(part: slice) -> torch.Tensor:
            distinct, inverse = self.distinct_events(state, part)
            return keys(distinct)[inverse]  # (B, n, X)

        return embed_in_chunks(embed, state.items.shape[1], self.config.chunk_length, transposed)

    def distinct_history(self, history: LongSequenceState, cap: int) -> tuple[DistinctKeys, torch.Tensor] | None:
        """The history grouped by distinct event (:func:`lifelong.nn.search.distinct_keys`, at most ``cap``
        events kept per key) and each key's most recent event embedded, (B, D, W); None when the keys are
        more than half the history (a search over every event is then as cheap)."""
        grouped = distinct_keys(event_keys(history, self.config.n_cates), history.mask, cap)
        if grouped is None or 2 * grouped.first.shape[1] > history.mask.shape[1]:
            return None
        return grouped, self.events(history, grouped.first.clamp(min=0).unsqueeze(1)).squeeze(1)

    def distinct_events(self, state: LongSequenceState, part: slice) -> tuple[torch.Tensor, torch.Tensor]:
        """The distinct events (item, category, context) of history positions ``part``, embedded (with
        gradients when they are enabled): (U, W), and (B, n) each position's row in it (padding is one
        of the rows, embedded as zeros)."""
        fields = event_fields(state, part)
        _, inverse = torch.unique(event_keys(state, self.config.n_cates, part), return_inverse=True)  # (B, n)
        n_distinct = int(inverse.max()) + 1 if inverse.numel() else 0
        flat = inverse.flatten()
        first = torch.full((n_distinct,), flat.numel(), dtype=torch.long, device=flat.device)
        first.scatter_reduce_(0, flat, torch.arange(flat.numel(), device=flat.device), "amin")  # one position each
        picked = [None if v is None else v.flatten(0, 1)[first] for v in fields]
        return embed_events(self.embedding, *picked), inverse

    def encode_user(self, batch: Batch) -> LongSequenceState:
        base = self.history(batch)
        values = {f.name: getattr(base, f.name) for f in dataclasses.fields(LongSequenceState)}
        return self.state_class(**{**values, **self.encode_long(batch, base)})

    def encode_long(self, batch: Batch, history: LongSequenceState) -> dict:
        """The model's own precomputation of the long history (its state's extra fields)."""
        raise NotImplementedError

    def long_interest(self, state: LongSequenceState, candidates: Candidates, target: torch.Tensor) -> torch.Tensor:
        """(B, K, X) the long-term interest of each candidate (``target`` its (B, K, W) embedding)."""
        raise NotImplementedError

    def score(self, state: LongSequenceState, candidates: Candidates) -> torch.Tensor:
        candidates.validate(len(state))
        target = self.embedding.candidates(candidates)  # (B, K, W)
        long_interest = self.long_interest(state, candidates, target)  # (B, K, X)
        return self.head(target, state.short, state.short_mask, long_interest, state.user)  # (B, K)

    def aux_losses(self, batch: Batch, state: LongSequenceState) -> dict[str, torch.Tensor]:
        """Extra training losses (SIM soft's search-stage loss); none by default."""
        return {}

    def forward(self, batch: Batch) -> ModelOutput:
        batch.validate()
        state = self.encode_user(batch)
        logits = self.score(state, Candidates.from_targets(batch)).squeeze(1)  # (B,)
        return ModelOutput(logits=logits, aux_losses=self.aux_losses(batch, state) if self.training else {})


def scoring_gaps(state: LongSequenceState, candidates: Candidates, index: torch.Tensor, n_buckets: int) -> torch.Tensor:
    """Time-gap buckets of the retrieved events ``index`` (B, K, n) against the candidates' scoring time:
    (B, K, n) int64 (0 at padding), TIN's log2-minute buckets."""
    if candidates.timestamps is None:
        raise ValueError("the time gap needs the scoring time: candidates.timestamps (batch.timestamps; build the "
                         "collator with with_timestamps=True, as config.batch_needs() says)")
    b, k, n = index.shape
    times = gather_events(state.timestamps, index).reshape(b, k * n)
    mask = gather_events(state.mask, index).reshape(b, k * n)
    return interval_buckets(candidates.timestamps, times, mask, n_buckets).view(b, k, n)


def event_keys(state: LongSequenceState, n_cates: int, part: slice = slice(None)) -> torch.Tensor:
    """(B, n) int64 one key per distinct (item, category, context) of history positions ``part``: events
    with equal keys embed equally (side features are the item's), what
    :func:`lifelong.nn.search.distinct_keys` groups by."""
    ids = state.items[:, part] * (n_cates + 1) + state.cates[:, part]
    if state.behaviors is not None:
        behaviors = state.behaviors[:, part]
        ids = ids * (int(state.behaviors.max()) + 1 if state.behaviors.numel() else 1) + behaviors
    return ids


def event_fields(state: LongSequenceState, part: slice) -> list[torch.Tensor | None]:
    """The ids of history positions ``part`` (items, cates, behaviors, attrs, dense; None where absent),
    the arguments of :func:`lifelong.nn.search.embed_events`."""
    return [None if v is None else v[:, part] for v in (state.items, state.cates, state.behaviors, state.attrs,
                                                         state.dense)]


@dataclass
class TwoStageConfig(LongSequenceConfig):
    """Fields of the models with a search stage and an exact stage (SIM, ETA, TWIN).

    Args:
        top_k: events the search keeps per candidate (SIM: at most 200; TWIN: 100).
        heads: heads of the exact stage's target attention (``embedding.out_dim`` must split evenly).
        time_gap: the exact stage reads the time between each retrieved event and the scoring time (log2-minute
            buckets); needs timestamps in the batch.
        gap_buckets: rows of the time-gap tables (bucket 0 is padding; gaps beyond share the last).
    """

    top_k: int = 100
    heads: int = 2
    time_gap: bool = True
    gap_buckets: int = 24

    def validate(self) -> None:
        super().validate()
        if self.top_k < 1 or self.heads < 1:
            raise ValueError(f"{self.model_type}: top_k and heads must be positive, got {self.top_k} and {self.heads}")
        if self.time_gap and self.gap_buckets < 2:
            raise ValueError(f"{self.model_type}: gap_buckets must be at least 2, got {self.gap_buckets}")

    @property
    def uses_time(self) -> bool:
        return self.time_gap


def exact_interest(model: LongSequenceModel, state: LongSequenceState, candidates: Candidates, target: torch.Tensor,
                   index: torch.Tensor, valid: torch.Tensor | None = None) -> torch.Tensor:
    """The exact stage over the events a search retrieved: embedded with gradients, then ``model.esu``
    (:class:`lifelong.nn.search.ExactAttention`).

    Args:
        model: a two-stage model (``model.esu``, ``model.config.time_gap``, ``gap_buckets``).
        state: its user state.
        candidates: (B, K) candidates, target (B, K, W) their embeddings.
        index: (B, K, n) retrieved positions.
        valid: (B, K, n) bool, False where a position is only filler; None: every real event of ``index``.

    Returns:
        (B, K, W) the long-term interest.
    """
    mask = gather_events(state.mask, index)  # (B, K, n)
    if valid is not None:
        mask = mask & valid
    distinct = getattr(state, "distinct", None)
    if state.distinct_events is not None and distinct is not None and not torch.is_grad_enabled():
        # the user's distinct events, embedded once in encode_user (equal keys embed equally), by each one's key
        events = gather_events(state.distinct_events, gather_events(distinct.slots, index))  # (B, K, n, W)
    else:
        events = model.events(state, index)  # (B, K, n, W); the exact stage gives masked ones no weight
    gaps = scoring_gaps(state, candidates, index, model.config.gap_buckets) * mask if model.config.time_gap else None
    return model.esu(target, events, mask, gaps)
