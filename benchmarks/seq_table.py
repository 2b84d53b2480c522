"""The next-item retrieval tables (docs/results/seq_table*.md): every P2 model on Amazon Beauty, Amazon Sports and
MovieLens-100K (full ranking, history items masked), HR/NDCG@5/10/20 and Recall@50 as mean ± std over
seeds, with the training loss of each row, next to the published numbers for the same protocol
(the papers' own tables and the authors' released logs; each published row names its source).

Every number comes from the CLI commands this script runs and prints. Model selection (early stopping)
uses validation NDCG@20 only; the table reports the test metrics of the best validation epoch. Finished
runs are reused, so an interrupted table continues where it stopped. ``--keep`` carries rows over from an
earlier run of this script (its ``table.json``, which records each row's command) for the runs whose folders
are not on this machine: those jobs are not trained, so a table can grow across machines without retraining
what it already holds. A kept row must have trained under the same ``--epochs`` and ``--patience``.

    python benchmarks/seq_table.py [--models SPEC,...|default|summary] [--datasets beauty,sports,ml100k]
        [--seeds 2024,2025,2026] [--epochs 200] [--patience 10] [--jobs 1] [--threads 2]
        [--workdir runs/seq-table] [--report-only] [--keep docs/results/seq_table_prefixes.json]

A SPEC is NAME or NAME:key=value:... (model options, or the training flags ``lr``, ``batch_size``,
``epochs``, ``patience``, ``samples``, ``lr_decay`` and ``lr_decay_patience``), e.g. ``sasrec:loss=bce:lr=0.003`` or
``sasrec:loss=full:batch_size=256:samples=prefixes`` (every prefix its own training row, ICSRec's regime).
"""

from __future__ import annotations

import argparse
import json
import shlex
import sys
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent))
from ctr_table import SHARED, lifelong, results_of, run, shown, workdir  # noqa: E402  (same runner as the CTR table)

ROOT = Path(__file__).resolve().parents[1]
DATASETS = {
    "beauty": ["--recipe", "amazon-s3rec", "--input", str(SHARED / "amazon-beauty")],
    "sports": ["--recipe", "amazon-s3rec", "--input", str(SHARED / "amazon-sports")],
    "ml100k": ["--recipe", "movielens", "--input", str(SHARED / "movielens-100k")],
}
# L = 50, embedding 64, batch 256, Adam 1e-3: the S3-Rec / ICLRec / ICSRec settings
SETTINGS = ["--batch-size", "256", "--max-length", "50", "--lr", "0.001", "--set", "embedding_dim=64"]
# MovieLens-100K has 943 users: ~31 batches of 64 windows per epoch, so it gets more epochs than --epochs
DATASET_EPOCHS = {"ml100k": 200}
# spec options that are training flags, not model options
TRAIN_FLAGS = {"lr": "--lr", "batch_size": "--batch-size", "epochs": "--epochs", "patience": "--patience",
               "samples": "--samples", "lr_decay": "--lr-decay", "lr_decay_patience": "--lr-decay-patience"}
# the rows of the table (batch 64: more Adam steps per epoch than 256 converged faster on Beauty validation;
# full softmax gets patience 20, BCE, the slowest learner, 300 epochs and patience 40 as ICLRec; the first two rows
# train on every prefix as its own row with batch 256, ICSRec's and BSARec's regime)
DEFAULT_MODELS = ("sasrec:loss=full:batch_size=256:patience=20:samples=prefixes,"
                  "iclrec:loss=full:batch_size=256:subsequence_views=true:instance_weight=0.3:patience=20:samples=prefixes,"
                  "iclrec:loss=full:batch_size=256:cross_subsequence=true:samples=prefixes,"
                  "sasrec:loss=sampled:batch_size=64:refit=1,sasrec:loss=full:batch_size=64:patience=20,"
                  "sasrec:loss=bce:batch_size=64:epochs=300:patience=40,"
                  "sasrec:loss=full:batch_size=64:patience=20:embedding_dim=128,"
                  "sasrec:loss=sampled:batch_size=64:patience=20:positions=end,"
                  "sasrec:loss=sampled:batch_size=64:patience=20:embedding_dim=256:layers=1:dropout=0.2,"
                  "idnp:loss=full:batch_size=64,iclrec:loss=full:batch_size=64,iclrec:loss=full:batch_size=64:cross_subsequence=true,"
                  "sasrec_priors:loss=full:batch_size=64,"
                  "sasrec_priors:loss=sampled:batch_size=64:epochs=40")
