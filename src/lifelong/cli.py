"""``lifelong``: prepare | train | evaluate | demo | models.

A thin layer: parse options (command line over an optional TOML/YAML config file), call the stages.
"""

from __future__ import annotations

import contextlib
import json
import os
import shlex
import sys
import tomllib
import warnings
from pathlib import Path
from typing import Any, Optional

import typer
import yaml
from rich.console import Console
from rich.markup import escape
from rich.table import Table

from lifelong.errors import UserError

app = typer.Typer(add_completion=False, no_args_is_help=True,
                  help="User-interest modeling for recommender systems: prepare logs, train, evaluate.")
console = Console()
errors = Console(stderr=True)


class _UniqueKeyLoader(yaml.SafeLoader):
    """YAML's safe loader, but a key given twice in one mapping is an error (as in TOML)."""

    def construct_mapping(self, node, deep=False):
        seen = set()
        for key_node, _ in node.value:
            key = self.construct_object(key_node, deep=deep)
            if key in seen:
                raise yaml.constructor.ConstructorError(None, None, f"duplicate key {key!r}", key_node.start_mark)
            seen.add(key)
        return super().construct_mapping(node, deep)


def read_config_file(path: Optional[Path]) -> dict[str, Any]:
    """Options from a TOML (.toml) or YAML (.yaml/.yml) file; empty without a file. A file that does not
    parse (a duplicate key included) is a :class:`UserError` naming the file and the line."""
    if path is None:
        return {}
    if not path.is_file():
        raise UserError(f"--config {path} {'is a folder' if path.is_dir() else 'does not exist'}; "
                        f"pass a TOML or YAML file of options")
    try:
        text = path.read_text()
    except (OSError, UnicodeDecodeError) as error:
        raise UserError(f"--config {path} cannot be read as text ({error})") from None
    try:
        values = tomllib.loads(text) if path.suffix == ".toml" else yaml.load(text, Loader=_UniqueKeyLoader)
    except tomllib.TOMLDecodeError as error:
        raise UserError(f"--config {path} is not valid TOML: {error}") from None
    except yaml.YAMLError as error:
        mark = getattr(error, "problem_mark", None)
        where = f" (line {mark.line + 1}, column {mark.column + 1})" if mark is not None else ""
        raise UserError(f"--config {path} is not valid YAML{where}: {getattr(error, 'problem', None) or error}") from None
    if not isinstance(values, dict):
        raise UserError(f"--config {path} must hold a table of options (key = value lines)")
    return {key.replace("-", "_"): value for key, value in values.items()}


def parse_assignments(pairs: list[str], what: str) -> dict[str, Any]:
    """``key=value`` pairs; values parsed as JSON when they can be (numbers, lists, booleans)."""
    out: dict[str, Any] = {}
    for pair in pairs:
        if "=" not in pair:
            raise UserError(f"{what} expects key=value, got {pair!r}")
        key, value = pair.split("=", 1)
        try:
            out[key.strip()] = json.loads(value)
        except json.JSONDecodeError:
            out[key.strip()] = value
    return out


# What a user can cause, shown as a message and exit code 2: a UserError (BadRowError included), an OSError
# of the file system (a missing file, no permission, a full disk), and a ValueError raised by lifelong's own
# checks. A ValueError from inside a library (numpy, torch, polars) is a bug: it keeps its traceback.
PACKAGE = Path(__file__).resolve().parent


def _users_mistake(error: BaseException) -> bool:
    if isinstance(error, (UserError, OSError)):
        return True
    if not isinstance(error, ValueError):
        return False
    frame = error.__traceback__
    while frame is not None and frame.tb_next is not None:
        frame = frame.tb_next
    return frame is not None and Path(frame.tb_frame.f_code.co_filename).resolve().is_relative_to(PACKAGE)


DEBUG_VARIABLE = "LIFELONG_DEBUG"
_state = {"debug": False}


def _debug() -> bool:
    return _state["debug"] or os.environ.get(DEBUG_VARIABLE, "") not in ("", "0", "false", "no")


def _message(error: BaseException) -> str:
    if isinstance(error, OSError) and not isinstance(error, UserError) and error.strerror:
        where = f"{error.filename}: " if error.filename else ""
        return f"{where}{error.strerror}"
    text = str(error).strip() or type(error).__name__
    return text if len(text) <= 2000 else text[:2000] + " ..."


