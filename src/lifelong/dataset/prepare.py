"""Turning a validated event log into the columnar, one-sequence-per-user layout of ``store.py``.

Polars does the heavy lifting (sort, dense ranks, joins) lazily; the event columns are held a few
times at most. Vocabularies are fitted on the events before ``vocab_cutoff`` when it is given (the
training part of a time-split protocol), on all events otherwise.
"""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import polars as pl

from lifelong.dataset.store import PAD, UNKNOWN

FIRST_INDEX = 2  # 0 = padding, 1 = unknown


def _vocabulary(values: pl.Series) -> pl.DataFrame:
    """Sorted distinct non-null values -> index from 2."""
    distinct = values.drop_nulls().unique().sort()
    return pl.DataFrame({"value": distinct, "index": pl.int_range(FIRST_INDEX, FIRST_INDEX + distinct.len(), eager=True)})


def _as_list(series: pl.Series) -> list:
    return [str(v) for v in series.to_list()]


def prepare_dataset(
    events: pl.DataFrame,
    items: pl.DataFrame | None,
    folder: Path,
    *,
    min_events: int = 1,
    vocab_cutoff: int | None = None,
) -> dict:
    """Write ``events``, ``users``, ``items`` and ``vocab`` into ``folder`` (which must exist).

    Args:
        events: columns user_id, item_id, timestamp, row[, behavior][, label].
        items: item_id[, category][, attributes][, title][, embedding], or None.
        min_events: users with fewer events are dropped (P1 drops users with fewer than 4).
        vocab_cutoff: fit vocabularies on events with ``timestamp < vocab_cutoff`` only.

    Returns:
        A summary (counts, vocabulary sizes, flags) that goes into the manifest.
    """
    has_behavior = "behavior" in events.columns
    has_label = "label" in events.columns
    lazy = events.lazy()
    if min_events > 1:
        lazy = lazy.filter(pl.len().over("user_id") >= min_events)
    lazy = lazy.sort(["user_id", "timestamp", "row"])
    lazy = lazy.with_columns(
        user_row=(pl.col("user_id").rank("dense") - 1).cast(pl.Int32),
        item_row=pl.col("item_id").rank("dense").cast(pl.Int32),  # row 0 is padding
    )
    table = lazy.collect()
    if table.height == 0:
        raise ValueError("no events left to prepare (every user has fewer than the minimum number of events?)")

    fit = table if vocab_cutoff is None else table.filter(pl.col("timestamp") < vocab_cutoff)

    # Items: one row per catalogue item (row 0 = padding), side features joined from `items`.
    catalogue = table.select("item_id", "item_row").unique("item_row").sort("item_row")
    item_vocab = _vocabulary(fit["item_id"])
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
    users = (
        table.group_by("user_row", maintain_order=True)
        .agg(pl.col("user_id").first(), pl.len().alias("count"))
        .sort("user_row")
    )
    user_vocab = _vocabulary(fit["user_id"])
    users = users.join(user_vocab.rename({"value": "user_id", "index": "user_idx"}), on="user_id", how="left")
    users = users.sort("user_row").with_columns(pl.col("user_idx").fill_null(UNKNOWN).cast(pl.Int64))
    counts = users["count"].to_numpy()
    offsets = np.concatenate([[0], np.cumsum(counts)[:-1]])
    users = users.with_columns(offset=pl.Series(offsets, dtype=pl.Int64), user_id=pl.col("user_id").cast(pl.Utf8))
    users.select("user_row", "user_id", "user_idx", "offset", "count").write_parquet(folder / "users.parquet")
    vocab["user"] = _as_list(user_vocab["value"])

    # Events: encoded ids only.
    event_columns = [pl.col("user_row"), pl.col("item_row"), pl.col("timestamp").cast(pl.Int64)]
    if has_behavior:
        behavior_vocab = _vocabulary(fit["behavior"])
        mapping = dict(zip(behavior_vocab["value"].to_list(), behavior_vocab["index"].to_list()))
        event_columns.append(pl.col("behavior").replace_strict(mapping, default=UNKNOWN, return_dtype=pl.Int16))
        vocab["behavior"] = _as_list(behavior_vocab["value"])
    if has_label:
        event_columns.append(pl.col("label").cast(pl.Float32))
    table.select(event_columns).write_parquet(folder / "events.parquet")
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
    }
