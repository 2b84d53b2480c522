"""Trust at the boundary: the real CLI (a subprocess, as a user runs it) on small files each test writes.

Every case asserts the exit code, that the message names the file / option it is about, that no
traceback reached the user, and that nothing outside lifelong's own output was touched (the input's
checksum and its sibling files). Data-side cases (bad input files) are in test_user_errors_data.py.
"""

from __future__ import annotations

import hashlib
import json
import os
import random
import shutil
import signal
import subprocess
import sys
from pathlib import Path

import pytest

from lifelong.outputs import TMP_MARKER

COLUMNS = ["--column", "user_id=user_id", "--column", "item_id=item_id", "--column", "timestamp=timestamp"]


def cli(*args, cwd: Path, env: dict | None = None, prefix: tuple[str, ...] = ()) -> subprocess.CompletedProcess:
    """``lifelong ARGS`` in a subprocess; output and exit code as a user sees them."""
    command = [*prefix, sys.executable, "-m", "lifelong", *map(str, args)]
    environment = {key: value for key, value in os.environ.items() if key != "LIFELONG_DEBUG"}
    environment.update(COLUMNS="200", **(env or {}))
    return subprocess.run(command, cwd=cwd, capture_output=True, text=True, env=environment, timeout=300)


def said(result: subprocess.CompletedProcess) -> str:
    return " ".join((result.stdout + result.stderr).split())


def refused(result: subprocess.CompletedProcess, *names: str) -> str:
    """Assert a refusal as the issue defines it: exit 2, one message naming each of ``names``, no traceback."""
    text = said(result)
    assert result.returncode == 2, text
    assert "Traceback" not in text, text
    assert "error:" in text, text
    for name in names:
        assert str(name) in text, f"{name!r} not in: {text}"
    return text


def fingerprint(folder: Path) -> dict[str, str]:
    """md5 of every file under ``folder`` (the things a refusal must leave alone)."""
    return {str(p.relative_to(folder)): hashlib.md5(p.read_bytes()).hexdigest()
            for p in sorted(folder.rglob("*")) if p.is_file()}


def write_log(path: Path, users: int = 40, events: int = 12, seed: int = 1) -> Path:
    rng = random.Random(seed)
    path.parent.mkdir(parents=True, exist_ok=True)
    lines = ["user_id,item_id,timestamp"] + [f"u{u},i{rng.randrange(60)},{1600000000 + k * 100}"
                                             for u in range(users) for k in range(events)]
    path.write_text("\n".join(lines) + "\n")
    return path


@pytest.fixture(scope="module")
def base(tmp_path_factory) -> Path:
    """A log, its P1 dataset (seed 2024), the same log prepared with seed 7, a P2 dataset, a 1-epoch DIN run."""
    root = tmp_path_factory.mktemp("trust")
    write_log(root / "in" / "log.csv")
    for name, extra in (("data", []), ("data7", ["--seed", "7"]), ("seq", ["--protocol", "seq-loo"])):
        result = cli("prepare", "--recipe", "csv", "--input", root / "in" / "log.csv", "--out", root / name,
                     *COLUMNS, *extra, cwd=root)
        assert result.returncode == 0, said(result)
    result = cli("train", "--data", root / "data", "--model", "din", "--out", root / "run", "--epochs", "1",
                 "--threads", "1", "--no-progress", "--set", "embedding_dim=4", cwd=root)
    assert result.returncode == 0, said(result)
    return root


@pytest.fixture
def work(base, tmp_path) -> Path:
    """A private copy of the base folder, so a test may break its files."""
    shutil.copytree(base, tmp_path / "w", symlinks=True)
    return tmp_path / "w"


# ----------------------------------------------------------------------------- 1. nothing outside lifelong's output


