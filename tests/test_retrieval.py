"""P2 seq-loo: the protocol tables, training windows, exact full-ranking evaluation against brute force,
the next-item losses, and the retrieval training loop (resume, result lines, CLI)."""

from __future__ import annotations

import csv
import json
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

from lifelong.batch import Collator, length_bucketed_order
from lifelong.data.schema import EventLog
from lifelong.dataset.store import SampleTable, load_dataset
from lifelong.metrics import ranking_metrics, target_ranks
from lifelong.models import build_model
from lifelong.models.retrieval import next_item_loss, next_items
from lifelong.pipeline import ProtocolOptions, prepare
from lifelong.protocols import seq_loo_samples, target_partners, training_prefixes, training_windows
from lifelong.streams import STREAMS
from lifelong.train import TrainConfig, evaluate_run, train
from lifelong.train.ranking import rank_targets

from helpers import interrupt_after_first_epoch, random_batch, random_log


@pytest.fixture(scope="module")
def data(tmp_path_factory):
    events, items = random_log(n_users=50, n_items=40, max_events=16, seed=9)
    return prepare(EventLog(events=events, items=items, recipe="test"), tmp_path_factory.mktemp("p2") / "d",
                   ProtocolOptions(name="seq-loo"))


def test_seq_loo_tables_follow_leave_one_out():
    offsets = np.array([0, 3, 8])  # user 0: items 10, 11, 12; user 1: 20..24
    items = np.array([10, 11, 12, 20, 21, 22, 23, 24], dtype=np.int32)
    tables = seq_loo_samples(offsets, items)
    assert tables["test"].end.tolist() == [2, 4] and tables["test"].target.tolist() == [12, 24]
    assert tables["valid"].end.tolist() == [1, 3] and tables["valid"].target.tolist() == [11, 23]
    # user 0's training sequence is i1 alone (no pair): only user 1 trains, its last target is i(n-2)
    assert tables["train"].user.tolist() == [1] and tables["train"].end.tolist() == [2]
    assert tables["train"].target.tolist() == [22]
    with pytest.raises(ValueError, match="at least 3"):
        seq_loo_samples(np.array([0, 2]), items[:2])


@settings(max_examples=60, deadline=None)
@given(st.lists(st.integers(4, 40), min_size=1, max_size=6), st.integers(1, 12))
def test_training_windows_train_every_prefix_target_exactly_once(counts, length):
    offsets = np.concatenate([[0], np.cumsum(counts)])
    items = np.arange(offsets[-1], dtype=np.int32)  # item = global event position
    train_rows = seq_loo_samples(offsets, items)["train"]
    windows = training_windows(train_rows, offsets, items, length)
    trained = []
    for user, end in zip(windows.user, windows.end):
        kept = min(end, length)  # inputs events[end-kept : end], targets events[end-kept+1 : end+1]
        trained += [offsets[user] + p for p in range(end - kept + 1, end + 1)]
    expected = [offsets[u] + p for u, n in enumerate(counts) for p in range(1, n - 2)]  # targets i2 .. i(n-2)
    assert sorted(trained) == expected
    assert windows.target.tolist() == items[offsets[windows.user] + windows.end].tolist()


@settings(max_examples=60, deadline=None)
@given(st.lists(st.integers(4, 40), min_size=1, max_size=6))
def test_training_prefixes_are_every_training_target_once_each_its_own_row(counts):
    offsets = np.concatenate([[0], np.cumsum(counts)])
    items = np.arange(offsets[-1], dtype=np.int32)
    prefixes = training_prefixes(seq_loo_samples(offsets, items)["train"], offsets, items)
    expected = [offsets[u] + p for u, n in enumerate(counts) for p in range(1, n - 2)]  # targets i2 .. i(n-2)
    assert (offsets[prefixes.user] + prefixes.end).tolist() == expected  # each once, in order
    assert prefixes.target.tolist() == items[offsets[prefixes.user] + prefixes.end].tolist()


@settings(max_examples=80, deadline=None)
@given(st.lists(st.integers(0, 6), min_size=0, max_size=40), st.integers(0, 2**32 - 1))
def test_target_partners_share_the_target_and_are_another_row_whenever_one_exists(targets, seed):
    targets = np.array(targets, dtype=np.int64)
    partners = target_partners(targets, np.random.default_rng(seed))
    assert partners.shape == targets.shape and partners.dtype == np.int64
    assert (targets[partners] == targets).all()
    shared = np.bincount(targets, minlength=7)[targets] > 1 if targets.size else np.zeros(0, bool)
    assert (partners[shared] != np.flatnonzero(shared)).all()  # another row with the same target
    assert (partners[~shared] == np.flatnonzero(~shared)).all()  # alone: its own partner


