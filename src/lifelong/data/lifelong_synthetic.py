"""A lifelong synthetic log: bursts of many interests, with a planted long-range signal in the tail.

The log is built so that the last events of a user are predictable from the *far* history and not from
the recent window: a model that reads the last ``window`` (50) events cannot recover a long-range target,
a model that reads (or searches) the whole history can. The generative process, in full:

Catalogue (planted categories, content clusters, content vectors, attributes):

1. ``n_categories`` categories 'c1'..'cC' with popularity ``pi_c`` proportional to
   ``1 / rank ** category_zipf`` (ranks shuffled). Each category holds ``clusters_per_category``
   content clusters 'k1'..'kK' (cluster ``k`` belongs to category ``k // clusters_per_category``).
2. ``n_items`` items (ids 1..n_items, shuffled): every cluster gets one item, the rest are spread
   uniformly over the clusters. Within a category, item popularity is ``1 / rank ** item_zipf``.
3. Content vectors (``embedding``, ``embedding_dim`` float32 values): category centre
   ``m_c ~ N(0, I)``, cluster centre ``m_k = m_c + cluster_spread * N(0, I)``, item vector
   ``m_k + item_noise * N(0, I)``. So items cluster by their planted cluster, and clusters by category.
4. ``attributes``: the category name, the cluster's own tag (one of 'a1'..'a64', fixed per cluster) and a
   second, distinct, uniformly drawn tag. The items frame also carries its planted ``cluster`` (a column
   that prepare ignores; it is the ground truth for content models).

Users (ids 1..n_users), all drawn at once (vectorised across users):

5. ``n_interests`` (64) latent interests: distinct categories drawn by popularity ``pi`` without
   replacement; interest weights ``w ~ Dirichlet(interest_concentration)`` (1: uniform on the simplex).
   Every event of the user belongs to one of them, so an interest *is* a category here.
6. Length ``n``: ``events_per_user`` (an int; a ``(low, high)`` range, uniform, or log-uniform with
   ``length_distribution="log-uniform"``). The first ``n - tail`` events are the *body*, the last
   ``tail`` (default 100) the *tail*.
7. Body: a sequence of bursts. A burst draws an interest by weight ``w`` (independently of the last
   burst, so a repeat merely extends the run) and lasts ``Geometric(1 / burst_mean)`` events (mean
   ``burst_mean`` = 10, at least 1); all its events belong to that interest. With 64 interests an
   interest of average weight comes back about every 640 events: its bursts are separated by long gaps
   filled with other interests. The burst that crosses into the tail is cut; its remaining events carry
   into the tail.
8. Tail: event ``t`` (0-based position in the user's log) is

   * with probability ``p_long`` a **recall**: an interest drawn by weight among the *eligible*
     interests ``E_t``, those whose most recent event lies before ``t - window`` (present earlier,
     absent from the ``window`` preceding events ``t - window .. t - 1``). A recall is one event: it
     neither ends nor extends the current burst. When ``E_t`` is empty, the event is a recent one
     instead;
   * otherwise a **recent** event: the current burst goes on while it has events left and its interest
     occurs among the ``window`` preceding events; else a new burst starts, its interest drawn by weight
     among the interests that occur in those ``window`` events, its length geometric as in the body.

   **Stated probability.** Every tail event's category is absent from its ``window`` preceding events
   but present earlier with probability exactly ``p_long`` whenever ``E_t`` is non-empty, and otherwise
   it occurs among those ``window`` events (never a category new to the user). Recalls keep about
   ``p_long * window`` interests inside the window, so ``E_t`` stays non-empty while a user has seen
   clearly more interests than that: with the defaults (64 interests, ``p_long`` = 0.5) and at least
   1,000 events per user, the measured share of long-range tail events is ``p_long`` within sampling
   error (:func:`long_range_events` measures it; at ``p_long`` = 0.9 raise ``n_interests`` to about 96).
   So under P5 ``ctr-long`` (test at ``n``, validation at ``n - 1``, training at ``n - 2 - 5j``, all
   within the last 93 events) and under P1 ``ctr-din`` with ``max_train_per_user <= tail - 2``, every
   target is long-range with probability ``p_long`` (0.5 by default). In the body the share is only
   that of bursts that come back after a gap longer than ``window``: about 4.5% of events with the
   defaults (the tests pin it below 10%).
9. Items: each event's item is drawn from its category by within-category popularity.
10. Timestamps: strictly increasing per user from a start in the first week of 2024; gaps
    ``1 + Exponential`` seconds with mean 60 in a session, and with probability 0.02 a session break of
    mean one day.

Generation draws the body burst by burst (no loop over time) and loops over the ``tail`` positions
only, vectorised across users: 100 users x 100,000 events take a few seconds, memory is proportional
to the number of events. Equal arguments give identical output.

Signal check (P1 ``ctr-din`` with ``--max-train-per-user 98``, so that every training target lies in the
tail; 1,000 users x 1,100 events, seed 1; DIN with ``embedding_dim=8``, ``attention_hidden=[16]``,
``dnn_hidden=[32]``, softmax attention, one epoch, batch 256, lr 0.005, one CPU thread): test AUC 0.816
at ``L = 50`` and 0.966 at ``L = 1000``, a gap of 0.15 (on the users whose test target is long-range
0.666 against 0.956; on the others 0.964 against 0.977). With ``p_long = 0`` the gap vanishes (0.999
against 0.993).

Prepare it with the ``synthetic-lifelong`` recipe (:mod:`lifelong.data.recipes`): ``--input`` is a TOML
or JSON file of :func:`lifelong_log`'s arguments, or a folder written by :func:`write_lifelong_log`.
"""