def test_prepare_overwrite_onto_the_inputs_folder_is_refused_and_keeps_both_files(tmp_path):
    log = write_log(tmp_path / "in" / "log.csv")
    (tmp_path / "in" / "notes.txt").write_text("keep me\n")
    before = fingerprint(tmp_path)
    text = refused(cli("prepare", "--recipe", "csv", "--input", log, "--out", tmp_path / "in", "--overwrite",
                       *COLUMNS, cwd=tmp_path), "--out", "the input", "log.csv")
    assert "choose another --out" in text
    assert fingerprint(tmp_path) == before
    # an ancestor of the input, given relatively
    refused(cli("prepare", "--recipe", "csv", "--input", log, "--out", ".", "--overwrite", *COLUMNS, cwd=tmp_path),
            "holds the input")
    # the input file itself
    refused(cli("prepare", "--recipe", "csv", "--input", log, "--out", log, "--overwrite", *COLUMNS, cwd=tmp_path),
            "is the input")
    assert fingerprint(tmp_path) == before
    assert sorted(p.name for p in tmp_path.iterdir()) == ["in"]


def test_overwrite_refuses_folders_lifelong_did_not_make(tmp_path):
    """A home-like folder (not lifelong's), and a dataset lifelong made that a user put a file into."""
    log = write_log(tmp_path / "in" / "log.csv")
    home = tmp_path / "home"
    home.mkdir()
    (home / ".bashrc").write_text("alias ll='ls -l'\n")
    (home / "manifest.json").write_text('{"mine": true}')  # a marker by name is not enough: it must be lifelong's
    before = fingerprint(tmp_path)
    refused(cli("prepare", "--recipe", "csv", "--input", log, "--out", home, "--overwrite", *COLUMNS, cwd=tmp_path),
            str(home), "not a prepared dataset lifelong wrote")
    assert fingerprint(tmp_path) == before

    data = tmp_path / "data"
    assert cli("prepare", "--recipe", "csv", "--input", log, "--out", data, *COLUMNS, cwd=tmp_path).returncode == 0
    (data / "my-notes.txt").write_text("results of Tuesday\n")
    before = fingerprint(tmp_path)
    refused(cli("prepare", "--recipe", "csv", "--input", log, "--out", data, "--overwrite", "--seed", "3", *COLUMNS,
                cwd=tmp_path), "my-notes.txt", "did not write")
    assert fingerprint(tmp_path) == before
    (data / "my-notes.txt").unlink()
    # lifelong's own dataset, holding nothing else: replaced
    result = cli("prepare", "--recipe", "csv", "--input", log, "--out", data, "--overwrite", "--seed", "3", *COLUMNS,
                 cwd=tmp_path)
    assert result.returncode == 0, said(result)
    assert json.loads((data / "manifest.json").read_text())["seed"] == 3
    assert sorted(p.name for p in tmp_path.iterdir()) == ["data", "home", "in"]  # no temporary left


def test_a_killed_prepare_leaves_a_temporary_that_the_next_run_removes_and_only_that(tmp_path):
    log = write_log(tmp_path / "in" / "log.csv")
    out = tmp_path / "data"
    # what a prepare killed with SIGKILL leaves: its marked temporary sibling
    killed = subprocess.run([sys.executable, "-c", (
        "import os, signal; from pathlib import Path; from lifelong.outputs import make_temporary;"
        f"t = make_temporary(Path({str(out)!r})); (t / 'events.parquet').write_bytes(b'half');"
        "os.kill(os.getpid(), signal.SIGKILL)")])
    assert killed.returncode == -signal.SIGKILL
    stale = [p for p in tmp_path.iterdir() if p.name.startswith(".data.tmp-")]
    assert len(stale) == 1 and (stale[0] / TMP_MARKER).exists()
    user_folder = tmp_path / ".data.tmp-1"  # same name pattern, but the user's: no marker
    user_folder.mkdir()
    (user_folder / "keep.txt").write_text("mine\n")
    result = cli("prepare", "--recipe", "csv", "--input", log, "--out", out, *COLUMNS, cwd=tmp_path)
    assert result.returncode == 0, said(result)
    assert not stale[0].exists()
    assert (user_folder / "keep.txt").read_text() == "mine\n"
    assert sorted(p.name for p in tmp_path.iterdir()) == [".data.tmp-1", "data", "in"]