def test_target_partners_draw_every_other_row_of_a_group_uniformly():
    targets = np.array([4] * 5 + [9])
    rng = np.random.default_rng(0)
    drawn = np.stack([target_partners(targets, rng) for _ in range(4000)])  # (draws, rows)
    counts = np.stack([np.bincount(drawn[:, r], minlength=6) for r in range(5)]) / 4000  # (rows, partners)
    expected = (1 - np.eye(5, 6)) / 4
    expected[:, 5] = 0
    assert np.abs(counts - expected).max() < 0.03


def test_next_items_of_a_prefix_row_train_its_last_position_only():
    batch = random_batch(seed=1)
    every, every_mask = next_items(batch)
    batch.last_target_only = True
    nxt, mask = next_items(batch)
    assert (mask.sum(1) == (batch.lengths > 0).long()).all()
    last = (batch.lengths - 1).clamp(min=0)
    rows = torch.arange(len(batch))
    assert mask[rows, last].tolist() == (batch.lengths > 0).tolist()
    assert nxt[rows, last].tolist() == (batch.target_items * (batch.lengths > 0)).tolist()
    assert (nxt[mask] == every[mask]).all() and (mask <= every_mask).all()


def test_prefix_rows_give_the_window_loss_of_the_same_positions(data):
    """Without dropout, the mean loss of a window's prefixes (each its own row, its last position trained) is the
    window's loss over every position: the regimes differ in batching and dropout draws, not in what is trained."""
    dataset = load_dataset(data)
    model = build_model({"model_type": "sasrec", "n_items": dataset.vocab_sizes["item"], "n_cates": 2,
                         "embedding_dim": 8, "max_positions": 8, "dropout": 0.0, "loss": "full"})
    model.train()
    collator = Collator(dataset, 8)
    rows = dataset.samples("train").subset(np.arange(6))
    windows = training_windows(rows, dataset.offsets, dataset.event_items, 8)
    window_rows = windows.subset(np.flatnonzero(windows.end <= 8))  # one window each: every prefix fits in L
    prefixes = training_prefixes(window_rows, dataset.offsets, dataset.event_items)
    window_batch = collator(window_rows)
    targets = int(window_batch.lengths.sum())
    assert len(prefixes) == targets
    prefix_batch = collator(prefixes)
    prefix_batch.last_target_only = True
    assert torch.allclose(model(prefix_batch).loss, model(window_batch).loss, atol=1e-5)


def spy_on_trainers(monkeypatch) -> list[dict]:
    """Record every trainer the loop builds: its model, the rows it trains from, each epoch's (rows, targets)
    and each training batch's (rows, last_target_only, real positions)."""
    from lifelong.train import retrieval

    trainers, build = [], retrieval._trainer

    def spy(config, dataset, collator, model_config, rows, *args, **kwargs):
        model, epoch_of = build(config, dataset, collator, model_config, rows, *args, **kwargs)
        record = {"rows": rows, "epochs": [], "batches": [], "model": model}
        trainers.append(record)
        forward = model.forward

        def forward_spy(batch, *a, **kw):
            if model.training:
                record["batches"].append((len(batch), bool(batch.last_target_only), int(batch.lengths.sum())))
            return forward(batch, *a, **kw)

        def epoch_spy(*a, **kw):
            out = epoch_of(*a, **kw)
            record["epochs"].append(out[1:3])
            return out

        model.forward = forward_spy
        return model, epoch_spy

    monkeypatch.setattr(retrieval, "_trainer", spy)
    return trainers