def _fail(error: BaseException) -> None:
    errors.print(f"[bold red]error:[/] {escape(_message(error))}", markup=True, highlight=False, soft_wrap=True)
    errors.print(f"(run with --debug or {DEBUG_VARIABLE}=1 to see the traceback)", style="dim", highlight=False,
                 soft_wrap=True)
    raise typer.Exit(2)


@contextlib.contextmanager
def user_errors():
    """Turn a user's mistake into a message and exit code 2 (``--debug``: the traceback); show warnings
    (a missing side file, skipped rows) as one line each."""
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("default")
        warnings.simplefilter("always", UserWarning)  # one line per warning (BadRowsSkippedWarning: per file)
        try:
            yield
        except (ValueError, OSError) as error:
            _show_warnings(caught)
            if _debug() or not _users_mistake(error):
                raise
            _fail(error)
    _show_warnings(caught)


def _show_warnings(caught: list) -> None:
    from lifelong.data import BadRowsSkippedWarning

    for warning in caught:
        if issubclass(warning.category, BadRowsSkippedWarning):
            errors.print(escape(str(warning.message)), highlight=False, soft_wrap=True)
        elif issubclass(warning.category, UserWarning) and not _from_library(warning.filename):
            errors.print(f"[yellow]warning:[/] {escape(str(warning.message))}", highlight=False, soft_wrap=True)
        else:  # a library's own warning: as Python shows it
            warnings.showwarning(warning.message, warning.category, warning.filename, warning.lineno)


def _from_library(filename: str) -> bool:
    return not Path(filename).resolve().is_relative_to(PACKAGE)


@app.callback()
def _options(debug: bool = typer.Option(False, "--debug", help=f"show the traceback of an error (also "
                                        f"{DEBUG_VARIABLE}=1); errors are otherwise one message and exit code 2")) -> None:
    _state["debug"] = debug


@app.command()
def prepare(
    recipe: str = typer.Option(..., help="amazon-s3rec | amazon-reviews | movielens | taobao-userbehavior | csv | "
                                         "synthetic-lifelong (--input: a TOML/JSON spec or a written folder)"),
    input: Path = typer.Option(..., "--input", help="the raw file or folder"),
    out: Path = typer.Option(..., help="the prepared dataset folder to create"),
    protocol: str = typer.Option("ctr-din", help="ctr-din (P1), seq-loo (P2), mi-split (P3), ctr-time (P4) or "
                                                 "ctr-long (P5)"),
    seed: int = typer.Option(2024, help="negative sampling seed (P3: the user split's seed)"),
    on_bad_rows: str = typer.Option("error", help="error: stop at the first bad row; skip: skip and write rejected.csv"),
    column: list[str] = typer.Option([], help="csv recipe: lifelong_name=source_column, repeatable"),
    timestamp_unit: str = typer.Option("s", help="the timestamps' unit: s, ms, us or ns (unix time), or iso "
                                                 "(ISO-8601 dates/datetimes such as 2020-01-31 or "
                                                 "2020-01-31T12:00:00Z; without an offset: UTC)"),
    max_id_bytes: int = typer.Option(256, help="user and item ids longer than this many bytes are bad rows"),
    max_train_per_user: Optional[int] = typer.Option(None, help="P1: keep each user's most recent N training targets"),
    t_valid: Optional[int] = typer.Option(None, help="P4: validation cut (unix seconds); default the 80% quantile"),
    t_test: Optional[int] = typer.Option(None, help="P4: test cut (unix seconds); default the 90% quantile"),
    positive_behaviors: Optional[str] = typer.Option(None, help="P4: comma-separated behaviors that are positives"),
    user_order: str = typer.Option("random", help="P3: random (the protocol's user split) or time (shifted: "
                                                  "users ordered by their last event, the latest are held out)"),
    min_events: Optional[int] = typer.Option(None, help="P5: drop users with fewer events (default 20)"),
    overwrite: bool = typer.Option(False, help="replace an existing output folder"),
) -> None:
    """Validate a raw log and prepare it: one sequence per user, item table, vocabularies, samples."""
    from lifelong.data import load_recipe
    from lifelong.pipeline import ProtocolOptions, prepare as run_prepare

    from lifelong.outputs import DATASET, check_output

    if on_bad_rows not in ("error", "skip"):
        _fail(UserError(f"--on-bad-rows must be 'error' or 'skip', got {on_bad_rows!r}"))
    with user_errors():  # the output folder is checked before the log is read
        check_output(out, DATASET, inputs=[input], overwrite=overwrite)
    options: dict[str, Any] = {"timestamp_unit": timestamp_unit, "max_id_bytes": max_id_bytes}
    with user_errors():  # warnings (skipped rows per file, a missing side file) shown as lines, on failure too
        if column:
            options["columns"] = {k: str(v) for k, v in parse_assignments(column, "--column").items()}
        protocol_options = ProtocolOptions(
            name=protocol, seed=seed, max_train_per_user=max_train_per_user, t_valid=t_valid, t_test=t_test,
            positive_behaviors=tuple(positive_behaviors.split(",")) if positive_behaviors else None,
            user_order=user_order, min_events=min_events,
        )
        log = load_recipe(recipe, input, on_bad_rows=on_bad_rows, **options)
        path = run_prepare(log, out, protocol_options, overwrite=overwrite)
    manifest = json.loads((path / "manifest.json").read_text())
    if manifest["rejected_rows"]:
        errors.print(f"skipped {manifest['rejected_rows']} bad rows; they are in {path / 'rejected.csv'}")
    console.print(f"prepared {path}: {manifest['n_events']:,} events, {manifest['n_users']:,} users, "
                  f"{manifest['n_items']:,} items, {manifest['n_categories']:,} categories; samples "
                  + ", ".join(f"{k} {v:,}" for k, v in manifest["samples"].items()))