from __future__ import annotations

import inspect
import json
import math
import tomllib
from pathlib import Path
from typing import Any

import numpy as np
import polars as pl

from lifelong.data.synthetic import START_TIMESTAMP, _events_range
from lifelong.errors import UserError

__all__ = ["lifelong_log", "long_range_events", "read_lifelong_spec", "write_lifelong_log",
           "SPEC_FILE", "EVENTS_FILE", "ITEMS_FILE"]

SPEC_FILE = "spec.json"  # the arguments of lifelong_log, in a folder written by write_lifelong_log
EVENTS_FILE = "events.parquet"
ITEMS_FILE = "items.parquet"
_N_TAGS = 64  # attribute vocabulary 'a1'..'a64'
_SESSION_BREAK = 0.02  # probability that a gap is a session break
_IN_SESSION_GAP_S = 60.0  # mean gap between events of one session
_SESSION_GAP_S = 86_400.0  # mean gap between sessions
_LENGTH_DISTRIBUTIONS = ("uniform", "log-uniform")


def _check(
    n_users: int, n_items: int, n_categories: int, clusters_per_category: int, n_interests: int,
    low: int, burst_mean: float, window: int, tail: int, p_long: float, embedding_dim: int,
    length_distribution: str, interest_concentration: float,
) -> None:
    """Raise ValueError on arguments :func:`lifelong_log` cannot honour."""
    if n_users < 1 or n_categories < 1 or clusters_per_category < 1 or embedding_dim < 1:
        raise ValueError("n_users, n_categories, clusters_per_category and embedding_dim must be positive")
    if n_items < n_categories * clusters_per_category:
        raise ValueError(f"n_items ({n_items}) must be at least n_categories * clusters_per_category "
                         f"({n_categories * clusters_per_category})")
    if not 1 <= n_interests <= n_categories:
        raise ValueError(f"n_interests must lie in [1, n_categories], got {n_interests}")
    if burst_mean < 1.0:
        raise ValueError(f"burst_mean must be at least 1, got {burst_mean}")
    if window < 1 or tail < 0:
        raise ValueError(f"window must be positive and tail non-negative, got {window}, {tail}")
    if low < tail + window + 1:
        raise ValueError(f"every user needs more than tail + window = {tail + window} events (the tail's "
                         f"recalls look further back than the window), got at least {low}")
    if not interest_concentration > 0.0:
        raise ValueError(f"interest_concentration must be positive, got {interest_concentration}")
    if not 0.0 <= p_long <= 1.0:
        raise ValueError(f"p_long must lie in [0, 1], got {p_long}")
    if length_distribution not in _LENGTH_DISTRIBUTIONS:
        raise ValueError(f"length_distribution must be one of {_LENGTH_DISTRIBUTIONS}, got {length_distribution!r}")


def _lengths(rng: np.random.Generator, n_users: int, low: int, high: int, distribution: str) -> np.ndarray:
    """Events per user: uniform on ``[low, high]`` or log-uniform (rounded down, within the range)."""
    if distribution == "uniform":
        return rng.integers(low, high + 1, size=n_users)
    draws = np.exp(rng.uniform(math.log(low), math.log(high + 1), size=n_users))
    return np.clip(np.floor(draws).astype(np.int64), low, high)


