"""Tests for lifelong.data.synthetic: determinism, schema, ordering and planted structure."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import polars as pl
import pytest

from lifelong.data.synthetic import START_TIMESTAMP, synthetic_log, write_synthetic_log

SMALL = dict(n_users=300, n_items=500, n_categories=20, events_per_user=(10, 40), seed=3)


@pytest.fixture(scope="module")
def small() -> tuple[pl.DataFrame, pl.DataFrame]:
    return synthetic_log(**SMALL)


def test_deterministic_for_a_seed(small) -> None:
    events, items = synthetic_log(**SMALL)
    assert events.equals(small[0])
    assert items.equals(small[1])
    other, _ = synthetic_log(**{**SMALL, "seed": 4})
    assert not (other.height == events.height and other.equals(events))


def test_schema_and_shapes(small) -> None:
    events, items = small
    assert events.schema == pl.Schema(
        {
            "user_id": pl.Int64,
            "item_id": pl.Int64,
            "timestamp": pl.Int64,
            "behavior": pl.Utf8,
            "row": pl.Int64,
        }
    )
    assert items.schema == pl.Schema(
        {"item_id": pl.Int64, "category": pl.Utf8, "attributes": pl.List(pl.Utf8)}
    )
    assert items["item_id"].to_list() == list(range(1, SMALL["n_items"] + 1))
    assert events["row"].to_list() == list(range(events.height))
    counts = events.group_by("user_id").len()
    assert counts.height == SMALL["n_users"]
    assert sorted(counts["user_id"].to_list()) == list(range(1, SMALL["n_users"] + 1))
    assert counts["len"].min() >= 10 and counts["len"].max() <= 40
    assert events["item_id"].min() >= 1 and events["item_id"].max() <= SMALL["n_items"]
    assert events.null_count().sum_horizontal().item() == 0
    assert set(events["behavior"].unique()) == {"click", "buy"}
    assert (events["behavior"] == "click").mean() > 0.8


def test_fixed_event_count() -> None:
    events, _ = synthetic_log(n_users=50, n_items=100, n_categories=10, events_per_user=25)
    assert events.height == 50 * 25
    assert events.group_by("user_id").len()["len"].unique().to_list() == [25]


def test_sorted_by_user_then_strictly_increasing_time(small) -> None:
    events, _ = small
    assert events["user_id"].is_sorted()
    user = events["user_id"].to_numpy()
    ts = events["timestamp"].to_numpy()
    same_user = user[1:] == user[:-1]
    assert np.all(np.diff(ts)[same_user] > 0)
    assert ts.min() >= START_TIMESTAMP


def test_item_categories_consistent(small) -> None:
    events, items = small
    categories = items["category"]
    assert categories.str.contains(r"^c\d+$").all()
    assert categories.n_unique() == SMALL["n_categories"]
    # The attribute list starts with the item's own category, then two distinct 'a..' tags.
    attributes = items["attributes"]
    assert (attributes.list.len() == 3).all()
    assert (attributes.list.first() == categories).all()
    tags = attributes.list.slice(1, 2)
    assert tags.explode().str.contains(r"^a\d+$").all()
    assert (tags.list.n_unique() == 2).all()
    # Every event item exists in the catalogue.
    assert events.join(items, on="item_id", how="anti").height == 0


def _consecutive_same_category(events: pl.DataFrame, items: pl.DataFrame) -> tuple[float, float]:
    joined = events.join(items.select("item_id", "category"), on="item_id").sort("row")
    user = joined["user_id"].to_numpy()
    category = joined["category"].to_numpy()
    pairs = user[1:] == user[:-1]
    observed = float(np.mean((category[1:] == category[:-1])[pairs]))
    share = joined["category"].value_counts()["count"].to_numpy() / joined.height
    return observed, float(np.sum(share**2))


def test_planted_structure(small) -> None:
    events, items = small
    observed, chance = _consecutive_same_category(*small)
    # p_continue = 0.6 plus same-interest draws, versus chance well below 0.2.
    assert observed > 0.6
    assert observed > 3 * chance
    # Each user concentrates on few categories, far fewer than a random user would touch.
    joined = events.join(items.select("item_id", "category"), on="item_id")
    per_user = joined.group_by("user_id").agg(
        n=pl.len(), top=pl.col("category").value_counts(sort=True).struct.field("count").first()
    )
    assert (per_user["top"] / per_user["n"]).mean() > 0.35

    # Without continuation or drift the dependence on the previous event drops.
    loose = synthetic_log(**SMALL, p_continue=0.0)
    observed_loose, _ = _consecutive_same_category(*loose)
    assert observed_loose < observed - 0.2


def test_drift_changes_interests() -> None:
    kwargs = dict(n_users=200, n_items=400, n_categories=40, events_per_user=200, seed=1)

    def distinct_categories(drift: float) -> float:
        events, items = synthetic_log(**kwargs, drift=drift)
        joined = events.join(items.select("item_id", "category"), on="item_id")
        return joined.group_by("user_id").agg(pl.col("category").n_unique())["category"].mean()

    assert distinct_categories(0.0) <= 3
    assert distinct_categories(2.0) > distinct_categories(0.0) + 2


def test_invalid_arguments_raise() -> None:
    with pytest.raises(ValueError, match="n_items"):
        synthetic_log(n_items=5, n_categories=10)
    with pytest.raises(ValueError, match="n_interests"):
        synthetic_log(n_categories=2, n_items=10, n_interests=3)
    with pytest.raises(ValueError, match="events_per_user"):
        synthetic_log(events_per_user=(5, 2))
    with pytest.raises(ValueError, match="drift"):
        synthetic_log(drift=-0.1)


def test_write_synthetic_log(tmp_path: Path) -> None:
    out = tmp_path / "nested" / "synth.parquet"
    events_path, items_path = write_synthetic_log(out, n_users=20, n_items=50, n_categories=5)
    assert events_path == out
    assert items_path == tmp_path / "nested" / "synth_items.parquet"
    events, items = synthetic_log(n_users=20, n_items=50, n_categories=5)
    assert pl.read_parquet(events_path).equals(events)
    assert pl.read_parquet(items_path).equals(items)


def test_default_size_is_2000_users_of_20_to_80_events() -> None:
    """(Its speed against a Polars frame of as many rows: benchmarks/data_speed.py.)"""
    events, _ = synthetic_log()
    per_user = events.group_by("user_id").len()["len"]
    assert per_user.len() == 2000 and per_user.min() >= 20 and per_user.max() <= 80
    assert 2000 * 20 <= events.height <= 2000 * 80
