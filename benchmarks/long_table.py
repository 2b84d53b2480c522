"""The lifelong results table (issue 28): DIN over the last 50 events, DIN with full attention (where it
fits), SIM hard and soft, ETA, SDIM and TWIN under protocol P5 ``ctr-long`` on the Taobao user-behavior
sample (L = 200 and 500), MovieLens-100K (L = 200) and the lifelong synthetic log (L = 1,000 and 10,000);
test AUC, GAUC and logloss, mean ± std over seeds, and a plot of test AUC by history length L.

Every number comes from the CLI commands this script runs and prints. Model selection (early stopping)
reads the validation split only; the table reports the test metrics of the best validation epoch.
Finished runs are reused (rerun the script to continue an interrupted table; ``--fresh`` starts over).

    python benchmarks/long_table.py [--tables taobao200,taobao500,ml100k200,synth1k,synth10k]
        [--models din50,din,sim_hard,sim_soft,eta,sdim,twin] [--seeds 2024] [--epochs 4] [--jobs 2]
        [--workdir runs/long-table] [--report-only] [--fresh]

Outputs in the workdir: ``table.json`` (one row per run), ``table.md`` and ``auc_by_length.png``;
``--out docs/results/long_table.md`` also writes the markdown there.
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent))
from ctr_table import SHARED, lifelong, results_of, run, shown, workdir  # noqa: E402

ROOT = Path(__file__).resolve().parents[1]

# synthetic-lifelong specs (lifelong_log's arguments): every user has more events than the longest L
SYNTHETIC = {
    "synth1k": {"n_users": 1000, "events_per_user": [1_100, 2_000], "seed": 0},
    "synth10k": {"n_users": 500, "events_per_user": [10_100, 12_000], "seed": 0},
}
SOURCES = {  # prepared dataset -> prepare arguments (P5 ctr-long)
    "taobao": ["--recipe", "taobao-userbehavior", "--input",
               str(SHARED / "taobao-userbehavior" / "UserBehavior_head.csv")],
    "ml100k": ["--recipe", "movielens", "--input", str(SHARED / "movielens-100k")],
    "synth1k": ["--recipe", "synthetic-lifelong"],
    "synth10k": ["--recipe", "synthetic-lifelong"],
}
TABLES = {  # table -> (prepared dataset, L)
    "taobao200": ("taobao", 200), "taobao500": ("taobao", 500), "ml100k200": ("ml100k", 200),
    "synth1k": ("synth1k", 1_000), "synth10k": ("synth10k", 10_000),
}
MODELS = {  # row -> (model type, options, L override)
    "din50": ("din", [], 50),
    "din": ("din", [], None),
    "sim_hard": ("sim", ["search=hard"], None),
    "sim_soft": ("sim", ["search=soft"], None),
    "eta": ("eta", [], None),
    "sdim": ("sdim", [], None),
    "twin": ("twin", [], None),
}
LABELS = {"din50": "DIN (L=50)", "din": "DIN (full attention)", "sim_hard": "SIM hard", "sim_soft": "SIM soft",
          "eta": "ETA", "sdim": "SDIM", "twin": "TWIN"}
DIN_FULL_MAX = 1_000  # DIN's full attention over longer histories does not fit this machine's budget
# Shared settings: embedding 32 per id, batch 256, Adam 3e-3, the datasets' declared features.
SETTINGS = ["--batch-size", "256", "--lr", "0.003", "--set", "embedding_dim=32"]


def prepare_command(work: Path, source: str) -> list[str]:
    args = list(SOURCES[source])
    if source in SYNTHETIC:
        spec = work / f"{source}.json"
        spec.write_text(json.dumps(SYNTHETIC[source]))
        args += ["--input", str(spec)]
    return lifelong("prepare", *args, "--protocol", "ctr-long", "--out", str(work / "data" / source), "--overwrite")


def train_command(work: Path, table: str, row: str, seed: str, args) -> tuple[Path, list[str]]:
    source, length = TABLES[table]
    model, options, override = MODELS[row]
    out = work / "runs" / f"{table}-{row}-{seed}"
    command = lifelong("train", "--data", str(work / "data" / source), "--model", model, "--out", str(out),
                       "--seed", seed, "--epochs", str(args.epochs), "--patience", str(args.patience),
                       "--max-length", str(override or length), *SETTINGS,
                       *[a for o in options for a in ("--set", o)], "--threads", args.threads, "--no-progress")
    return out, command


def finished(out: Path) -> bool:
    return (out / "results.json").exists()


def summarise(rows: list[dict], tables: list[str], models: list[str]) -> str:
    lines = ["| data (P5), table L | L read | model | test AUC | test GAUC | test logloss | best epochs | seeds |",
             "|---|---:|---|---|---|---|---|---:|"]
    for table in tables:
        for row in models:
            group = [r for r in rows if r["table"] == table and r["row"] == row]
            if not group:
                continue
            cells = []
            for metric in ("auc", "gauc", "logloss"):
                values = [r[metric] for r in group]
                cells.append(f"{np.mean(values):.4f} ± {np.std(values, ddof=1):.4f}" if len(values) > 1
                             else f"{values[0]:.4f}")
            lines.append(f"| {TABLES[table][0]}, {TABLES[table][1]:,} | {group[0]['L']:,} | {LABELS[row]} | "
                         f"{' | '.join(cells)} | "
                         f"{', '.join(str(r['best_epoch']) for r in group)} | {len(group)} |")
    return "\n".join(lines)


def plot(rows: list[dict], models: list[str], path: Path) -> None:
    try:
        import matplotlib
    except ImportError:
        print(f"no plot ({path.name}): matplotlib is not installed (make install-report)", flush=True)
        return
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, axes = plt.subplots(1, 2, figsize=(11, 4.5), dpi=120)
    for ax, sources in zip(axes, (("taobao", "ml100k"), ("synth1k", "synth10k"))):
        for row in models:
            for source in sources:
                points = sorted({r["L"] for r in rows if r["row"] == row and r["source"] == source})
                if not points:
                    continue
                means = [np.mean([r["auc"] for r in rows if r["row"] == row and r["source"] == source and r["L"] == L])
                         for L in points]
                ax.plot(points, means, marker="o", label=f"{LABELS[row]} ({source})")
        ax.set_xscale("log")
        ax.set_xlabel("history length L (events read)")
        ax.set_ylabel("test AUC (mean over seeds)")
        ax.grid(alpha=0.3)
        ax.legend(fontsize=7)
    axes[0].set_title("P5 Taobao sample and MovieLens-100K")
    axes[1].set_title("P5 lifelong synthetic log")
    fig.tight_layout()
    fig.savefig(path)
    plt.close(fig)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--tables", default=",".join(TABLES))
    parser.add_argument("--models", default=",".join(MODELS))
    parser.add_argument("--seeds", default="2024")
    parser.add_argument("--epochs", type=int, default=4)
    parser.add_argument("--patience", type=int, default=2)
    parser.add_argument("--jobs", type=int, default=2, help="training processes at once")
    parser.add_argument("--threads", default="1", help="torch threads per training process")
    parser.add_argument("--fresh", action="store_true", help="retrain runs that already finished")
    parser.add_argument("--report-only", action="store_true", help="train nothing: the table of the finished runs")
    parser.add_argument("--workdir", type=Path, default=ROOT / "runs" / "long-table")
    parser.add_argument("--out", type=Path, help="also write the markdown table here")
    args = parser.parse_args()
    work = workdir(args.workdir, "long_table")
    tables, models, seeds = args.tables.split(","), args.models.split(","), args.seeds.split(",")
    unknown = sorted(set(tables) - set(TABLES)) + sorted(set(models) - set(MODELS))
    if unknown:
        parser.error(f"unknown tables or models: {unknown}; tables: {sorted(TABLES)}, models: {sorted(MODELS)}")

    for source in dict.fromkeys(TABLES[t][0] for t in tables):
        command = prepare_command(work, source)
        if not args.report_only and (args.fresh or not (work / "data" / source / "manifest.json").exists()):
            run(command)
        print(f"$ {shown(command)}", flush=True)

    jobs = [(t, m, s) for s in seeds for t in tables for m in models
            if not (m == "din" and TABLES[t][1] > DIN_FULL_MAX)]
    started = time.time()

    def one(job):
        table, row, seed = job
        out, command = train_command(work, table, row, seed, args)
        result = results_of(out, command, finished(out) and not args.fresh, args.report_only)
        if result is None:
            return None
        print(f"[{(time.time() - started) / 60:6.1f} min] {table} {LABELS[row]} seed {seed}: test AUC "
              f"{result['test']['auc']:.4f} (best epoch {result['best_epoch']}, "
              f"{result['train_samples_per_s']:,.0f} samples/s)", flush=True)
        source, length = TABLES[table]
        return {"table": table, "source": source, "L": MODELS[row][2] or length, "row": row, "model": LABELS[row],
                "seed": seed, **result["test"], "valid_auc": result["valid"]["auc"], "best_epoch": result["best_epoch"],
                "train_samples_per_s": result["train_samples_per_s"], "command": shown(command),
                **({"commit": result["commit"]} if result.get("commit") else {})}

    with ThreadPoolExecutor(max_workers=args.jobs) as pool:
        rows = [r for r in pool.map(one, jobs) if r is not None]
    (work / "table.json").write_text(json.dumps(rows, indent=2))
    header = (f"P5 ctr-long, test metrics (mean ± sample std over seeds where there are several); embedding 32 per "
              f"id, batch 256, Adam 3e-3, at most {args.epochs} epochs with early stopping on validation AUC "
              f"(patience {args.patience}); DIN (L=50) reads the last 50 events, every other row the last L. "
              f"Commands in table.json.")
    text = header + "\n\n" + summarise(rows, tables, models) + "\n"
    (work / "table.md").write_text(text)
    if args.out:  # the markdown and its rows (JSON) side by side; the plot next to them
        args.out.parent.mkdir(parents=True, exist_ok=True)
        args.out.write_text("# Lifelong sequences: P5 results\n\n" + text)
        args.out.with_suffix(".json").write_text(json.dumps(rows, indent=2))
    print("\n" + text)
    plot(rows, models, work / "auc_by_length.png")
    if args.out and (work / "auc_by_length.png").exists():
        (args.out.parent / "long_auc_by_length.png").write_bytes((work / "auc_by_length.png").read_bytes())
        with args.out.open("a") as out:
            out.write("\n![test AUC by history length](long_auc_by_length.png)\n")


if __name__ == "__main__":
    main()
