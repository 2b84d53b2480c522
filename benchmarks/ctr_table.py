"""The CTR results table (docs/results/ctr_table.md): every CTR model on P1 Beauty, P1 Sports, P1 MovieLens-100K and P4
Taobao, test AUC / GAUC / logloss as mean ± std over seeds, plus a plot of test AUC by history length
on Beauty.

Every number comes from the CLI commands this script runs and prints (the same ones a user types).
Model selection (early stopping) uses the validation split only; the table reports the test metrics of
the best validation epoch. Finished runs (a ``results.json`` in their folder) are reused, so an
interrupted table continues where it stopped; ``--fresh`` starts over.

    python benchmarks/ctr_table.py [--models SPEC,...] [--datasets beauty,sports,ml100k,taobao]
        [--seeds 2024,2025,2026] [--epochs 2] [--lr LR] [--jobs 2] [--threads 1]
        [--workdir runs/ctr-table] [--repeat] [--fresh] [--report-only]

A model SPEC is NAME or NAME:key=value:key=value (model options), e.g. ``dien:aux_weight=0``.
Outputs in the workdir: ``table.json`` (one row per run), ``table.md`` (the table) and
``auc_by_length_beauty.png``.
"""

from __future__ import annotations

import argparse
import json
import shlex
import subprocess
import sys
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import numpy as np

from lifelong.errors import UserError
from lifelong.outputs import claim_workdir

ROOT = Path(__file__).resolve().parents[1]


def workdir(path: Path, script: str) -> Path:
    """The script's --workdir, claimed for table scripts only (never a folder of the user's files)."""
    try:
        return claim_workdir(path, script)
    except UserError as error:
        raise SystemExit(f"error: {error}") from None
SHARED = ROOT.parent / "shared" / "data"

DATASETS = {
    "beauty": ("P1 ctr-din", ["--recipe", "amazon-s3rec", "--input", str(SHARED / "amazon-beauty")]),
    "sports": ("P1 ctr-din", ["--recipe", "amazon-s3rec", "--input", str(SHARED / "amazon-sports")]),
    "ml100k": ("P1 ctr-din", ["--recipe", "movielens", "--input", str(SHARED / "movielens-100k")]),
    "taobao": ("P4 ctr-time", ["--recipe", "taobao-userbehavior", "--input",
                               str(SHARED / "taobao-userbehavior" / "UserBehavior_head.csv"), "--protocol", "ctr-time"]),
}

# Shared training settings of every row: L=50, embedding 32 per id, batch 1024, Adam, early stopping on
# validation AUC, and the mini-batch aware regulariser (weight chosen on P1 Beauty's validation split).
SETTINGS = ["--batch-size", "1024", "--max-length", "50", "--set", "embedding_dim=32", "--set", "l2_mba=0.1"]
# Adam learning rate per dataset, chosen on validation AUC of din (softmax) after 2-3 epochs among 1e-3, 3e-3
# and 6e-3 on P1 Beauty (3e-3, also used for Sports and ML-100K) and P4 Taobao (6e-3: fewest steps per epoch).
LEARNING_RATES = {"beauty": "0.003", "sports": "0.003", "ml100k": "0.003", "taobao": "0.006"}

LABELS = {
    "din:attention_normalization=softmax": "din (softmax)",
    "dien:aux_weight=0": "dien (no aux loss)",
    "diffumin:use_diffusion=false": "diffumin (no diffusion)",
    "din:attention_normalization=softmax:user_features=false:item_features=false:context_features=false":
        "din (softmax), ids only",
    "dien:user_features=false:item_features=false:context_features=false": "dien, ids only",
}
# ``--models features`` is the features on/off comparison (docs/results/features_table.md): every model
# reads the dataset's declared features by default; "ids only" turns all three groups off.
FEATURE_MODELS = ",".join(f"{spec},{spec}:user_features=false:item_features=false:context_features=false"
                          for spec in ("din:attention_normalization=softmax", "dien"))
DEFAULT_MODELS = ("sumpool,din:attention_normalization=softmax,dien,dien:aux_weight=0,tin,bst,diffumin,"
                  "diffumin:use_diffusion=false")
LENGTH_BUCKETS = [(1, 2), (3, 4), (5, 6), (7, 9), (10, 14), (15, 24), (25, 50)]


def label_of(spec: str) -> str:
    return LABELS.get(spec, spec.replace(":", " "))


