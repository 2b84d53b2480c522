"""A synthetic behavior log with planted, learnable user-interest structure.

The generator is the package's embedded default dataset: no download, deterministic for a seed,
and fast enough for tens of millions of events. Its structure is chosen so that *target attention*
over the history beats *sum pooling*:

* items belong to clusters, the categories; category popularity is Zipf-like, and so is item
  popularity inside a category;
* each user holds ``n_interests`` latent interests (distinct categories drawn by popularity) with
  Dirichlet weights;
* each next event continues the category of the previous event with probability ``p_continue``,
  otherwise it picks an interest by weight; the item is then drawn from that category;
* interests drift: at every event a user replaces one interest with a fresh category with
  probability ``drift / 20`` (so about ``drift`` replacements per 20 events), with a new weight.

The next item's category is therefore predictable from the part of the history that shares it
(recent events above all), which attention over the history can pick out and sum pooling blurs.

Generation loops over the event index ``t`` and is vectorised across all users at once.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import polars as pl

__all__ = ["synthetic_log", "write_synthetic_log"]

START_TIMESTAMP = 1_704_067_200  # 2024-01-01T00:00:00Z
_DRIFT_WINDOW = 20  # ``drift`` is the replacement probability per this many events
_CATEGORY_ZIPF = 1.0  # exponent of category popularity
_ITEM_ZIPF = 1.1  # exponent of item popularity within a category
_N_TAGS = 64  # attribute vocabulary 'a1'..'a64'
_TAGS_PER_ITEM = 2
_SESSION_BREAK = 0.05  # probability that a gap is a session break
_IN_SESSION_GAP_S = 90.0  # mean gap between events of one session
_SESSION_GAP_S = 86_400.0  # mean gap between sessions


def _zipf_weights(n: int, exponent: float) -> np.ndarray:
    """Normalised Zipf-like weights ``1 / (rank + 1) ** exponent`` for ranks 0..n-1."""
    weights = 1.0 / np.arange(1, n + 1, dtype=np.float64) ** exponent
    return weights / weights.sum()


def _events_range(events_per_user: int | tuple[int, int]) -> tuple[int, int]:
    """Normalise ``events_per_user`` to an inclusive ``(low, high)`` pair and validate it."""
    if isinstance(events_per_user, (int, np.integer)):
        low = high = int(events_per_user)
    else:
        low, high = (int(v) for v in events_per_user)
    if low < 1 or high < low:
        raise ValueError(f"events_per_user must satisfy 1 <= low <= high, got {events_per_user}")
    return low, high


def _item_catalogue(
    rng: np.random.Generator, n_items: int, n_categories: int
) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Assign items to categories and build a sampler for items within a category.

    Returns:
        ``(item_category, slot_item, slot_key)``: the 0-based category of each item (index = item
        id - 1); the item id held by each slot of the category-major slot table; and a strictly
        increasing key per slot, ``category + cumulative within-category probability``, so that
        ``slot_item[searchsorted(slot_key, c + u, 'right')]`` draws an item of category ``c`` for
        ``u`` uniform in [0, 1).
    """
    sizes = 1 + rng.multinomial(n_items - n_categories, np.full(n_categories, 1.0 / n_categories))
    slot_category = np.repeat(np.arange(n_categories), sizes)
    first_slot = np.cumsum(sizes) - sizes
    local_rank = np.arange(n_items) - first_slot[slot_category]
    # Zipf weight by local popularity rank, normalised and accumulated within each category.
    weight = 1.0 / (local_rank + 1.0) ** _ITEM_ZIPF
    cumulative = np.cumsum(weight)
    before = np.append(0.0, cumulative)[first_slot]
    totals = np.add.reduceat(weight, first_slot)
    within = (cumulative - before[slot_category]) / totals[slot_category]
    last_slot = first_slot + sizes - 1
    within[last_slot] = 1.0
    slot_key = slot_category + within
    # Item ids are shuffled so that neither id order nor category order reveals popularity.
    slot_item = rng.permutation(n_items) + 1
    item_category = np.empty(n_items, dtype=np.int64)
    item_category[slot_item - 1] = slot_category
    return item_category, slot_item, slot_key


def _draw_categories(rng: np.random.Generator, cdf: np.ndarray, size: int) -> np.ndarray:
    """Draw ``size`` categories from a popularity CDF."""
    return np.minimum(np.searchsorted(cdf, rng.random(size), side="right"), len(cdf) - 1)


