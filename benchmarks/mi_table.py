"""The multi-interest retrieval table (docs/results/mi_table.md): the single-interest baseline and every multi-interest model
on P3 ``mi-split`` Amazon Beauty, Amazon Sports and MovieLens-100K (users split 8:1:1; a held-out user's
first 80% of behaviors retrieve the rest over the full catalogue), Recall / NDCG / HitRate at 20 and 50
as mean ± std over seeds, beside the interests' redundancy (mean pairwise cosine, HCN's claim) and HSIC
(DESMIL's), the category diversity of the top 50 and how many of the user's own input items it holds.
Every model runs as its paper trains it and again with ``history_negatives`` (its own input items as
extra negatives of each sample's softmax); ComiRec-SA also runs with MIND's label-aware attention power
2, the setting chosen on Sports validation (docs/results/notes/mi_table.md). A second table runs the DESMIL rows and their
plain counterparts on the *shifted* split (users ordered by their last event: the earliest 80% train,
the latest 10% are tested).

Every number comes from the CLI commands this script runs and prints. Model selection (early stopping)
uses validation Recall@50 only; the table reports the test metrics of the best validation epoch. Finished
runs are reused, so an interrupted table continues where it stopped.

    python benchmarks/mi_table.py [--models SPEC,...] [--datasets beauty,sports,ml100k]
        [--shifted-models SPEC,...] [--shifted-datasets ml100k,beauty] [--seeds 2024,2025,2026]
        [--epochs 30] [--patience 3] [--jobs 1] [--threads 2] [--workdir runs/mi-table] [--report-only]

A SPEC is NAME or NAME:key=value:... (model options; the training flags ``lr``, ``batch_size``,
``epochs``, ``patience``; ``desmil=1`` for DESMIL's sample weighting), e.g. ``comirec_sa:desmil=1``.
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
from ctr_table import SHARED, lifelong, results_of, run, shown, workdir  # noqa: E402  (same runner as the CTR table)

ROOT = Path(__file__).resolve().parents[1]
SOURCES = {
    "beauty": ["--recipe", "amazon-s3rec", "--input", str(SHARED / "amazon-beauty")],
    "sports": ["--recipe", "amazon-s3rec", "--input", str(SHARED / "amazon-sports")],
    "ml100k": ["--recipe", "movielens", "--input", str(SHARED / "movielens-100k")],
}
# ComiRec's settings: D = 64, K = 4, batch 128, Adam 1e-3, truncation 50 (its Taobao setting)
SETTINGS = ["--batch-size", "128", "--max-length", "50", "--lr", "0.001", "--set", "embedding_dim=64"]
TRAIN_FLAGS = {"lr": "--lr", "batch_size": "--batch-size", "epochs": "--epochs", "patience": "--patience"}
# ComiRec-DR at lr 0.005, the default of ComiRec's code for DR (as released with the paper)
# then every model again with its own history items as extra negatives of the sampled softmax
# (``history_negatives``, an option of ours, not of the papers), and ComiRec's linear baseline tower
PLAIN = "youtube_dnn,youtube_dnn:hidden=[],mind,comirec_dr:lr=0.005,comirec_sa,hcn,knn_embed"
HN = ":history_negatives=true"
# ComiRec-SA with MIND's soft label-aware attention (power 2), chosen on Sports validation (docs/results/notes/mi_table.md)
BEST = "comirec_sa:label_power=2"
DEFAULT_MODELS = ",".join([PLAIN, "comirec_sa:desmil=1", *(spec + HN for spec in PLAIN.split(",")), BEST, BEST + HN])
DEFAULT_SHIFTED = ",".join(["comirec_sa", "comirec_sa:desmil=1", BEST + HN, BEST + HN + ":desmil=1"])
METRICS = ("recall@20", "ndcg@20", "hitrate@20", "recall@50", "ndcg@50", "hitrate@50")
REPORTS = ("interest_redundancy", "interest_hsic", "top50_category_diversity", "top50_history_items")


def label_of(spec: str) -> str:
    return spec.replace(HN, " + history negatives").replace(":", " ").replace("desmil=1", "+ DESMIL")


def train_command(work: Path, dataset: str, spec: str, seed: str, args) -> tuple[Path, list[str]]:
    name, *options = spec.split(":")
    out = work / "runs" / f"{dataset}-{spec.replace(':', '-').replace('=', '')}-{seed}"
    settings = ["--epochs", str(args.epochs), "--patience", str(args.patience), *SETTINGS]
    for option in [o for o in options if o.split("=")[0] in TRAIN_FLAGS]:  # e.g. lr=0.005 -> --lr 0.005
        key, value = option.split("=")
        settings[settings.index(TRAIN_FLAGS[key]) + 1] = value
    desmil = "desmil=1" in options
    model_options = [o for o in options if o.split("=")[0] not in TRAIN_FLAGS and o != "desmil=1"]
    command = lifelong("train", "--data", str(work / "data" / dataset), "--model", name, "--out", str(out),
                       "--seed", seed, *settings, *[a for o in model_options for a in ("--set", o)],
                       "--threads", args.threads, "--no-progress", "--results-csv", str(work / "results.csv"),
                       *(["--desmil"] if desmil else []))
    return out, command


def finished_with(out: Path, command: list[str]) -> bool:
    """A finished run of the same command; a run that stopped early (patience) before its epoch cap is
    also the run of any larger cap (training is deterministic given the seed)."""
    if not (out / "results.json").exists():
        return False
    saved = json.loads((out / "config.json").read_text())["train"]
    wanted = {flag: int(command[command.index(flag) + 1]) for flag in ("--epochs", "--patience", "--seed")}
    epochs_run = json.loads((out / "results.json").read_text())["epochs_run"]
    same_cap = saved["epochs"] == wanted["--epochs"] or epochs_run < saved["epochs"] <= wanted["--epochs"]
    return same_cap and saved["patience"] == wanted["--patience"] and saved["seed"] == wanted["--seed"]


def cell(values: list[float]) -> str:
    values = [v for v in values if v is not None]
    if not values:
        return ""
    return f"{np.mean(values):.4f} ± {np.std(values, ddof=1):.4f}" if len(values) > 1 else f"{values[0]:.4f}"


def summarise(rows: list[dict], specs: list[str], datasets: list[str]) -> str:
    names = [m.replace("hitrate", "HR").replace("recall", "R").replace("ndcg", "N") for m in METRICS]
    lines = ["| dataset | model | " + " | ".join(names) + " | redundancy | HSIC | top-50 cat. diversity "
             "| history items in top 50 | valid R@50 | best epochs | runs |", "|---" * (len(METRICS) + 9) + "|"]
    for dataset in datasets:
        for spec in specs:
            group = [r for r in rows if r["dataset"] == dataset and r["spec"] == spec]
            if not group:
                continue
            cells = [cell([r[m] for r in group]) for m in (*METRICS, *REPORTS, "valid_recall@50")]
            lines.append(f"| {dataset} | {label_of(spec)} | " + " | ".join(cells)
                         + f" | {', '.join(str(r['best_epoch']) for r in group)} | {len(group)} |")
            single = [r["single"] for r in group if r.get("single")]
            if single:  # kNN-Embed: the same models' single-embedding query at the same K
                cells = [cell([s[m] for s in single]) for m in METRICS] + ["", "", cell(
                    [s["top50_category_diversity"] for s in single]), "", ""]
                lines.append(f"| {dataset} | {label_of(spec)}, *single-embedding query* | " + " | ".join(cells)
                             + f" | | {len(single)} |")
            hsic = [r["train_hsic"] for r in group if r.get("train_hsic")]
            if hsic:  # DESMIL: batch HSIC in training under uniform and under the learned sample weights
                lines.append(f"| {dataset} | {label_of(spec)}, *training batch HSIC: uniform {cell([h[0] for h in hsic])}"
                             f" → reweighted {cell([h[1] for h in hsic])}* |" + " |" * (len(METRICS) + 7))
    return "\n".join(lines)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--models", default=DEFAULT_MODELS)
    parser.add_argument("--datasets", default="beauty,sports,ml100k")
    parser.add_argument("--shifted-models", default=DEFAULT_SHIFTED)
    parser.add_argument("--shifted-datasets", default="ml100k,beauty")
    parser.add_argument("--seeds", default="2024,2025,2026")
    parser.add_argument("--epochs", type=int, default=30)
    parser.add_argument("--patience", type=int, default=3)
    parser.add_argument("--jobs", type=int, default=1, help="training processes at once")
    parser.add_argument("--threads", default="2", help="torch threads per training process")
    parser.add_argument("--report-only", action="store_true", help="train nothing: the table of the finished runs")
    parser.add_argument("--workdir", type=Path, default=ROOT / "runs" / "mi-table")
    args = parser.parse_args()
    work = workdir(args.workdir, "mi_table")
    models, seeds = args.models.split(","), args.seeds.split(",")
    datasets = [d for d in args.datasets.split(",") if d]
    shifted_models = [m for m in args.shifted_models.split(",") if m]
    shifted = [f"{d}-shifted" for d in args.shifted_datasets.split(",") if d] if shifted_models else []
    for dataset in datasets + shifted:
        data = work / "data" / dataset
        order = ["--user-order", "time"] if dataset.endswith("-shifted") else []
        prepare = lifelong("prepare", *SOURCES[dataset.removesuffix("-shifted")], "--protocol", "mi-split", *order,
                           "--out", str(data), "--overwrite")
        if not args.report_only and not (data / "manifest.json").exists():
            run(prepare)
        print(f"$ {shown(prepare)}", flush=True)

    jobs = [(d, s, seed) for seed in seeds for d in datasets for s in models]
    jobs += [(d, s, seed) for seed in seeds for d in shifted for s in shifted_models]
    started = time.time()

    def one(job):
        dataset, spec, seed = job
        out, command = train_command(work, dataset, spec, seed, args)
        result = results_of(out, command, finished_with(out, command), args.report_only)
        if result is None:
            return None
        late = spec.startswith("knn_embed") and "single_recall@50" not in result["test"]
        if late or "top50_history_items" not in result["test"]:  # a run from before these reports
            if not (out / "eval_test.json").exists():
                run(lifelong("evaluate", str(out), "--split", "test"))
            evaluated = json.loads((out / "eval_test.json").read_text())
            result["test"].update({k: v for k, v in evaluated.items()
                                   if k.startswith("single_") or k == "top50_history_items"})
        print(f"[{(time.time() - started) / 60:6.1f} min] {dataset} {label_of(spec)} seed {seed}: test Recall@50 "
              f"{result['test']['recall@50']:.4f} NDCG@50 {result['test']['ndcg@50']:.4f} (best epoch "
              f"{result['best_epoch']})", flush=True)
        saved = json.loads((out / "config.json").read_text())["command"]  # as run (threads, paths)
        return job, saved.replace(str(SHARED), "../shared/data").replace(str(ROOT) + "/", ""), result

    with ThreadPoolExecutor(max_workers=args.jobs) as pool:
        outcomes = list(pool.map(one, jobs))
    rows = [{"dataset": d, "spec": s, "seed": seed, "loss": r["loss"], "best_epoch": r["best_epoch"],
             **{m: r["test"].get(m) for m in (*METRICS, *REPORTS)}, "valid_recall@50": r["valid"]["recall@50"],
             "command": c, **({"commit": r["commit"]} if r.get("commit") else {}),
             "single": {m: r["test"][f"single_{m}"] for m in (*METRICS, "top50_category_diversity")}
             if "single_recall@50" in r["test"] else None,
             "train_hsic": [r["train_hsic_uniform"], r["train_hsic_weighted"]] if "train_hsic_uniform" in r else None}
            for (d, s, seed), c, r in (o for o in outcomes if o is not None)]
    (work / "table.json").write_text(json.dumps(rows, indent=2))
    header = (f"P3 mi-split (users 8:1:1; a held-out user's first 80% of behaviors retrieve the rest; full "
              f"catalogue, nothing masked): test metrics at the best validation Recall@50, mean ± sample std over "
              f"the seeds run (of {', '.join(seeds)}; `runs` column). D = 64, K = 4, L = 50, batch 128, Adam 1e-3, "
              f"sampled softmax (1,280 shared uniform negatives), at most {args.epochs} epochs, patience "
              f"{args.patience}, unless the row names others. Redundancy: mean pairwise cosine of a user's "
              f"interests; HSIC: summed over interest pairs (random Fourier features) on up to 2,048 test users; "
              f"diversity: share of top-50 item pairs in different categories; valid R@50: the selection metric at "
              f"the best epoch; history items: how many of the user's own input items its top 50 holds (the "
              f"targets are the items after the input). *+ history negatives*: each training sample's own history items are also "
              f"negatives of its softmax (`--set history_negatives=true`, our option, not the papers').")
    table = summarise(rows, models, datasets)
    text = header + "\n\n" + table + "\n"
    if shifted:
        text += ("\nShifted split (`--user-order time`: users ordered by their last event; the latest 10% are the "
                 "test users), the DESMIL rows beside their plain counterparts:\n\n"
                 + summarise(rows, shifted_models, shifted) + "\n")
    (work / "table.md").write_text(text)
    print("\n" + text + "\nCommands:")
    for r in rows:
        print(f"    {r['command']}")
    missing = [job for job, o in zip(jobs, outcomes) if o is None]
    if missing:
        print(f"\n{len(missing)} run(s) missing from the table: " + ", ".join(f"{d} {s} {seed}" for d, s, seed in missing))


if __name__ == "__main__":
    main()