def lifelong(*args: str) -> list[str]:
    return [sys.executable, "-m", "lifelong", *args]


def shown(command: list[str]) -> str:
    text = " ".join(shlex.quote(a) for a in ["lifelong", *command[3:]])
    return text.replace(str(SHARED), "../shared/data").replace(str(ROOT) + "/", "")


class RunFailed(RuntimeError):
    pass


def git_commit() -> str | None:
    """The checkout's commit (``+dirty``: with uncommitted changes), recorded in the JSON row of each run
    trained by this invocation (a reused run's commit is not known here, so its row has none)."""
    try:
        head = subprocess.run(["git", "rev-parse", "--short", "HEAD"], cwd=ROOT, capture_output=True, text=True,
                              check=True).stdout.strip()
        dirty = subprocess.run(["git", "status", "--porcelain", "--untracked-files=no"], cwd=ROOT,
                               capture_output=True, text=True, check=True).stdout.strip()
    except (OSError, subprocess.CalledProcessError):
        return None
    return head + ("+dirty" if dirty else "")


def run(command: list[str]) -> None:
    done = subprocess.run(command, cwd=ROOT, capture_output=True, text=True)
    if done.returncode != 0:
        raise RunFailed(f"failed: {shown(command)}\n{done.stdout[-2000:]}\n{done.stderr[-4000:]}")


def results_of(out: Path, command: list[str], finished: bool, report_only: bool) -> dict | None:
    """A run's ``results.json``: trained first (in an emptied folder) unless ``finished``; None when it is
    missing under ``report_only`` or its training failed (the failure is printed)."""
    if not finished:
        if report_only:
            return None
        subprocess.run(["rm", "-rf", str(out)], check=True)
        try:
            run(command)
        except RunFailed as error:
            print(error, flush=True)
            return None
        return {**json.loads((out / "results.json").read_text()), "commit": git_commit()}
    return json.loads((out / "results.json").read_text())


def train_command(work: Path, dataset: str, spec: str, seed: str, attempt: int, args) -> tuple[Path, list[str]]:
    name, *options = spec.split(":")
    out = work / "runs" / f"{dataset}-{spec.replace(':', '-').replace('=', '')}-{seed}" / f"try{attempt}"
    command = lifelong("train", "--data", str(work / "data" / dataset), "--model", name, "--out", str(out),
                       "--seed", seed, "--epochs", str(args.epochs), "--patience", str(args.patience),
                       "--lr", args.lr or LEARNING_RATES[dataset], *SETTINGS,
                       *[a for o in options for a in ("--set", o)], "--threads", args.threads, "--no-progress",
                       "--results-csv", str(work / "results.csv"))
    if dataset == "beauty":
        command.append("--save-predictions")
    return out, command


def finished_with(out: Path, command: list[str]) -> bool:
    """Whether ``out`` holds a finished run trained with the options of ``command`` (else: retrain)."""
    if not (out / "results.json").exists():
        return False
    saved = json.loads((out / "config.json").read_text())["train"]
    wanted = {flag: command[command.index(flag) + 1] for flag in ("--lr", "--epochs", "--patience", "--seed")}
    return (float(saved["lr"]) == float(wanted["--lr"]) and saved["epochs"] == int(wanted["--epochs"])
            and saved["patience"] == int(wanted["--patience"]) and saved["seed"] == int(wanted["--seed"]))


def bucket_aucs(path: Path) -> list[float]:
    from lifelong.metrics import auc

    data = np.load(path)
    out = []
    for low, high in LENGTH_BUCKETS:
        keep = (data["history_length"] >= low) & (data["history_length"] <= high)
        labels = data["label"][keep]
        out.append(auc(labels, data["logit"][keep]) if 0 < labels.sum() < labels.shape[0] else float("nan"))
    return out


