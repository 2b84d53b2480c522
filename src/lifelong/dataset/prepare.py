"""Turning a validated event log into the columnar, one-sequence-per-user layout of ``store.py``.

Memory: the log's columns plus one sorted copy, and at most one event-sized temporary at a time (an
argsort, a rank, an encoded column); no group-by or join runs over every event. On a 20 M-event log
`prepare` peaks at ~2.3 GiB (benchmarks/memory.py). Vocabularies are fitted on the events before
``vocab_cutoff`` when it is given (the training part of a time-split protocol), on all events otherwise.
"""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import polars as pl

from lifelong.data.schema import USER_FEATURE_PREFIX
from lifelong.dataset.store import PAD, UNKNOWN
from lifelong.errors import UserError

FIRST_INDEX = 2  # 0 = padding, 1 = unknown
PROTOCOL_LABELS = {"ctr-din": "P1", "seq-loo": "P2", "mi-split": "P3", "ctr-time": "P4", "ctr-long": "P5"}


def min_events_per_protocol() -> dict[str, int]:
    """Each protocol's minimum number of events per user (shorter users are dropped)."""
    from lifelong.protocols.ctr import P1_MIN_EVENTS
    from lifelong.protocols.mi import P3_MIN_EVENTS
    from lifelong.protocols.long import P5_MIN_EVENTS
    from lifelong.protocols.seq import P2_MIN_EVENTS

    return {"ctr-din": P1_MIN_EVENTS, "seq-loo": P2_MIN_EVENTS, "mi-split": P3_MIN_EVENTS, "ctr-time": 1,
            "ctr-long": P5_MIN_EVENTS}


def _nothing_left(min_events: int, n_users: int, n_events: int, protocol: str | None) -> UserError:
    """The error for a log in which every user has fewer than ``min_events`` events."""
    minimums = min_events_per_protocol()
    if protocol is None:  # the protocol whose minimum this is
        protocol = next((p for p, m in minimums.items() if m == min_events), None)
    name = f"{PROTOCOL_LABELS.get(protocol, '')} {protocol}".strip() if protocol else "the protocol"
    lower = [f"{PROTOCOL_LABELS[p]} {p} ({m})" for p, m in minimums.items() if m < min_events]
    other = f", or a protocol with a lower minimum: {', '.join(lower)} (--protocol)" if lower else ""
    return UserError(
        f"{name} needs at least {min_events} events per user, and all {n_users:,} users of the log have fewer "
        f"({n_events:,} events in all): all were dropped, so nothing is left to prepare.\n"
        f"Fix: use a log with longer user histories (is --column user_id the user column?){other}")


def _vocabulary(values: pl.Series) -> pl.DataFrame:
    """Sorted distinct non-null values -> index from 2."""
    distinct = values.drop_nulls().unique().sort()
    return pl.DataFrame({"value": distinct, "index": pl.int_range(FIRST_INDEX, FIRST_INDEX + distinct.len(), eager=True)})


def _runs(sorted_ids: pl.Series) -> np.ndarray:
    """0, 0, 1, 1, 1, 2, ...: the index of each element's run of equal values (the dense rank of a sorted column)."""
    starts = (sorted_ids != sorted_ids.shift(1)).fill_null(True)
    return starts.cast(pl.Int32).cum_sum().to_numpy() - 1


def _as_list(series: pl.Series) -> list:
    return [str(v) for v in series.to_list()]