def _catalogue(
    rng: np.random.Generator, n_items: int, n_categories: int, clusters_per_category: int, item_zipf: float,
    embedding_dim: int, cluster_spread: float, item_noise: float,
) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
    """Plant clusters, categories, content vectors and a within-category item sampler.

    Returns:
        ``(item_cluster, item_vector, cluster_tag, slot_item, slot_key)``: the 0-based cluster of each item
        (index = item id - 1), its float32 content vector, each cluster's own tag (0-based), the item id
        held by each slot of the category-major slot table, and a strictly increasing key per slot,
        ``category + cumulative within-category probability``, so that
        ``slot_item[searchsorted(slot_key, c + u, 'right')]`` draws an item of category ``c``.
    """
    n_clusters = n_categories * clusters_per_category
    sizes = 1 + rng.multinomial(n_items - n_clusters, np.full(n_clusters, 1.0 / n_clusters))
    slot_cluster = np.repeat(np.arange(n_clusters), sizes)  # cluster-major, hence category-major too
    slot_category = slot_cluster // clusters_per_category
    category_sizes = np.bincount(slot_category, minlength=n_categories)
    first_slot = np.cumsum(category_sizes) - category_sizes
    # Popularity ranks within a category are shuffled over its clusters.
    local_rank = np.empty(n_items, dtype=np.int64)
    order = np.lexsort((rng.random(n_items), slot_category))
    local_rank[order] = np.arange(n_items) - first_slot[slot_category[order]]
    weight = 1.0 / (local_rank + 1.0) ** item_zipf
    cumulative = np.cumsum(weight)
    before = np.append(0.0, cumulative)[first_slot]
    totals = np.add.reduceat(weight, first_slot)
    within = (cumulative - before[slot_category]) / totals[slot_category]
    within[first_slot + category_sizes - 1] = 1.0
    slot_key = slot_category + within
    slot_item = rng.permutation(n_items) + 1  # ids shuffled: neither id order nor category order tells anything
    item_cluster = np.empty(n_items, dtype=np.int64)
    item_cluster[slot_item - 1] = slot_cluster

    category_centre = rng.standard_normal((n_categories, embedding_dim))
    cluster_centre = (category_centre[np.arange(n_clusters) // clusters_per_category]
                      + cluster_spread * rng.standard_normal((n_clusters, embedding_dim)))
    item_vector = (cluster_centre[item_cluster]
                   + item_noise * rng.standard_normal((n_items, embedding_dim))).astype(np.float32)
    cluster_tag = rng.integers(0, _N_TAGS, size=n_clusters)
    return item_cluster, item_vector, cluster_tag, slot_item, slot_key


def _interests(rng: np.random.Generator, n_users: int, n_categories: int, n_interests: int,
               category_zipf: float, concentration: float) -> tuple[np.ndarray, np.ndarray]:
    """Each user's distinct interest categories (by popularity, Gumbel top-k) and Dirichlet weights."""
    ranks = rng.permutation(n_categories)
    log_popularity = -category_zipf * np.log1p(ranks)
    interests = np.empty((n_users, n_interests), dtype=np.int64)
    chunk = max(1, 4_000_000 // n_categories)  # bound the (users, categories) key matrix
    for lo in range(0, n_users, chunk):
        hi = min(n_users, lo + chunk)
        keys = log_popularity + rng.gumbel(size=(hi - lo, n_categories))
        interests[lo:hi] = np.argpartition(-keys, n_interests - 1, axis=1)[:, :n_interests]
    weights = rng.gamma(concentration, size=(n_users, n_interests))
    return interests, weights / weights.sum(axis=1, keepdims=True)


def _body(rng: np.random.Generator, body_lengths: np.ndarray, weights: np.ndarray, burst_mean: float
          ) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
    """Draw the body's bursts for every user at once.

    Returns:
        ``(slot, last_seen, current, remaining)``: the interest slot of every body event (user-major,
        ``body_lengths[u]`` events per user); per user and slot the position of its last body event (-1:
        none); the slot of the burst that crosses into the tail, and how many of its events are left.
    """
    n_users, n_interests = weights.shape
    p = 1.0 / burst_mean
    # Bursts per user: enough to cover the body with overwhelming probability; the few users still short
    # get more bursts appended until covered.
    want = np.ceil(body_lengths * p * 1.25 + 8.0 * np.sqrt(body_lengths * p) + 4.0).astype(np.int64)
    user = np.repeat(np.arange(n_users), want)
    length = rng.geometric(p, size=len(user))
    while True:
        covered = np.bincount(user, weights=length, minlength=n_users)
        short = np.flatnonzero(covered < body_lengths)
        if not len(short):
            break
        extra_user = np.repeat(short, 4)
        user = np.concatenate([user, extra_user])
        length = np.concatenate([length, rng.geometric(p, size=len(extra_user))])
        order = np.argsort(user, kind="stable")
        user, length = user[order], length[order]
    # Interests by weight: key = user + cumulative weight is increasing over the flattened (user, slot) grid.
    cum = np.cumsum(weights, axis=1)
    cum[:, -1] = 1.0
    keys = (np.arange(n_users)[:, None] + cum).ravel()
    pick = np.searchsorted(keys, user + np.minimum(rng.random(len(user)), 1.0 - 1e-9), side="right")
    slot = np.minimum(pick, keys.size - 1) - user * n_interests

    # Cut each user's bursts at the body's end.
    end = np.cumsum(length)
    first_burst = np.concatenate([[0], np.flatnonzero(np.diff(user)) + 1])
    start_of_user = np.repeat(end[first_burst] - length[first_burst], np.diff(np.append(first_burst, len(user))))
    burst_end = end - start_of_user  # position after the burst's last event, within the user
    burst_start = burst_end - length
    body = body_lengths[user]
    kept = burst_start < body
    user, slot, burst_start, burst_end = user[kept], slot[kept], burst_start[kept], burst_end[kept]
    body = body[kept]
    last = np.flatnonzero(np.append(np.diff(user) != 0, True))  # each user's crossing burst
    current = slot[last]
    remaining = burst_end[last] - body[last]
    burst_end = np.minimum(burst_end, body)
    event_slot = np.repeat(slot, burst_end - burst_start)

    last_seen = np.full(n_users * n_interests, -1, dtype=np.int64)
    np.maximum.at(last_seen, user * n_interests + slot, burst_end - 1)
    return event_slot, last_seen.reshape(n_users, n_interests), current, remaining


def _tail(rng: np.random.Generator, body_lengths: np.ndarray, weights: np.ndarray, last_seen: np.ndarray,
          current: np.ndarray, remaining: np.ndarray, tail: int, window: int, p_long: float, burst_mean: float
          ) -> np.ndarray:
    """Run the tail process of step 8; return the interest slot of every tail event, ``(n_users, tail)``."""
    n_users, n_interests = weights.shape
    users = np.arange(n_users)
    log_weights = np.log(weights)
    out = np.empty((n_users, tail), dtype=np.int64)
    for step in range(tail):
        t = (body_lengths + step)[:, None]
        seen = last_seen >= 0
        in_window = last_seen >= t - window
        eligible = seen & ~in_window
        keys = log_weights + rng.gumbel(size=(n_users, n_interests))
        recall = (rng.random(n_users) < p_long) & eligible.any(axis=1)
        recall_slot = np.argmax(np.where(eligible, keys, -np.inf), axis=1)
        go_on = (remaining > 0) & in_window[users, current]
        fresh = np.argmax(np.where(in_window, rng.gumbel(size=(n_users, n_interests)) + log_weights, -np.inf), axis=1)
        new_burst = ~recall & ~go_on
        current = np.where(new_burst, fresh, current)
        remaining = np.where(new_burst, rng.geometric(1.0 / burst_mean, size=n_users), remaining)
        remaining = np.where(recall, remaining, remaining - 1)
        slot = np.where(recall, recall_slot, current)
        last_seen[users, slot] = t[:, 0]
        out[:, step] = slot
    return out


def lifelong_log(
    n_users: int = 1000,
    events_per_user: int | tuple[int, int] | list[int] = (1_000, 2_000),
    seed: int = 0,
    *,
    n_items: int = 50_000,
    n_categories: int = 500,
    clusters_per_category: int = 4,
    n_interests: int = 64,
    burst_mean: float = 10.0,
    window: int = 50,
    tail: int = 100,
    p_long: float = 0.5,
    length_distribution: str = "uniform",
    category_zipf: float = 0.5,
    item_zipf: float = 0.8,
    embedding_dim: int = 32,
    cluster_spread: float = 0.5,
    item_noise: float = 0.1,
    interest_concentration: float = 1.0,
) -> tuple[pl.DataFrame, pl.DataFrame]:
    """Generate a lifelong log with bursty interests and a planted long-range tail (module docstring).

    Args:
        n_users: number of users (ids 1..n_users).
        events_per_user: events per user: an int, or an inclusive ``(low, high)`` range; every user needs
            more than ``tail + window`` events.
        seed: random seed; equal arguments give identical output.
        n_items: items (ids 1..n_items), at least ``n_categories * clusters_per_category``.
        n_categories: item categories 'c1'..'cC'.
        clusters_per_category: content clusters per category ('k1'..'kK' over the catalogue).
        n_interests: latent interests (distinct categories) per user, at most ``n_categories``.
        burst_mean: mean number of events of a burst (geometric lengths, at least 1).
        window: the recent window W: a recall's interest is absent from the W events before it.
        tail: the last events of every user, where each event is a recall with probability ``p_long``.
        p_long: probability that a tail event is a recall (long-range), in [0, 1].
        length_distribution: 'uniform' or 'log-uniform' lengths over the ``events_per_user`` range.
        category_zipf: exponent of category popularity (0: uniform).
        item_zipf: exponent of item popularity within a category (0: uniform).
        embedding_dim: length of the items' content vectors.
        cluster_spread: standard deviation of a cluster centre around its category centre (which is
            standard normal).
        item_noise: standard deviation of an item's vector around its cluster centre.
        interest_concentration: Dirichlet parameter of the interest weights (large: equal weights).

    Returns:
        ``(events, items)``. events: user_id, item_id, timestamp (unix seconds, strictly increasing per
        user), row (0..N-1), all Int64, sorted by user then time. items: item_id Int64, category Utf8
        ('c..'), cluster Utf8 ('k..', the planted content cluster), attributes List[Utf8], embedding
        List[Float32], sorted by item_id.

    Raises:
        ValueError: on inconsistent sizes or probabilities outside their ranges.
    """
    low, high = _events_range(events_per_user)
    _check(n_users, n_items, n_categories, clusters_per_category, n_interests, low, burst_mean, window,
           tail, p_long, embedding_dim, length_distribution, interest_concentration)

    rng = np.random.default_rng(seed)
    item_cluster, item_vector, cluster_tag, slot_item, slot_key = _catalogue(
        rng, n_items, n_categories, clusters_per_category, item_zipf, embedding_dim, cluster_spread, item_noise)
    interests, weights = _interests(rng, n_users, n_categories, n_interests, category_zipf, interest_concentration)
    lengths = _lengths(rng, n_users, low, high, length_distribution)
    body_lengths = lengths - tail
    body_slot, last_seen, current, remaining = _body(rng, body_lengths, weights, burst_mean)
    tail_slot = _tail(rng, body_lengths, weights, last_seen, current, remaining, tail, window, p_long, burst_mean)

    # Interleave body and tail per user (user-major), then slot -> category -> item.
    user = np.repeat(np.arange(n_users), lengths)
    first = np.cumsum(lengths) - lengths
    position = np.arange(len(user)) - first[user]
    in_tail = position >= body_lengths[user]
    slot = np.empty(len(user), dtype=np.int64)
    slot[~in_tail] = body_slot
    slot[in_tail] = tail_slot.ravel()
    del body_slot, position, in_tail
    category = interests[user, slot]
    del slot
    u = np.minimum(rng.random(len(user)), 1.0 - 1e-9)  # below 1: ``category + u`` stays in its category
    item_id = slot_item[np.minimum(np.searchsorted(slot_key, category + u, side="right"), n_items - 1)]
    del category, u

    n_events = len(user)
    start = START_TIMESTAMP + rng.integers(0, 7 * 86_400, size=n_users)
    mean_gap = np.where(rng.random(n_events) < _SESSION_BREAK, _SESSION_GAP_S, _IN_SESSION_GAP_S)
    gap = 1 + np.floor(rng.exponential(size=n_events) * mean_gap).astype(np.int64)
    del mean_gap
    gap[first] = 0
    elapsed = np.cumsum(gap)
    del gap
    elapsed -= np.repeat(elapsed[first], lengths)
    timestamp = elapsed + np.repeat(start, lengths)
    del elapsed
    events = pl.DataFrame({
        "user_id": pl.Series(user + 1, dtype=pl.Int64),
        "item_id": pl.Series(item_id, dtype=pl.Int64),
        "timestamp": pl.Series(timestamp, dtype=pl.Int64),
        "row": pl.Series(np.arange(n_events), dtype=pl.Int64),
    })

    second_tag = (cluster_tag[item_cluster] + rng.integers(1, _N_TAGS, size=n_items)) % _N_TAGS
    embedding = pl.Series(item_vector).cast(pl.List(pl.Float32))
    items = pl.DataFrame({
        "item_id": pl.Series(np.arange(1, n_items + 1), dtype=pl.Int64),
        "category": pl.Series(item_cluster // clusters_per_category + 1),
        "cluster": pl.Series(item_cluster + 1),
        "tag0": pl.Series(cluster_tag[item_cluster] + 1),
        "tag1": pl.Series(second_tag + 1),
    }).select(
        "item_id",
        category=pl.format("c{}", "category"),
        cluster=pl.format("k{}", "cluster"),
        attributes=pl.concat_list(pl.format("c{}", "category"), pl.format("a{}", "tag0"), pl.format("a{}", "tag1")),
        embedding=embedding,
    )
    return events, items


def long_range_events(events: pl.DataFrame, items: pl.DataFrame, window: int = 50) -> np.ndarray:
    """Which events are long-range: their category is absent from the user's ``window`` preceding events
    but occurs earlier.

    Args:
        events: user_id, item_id, in time order per user (as :func:`lifelong_log` writes them).
        items: item_id, category.
        window: the recent window W.

    Returns:
        A bool array with one entry per event, in the events' order: the previous event of the same user
        and category lies more than ``window`` positions back.
    """
    frame = events.select("user_id", "item_id").with_row_index("_i").join(
        items.select("item_id", "category"), on="item_id", how="left", maintain_order="left")
    gap = frame.with_columns(
        position=pl.int_range(pl.len()).over("user_id"),
    ).with_columns(
        gap=pl.col("position") - pl.col("position").shift(1).over("user_id", "category"),
    )["gap"]
    return (gap > window).fill_null(False).to_numpy()


def _parameters() -> set[str]:
    return set(inspect.signature(lifelong_log).parameters)


def read_lifelong_spec(path: str | Path) -> dict[str, Any]:
    """The arguments of :func:`lifelong_log` from a TOML (``.toml``) or JSON file of ``name = value`` pairs.

    Args:
        path: the spec file, e.g. ``n_users = 2000`` / ``events_per_user = [1000, 1100]`` / ``seed = 1``.

    Returns:
        The keyword arguments (``events_per_user`` given as a list becomes a ``(low, high)`` pair).

    Raises:
        UserError: the file does not parse, is not a table, or names an argument ``lifelong_log`` lacks.
    """
    path = Path(path)
    try:
        text = path.read_text()
    except (OSError, UnicodeDecodeError) as error:
        raise UserError(f"{path} cannot be read as a text spec ({error})") from None
    try:
        values = tomllib.loads(text) if path.suffix == ".toml" else json.loads(text)
    except (tomllib.TOMLDecodeError, json.JSONDecodeError) as error:
        kind = "TOML" if path.suffix == ".toml" else "JSON"
        raise UserError(f"{path} is not valid {kind}: {error}. Fix: write lifelong_log's arguments as "
                        f"name = value pairs (a .toml file) or a JSON object") from None
    if not isinstance(values, dict):
        raise UserError(f"{path} must hold a table of lifelong_log arguments, got {type(values).__name__}")
    values = {str(k).replace("-", "_"): v for k, v in values.items()}
    unknown = sorted(set(values) - _parameters())
    if unknown:
        raise UserError(f"{path}: unknown argument(s) {unknown}; lifelong_log takes {sorted(_parameters())}")
    if isinstance(values.get("events_per_user"), list):
        values["events_per_user"] = tuple(values["events_per_user"])
    return values


def write_lifelong_log(folder: str | Path, **kwargs: Any) -> Path:
    """Generate a lifelong log and write it to ``folder`` (created): ``events.parquet``, ``items.parquet``
    and ``spec.json`` (the arguments, so ``--input folder/spec.json`` regenerates the same log).

    Args:
        folder: the output folder; existing files of these names are replaced.
        **kwargs: forwarded to :func:`lifelong_log`.

    Returns:
        The folder, ready for ``lifelong prepare --recipe synthetic-lifelong --input FOLDER``.
    """
    folder = Path(folder)
    unknown = sorted(set(kwargs) - _parameters())
    if unknown:
        raise TypeError(f"lifelong_log got unknown arguments {unknown}")
    events, items = lifelong_log(**kwargs)
    folder.mkdir(parents=True, exist_ok=True)
    events.write_parquet(folder / EVENTS_FILE)
    items.write_parquet(folder / ITEMS_FILE)
    spec = {k: list(v) if isinstance(v, tuple) else v for k, v in kwargs.items()}
    (folder / SPEC_FILE).write_text(json.dumps(spec, indent=2) + "\n")
    return folder
