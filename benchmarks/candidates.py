"""Scoring many candidates for one user: ``encode_user`` once + ``score`` of all candidates, against
forward passes with each candidate as the target.

For each ranking model and history length ``L``, one user with ``L`` random behaviors and ``K`` (200)
random candidates, eval mode, no gradients:

- encode_user + score: the user's state once, then all K candidates in one ``score`` call;
- K-row forward: one forward pass over K rows, each a copy of the user's history with one candidate as
  its target (what a ranking service without the split would batch);
- K single-row forwards: forward passes of one row each, K times the median of ``--single-passes``
  passes (all K by default; fewer keep slow rows short).

Each (model, L) row runs in a fresh process (``--in-process`` runs them all in this one): a model
measured after others inherits their heap and thread-pool state, which made the same DIN row up to a
third slower than alone. Times are medians over ``--repeats`` runs (the two ways interleaved, so that load from other processes
falls on both alike) after one warm-up run, in milliseconds; the speed-up is the forward time over the
encode_user + score time. Each row also checks that both give the same scores (max |difference| of
the logits). Models have their default sizes (``embedding_dim`` 32, MLPs (200, 80)), 100,000 items and
1,000 categories, random (untrained) weights: the cost does not depend on the weights.

    python benchmarks/candidates.py [--threads 2] [--repeats 5] [--lengths 50,1000] [--candidates 200]
        [--models din,dien,...] [--single-passes 200] [--out docs/results/candidates.md] [--in-process]
"""

from __future__ import annotations

import argparse
import datetime
import json
import platform
import statistics
import subprocess
import sys
import time
from pathlib import Path

import torch

from lifelong.batch import Batch
from lifelong.models import MODELS, build_model
from lifelong.models.ranking import Candidates

ROOT = Path(__file__).resolve().parents[1]
N_ITEMS, N_CATES = 100_000, 1_000


def user_and_candidates(length: int, k: int, seed: int = 0) -> tuple[Batch, Batch, Candidates]:
    """One user's history as a one-row batch, the same history copied into K rows (one candidate each as
    the target), and the K candidates."""
    g = torch.Generator().manual_seed(seed)
    items = torch.randint(2, N_ITEMS, (1, length), generator=g)
    cates = torch.randint(2, N_CATES, (1, length), generator=g)
    times = 1_700_000_000 + torch.cumsum(torch.randint(1, 3_600, (1, length), generator=g), dim=1)
    now = times[:, -1] + 60
    candidates = Candidates(items=torch.randint(2, N_ITEMS, (1, k), generator=g),
                            cates=torch.randint(2, N_CATES, (1, k), generator=g), timestamps=now)

    def rows(n: int, target_items: torch.Tensor, target_cates: torch.Tensor) -> Batch:
        return Batch(history_items=items.expand(n, -1).contiguous(), history_cates=cates.expand(n, -1).contiguous(),
                     history_mask=torch.ones(n, length, dtype=torch.bool), target_items=target_items,
                     target_cates=target_cates, labels=torch.zeros(n), users=torch.zeros(n, dtype=torch.long),
                     history_timestamps=times.expand(n, -1).contiguous(), timestamps=now.expand(n).contiguous())

    one = rows(1, candidates.items[0, :1], candidates.cates[0, :1])
    copies = rows(k, candidates.items[0], candidates.cates[0])
    return one, copies, candidates


def median_ms(runs: dict, repeats: int) -> dict:
    """Median wall time (ms) of each run over ``repeats``, the runs interleaved (so that load from other
    processes falls on all of them alike), after one warm-up run each."""
    times = {name: [] for name in runs}
    for run in runs.values():
        run()
    for _ in range(repeats):
        for name, run in runs.items():
            start = time.perf_counter()
            run()
            times[name].append(time.perf_counter() - start)
    return {name: 1000 * statistics.median(values) for name, values in times.items()}


def single_rows_ms(model, copies: Batch, k: int, passes: int) -> float:
    """K one-row forward passes: K times the median of ``passes`` passes (the first candidates, one each)."""
    rows = [Batch(**{name: (value[j : j + 1] if isinstance(value, torch.Tensor) else value)
                     for name, value in vars(copies).items()}) for j in range(min(passes, k))]
    model(rows[0])  # warm-up
    times = []
    for row in rows:
        start = time.perf_counter()
        model(row)
        times.append(time.perf_counter() - start)
    return 1000 * k * statistics.median(times)


def measure(name: str, length: int, k: int, repeats: int, single_passes: int) -> dict:
    torch.manual_seed(0)
    model = build_model({"model_type": name, "n_items": N_ITEMS, "n_cates": N_CATES}).eval()
    one, copies, candidates = user_and_candidates(length, k)
    with torch.no_grad():
        split = model.score(model.encode_user(one), candidates)[0]  # (K,)
        forward = model(copies).logits  # (K,)
        times = median_ms({"split_ms": lambda: model.score(model.encode_user(one), candidates),
                           "batched_ms": lambda: model(copies)}, repeats)
        return {"model": name, "L": length, "K": k, "max_abs_diff": float((split - forward).abs().max()), **times,
                "single_ms": single_rows_ms(model, copies, k, single_passes) if single_passes > 0 else None}


