"""The README's CTR results table: each model on P1 Beauty, P1 Sports, P1 MovieLens-100K and P4 Taobao.

Every number comes from the CLI commands this script runs and prints (the same ones a user types).
Model selection (early stopping) uses the validation split only; the table reports test metrics of the
best validation epoch. ``--repeat`` runs everything a second time and reports the largest difference
(the reproducibility bar: a rerun with the same seed reproduces each number within 0.002).

    python benchmarks/ctr_table.py [--models sumpool,din] [--datasets beauty,sports,ml100k,taobao]
                                   [--seeds 2024] [--repeat] [--workdir runs/table]
"""

from __future__ import annotations

import argparse
import json
import shlex
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
SHARED = ROOT.parent / "shared" / "data"

DATASETS = {
    "beauty": ("P1 ctr-din", ["--recipe", "amazon-s3rec", "--input", str(SHARED / "amazon-beauty")]),
    "sports": ("P1 ctr-din", ["--recipe", "amazon-s3rec", "--input", str(SHARED / "amazon-sports")]),
    "ml100k": ("P1 ctr-din", ["--recipe", "movielens", "--input", str(SHARED / "movielens-100k")]),
    "taobao": ("P4 ctr-time", ["--recipe", "taobao-userbehavior", "--input",
                               str(SHARED / "taobao-userbehavior" / "UserBehavior_head.csv"), "--protocol", "ctr-time"]),
}

# Shared training settings of the table (the FuxiCTR comparison settings of the foundation issue, plus
# the mini-batch aware regulariser, whose weight was chosen on P1 Beauty's validation split).
TRAIN = ["--epochs", "12", "--patience", "2", "--batch-size", "1024", "--lr", "0.001", "--max-length", "50",
         "--set", "embedding_dim=32", "--set", "l2_mba=0.1"]

# A model spec is NAME or NAME:key=value:key=value (model options), e.g. din:attention_normalization=softmax.
DEFAULT_MODELS = "sumpool,din,din:attention_normalization=softmax"


def parse_spec(spec: str) -> tuple[str, str, list[str]]:
    """(label, model name, --set arguments) of a model spec."""
    name, *options = spec.split(":")
    label = name + (f" ({', '.join(o.split('=')[1] for o in options)})" if options else "")
    return label, name, [a for o in options for a in ("--set", o)]


def lifelong(*args: str) -> list[str]:
    return [sys.executable, "-m", "lifelong", *args]


def shown(command: list[str]) -> str:
    text = " ".join(shlex.quote(a) for a in ["lifelong", *command[3:]])
    return text.replace(str(SHARED), "../shared/data").replace(str(ROOT) + "/", "")


def run(command: list[str]) -> None:
    done = subprocess.run(command, cwd=ROOT, capture_output=True, text=True)
    if done.returncode != 0:
        raise SystemExit(f"failed: {shown(command)}\n{done.stdout[-2000:]}\n{done.stderr[-4000:]}")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--models", default=DEFAULT_MODELS)
    parser.add_argument("--threads", default="2")
    parser.add_argument("--compare", type=Path, help="a table.json of an earlier run: report the largest difference")
    parser.add_argument("--datasets", default=",".join(DATASETS))
    parser.add_argument("--seeds", default="2024")
    parser.add_argument("--repeat", action="store_true", help="run everything twice and report the largest difference")
    parser.add_argument("--workdir", type=Path, default=ROOT / "runs" / "table")
    args = parser.parse_args()
    work = args.workdir
    work.mkdir(parents=True, exist_ok=True)
    rows = []
    for dataset in args.datasets.split(","):
        protocol, recipe = DATASETS[dataset]
        data = work / "data" / dataset
        prepare = lifelong("prepare", *recipe, "--out", str(data), "--overwrite")
        run(prepare)
        print(f"$ {shown(prepare)}", flush=True)
        for spec in args.models.split(","):
            label, model, model_args = parse_spec(spec)
            for seed in args.seeds.split(","):
                results = []
                for attempt in range(2 if args.repeat else 1):
                    out = work / "runs" / f"{dataset}-{spec.replace(':', '-').replace('=', '')}-{seed}-{attempt}"
                    subprocess.run(["rm", "-rf", str(out)], check=True)
                    train = lifelong("train", "--data", str(data), "--model", model, "--out", str(out),
                                     "--seed", seed, *TRAIN, *model_args, "--threads", args.threads, "--no-progress",
                                     "--results-csv", str(work / "results.csv"))
                    run(train)
                    commands = [shown(train)] if attempt == 0 else commands
                    results.append(json.loads((out / "results.json").read_text()))
                test = results[0]["test"]
                drift = max((abs(r["test"][m] - test[m]) for r in results[1:] for m in ("auc", "gauc", "logloss")),
                            default=None)
                rows.append({"dataset": dataset, "protocol": protocol, "model": label, "seed": seed, **test,
                             "best_epoch": results[0]["best_epoch"], "rerun_max_diff": drift,
                             "command": commands[0]})
                print(f"$ {rows[-1]['command']}\n  test AUC {test['auc']:.4f} GAUC {test['gauc']:.4f} "
                      f"logloss {test['logloss']:.4f} (best epoch {results[0]['best_epoch']})"
                      + (f", rerun max diff {drift:.5f}" if drift is not None else ""), flush=True)

    print("\n| dataset | protocol | model | seed | test AUC | test GAUC | test logloss | best epoch |"
          + (" rerun max diff |" if args.repeat else ""))
    print("|---|---|---|---|---|---|---|---|" + ("---|" if args.repeat else ""))
    for r in rows:
        print(f"| {r['dataset']} | {r['protocol']} | {r['model']} | {r['seed']} | {r['auc']:.4f} | {r['gauc']:.4f} "
              f"| {r['logloss']:.4f} | {r['best_epoch']} |" + (f" {r['rerun_max_diff']:.5f} |" if args.repeat else ""))
    (work / "table.json").write_text(json.dumps(rows, indent=2))
    if args.compare:
        earlier = {(r["dataset"], r["model"], r["seed"]): r for r in json.loads(args.compare.read_text())}
        print(f"\nrerun against {args.compare}:")
        for r in rows:
            before = earlier.get((r["dataset"], r["model"], r["seed"]))
            if before:
                diff = max(abs(r[m] - before[m]) for m in ("auc", "gauc", "logloss"))
                print(f"  {r['dataset']:<8} {r['model']:<18} seed {r['seed']}: max |diff| over AUC/GAUC/logloss = {diff:.5f}")


if __name__ == "__main__":
    main()
