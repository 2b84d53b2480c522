"""configs/: one TOML per results row (benchmarks/make_configs.py). Every config parses, names a registered
model and known train and model options, and resolves to exactly the options of the command that made its
row; every row with a command has its config; one config trains (tiny data, epochs overridden)."""

from __future__ import annotations

import dataclasses
import json
import shlex
import subprocess
import sys
from pathlib import Path

import pytest
import typer
from typer.testing import CliRunner

from lifelong.api import parse_assignments, train_options
from lifelong.cli import app
from lifelong.models import MODELS, config_from_dict
from lifelong.train import TrainConfig

ROOT = Path(__file__).resolve().parents[1]
CONFIGS = ROOT / "configs"
RESULTS = ROOT / "docs" / "results"
TOMLS = sorted(CONFIGS.rglob("*.toml"))
INDEX = json.loads((CONFIGS / "index.json").read_text())
# Where a run goes and how it reports: a config sets its own (or leaves them to the command line).
PLACE = {"data", "out", "progress", "results_csv"}


def test_there_is_a_config_per_table():
    assert len(TOMLS) > 100
    assert {p.parent.name for p in TOMLS} >= {"ctr_table", "long_table", "mi_table", "seq_table", "features_table"}


@pytest.mark.parametrize("path", TOMLS, ids=lambda p: str(p.relative_to(CONFIGS)))
def test_every_config_parses_to_a_registered_model_and_known_options(path):
    values = train_options(path)  # unknown train options are a UserError naming the file
    config = TrainConfig.from_dict(values)
    assert config.model in MODELS, f"{path}: model {config.model!r} is not registered"
    assert config.data.startswith("runs/data/") and config.out.startswith("runs/configs/")
    model = config_from_dict({"model_type": config.model, "n_items": 100, "n_cates": 10, **config.model_options})
    assert model.model_type == config.model  # unknown or ill-typed model options raise above
    assert f"lifelong train --config {path.relative_to(ROOT).as_posix()}" in path.read_text()
    assert "lifelong prepare" in path.read_text()  # how to make its dataset


def _command_options(command: str) -> dict:
    """The train options a results row's command gives, by the CLI's own parser (defaults filled in)."""
    click_command = typer.main.get_command(app).commands["train"]
    context = click_command.make_context("train", shlex.split(command)[2:])
    given = {k: v for k, v in context.params.items()
             if context.get_parameter_source(k).name == "COMMANDLINE"}
    model_options = parse_assignments(given.pop("set", []), "--set")  # JSON values, else strings (as the CLI)
    given = {k: v for k, v in given.items() if k not in PLACE and v is not None and v is not False}
    return dataclasses.asdict(TrainConfig.from_dict({**given, "model_options": model_options}))


def _rows():
    for path in sorted(RESULTS.glob("*.json")):
        rows = json.loads(path.read_text())
        if not isinstance(rows, list):
            continue
        for row in rows:
            if isinstance(row, dict) and row.get("command", "").startswith("lifelong train"):
                yield path.stem, row


ROWS = list(_rows())


def test_every_results_row_with_a_command_has_its_config_and_they_agree():
    assert len(ROWS) > 300
    index = {(r["table"], r["dataset"], r["spec"], r["seed"]): r for r in INDEX}
    missing, differ = [], []
    for table, row in ROWS:
        key = (table, row.get("dataset") or row.get("table"), row.get("spec") or row.get("row"), str(row["seed"]))
        entry = index.get(key)
        if entry is None:
            missing.append(key)
            continue
        words = shlex.split(entry["command"])
        assert words[:4] == ["lifelong", "train", "--config", entry["config"]]
        seed = int(words[words.index("--seed") + 1]) if "--seed" in words else None
        rebuilt = dataclasses.asdict(TrainConfig.from_dict(train_options(ROOT / entry["config"], seed=seed)))
        expected = _command_options(row["command"])
        different = {k for k in expected if k not in PLACE and rebuilt[k] != expected[k]}
        if different:
            differ.append((key, {k: (rebuilt[k], expected[k]) for k in different}))
    assert not missing, f"rows without a config (run benchmarks/make_configs.py): {missing[:5]}"
    assert not differ, f"configs that do not rebuild their row: {differ[:3]}"


def test_the_configs_are_what_the_results_give():
    done = subprocess.run([sys.executable, str(ROOT / "benchmarks" / "make_configs.py"), "--check"],
                          capture_output=True, text=True, cwd=ROOT, timeout=120)
    assert done.returncode == 0, done.stdout + done.stderr


def test_a_config_with_an_unknown_option_is_refused_naming_the_file(tmp_path):
    bad = tmp_path / "bad.toml"
    bad.write_text('model = "din"\nepochz = 3\n')
    result = CliRunner().invoke(app, ["train", "--config", str(bad), "--data", str(tmp_path), "--out",
                                      str(tmp_path / "run")])
    assert result.exit_code == 2 and "epochz" in result.output and "bad.toml" in result.output
    assert "Traceback" not in result.output


def test_one_config_trains_with_epochs_overridden(tmp_path):
    """configs/ctr_table/ml100k-sumpool.toml on a tiny prepared log: the command line overrides its data,
    out and epochs; everything else (lr, batch size, L, model options, seed) is the config's."""
    from helpers import random_log
    from lifelong.data.schema import EventLog
    from lifelong.pipeline import ProtocolOptions, prepare

    events, items = random_log(n_users=40, seed=3)
    data = prepare(EventLog(events=events, items=items, sources=[], rejected=None, recipe="test"),
                   tmp_path / "data", ProtocolOptions(name="ctr-din"))
    config = CONFIGS / "ctr_table" / "ml100k-sumpool.toml"
    result = CliRunner().invoke(app, ["train", "--config", str(config), "--data", str(data), "--out",
                                      str(tmp_path / "run"), "--epochs", "1", "--no-progress"])
    assert result.exit_code == 0, result.output
    saved = json.loads((tmp_path / "run" / "config.json").read_text())
    file = train_options(config)
    assert saved["train"]["epochs"] == 1 and saved["train"]["lr"] == file["lr"] == 0.003
    assert saved["train"]["batch_size"] == file["batch_size"] and saved["model"]["l2_mba"] == 0.1
    assert json.loads((tmp_path / "run" / "results.json").read_text())["best_epoch"] == 1
