"""What a retrieval evaluation takes from its protocol (docs/protocols.md, P2 step 3): which items are
never ranked, which events are a user's history at evaluation (their items are removed from the
ranking), and which events count as training interactions for the popularity of an item.

- Vocabulary indices 0 (padding) and 1 (unknown) are never ranked (:data:`FIRST_RANKED`).
- A sample's history at evaluation is its user's *whole* input ``events[:end]``, not only the most
  recent L the model reads (:func:`history_cells`): P2 ranks every target against the catalogue with
  those items removed.
- An item's popularity (novelty of a top-K list) counts the P2 training sequences: each user's events
  but the last two, the validation and test targets (:func:`training_popularity`).
"""

from __future__ import annotations

import numpy as np

from lifelong.dataset.store import PreparedDataset, SampleTable

FIRST_RANKED = 2  # vocabulary indices 0 (padding) and 1 (unknown) are never ranked


def history_cells(dataset: PreparedDataset, samples: SampleTable) -> tuple[np.ndarray, np.ndarray]:
    """(row, item vocabulary index) of every item in each sample's *whole* input history
    ``events[:end]`` (not only the most recent L), for masking."""
    user = samples.user.astype(np.int64)
    length = samples.end.astype(np.int64)
    rows = np.repeat(np.arange(user.shape[0]), length)
    within = np.arange(rows.shape[0], dtype=np.int64) - np.repeat(np.cumsum(length) - length, length)
    events = dataset.offsets[user][rows] + within
    return rows, dataset.item_idx[dataset.event_items[events]]


def training_popularity(dataset: PreparedDataset, n_items: int) -> np.ndarray:
    """(n_items,) interactions of every item vocabulary index in the training sequences (each user's
    events but the last two, the validation and test targets)."""
    counts = np.diff(dataset.offsets)
    position = np.arange(dataset.n_events) - np.repeat(dataset.offsets[:-1], counts)
    training = position < np.repeat(counts - 2, counts)
    return np.bincount(dataset.item_idx[dataset.event_items[training]], minlength=n_items)[:n_items]