# ``--models summary``: the table, each model's reference configuration on every dataset (the prefix
# regime on the Amazon sets, where it was run; windows of 64 on MovieLens-100K, where it was not needed), and
# SASRec with BSARec's encoder (prefix samples only), the best Sports row
SUMMARY_MODELS = ("sasrec:loss=full:batch_size=256:patience=20:samples=prefixes,"
                  "sasrec:loss=sampled:batch_size=64,sasrec:loss=full:batch_size=64,sasrec:loss=full:batch_size=64:patience=20,"
                  "sasrec:loss=bce:batch_size=64,sasrec:loss=bce:batch_size=64:epochs=300:patience=40,"
                  "idnp:loss=full:batch_size=64,"
                  "iclrec:loss=full:batch_size=256:subsequence_views=true:instance_weight=0.3:patience=20:samples=prefixes,"
                  "iclrec:loss=full:batch_size=64,sasrec_priors:loss=full:batch_size=64,"
                  "sasrec:loss=full:batch_size=256:samples=prefixes:encoder=bsarec:heads=1:positions=end:lr=0.0005:patience=10")
PRESETS = {"default": DEFAULT_MODELS, "summary": SUMMARY_MODELS}
METRICS = ("hr@5", "ndcg@5", "hr@10", "ndcg@10", "hr@20", "ndcg@20", "recall@50")

# Published full-ranking, history-masked numbers (seqrec_tables.md); (HR@10, NDCG@10) and the source.
PUBLISHED = {
    ("beauty", "SASRec, BCE (S3-Rec T1)"): (0.0605, 0.0318),
    ("beauty", "ICSRec (T4 checkpoint)"): (0.0959, 0.0578),
    ("beauty", "ICLRec (T3)"): (0.0744, 0.0403),
    ("sports", "SASRec, BCE (S3-Rec T1)"): (0.0350, 0.0192),
    ("sports", "ICSRec (T4 checkpoint)"): (0.0565, 0.0335),
    ("sports", "ICLRec (T3)"): (0.0437, 0.0238),
    ("beauty", "BSARec (T6 official log)"): (0.1008, 0.0611),
    ("sports", "BSARec (T6 via WEARec digest, HR@10 only)"): (0.0612, None),
}


def label_of(spec: str) -> str:
    return spec.replace(":", " ")


def plain(spec: str) -> str:
    """A spec without ``refit=1``: a refit run is also the P2 run of its spec, and its row is keyed so."""
    return ":".join(o for o in spec.split(":") if o != "refit=1")


def train_command(work: Path, dataset: str, spec: str, seed: str, args) -> tuple[Path, list[str]]:
    name, *options = spec.split(":")
    out = work / "runs" / f"{dataset}-{plain(spec).replace(':', '-').replace('=', '')}-{seed}"
    settings = ["--epochs", str(DATASET_EPOCHS.get(dataset, args.epochs)), "--patience", str(args.patience), *SETTINGS]
    for option in [o for o in options if o.split("=")[0] in TRAIN_FLAGS]:  # e.g. lr=0.003 -> --lr 0.003
        key, value = option.split("=")
        if TRAIN_FLAGS[key] in settings:
            settings[settings.index(TRAIN_FLAGS[key]) + 1] = value
        else:
            settings += [TRAIN_FLAGS[key], value]
    refit = "refit=1" in options  # also test a model refit through the validation item (uSASRec's final fit)
    options = [o for o in options if o != "refit=1"]
    model_options = [o for o in options if o.split("=")[0] not in TRAIN_FLAGS]
    command = lifelong("train", "--data", str(work / "data" / dataset), "--model", name, "--out", str(out),
                       "--seed", seed, *settings,
                       *[a for o in model_options for a in ("--set", o)], "--threads", args.threads, "--no-progress",
                       "--results-csv", str(work / "results.csv"), "--save-predictions",
                       *(["--refit-with-valid"] if refit else []))
    return out, command


def finished_with(out: Path, command: list[str], require_refit: bool = True) -> bool:
    if not (out / "results.json").exists():
        return False
    saved = json.loads((out / "config.json").read_text())["train"]
    wanted = {flag: command[command.index(flag) + 1] for flag in ("--epochs", "--patience", "--seed")}
    return saved["epochs"] == int(wanted["--epochs"]) and saved["patience"] == int(wanted["--patience"]) \
        and saved["seed"] == int(wanted["--seed"]) \
        and ("--refit-with-valid" not in command or not require_refit or saved.get("refit_with_valid", False))


