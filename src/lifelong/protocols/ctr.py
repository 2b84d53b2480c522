"""CTR sample protocols P1 ``ctr-din`` and P4 ``ctr-time`` (../shared/PROTOCOLS.md).

Both work on the CSR event arrays of a prepared dataset and produce integer sample tables
``(user, end, target, label[, timestamp])``: the history of a sample is the user's first ``end``
events, sliced when a batch is built. Nothing here copies a history.

Every positive gets exactly one negative with the same history (and timestamp): an item row drawn
uniformly from the catalogue with a fixed seed, redrawn while the user has ever interacted with it.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from lifelong.dataset.store import SampleTable

P1_MIN_EVENTS = 4


@dataclass(frozen=True)
class InteractionIndex:
    """Sorted ``user * n_item_rows + item`` keys of every (user, item) pair of the log."""

    keys: np.ndarray  # (n_pairs,) int64, sorted, unique
    n_item_rows: int

    @classmethod
    def build(cls, offsets: np.ndarray, event_items: np.ndarray, n_item_rows: int) -> "InteractionIndex":
        counts = np.diff(offsets)
        users = np.repeat(np.arange(counts.shape[0], dtype=np.int64), counts)
        keys = np.unique(users * n_item_rows + event_items.astype(np.int64))
        return cls(keys=keys, n_item_rows=n_item_rows)

    def contains(self, users: np.ndarray, items: np.ndarray) -> np.ndarray:
        query = users.astype(np.int64) * self.n_item_rows + items.astype(np.int64)
        position = np.searchsorted(self.keys, query)
        position = np.minimum(position, self.keys.shape[0] - 1)
        return self.keys[position] == query


def sample_negatives(users: np.ndarray, index: InteractionIndex, rng: np.random.Generator) -> np.ndarray:
    """One negative item row per entry of ``users``: uniform over rows ``1..n_item_rows-1``, never an
    item the user interacted with (rejection sampling, vectorised)."""
    negatives = rng.integers(1, index.n_item_rows, size=users.shape[0], dtype=np.int64)
    pending = np.flatnonzero(index.contains(users, negatives))
    for _ in range(1000):
        if pending.size == 0:
            return negatives.astype(np.int32)
        negatives[pending] = rng.integers(1, index.n_item_rows, size=pending.size, dtype=np.int64)
        pending = pending[index.contains(users[pending], negatives[pending])]
    raise ValueError(
        f"could not draw negatives for {pending.size} samples: their users interacted with (almost) every "
        f"item of the catalogue ({index.n_item_rows - 1} items)"
    )


def _with_negatives(
    user: np.ndarray, end: np.ndarray, target: np.ndarray, timestamp: np.ndarray | None,
    index: InteractionIndex, rng: np.random.Generator,
) -> SampleTable:
    """Interleave each positive with its negative: rows (pos, neg, pos, neg, ...)."""
    negatives = sample_negatives(user, index, rng)
    pair = lambda a, b: np.stack([a, b], axis=1).reshape(-1)  # noqa: E731
    n = user.shape[0]
    return SampleTable(
        user=pair(user, user).astype(np.int32),
        end=pair(end, end).astype(np.int32),
        target=pair(target.astype(np.int32), negatives),
        label=pair(np.ones(n, np.float32), np.zeros(n, np.float32)),
        timestamp=None if timestamp is None else pair(timestamp, timestamp).astype(np.int64),
    )


def ctr_din_samples(
    offsets: np.ndarray,
    event_items: np.ndarray,
    n_item_rows: int,
    *,
    seed: int = 2024,
    max_train_per_user: int | None = None,
    index: InteractionIndex | None = None,
) -> dict[str, SampleTable]:
    """P1 ``ctr-din``: for user events ``e1..en`` (n >= 4), training targets at ``k = 2..n-2``,
    validation at ``k = n-1``, test at ``k = n``; the history of target ``k`` is ``e1..e(k-1)``,
    so ``end = k - 1``.

    Args:
        offsets: (n_users + 1,) CSR offsets; users with fewer than 4 events must already be dropped.
        event_items: (n_events,) item rows, sorted by user then (timestamp, original row).
        n_item_rows: number of item rows including the padding row 0.
        seed: negative sampling seed (PROTOCOLS.md default 2024).
        max_train_per_user: keep only each user's most recent training targets (for huge logs).
    """
    counts = np.diff(offsets).astype(np.int64)
    if counts.size and counts.min() < P1_MIN_EVENTS:
        raise ValueError(f"P1 needs at least {P1_MIN_EVENTS} events per user; drop shorter users first")
    index = index or InteractionIndex.build(offsets, event_items, n_item_rows)
    users = np.arange(counts.shape[0], dtype=np.int64)
    starts = offsets[:-1].astype(np.int64)

    n_train = counts - 3  # k = 2 .. n-2
    first_end = np.ones_like(counts)  # end = k - 1 starts at 1
    if max_train_per_user is not None:
        keep = np.minimum(n_train, max_train_per_user)
        first_end = first_end + (n_train - keep)
        n_train = keep
    train_user = np.repeat(users, n_train)
    # end runs first_end .. first_end + n_train - 1 within each user
    within = np.arange(train_user.shape[0], dtype=np.int64) - np.repeat(np.cumsum(n_train) - n_train, n_train)
    train_end = np.repeat(first_end, n_train) + within
    train_target = event_items[starts[train_user] + train_end]

    valid_end = counts - 2  # k = n - 1
    test_end = counts - 1  # k = n
    splits = {
        "train": (train_user, train_end, train_target),
        "valid": (users, valid_end, event_items[starts + valid_end]),
        "test": (users, test_end, event_items[starts + test_end]),
    }
    out = {}
    for number, (name, (user, end, target)) in enumerate(splits.items()):
        rng = np.random.default_rng([seed, number])
        out[name] = _with_negatives(user, end, target, None, index, rng)
    return out


def time_cuts(timestamps: np.ndarray, quantiles: tuple[float, float] = (0.8, 0.9)) -> tuple[int, int]:
    """P4 cut points: the event timestamps at the given quantiles (``method='lower'``, so each cut is
    the timestamp of a real event)."""
    if timestamps.size == 0:
        raise ValueError("cannot compute time cuts of an empty log")
    t_valid, t_test = np.quantile(timestamps, quantiles, method="lower")
    return int(t_valid), int(t_test)


def ctr_time_samples(
    offsets: np.ndarray,
    event_items: np.ndarray,
    event_timestamps: np.ndarray,
    n_item_rows: int,
    *,
    t_valid: int,
    t_test: int,
    positive: np.ndarray | None = None,
    seed: int = 2024,
    index: InteractionIndex | None = None,
) -> dict[str, SampleTable]:
    """P4 ``ctr-time``: every positive event before ``t_valid`` is a training target, in
    ``[t_valid, t_test)`` a validation target, from ``t_test`` on a test target. Its history is the
    user's events strictly before its timestamp (``end`` = how many); targets with an empty history
    are dropped.

    Args:
        positive: (n_events,) bool, which events count as positive targets (default: all).
    """
    if not t_valid <= t_test:
        raise ValueError(f"t_valid ({t_valid}) must not be after t_test ({t_test})")
    counts = np.diff(offsets).astype(np.int64)
    index = index or InteractionIndex.build(offsets, event_items, n_item_rows)
    n_users = counts.shape[0]
    event_user = np.repeat(np.arange(n_users, dtype=np.int64), counts)
    # Events are sorted by (user, timestamp), so a global search on (user, timestamp) keys finds, for
    # each event, the first event of the same user with an equal timestamp: its history length.
    span = int(event_timestamps.max() - event_timestamps.min()) + 1 if event_timestamps.size else 1
    keys = event_user * span + (event_timestamps - (event_timestamps.min() if event_timestamps.size else 0))
    first_same_time = np.searchsorted(keys, keys, side="left")
    end = first_same_time - offsets[:-1][event_user]
    keep = end > 0
    if positive is not None:
        keep &= positive
    bounds = {
        "train": event_timestamps < t_valid,
        "valid": (event_timestamps >= t_valid) & (event_timestamps < t_test),
        "test": event_timestamps >= t_test,
    }
    out = {}
    for number, (name, in_split) in enumerate(bounds.items()):
        chosen = np.flatnonzero(keep & in_split)
        rng = np.random.default_rng([seed, number])
        out[name] = _with_negatives(
            event_user[chosen], end[chosen], event_items[chosen], event_timestamps[chosen], index, rng
        )
    return out
