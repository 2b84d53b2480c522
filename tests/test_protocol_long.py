"""P5 ctr-long on hand-built and random logs: target positions, histories, two frequency-drawn negatives
that are never the user's items, users dropped below the minimum, and the CLI path."""

from __future__ import annotations

import numpy as np
import pytest

from lifelong.data.schema import EventLog
from lifelong.dataset import load_dataset
from lifelong.pipeline import ProtocolOptions, prepare
from lifelong.protocols.long import P5_MIN_EVENTS, ctr_long_samples, target_positions
from lifelong.protocols.negatives import InteractionIndex

from helpers import event_frame


def long_log(n_users: int = 30, seed: int = 0, min_events: int = 20, max_events: int = 140):
    rng = np.random.default_rng(seed)
    rows = []
    for user in range(1, n_users + 1):
        t = 1_600_000_000
        for _ in range(int(rng.integers(min_events, max_events + 1))):
            t += int(rng.integers(0, 3)) * 60  # gap 0 makes ties: row order breaks them
            rows.append((user, int(rng.zipf(1.5)) % 400 + 1, t))
    return rows


def prepared(tmp_path, rows, **options):
    path = prepare(EventLog(events=event_frame(rows), recipe="test"), tmp_path / "p5",
                   ProtocolOptions(name="ctr-long", **options))
    return load_dataset(path)


def test_target_positions_follow_the_protocol():
    users, k = target_positions(np.array([100, 20, 3]))["train"]
    assert k[users == 0].tolist() == [98 - 5 * j for j in range(18, -1, -1)]  # 19 targets: -3, -8, ..., -93
    assert k[users == 1].tolist() == [3, 8, 13, 18]
    assert k[users == 2].tolist() == []  # n = 3: k = 1 has no history
    assert target_positions(np.array([100]))["valid"][1].tolist() == [99]
    assert target_positions(np.array([100]))["test"][1].tolist() == [100]


@pytest.mark.parametrize("seed", [0, 1])
def test_samples_histories_and_negatives(tmp_path, seed):
    ds = prepared(tmp_path, long_log(seed=seed), seed=seed)
    index = InteractionIndex.build(ds.offsets, ds.event_items, int(ds.item_idx.shape[0]))
    counts = np.diff(ds.offsets)
    for split in ("train", "valid", "test"):
        table = ds.samples(split)
        assert len(table) % 3 == 0
        groups = np.arange(len(table)).reshape(-1, 3)
        pos, neg = groups[:, 0], groups[:, 1:].reshape(-1)
        assert (table.label[pos] == 1).all() and (table.label[neg] == 0).all()
        # a negative shares its positive's user and history, is never an item of the user, and the two differ
        assert (table.user[groups] == table.user[pos][:, None]).all()
        assert (table.end[groups] == table.end[pos][:, None]).all()
        assert not index.contains(table.user[neg], table.target[neg]).any()
        assert (table.target[groups[:, 1]] != table.target[groups[:, 2]]).all()
        # the positive is the user's event right after its history: no history event at or after the target
        assert (table.target[pos] == ds.event_items[ds.offsets[table.user[pos]] + table.end[pos]]).all()
        expected_end = {"valid": counts - 2, "test": counts - 1}.get(split)
        if expected_end is not None:
            assert table.end[pos].tolist() == expected_end[table.user[pos]].tolist()
    train = ds.samples("train")
    per_user = np.bincount(train.user[train.label == 1], minlength=ds.n_users)
    assert per_user.max() <= 19 and (per_user == np.minimum(19, (counts - 4) // 5 + 1)).all()  # k = n-2-5j >= 2


def test_negatives_are_drawn_by_frequency():
    """An item with 10x the training events of another is drawn about 10x as often (by users who have
    neither; the first negative of each positive, which the distinctness of the second does not bend)."""
    rng = np.random.default_rng(0)
    n_users, n = 1300, 30
    items = rng.integers(3, 60, (n_users, n)).astype(np.int32)
    items[:200, :10] = 1  # item 1: 2,000 events, all in the first 200 users' training parts
    items[200:300, :2] = 2  # item 2: 200 events, in users 200-299
    offsets = np.arange(n_users + 1) * n
    table = ctr_long_samples(offsets, items.reshape(-1), 60, seed=1)["train"]
    first = np.arange(1, len(table), 3)  # the first negative of each positive
    free = first[table.user[first] >= 300]  # users who never saw items 1 or 2
    hits1, hits2 = int((table.target[free] == 1).sum()), int((table.target[free] == 2).sum())
    assert hits2 > 25 and 7 < hits1 / hits2 < 14  # expected 10 (2,000 vs 200 events in the pool)


def test_users_below_the_minimum_are_dropped(tmp_path):
    rows = long_log(n_users=5, min_events=25, max_events=30) + [(99, 1, 1_600_000_000 + i) for i in range(19)]
    ds = prepared(tmp_path, rows)
    assert ds.n_users == 5  # the 19-event user is dropped (the default minimum is 20)
    assert P5_MIN_EVENTS == 20
    ds = prepared(tmp_path / "b", long_log(n_users=5, min_events=25, max_events=30), min_events=28)
    assert (np.diff(ds.offsets) >= 28).all()


def test_the_cli_prepares_p5(tmp_path):
    from typer.testing import CliRunner

    from lifelong.cli import app

    rows = long_log(n_users=8)
    csv = tmp_path / "log.csv"
    csv.write_text("user,item,ts\n" + "".join(f"{u},{i},{t}\n" for u, i, t in rows))
    out = tmp_path / "data"
    result = CliRunner().invoke(app, ["prepare", "--recipe", "csv", "--input", str(csv), "--out", str(out),
                                      "--protocol", "ctr-long", "--column", "user_id=user", "--column", "item_id=item",
                                      "--column", "timestamp=ts"])
    assert result.exit_code == 0, result.output
    ds = load_dataset(out)
    assert ds.manifest["protocol"]["name"] == "ctr-long"
    assert len(ds.samples("test")) == 3 * 8
