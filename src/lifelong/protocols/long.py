"""P5 ``ctr-long``: lifelong CTR, the SIM / ETA / DARE protocol at any history length (docs/protocols.md).

Per user with ``n >= min_events`` events ``e1..en`` (sorted by time, then input row):

- test target at ``k = n``, validation at ``k = n - 1``, training at ``k = n - 2 - 5j`` for
  ``j = 0 .. 18`` while ``k >= 2`` (at most 19 per user: positions -3, -8, ..., -93 from the end);
- the history of a target at ``k`` is ``e1..e(k-1)`` (a sample stores ``end = k - 1``; the batch keeps the
  most recent ``L``, any ``L`` up to 100,000);
- two negatives per positive, with the positive's history: item rows drawn with probability proportional
  to their number of training-target and history events (the events ``e1..e(n-2)`` of every user: each
  is a training target or in a training target's history), never an item the user interacted with (any
  of its events, test included), with a fixed seed.

Rows come per user in time order of the targets, each positive followed by its two negatives. As in the
other protocols, nothing here copies a history.
"""

from __future__ import annotations

import numpy as np

from lifelong.dataset.store import SampleTable
from lifelong.protocols.negatives import InteractionIndex, sample_negatives

P5_MIN_EVENTS = 20
P5_TRAIN_TARGETS = 19  # at most this many training targets per user
P5_TRAIN_STRIDE = 5  # training targets every 5 positions back from n - 2
P5_NEGATIVES = 2  # negatives per positive


def target_positions(counts: np.ndarray) -> dict[str, tuple[np.ndarray, np.ndarray]]:
    """1-based target positions ``k`` per split, as (user index, k) arrays in user order.

    Example:
        >>> split = target_positions(np.array([20, 4]))
        >>> split["test"][1].tolist(), split["valid"][1].tolist()
        ([20, 4], [19, 3])
        >>> split["train"][1][split["train"][0] == 0].tolist()  # n = 20: k = 18, 13, 8, 3 (in time order)
        [3, 8, 13, 18]
        >>> split["train"][1][split["train"][0] == 1].tolist()  # n = 4: k = 2
        [2]
    """
    counts = counts.astype(np.int64)
    users = np.arange(counts.shape[0], dtype=np.int64)
    back = np.arange(P5_TRAIN_TARGETS, dtype=np.int64)[::-1] * P5_TRAIN_STRIDE  # earliest first
    k = counts[:, None] - 2 - back[None, :]  # (U, 19)
    keep = k >= 2
    train_users = np.broadcast_to(users[:, None], k.shape)[keep]
    return {"train": (train_users, k[keep]), "valid": (users, counts - 1), "test": (users, counts)}


def ctr_long_samples(offsets: np.ndarray, event_items: np.ndarray, n_item_rows: int, seed: int = 2024,
                     index: InteractionIndex | None = None) -> dict[str, SampleTable]:
    """The P5 sample tables of a prepared log whose users all have at least :data:`P5_MIN_EVENTS` events
    (``prepare`` drops the others).

    Args:
        offsets: (n_users + 1,) CSR offsets of each user's events.
        event_items: (n_events,) item rows, per user in time order.
        n_item_rows: item rows including the padding row 0.
        seed: the negatives' seed.
        index: the (user, item) pairs of the whole log (built when not given).

    Returns:
        ``train``, ``valid`` and ``test`` tables of ``(user, end, target, label)``, each positive followed
        by its two negatives.
    """
    counts = np.diff(offsets).astype(np.int64)
    if counts.size and int(counts.min()) < 2:
        raise ValueError("P5 needs at least 2 events per user (validation and test targets)")
    index = index or InteractionIndex.build(offsets, event_items, n_item_rows)
    # frequency pool: the events e1..e(n-2) of every user (training targets and their histories)
    positions = np.arange(event_items.shape[0], dtype=np.int64) - np.repeat(offsets[:-1], counts)
    pool = event_items[positions < np.repeat(counts - 2, counts)].astype(np.int64)
    if pool.size == 0:
        raise ValueError("P5: no training events to draw negatives from (every user has 2 events)")
    rng = np.random.default_rng([seed, 5])
    tables = {}
    for split, (users, k) in target_positions(counts).items():
        targets = event_items[offsets[users] + k - 1].astype(np.int32)
        draws = _distinct_negatives(users, index, rng, pool)
        group = 1 + P5_NEGATIVES
        tables[split] = SampleTable(
            user=np.repeat(users, group).astype(np.int32),
            end=np.repeat(k - 1, group).astype(np.int32),
            target=np.stack([targets, *draws], axis=1).reshape(-1).astype(np.int32),
            label=np.tile(np.array([1.0] + [0.0] * P5_NEGATIVES, np.float32), users.shape[0]),
        )
    return tables


def _distinct_negatives(users: np.ndarray, index: InteractionIndex, rng: np.random.Generator,
                        pool: np.ndarray) -> list[np.ndarray]:
    """:data:`P5_NEGATIVES` draws per user from the frequency ``pool``, never the user's items, the draws of
    one positive distinct (a repeated one is drawn again)."""
    size = np.full(users.shape[0], pool.shape[0])
    draws: list[np.ndarray] = []
    for _ in range(P5_NEGATIVES):
        draw = sample_negatives(users, index, rng, pool, size)
        for _attempt in range(100):
            repeated = np.flatnonzero(np.any([draw == d for d in draws], axis=0)) if draws else np.zeros(0, int)
            if repeated.size == 0:
                break
            draw[repeated] = sample_negatives(users[repeated], index, rng, pool, size[repeated])
        draws.append(draw)
    return draws
