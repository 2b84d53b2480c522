"""CTR sample protocols P1 ``ctr-din`` and P4 ``ctr-time`` (docs/protocols.md).

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
from lifelong.protocols.negatives import InteractionIndex, sample_negatives

P1_MIN_EVENTS = 4


@dataclass(frozen=True)
class Catalogue:
    """Items in the order they first appear in the log, so that "the catalogue at time t" is a prefix."""

    items: np.ndarray  # (n_items,) item rows sorted by first event time
    first_seen: np.ndarray  # (n_items,) their first event time, ascending

    @classmethod
    def build(cls, event_items: np.ndarray, event_timestamps: np.ndarray, n_item_rows: int) -> "Catalogue":
        first = np.full(n_item_rows, np.iinfo(np.int64).max, dtype=np.int64)
        np.minimum.at(first, event_items.astype(np.int64), event_timestamps.astype(np.int64))
        rows = np.flatnonzero(first[1:] < np.iinfo(np.int64).max) + 1
        order = np.argsort(first[rows], kind="stable")
        return cls(items=rows[order], first_seen=first[rows][order])

    def size_before(self, timestamps: np.ndarray) -> np.ndarray:
        """How many items had appeared strictly before each timestamp."""
        return np.searchsorted(self.first_seen, timestamps, side="left")


def _with_negatives(
    user: np.ndarray, end: np.ndarray, target: np.ndarray, timestamp: np.ndarray | None,
    index: InteractionIndex, rng: np.random.Generator, catalogue: Catalogue | None = None,
) -> SampleTable:
    """Interleave each positive with its negative: rows (pos, neg, pos, neg, ...)."""
    if catalogue is None:
        negatives = sample_negatives(user, index, rng)
    else:  # the catalogue as it was at the sample's time (at least one item: the target itself)
        size = np.maximum(catalogue.size_before(timestamp + 1), 1)
        negatives = sample_negatives(user, index, rng, catalogue.items, size)
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
        seed: negative sampling seed (docs/protocols.md default 2024).
        max_train_per_user: keep only each user's most recent training targets (for huge logs).
    """
    counts = np.diff(offsets).astype(np.int64)
    if counts.size and counts.min() < P1_MIN_EVENTS:
        raise ValueError(f"P1 ctr-din needs at least {P1_MIN_EVENTS} events per user, but "
                         f"{int((counts < P1_MIN_EVENTS).sum()):,} of {counts.size:,} users have fewer; drop them first "
                         f"(prepare does)")
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

    The negative of a target at time ``t`` is drawn from the catalogue as it was at ``t`` (the items
    with an event at or before ``t``), a departure from P4 as written (docs/protocols.md, D4): drawing
    from the whole log would give training targets negatives that only appear after ``t_valid``, whose ids are
    unknown to the vocabulary, and a model learns "unknown id = not clicked", which inverts on the
    test split where most positives are new items (seen: test AUC 0.40 on the Taobao head).

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
    catalogue = Catalogue.build(event_items, event_timestamps, n_item_rows)
    out = {}
    for number, (name, in_split) in enumerate(bounds.items()):
        chosen = np.flatnonzero(keep & in_split)
        rng = np.random.default_rng([seed, number])
        out[name] = _with_negatives(
            event_user[chosen], end[chosen], event_items[chosen], event_timestamps[chosen], index, rng, catalogue
        )
    return out