def stopped_result(out: Path) -> dict | None:
    """A run stopped by hand before its end (no ``results.json``) whose best-validation checkpoint was then
    tested with ``lifelong evaluate RUN --split test`` (``eval_test.json``, written after the run's last
    checkpoint): its result, with ``stopped_at`` (the last epoch trained), both epochs read from the loop's
    own ``checkpoints/last/trainer_state.json``. None when there is no such test."""
    evaluated, state = out / "eval_test.json", out / "checkpoints" / "last" / "trainer_state.json"
    if (out / "results.json").exists() or not evaluated.exists() or not state.exists() \
            or evaluated.stat().st_mtime < state.stat().st_mtime:  # trained on after the test: stale
        return None
    trainer = json.loads(state.read_text())
    loss = json.loads((out / "config.json").read_text())["model"].get("loss", "")
    return {"loss": loss, "best_epoch": trainer["best_epoch"], "stopped_at": trainer["epoch"],
            "test": json.loads(evaluated.read_text()), "test_seconds": None}


def summarise(rows: list[dict], models: list[str], datasets: list[str]) -> str:
    lines = ["| dataset | model | loss | " + " | ".join(m.upper() for m in METRICS)
             + " | best epochs | runs |", "|---" * (len(METRICS) + 5) + "|"]

    def line(dataset: str, label: str, loss: str, results: list[dict], runs: list[dict]) -> str:
        """One table line: each metric's mean ± sample std over ``results`` (one value when one run)."""
        cells = [f"{np.mean(v):.4f} ± {np.std(v, ddof=1):.4f}" if len(v) > 1 else f"{v[0]:.4f}"
                 for v in ([r[m] for r in results] for m in METRICS)]
        return (f"| {dataset} | {label} | {loss} | " + " | ".join(cells)
                + f" | {', '.join(str(r['best_epoch']) for r in runs)} | {len(runs)} |")

    models = list(dict.fromkeys(plain(spec) for spec in models))
    for dataset in datasets:
        for spec in models:
            group = [r for r in rows if r["dataset"] == dataset and r["spec"] == spec]
            if not group:
                continue
            stopped = [f"seed {r['seed']} at epoch {r['stopped_at']}" for r in group if r.get("stopped_at")]
            label = label_of(spec) + (f", *stopped by hand: {', '.join(stopped)}*" if stopped else "")
            lines.append(line(dataset, label, group[0]["loss"], group, group))
            refits = [r for r in group if r.get("refit")]
            if refits:  # the same runs' models refit through the validation item: not P2, shown apart
                lines.append(line(dataset, f"{label_of(spec)}, *refit through valid (not P2)*", group[0]["loss"],
                                  [r["refit"] for r in refits], refits))
        for (d, name), (hr, ndcg) in PUBLISHED.items():
            if d == dataset:
                shown_ndcg = "–" if ndcg is None else f"{ndcg:.4f}"
                lines.append(f"| {dataset} | *published: {name}* | | | | {hr:.4f} | {shown_ndcg} | | | | | |")
    return "\n".join(lines)