def summarise(rows: list[dict], models: list[str], datasets: list[str]) -> tuple[str, list[dict]]:
    lines = ["| dataset | protocol | model | test AUC | test GAUC | test logloss | best epochs | runs |",
             "|---|---|---|---|---|---|---|---|"]
    summary = []
    for dataset in datasets:
        base = None
        for spec in models:
            group = [r for r in rows if r["dataset"] == dataset and r["spec"] == spec]
            if not group:
                continue
            stats = {m: (float(np.mean([r[m] for r in group])), float(np.std([r[m] for r in group], ddof=1))
                         if len(group) > 1 else float("nan")) for m in ("auc", "gauc", "logloss")}
            if spec == "sumpool":
                base = stats["auc"][0]
            gain = f" ({stats['auc'][0] - base:+.4f})" if base is not None and spec != "sumpool" else ""
            cells = [f"{stats[m][0]:.4f} ± {stats[m][1]:.4f}" if len(group) > 1 else f"{stats[m][0]:.4f}"
                     for m in ("auc", "gauc", "logloss")]
            lines.append(f"| {dataset} | {group[0]['protocol']} | {label_of(spec)} | {cells[0]}{gain} | {cells[1]} "
                         f"| {cells[2]} | {', '.join(str(r['best_epoch']) for r in group)} | {len(group)} |")
            summary.append({"dataset": dataset, "model": label_of(spec), "spec": spec, "runs": len(group),
                            **{f"{m}_mean": v[0] for m, v in stats.items()},
                            **{f"{m}_std": v[1] for m, v in stats.items()}})
    return "\n".join(lines), summary


