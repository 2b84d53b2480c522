"""``lifelong``: prepare | train | evaluate | models | demo | report | export | serve.

A thin layer over the Python API (:mod:`lifelong.api`): parse options (command line over an optional
TOML/YAML/JSON config file), call the same function a notebook calls, print what it returns (readable in
a terminal and in a log file: :mod:`lifelong.display`; ``--json`` where a program reads it).
"""

from __future__ import annotations

import contextlib
import json
import os
import shlex
import sys
import warnings
from pathlib import Path
from typing import Any, Optional

import typer
from rich.console import Console
from rich.markup import escape

from lifelong import __version__, api
from lifelong.api import parse_assignments, read_config_file  # noqa: F401  (the config files' reader lives there)
from lifelong.display import is_terminal, print_table, wrapped
from lifelong.errors import UserError

app = typer.Typer(add_completion=False, no_args_is_help=True,
                  help="User-interest modeling for recommender systems: prepare logs, train, evaluate.")
console = Console(soft_wrap=True)  # long lines are not wrapped at 80 columns in a log file
errors = Console(stderr=True, soft_wrap=True)


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


def _show_version(value: bool) -> None:
    if value:
        print(f"lifelong {__version__}")
        raise typer.Exit()


@app.callback()
def _options(debug: bool = typer.Option(False, "--debug", help=f"show the traceback of an error (also "
                                        f"{DEBUG_VARIABLE}=1); errors are otherwise one message and exit code 2"),
             version: bool = typer.Option(False, "--version", callback=_show_version, is_eager=True,
                                          help="print lifelong's version and exit")) -> None:
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
    with user_errors():  # warnings (skipped rows per file, a missing side file) shown as lines, on failure too
        path = api.prepare(
            recipe, input, out, protocol=protocol, seed=seed, on_bad_rows=on_bad_rows,
            columns={k: str(v) for k, v in parse_assignments(column, "--column").items()} or None,
            timestamp_unit=timestamp_unit, max_id_bytes=max_id_bytes, max_train_per_user=max_train_per_user,
            t_valid=t_valid, t_test=t_test, positive_behaviors=positive_behaviors, user_order=user_order,
            min_events=min_events, overwrite=overwrite)
    manifest = json.loads((path / "manifest.json").read_text())
    if manifest["rejected_rows"]:
        errors.print(f"skipped {manifest['rejected_rows']} bad rows; they are in {path / 'rejected.csv'}")
    print(wrapped(f"prepared {path}: {manifest['n_events']:,} events, {manifest['n_users']:,} users, "
                  f"{manifest['n_items']:,} items, {manifest['n_categories']:,} categories; samples "
                  + ", ".join(f"{k} {v:,}" for k, v in manifest["samples"].items()), "  "), flush=True)


