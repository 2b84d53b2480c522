"""Which events training may see, whatever the protocol: the events of the training sample tables.

Every protocol's training rows point into the stored sequences: a row ``(user, end)`` has the history
``events[:end]`` and, for a positive, the target event at position ``end``. So the events training sees
are, per user, the positions ``0 .. max(end)`` over that user's training rows, and none of a user without
training rows (P3's held-out users). Validation and test targets lie beyond: P1/P2 hold out each user's
last two events, P4 the events after ``t_valid``. Whatever training derives from "the user's items" or
"item frequencies" (negatives to exclude, the mini-batch aware regulariser's counts) is built from these
events only, so validation and test items never shape training.
"""

from __future__ import annotations

import numpy as np

from lifelong.dataset.store import SampleTable


def training_event_mask(offsets: np.ndarray, train: SampleTable) -> np.ndarray:
    """(n_events,) bool: True for the events the training rows of ``train`` see (histories and targets).

    Example:
        >>> t = SampleTable(np.array([0, 0], np.int32), np.array([1, 2], np.int32), np.array([7, 8], np.int32),
        ...                 np.ones(2, np.float32))
        >>> training_event_mask(np.array([0, 5, 8]), t).tolist()  # user 0: positions 0..2; user 1: no rows
        [True, True, True, False, False, False, False, False]
    """
    offsets = np.asarray(offsets, dtype=np.int64)
    counts = np.diff(offsets)
    last = np.full(counts.shape[0], -1, dtype=np.int64)
    if len(train):
        np.maximum.at(last, train.user.astype(np.int64), train.end.astype(np.int64))
    position = np.arange(int(offsets[-1]), dtype=np.int64) - np.repeat(offsets[:-1], counts)
    return position <= np.repeat(last, counts)
