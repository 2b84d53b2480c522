"""Full-ranking evaluation speed (P2): rank every test user's target over the whole catalogue, history
items masked, as `lifelong train` does at the end of a run. Prints a table: seconds per full pass
(median of --repeats), users/s, and the ratio against a baseline measured in the same run that sorts
each chunk's score matrix (``torch.argsort``, what top-K style evaluators do) instead of counting.

    python benchmarks/ranking_speed.py [--data runs/seq-table/data/beauty] [--run RUN_DIR]
        [--threads 2] [--repeats 5]

Without --run, a freshly initialised SASRec (d=64, 2 blocks) is ranked: the cost does not depend on
the weights. The data folder is prepared with --protocol seq-loo when it does not exist.
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import torch

ROOT = Path(__file__).resolve().parents[1]
SHARED = ROOT.parent / "shared" / "data"


def argsort_ranks(model, collator, samples, chunk):
    """Baseline: sort every row of the score matrix, find the target's position."""
    from lifelong.train.ranking import FIRST_RANKED, history_cells

    items = model.item_vectors()
    out = []
    # the same chunks as rank_targets (users by history length), so both rank the same score matrices
    from lifelong.batch import length_order

    by_length = length_order(samples, collator.max_length)
    for begin in range(0, len(samples), chunk):
        part = samples.subset(by_length[begin : begin + chunk])
        batch = collator(part)
        scores = model.score(model.user_vectors(batch), items)
        scores[:, :FIRST_RANKED] = float("-inf")
        rows, seen = history_cells(collator.dataset, part)
        scores[torch.from_numpy(rows), torch.from_numpy(seen)] = float("-inf")
        order = torch.argsort(scores, dim=1, descending=True, stable=True)
        out.append((order == batch.target_items.unsqueeze(1)).int().argmax(dim=1).numpy())
    ranks = np.zeros(len(samples), np.int64)
    ranks[by_length] = np.concatenate(out)
    return ranks


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--data", type=Path, default=ROOT / "runs" / "seq-table" / "data" / "beauty")
    parser.add_argument("--run", type=Path, help="a finished run folder (its best checkpoint is ranked)")
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--repeats", type=int, default=5)
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    if not (args.data / "manifest.json").exists():
        subprocess.run([sys.executable, "-m", "lifelong", "prepare", "--recipe", "amazon-s3rec", "--input",
                        str(SHARED / "amazon-beauty"), "--protocol", "seq-loo", "--out", str(args.data)], check=True)

    from lifelong.batch import Collator
    from lifelong.dataset.store import load_dataset
    from lifelong.models import build_model
    from lifelong.train.checkpoint import load_weights
    from lifelong.train.ranking import rank_targets
    from lifelong.train.retrieval import SCORE_CELLS

    dataset = load_dataset(args.data)
    if args.run:
        from lifelong.train.run import check_run_dataset, read_run

        check_run_dataset(read_run(args.run), dataset, args.run)  # the run was trained on this --data
        config = json.loads((args.run / "checkpoints" / "best" / "config.json").read_text())
        model = build_model(config)
        load_weights(args.run / "checkpoints" / "best", model)
    else:
        torch.manual_seed(0)
        model = build_model({"model_type": "sasrec", "n_items": dataset.vocab_sizes["item"],
                             "n_cates": dataset.vocab_sizes.get("cate", 2), "embedding_dim": 64})
    model.eval()
    test = dataset.samples("test")
    collator = Collator(dataset, 50)
    n_items = dataset.vocab_sizes["item"]
    chunk = SCORE_CELLS // n_items

    def timed(fn):
        times, result = [], None
        for _ in range(args.repeats):
            started = time.perf_counter()
            with torch.no_grad():
                result = fn()
            times.append(time.perf_counter() - started)
        return float(np.median(times)), result

    ours, ranks = timed(lambda: rank_targets(model, collator, test, chunk))
    base, base_ranks = timed(lambda: argsort_ranks(model, collator, test, chunk))
    same = bool((np.minimum(ranks, n_items) == np.minimum(base_ranks, n_items))[ranks < n_items].all())
    print(f"P2 test split of {args.data.name}: {len(test):,} users x {n_items - 2:,} items, chunk {chunk:,} users, "
          f"{args.threads} threads, median of {args.repeats}")
    print("| method | seconds | users/s | ratio to baseline |")
    print("|---|---|---|---|")
    print(f"| lifelong rank_targets (count higher scores) | {ours:.2f} | {len(test) / ours:,.0f} | {base / ours:.2f}x faster |")
    print(f"| baseline: argsort each chunk | {base:.2f} | {len(test) / base:,.0f} | 1.00x |")
    print(f"ranks identical where the target is rankable: {same} "
          f"({int((ranks != base_ranks)[ranks < n_items].sum())} of {int((ranks < n_items).sum()):,} differ)")


if __name__ == "__main__":
    main()
