"""Collate: slicing, keeping the most recent L, padding to the batch's longest history, side features."""

from __future__ import annotations

import numpy as np
import pytest

from lifelong.batch import Collator
from lifelong.data.schema import EventLog
from lifelong.dataset import load_dataset
from lifelong.pipeline import ProtocolOptions, prepare

from helpers import random_log


@pytest.fixture(scope="module")
def dataset(tmp_path_factory):
    events, items = random_log(n_users=25, max_events=30, seed=3, with_behavior=True)
    path = prepare(EventLog(events=events, items=items, recipe="test"), tmp_path_factory.mktemp("b") / "d", ProtocolOptions())
    return load_dataset(path)


@pytest.mark.parametrize("max_length", [1, 5, 50])
def test_collate_matches_a_per_sample_slice(dataset, max_length):
    samples = dataset.samples("train").subset(np.arange(0, 120, 3))
    batch = Collator(dataset, max_length, with_timestamps=True)(samples)
    expected_width = min(int(samples.end.max()), max_length)
    assert batch.history_items.shape == (len(samples), expected_width)
    for i in range(len(samples)):
        full = dataset.history(samples.user[i], samples.end[i])
        kept = full[-max_length:]  # the most recent L, in time order
        n = len(kept)
        assert batch.history_mask[i].sum() == n
        assert batch.history_items[i, :n].tolist() == dataset.item_idx[kept].tolist()
        assert batch.history_cates[i, :n].tolist() == dataset.item_cate[kept].tolist()
        assert (batch.history_items[i, n:] == 0).all() and (batch.history_cates[i, n:] == 0).all()
        start = dataset.offsets[samples.user[i]] + samples.end[i] - n
        assert batch.history_timestamps[i, :n].tolist() == dataset.event_timestamps[start : start + n].tolist()
        assert batch.target_items[i] == dataset.item_idx[samples.target[i]]
        assert batch.target_cates[i] == dataset.item_cate[samples.target[i]]
    batch.validate()


def test_padding_is_to_the_longest_history_in_the_batch(dataset):
    samples = dataset.samples("train")
    short = samples.subset(np.flatnonzero(samples.end <= 2)[:10])
    assert Collator(dataset, 50)(short).history_items.shape[1] == 2


def test_a_large_batch_holds_each_samples_own_history(dataset):
    """20k samples (the training samples repeated) with L=50 collate to the rows of the samples collated
    once (its speed against a per-sample loop: benchmarks/data_speed.py)."""
    samples = dataset.samples("train")
    big = samples.subset(np.resize(np.arange(len(samples)), 20_000))
    collator = Collator(dataset, 50, with_timestamps=True)
    batch, once = collator(big), collator(samples)
    rows = np.resize(np.arange(len(samples)), 20_000)
    for name in ("history_items", "history_cates", "history_mask", "history_timestamps", "target_items", "users"):
        assert np.array_equal(getattr(batch, name).numpy(), getattr(once, name).numpy()[rows]), name
