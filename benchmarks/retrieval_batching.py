"""Training speed of the retrieval loop's length-bucketed batches (P2): one epoch of SASRec on the P2
training windows, batches drawn by length (what ``lifelong train`` does) against the baseline in the
same run, random batches padded to their longest window. Prints a table: training targets per second
(median of --repeats epochs), ratio, and the padding share of the batches.

    python benchmarks/retrieval_batching.py [--data runs/seq-table/data/beauty] [--loss sampled]
        [--batch-size 64] [--threads 2] [--repeats 3]

The data folder is prepared with --protocol seq-loo when it does not exist.
"""

from __future__ import annotations

import argparse
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import torch

ROOT = Path(__file__).resolve().parents[1]
SHARED = ROOT.parent / "shared" / "data"


def one_epoch(model, optimizer, collator, windows, order, batch_size):
    from lifelong.batch import iterate_batches

    model.train()
    targets, cells = 0, 0
    started = time.perf_counter()
    for batch in iterate_batches(collator, windows, batch_size, order):
        output = model(batch)
        optimizer.zero_grad(set_to_none=True)
        output.loss.backward()
        optimizer.step()
        targets += int(batch.lengths.sum())
        cells += batch.history_mask.numel()
    return targets / (time.perf_counter() - started), 1 - targets / cells


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--data", type=Path, default=ROOT / "runs" / "seq-table" / "data" / "beauty")
    parser.add_argument("--loss", default="sampled")
    parser.add_argument("--batch-size", type=int, default=64)
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--repeats", type=int, default=3)
    args = parser.parse_args()
    if not (args.data / "manifest.json").exists():
        subprocess.run([sys.executable, "-m", "lifelong", "prepare", "--recipe", "amazon-s3rec", "--input",
                        str(SHARED / "amazon-beauty"), "--protocol", "seq-loo", "--out", str(args.data)], check=True)
    from lifelong.batch import Collator, length_bucketed_order
    from lifelong.dataset.store import load_dataset
    from lifelong.models import build_model
    from lifelong.protocols import training_windows

    torch.set_num_threads(args.threads)
    dataset = load_dataset(args.data)
    windows = training_windows(dataset.samples("train"), dataset.offsets, dataset.event_items, 50)
    lengths = np.minimum(windows.end, 50)
    collator = Collator(dataset, 50)
    n_items = dataset.vocab_sizes["item"]
    results = {"random batches (baseline)": [], "length-bucketed batches (lifelong)": []}
    for repeat in range(args.repeats):
        for name in results:
            torch.manual_seed(repeat)
            model = build_model({"model_type": "sasrec", "n_items": n_items, "n_cates": 2, "loss": args.loss})
            optimizer = torch.optim.Adam(model.parameters(), lr=1e-3)
            rng = np.random.default_rng(repeat)
            order = rng.permutation(len(windows))
            if name.startswith("length"):
                order = length_bucketed_order(order, lengths, args.batch_size, rng)
            results[name].append(one_epoch(model, optimizer, collator, windows, order, args.batch_size))
    baseline = np.median([r[0] for r in results["random batches (baseline)"]])
    print(f"SASRec (d=64, 2 blocks, loss {args.loss}), one epoch of {len(windows):,} P2 training windows "
          f"({int(lengths.sum()):,} targets), batch {args.batch_size}, {args.threads} threads, median of {args.repeats}\n")
    print("| batches | targets/s | ratio | padding share |\n|---|---|---|---|")
    for name, runs in results.items():
        speed = float(np.median([r[0] for r in runs]))
        print(f"| {name} | {speed:,.0f} | {speed / baseline:.2f}× | {np.median([r[1] for r in runs]):.0%} |")


if __name__ == "__main__":
    main()