def prepare_dataset(
    events: pl.DataFrame,
    items: pl.DataFrame | None,
    folder: Path,
    *,
    min_events: int = 1,
    vocab_cutoff: int | None = None,
    protocol: str | None = None,
) -> dict:
    """Write ``events``, ``users``, ``items`` and ``vocab`` into ``folder`` (which must exist).

    Args:
        events: columns user_id, item_id, timestamp, row[, behavior][, label].
        items: item_id[, category][, attributes][, title][, embedding], or None.
        min_events: users with fewer events are dropped (P1 drops users with fewer than 4).
        vocab_cutoff: fit vocabularies on events with ``timestamp < vocab_cutoff`` only.
        protocol: the protocol whose minimum ``min_events`` is (named in the error when no user has
            enough events; by default the protocol with that minimum).

    Raises:
        UserError: the log has no events, or no user has ``min_events`` events.

    Returns:
        A summary (counts, vocabulary sizes, flags) that goes into the manifest.
    """
    has_behavior = "behavior" in events.columns
    has_label = "label" in events.columns
    if events.height == 0:
        raise UserError("the log has no events, so nothing is left to prepare (is the input only a header?)")
    # Sort by user, then time, ties in file order: one argsort, then each column gathered once. This
    # holds the log plus one sorted copy; a lazy sort-and-rank of the whole frame needed ~2x more.
    order = events.select(pl.arg_sort_by(["user_id", "timestamp", "row"])).to_series()
    user_row = _runs(events["user_id"].gather(order))  # dense rank of user_id, from the sorted column
    counts = np.bincount(user_row)  # events per user
    n_users = counts.shape[0]
    if min_events > 1:
        kept = counts >= min_events
        keep = kept[user_row]
        order = order.filter(pl.Series(keep))
        user_row, counts = (np.cumsum(kept) - 1)[user_row[keep]], counts[kept]  # renumber the kept users
        del keep
    if len(counts) == 0:
        raise _nothing_left(min_events, n_users, events.height, protocol)
    table = pl.DataFrame([events[c].gather(order) for c in events.columns if c != "row"])  # `row` only breaks ties
    del order
    # item_row: the dense rank of item_id, from 1 (row 0 is padding)
    item_ids = table["item_id"].unique().sort()
    table = table.with_columns(
        user_row=pl.Series(user_row, dtype=pl.Int32),
        item_row=(item_ids.search_sorted(table["item_id"]) + 1).cast(pl.Int32),
    )
    del user_row
    before = None if vocab_cutoff is None else table["timestamp"] < vocab_cutoff

    def fit(column: str) -> pl.Series:
        """A column's values on the events the vocabularies are fitted on."""
        return table[column] if before is None else table[column].filter(before)

    # Items: one row per catalogue item (row 0 = padding), side features joined from `items`.
    catalogue = pl.DataFrame({"item_id": item_ids, "item_row": pl.int_range(1, item_ids.len() + 1, dtype=pl.Int32, eager=True)})
    item_vocab = _vocabulary(item_ids if before is None else fit("item_id"))
    catalogue = catalogue.join(item_vocab.rename({"value": "item_id", "index": "item_idx"}), on="item_id", how="left")
    if items is not None:
        side = [c for c in ("category", "attributes", "title", "embedding") if c in items.columns]
        features = items.select(["item_id", *side]).unique("item_id", keep="first")
        catalogue = catalogue.join(features.with_columns(pl.col("item_id").cast(catalogue["item_id"].dtype)), on="item_id", how="left")
    fit_items = catalogue.filter(pl.col("item_idx").is_not_null())
    vocab: dict[str, list] = {"item": _as_list(item_vocab["value"])}
    if "category" in catalogue.columns:
        cate_vocab = _vocabulary(fit_items["category"].cast(pl.Utf8))
        catalogue = catalogue.join(
            cate_vocab.rename({"value": "category", "index": "cate_idx"}),
            left_on=pl.col("category").cast(pl.Utf8), right_on="category", how="left",
        )
        vocab["cate"] = _as_list(cate_vocab["value"])
    else:
        catalogue = catalogue.with_columns(cate_idx=pl.lit(None, pl.Int64))
        vocab["cate"] = []
    if "attributes" in catalogue.columns:
        attr_vocab = _vocabulary(fit_items["attributes"].explode().cast(pl.Utf8))
        mapping = dict(zip(attr_vocab["value"].to_list(), attr_vocab["index"].to_list()))
        catalogue = catalogue.with_columns(
            attr_idx=pl.col("attributes").list.eval(
                pl.element().cast(pl.Utf8).replace_strict(mapping, default=UNKNOWN, return_dtype=pl.Int32)
            )
        )
        vocab["attr"] = _as_list(attr_vocab["value"])
    # Unknown ids (first seen after the cutoff) get index 1; a missing category also gets 1.
    catalogue = catalogue.with_columns(
        pl.col("item_idx").fill_null(UNKNOWN).cast(pl.Int64),
        pl.col("cate_idx").fill_null(UNKNOWN).cast(pl.Int64),
        pl.col("item_id").cast(pl.Utf8),
    )
    padding = {"item_id": [""], "item_row": [0], "item_idx": [PAD], "cate_idx": [PAD]}
    keep = ["item_id", "item_row", "item_idx", "cate_idx"] + [
        c for c in ("attr_idx", "title", "embedding") if c in catalogue.columns
    ]
    pad_frame = pl.DataFrame(padding).cast({"item_row": pl.Int32, "item_idx": pl.Int64, "cate_idx": pl.Int64})
    item_table = pl.concat([pad_frame, catalogue.select(keep)], how="diagonal_relaxed")
    item_table.write_parquet(folder / "items.parquet")

    # Users: CSR offsets, vocabulary index.
    # Events are sorted by user: each user's first row comes from the counts (no group-by over every event).
    offsets = np.concatenate([[0], np.cumsum(counts)[:-1]]).astype(np.int64)
    users = pl.DataFrame({
        "user_row": pl.Series(np.arange(counts.shape[0]), dtype=pl.Int32),
        "user_id": table["user_id"].gather(offsets),
        "count": pl.Series(counts, dtype=pl.UInt32),
    })
    user_vocab = _vocabulary(users["user_id"] if before is None else fit("user_id"))
    users = users.join(user_vocab.rename({"value": "user_id", "index": "user_idx"}), on="user_id", how="left")
    users = users.sort("user_row").with_columns(pl.col("user_idx").fill_null(UNKNOWN).cast(pl.Int64))
    users = users.with_columns(offset=pl.Series(offsets, dtype=pl.Int64), user_id=pl.col("user_id").cast(pl.Utf8))
    vocab["user"] = _as_list(user_vocab["value"])
    features: list[dict] = []
    user_columns = []
    fitted_users = users["user_idx"] != UNKNOWN
    for column in (c for c in table.columns if c.startswith(USER_FEATURE_PREFIX)):
        declaration, values = _user_feature(column[len(USER_FEATURE_PREFIX):], table[column].gather(offsets),
                                            fitted_users, vocab)
        features.append(declaration)
        user_columns.append(values)
    users = users.with_columns(user_columns)
    users.select("user_row", "user_id", "user_idx", "offset", "count", *[c.name for c in user_columns]).write_parquet(
        folder / "users.parquet")
    if "attr_idx" in item_table.columns:
        lengths = item_table["attr_idx"].list.len().fill_null(0)
        features.append({"name": "attr", "group": "item", "kind": "bag", "vocab_size": len(vocab["attr"]) + FIRST_INDEX,
                         "max_length": int(lengths.max() or 0)})
    if "embedding" in item_table.columns:
        dims = item_table["embedding"].list.len().drop_nulls().unique().to_list()
        if len(dims) > 1:
            raise UserError(f"the items' embedding vectors have different lengths ({sorted(dims)[:5]}); every item's "
                            f"vector must have the same number of values")
        if dims:
            features.append({"name": "embedding", "group": "item", "kind": "dense", "dim": int(dims[0])})

    # Events: encoded ids only.
    event_columns = [pl.col("user_row"), pl.col("item_row"), pl.col("timestamp").cast(pl.Int64)]
    if has_behavior:
        behavior_vocab = _vocabulary(fit("behavior"))
        # vocabulary index through an Enum cast (a replace() with a dict costs ~40 bytes per event)
        codes = table["behavior"].cast(pl.Enum(behavior_vocab["value"].to_list()), strict=False).to_physical()
        table = table.with_columns(behavior=(codes.cast(pl.Int64) + FIRST_INDEX).fill_null(UNKNOWN).cast(pl.Int16))
        del codes
        event_columns.append(pl.col("behavior"))
        vocab["behavior"] = _as_list(behavior_vocab["value"])
        features.append({"name": "behavior", "group": "context", "kind": "categorical",
                         "vocab_size": len(vocab["behavior"]) + FIRST_INDEX})
    if has_label:
        event_columns.append(pl.col("label").cast(pl.Float32))
    table.lazy().select(event_columns).sink_parquet(folder / "events.parquet")  # streamed, not encoded whole in memory
    (folder / "vocab.json").write_text(json.dumps(vocab))

    vocab_sizes = {name: len(values) + FIRST_INDEX for name, values in vocab.items()}
    return {
        "n_events": table.height,
        "n_users": users.height,
        "n_items": catalogue.height,
        "n_item_rows": catalogue.height + 1,
        "n_categories": len(vocab["cate"]),
        "vocab_sizes": vocab_sizes,
        "has_behavior": has_behavior,
        "has_label": has_label,
        "vocab_fitted_before": vocab_cutoff,
        "features": features,
    }