@app.command()
def train(
    data: Optional[str] = typer.Option(None, help="prepared dataset folder"),
    model: Optional[str] = typer.Option(None, help="model_type (see `lifelong models`)"),
    out: Optional[str] = typer.Option(None, help="run folder to create"),
    config: Optional[Path] = typer.Option(None, help="TOML or YAML file of train options; model options go in a [model] table (with model_type) or [model_options]"),
    epochs: Optional[int] = typer.Option(None),
    batch_size: Optional[int] = typer.Option(None),
    lr: Optional[float] = typer.Option(None),
    weight_decay: Optional[float] = typer.Option(None),
    max_length: Optional[int] = typer.Option(None, help="L: most recent history events kept"),
    patience: Optional[int] = typer.Option(None, help="early stopping patience (epochs without a better valid AUC)"),
    lr_decay: Optional[float] = typer.Option(None, help="reduce-on-plateau: multiply the learning rate by this "
                                             "factor after every --lr-decay-patience epochs without a better "
                                             "validation score (default 1.0: constant)"),
    lr_decay_patience: Optional[int] = typer.Option(None, help="epochs without a better validation score before "
                                                    "each --lr-decay (default 0: never)"),
    clip_norm: Optional[float] = typer.Option(None, help="clip the gradients' global norm to this before every "
                                              "step, DESMIL's included (default 0: no clipping)"),
    seed: Optional[int] = typer.Option(None),
    threads: Optional[int] = typer.Option(None, help="torch intra-op threads"),
    results_csv: Optional[str] = typer.Option(None, help="append one result line here"),
    set: list[str] = typer.Option([], "--set", help="model option key=value, e.g. --set embedding_dim=32"),
    resume: bool = typer.Option(False, help="continue the interrupted run in --out with its saved options (from "
                                "epoch 1 when it stopped before its first checkpoint; --data: the dataset moved)"),
    overwrite: bool = typer.Option(False, help="replace the run in --out (only a run folder lifelong wrote, "
                                   "holding nothing else)"),
    progress: bool = typer.Option(True, help="show a progress bar"),
    save_predictions: bool = typer.Option(False, help="also write test_predictions.npz (per-sample test logits)"),
    refit_with_valid: bool = typer.Option(False, help="retrieval: after selection, retrain from scratch through the "
                                          "validation item for the selected number of epochs and test that model too "
                                          "(uSASRec's final fit; reported as test_refit, beside the P2 test)"),
    desmil: bool = typer.Option(False, help="multi-interest retrieval (P3): DESMIL's sample weighting, alternating "
                                            "per-sample weights that minimise the interests' weighted HSIC with the "
                                            "weighted model update"),
    device: Optional[str] = typer.Option(None, help="auto (CUDA when available, the default) | cpu | cuda | cuda:N"),
    precision: Optional[str] = typer.Option(None, help="fp32 (default) | bf16: the training forward pass under "
                                            "bfloat16 autocast (evaluation stays fp32)"),
    samples: Optional[str] = typer.Option(None, help="sequence retrieval: training rows as `windows` (each "
                                          "window trains every position at once) or `prefixes` (every prefix its "
                                          "own row, the loss on its last position: ICSRec's / BSARec's regime)"),
) -> None:
    """Train a model (ranking or retrieval); the best validation epoch is evaluated on test."""
    from lifelong.train import TrainConfig, train as run_train

    from lifelong.train.run import read_run, run_dataset_path

    command = " ".join(shlex.quote(a) for a in ["lifelong", *sys.argv[1:]])
    with user_errors():
        if resume and overwrite:
            raise UserError("--resume continues the run in --out and --overwrite replaces it: pass one of them")
        if resume:
            if out is None:
                raise UserError("--resume needs --out RUN_DIR")
            resolved = read_run(out)
            values = dict(resolved["train"])
            values["data"] = run_dataset_path(resolved)  # the absolute path (--data below: the dataset moved)
        else:
            values = read_config_file(config)
            # `model` is the model name, or a table of model options (with an optional model_type)
            table = values.pop("model") if isinstance(values.get("model"), dict) else {}
            values["model_options"] = {**values.get("model_options", {}), **table, **parse_assignments(set, "--set")}
            if "model_type" in values["model_options"]:
                values.setdefault("model", values["model_options"].pop("model_type"))
        given = {"data": data, "model": model, "out": out, "epochs": epochs, "batch_size": batch_size, "lr": lr,
                 "weight_decay": weight_decay, "max_length": max_length, "patience": patience, "seed": seed,
                 "lr_decay": lr_decay, "lr_decay_patience": lr_decay_patience, "clip_norm": clip_norm,
                 "threads": threads, "results_csv": results_csv, "samples": samples, "device": device,
                 "precision": precision}
        values.update({k: v for k, v in given.items() if v is not None})
        values["progress"] = progress
        if save_predictions:
            values["save_predictions"] = True
        if refit_with_valid:
            values["refit_with_valid"] = True
        if desmil:
            values["desmil"] = True
        train_config = TrainConfig.from_dict(values)
        results = run_train(train_config, resume=resume, overwrite=overwrite, command=command)
    _print_metrics(f"{train_config.model} (best epoch {results['best_epoch']})", results)