@app.command()
def train(
    data: Optional[str] = typer.Option(None, help="prepared dataset folder"),
    model: Optional[str] = typer.Option(None, help="model_type (see `lifelong models`)"),
    out: Optional[str] = typer.Option(None, help="run folder to create"),
    config: Optional[Path] = typer.Option(None, help="TOML, YAML or JSON file of train options (configs/ holds one per results row); model options go in a [model] table (with model_type) or [model_options]; options given here win"),
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
    progress: bool = typer.Option(True, help="in a terminal: a progress bar within each epoch (samples/s, ETA); "
                                  "without one, one plain line per epoch either way"),
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
    command = " ".join(shlex.quote(a) for a in ["lifelong", *sys.argv[1:]])
    given = {"epochs": epochs, "batch_size": batch_size, "lr": lr, "weight_decay": weight_decay,
             "max_length": max_length, "patience": patience, "seed": seed, "lr_decay": lr_decay,
             "lr_decay_patience": lr_decay_patience, "clip_norm": clip_norm, "threads": threads,
             "results_csv": results_csv, "samples": samples, "device": device, "precision": precision,
             "progress": progress, "save_predictions": save_predictions or None,
             "refit_with_valid": refit_with_valid or None, "desmil": desmil or None}
    with user_errors():
        results = api.train(data, model, out, config=config, model_options=parse_assignments(set, "--set"),
                            resume=resume, overwrite=overwrite, command=command, **given)
    _print_metrics(f"{results['model']} (best epoch {results['best_epoch']})", results)


SPLITS = ("train", "valid", "test")


def _print_metrics(title: str, results: dict) -> None:
    """The metrics table of a run's splits (stdout): a rich table in a wide enough terminal, aligned plain
    columns otherwise (:func:`lifelong.display.print_table`)."""
    if results.get("protocol") == "mi-split":
        names = ("recall@20", "ndcg@20", "hitrate@20", "recall@50", "ndcg@50", "hitrate@50")
        shown = [split for split in SPLITS if split in results]
        rows = [(split, *(f"{results[split][k]:.4f}" for k in names), f"{results[split]['n']:,}") for split in shown]
        print_table(f"{title}, loss {results.get('loss')}{', DESMIL' if results.get('desmil') else ''}, "
                    f"P3 mi-split, full catalogue", ("split", *names, "users"), rows)
        extra = {k: v for k, v in results[shown[-1]].items() if k.startswith(("interest_", "top"))}
        if extra:
            print(wrapped("test: " + ", ".join(f"{k} {v:.4f}" for k, v in extra.items()), "  "), flush=True)
        return
    if results.get("task") == "retrieval":
        names = ("hr@5", "ndcg@5", "hr@10", "ndcg@10", "hr@20", "ndcg@20", "recall@50")
        rows = [(split, *(f"{results[split][k]:.4f}" for k in names), f"{results[split]['n']:,}")
                for split in ("valid", "test", "test_refit") if split in results]
        print_table(f"{title}, loss {results.get('loss')}, full ranking", ("split", *names, "users"), rows)
        return
    rows = [(split, f"{m['auc']:.4f}", f"{m['gauc']:.4f}", f"{m['logloss']:.4f}", f"{m['n']:,}")
            for split, m in ((s, results[s]) for s in ("valid", "test") if s in results)]
    print_table(title, ("split", "AUC", "GAUC", "logloss", "samples"), rows)


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
    as_json: bool = typer.Option(False, "--json", help="print the metrics as JSON on stdout (nothing else goes "
                                 "there)"),
) -> None:
    """Evaluate a run's best checkpoint; print the metrics and write eval_<split>[_<index>].json."""
    with user_errors():
        metrics = api.evaluate(run, split, index=index, index_params=parse_assignments(index_param, "--index-param"),
                               data=data, device=device)
    if as_json:
        print(_json_text(metrics), flush=True)
        return
    try:
        loss = json.loads((Path(run) / "config.json").read_text())["model"].get("loss")
    except (OSError, ValueError, KeyError, AttributeError):
        loss = None
    kind = {"task": "retrieval", "loss": loss} if "ndcg@10" in metrics else {}
    if "recall@20" in metrics:
        kind = {"task": "retrieval", "protocol": "mi-split", "loss": loss}
    _print_metrics(f"{run} ({split})", {split: metrics, **kind})
    written = f"eval_{split}" + (f"_{index}" if index else "") + ".json"
    print(wrapped(f"wrote {Path(run) / written} (--json prints the metrics as JSON)", "  "), file=sys.stderr,
          flush=True)


def _json_text(value: Any) -> str:
    """Strict JSON (a non-finite number is null), indented: what ``--json`` prints on stdout."""
    import math

    def clean(v: Any) -> Any:
        if isinstance(v, float) and not math.isfinite(v):
            return None
        if isinstance(v, dict):
            return {str(k): clean(x) for k, x in v.items()}
        if isinstance(v, (list, tuple)):
            return [clean(x) for x in v]
        return v

    return json.dumps(clean(value), indent=2, allow_nan=False, default=str)


JSON_OPTION = typer.Option(False, "--json", help="print machine-readable JSON on stdout (nothing else goes there)")


@app.command()
def models(as_json: bool = JSON_OPTION) -> None:
    """List the registered models: task, the protocols they train on, what they are, their options."""
    listing = api.available_models()
    if as_json:
        print(_json_text(listing), flush=True)
        return
    width = min(console.width, 120) if is_terminal() else 120
    lines = [f"{len(listing)} registered models (lifelong train --model NAME --set option=value; --json: "
             f"machine-readable)", ""]
    for entry in listing:
        lines.append(f"{entry['model_type']}  [{entry['task']}: {', '.join(entry['protocols'])}]")
        if entry["summary"]:
            lines.append(wrapped("  " + entry["summary"].replace("``", ""), "  ", width))
        options = ", ".join(f"{k}={_option_text(v)}" for k, v in entry["options"].items())
        lines.append(wrapped("  options: " + options, "    ", width))
    print("\n".join(lines), flush=True)