def _user_feature(name: str, values: pl.Series, fitted: pl.Series, vocab: dict[str, list]) -> tuple[dict, pl.Series]:
    """The declaration and the ``users.parquet`` column (``uf_<name>``) of one user feature.

    ``values`` holds each user's value (that of the user's first event). A numeric column stays a
    number (Float64; null where missing), its mean and standard deviation over the users the
    vocabularies are fitted on go into the declaration (the embedding block standardises with them).
    Any other column is categorical: a vocabulary over those users' values (from index 2; a missing or
    unseen value gets 1, unknown), stored in ``vocab.json`` as ``user__<name>``."""
    column = f"uf_{name}"
    if values.dtype.is_numeric():
        numbers = values.cast(pl.Float64)
        fit = numbers.filter(fitted).drop_nulls()
        mean = float(fit.mean()) if fit.len() else 0.0
        std = float(fit.std()) if fit.len() > 1 else 0.0
        return ({"name": name, "group": "user", "kind": "numeric", "mean": mean, "std": std if std > 0 else 1.0},
                numbers.alias(column))
    text = values.cast(pl.Utf8)
    feature_vocab = _vocabulary(text.filter(fitted))
    mapping = dict(zip(feature_vocab["value"].to_list(), feature_vocab["index"].to_list()))
    index = text.replace_strict(mapping, default=UNKNOWN, return_dtype=pl.Int32).fill_null(UNKNOWN)
    vocab[USER_FEATURE_PREFIX + name] = _as_list(feature_vocab["value"])
    return ({"name": name, "group": "user", "kind": "categorical", "vocab_size": len(mapping) + FIRST_INDEX},
            index.alias(column))
