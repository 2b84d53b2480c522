"""Every negative a training loss or a CTR protocol draws, in one place.

- P1 / P4 sample tables: each positive gets one negative item row drawn uniformly (P4: from the catalogue
  of its time) and redrawn while the user ever interacted with it (:func:`sample_negatives` over an
  :class:`InteractionIndex` of the whole log; :mod:`lifelong.protocols.ctr`).
- Retrieval losses with ``loss = bce``: one negative per training position (for its next item), drawn
  per epoch with the seed by :func:`sample_negatives` over :func:`negative_index`, the (user, item) pairs
  of the events training sees (:func:`lifelong.protocols.training_event_mask`), so a validation or test
  target is never one of the excluded items and never shapes training.
- DIEN's per-event negatives (its auxiliary loss) are fixed per event: :func:`event_negatives` (a
  uniform draw over the item rows with a known index, excluding the user's training items; the
  ``Collator`` gathers them per batch).
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from lifelong.dataset.store import PreparedDataset, SampleTable
from lifelong.protocols.training import training_event_mask


@dataclass(frozen=True)
class InteractionIndex:
    """Sorted ``user * n_item_rows + item`` keys of every (user, item) pair of the log."""

    keys: np.ndarray  # (n_pairs,) int64, sorted, unique
    n_item_rows: int

    @classmethod
    def build(cls, offsets: np.ndarray, event_items: np.ndarray, n_item_rows: int,
              events: np.ndarray | None = None) -> "InteractionIndex":
        """The pairs of every event, or of the events where the bool mask ``events`` is True (training
        builds its index from :func:`lifelong.protocols.training_event_mask`)."""
        counts = np.diff(offsets)
        users = np.repeat(np.arange(counts.shape[0], dtype=np.int64), counts)
        keys = users * n_item_rows + event_items.astype(np.int64)
        return cls(keys=np.unique(keys if events is None else keys[events]), n_item_rows=n_item_rows)

    def contains(self, users: np.ndarray, items: np.ndarray) -> np.ndarray:
        query = users.astype(np.int64) * self.n_item_rows + items.astype(np.int64)
        position = np.searchsorted(self.keys, query)
        position = np.minimum(position, self.keys.shape[0] - 1)
        return self.keys[position] == query


def sample_negatives(users: np.ndarray, index: InteractionIndex, rng: np.random.Generator,
                     pool: np.ndarray | None = None, pool_size: np.ndarray | None = None) -> np.ndarray:
    """One negative item row per entry of ``users``, never an item the user interacted with
    (rejection sampling, vectorised). Uniform over rows ``1..n_item_rows-1``, or, with ``pool`` and
    ``pool_size``, uniform over ``pool[:pool_size[i]]`` for sample ``i``."""

    def draw(which: np.ndarray) -> np.ndarray:
        if pool is None:
            return rng.integers(1, index.n_item_rows, size=which.size, dtype=np.int64)
        return pool[(rng.random(which.size) * pool_size[which]).astype(np.int64)]

    negatives = draw(np.arange(users.shape[0]))
    pending = np.flatnonzero(index.contains(users, negatives))
    for attempt in range(1000):
        if pending.size == 0:
            return negatives.astype(np.int32)
        if pool is not None and attempt == 100:  # the user knew every item of that time: widen to all
            pool_size = pool_size.copy()
            pool_size[pending] = pool.shape[0]
        negatives[pending] = draw(pending)
        pending = pending[index.contains(users[pending], negatives[pending])]
    raise ValueError(
        f"could not draw negatives for {pending.size} samples: their users interacted with (almost) every "
        f"item of the catalogue ({index.n_item_rows - 1} items)"
    )


def negative_index(dataset: PreparedDataset, rows: SampleTable) -> InteractionIndex:
    """The (user, item) pairs a sampled training negative must avoid: those of the events the training
    ``rows`` see (:func:`lifelong.protocols.training_event_mask`), never a validation or test target."""
    return InteractionIndex.build(dataset.offsets, dataset.event_items, int(dataset.item_idx.shape[0]),
                                  events=training_event_mask(dataset.offsets, rows))


def event_negatives(dataset: PreparedDataset, seed: int = 2024) -> np.ndarray:
    """One negative item row per event of the store: drawn uniformly, with ``seed``, from the items
    with a known vocabulary index that the event's user never interacted with in the events training
    sees (:func:`lifelong.protocols.training_event_mask`: a held-out validation or test item is not
    excluded, so it cannot shape training).

    Fixed per event (like the negatives the DIEN authors write into their data files), so an epoch,
    a resumed run and a rerun see the same ones. Vectorised rejection sampling: draws that hit one of
    the user's items are redrawn until none is left.
    """
    ds = dataset
    n_events = ds.event_items.shape[0]
    candidates = np.flatnonzero(ds.item_idx >= 2)  # item rows with a known index (not pad/unknown)
    if candidates.shape[0] == 0:
        raise ValueError("negative sampling needs at least one item with a known vocabulary index")
    users = np.repeat(np.arange(ds.offsets.shape[0] - 1, dtype=np.int64), np.diff(ds.offsets))  # (N,)
    n_rows = np.int64(ds.item_idx.shape[0])
    known = training_event_mask(ds.offsets, ds.samples("train"))
    seen = np.unique((users * n_rows + ds.event_items)[known])  # sorted (user, item row) keys of training events
    rng = np.random.default_rng([seed, 7919])
    negatives = np.zeros(n_events, dtype=np.int64)
    todo = np.arange(n_events)
    for _ in range(1000):
        if todo.shape[0] == 0:
            break
        draw = candidates[rng.integers(0, candidates.shape[0], todo.shape[0])]
        keys = users[todo] * n_rows + draw
        pos = np.minimum(np.searchsorted(seen, keys), seen.shape[0] - 1)
        ok = seen[pos] != keys
        negatives[todo[ok]] = draw[ok]
        todo = todo[~ok]
    if todo.shape[0]:
        raise ValueError(f"{todo.shape[0]} events belong to users who interacted with (almost) every item; "
                         "no negative item can be drawn for them")
    return negatives