def test_prefix_samples_train_from_the_loop_and_a_model_that_ignores_them_is_refused(data, tmp_path, monkeypatch):
    trainers = spy_on_trainers(monkeypatch)
    results = train(config(data, tmp_path / "prefixes", samples="prefixes", epochs=2))
    saved = json.loads((tmp_path / "prefixes" / "config.json").read_text())["train"]
    dataset = load_dataset(data)
    assert saved["samples"] == "prefixes" and results["test"]["n"] == dataset.n_users
    windows = train(config(data, tmp_path / "windows", epochs=2))
    monkeypatch.undo()
    rows = dataset.samples("train")
    targets = len(training_prefixes(rows, dataset.offsets, dataset.event_items))  # every training target once
    n_windows = len(training_windows(rows, dataset.offsets, dataset.event_items, 8))
    assert targets > n_windows  # the windows hold several targets each
    prefix_run, window_run = trainers
    # prefixes: one row per training target, its last position trained only; windows: every position
    assert prefix_run["epochs"] == [(targets, targets)] * 2 and window_run["epochs"] == [(n_windows, targets)] * 2
    assert {last for _, last, _ in prefix_run["batches"]} == {True}
    assert sum(n for n, _, _ in prefix_run["batches"]) == 2 * targets
    assert {last for _, last, _ in window_run["batches"]} == {False}
    assert sum(n for n, _, _ in window_run["batches"]) == 2 * n_windows
    assert sum(real for _, _, real in window_run["batches"]) == 2 * targets
    with pytest.raises(ValueError, match="last_target_only"):
        train(config(data, tmp_path / "idnp", model="idnp", samples="prefixes",
                     model_options={"embedding_dim": 8}))
    with pytest.raises(ValueError, match="samples must be one of"):
        config(data, tmp_path / "bad", samples="every").validate()


def test_prepare_seq_loo_writes_one_valid_and_test_row_per_user(data):
    dataset = load_dataset(data)
    assert dataset.manifest["protocol"]["name"] == "seq-loo"
    counts = np.diff(dataset.offsets)
    assert len(dataset.samples("test")) == len(dataset.samples("valid")) == dataset.n_users
    assert (dataset.samples("test").end == counts - 1).all()


def test_target_ranks_equal_a_stable_descending_sort():
    g = torch.Generator().manual_seed(0)
    scores = torch.randint(0, 6, (50, 30), generator=g).float()  # many ties
    scores[scores == 0] = float("-inf")
    targets = torch.randint(0, 30, (50,), generator=g)
    ranks = target_ranks(scores, targets)
    for row in range(50):
        if torch.isneginf(scores[row, targets[row]]):
            assert ranks[row] == 30  # an excluded target is a miss at every cut-off
            continue
        order = np.argsort(-scores[row].numpy(), kind="stable")
        assert ranks[row] == int(np.flatnonzero(order == targets[row].item())[0])


def test_length_bucketed_batches_hold_every_row_once_and_similar_lengths():
    rng = np.random.default_rng(0)
    lengths = rng.integers(1, 51, 1000)
    order = length_bucketed_order(rng.permutation(1000), lengths, 64, np.random.default_rng(1))
    assert sorted(order.tolist()) == list(range(1000))
    blocks = [lengths[order[b : b + 64]] for b in range(0, 1000, 64)]
    assert all(len(block) == 64 for block in blocks[:-1]) and len(blocks[-1]) == 1000 % 64  # the remainder last
    spread = [int(block.max() - block.min()) for block in blocks]
    assert max(spread) <= 5  # sorted by length: a block spans few lengths (a random block spans ~49)
    firsts = [int(block.min()) for block in blocks[:-1]]
    assert firsts != sorted(firsts)  # ... and the blocks come in random order


def test_ranking_metrics_match_their_definitions():
    ranks = np.array([0, 4, 5, 9, 19, 49, 300])
    m = ranking_metrics(ranks)
    assert m["hr@5"] == pytest.approx(2 / 7) and m["hr@10"] == pytest.approx(4 / 7) and m["hr@20"] == pytest.approx(5 / 7)
    assert m["ndcg@10"] == pytest.approx(sum(1 / np.log2(r + 2) for r in (0, 4, 5, 9)) / 7)
    assert m["recall@50"] == pytest.approx(6 / 7) and m["n"] == 7


def brute_force_ranks(model, dataset, samples, max_length, exclude=True):
    """One user at a time: score every item, drop padding/unknown and the history, sort."""
    collator = Collator(dataset, max_length)
    ranks = []
    items = model.item_vectors()
    for i in range(len(samples)):
        one = samples.subset(np.array([i]))
        batch = collator(one)
        scores = model.score(model.user_vectors(batch), items)[0].detach().numpy()
        candidates = list(range(2, scores.shape[0]))
        if exclude:
            seen = set(dataset.item_idx[dataset.history(int(one.user[0]), int(one.end[0]))].tolist())
            candidates = [j for j in candidates if j not in seen]
        target = int(batch.target_items[0])
        if target not in candidates:
            ranks.append(scores.shape[0])  # an excluded target is a miss
            continue
        ordered = sorted(candidates, key=lambda j: (-scores[j], j))
        ranks.append(ordered.index(target))
    return np.array(ranks)


