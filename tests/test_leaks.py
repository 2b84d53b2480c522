"""No leaks from validation and test into training: the item counts of the mini-batch aware regulariser
and every "items of this user" set that training negatives avoid are built from the events training
sees (:func:`lifelong.protocols.training_event_mask`), never from held-out targets."""

from __future__ import annotations

import numpy as np
import polars as pl
import pytest

from lifelong.batch import event_negatives
from lifelong.data.schema import EventLog
from lifelong.dataset.store import load_dataset
from lifelong.models import build_model
from lifelong.pipeline import ProtocolOptions, prepare
from lifelong.protocols import training_event_mask
from lifelong.train.loop import _set_counts
from lifelong.train.run import TrainConfig, model_config_for
from lifelong.train.retrieval import negative_index

from helpers import event_frame

HELD_OUT = (101, 102)  # the probe user's validation and test items: in no other event of the log


def probe_log() -> EventLog:
    """User 1 (the probe) has 30 events over items 1..5, then item 101 (valid) and 102 (test); users
    2..40 use items 1..10 and, once each, 101 and 102 early in their histories (so both items have a
    vocabulary index and a catalogue row)."""
    rng = np.random.default_rng(3)
    rows = [(1, int(rng.integers(1, 6)), 1_600_000_000 + 60 * k) for k in range(30)]
    rows += [(1, HELD_OUT[0], 1_600_010_000), (1, HELD_OUT[1], 1_600_020_000)]
    for user in range(2, 41):
        items = [HELD_OUT[0], HELD_OUT[1]] + [int(i) for i in rng.integers(1, 11, 10)]
        rows += [(user, item, 1_600_000_000 + 60 * k) for k, item in enumerate(items)]
    items = pl.DataFrame({"item_id": list(range(1, 11)) + list(HELD_OUT),
                          "category": [f"c{i % 3}" for i in range(12)]}).cast({"item_id": pl.Int64})
    return EventLog(events=event_frame(rows), items=items, sources=[], rejected=None, recipe="test")


def prepared(tmp_path_factory, protocol: str):
    folder = prepare(probe_log(), tmp_path_factory.mktemp("leaks") / "data", ProtocolOptions(name=protocol))
    return load_dataset(folder)


@pytest.fixture(scope="module")
def p1(tmp_path_factory):
    return prepared(tmp_path_factory, "ctr-din")


@pytest.fixture(scope="module")
def p2(tmp_path_factory):
    return prepared(tmp_path_factory, "seq-loo")


@pytest.fixture(params=["p1", "p2"])
def dataset(request):
    return request.getfixturevalue(request.param)


def probe(dataset) -> tuple[int, np.ndarray]:
    """The probe user's row and the item rows of its held-out items."""
    users = pl.read_parquet(dataset.path / "users.parquet")
    row = int(users.filter(pl.col("user_id") == "1")["user_row"][0])
    items = pl.read_parquet(dataset.path / "items.parquet")
    held = items.filter(pl.col("item_id").is_in([str(i) for i in HELD_OUT]))["item_row"].to_numpy()
    return row, held


def test_the_training_events_end_before_each_users_validation_and_test_targets(dataset):
    mask = training_event_mask(dataset.offsets, dataset.samples("train"))
    counts = np.diff(dataset.offsets)
    last_two = np.concatenate([dataset.offsets[1:] - 2, dataset.offsets[1:] - 1])
    assert not mask[last_two].any()  # P1 and P2 hold out each user's last two events
    assert mask.sum() == (counts - 2).sum()  # and training sees every other one
    for split in ("valid", "test"):
        held = dataset.samples(split)
        positive = held.label > 0
        assert not mask[dataset.offsets[held.user[positive]] + held.end[positive]].any()


def test_a_mini_batch_aware_regulariser_counts_training_events_only(p1):
    dataset = p1
    config = TrainConfig(data=str(dataset.path), model="din", model_options={"l2_mba": 0.1})
    model = build_model(model_config_for(config, dataset))
    _set_counts(model, dataset)
    row, held = probe(dataset)
    held_index = dataset.item_idx[held]
    # each held-out item occurs once in the training events of each of the 39 other users, and once more
    # as the probe's validation or test target, which must not count
    counted = model.embedding.item_counts[held_index].tolist()
    assert counted == [39.0, 39.0]
    assert model.embedding.item_counts.sum().item() == training_event_mask(
        dataset.offsets, dataset.samples("train")).sum()


def test_event_negatives_may_draw_the_users_held_out_items(dataset):
    """Excluding the probe's validation and test items from its negatives would tell training which
    items those are; its 30 history events each draw one negative among the items it has not seen in
    training: 6..10, 101 and 102, so the held-out ones come up."""
    row, held = probe(dataset)
    negatives = event_negatives(dataset, seed=11)
    start = dataset.offsets[row]
    drawn = set(negatives[start : start + 30].tolist())
    assert set(held.tolist()) & drawn
    history = set(dataset.event_items[start : start + 30].tolist())
    assert not history & drawn  # the items it did see in training are still never its negatives


def test_the_retrieval_negative_index_holds_training_pairs_only(p2):
    dataset = p2
    row, held = probe(dataset)
    index = negative_index(dataset, dataset.samples("train"))
    assert not index.contains(np.full(2, row), held).any()
    seen = dataset.event_items[dataset.offsets[row] : dataset.offsets[row] + 30]
    assert index.contains(np.full(seen.shape[0], row), seen).all()
    # uSASRec's refit trains through the validation item: then that one is a training pair
    refit = negative_index(dataset, dataset.samples("valid"))
    assert refit.contains(np.array([row, row]), held).tolist() == [True, False]