SPLITS = ("train", "valid", "test")


def _print_metrics(title: str, results: dict) -> None:
    if results.get("protocol") == "mi-split":
        table = Table(title=f"{title}, loss {results.get('loss')}{', DESMIL' if results.get('desmil') else ''}, "
                            f"P3 mi-split, full catalogue")
        names = ("recall@20", "ndcg@20", "hitrate@20", "recall@50", "ndcg@50", "hitrate@50")
        for name in ("split", *names, "users"):
            table.add_column(name)
        shown = [split for split in SPLITS if split in results]
        for split in shown:
            m = results[split]
            table.add_row(split, *(f"{m[k]:.4f}" for k in names), f"{m['n']:,}")
        console.print(table)
        extra = {k: v for k, v in results[shown[-1]].items() if k.startswith(("interest_", "top"))}
        if extra:
            console.print("test: " + ", ".join(f"{k} {v:.4f}" for k, v in extra.items()))
        return
    if results.get("task") == "retrieval":
        table = Table(title=f"{title}, loss {results.get('loss')}, full ranking")
        names = ("hr@5", "ndcg@5", "hr@10", "ndcg@10", "hr@20", "ndcg@20", "recall@50")
        for name in ("split", *names, "users"):
            table.add_column(name)
        for split in ("valid", "test", "test_refit"):
            if split in results:
                m = results[split]
                table.add_row(split, *(f"{m[k]:.4f}" for k in names), f"{m['n']:,}")
        console.print(table)
        return
    table = Table(title=title)
    for name in ("split", "AUC", "GAUC", "logloss", "samples"):
        table.add_column(name)
    for split in ("valid", "test"):
        if split in results:
            m = results[split]
            table.add_row(split, f"{m['auc']:.4f}", f"{m['gauc']:.4f}", f"{m['logloss']:.4f}", f"{m['n']:,}")
    console.print(table)