def test_train_never_writes_into_its_dataset_or_over_a_folder_it_did_not_make(work):
    before = fingerprint(work / "data")
    refused(cli("train", "--data", work / "data", "--model", "din", "--out", work / "data", "--epochs", "1",
                "--overwrite", cwd=work), "is the input")
    refused(cli("train", "--data", work / "data", "--model", "din", "--out", work, "--epochs", "1", "--overwrite",
                cwd=work), "holds the input")
    assert fingerprint(work / "data") == before
    mine = work / "mine"
    mine.mkdir()
    (mine / "thesis.tex").write_text("\\begin{document}\n")
    refused(cli("train", "--data", work / "data", "--model", "din", "--out", mine, "--epochs", "1", "--overwrite",
                cwd=work), "not a training run lifelong wrote")
    assert (mine / "thesis.tex").exists()


def test_the_demo_replaces_only_its_own_folder(tmp_path):
    (tmp_path / "papers").mkdir()
    (tmp_path / "papers" / "din.pdf").write_bytes(b"%PDF")
    refused(cli("demo", "--out", tmp_path / "papers", "--users", "50", "--epochs", "1", cwd=tmp_path),
            "papers", "demo folder")
    assert (tmp_path / "papers" / "din.pdf").read_bytes() == b"%PDF"


# ------------------------------------------------------------------------------------------- 2. a run knows its data


def test_evaluate_refuses_a_re_prepared_or_other_dataset_naming_both_fingerprints(work):
    resolved = json.loads((work / "run" / "config.json").read_text())
    trained_on = resolved["dataset"]["fingerprint"]
    assert Path(resolved["dataset"]["path"]).is_absolute()  # the base fixture's dataset, trained from its folder
    other = json.loads((work / "data7" / "manifest.json").read_text())["fingerprint"]
    assert other != trained_on
    # another dataset through --data
    refused(cli("evaluate", work / "run", "--data", work / "data7", cwd=work), trained_on, other, "--data")
    # the same folder re-prepared with another seed (the run stores an absolute path: the base's data folder)
    data = Path(resolved["dataset"]["path"])
    local = work / "run-local"
    shutil.copytree(work / "run", local)
    config = json.loads((local / "config.json").read_text())
    config["dataset"]["path"] = str(work / "data")
    (local / "config.json").write_text(json.dumps(config))
    shutil.rmtree(work / "data")
    shutil.copytree(work / "data7", work / "data")
    refused(cli("evaluate", local, cwd=work), trained_on, other)
    assert not (local / "eval_test.json").exists()
    assert data.exists()


def test_evaluate_works_from_another_folder_and_after_a_move_with_data(work, tmp_path):
    elsewhere = tmp_path / "elsewhere"
    elsewhere.mkdir()
    run = work / "run-local"
    shutil.copytree(work / "run", run)
    config = json.loads((run / "config.json").read_text())
    config["dataset"]["path"] = str(work / "data")
    (run / "config.json").write_text(json.dumps(config))
    expected = json.loads((run / "results.json").read_text())["test"]
    result = cli("evaluate", run, cwd=elsewhere)
    assert result.returncode == 0, said(result)
    assert json.loads((run / "eval_test.json").read_text()) == expected
    # the dataset and the run both move: --data names the dataset's new place
    shutil.move(work / "data", tmp_path / "moved-data")
    shutil.move(run, tmp_path / "moved-run")
    refused(cli("evaluate", tmp_path / "moved-run", cwd=elsewhere), "--data", str(work / "data"))
    result = cli("evaluate", tmp_path / "moved-run", "--data", tmp_path / "moved-data", cwd=elsewhere)
    assert result.returncode == 0, said(result)
    assert json.loads((tmp_path / "moved-run" / "eval_test.json").read_text()) == expected


