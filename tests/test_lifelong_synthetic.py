"""Tests for lifelong.data.lifelong_synthetic: the planted long-range tail, bursts, content clusters, sizes,
determinism, and preparing it through the ``synthetic-lifelong`` recipe."""

from __future__ import annotations

import json
import time
from pathlib import Path

import numpy as np
import polars as pl
import pytest
from typer.testing import CliRunner

from lifelong.cli import app
from lifelong.data import RECIPES, load_recipe
from lifelong.data.lifelong_synthetic import (lifelong_log, long_range_events, read_lifelong_spec,
                                              write_lifelong_log)
from lifelong.errors import UserError

SMALL = dict(n_users=400, events_per_user=(1000, 1200), seed=5)
TAIL, WINDOW = 100, 50


@pytest.fixture(scope="module")
def small() -> tuple[pl.DataFrame, pl.DataFrame]:
    return lifelong_log(**SMALL)


def positions(events: pl.DataFrame) -> tuple[np.ndarray, np.ndarray]:
    """Each event's 0-based position in its user's log, and its position from the end (1 = last)."""
    frame = events.select(position=pl.int_range(pl.len()).over("user_id"), n=pl.len().over("user_id"))
    position = frame["position"].to_numpy()
    return position, frame["n"].to_numpy() - position


def categories(events: pl.DataFrame, items: pl.DataFrame) -> np.ndarray:
    return events.join(items.select("item_id", "category"), on="item_id", how="left",
                       maintain_order="left")["category"].to_numpy()


def within(share: float, p: float, n: int, sigmas: float = 4.0) -> bool:
    """``share`` of ``n`` Bernoulli(p) draws lies within ``sigmas`` standard errors of ``p``."""
    return abs(share - p) <= sigmas * np.sqrt(max(p * (1 - p), 1e-12) / n) + 1e-12


# ------------------------------------------------------------------------------------------ planted signal


def test_tail_events_are_long_range_with_the_stated_probability(small) -> None:
    events, items = small
    long_range = long_range_events(events, items, WINDOW)
    _, from_end = positions(events)
    tail = from_end <= TAIL
    assert within(long_range[tail].mean(), 0.5, int(tail.sum()))
    # every target position of P5 (n, n-1, n-2-5j) and of P1 with max_train_per_user <= 98
    p5 = np.isin(from_end, [1, 2, *range(3, 94, 5)])
    assert within(long_range[p5].mean(), 0.5, int(p5.sum()))
    for last in (1, 2):  # P1's and P5's test and validation targets, one per user
        assert within(long_range[from_end == last].mean(), 0.5, SMALL["n_users"])
    # the body is bursts: a long-range event only where a burst comes back after a long gap
    assert long_range[~tail].mean() < 0.10


def test_the_stated_probability_follows_p_long() -> None:
    events, items = lifelong_log(**{**SMALL, "n_users": 200, "p_long": 0.25})
    long_range = long_range_events(events, items, WINDOW)
    tail = positions(events)[1] <= TAIL
    assert within(long_range[tail].mean(), 0.25, int(tail.sum()))


def test_without_recalls_no_tail_event_is_long_range() -> None:
    events, items = lifelong_log(**{**SMALL, "n_users": 100, "p_long": 0.0})
    long_range = long_range_events(events, items, WINDOW)
    assert not long_range[positions(events)[1] <= TAIL].any()


def test_a_tail_event_is_long_range_or_in_the_recent_window_never_new(small) -> None:
    events, items = small
    frame = events.select("user_id").with_columns(
        category=pl.Series(categories(events, items)), position=pl.int_range(pl.len()).over("user_id"))
    gap = frame.select(pl.col("position") - pl.col("position").shift(1).over("user_id", "category"))["position"]
    tail = positions(events)[1] <= TAIL
    assert gap.filter(pl.Series(tail)).null_count() == 0  # a tail event's category occurred before


def test_recall_window_is_a_parameter() -> None:
    events, items = lifelong_log(**{**SMALL, "n_users": 200, "window": 20, "tail": 60})
    long_range = long_range_events(events, items, 20)
    tail = positions(events)[1] <= 60
    assert within(long_range[tail].mean(), 0.5, int(tail.sum()))


def test_long_range_events_by_hand() -> None:
    events = pl.DataFrame({"user_id": [1, 1, 1, 1, 1, 2, 2], "item_id": [1, 2, 2, 2, 1, 1, 1]})
    items = pl.DataFrame({"item_id": [1, 2], "category": ["a", "b"]})
    # user 1: a b b b a -> the last 'a' comes back after 4 events; user 2: a a
    assert long_range_events(events, items, window=3).tolist() == [False, False, False, False, True, False, False]
    assert long_range_events(events, items, window=4).tolist() == [False] * 7