def _option_text(value: Any) -> str:
    return json.dumps(value) if isinstance(value, (list, dict, bool)) or value is None else str(value)


@app.command()
def demo(
    out: Path = typer.Option(Path("runs/demo"), help="folder for the synthetic datasets, the runs and the report"),
    users: int = typer.Option(800, help="synthetic users"),
    epochs: int = typer.Option(2, help="training epochs per CTR model (sasrec: ten times as many, much shorter)"),
    seed: int = typer.Option(2024),
) -> None:
    """The library's breadth in ~2 minutes: a synthetic log -> a CTR pair (sumpool, din) and a retrieval
    model (sasrec), then an HTML report of the three runs."""
    from lifelong.demo import run_demo

    with user_errors():
        done = run_demo(out, n_users=users, epochs=epochs, seed=seed, console=errors)
    print_table("lifelong demo: CTR ranking, P1 ctr-din on the synthetic log (test split)",
                ("model", "AUC", "GAUC", "logloss", "train samples/s", "best epoch"),
                [(r["model"], f"{r['auc']:.4f}", f"{r['gauc']:.4f}", f"{r['logloss']:.4f}", f"{r['samples_per_s']:,.0f}",
                  str(r["best_epoch"])) for r in done["ctr"]])
    print()
    print_table("lifelong demo: retrieval, P2 seq-loo, full ranking of every item (test split)",
                ("model", "HR@10", "NDCG@10", "recall@50", "users", "best epoch"),
                [(r["model"], f"{r['hr@10']:.4f}", f"{r['ndcg@10']:.4f}", f"{r['recall@50']:.4f}", f"{r['n']:,}",
                  str(r["best_epoch"])) for r in done["retrieval"]])
    print()
    if done["report"] is not None:
        print(f"report: {done['report']}")
    else:
        print(done["report_note"])
    print(f"runs in {out} ({done['seconds']:.0f} s); next: lifelong evaluate {Path(out) / 'din'} --json", flush=True)


@app.command()
def report(
    runs: list[Path] = typer.Argument(..., help="run folders written by `lifelong train` (one or more)"),
    out: Path = typer.Option(..., "--out", help="folder for index.html and its plots: a new or empty folder, or an "
                                                "earlier report (replaced)"),
) -> None:
    """Write a static HTML page about runs: curves, metric table, AUC by history length, HR/NDCG@K.

    The page needs no network (its plots are PNG files beside it); several runs are drawn side by side."""
    from lifelong.report import write_report

    with user_errors():
        page = write_report(runs, out)
    print(f"report: {page}", flush=True)

@app.command()
def export(
    run: Path = typer.Argument(..., help="a run folder written by `lifelong train`"),
    out: Path = typer.Option(..., "--out", help="the artifact folder to create"),
    index: Optional[str] = typer.Option(None, help="retrieval: also build an approximate index: ivf | hnsw "
                                                   "(the exact one is always built)"),
    index_param: list[str] = typer.Option([], help="index parameter key=value (ivf: nlist, nprobe; hnsw: M, "
                                                   "ef_search, ef_construction), repeatable"),
    data: Optional[Path] = typer.Option(None, help="the run's dataset, when it moved (its fingerprint is checked)"),
    overwrite: bool = typer.Option(False, help="replace an artifact lifelong wrote at --out"),
    threads: Optional[int] = typer.Option(None, help="faiss threads for building the indexes"),
) -> None:
    """Export a run's best checkpoint as a self-describing serving artifact (weights, config, vocabularies, item
    table, item vectors and faiss indexes, a manifest of checksums)."""
    from lifelong.serve.artifact import export_artifact

    with user_errors():
        manifest = export_artifact(run, out, index=index, index_params=parse_assignments(index_param, "--index-param"),
                                   data=data, overwrite=overwrite, threads=threads)
    size = sum(f["bytes"] for f in manifest["files"].values())
    console.print(f"exported {manifest['model_type']} ({manifest['task']}) to {out}: {len(manifest['files'])} files, "
                  f"{size / 1e6:,.1f} MB" + (f", indexes {', '.join(manifest['indexes'])}" if manifest["indexes"] else ""),
                  markup=False, highlight=False)


