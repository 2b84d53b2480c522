"""ComiRec's aggregation module on a trained run: the accuracy / diversity trade-off of its factor lambda.

For each lambda, the run's best checkpoint retrieves every test user's top 20 / 50 (P3, full catalogue)
with the greedy aggregation ``sum f(u, i) + lambda * sum g(i, j)`` (g = 1 for items of different
categories) over the union of the per-interest top-K lists, and the table reports Recall / NDCG at 50 and
the lists' category diversity (share of item pairs in different categories). lambda = 0 is the plain
merge by score, the P3 result of the run.

    python benchmarks/mi_diversity.py --run runs/mi-table/runs/beauty-comirec_sa-2024 [--lambdas 0,0.05,0.1,0.2,0.5]
        [--threads 2]
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path

import torch

from lifelong.dataset.store import load_dataset
from lifelong.models import build_model
from lifelong.train import TrainConfig
from lifelong.train.checkpoint import load_weights
from lifelong.train.run import check_run_dataset, read_run, run_dataset_path
from lifelong.train.retrieval import evaluate_mi


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--run", type=Path, required=True, help="a P3 run folder of comirec_dr or comirec_sa")
    parser.add_argument("--lambdas", default="0,0.05,0.1,0.2,0.5")
    parser.add_argument("--threads", type=int, default=2)
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    resolved = read_run(args.run)
    config = TrainConfig.from_dict(resolved["train"])
    config.data = run_dataset_path(resolved)
    dataset = load_dataset(config.data)
    check_run_dataset(resolved, dataset, args.run)  # the dataset is still the one the run was trained on
    model_config = json.loads((args.run / "checkpoints" / "best" / "config.json").read_text())
    if "diversity" not in model_config:
        raise SystemExit(f"{args.run} is a {model_config['model_type']} run; the aggregation module is ComiRec's")
    rows = []
    for value in (float(v) for v in args.lambdas.split(",")):
        model = build_model({**model_config, "diversity": value})
        load_weights(args.run / "checkpoints" / "best", model)
        metrics = evaluate_mi(model, config, dataset, dataset.samples("test"))
        rows.append((value, metrics))
        print(f"lambda {value}: Recall@50 {metrics['recall@50']:.4f}, diversity {metrics['top50_category_diversity']:.4f}",
              flush=True)
    print(f"\n{model_config['model_type']} run {args.run.name} (seed {config.seed}), P3 test users "
          f"({rows[0][1]['n']:,}), {args.threads} threads\n")
    print("| lambda | Recall@20 | Recall@50 | NDCG@50 | HR@50 | top-20 diversity | top-50 diversity |")
    print("|---|---|---|---|---|---|---|")
    for value, m in rows:
        print(f"| {value:g} | {m['recall@20']:.4f} | {m['recall@50']:.4f} | {m['ndcg@50']:.4f} | {m['hitrate@50']:.4f} "
              f"| {m['top20_category_diversity']:.4f} | {m['top50_category_diversity']:.4f} |")


if __name__ == "__main__":
    main()
