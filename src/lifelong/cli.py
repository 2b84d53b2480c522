"""``lifelong``: prepare | train | evaluate | demo | models.

A thin layer: parse options (command line over an optional TOML/YAML config file), call the stages.
"""

from __future__ import annotations

import json
import shlex
import sys
import tomllib
import warnings
from pathlib import Path
from typing import Any, Optional

import typer
import yaml
from rich.console import Console
from rich.table import Table

app = typer.Typer(add_completion=False, no_args_is_help=True,
                  help="User-interest modeling for recommender systems: prepare logs, train, evaluate.")
console = Console()
errors = Console(stderr=True)


def read_config_file(path: Optional[Path]) -> dict[str, Any]:
    """Options from a TOML (.toml) or YAML (.yaml/.yml) file; empty without a file."""
    if path is None:
        return {}
    if not path.exists():
        raise typer.BadParameter(f"config file {path} does not exist")
    text = path.read_text()
    values = tomllib.loads(text) if path.suffix == ".toml" else yaml.safe_load(text)
    if not isinstance(values, dict):
        raise typer.BadParameter(f"config file {path} must hold a table of options")
    return {key.replace("-", "_"): value for key, value in values.items()}


def parse_assignments(pairs: list[str], what: str) -> dict[str, Any]:
    """``key=value`` pairs; values parsed as JSON when they can be (numbers, lists, booleans)."""
    out: dict[str, Any] = {}
    for pair in pairs:
        if "=" not in pair:
            raise typer.BadParameter(f"{what} expects key=value, got {pair!r}")
        key, value = pair.split("=", 1)
        try:
            out[key.strip()] = json.loads(value)
        except json.JSONDecodeError:
            out[key.strip()] = value
    return out


def _fail(error: Exception) -> None:
    errors.print(f"[bold red]error:[/] {error}", markup=True, highlight=False)
    raise typer.Exit(2)