def table(rows: list[dict], k: int) -> str:
    lines = [f"| model | L | encode_user + score of {k} (ms) | {k}-row forward (ms) | speed-up | "
             f"{k} single-row forwards (ms) | speed-up | max \\|Δ logit\\| |",
             "| --- | ---: | ---: | ---: | ---: | ---: | ---: | ---: |"]
    for r in rows:
        single = (f"{r['single_ms']:,.1f} | {r['single_ms'] / r['split_ms']:,.1f}x" if r["single_ms"] is not None
                  else "not run | -")
        lines.append(f"| {r['model']} | {r['L']:,} | {r['split_ms']:,.1f} | {r['batched_ms']:,.1f} | "
                     f"{r['batched_ms'] / r['split_ms']:,.1f}x | {single} | {r['max_abs_diff']:.1e} |")
    return "\n".join(lines)


def provenance(threads: int) -> str:
    try:
        commit = subprocess.run(["git", "-C", str(ROOT), "rev-parse", "--short", "HEAD"], capture_output=True,
                                text=True, check=True).stdout.strip()
        dirty = subprocess.run(["git", "-C", str(ROOT), "status", "--porcelain"], capture_output=True, text=True,
                               check=True).stdout.strip()
        commit += " (with uncommitted changes)" if dirty else ""
    except (OSError, subprocess.CalledProcessError):
        commit = "unknown"
    cpu = platform.processor()
    if Path("/proc/cpuinfo").exists():
        cpu = next((line.split(":", 1)[1].strip() for line in Path("/proc/cpuinfo").read_text().splitlines()
                    if line.startswith("model name")), cpu)
    return (f"torch {torch.__version__}, {threads} torch thread(s), CPU: {cpu}; "
            f"{datetime.date.today().isoformat()}, commit {commit}")


def results_page(title: str, body: str, threads: int, note: str = "") -> str:
    """A results page: ``title``, the command line that ran this benchmark with :func:`provenance` and
    ``note``, then ``body``."""
    command = f"python benchmarks/{Path(sys.argv[0]).name} " + " ".join(sys.argv[1:])
    head = f"`{command.strip()}`: {provenance(threads)}." + (f" {note}" if note else "")
    return f"# {title}\n\n{head}\n\n{body.strip()}\n"


def write_page(path: Path, text: str) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(text)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ranking = sorted(name for name, (config, _) in MODELS.items() if config.task == "ctr")
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--repeats", type=int, default=5)
    parser.add_argument("--lengths", default="50,1000", help="history lengths L, comma-separated")
    parser.add_argument("--candidates", type=int, default=200, help="K, candidates per user")
    parser.add_argument("--models", default=",".join(ranking), help=f"comma-separated, from {ranking}")
    parser.add_argument("--single-passes", type=int, default=None,
                        help="single-row passes timed (K times their median is reported); default K, 0 skips them")
    parser.add_argument("--out", type=Path, help="also write the table (markdown) to this file")
    parser.add_argument("--in-process", action="store_true",
                        help="measure every row in this process (default: each row in a fresh one)")
    parser.add_argument("--row", help=argparse.SUPPRESS)  # internal: measure one MODEL:L row, print it as JSON
    args = parser.parse_args()
    models = [m for m in args.models.split(",") if m]
    unknown = sorted(set(models) - set(ranking))
    if unknown:
        parser.error(f"not ranking models: {unknown}; choose from {ranking}")
    single_passes = args.candidates if args.single_passes is None else args.single_passes
    torch.set_num_threads(args.threads)
    if args.row:
        name, length = args.row.split(":")
        print(json.dumps(measure(name, int(length), args.candidates, args.repeats, single_passes)))
        return
    print(f"threads: {torch.get_num_threads()}", file=sys.stderr)
    rows = []
    for length in (int(v) for v in args.lengths.split(",")):
        for name in models:
            if args.in_process:
                rows.append(measure(name, length, args.candidates, args.repeats, single_passes))
            else:
                command = [sys.executable, __file__, "--row", f"{name}:{length}", "--threads", str(args.threads),
                           "--repeats", str(args.repeats), "--candidates", str(args.candidates),
                           "--single-passes", str(single_passes)]
                done = subprocess.run(command, capture_output=True, text=True)
                if done.returncode != 0:
                    sys.exit(f"{name} L={length} failed:\n{done.stderr}")
                rows.append(json.loads(done.stdout.strip().splitlines()[-1]))
            print(f"{name} L={length}: done", file=sys.stderr)
    text = results_page(
        f"Scoring {args.candidates} candidates for one user", table(rows, args.candidates), torch.get_num_threads(),
        f"{'All rows in one process' if args.in_process else 'Each row in a fresh process'}; medians of "
        f"{args.repeats} runs (after a warm-up), eval mode, no gradients; default model sizes, random weights. "
        f"Speed-up: forward time / encode_user + score time; single-row forwards: {args.candidates} x the "
        f"median of {single_passes} passes. See the script's docstring.")
    print(text)
    if args.out:
        write_page(args.out, text)


if __name__ == "__main__":
    main()
