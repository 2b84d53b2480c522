"""Long histories: scoring latency with the user side cached, and peak memory of a training step.

``latency``: for each model and history length ``L``, one user with ``L`` random behaviors, its state
from ``encode_user`` computed once (cached, as serving does), then ``--requests`` calls of ``score`` with
``K`` (200) random candidates each, eval mode, no gradients, interleaved round-robin over all (model,
L) and a DIN over 50 events (the baseline row); p50 and p99 in milliseconds. Models have their default
sizes (``embedding_dim`` 32), 100,000 items, 1,000 categories, random weights.

``memory``: one training step (forward, backward, Adam) on a batch of ``--batch`` users with histories
of ``--train-length`` events, in a fresh process per model; the peak resident set size of the whole
process (``ru_maxrss``) and of a process that only builds the model and the batch.

    python benchmarks/long_history.py latency [--models sdim,eta,sim,twin] [--lengths 1000,100000] [--threads 2]
    python benchmarks/long_history.py memory [--models ...] [--batch 32] [--train-length 10000] [--threads 2]
    (either with --options '{"search": "soft"}' for config overrides)
"""

from __future__ import annotations

import argparse
import json
import resource
import subprocess
import sys
import time

import torch
import torch.nn.functional as F

from lifelong.batch import Batch
from lifelong.models import build_model
from lifelong.models.ranking import Candidates

N_ITEMS, N_CATES = 100_000, 1_000


def batch_of(users: int, length: int, seed: int = 0) -> Batch:
    """``users`` random full histories of ``length`` events (with times), random targets and labels."""
    g = torch.Generator().manual_seed(seed)
    times = 1_700_000_000 + torch.cumsum(torch.randint(1, 3_600, (users, length), generator=g), dim=1)
    return Batch(history_items=torch.randint(2, N_ITEMS, (users, length), generator=g),
                 history_cates=torch.randint(2, N_CATES, (users, length), generator=g),
                 history_mask=torch.ones(users, length, dtype=torch.bool),
                 target_items=torch.randint(2, N_ITEMS, (users,), generator=g),
                 target_cates=torch.randint(2, N_CATES, (users,), generator=g),
                 labels=(torch.arange(users) % 2).float(), users=torch.arange(users),
                 history_timestamps=times, timestamps=times[:, -1] + 60)


def model_of(name: str, options: dict | None = None):
    torch.manual_seed(0)
    return build_model({"model_type": name, "n_items": N_ITEMS, "n_cates": N_CATES, **(options or {})})


def latency(names: list[str], lengths: list[int], k: int, requests: int, options: dict | None = None) -> list[dict]:
    """p50/p99 of ``score`` for every (model, L), the requests interleaved round-robin over all of them (so that
    load from other processes falls on all alike), with DIN over 50 events as the baseline row."""
    setups = [("din", 50)] + [(name, length) for name in names for length in lengths]
    states = {}
    with torch.no_grad():
        for name, length in setups:
            model = model_of(name, None if name == "din" else options).eval()
            batch = batch_of(1, length)
            states[name, length] = (model, model.encode_user(batch), batch.timestamps)
    g = torch.Generator().manual_seed(1)
    times = {setup: [] for setup in setups}
    with torch.no_grad():
        for step in range(requests + 10):
            candidates = Candidates(items=torch.randint(2, N_ITEMS, (1, k), generator=g),
                                    cates=torch.randint(2, N_CATES, (1, k), generator=g))
            for setup in setups:
                model, state, now = states[setup]
                candidates.timestamps = now
                start = time.perf_counter()
                model.score(state, candidates)
                if step >= 10:  # warm-up
                    times[setup].append(1e3 * (time.perf_counter() - start))
    rows = []
    for (name, length), values in times.items():
        values.sort()
        rows.append({"model": name, **(options or {}), "L": length, "K": k, "p50_ms": round(values[len(values) // 2], 2),
                     "p99_ms": round(values[int(0.99 * (len(values) - 1))], 2)})
    return rows


def train_step(name: str, users: int, length: int, build_only: bool, options: dict | None = None) -> dict:
    model = model_of(name, options).train()
    batch = batch_of(users, length)
    optimizer = torch.optim.Adam(model.parameters(), lr=1e-3)
    if not build_only:
        output = model(batch)
        loss = F.binary_cross_entropy_with_logits(output.logits, batch.labels) + sum(output.aux_losses.values())
        loss.backward()
        optimizer.step()
    return {"model": name, **(options or {}), "B": users, "L": length, "build_only": build_only,
            "peak_rss_mb": round(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024)}


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("what", choices=["latency", "memory", "step"])
    parser.add_argument("--models", default="sdim,eta,sim,twin")
    parser.add_argument("--lengths", default="1000,100000")
    parser.add_argument("--candidates", type=int, default=200)
    parser.add_argument("--requests", type=int, default=200)
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--batch", type=int, default=32)
    parser.add_argument("--train-length", type=int, default=10_000)
    parser.add_argument("--build-only", action="store_true")
    parser.add_argument("--options", default="{}", help="config overrides as JSON, e.g. '{\"search\": \"soft\"}'")
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    names, options = args.models.split(","), json.loads(args.options)
    if args.what == "latency":
        for row in latency(names, list(map(int, args.lengths.split(","))), args.candidates, args.requests, options):
            print(json.dumps(row), flush=True)
    elif args.what == "step":
        print(json.dumps(train_step(names[0], args.batch, args.train_length, args.build_only, options)))
    else:  # each model (and its baseline) in a fresh process: ru_maxrss is a high-water mark
        for name in names:
            for build_only in (True, False):
                command = [sys.executable, __file__, "step", "--models", name, "--batch", str(args.batch),
                           "--train-length", str(args.train_length), "--threads", str(args.threads), "--options", args.options]
                out = subprocess.run(command + (["--build-only"] if build_only else []), capture_output=True,
                                     text=True, check=True)
                print(out.stdout.strip(), flush=True)


if __name__ == "__main__":
    main()