# ----------------------------------------------------------------------------------------- body: bursts


def test_bursts_of_interests_separated_by_long_gaps(small) -> None:
    events, items = small
    category = categories(events, items)
    user = events["user_id"].to_numpy()
    body = positions(events)[1] > TAIL
    # runs of one category within a user's body: geometric bursts of mean 10, merged when repeated
    change = np.flatnonzero((category[1:] != category[:-1]) | (user[1:] != user[:-1])) + 1
    starts = np.concatenate([[0], change])
    run_lengths = np.diff(np.append(starts, len(category)))[body[starts]]
    assert 8.0 <= run_lengths.mean() <= 14.0
    # an interest comes back after a long gap filled with other interests (run start to run start)
    starts = starts[body[starts]]
    frame = pl.DataFrame({"user_id": user[starts], "category": category[starts], "start": starts})
    gap = frame.select(pl.col("start") - pl.col("start").shift(1).over("user_id", "category"))["start"].drop_nulls()
    assert gap.median() > 2 * WINDOW and (gap > WINDOW).mean() > 0.7
    # many interests per user
    assert pl.DataFrame({"user_id": user, "category": category}).group_by("user_id").agg(
        pl.col("category").n_unique())["category"].median() > 30


# ---------------------------------------------------------------------------------------------- catalogue


def test_content_vectors_cluster_by_their_planted_cluster(small) -> None:
    _, items = small
    vectors = np.asarray(items["embedding"].to_list(), dtype=np.float32)
    assert vectors.shape == (50_000, 32)
    for column in ("cluster", "category"):
        labels, codes = np.unique(items[column].to_numpy(), return_inverse=True)
        centres = np.zeros((len(labels), vectors.shape[1]))
        np.add.at(centres, codes, vectors)
        centres /= np.bincount(codes)[:, None]
        some = vectors[:5000]  # items in id order, which is random over clusters
        nearest = np.argmin(-2 * some @ centres.T.astype(np.float32) + (centres ** 2).sum(1), axis=1)
        assert (nearest == codes[:5000]).mean() > 0.95, column
    # clusters nest in categories
    assert items.group_by("cluster").agg(pl.col("category").n_unique())["category"].max() == 1
    assert items.group_by("category").agg(pl.col("cluster").n_unique())["cluster"].unique().to_list() == [4]


def test_items_attributes_and_schema(small) -> None:
    events, items = small
    assert events.schema == pl.Schema({"user_id": pl.Int64, "item_id": pl.Int64, "timestamp": pl.Int64,
                                       "row": pl.Int64})
    assert items.schema == pl.Schema({"item_id": pl.Int64, "category": pl.Utf8, "cluster": pl.Utf8,
                                      "attributes": pl.List(pl.Utf8), "embedding": pl.List(pl.Float32)})
    assert items["item_id"].to_list() == list(range(1, 50_001))
    assert (items["attributes"].list.first() == items["category"]).all()
    assert (items["attributes"].list.n_unique() == 3).all()
    # the first tag is the cluster's own
    assert items.group_by("cluster").agg(pl.col("attributes").list.get(1).n_unique())["attributes"].max() == 1


# ------------------------------------------------------------------------------------ sizes and ordering


def test_sizes_order_and_determinism(small) -> None:
    events, items = small
    counts = events.group_by("user_id").len()
    assert sorted(counts["user_id"].to_list()) == list(range(1, SMALL["n_users"] + 1))
    assert counts["len"].min() >= 1000 and counts["len"].max() <= 1200
    assert events["row"].to_list() == list(range(events.height))
    user = events["user_id"].to_numpy()
    assert (np.diff(user) >= 0).all()
    same = np.diff(user) == 0
    assert (np.diff(events["timestamp"].to_numpy())[same] > 0).all()  # strictly increasing per user
    assert events["item_id"].min() >= 1 and events["item_id"].max() <= 50_000
    again = lifelong_log(**SMALL)
    assert again[0].equals(events) and again[1].equals(items)
    other, _ = lifelong_log(**{**SMALL, "seed": 6})
    assert not (other.height == events.height and other.equals(events))


def test_fixed_and_log_uniform_lengths() -> None:
    events, _ = lifelong_log(n_users=20, events_per_user=300, seed=1)
    assert events.group_by("user_id").len()["len"].unique().to_list() == [300]
    events, _ = lifelong_log(n_users=300, events_per_user=(200, 20_000), seed=1, length_distribution="log-uniform")
    lengths = events.group_by("user_id").len()["len"].to_numpy()
    assert lengths.min() >= 200 and lengths.max() <= 20_000
    assert np.median(lengths) < 5_000  # log-uniform: the median is near sqrt(200 * 20,000) = 2,000