@pytest.mark.parametrize("exclude", [True, False])
def test_full_ranking_in_chunks_equals_brute_force(data, exclude):
    dataset = load_dataset(data)
    torch.manual_seed(0)
    model = build_model({"model_type": "sasrec", "n_items": dataset.vocab_sizes["item"], "n_cates": 8,
                         "embedding_dim": 8, "max_positions": 6}).eval()
    test = dataset.samples("test")
    expected = brute_force_ranks(model, dataset, test, 6, exclude)
    if exclude:  # the random log repeats items, so some test targets are history items: misses
        assert (expected == dataset.vocab_sizes["item"]).any()
    for chunk in (7, 1000):
        got = rank_targets(model, Collator(dataset, 6), test, chunk_users=chunk, exclude_history=exclude)
        assert got.tolist() == expected.tolist()


def test_next_items_shift_the_window_and_end_with_the_target():
    batch = random_batch(seed=1)
    nxt, mask = next_items(batch)
    for row in range(len(batch)):
        n = int(mask[row].sum())
        assert nxt[row, : n - 1].tolist() == batch.history_items[row, 1:n].tolist()
        assert int(nxt[row, n - 1]) == int(batch.target_items[row])
        assert (nxt[row, n:] == 0).all()


def test_losses_full_is_cross_entropy_and_sampled_masks_accidental_hits():
    torch.manual_seed(0)
    hidden, items = torch.randn(5, 4), torch.randn(12, 4)
    positives = torch.tensor([2, 3, 4, 5, 11])
    logits = hidden @ items.T
    manual = -(logits[:, 2:].log_softmax(-1)[torch.arange(5), positives - 2]).mean()
    torch.testing.assert_close(next_item_loss(hidden, positives, items, "full"), manual)
    # sampled softmax: the positive against the shared draws, a draw equal to the row's positive masked
    STREAMS.reset(1)  # the shared draw comes from the negatives stream (lifelong.streams)
    sampled_loss = next_item_loss(hidden, positives, items, "sampled", n_sampled=6)
    STREAMS.reset(1)
    drawn = torch.randint(2, 12, (6,), generator=STREAMS("negatives"))
    expected = []
    for row in range(5):
        negatives_row = [int(j) for j in drawn if int(j) != int(positives[row])]
        row_logits = torch.cat([logits[row, positives[row]].view(1), logits[row, negatives_row]])
        expected.append(-row_logits.log_softmax(0)[0])
    torch.testing.assert_close(sampled_loss, torch.stack(expected).mean())
    negatives = torch.tensor([6, 7, 8, 9, 10])
    bce = next_item_loss(hidden, positives, items, "bce", negatives=negatives)
    pos = (hidden * items[positives]).sum(-1)
    neg = (hidden * items[negatives]).sum(-1)
    manual_bce = -(torch.log(torch.sigmoid(pos)).mean() + torch.log(1 - torch.sigmoid(neg)).mean())
    torch.testing.assert_close(bce, manual_bce)


def test_sampled_loss_with_row_negatives_adds_each_rows_own_items_once():
    torch.manual_seed(0)
    hidden, items = torch.randn(3, 4), torch.randn(12, 4)
    positives = torch.tensor([2, 3, 4])
    # row 0: 5 and 6 (6 twice, padding 0 ignored); row 1: its own positive 3 (dropped) and 7;
    # row 2: 8, plus whatever the shared draw also holds (dropped from the extra columns)
    extra = torch.tensor([[5, 6, 6, 0], [3, 7, 0, 0], [8, 0, 0, 0]])
    STREAMS.reset(1)
    loss = next_item_loss(hidden, positives, items, "sampled", n_sampled=4, reduction="none", row_negatives=extra)
    STREAMS.reset(1)
    drawn = [int(j) for j in torch.randint(2, 12, (4,), generator=STREAMS("negatives"))]
    logits = hidden @ items.T
    for row in range(3):
        shared = [j for j in drawn if j != int(positives[row])]
        own = []
        for j in extra[row].tolist():
            if j not in (0, int(positives[row])) and j not in drawn and j not in own:
                own.append(j)
        row_logits = torch.cat([logits[row, positives[row]].view(1), logits[row, shared + own]])
        torch.testing.assert_close(loss[row], -row_logits.log_softmax(0)[0])
    # without extra negatives the loss is the plain sampled softmax of the same draw
    STREAMS.reset(1)
    plain = next_item_loss(hidden, positives, items, "sampled", n_sampled=4, reduction="none")
    assert (loss >= plain - 1e-6).all() and bool((loss > plain + 1e-6).any())


