"""The training loop: early stopping, atomic checkpoints without pickle, exact resume, result lines, DDP."""

from __future__ import annotations

import csv
import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

from lifelong.data.schema import EventLog
from lifelong.pipeline import ProtocolOptions, prepare
from lifelong.errors import UserError
from lifelong.train import TrainConfig, evaluate_run, train

from helpers import interrupt_after_first_epoch, random_log


@pytest.fixture(scope="module")
def data(tmp_path_factory):
    events, items = random_log(n_users=60, n_items=40, max_events=20, seed=5)
    return prepare(EventLog(events=events, items=items, recipe="test"), tmp_path_factory.mktemp("t") / "d", ProtocolOptions())


def config(data, out, **kw):
    values = dict(data=str(data), model="din", out=str(out), epochs=3, batch_size=64, patience=5, progress=False,
                  model_options={"embedding_dim": 4, "attention_hidden": (8,), "dnn_hidden": (8,)})
    values.update(kw)
    return TrainConfig(**values)


def test_resume_reaches_the_same_final_metrics_as_an_uninterrupted_run(data, tmp_path):
    straight = train(config(data, tmp_path / "straight"))

    interrupt_after_first_epoch(config(data, tmp_path / "resumed"))
    resumed = train(config(data, tmp_path / "resumed"), resume=True)
    assert resumed["test"] == straight["test"]
    assert resumed["best_epoch"] == straight["best_epoch"]
    lines = (tmp_path / "resumed" / "metrics.jsonl").read_text().splitlines()
    assert [json.loads(line)["epoch"] for line in lines] == [1, 2, 3]


def test_run_folder_has_safetensors_json_metrics_and_a_result_line(data, tmp_path):
    results_csv = tmp_path / "results.csv"
    train(config(data, tmp_path / "run", results_csv=str(results_csv)), command="lifelong train --test")
    run = tmp_path / "run"
    for name in ("config.json", "vocab.json", "metrics.jsonl", "results.json"):
        assert (run / name).exists(), name
    for checkpoint in ("best", "last"):
        files = sorted(p.name for p in (run / "checkpoints" / checkpoint).iterdir())
        assert all(f.endswith((".safetensors", ".json")) for f in files), files
    assert not list(run.rglob("*.tmp")) and not list(run.rglob("*.pt"))
    rows = list(csv.DictReader(results_csv.open()))
    assert len(rows) == 1 and rows[0]["command"] == "lifelong train --test" and rows[0]["model"] == "din"
    assert evaluate_run(run, "test") == json.loads((run / "results.json").read_text())["test"]


def test_early_stopping_stops_after_patience_epochs_without_improvement(data, tmp_path):
    # a learning rate this large makes validation AUC stop improving quickly
    results = train(config(data, tmp_path / "run", epochs=30, patience=1, lr=0.5))
    assert results["epochs_run"] == results["best_epoch"] + 1 < 30


def test_a_non_empty_run_folder_is_not_overwritten(data, tmp_path):
    (tmp_path / "run").mkdir()
    (tmp_path / "run" / "keep.txt").write_text("x")
    with pytest.raises(UserError, match="already exists"):
        train(config(data, tmp_path / "run"))
    with pytest.raises(UserError, match="not a training run lifelong wrote"):
        train(config(data, tmp_path / "run"), overwrite=True)
    assert (tmp_path / "run" / "keep.txt").read_text() == "x"


