"""The Python API (lifelong.api): docs/python.md's examples run as written; the CLI commands are thin
wrappers over the same functions; ``import lifelong`` loads neither torch nor polars."""

from __future__ import annotations

import os
import re
import subprocess
import sys
import time
from pathlib import Path

import pytest
from typer.testing import CliRunner

import lifelong
from lifelong import api
from lifelong.cli import app

ROOT = Path(__file__).resolve().parents[1]
PAGE = ROOT / "docs" / "python.md"


def python_blocks(text: str) -> list[str]:
    return re.findall(r"^```python\n(.*?)^```", text, re.S | re.M)


def test_the_python_page_runs_in_order_on_a_tiny_dataset(tmp_path, monkeypatch):
    blocks = python_blocks(PAGE.read_text())
    assert len(blocks) >= 6
    calls = {name for block in blocks for name in re.findall(r"lifelong\.(\w+)\(", block)}
    assert {"prepare", "train", "evaluate", "load", "available_models"} <= calls
    assert ".rank(" in PAGE.read_text() and ".retrieve(" in PAGE.read_text()
    monkeypatch.chdir(tmp_path)
    namespace: dict = {"__name__": "docs_python_md"}
    started = time.perf_counter()
    for number, block in enumerate(blocks, 1):
        exec(compile(block, f"docs/python.md (python block {number})", "exec"), namespace)
    assert time.perf_counter() - started < 60
    assert (tmp_path / "runs" / "din" / "results.json").exists()
    assert (tmp_path / "runs" / "sasrec" / "results.json").exists()


def _recorder(calls: list, result):
    def record(*args, **kwargs):
        calls.append((args, kwargs))
        return result

    return record


def test_the_commands_call_the_api_functions(tmp_path, monkeypatch):
    """prepare, train and evaluate parse their options and hand them to lifelong.api's functions."""
    runner = CliRunner()
    calls: dict[str, list] = {"prepare": [], "train": [], "evaluate": []}
    (tmp_path / "d").mkdir()
    (tmp_path / "d" / "manifest.json").write_text(
        '{"rejected_rows": 0, "n_events": 1, "n_users": 1, "n_items": 1, "n_categories": 0, "samples": {}}')
    monkeypatch.setattr(api, "prepare", _recorder(calls["prepare"], tmp_path / "d"))
    monkeypatch.setattr(api, "train", _recorder(calls["train"], {
        "model": "din", "run": "r", "best_epoch": 1, "valid": {"auc": 0.5, "gauc": 0.5, "logloss": 0.7, "n": 2}}))
    monkeypatch.setattr(api, "evaluate", _recorder(calls["evaluate"], {"auc": 0.5, "gauc": 0.5, "logloss": 0.7,
                                                                       "n": 2}))

    result = runner.invoke(app, ["prepare", "--recipe", "csv", "--input", "log.csv", "--out", str(tmp_path / "d"),
                                 "--column", "user_id=uid", "--protocol", "seq-loo", "--positive-behaviors", "buy"])
    assert result.exit_code == 0, result.output
    (args, kwargs), = calls["prepare"]
    assert args == ("csv", Path("log.csv"), tmp_path / "d")
    assert kwargs["columns"] == {"user_id": "uid"} and kwargs["protocol"] == "seq-loo"
    assert kwargs["positive_behaviors"] == "buy"

    line = ["train", "--data", "d", "--model", "din", "--out", "r", "--epochs", "3", "--set", "embedding_dim=8",
            "--no-progress", "--save-predictions"]
    monkeypatch.setattr(sys, "argv", ["/usr/bin/lifelong", *line])  # the command line the run records
    result = runner.invoke(app, line)
    assert result.exit_code == 0, result.output
    (args, kwargs), = calls["train"]
    assert args == ("d", "din", "r") and kwargs["epochs"] == 3 and kwargs["progress"] is False
    assert kwargs["model_options"] == {"embedding_dim": 8} and kwargs["save_predictions"] is True
    assert kwargs["command"] == "lifelong " + " ".join(line)

    result = runner.invoke(app, ["evaluate", "r", "--split", "valid", "--json"])
    assert result.exit_code == 0, result.output
    (args, kwargs), = calls["evaluate"]
    assert args == (Path("r"), "valid")


def test_importing_lifelong_loads_neither_torch_nor_polars():
    code = ("import sys, lifelong; f = lifelong.prepare, lifelong.train, lifelong.evaluate, lifelong.load; "
            "print(sorted(m for m in ('torch', 'polars') if m in sys.modules))")
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=60,
                          env={**os.environ, "PYTHONPATH": str(ROOT / "src")})
    assert done.returncode == 0, done.stderr
    assert done.stdout.strip() == "[]"


def test_lifelong_train_stays_the_function_after_its_package_is_imported(monkeypatch):
    import lifelong.train.run  # noqa: F401  (binds the subpackage to lifelong.train)

    calls = []
    monkeypatch.setattr(api, "train", _recorder(calls, {"ok": True}))
    assert lifelong.train("d", "din", "r", epochs=1) == {"ok": True}
    assert calls == [(("d", "din", "r"), {"epochs": 1})]
    assert lifelong.train.TrainConfig is lifelong.train.run.TrainConfig  # still the package too


def test_api_mistakes_are_messages(tmp_path):
    with pytest.raises(ValueError, match="on_bad_rows"):
        lifelong.prepare("csv", tmp_path / "log.csv", tmp_path / "d", on_bad_rows="ignore")
    with pytest.raises(ValueError, match="unknown option.*epochz"):
        lifelong.train(tmp_path, "din", tmp_path / "r", config={"epochz": 1})
    with pytest.raises(ValueError, match="--split"):
        lifelong.evaluate(tmp_path, "dev")
    with pytest.raises(ValueError, match="neither a run folder"):
        lifelong.load(tmp_path)