def test_resume_refuses_a_changed_dataset(work):
    run = work / "run-local"
    result = cli("train", "--data", work / "data", "--model", "din", "--out", run, "--epochs", "2", "--threads", "1",
                 "--no-progress", "--set", "embedding_dim=4", cwd=work)
    assert result.returncode == 0, said(result)
    before = fingerprint(run)
    shutil.rmtree(work / "data")
    shutil.copytree(work / "data7", work / "data")
    refused(cli("train", "--out", run, "--resume", cwd=work), "re-prepared")
    assert fingerprint(run) == before


@pytest.mark.parametrize(("model", "dataset", "wanted"), [("sasrec", "data", "seq-loo"), ("din", "seq", "ctr-din")])
def test_a_model_on_a_protocol_of_another_task_is_refused_before_training(work, model, dataset, wanted):
    text = refused(cli("train", "--data", work / dataset, "--model", model, "--out", work / "new", "--epochs", "1",
                       cwd=work), model, wanted)
    assert "protocol" in text
    assert not (work / "new").exists()  # refused before the run folder was made


# --------------------------------------------------------------------------------- 3. no traceback for a user error


def test_an_empty_or_truncated_safetensors_file_is_named(work):
    weights = work / "run" / "checkpoints" / "best" / "model.safetensors"
    data = weights.read_bytes()
    weights.write_bytes(b"")
    refused(cli("evaluate", work / "run", cwd=work), "model.safetensors", "empty")
    weights.write_bytes(data[: len(data) // 2])
    refused(cli("evaluate", work / "run", cwd=work), "model.safetensors", "not a readable safetensors file")


def test_a_config_json_that_is_not_json_is_named(work):
    (work / "run" / "config.json").write_text('{"train": {"data": ')
    refused(cli("evaluate", work / "run", cwd=work), str(work / "run" / "config.json"), "not valid JSON")
    refused(cli("train", "--out", work / "run", "--resume", cwd=work), str(work / "run" / "config.json"))


def test_a_checkpoint_config_that_is_not_json_is_named(work):
    best = work / "run" / "checkpoints" / "best" / "config.json"
    best.write_text("model_type = din\n")
    refused(cli("evaluate", work / "run", cwd=work), str(best), "not valid JSON", "line 1")


def test_a_checkpoint_whose_config_does_not_match_its_weights(work):
    best = work / "run" / "checkpoints" / "best" / "config.json"
    config = json.loads(best.read_text())
    config["embedding_dim"] = 8  # the weights are 4-dimensional
    best.write_text(json.dumps(config))
    refused(cli("evaluate", work / "run", cwd=work), "model.safetensors", "does not match", str(best))


def test_configs_with_missing_fields(work):
    best = work / "run" / "checkpoints" / "best" / "config.json"
    config = json.loads(best.read_text())
    del config["n_items"]
    best.write_text(json.dumps(config))
    refused(cli("evaluate", work / "run", cwd=work), str(best), "n_items")
    run_config = work / "run" / "config.json"
    resolved = json.loads(run_config.read_text())
    del resolved["train"]
    run_config.write_text(json.dumps(resolved))
    refused(cli("evaluate", work / "run", cwd=work), str(run_config), "lacks train")
    refused(cli("train", "--out", work / "run", "--resume", cwd=work), str(run_config), "lacks train")


def _read_only(folder: Path) -> tuple[str, ...]:
    """A prefix that runs the CLI with ``folder`` read-only: chmod for a user; for root (whom permissions
    do not stop), a read-only mount in a private mount namespace that ends with the command."""
    folder.mkdir(parents=True, exist_ok=True)
    if os.geteuid() != 0:
        folder.chmod(0o555)
        return ()
    return ("unshare", "--mount", "--propagation", "private", "sh", "-c",
            f'mount -t tmpfs -o ro,size=1m tmpfs "{folder}" && exec "$0" "$@"')


def test_a_read_only_output_folder_is_said_before_the_log_is_read(tmp_path):
    log = write_log(tmp_path / "in" / "log.csv")
    (tmp_path / "in" / "log.csv").write_text(log.read_text() + "u1,i1,not-a-time\n")  # a bad row the read would hit
    locked = tmp_path / "locked"
    prefix = _read_only(locked)
    result = cli("prepare", "--recipe", "csv", "--input", log, "--out", locked / "data", *COLUMNS, cwd=tmp_path,
                 prefix=prefix)
    text = refused(result, str(locked), "not writable")
    assert "not-a-time" not in text  # refused before the log was read
    result = cli("train", "--data", tmp_path / "nowhere", "--model", "din", "--out", locked / "run", cwd=tmp_path,
                 prefix=prefix)
    refused(result, "--data")


def test_an_output_path_that_is_a_file(work):
    (work / "taken").write_text("a file\n")
    refused(cli("prepare", "--recipe", "csv", "--input", work / "in" / "log.csv", "--out", work / "taken", *COLUMNS,
                "--overwrite", cwd=work), "taken", "is a file")
    refused(cli("train", "--data", work / "data", "--model", "din", "--out", work / "taken", "--epochs", "1",
                "--overwrite", cwd=work), "taken", "is a file")
    refused(cli("train", "--data", work / "data", "--model", "din", "--out", work / "taken" / "run", "--epochs", "1",
                cwd=work), "taken", "is a file")
    assert (work / "taken").read_text() == "a file\n"


def test_set_with_a_value_of_the_wrong_type(work):
    refused(cli("train", "--data", work / "data", "--model", "din", "--out", work / "new", "--set", "embedding_dim=abc",
                cwd=work), "embedding_dim", "integer", "'abc'")
    refused(cli("train", "--data", work / "data", "--model", "din", "--out", work / "new", "--set",
                "attention_hidden=[8, \"x\"]", cwd=work), "attention_hidden")
    assert not (work / "new").exists()


@pytest.mark.parametrize("suffix", ["toml", "yaml"])
def test_a_config_file_with_a_duplicate_key_is_named(work, suffix):
    text = "epochs = 1\nbatch_size = 32\nepochs = 2\n" if suffix == "toml" else "epochs: 1\nbatch_size: 32\nepochs: 2\n"
    config = work / f"options.{suffix}"
    config.write_text(text)
    refused(cli("train", "--data", work / "data", "--model", "din", "--out", work / "new", "--config", config,
                cwd=work), str(config), "line 3")


def test_index_param_with_a_misspelled_key_blames_only_that_key(work):
    text = refused(cli("evaluate", work / "run", "--index", "ivf", "--index-param", "nprob=4", "--index-param",
                       "nlist=8", cwd=work), "--index-param", "nprob")
    assert "unknown parameter nprob;" in text  # nlist, which is valid, is not blamed
    refused(cli("evaluate", work / "run", "--index", "ivf", "--index-param", "nlist=many", cwd=work), "nlist",
            "integer")


def test_debug_shows_the_traceback(work):
    for extra, env in ((["--debug"], None), ([], {"LIFELONG_DEBUG": "1"})):
        result = cli("evaluate", work / "run", "--data", work / "data7", *extra, cwd=work, env=env)
        assert result.returncode != 0
        assert "Traceback" in result.stdout + result.stderr
    result = cli("evaluate", work / "run", "--data", work / "data7", cwd=work)
    assert "--debug" in said(result) and "Traceback" not in said(result)


# ------------------------------------------------------------------------------------------------- 5. no dead ends


def _interrupted_before_first_checkpoint(work: Path) -> Path:
    """What a run killed during its first epoch leaves: config.json and vocab.json, no checkpoint."""
    run = work / "killed"
    run.mkdir()
    for name in ("config.json", "vocab.json"):
        shutil.copy(work / "run" / name, run / name)
    config = json.loads((run / "config.json").read_text())
    config["train"]["out"] = str(run)
    config["dataset"]["path"] = str(work / "data")
    (run / "config.json").write_text(json.dumps(config))
    return run


def test_a_run_killed_before_its_first_checkpoint_can_be_resumed_from_scratch_or_overwritten(work):
    run = _interrupted_before_first_checkpoint(work)
    text = refused(cli("train", "--data", work / "data", "--model", "din", "--out", run, "--epochs", "1", cwd=work),
                   "before its first checkpoint", "--resume", "--overwrite")
    result = cli("train", "--out", run, "--resume", "--no-progress", cwd=work)
    assert result.returncode == 0, said(result)
    assert "no checkpoint yet" in said(result) and "epoch 1" in said(result)
    assert (run / "results.json").exists()
    shutil.rmtree(run)
    run = _interrupted_before_first_checkpoint(work)
    result = cli("train", "--data", work / "data", "--model", "din", "--out", run, "--epochs", "1", "--threads", "1",
                 "--no-progress", "--overwrite", "--set", "embedding_dim=4", cwd=work)
    assert result.returncode == 0, said(result)
    assert json.loads((run / "config.json").read_text())["format"] == "lifelong-run/1"
    assert "already holds a training run" in text


# --------------------------------------------------------------------------------------- 4. messages that tell the truth


def test_a_positive_behavior_that_never_occurs_is_refused_not_ignored(tmp_path):
    rng = random.Random(3)
    lines = ["user_id,item_id,timestamp,behavior"] + [
        f"u{u},i{rng.randrange(40)},{1600000000 + 100 * (k * 30 + u)},{rng.choice(['pv', 'buy'])}"
        for u in range(30) for k in range(10)]
    (tmp_path / "log.csv").write_text("\n".join(lines) + "\n")
    before = fingerprint(tmp_path)
    text = refused(cli("prepare", "--recipe", "csv", "--input", tmp_path / "log.csv", "--out", tmp_path / "data",
                       "--protocol", "ctr-time", "--positive-behaviors", "buy,biy", *COLUMNS, "--column",
                       "behavior=behavior", cwd=tmp_path), "--positive-behaviors", "'biy'", "'pv'")
    assert "'buy'" not in text.split("never occur")[0]  # only the misspelt name is blamed
    assert fingerprint(tmp_path) == before and sorted(p.name for p in tmp_path.iterdir()) == ["log.csv"]


def test_only_lifelong_s_own_value_errors_are_messages_a_library_s_is_a_bug():
    """A ValueError raised by a lifelong check is the user's (a message); one raised inside a library
    (numpy here) is an internal bug and keeps its traceback."""
    import numpy as np

    from lifelong.cli import _users_mistake
    from lifelong.models import config_from_dict

    try:
        config_from_dict({"model_type": "din", "embedding_dim": "abc"})
    except ValueError as error:
        assert _users_mistake(error)
    try:
        np.ones(3).reshape(2, 2)
    except ValueError as error:
        assert not _users_mistake(error)
    assert _users_mistake(FileNotFoundError(2, "No such file or directory", "x.csv"))
    assert not _users_mistake(KeyError("n_items"))


def test_a_table_script_claims_only_its_own_workdir(tmp_path):
    """benchmarks/*_table.py write table.md/json, datasets and runs into --workdir: never into a folder
    of the user's files (the same rule as --overwrite)."""
    from lifelong.errors import UserError
    from lifelong.outputs import claim_workdir

    mine = tmp_path / "thesis"
    mine.mkdir()
    (mine / "table.md").write_text("my table\n")
    (mine / "chapter1.tex").write_text("\\chapter{}\n")
    with pytest.raises(UserError, match="chapter1.tex"):
        claim_workdir(mine, "seq_table")
    assert (mine / "table.md").read_text() == "my table\n" and not (mine / "lifelong-table.json").exists()
    fresh = claim_workdir(tmp_path / "new" / "work", "seq_table")
    assert json.loads((fresh / "lifelong-table.json").read_text())["format"] == "lifelong-table/1"
    (fresh / "notes.txt").write_text("a note in a claimed folder is fine: it is never deleted\n")
    assert claim_workdir(fresh, "seq_table") == fresh
    script = subprocess.run([sys.executable, str(Path(__file__).parents[1] / "benchmarks" / "seq_table.py"),
                             "--workdir", str(mine), "--report-only"], capture_output=True, text=True, timeout=120)
    assert script.returncode != 0 and "chapter1.tex" in script.stderr and "Traceback" not in script.stderr