@app.command()
def evaluate(
    run: Path = typer.Argument(..., help="a run folder written by `lifelong train`"),
    split: str = typer.Option("test", help="train | valid | test"),
    index: Optional[str] = typer.Option(None, help="P3 runs: retrieve through a faiss index: exact | ivf | hnsw"),
    index_param: list[str] = typer.Option([], help="index parameter key=value (ivf: nlist, nprobe; hnsw: M, "
                                                   "ef_search, ef_construction), repeatable"),
    data: Optional[Path] = typer.Option(None, help="the run's dataset, when it moved (it must be the same dataset: "
                                        "its fingerprint is checked)"),
    device: str = typer.Option("auto", help="auto (CUDA when available) | cpu | cuda | cuda:N"),
) -> None:
    """Evaluate a run's best checkpoint; print the metrics and write eval_<split>[_<index>].json."""
    from lifelong.train import evaluate_run

    with user_errors():
        if split not in SPLITS:
            raise UserError(f"--split must be one of {', '.join(SPLITS)}, got {split!r}")
        spec = None
        if index_param and index is None:
            raise UserError("--index-param needs --index exact|ivf|hnsw")
        if index is not None:
            from lifelong.index import check_params

            params = parse_assignments(index_param, "--index-param")
            try:
                check_params(index, params)
            except ValueError as error:
                raise UserError(f"--index-param: {error}") from None
            spec = {"kind": index, **params}
        metrics = evaluate_run(run, split, index=spec, data=data, device=device)
    kind = {"task": "retrieval", "loss": "see config.json"} if "ndcg@10" in metrics else {}
    if "recall@20" in metrics:
        kind = {"task": "retrieval", "protocol": "mi-split", "loss": "see config.json"}
    _print_metrics(f"{run} ({split})", {split: metrics, **kind})
    console.print_json(json.dumps(metrics))


@app.command()
def models() -> None:
    """List the registered models and their config fields."""
    import dataclasses

    from lifelong.models import MODELS

    table = Table(title="registered models")
    table.add_column("model_type")
    table.add_column("config fields (defaults)")
    for name, (config_class, model_class) in sorted(MODELS.items()):
        fields = ", ".join(f"{f.name}={f.default!r}" for f in dataclasses.fields(config_class)
                           if f.name not in ("n_items", "n_cates", "n_behaviors", "features"))
        table.add_row(name, fields)
    console.print(table)


@app.command()
def demo(
    out: Path = typer.Option(Path("runs/demo"), help="folder for the synthetic dataset and the runs"),
    users: int = typer.Option(2000, help="synthetic users"),
    epochs: int = typer.Option(4, help="training epochs per model"),
    seed: int = typer.Option(2024),
) -> None:
    """The embedded default: a synthetic log with planted interests -> sumpool vs din, side by side."""
    from lifelong.demo import run_demo

    with user_errors():
        rows = run_demo(out, n_users=users, epochs=epochs, seed=seed, console=console)
    table = Table(title="lifelong demo: P1 ctr-din on a synthetic log (test split)")
    for name in ("model", "AUC", "GAUC", "logloss", "train samples/s", "best epoch"):
        table.add_column(name)
    for row in rows:
        table.add_row(row["model"], f"{row['auc']:.4f}", f"{row['gauc']:.4f}", f"{row['logloss']:.4f}",
                      f"{row['samples_per_s']:,.0f}", str(row["best_epoch"]))
    console.print(table)


def main() -> None:
    if "--debug" in sys.argv[1:]:  # accepted anywhere on the line, not only before the command
        sys.argv = [sys.argv[0], "--debug", *(a for a in sys.argv[1:] if a != "--debug")]
    app()


if __name__ == "__main__":
    main()