@pytest.mark.slow
def test_two_process_ddp_metrics_equal_a_single_process_evaluation(data, tmp_path):
    run = tmp_path / "ddp"
    torchrun = Path(sys.executable).parent / "torchrun"
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    command = [str(torchrun), "--standalone", "--nproc_per_node=2", "-m", "lifelong", "train", "--data", str(data),
               "--model", "din", "--out", str(run), "--epochs", "2", "--batch-size", "64", "--no-progress",
               "--set", "embedding_dim=4", "--set", "attention_hidden=[8]", "--set", "dnn_hidden=[8]"]
    done = subprocess.run(command, env=env, capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, done.stderr[-3000:]
    reported = json.loads((run / "results.json").read_text())
    for split in ("valid", "test"):
        single = evaluate_run(run, split)
        assert single["n"] == reported[split]["n"]
        for metric in ("auc", "gauc", "logloss"):
            assert abs(single[metric] - reported[split][metric]) < 1e-6, (split, metric)


def test_saved_test_predictions_give_the_reported_test_metrics(data, tmp_path):
    import numpy as np

    from lifelong.metrics import ctr_metrics

    results = train(config(data, tmp_path / "run", epochs=1, save_predictions=True))
    saved = np.load(tmp_path / "run" / "test_predictions.npz")
    assert saved["history_length"].max() <= 50 and saved["history_length"].min() >= 1
    assert ctr_metrics(saved["user"], saved["label"], saved["logit"]) == results["test"]


@pytest.mark.parametrize("model, options", [
    ("dien", {"embedding_dim": 4, "aux_hidden": (8,), "dnn_hidden": (8,)}),
    ("tin", {"embedding_dim": 4, "temporal_encoding": "both", "dnn_hidden": (8,)}),
    ("bst", {"embedding_dim": 4, "num_heads": 2, "dnn_hidden": (8,)}),
    ("diffumin", {"embedding_dim": 4, "channels": 2, "top_per_channel": 3, "short_length": 3, "dnn_hidden": (8,)}),
])
def test_new_ctr_models_train_and_resume_exactly_through_the_loop(data, tmp_path, model, options):
    """Sampled negatives (DIEN), timestamps (TIN) and diffusion noise (DiffuMIN) restart exactly on resume."""
    def make(out):
        return config(data, out, model=model, epochs=2, model_options=options)

    straight = train(make(tmp_path / "straight"))

    interrupt_after_first_epoch(make(tmp_path / "resumed"))
    assert train(make(tmp_path / "resumed"), resume=True)["test"] == straight["test"]


def test_reduce_on_plateau_decays_the_rate_every_lr_decay_patience_bad_epochs_and_resume_keeps_it(tmp_path):
    import torch

    from lifelong.train.checkpoint import load_checkpoint
    from lifelong.train.run import end_epoch

    model = torch.nn.Linear(2, 1)
    optimizer = torch.optim.Adam(model.parameters(), lr=1e-3)
    settings = TrainConfig(data="d", out=str(tmp_path), patience=4, lr_decay=0.5, lr_decay_patience=2)
    state = {"epoch": 0, "best": -1.0, "best_epoch": 0, "bad_epochs": 0, "done": False}
    trained_at, scores = [], [1.0, 0.5, 0.5, 0.5, 2.0, 1.0, 1.0, 3.0, 1.0, 1.0, 1.0, 1.0]
    for epoch, score in enumerate(scores, start=1):
        record = {"epoch": epoch}
        end_epoch(tmp_path, state, "best", score, {}, record, settings, model, {}, optimizer)
        trained_at.append(record["lr"])
        if state["done"]:
            break
    # bad epochs 2 and 3 (since epoch 1) halve the rate for epoch 4; a better epoch restarts the count;
    # epochs 6-7 halve it again; 4 bad epochs after epoch 8 stop the run (after two more halvings)
    assert trained_at == [1e-3, 1e-3, 1e-3, 5e-4, 5e-4, 5e-4, 5e-4, 2.5e-4, 2.5e-4, 2.5e-4, 1.25e-4, 1.25e-4]
    assert state["done"] and state["best_epoch"] == 8 and optimizer.param_groups[0]["lr"] == 6.25e-5
    logged = [json.loads(line)["lr"] for line in (tmp_path / "metrics.jsonl").read_text().splitlines()]
    assert logged == trained_at
    fresh = torch.optim.Adam(torch.nn.Linear(2, 1).parameters(), lr=1e-3)
    load_checkpoint(tmp_path / "checkpoints" / "last", torch.nn.Linear(2, 1), fresh)
    assert fresh.param_groups[0]["lr"] == 6.25e-5  # a resumed run trains on at the decayed rate

    constant = TrainConfig(data="d", out=str(tmp_path), patience=4)  # the default: a constant rate
    optimizer = torch.optim.Adam(model.parameters(), lr=1e-3)
    state = {"epoch": 0, "best": 5.0, "best_epoch": 0, "bad_epochs": 0, "done": False}
    for epoch in range(1, 4):
        end_epoch(tmp_path / "c", state, "best", 1.0, {}, {"epoch": epoch}, constant, model, {}, optimizer, main=False)
    assert optimizer.param_groups[0]["lr"] == 1e-3


@pytest.mark.parametrize("bad", [dict(lr_decay=0.0), dict(lr_decay=1.5), dict(lr_decay_patience=-1),
                                 dict(lr_decay=0.5, lr_decay_patience=3, refit_with_valid=True)])
def test_bad_reduce_on_plateau_settings_are_refused(bad):
    with pytest.raises(ValueError, match="lr_decay"):
        TrainConfig(data="d", out="o", **bad).validate()