def plot(rows: list[dict], models: list[str], path: Path) -> None:
    try:
        import matplotlib
    except ImportError:  # the table is written already; the plot needs the report extra
        print(f"no plot ({path.name}): matplotlib is not installed (make install-report)", flush=True)
        return

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    measured = [r for r in rows if r["dataset"] == "beauty" and r.get("bucket_auc")]
    if not measured:
        return
    counts = measured[0]["bucket_count"]
    keep = [i for i, count in enumerate(counts) if count > 0]  # P1 Beauty has no test history under 3
    fig, ax = plt.subplots(figsize=(9, 5.2), dpi=120)
    x = np.arange(len(keep))
    for spec in models:
        group = [r for r in measured if r["spec"] == spec]
        if not group:
            continue
        values = np.array([r["bucket_auc"] for r in group])[:, keep]  # (seeds, buckets)
        ax.errorbar(x, values.mean(axis=0), yerr=values.std(axis=0, ddof=1) if len(group) > 1 else None,
                    marker="o", capsize=3, label=label_of(spec), linewidth=1.6 if spec != "sumpool" else 2.4,
                    linestyle="--" if spec == "sumpool" else "-")
    labels = [f"{LENGTH_BUCKETS[i][0]}–{LENGTH_BUCKETS[i][1]}\n(n={counts[i]:,})" for i in keep]
    ax.set_xticks(x, labels, fontsize=8)
    ax.set_xlabel("history length (events before the target, capped at L=50)")
    ax.set_ylabel("test AUC (mean over seeds, ± std)")
    ax.set_title("P1 Amazon Beauty: test AUC by history length")
    ax.grid(alpha=0.3)
    ax.legend(fontsize=8, ncol=2, loc="lower right")
    fig.tight_layout()
    fig.savefig(path)
    plt.close(fig)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--models", default=DEFAULT_MODELS)
    parser.add_argument("--datasets", default="beauty,ml100k,taobao,sports")
    parser.add_argument("--seeds", default="2024,2025,2026")
    parser.add_argument("--epochs", type=int, default=2)
    parser.add_argument("--patience", type=int, default=2)
    parser.add_argument("--lr", help="one Adam learning rate for every dataset (default: LEARNING_RATES)")
    parser.add_argument("--jobs", type=int, default=2, help="training processes at once")
    parser.add_argument("--threads", default="1", help="torch threads per training process")
    parser.add_argument("--repeat", action="store_true", help="train every run a second time; report the largest difference")
    parser.add_argument("--fresh", action="store_true", help="retrain runs that already finished")
    parser.add_argument("--report-only", action="store_true", help="train nothing: the table of the finished runs")
    parser.add_argument("--workdir", type=Path, default=ROOT / "runs" / "ctr-table")
    args = parser.parse_args()
    work = workdir(args.workdir, "ctr_table")
    models = (FEATURE_MODELS if args.models == "features" else args.models).split(",")
    datasets, seeds = args.datasets.split(","), args.seeds.split(",")

    for dataset in datasets:
        data = work / "data" / dataset
        prepare = lifelong("prepare", *DATASETS[dataset][1], "--out", str(data), "--overwrite")
        if not args.report_only and (args.fresh or not (data / "manifest.json").exists()):
            run(prepare)
        print(f"$ {shown(prepare)}", flush=True)

    # seed-major: every dataset and model gets its first seed before any gets a second, so an interrupted
    # table (rerun it to continue) still covers every row
    jobs = [(d, s, seed, attempt) for seed in seeds for d in datasets for s in models
            for attempt in range(2 if args.repeat else 1)]
    started = time.time()

    def one(job):
        dataset, spec, seed, attempt = job
        out, command = train_command(work, dataset, spec, seed, attempt, args)
        if args.report_only and not finished_with(out, command):
            return None
        trained = args.fresh or not finished_with(out, command)
        if trained:
            subprocess.run(["rm", "-rf", str(out)], check=True)
            try:
                run(command)
            except RunFailed as error:  # report it, let the other runs go on; the table leaves it out
                print(error, flush=True)
                return None
        result = json.loads((out / "results.json").read_text())
        if trained:
            result["commit"] = git_commit()
        print(f"[{(time.time() - started) / 60:5.1f} min] {dataset} {label_of(spec)} seed {seed}: test AUC "
              f"{result['test']['auc']:.4f} (best epoch {result['best_epoch']}, "
              f"{result['train_samples_per_s']:,.0f} samples/s)", flush=True)
        return job, out, command, result

    with ThreadPoolExecutor(max_workers=args.jobs) as pool:
        outcomes = list(pool.map(one, jobs))
    finished = [o for o in outcomes if o is not None]
    failed = [job for job, o in zip(jobs, outcomes) if o is None]

    rows = []
    order = {(d, s, seed): i for i, (d, s, seed) in enumerate((d, s, seed) for d in datasets for s in models for seed in seeds)}
    finished.sort(key=lambda f: order[f[0][:3]])
    for (dataset, spec, seed, attempt), out, command, result in finished:
        if attempt:
            continue
        row = {"dataset": dataset, "protocol": DATASETS[dataset][0], "spec": spec, "model": label_of(spec),
               "seed": seed, **result["test"], "valid_auc": result["valid"]["auc"],
               "best_epoch": result["best_epoch"], "train_samples_per_s": result["train_samples_per_s"],
               "command": shown(command), **({"commit": result["commit"]} if result.get("commit") else {})}
        if (out / "test_predictions.npz").exists():
            lengths = np.load(out / "test_predictions.npz")["history_length"]
            row["bucket_auc"] = bucket_aucs(out / "test_predictions.npz")
            row["bucket_count"] = [int(((lengths >= lo) & (lengths <= hi)).sum()) for lo, hi in LENGTH_BUCKETS]
        again = [r for (d, s, sd, a), _, _, r in finished if (d, s, sd) == (dataset, spec, seed) and a]
        if again:
            row["rerun_max_diff"] = max(abs(again[0]["test"][m] - result["test"][m]) for m in ("auc", "gauc", "logloss"))
        rows.append(row)
    (work / "table.json").write_text(json.dumps(rows, indent=2))  # benchmarks/readme_table.py reads it

    table, summary = summarise(rows, models, datasets)
    header = (f"Test metrics, mean ± sample std over seeds {', '.join(seeds)}; L=50, embedding 32 per id "
              f"(a behavior is item ⊕ category = 64), batch 1024, Adam (lr "
              f"{args.lr or '3e-3; 6e-3 on Taobao'}), l2_mba 0.1, at most "
              f"{args.epochs} epochs with early stopping on validation AUC (patience {args.patience}). "
              f"In brackets: the gain over sumpool's mean test AUC.")
    (work / "table.md").write_text(header + "\n\n" + table + "\n")
    (work / "summary.json").write_text(json.dumps(summary, indent=2))
    print("\n" + header + "\n\n" + table)
    if args.repeat:
        print(f"\nrerun max |diff| over AUC/GAUC/logloss: {max(r.get('rerun_max_diff', 0) for r in rows):.5f}")
    if "beauty" in datasets:
        plot(rows, models, work / "auc_by_length_beauty.png")
        print(f"\nplot: {work / 'auc_by_length_beauty.png'}")
    print("\nCommands (one per run):")
    for r in rows:
        print(f"    {r['command']}")
    if failed:
        what = "not run yet (--report-only)" if args.report_only else "failed"
        print(f"\n{len(failed)} run(s) {what}, missing from the table:")
        for dataset, spec, seed, _ in failed:
            print(f"    {dataset} {label_of(spec)} seed {seed}")
        if not args.report_only:
            raise SystemExit(1)


if __name__ == "__main__":
    main()