def kept_rows(files: list[Path], commands: dict[tuple[str, str, str], list[str]]) -> dict[tuple, dict]:
    """The rows of earlier tables (``table.json`` files) for the jobs asked for (``commands``: each job's
    key, (dataset, plain spec, seed), and training command), keyed alike; a row found in several files is
    taken from the first. A row whose command trained under other ``--epochs`` or ``--patience`` than the
    job's is not kept (it is printed), as a finished run folder with other settings is not reused."""
    kept = {}
    for file in files:
        for row in json.loads(file.read_text()):
            key = (row["dataset"], row["spec"], row["seed"])
            if key not in commands or key in kept:
                continue
            earlier, now = shlex.split(row["command"]), commands[key]
            settings = [(flag, earlier[earlier.index(flag) + 1], now[now.index(flag) + 1])
                        for flag in ("--epochs", "--patience")]
            if any(a != b for _, a, b in settings):
                print(f"not kept from {file}: {' '.join(key)} (" + ", ".join(
                    f"{flag} {a}, now {b}" for flag, a, b in settings if a != b) + ")")
                continue
            kept[key] = row
    return kept


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--models", default="default",
                        help="SPEC,... or a preset: default (every row run) or summary (one configuration per model)")
    parser.add_argument("--datasets", default="beauty,sports,ml100k")
    parser.add_argument("--seeds", default="2024,2025,2026")
    parser.add_argument("--epochs", type=int, default=200)
    parser.add_argument("--patience", type=int, default=10)
    parser.add_argument("--jobs", type=int, default=1, help="training processes at once")
    parser.add_argument("--threads", default="2", help="torch threads per training process")
    parser.add_argument("--report-only", action="store_true", help="train nothing: the table of the finished runs")
    parser.add_argument("--workdir", type=Path, default=ROOT / "runs" / "seq-table")
    parser.add_argument("--keep", type=Path, action="append", default=[],
                        help="an earlier table.json: its rows stand for the runs missing here (repeatable)")
    args = parser.parse_args()
    work = workdir(args.workdir, "seq_table")
    models = PRESETS.get(args.models, args.models).split(",")
    datasets, seeds = args.datasets.split(","), args.seeds.split(",")
    for dataset in datasets:
        data = work / "data" / dataset
        prepare = lifelong("prepare", *DATASETS[dataset], "--protocol", "seq-loo", "--out", str(data), "--overwrite")
        if not args.report_only and not (data / "manifest.json").exists():
            run(prepare)
        print(f"$ {shown(prepare)}", flush=True)

    jobs = [(d, s, seed) for seed in seeds for d in datasets for s in models]
    keys = [(d, plain(s), seed) for d, s, seed in jobs]  # a job's row key (a refit run is its spec's P2 run)
    commands = [train_command(work, d, s, seed, args) for d, s, seed in jobs]  # (run folder, command)
    started = time.time()

    # rows of earlier tables (--keep) stand for the runs missing here: they are neither trained nor re-read
    kept = kept_rows(args.keep, {key: command for key, (_, command) in zip(keys, commands)})

    def one(i):
        (dataset, spec, seed), (out, command) = jobs[i], commands[i]
        finished = finished_with(out, command, require_refit=not args.report_only)
        if not finished and (args.report_only or keys[i] in kept):
            result = stopped_result(out)  # a run stopped here wins over a kept row; None: the kept row, if any
        else:
            result = results_of(out, command, finished, args.report_only)
        if result is None:
            return None
        saved = json.loads((out / "config.json").read_text()).get("command")  # a result implies the run folder
        if saved:  # the command the run was started with (its --threads, not this invocation's)
            command = [sys.executable, "-m", *shlex.split(saved)]
        print(f"[{(time.time() - started) / 60:6.1f} min] {dataset} {label_of(spec)} seed {seed}: test HR@10 "
              f"{result['test']['hr@10']:.4f} NDCG@10 {result['test']['ndcg@10']:.4f} (best epoch "
              f"{result['best_epoch']}, test ranking {result['test_seconds'] or float('nan'):.1f} s)", flush=True)
        return jobs[i], command, result

    with ThreadPoolExecutor(max_workers=args.jobs) as pool:
        outcomes = list(pool.map(one, range(len(jobs))))
    rows = [{"dataset": d, "spec": plain(s), "seed": seed, "loss": r["loss"], "best_epoch": r["best_epoch"],
             "test_seconds": r["test_seconds"], "stopped_at": r.get("stopped_at"), **{m: r["test"][m] for m in METRICS}, "command": shown(c), **({"commit": r["commit"]} if r.get("commit") else {}),
             "refit": {m: r["test_refit"][m] for m in METRICS} if "test_refit" in r else None}
            for (d, s, seed), c, r in (o for o in outcomes if o is not None)]
    trained = {(r["dataset"], r["spec"], r["seed"]) for r in rows}
    carried = [row for key, row in kept.items() if key not in trained]
    rows = sorted(rows + carried, key=lambda r: keys.index((r["dataset"], r["spec"], r["seed"])))
    (work / "table.json").write_text(json.dumps(rows, indent=2))
    header = (f"P2 seq-loo, full ranking over the catalogue with history items masked; test metrics at the best "
              f"validation NDCG@20, mean ± sample std over the seeds run (of {', '.join(seeds)}; `runs` column); "
              f"L=50, embedding 64, Adam; batch 256, lr 1e-3, at most {args.epochs} epochs (MovieLens-100K "
              f"{DATASET_EPOCHS['ml100k']}) and patience {args.patience} unless the row names others. Rows marked *refit through valid* are the same runs' "
              f"models retrained through the validation item for the selected epochs (uSASRec's final fit): not P2. "
              f"Rows marked *stopped by hand* are runs stopped before their end (no ``results.json``) whose "
              f"best-validation checkpoint was tested with `lifelong evaluate RUN --split test`; "
              f"`lifelong train --out RUN --resume` finishes them. "
              f"Published rows: from the papers' tables and the authors' released logs, each named in its row.")
    table = summarise(rows, models, datasets)
    (work / "table.md").write_text(header + "\n\n" + table + "\n")
    print("\n" + header + "\n\n" + table + "\n\nCommands:")
    for r in rows:
        print(f"    {r['command']}")
    if carried:
        print(f"\n{len(carried)} row(s) kept from {', '.join(map(str, args.keep))} (their runs are not in {work})")
    missing = [job for job, key in zip(jobs, keys) if key not in trained and key not in kept]
    if missing:
        print(f"\n{len(missing)} run(s) missing from the table: " + ", ".join(f"{d} {s} {seed}" for d, s, seed in missing))


if __name__ == "__main__":
    main()
