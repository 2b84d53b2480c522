"""Retrieval protocol P2 ``seq-loo`` (docs/protocols.md): leave-one-out next-item retrieval.

For a user's time-ordered items ``i1..in`` (n >= 3): validation predicts ``i(n-1)`` from ``i1..i(n-2)``,
test predicts ``in`` from ``i1..i(n-1)``, and training uses the prefixes of ``i1..i(n-2)``. The tables
keep the CTR layout ``(user, end, target, label)`` (``end`` = number of events before the target):

- ``valid``: ``(u, n-2, i(n-1), 1)``; ``test``: ``(u, n-1, in, 1)``; one row per user, no negatives
  (the whole catalogue is ranked).
- ``train``: one row per user with at least one training pair, ``(u, n-3, i(n-2), 1)``: the last
  training target. The training sequence is ``i1..i(n-2)``; :func:`training_windows` cuts it into
  windows of ``L`` targets so that a causal model trains on every prefix exactly once;
  :func:`training_prefixes` makes every prefix its own row instead (one target each: the regime of
  ICSRec, BSARec and RecBole's augmentation).
"""

from __future__ import annotations

import numpy as np

from lifelong.dataset.store import SampleTable

P2_MIN_EVENTS = 3


def seq_loo_samples(offsets: np.ndarray, event_items: np.ndarray) -> dict[str, SampleTable]:
    """P2 sample tables from CSR offsets (users with fewer than 3 events must already be dropped)."""
    counts = np.diff(offsets).astype(np.int64)
    if counts.size and counts.min() < P2_MIN_EVENTS:
        raise ValueError(f"P2 seq-loo needs at least {P2_MIN_EVENTS} events per user, but "
                         f"{int((counts < P2_MIN_EVENTS).sum()):,} of {counts.size:,} users have fewer; drop them first "
                         f"(prepare does)")
    users = np.arange(counts.shape[0], dtype=np.int64)
    offsets = offsets.astype(np.int64)

    def table(user: np.ndarray, end: np.ndarray) -> SampleTable:
        return _position_rows(user, end, offsets, event_items)

    trainable = users[counts - 3 >= 1]  # at least the pair i1 -> i2 inside i1..i(n-2)
    return {
        "train": table(trainable, counts[trainable] - 3),
        "valid": table(users, counts - 2),
        "test": table(users, counts - 1),
    }


def _position_rows(user: np.ndarray, end: np.ndarray, offsets: np.ndarray, event_items: np.ndarray) -> SampleTable:
    """Rows ``(u, e, item at position e of u, 1)`` of the users' stored sequences."""
    return SampleTable(user=user.astype(np.int32), end=end.astype(np.int32),
                       target=event_items[offsets[user] + end].astype(np.int32),
                       label=np.ones(user.shape[0], np.float32))


def training_windows(train: SampleTable, offsets: np.ndarray, event_items: np.ndarray, max_length: int) -> SampleTable:
    """Cut each training sequence into windows whose ``L`` (or fewer) input events predict the next
    event at every position: a row ``(u, e, item e)`` trains the targets at positions
    ``e - min(e, L) + 1 .. e`` (0-based) of the user's sequence. Consecutive windows of a user end
    ``L`` positions apart, so every target position ``1 .. n-3`` is trained exactly once.

    Example:
        >>> t = SampleTable(np.array([0], np.int32), np.array([5], np.int32), np.array([5], np.int32),
        ...                 np.ones(1, np.float32))
        >>> training_windows(t, np.array([0, 8]), np.arange(8, dtype=np.int32), 2).end.tolist()
        [5, 3, 1]
    """
    if max_length < 1:
        raise ValueError(f"max_length must be at least 1, got {max_length}")
    last = train.end.astype(np.int64)  # (U,) position of the last training target
    n_windows = (last + max_length - 1) // max_length  # positions 1..last in blocks of L from the end
    user = np.repeat(train.user.astype(np.int64), n_windows)
    within = np.arange(user.shape[0], dtype=np.int64) - np.repeat(np.cumsum(n_windows) - n_windows, n_windows)
    end = np.repeat(last, n_windows) - within * max_length
    return _position_rows(user, end, offsets, event_items)


def training_prefixes(train: SampleTable, offsets: np.ndarray, event_items: np.ndarray) -> SampleTable:
    """Every prefix of each training sequence as its own row: a row ``(u, e, item e)`` for each target
    position ``e = 1 .. end`` of each row ``(u, end, ...)`` of ``train``, in user then position order
    (the collator keeps the ``L`` most recent events before ``e``). Trained with the loss on the last
    position only (``Batch.last_target_only``), every target position is trained exactly once, as with
    :func:`training_windows`, but each with its own forward pass (own dropout draw) and its own place
    in a batch.

    Example:
        >>> t = SampleTable(np.array([0], np.int32), np.array([3], np.int32), np.array([3], np.int32),
        ...                 np.ones(1, np.float32))
        >>> p = training_prefixes(t, np.array([0, 6]), np.arange(10, 16, dtype=np.int32))
        >>> p.end.tolist(), p.target.tolist()
        ([1, 2, 3], [11, 12, 13])
    """
    ends = train.end.astype(np.int64)  # (U,) last training target position per row
    user = np.repeat(train.user.astype(np.int64), ends)
    within = np.arange(user.shape[0], dtype=np.int64) - np.repeat(np.cumsum(ends) - ends, ends)
    end = within + 1  # positions 1 .. end of each row
    return _position_rows(user, end, offsets, event_items)


def target_partners(targets: np.ndarray, rng: np.random.Generator) -> np.ndarray:
    """For every training row, another row with the same target item, drawn uniformly (ICSRec's
    cross-subsequence positive: two subsequences that lead to the same next item). A row whose target
    no other row shares is its own partner.

    Args:
        targets: (N,) the target of each row (any integer ids).
        rng: the draw (the trainer seeds it per epoch).

    Returns:
        (N,) int64 row indices ``p`` with ``targets[p] == targets``, and ``p[i] != i`` wherever the target
        of ``i`` occurs more than once.

    Example:
        >>> p = target_partners(np.array([7, 3, 7, 5]), np.random.default_rng(0))
        >>> p.tolist()
        [2, 1, 0, 3]
    """
    n = targets.shape[0]
    by_target = np.argsort(targets, kind="stable")  # rows grouped by target
    grouped = targets[by_target]
    starts = np.flatnonzero(np.r_[True, grouped[1:] != grouped[:-1]])  # (n = 0: one empty group)
    sizes = np.diff(np.r_[starts, n])
    group = np.repeat(np.arange(starts.shape[0]), sizes)  # (N,) group of each grouped row
    start, size = starts[group], sizes[group]
    place = np.arange(n) - start  # (N,) place of each grouped row inside its group
    draw = np.floor(rng.random(n) * np.maximum(size - 1, 1)).astype(np.int64)  # 0 .. size-2 (0 when alone)
    other = np.where(size > 1, draw + (draw >= place), place)  # skip the row itself
    partners = np.empty(n, dtype=np.int64)
    partners[by_target] = by_target[start + other]
    return partners