def test_a_hundred_thousand_events_per_user_in_seconds() -> None:
    started = time.perf_counter()
    events, items = lifelong_log(n_users=20, events_per_user=100_000, seed=2)
    assert time.perf_counter() - started < 30.0  # about 1 s alone; generous on a shared machine
    assert events.height == 2_000_000
    long_range = long_range_events(events, items, WINDOW)
    tail = positions(events)[1] <= TAIL
    assert within(long_range[tail].mean(), 0.5, int(tail.sum()))


@pytest.mark.parametrize("bad", [dict(events_per_user=120), dict(p_long=1.5), dict(n_interests=600),
                                 dict(n_items=100), dict(events_per_user=(500, 400)), dict(burst_mean=0.5),
                                 dict(length_distribution="normal"), dict(interest_concentration=0.0)])
def test_bad_arguments(bad) -> None:
    with pytest.raises(ValueError):
        lifelong_log(**{"n_users": 5, "events_per_user": 300, **bad})


# -------------------------------------------------------------------------------------------- preparing


def test_recipe_reads_a_spec_file_or_a_written_folder_alike(tmp_path: Path) -> None:
    assert "synthetic-lifelong" in RECIPES
    arguments = dict(n_users=30, events_per_user=[200, 260], seed=4, n_items=5_000, n_categories=100)
    (tmp_path / "spec.toml").write_text("n_users = 30\nevents_per_user = [200, 260]\nseed = 4\n"
                                        "n_items = 5000\nn_categories = 100\n")
    (tmp_path / "spec.json").write_text(json.dumps(arguments))
    folder = write_lifelong_log(tmp_path / "log", **arguments)
    assert sorted(p.name for p in folder.iterdir()) == ["events.parquet", "items.parquet", "spec.json"]
    assert read_lifelong_spec(folder / "spec.json") == {**arguments, "events_per_user": (200, 260)}
    logs = [load_recipe("synthetic-lifelong", path) for path in
            (tmp_path / "spec.toml", tmp_path / "spec.json", folder, folder / "spec.json")]
    for log in logs:
        assert log.recipe == "synthetic-lifelong"
        assert log.events.select("user_id", "item_id", "timestamp").equals(
            logs[0].events.select("user_id", "item_id", "timestamp"))
        assert log.items.select("item_id", "category", "attributes", "embedding").equals(
            logs[0].items.select("item_id", "category", "attributes", "embedding"))
    assert logs[0].sources == [tmp_path / "spec.toml"]
    assert [p.name for p in logs[2].sources] == ["events.parquet", "items.parquet"]


def test_recipe_errors(tmp_path: Path) -> None:
    (tmp_path / "spec.toml").write_text("n_users = 3\nevent_per_user = 300\n")
    with pytest.raises(UserError, match="event_per_user"):
        load_recipe("synthetic-lifelong", tmp_path / "spec.toml")
    (tmp_path / "bad.json").write_text("{not json")
    with pytest.raises(UserError, match="not valid JSON"):
        load_recipe("synthetic-lifelong", tmp_path / "bad.json")
    (tmp_path / "folder").mkdir()
    with pytest.raises(FileNotFoundError, match="events.parquet"):
        load_recipe("synthetic-lifelong", tmp_path / "folder")


def test_prepare_from_the_command_line(tmp_path: Path) -> None:
    spec = tmp_path / "spec.toml"
    spec.write_text("n_users = 40\nevents_per_user = 300\nseed = 2\nn_items = 5000\nn_categories = 100\n")
    result = CliRunner().invoke(app, ["prepare", "--recipe", "synthetic-lifelong", "--input", str(spec),
                                      "--out", str(tmp_path / "data"), "--protocol", "ctr-din",
                                      "--max-train-per-user", "98"])
    assert result.exit_code == 0, result.output
    manifest = json.loads((tmp_path / "data" / "manifest.json").read_text())
    assert manifest["recipe"] == "synthetic-lifelong" and manifest["n_events"] == 40 * 300
    assert {(f["name"], f["kind"]) for f in manifest["features"]} == {("attr", "bag"), ("embedding", "dense")}
    assert next(f for f in manifest["features"] if f["name"] == "embedding")["dim"] == 32
    assert manifest["samples"] == {"train": 40 * 98 * 2, "valid": 80, "test": 80}
    # the training targets are all in the tail, whose events are long-range with probability p_long
    samples = pl.read_parquet(tmp_path / "data" / "samples" / "train.parquet")
    assert samples["end"].min() >= 300 - TAIL
