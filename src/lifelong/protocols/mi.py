"""Retrieval protocol P3 ``mi-split`` (docs/protocols.md), the ComiRec protocol: users are split
8:1:1 into train / validation / test users; a held-out user's first 80% of behaviors are the input and
the model must retrieve the remaining 20%.

Tables keep the layout ``(user, end, target, label)`` (``end`` = number of events before the target):

- ``train``: every next-item position of every training user, ``(u, e, item e)`` for ``e = 1 .. n-1``
  (rows point into the stored sequence; nothing is copied per sample).
- ``valid`` / ``test``: one row per held-out user, ``(u, c, item c)`` with ``c = max(1, min(n-1,
  floor(0.8 n)))``: the input is ``events[:c]`` (its most recent L at model time), the targets are
  ``events[c:n]``, all of them (:func:`target_sets`), not only the ``target`` column's first one.

``user_order``: ``random`` (the protocol: a seeded permutation) or ``time``, the shifted split (users
ordered by their last event, so the earliest 80% train the model and the latest 10% are the test users;
DESMIL's distribution-shift evaluation).

Choices where the protocol is silent: every position with at least one earlier event trains (ComiRec's
code draws positions with at least 4); a held-out user keeps at least one input and one target event.
"""

from __future__ import annotations

import numpy as np

from lifelong.dataset.store import SampleTable

P3_MIN_EVENTS = 2
USER_ORDERS = ("random", "time")
INPUT_SHARE = 0.8


def mi_split_samples(offsets: np.ndarray, event_items: np.ndarray, seed: int, user_order: str = "random",
                     event_timestamps: np.ndarray | None = None) -> dict[str, SampleTable]:
    """P3 sample tables from CSR offsets (users with fewer than 2 events must already be dropped).

    Example:
        >>> t = mi_split_samples(np.array([0, 5, 10, 15, 20, 25, 30, 35, 40, 45, 50]), np.arange(50, dtype=np.int32), 0)
        >>> [len(t[s]) for s in ("train", "valid", "test")]
        [32, 1, 1]
    """
    counts = np.diff(offsets).astype(np.int64)
    if counts.size and counts.min() < P3_MIN_EVENTS:
        raise ValueError(f"P3 mi-split needs at least {P3_MIN_EVENTS} events per user, but "
                         f"{int((counts < P3_MIN_EVENTS).sum()):,} of {counts.size:,} users have fewer; drop them first "
                         f"(prepare does)")
    if user_order not in USER_ORDERS:
        raise ValueError(f"user_order must be one of {USER_ORDERS}, got {user_order!r}")
    n_users = counts.shape[0]
    if user_order == "random":
        order = np.random.default_rng(seed).permutation(n_users)
    else:
        if event_timestamps is None:
            raise ValueError("the time-ordered (shifted) P3 split needs event timestamps")
        last = event_timestamps[offsets[1:] - 1]
        order = np.lexsort((np.arange(n_users), last))  # by last event time, ties by user row
    n_train, n_valid = int(round(0.8 * n_users)), int(round(0.1 * n_users))
    groups = {"train": np.sort(order[:n_train]), "valid": np.sort(order[n_train:n_train + n_valid]),
              "test": np.sort(order[n_train + n_valid:])}
    starts = offsets[:-1].astype(np.int64)

    def table(user: np.ndarray, end: np.ndarray) -> SampleTable:
        return SampleTable(user=user.astype(np.int32), end=end.astype(np.int32),
                           target=event_items[starts[user] + end].astype(np.int32),
                           label=np.ones(user.shape[0], np.float32))

    train_users = groups["train"]
    positions = counts[train_users] - 1  # ends 1 .. n-1
    user = np.repeat(train_users, positions)
    end = 1 + np.arange(user.shape[0]) - np.repeat(np.cumsum(positions) - positions, positions)
    tables = {"train": table(user, end)}
    for split in ("valid", "test"):
        held = groups[split]
        tables[split] = table(held, input_length(counts[held]))
    return tables


def input_length(counts: np.ndarray) -> np.ndarray:
    """Input events of a held-out user with ``counts`` events: ``floor(0.8 n)``, kept in ``[1, n-1]``."""
    return np.clip(np.floor(INPUT_SHARE * counts).astype(np.int64), 1, counts - 1)


def target_sets(samples: SampleTable, offsets: np.ndarray, event_items: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """CSR ``(target_offsets (N+1,), target_items)`` of every held-out row: the distinct items of
    ``events[end:n]`` (a repeated item counts once), in first-occurrence order."""
    user = samples.user.astype(np.int64)
    begin = offsets[user] + samples.end.astype(np.int64)
    finish = offsets[user + 1]
    sets = [pd_unique(event_items[b:f]) for b, f in zip(begin.tolist(), finish.tolist())]
    sizes = np.array([s.shape[0] for s in sets], dtype=np.int64)
    target_offsets = np.concatenate([[0], np.cumsum(sizes)])
    items = np.concatenate(sets) if sets else np.zeros(0, event_items.dtype)
    return target_offsets, items


def pd_unique(values: np.ndarray) -> np.ndarray:
    """Distinct values in first-occurrence order."""
    _, first = np.unique(values, return_index=True)
    return values[np.sort(first)]