def config(data, out, **kw):
    values = dict(data=str(data), model="sasrec", out=str(out), epochs=3, batch_size=16, patience=5, progress=False,
                  max_length=8, lr=5e-3, model_options={"embedding_dim": 8, "max_positions": 8, "dropout": 0.2})
    values.update(kw)
    return TrainConfig(**values)


@pytest.mark.parametrize("loss", ["bce", "sampled", "full"])
def test_retrieval_loop_resumes_exactly_under_every_loss(data, tmp_path, loss):
    options = {"embedding_dim": 8, "max_positions": 8, "dropout": 0.2, "loss": loss, "negatives": 5}
    straight = train(config(data, tmp_path / "straight", model_options=options))

    interrupt_after_first_epoch(config(data, tmp_path / "resumed", model_options=options))
    resumed = train(config(data, tmp_path / "resumed", model_options=options), resume=True)
    assert resumed["test"] == straight["test"] and resumed["loss"] == loss
    assert resumed["best_epoch"] == straight["best_epoch"]


def test_retrieval_run_writes_ranks_and_a_result_line_naming_the_loss(data, tmp_path):
    results_csv = tmp_path / "results.csv"
    results = train(config(data, tmp_path / "run", results_csv=str(results_csv), save_predictions=True))
    saved = np.load(tmp_path / "run" / "test_ranks.npz")
    accuracy = ranking_metrics(saved["rank"])
    assert {k: results["test"][k] for k in accuracy} == accuracy
    # beyond-accuracy metrics of the selected model's top 10 (training popularity), next to accuracy
    from lifelong.beyond import beyond_accuracy
    from lifelong.train.checkpoint import load_model_config, load_weights
    from lifelong.train.ranking import item_categories, training_popularity

    best = tmp_path / "run" / "checkpoints" / "best"
    model = build_model(load_model_config(best))
    load_weights(best, model)
    dataset = load_dataset(data)
    _, top = rank_targets(model.eval(), Collator(dataset, 8), dataset.samples("test"), top_k=10)
    n_items = dataset.vocab_sizes["item"]
    expected = beyond_accuracy(top, item_categories(dataset, n_items), training_popularity(dataset, n_items))
    assert {k: results["test"][f"top10_{k}"] for k in expected} == pytest.approx(expected)
    row = next(csv.DictReader(open(results_csv)))
    assert row["loss"] == "full" and row["protocol"] == "seq-loo" and float(row["test_ndcg@10"]) == round(results["test"]["ndcg@10"], 5)
    lines = [json.loads(line) for line in (tmp_path / "run" / "metrics.jsonl").read_text().splitlines()]
    assert [line["epoch"] for line in lines] == [1, 2, 3]
    assert evaluate_run(tmp_path / "run", "test") == results["test"]  # `lifelong evaluate` re-ranks the same


def test_a_retrieval_model_refuses_a_ctr_dataset(tmp_path):
    events, items = random_log(n_users=10, n_items=20, seed=1)
    ctr = prepare(EventLog(events=events, items=items, recipe="test"), tmp_path / "ctr", ProtocolOptions())
    with pytest.raises(ValueError, match="seq-loo"):
        train(config(ctr, tmp_path / "run"))


def test_top_lists_are_the_highest_scored_unseen_items_and_popularity_counts_training_events(data):
    from lifelong.train.ranking import training_popularity

    dataset = load_dataset(data)
    torch.manual_seed(0)
    model = build_model({"model_type": "sasrec", "n_items": dataset.vocab_sizes["item"], "n_cates": 8,
                         "embedding_dim": 8, "max_positions": 6}).eval()
    test = dataset.samples("test")
    ranks, top = rank_targets(model, Collator(dataset, 6), test, chunk_users=7, top_k=3)
    assert ranks.tolist() == brute_force_ranks(model, dataset, test, 6).tolist()
    items = model.item_vectors()
    for i in range(len(test)):
        one = test.subset(np.array([i]))
        scores = model.score(model.user_vectors(Collator(dataset, 6)(one)), items)[0].detach()
        seen = set(dataset.item_idx[dataset.history(int(one.user[0]), int(one.end[0]))].tolist())
        allowed = [j for j in range(2, scores.shape[0]) if j not in seen]
        best = sorted(allowed, key=lambda j: -float(scores[j]))[:3]
        assert sorted(top[i].tolist()) == sorted(best)
    popularity = training_popularity(dataset, dataset.vocab_sizes["item"])
    counts = np.diff(dataset.offsets)
    assert popularity.sum() == (counts - 2).sum()