@app.command()
def serve(
    artifact: Path = typer.Argument(..., help="an artifact folder written by `lifelong export` (or a run folder)"),
    store: str = typer.Option("sqlite:lifelong-store.db", help="behavior store: sqlite:PATH or redis://HOST:PORT "
                                                               "(optionally /DB)"),
    host: str = typer.Option("127.0.0.1"),
    port: int = typer.Option(8000),
    index: Optional[str] = typer.Option(None, help="retrieval: the artifact's index to search: exact (default) | ivf | "
                                                   "hnsw"),
    threads: int = typer.Option(1, help="torch intra-op (and faiss) threads"),
    max_batch: int = typer.Option(32, help="most requests coalesced into one forward pass (1: no micro-batching)"),
    max_delay_ms: float = typer.Option(0.0, help="longest wait for more requests after the first of a batch (0: none, "
                                                 "as Triton's default: a batch takes what queued while the workers "
                                                 "were busy)"),
    batch_workers: int = typer.Option(2, help="batches computed at the same time, one thread each (e.g. one per core)"),
    cache_size: int = typer.Option(4096, help="users whose encoded state is cached (0: none)"),
    max_candidates: int = typer.Option(1000, help="most candidates of a rank request"),
    max_events: int = typer.Option(1000, help="most events of an events request"),
    max_history: int = typer.Option(10000, help="most events of an explicit history"),
    max_k: int = typer.Option(1000, help="largest k of a retrieve request"),
    max_body_bytes: int = typer.Option(1 << 20, help="largest request body"),
) -> None:
    """Serve an artifact over HTTP (FastAPI on uvicorn): /v1/rank, /v1/retrieve, /v1/events, user histories,
    /healthz, /readyz, /metrics; OpenAPI page at /docs."""
    import torch

    from lifelong.serve.scorer import Scorer
    from lifelong.serve.store import open_store

    with user_errors():
        for name, value in (("--max-batch", max_batch), ("--max-candidates", max_candidates), ("--threads", threads),
                            ("--batch-workers", batch_workers),
                            ("--max-events", max_events), ("--max-history", max_history), ("--max-k", max_k),
                            ("--max-body-bytes", max_body_bytes), ("--port", port + 1)):
            if value < 1:
                raise UserError(f"{name} must be at least 1, got {value}")
        if max_delay_ms < 0 or cache_size < 0:
            raise UserError("--max-delay-ms and --cache-size must be non-negative")
        try:
            from lifelong.serve.app import ServeOptions, run_server
        except ImportError as error:
            raise UserError(f"serving needs the `serve` extra ({error.name} is missing): pip install 'lifelong[serve]'") from None
        torch.set_num_threads(threads)
        scorer = Scorer.from_path(artifact, index=index, threads=threads)
        behavior_store = open_store(store)
    options = ServeOptions(max_batch=max_batch, max_delay_ms=max_delay_ms, batch_workers=batch_workers,
                           cache_size=cache_size,
                           max_candidates=max_candidates, max_events=max_events, max_history=max_history,
                           max_k=max_k, max_body_bytes=max_body_bytes)
    console.print(f"serving {scorer.model_type} ({'ranking' if scorer.task == 'ctr' else 'retrieval'}) from {artifact} "
                  f"on http://{host}:{port} (store {_without_password(store)}; OpenAPI page /docs)", markup=False,
                  highlight=False)
    try:
        with user_errors():
            run_server(scorer, behavior_store, options, host, port)
    finally:
        behavior_store.close()


def _without_password(url: str) -> str:
    """A store URL fit for a log line: ``redis://user:secret@host`` -> ``redis://***@host``."""
    import re

    return re.sub(r"//[^@/]*@", "//***@", url)


def main() -> None:
    if "--debug" in sys.argv[1:]:  # accepted anywhere on the line, not only before the command
        sys.argv = [sys.argv[0], "--debug", *(a for a in sys.argv[1:] if a != "--debug")]
    app()


if __name__ == "__main__":
    main()