@app.command()
def prepare(
    recipe: str = typer.Option(..., help="amazon-s3rec | amazon-reviews | movielens | taobao-userbehavior | csv"),
    input: Path = typer.Option(..., "--input", help="the raw file or folder"),
    out: Path = typer.Option(..., help="the prepared dataset folder to create"),
    protocol: str = typer.Option("ctr-din", help="ctr-din (P1), ctr-time (P4), seq-loo (P2) or mi-split (P3)"),
    seed: int = typer.Option(2024, help="negative sampling seed (P3: the user split's seed)"),
    on_bad_rows: str = typer.Option("error", help="error: stop at the first bad row; skip: skip and write rejected.csv"),
    column: list[str] = typer.Option([], help="csv recipe: lifelong_name=source_column, repeatable"),
    max_train_per_user: Optional[int] = typer.Option(None, help="P1: keep each user's most recent N training targets"),
    t_valid: Optional[int] = typer.Option(None, help="P4: validation cut (unix seconds); default the 80% quantile"),
    t_test: Optional[int] = typer.Option(None, help="P4: test cut (unix seconds); default the 90% quantile"),
    positive_behaviors: Optional[str] = typer.Option(None, help="P4: comma-separated behaviors that are positives"),
    user_order: str = typer.Option("random", help="P3: random (the protocol's user split) or time (shifted: "
                                                  "users ordered by their last event, the latest are held out)"),
    overwrite: bool = typer.Option(False, help="replace an existing output folder"),
) -> None:
    """Validate a raw log and prepare it: one sequence per user, item table, vocabularies, samples."""
    from lifelong.data import BadRowError, BadRowsSkippedWarning, load_recipe
    from lifelong.pipeline import ProtocolOptions, prepare as run_prepare

    if on_bad_rows not in ("error", "skip"):
        _fail(ValueError(f"--on-bad-rows must be 'error' or 'skip', got {on_bad_rows!r}"))
    if out.exists() and not overwrite:
        _fail(FileExistsError(f"{out} already exists; pass --overwrite to replace it"))
    options: dict[str, Any] = {}
    if column:
        options["columns"] = {k: str(v) for k, v in parse_assignments(column, "--column").items()}
    try:
        protocol_options = ProtocolOptions(
            name=protocol, seed=seed, max_train_per_user=max_train_per_user, t_valid=t_valid, t_test=t_test,
            positive_behaviors=tuple(positive_behaviors.split(",")) if positive_behaviors else None,
            user_order=user_order,
        )
        with warnings.catch_warnings(record=True) as skipped:  # shown below as one line per file
            warnings.simplefilter("always", BadRowsSkippedWarning)
            log = load_recipe(recipe, input, on_bad_rows=on_bad_rows, **options)
        path = run_prepare(log, out, protocol_options, overwrite=overwrite)
    except (BadRowError, ValueError, FileNotFoundError, FileExistsError) as error:
        _fail(error)
    for warning in skipped:
        errors.print(str(warning.message))
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
    seed: Optional[int] = typer.Option(None),
    threads: Optional[int] = typer.Option(None, help="torch intra-op threads"),
    results_csv: Optional[str] = typer.Option(None, help="append one result line here"),
    set: list[str] = typer.Option([], "--set", help="model option key=value, e.g. --set embedding_dim=32"),
    resume: bool = typer.Option(False, help="continue the interrupted run in --out with its saved options"),
    progress: bool = typer.Option(True, help="show a progress bar"),
    save_predictions: bool = typer.Option(False, help="also write test_predictions.npz (per-sample test logits)"),
    refit_with_valid: bool = typer.Option(False, help="retrieval: after selection, retrain from scratch through the "
                                          "validation item for the selected number of epochs and test that model too "
                                          "(uSASRec's final fit; reported as test_refit, beside the P2 test)"),
    desmil: bool = typer.Option(False, help="multi-interest retrieval (P3): DESMIL's sample weighting, alternating "
                                            "per-sample weights that minimise the interests' weighted HSIC with the "
                                            "weighted model update"),
    samples: Optional[str] = typer.Option(None, help="sequence retrieval: training rows as `windows` (each "
                                          "window trains every position at once) or `prefixes` (every prefix its "
                                          "own row, the loss on its last position: ICSRec's / BSARec's regime)"),
) -> None:
    """Train a model (ranking or retrieval); the best validation epoch is evaluated on test."""
    from lifelong.train import TrainConfig, train as run_train

    command = " ".join(shlex.quote(a) for a in ["lifelong", *sys.argv[1:]])
    try:
        if resume:
            if out is None:
                raise ValueError("--resume needs --out RUN_DIR")
            values = json.loads((Path(out) / "config.json").read_text())["train"]
        else:
            values = read_config_file(config)
            # `model` is the model name, or a table of model options (with an optional model_type)
            table = values.pop("model") if isinstance(values.get("model"), dict) else {}
            values["model_options"] = {**values.get("model_options", {}), **table, **parse_assignments(set, "--set")}
            if "model_type" in values["model_options"]:
                values.setdefault("model", values["model_options"].pop("model_type"))
        given = {"data": data, "model": model, "out": out, "epochs": epochs, "batch_size": batch_size, "lr": lr,
                 "weight_decay": weight_decay, "max_length": max_length, "patience": patience, "seed": seed,
                 "lr_decay": lr_decay, "lr_decay_patience": lr_decay_patience,
                 "threads": threads, "results_csv": results_csv, "samples": samples}
        values.update({k: v for k, v in given.items() if v is not None})
        values["progress"] = progress
        if save_predictions:
            values["save_predictions"] = True
        if refit_with_valid:
            values["refit_with_valid"] = True
        if desmil:
            values["desmil"] = True
        train_config = TrainConfig.from_dict(values)
        results = run_train(train_config, resume=resume, command=command)
    except (ValueError, FileNotFoundError, FileExistsError) as error:
        _fail(error)
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
) -> None:
    """Evaluate a run's best checkpoint; print the metrics and write eval_<split>[_<index>].json."""
    from lifelong.train import evaluate_run

    try:
        spec = None
        if index is not None:
            spec = {"kind": index, **{k: int(v) for k, v in parse_assignments(index_param, "--index-param").items()}}
        metrics = evaluate_run(run, split, index=spec)
    except (ValueError, FileNotFoundError) as error:
        _fail(error)
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
                           if f.name not in ("n_items", "n_cates", "n_behaviors"))
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

    rows = run_demo(out, n_users=users, epochs=epochs, seed=seed, console=console)
    table = Table(title="lifelong demo: P1 ctr-din on a synthetic log (test split)")
    for name in ("model", "AUC", "GAUC", "logloss", "train samples/s", "best epoch"):
        table.add_column(name)
    for row in rows:
        table.add_row(row["model"], f"{row['auc']:.4f}", f"{row['gauc']:.4f}", f"{row['logloss']:.4f}",
                      f"{row['samples_per_s']:,.0f}", str(row["best_epoch"]))
    console.print(table)


def main() -> None:
    app()


if __name__ == "__main__":
    main()
