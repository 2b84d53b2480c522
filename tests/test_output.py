"""Readable output everywhere: plain, unwrapped lines without a terminal (one per epoch, none over 120
characters, tables with their headers in full), --json on evaluate and models (stdout holds the JSON
alone), --version, a progress bar with an ETA in a terminal, and a model listing that needs no torch."""

from __future__ import annotations

import io
import json
import os
import re
import subprocess
import sys
from pathlib import Path

import pytest

import lifelong
from lifelong import catalog as catalog_module
from lifelong.display import plain_table, print_table

from helpers import random_log

ROOT = Path(__file__).resolve().parents[1]


def cli(*args, cwd=None, env=None) -> subprocess.CompletedProcess:
    """``lifelong ARGS`` in a subprocess, stdout and stderr pipes (not a terminal)."""
    environment = {**os.environ, "OMP_NUM_THREADS": "1", **(env or {})}
    for name in ("FORCE_COLOR", "TTY_COMPATIBLE", "COLUMNS"):
        environment.pop(name, None)
    return subprocess.run([sys.executable, "-m", "lifelong", *map(str, args)], capture_output=True, text=True,
                          cwd=cwd, env=environment, timeout=600)


def write_log(path: Path, n_users: int = 60) -> None:
    events, _ = random_log(n_users=n_users, max_events=15, seed=5)
    lines = ["uid,iid,ts"] + [f"{u},{i},{t}" for u, i, t in events.select("user_id", "item_id", "timestamp").iter_rows()]
    path.write_text("\n".join(lines) + "\n")


COLUMNS = ["--column", "user_id=uid", "--column", "item_id=iid", "--column", "timestamp=ts"]
ANSI = re.compile(r"\x1b\[")


def check_plain(text: str) -> list[str]:
    lines = text.splitlines()
    assert not ANSI.search(text), "escape codes in the output of a pipe"
    assert "…" not in text, "a truncated cell or header"
    too_long = [line for line in lines if len(line) > 120]
    assert not too_long, f"lines over 120 characters: {too_long}"
    return lines


def test_version_prints_the_package_version():
    done = cli("--version")
    assert done.returncode == 0 and done.stdout.strip() == f"lifelong {lifelong.__version__}"


def test_train_without_a_terminal_writes_one_plain_line_per_epoch_and_evaluate_json_parses(tmp_path):
    write_log(tmp_path / "log.csv")
    for protocol in ("ctr-din", "mi-split"):
        done = cli("prepare", "--recipe", "csv", "--input", tmp_path / "log.csv", "--out", tmp_path / protocol,
                   "--protocol", protocol, *COLUMNS)
        assert done.returncode == 0, done.stderr
        check_plain(done.stdout + done.stderr)
    runs = {"din": ("ctr-din", ["--set", "embedding_dim=4"]),
            "youtube_dnn": ("mi-split", ["--set", "embedding_dim=8", "--set", "negatives=10"])}
    for model, (protocol, options) in runs.items():
        done = cli("train", "--data", tmp_path / protocol, "--model", model, "--out", tmp_path / model, "--epochs", 3,
                   "--patience", 5, "--batch-size", 64, "--threads", 1, *options)
        assert done.returncode == 0, done.stderr
        check_plain(done.stdout + done.stderr)
        epochs = [line for line in done.stderr.splitlines() if line.startswith("epoch ")]
        assert [line.split(":")[0] for line in epochs] == ["epoch 1", "epoch 2", "epoch 3"], done.stderr
        assert all("valid" in line for line in epochs)
        header = {"din": "GAUC", "youtube_dnn": "hitrate@50"}[model]  # the widest header, in full
        assert re.search(rf"(^|\s){re.escape(header)}(\s|$)", done.stdout, re.M), done.stdout

        evaluated = cli("evaluate", tmp_path / model, "--json")
        assert evaluated.returncode == 0, evaluated.stderr
        metrics = json.loads(evaluated.stdout)  # stdout holds the JSON and nothing else
        assert metrics["n"] > 0 and ("auc" in metrics or "recall@50" in metrics)
        assert "wrote" not in evaluated.stdout

        shown = cli("evaluate", tmp_path / model)
        assert shown.returncode == 0 and "split" in shown.stdout and "{" not in shown.stdout
        check_plain(shown.stdout + shown.stderr)
        assert "eval_test.json" in shown.stderr


