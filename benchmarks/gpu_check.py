"""GPU check: DIN under P1 and SASRec under P2, one epoch each on CUDA and on the CPU with the same seed;
the metrics of the two devices must agree (float non-determinism aside).

    python benchmarks/gpu_check.py [--users 3000] [--epochs 1] [--tolerance 0.01] [--workdir runs/gpu-check]
        [--recipe amazon-s3rec --input ../shared/data/amazon-beauty]   # real data instead of the synthetic log

Without a real log it prepares the embedded synthetic log (lifelong.data.synthetic), so it runs on a
machine that has only the checkout. Prints one markdown table (device, model, metrics, seconds) and
exits 1 when a metric differs by more than the tolerance, 2 when there is no CUDA device.
"""

from __future__ import annotations

import argparse
import shutil
import sys
import time
from pathlib import Path

import torch

from lifelong.data import load_recipe
from lifelong.data.schema import EventLog
from lifelong.data.synthetic import synthetic_log
from lifelong.pipeline import ProtocolOptions, prepare
from lifelong.train import TrainConfig, train

ROOT = Path(__file__).resolve().parents[1]
CHECKS = (  # (protocol, model, model options, metrics compared)
    ("ctr-din", "din", {"embedding_dim": 32}, ("auc", "gauc", "logloss")),
    ("seq-loo", "sasrec", {"embedding_dim": 64, "loss": "full"}, ("hr@10", "ndcg@10", "ndcg@20")),
)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--users", type=int, default=3000, help="synthetic users (without --recipe)")
    parser.add_argument("--recipe")
    parser.add_argument("--input", type=Path)
    parser.add_argument("--epochs", type=int, default=1)
    parser.add_argument("--seed", type=int, default=2024)
    parser.add_argument("--tolerance", type=float, default=0.01)
    parser.add_argument("--threads", type=int, default=4, help="CPU threads of the CPU runs")
    parser.add_argument("--workdir", type=Path, default=ROOT / "runs" / "gpu-check")
    args = parser.parse_args()
    if not torch.cuda.is_available():
        print(f"no CUDA device (torch {torch.__version__}, CUDA build {torch.version.cuda}): nothing to check",
              file=sys.stderr)
        sys.exit(2)
    torch.set_num_threads(args.threads)
    if args.recipe:
        log = load_recipe(args.recipe, args.input)
    else:
        events, items = synthetic_log(n_users=args.users, seed=args.seed)
        log = EventLog(events=events, items=items, sources=[], rejected=None, recipe="synthetic")
    work = args.workdir
    rows, failures = [], []
    for protocol, model, options, names in CHECKS:
        data = work / f"data-{protocol}"
        if not (data / "manifest.json").exists():
            prepare(log, data, ProtocolOptions(name=protocol, seed=args.seed))
        results = {}
        for device in ("cuda", "cpu"):
            out = work / f"{model}-{device}"
            if (out / "config.json").exists():
                shutil.rmtree(out)  # this script's own run folder of an earlier check
            started = time.perf_counter()
            result = train(TrainConfig(data=str(data), model=model, out=str(out), epochs=args.epochs, device=device,
                                       seed=args.seed, batch_size=1024 if protocol == "ctr-din" else 256,
                                       progress=False, model_options=options))
            results[device] = result["test"]
            rows.append((device, model, protocol, {k: result["test"][k] for k in names},
                         time.perf_counter() - started))
        for name in names:
            gap = abs(results["cuda"][name] - results["cpu"][name])
            if gap > args.tolerance:
                failures.append(f"{model} {name}: cuda {results['cuda'][name]:.4f} vs cpu {results['cpu'][name]:.4f}")
    print(f"\nGPU check on {torch.cuda.get_device_name(0)} (torch {torch.__version__}), {args.epochs} epoch(s), seed "
          f"{args.seed}, {'synthetic log of ' + str(args.users) + ' users' if not args.recipe else args.input}; "
          f"CPU runs with {args.threads} threads\n")
    print("| device | model | protocol | test metrics | seconds |")
    print("|---|---|---|---|---|")
    for device, model, protocol, metrics, seconds in rows:
        shown = ", ".join(f"{k} {v:.4f}" for k, v in metrics.items())
        print(f"| {device} | {model} | {protocol} | {shown} | {seconds:.1f} |")
    if failures:
        print("\nCUDA and CPU disagree beyond the tolerance:\n  " + "\n  ".join(failures))
        sys.exit(1)
    print(f"\nCUDA and CPU agree within {args.tolerance} on every metric")


if __name__ == "__main__":
    main()