def _simulate(
    rng: np.random.Generator,
    lengths: np.ndarray,
    n_categories: int,
    n_interests: int,
    drift: float,
    p_continue: float,
    slot_item: np.ndarray,
    slot_key: np.ndarray,
) -> np.ndarray:
    """Run the interest process; return item ids of shape ``(max_length, n_users)`` (time-major)."""
    n_users = len(lengths)
    max_length = int(lengths.max())
    popularity = _zipf_weights(n_categories, _CATEGORY_ZIPF)[rng.permutation(n_categories)]
    category_cdf = np.cumsum(popularity)
    users = np.arange(n_users)

    # Distinct initial interests by popularity (Gumbel top-k), in chunks to bound memory.
    interests = np.empty((n_users, n_interests), dtype=np.int64)
    log_popularity = np.log(popularity)
    chunk = max(1, 4_000_000 // n_categories)
    for lo in range(0, n_users, chunk):
        hi = min(n_users, lo + chunk)
        keys = log_popularity + rng.gumbel(size=(hi - lo, n_categories))
        interests[lo:hi] = np.argpartition(-keys, n_interests - 1, axis=1)[:, :n_interests]
    strength = rng.gamma(1.0, size=(n_users, n_interests))  # normalised: Dirichlet(1) weights
    cum_weights = np.cumsum(strength, axis=1)
    cum_weights /= cum_weights[:, -1:]

    drift_rate = drift / _DRIFT_WINDOW
    items = np.empty((max_length, n_users), dtype=np.int32)
    previous = np.zeros(n_users, dtype=np.int64)
    for t in range(max_length):
        draws = rng.random((3, n_users))
        if t > 0 and drift_rate > 0.0:
            changed = np.flatnonzero(draws[2] < drift_rate)
            if len(changed):
                slot = rng.integers(0, n_interests, size=len(changed))
                fresh = _draw_categories(rng, category_cdf, len(changed))
                for _ in range(3):  # redraw a few times when the fresh category is already held
                    clash = (interests[changed] == fresh[:, None]).any(axis=1)
                    if not clash.any() or n_categories <= n_interests:
                        break
                    fresh[clash] = _draw_categories(rng, category_cdf, int(clash.sum()))
                interests[changed, slot] = fresh
                strength[changed, slot] = rng.gamma(1.0, size=len(changed))
                cum = np.cumsum(strength[changed], axis=1)
                cum_weights[changed] = cum / cum[:, -1:]
        chosen = (draws[0][:, None] >= cum_weights[:, :-1]).sum(axis=1)
        category = interests[users, chosen]
        if t > 0:
            category = np.where(draws[1] < p_continue, previous, category)
        previous = category
        # Cap u below 1 so that ``category + u`` cannot round up to the next category's range.
        u = np.minimum(rng.random(n_users), 1.0 - 1e-9)
        slot = np.searchsorted(slot_key, category + u, side="right")
        items[t] = slot_item[np.minimum(slot, len(slot_item) - 1)]
    return items


def synthetic_log(
    n_users: int = 2000,
    n_items: int = 2000,
    n_categories: int = 40,
    events_per_user: int | tuple[int, int] = (20, 80),
    n_interests: int = 3,
    drift: float = 0.2,
    seed: int = 0,
    *,
    p_continue: float = 0.6,
    buy_rate: float = 0.05,
) -> tuple[pl.DataFrame, pl.DataFrame]:
    """Generate a synthetic behavior log with planted multi-interest, drifting structure.

    Args:
        n_users: number of users (ids 1..n_users).
        n_items: number of items (ids 1..n_items); at least ``n_categories``.
        n_categories: number of item categories (clusters), named 'c1'..'cN'.
        events_per_user: events per user: an int, or an inclusive ``(low, high)`` range drawn
            uniformly per user.
        n_interests: latent interests (categories) per user, at most ``n_categories``.
        drift: probability of replacing one interest per 20 events, in [0, 20].
        seed: random seed; equal arguments give identical output.
        p_continue: probability that an event continues the previous event's category.
        buy_rate: fraction of events with behavior 'buy' (the rest are 'click').

    Returns:
        ``(events, items)``. events: user_id Int64, item_id Int64, timestamp Int64 (unix seconds,
        strictly increasing per user, from 2024-01-01), behavior Utf8 ('click' or 'buy'), row Int64
        (0..n-1), sorted by user then time. items: item_id Int64, category Utf8, attributes
        List[Utf8] (the category followed by two distinct 'a..' tags).

    Raises:
        ValueError: on inconsistent sizes or probabilities outside their ranges.
    """
    if n_users < 1 or n_categories < 1:
        raise ValueError(
            f"n_users and n_categories must be positive, got {n_users}, {n_categories}"
        )
    if n_items < n_categories:
        raise ValueError(f"n_items ({n_items}) must be at least n_categories ({n_categories})")
    if not 1 <= n_interests <= n_categories:
        raise ValueError(f"n_interests must lie in [1, n_categories], got {n_interests}")
    if not 0.0 <= drift <= _DRIFT_WINDOW:
        raise ValueError(f"drift must lie in [0, {_DRIFT_WINDOW}], got {drift}")
    for name, value in (("p_continue", p_continue), ("buy_rate", buy_rate)):
        if not 0.0 <= value <= 1.0:
            raise ValueError(f"{name} must lie in [0, 1], got {value}")
    low, high = _events_range(events_per_user)

    rng = np.random.default_rng(seed)
    item_category, slot_item, slot_key = _item_catalogue(rng, n_items, n_categories)
    lengths = rng.integers(low, high + 1, size=n_users)
    grid = _simulate(
        rng, lengths, n_categories, n_interests, drift, p_continue, slot_item, slot_key
    )
    # Time-major grid -> user-major flat events, keeping each user's first ``length`` steps.
    keep = np.arange(grid.shape[0])[None, :] < lengths[:, None]
    item_id = grid.T[keep].astype(np.int64)
    del grid, keep
    n_events = len(item_id)

    first = np.cumsum(lengths) - lengths
    start = START_TIMESTAMP + rng.integers(0, 7 * 86_400, size=n_users)
    mean_gap = np.where(rng.random(n_events) < _SESSION_BREAK, _SESSION_GAP_S, _IN_SESSION_GAP_S)
    gap = 1 + np.floor(rng.exponential(size=n_events) * mean_gap).astype(np.int64)
    gap[first] = 0
    elapsed = np.cumsum(gap)
    elapsed -= np.repeat(elapsed[first], lengths)
    timestamp = elapsed + np.repeat(start, lengths)
    del gap, elapsed, mean_gap
    is_buy = rng.random(n_events) < buy_rate

    events = pl.DataFrame(
        {
            "user_id": pl.Series(np.repeat(np.arange(1, n_users + 1, dtype=np.int64), lengths)),
            "item_id": pl.Series(item_id, dtype=pl.Int64),
            "timestamp": pl.Series(timestamp, dtype=pl.Int64),
            "is_buy": pl.Series(is_buy),
        }
    ).select(
        "user_id",
        "item_id",
        "timestamp",
        behavior=pl.when(pl.col("is_buy")).then(pl.lit("buy")).otherwise(pl.lit("click")),
        row=pl.int_range(pl.len(), dtype=pl.Int64),
    )

    first_tag = rng.integers(0, _N_TAGS, size=n_items)
    tags = [first_tag]
    for _ in range(_TAGS_PER_ITEM - 1):  # distinct tags: shift by a non-zero offset
        tags.append((tags[-1] + rng.integers(1, _N_TAGS, size=n_items)) % _N_TAGS)
    tag_columns = {f"tag{k}": pl.Series(tag + 1) for k, tag in enumerate(tags)}
    items = pl.DataFrame(
        {
            "item_id": pl.Series(np.arange(1, n_items + 1, dtype=np.int64)),
            "category": pl.Series(item_category + 1),
            **tag_columns,
        }
    ).select(
        "item_id",
        category=pl.format("c{}", "category"),
        attributes=pl.concat_list(
            pl.format("c{}", "category"), *(pl.format("a{}", name) for name in tag_columns)
        ),
    )
    return events, items


def write_synthetic_log(out_path: Path, **kwargs: object) -> tuple[Path, Path]:
    """Generate a synthetic log and write it to Parquet.

    Args:
        out_path: events file, e.g. ``data/synthetic.parquet``; items go to
            ``<stem>_items.parquet`` in the same folder. Parent folders are created.
        **kwargs: forwarded to :func:`synthetic_log`.

    Returns:
        ``(events_path, items_path)``.
    """
    out_path = Path(out_path)
    events, items = synthetic_log(**kwargs)  # type: ignore[arg-type]
    out_path.parent.mkdir(parents=True, exist_ok=True)
    items_path = out_path.with_name(f"{out_path.stem}_items.parquet")
    events.write_parquet(out_path)
    items.write_parquet(items_path)
    return out_path, items_path