def test_models_json_parses_and_names_task_and_protocols_of_every_model():
    done = cli("models", "--json")
    assert done.returncode == 0, done.stderr
    listing = json.loads(done.stdout)
    from lifelong.models import MODELS
    from lifelong.protocols import TASK_PROTOCOLS

    assert [m["model_type"] for m in listing] == sorted(MODELS)
    for entry in listing:
        task = MODELS[entry["model_type"]][0].task
        assert entry["task"] == task and entry["protocols"] == list(TASK_PROTOCOLS[task])
        assert entry["summary"] and "embedding_dim" in entry["options"]
    plain = cli("models")
    lines = check_plain(plain.stdout)
    assert any(line.startswith("din  [ctr: ctr-din") for line in lines)
    assert any(line.startswith("sasrec  [retrieval: seq-loo, mi-split]") for line in lines)


def test_the_generated_catalogue_is_the_registry():
    from lifelong import _catalog

    assert _catalog.MODELS == catalog_module.build_catalog(), \
        "src/lifelong/_catalog.py is stale: run `python -m lifelong.catalog`"
    assert _catalog.SOURCE_HASH == catalog_module.source_hash(), \
        "the model sources changed since src/lifelong/_catalog.py: run `python -m lifelong.catalog`"


def test_listing_the_models_imports_no_torch(tmp_path):
    code = ("import sys; from lifelong.cli import main; sys.argv = ['lifelong', 'models', '--json']\n"
            "try:\n    main()\nexcept SystemExit:\n    pass\n"
            "print('TORCH' if 'torch' in sys.modules else 'NO-TORCH', file=sys.stderr)")
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120,
                          env={**os.environ, "LIFELONG_CACHE": str(tmp_path)})
    assert done.returncode == 0, done.stderr
    assert done.stderr.strip().endswith("NO-TORCH"), "lifelong models imported torch: the catalogue is stale"
    assert json.loads(done.stdout)


def test_an_edited_model_source_is_listed_from_the_registry_once_then_from_the_cache(tmp_path, monkeypatch):
    from lifelong import _catalog

    monkeypatch.setenv("LIFELONG_CACHE", str(tmp_path))
    monkeypatch.setattr(_catalog, "SOURCE_HASH", "an older source")
    built = catalog_module.catalog()
    assert built == catalog_module.build_catalog()
    assert len(list(tmp_path.glob("catalog-*.json"))) == 1

    def no_registry():
        raise AssertionError("built again")

    monkeypatch.setattr(catalog_module, "build_catalog", no_registry)
    assert catalog_module.catalog() == built


def test_a_table_without_a_terminal_keeps_every_header_in_full():
    columns = ("split", "recall@20", "ndcg@20", "hitrate@20", "recall@50", "ndcg@50", "hitrate@50", "users")
    rows = [("test", *["0.1234"] * 6, "1,234")]
    out = io.StringIO()
    print_table("a title", columns, rows, file=out)
    lines = out.getvalue().splitlines()
    assert lines[0] == "a title" and lines[1].split() == list(columns) and lines[2].split()[0] == "test"
    assert out.getvalue() == plain_table("a title", columns, rows) + "\n"


class FakeTerminal(io.StringIO):
    def isatty(self):
        return True


@pytest.mark.parametrize("width, boxed", [(200, True), (50, False)])
def test_a_table_in_a_terminal_is_boxed_only_when_it_fits(monkeypatch, width, boxed):
    monkeypatch.setenv("COLUMNS", str(width))
    monkeypatch.setenv("TERM", "xterm")
    out = FakeTerminal()
    columns = ("split", "recall@20", "ndcg@20", "hitrate@20", "recall@50", "ndcg@50", "hitrate@50", "users")
    print_table(None, columns, [("test", *["0.1234"] * 6, "1,234")], file=out)
    text = out.getvalue()
    assert ("┃" in text) == boxed and "…" not in text and "hitrate@50" in text


def test_progress_in_a_terminal_shows_an_eta_and_nothing_without_one(monkeypatch):
    from rich.progress import TimeRemainingColumn

    from lifelong.train.run import _progress

    monkeypatch.delenv("FORCE_COLOR", raising=False)
    monkeypatch.delenv("TTY_COMPATIBLE", raising=False)
    monkeypatch.setattr(sys, "stderr", io.StringIO())
    with _progress(True, "epoch 1", 100) as advance:
        advance(10)
    assert sys.stderr.getvalue() == ""  # a pipe: no bar at all

    monkeypatch.setenv("FORCE_COLOR", "1")  # rich's own switch: treat the stream as a terminal
    bar = _progress(True, "epoch 1", 100)
    with bar as advance:
        advance(50)
        assert any(isinstance(c, TimeRemainingColumn) for c in bar.bar.columns)
    assert _progress(False, "epoch 1", 100).__enter__(), "disabled: a no-op advance"