def test_refit_with_valid_trains_through_the_validation_item_and_leaves_the_p2_test_alone(data, tmp_path,
                                                                                          monkeypatch):
    dataset = load_dataset(data)
    valid = dataset.samples("valid")
    train_windows = training_windows(dataset.samples("train"), dataset.offsets, dataset.event_items, 4)
    refit_windows = training_windows(valid, dataset.offsets, dataset.event_items, 4)
    def last_trained(windows):  # user -> position of the last target a window trains
        return {int(u): int(windows.end[windows.user == u].max()) for u in np.unique(windows.user)}

    valid_position = {int(u): int(e) for u, e in zip(valid.user, valid.end)}  # position of i(n-1)
    assert all(e < valid_position[u] for u, e in last_trained(train_windows).items())  # P2 never trains on i(n-1)
    assert last_trained(refit_windows) == valid_position  # the refit does, for every user
    plain = train(config(data, tmp_path / "plain"))
    trainers = spy_on_trainers(monkeypatch)
    refit = train(config(data, tmp_path / "refit", refit_with_valid=True))
    monkeypatch.undo()
    assert refit["test"] == plain["test"] and refit["best_epoch"] == plain["best_epoch"]  # selection untouched
    assert refit["refit_epochs"] == refit["best_epoch"] and set(refit["test_refit"]) == set(refit["test"])
    # the refit is a second, fresh trainer on the validation rows, trained for the selected number of epochs,
    # each epoch on every training target plus each user's validation item i(n-1)
    main, refitted = trainers
    assert main["rows"].end.tolist() == dataset.samples("train").end.tolist()
    assert refitted["rows"].user.tolist() == valid.user.tolist() and refitted["rows"].end.tolist() == valid.end.tolist()
    train_targets, refit_targets = int(dataset.samples("train").end.sum()), int(valid.end.sum())
    assert refit_targets == train_targets + len(valid)  # one more target per user
    assert {targets for _, targets in main["epochs"]} == {train_targets}
    assert [targets for _, targets in refitted["epochs"]] == [refit_targets] * refit["best_epoch"]
    # ... and test_refit is that model's ranking of the test items
    expected = ranking_metrics(rank_targets(refitted["model"].eval(), Collator(dataset, 8), dataset.samples("test")))
    assert {k: refit["test_refit"][k] for k in expected} == pytest.approx(expected)


@pytest.mark.slow
@pytest.mark.parametrize("loss", ["sampled", "bce"])
def test_two_process_ddp_retrieval_metrics_equal_a_single_process_evaluation(data, tmp_path, loss):
    """SASRec under torchrun with two processes (gloo): each rank trains its share of the windows and
    ranks its share of the users; the reported metrics, computed on the gathered ranks, are exactly what
    one process ranks with the same best checkpoint."""
    run = tmp_path / "ddp"
    torchrun = Path(sys.executable).parent / "torchrun"
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    command = [str(torchrun), "--standalone", "--nproc_per_node=2", "-m", "lifelong", "train", "--data", str(data),
               "--model", "sasrec", "--out", str(run), "--epochs", "2", "--batch-size", "16", "--max-length", "8",
               "--no-progress", "--set", "embedding_dim=8", "--set", "max_positions=8", "--set", f"loss={loss}",
               "--set", "negatives=5"]
    done = subprocess.run(command, env=env, capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, done.stderr[-3000:]
    reported = json.loads((run / "results.json").read_text())
    metrics = json.loads((run / "metrics.jsonl").read_text().splitlines()[0])
    assert metrics["train_targets_per_s"] * metrics["train_seconds"] > 0
    for split in ("valid", "test"):
        single = evaluate_run(run, split)
        assert single["n"] == reported[split]["n"] == 50
        for metric in ("hr@5", "ndcg@5", "hr@10", "ndcg@10", "hr@20", "ndcg@20", "recall@50"):
            assert single[metric] == pytest.approx(reported[split][metric], abs=1e-12), (split, metric)
