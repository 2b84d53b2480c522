"""The cost of long histories: training speed and memory, and the latency of scoring 200 candidates, for
DIN with full attention and the search-based models (SIM hard and soft, ETA, SDIM, TWIN) at
L = 1,000, 10,000 and 100,000 events.

``train``: one training step (forward, backward, Adam) on a batch of ``--batch`` samples with histories
of ``L`` random events, ``--steps`` steps after one warm-up step, each (model, L) in a fresh process;
samples per second (median step) and the peak resident set size of the process (``ru_maxrss``, which
includes the model, the optimizer state and the batch), for L up to 10,000.

``score``: ``--users`` (4) users with ``L`` behaviors each, ``--requests`` requests of ``K`` (200) random
candidates, eval mode, no gradients: ``request`` computes the user side in the request (``encode_user`` +
``score``), ``cached`` takes the state from a cache (``score`` alone), as a service does. As a service
runs, one model at a time serves all its requests, each for the next user in rotation (so a request
does not find its user's state in the CPU's caches); ``--interleave`` instead runs the requests
round-robin over all (model, L) of a process with one user each (the first method of this script: load
from other processes falls on all models alike, but every request also finds the caches full of the
other models' tables). p50 and p99 in milliseconds. DIN with full attention over 100,000 events costs
seconds per request and is skipped there (``--din-max-length``). The baseline row is DIN over the last
50 events.

Models have their default sizes (``embedding_dim`` 32, W = 64), 100,000 items, 1,000 categories, random
weights (the cost does not depend on the weights, except in ETA's and SDIM's hash collisions).

    python benchmarks/long_cost.py [--quick] [--what train,score] [--models din,sim_hard,...]
        [--lengths 1000,10000,100000] [--threads 2] [--requests 200] [--users 4] [--interleave]
        [--batch 32] [--steps 5]
        [--out docs/results/long_cost.md]

``--quick`` (under a minute): SDIM's cached scoring at L = 1,000 and 100,000 only; the last line is
``sdim L=100000 cached_p99_ms=<x> ratio_100k_1k=<y>`` (the p99 at 100,000 over the p99 at 1,000).
``memory`` (the peak of one training step per model, and of a process that only builds the model and
the batch) is kept from the first version of this script:

    python benchmarks/long_cost.py memory [--models ...] [--batch 32] [--lengths 10000] [--threads 2]
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import resource
import statistics
import subprocess
import sys
import time
from pathlib import Path

import torch
import torch.nn.functional as F

from lifelong.allocator import keep_freed_memory
from lifelong.batch import Batch
from lifelong.data.lifelong_synthetic import lifelong_log

sys.path.insert(0, str(Path(__file__).resolve().parent))
from candidates import results_page, write_page  # noqa: E402  (the same machine and commit line)
from lifelong.models import build_model
from lifelong.models.ranking import Candidates

ROOT = Path(__file__).resolve().parents[1]
N_ITEMS, N_CATES = 100_000, 1_000
VARIANTS = {  # row name -> model type and config overrides
    "din": ("din", {}),
    "sim_hard": ("sim", {"search": "hard"}),
    "sim_soft": ("sim", {"search": "soft"}),
    "eta": ("eta", {}),
    "sdim": ("sdim", {}),
    "twin": ("twin", {}),
}


def lifelong_histories(users: int, length: int, seed: int = 0) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """``users`` histories of ``length`` events from the lifelong synthetic log (its items, their categories,
    its times): (users, length) items, categories and timestamps."""
    n = max(length, 200) + 1  # the generator needs more than tail + window events; keep the last L
    events, items = lifelong_log(n_users=users, events_per_user=n, seed=seed)
    cates = torch.tensor([int(c[1:]) + 1 for c in items["category"].to_list()])  # 'c7' -> 8
    item_ids = torch.from_numpy(events["item_id"].to_numpy().copy()).view(users, n)[:, n - 1 - length : n - 1]
    times = torch.from_numpy(events["timestamp"].to_numpy().copy()).view(users, n)[:, n - 1 - length : n - 1]
    return item_ids, cates[item_ids - 1], times


def batch_of(users: int, length: int, seed: int = 0, histories: str = "random") -> Batch:
    """``users`` full histories of ``length`` events (with times), random (every event a random item and
    category) or from the lifelong synthetic log (``histories="lifelong"``: bursts of interests, repeated
    items); random targets and labels."""
    g = torch.Generator().manual_seed(seed)
    if histories == "lifelong":
        items, cates, times = lifelong_histories(users, length, seed)
    else:
        times = 1_700_000_000 + torch.cumsum(torch.randint(1, 3_600, (users, length), generator=g), dim=1)
        items = torch.randint(2, N_ITEMS, (users, length), generator=g)
        cates = torch.randint(2, N_CATES, (users, length), generator=g)
    return Batch(history_items=items, history_cates=cates,
                 history_mask=torch.ones(users, length, dtype=torch.bool),
                 target_items=torch.randint(2, N_ITEMS, (users,), generator=g),
                 target_cates=torch.randint(2, N_CATES, (users,), generator=g),
                 labels=(torch.arange(users) % 2).float(), users=torch.arange(users),
                 history_timestamps=times, timestamps=times[:, -1] + 60)


def model_of(variant: str, options: dict | None = None):
    model_type, overrides = VARIANTS[variant]
    torch.manual_seed(0)
    return build_model({"model_type": model_type, "n_items": N_ITEMS, "n_cates": N_CATES, **overrides,
                        **(options or {})})


def percentile(values: list[float], q: float) -> float:
    values = sorted(values)
    return values[min(len(values) - 1, int(q * (len(values) - 1)))]


def user_rows(batch: Batch) -> list[Batch]:
    """The one-user batches of ``batch``'s rows."""
    users = batch.history_items.shape[0]
    return [dataclasses.replace(batch, **{f.name: value[u : u + 1] for f in dataclasses.fields(batch)
                                          if torch.is_tensor(value := getattr(batch, f.name))})
            for u in range(users)]


def score_latency(setups: list[tuple[str, int]], k: int, requests: int, modes: tuple[str, ...],
                  histories: str = "random", users: int = 4, interleave: bool = False) -> list[dict]:
    """p50/p99 (ms) of scoring ``k`` candidates for every (variant, L) and mode (``request``: encode_user +
    score; ``cached``: score of a cached state).

    As a service runs: one model at a time (all its requests in a row), each request for the next of
    ``users`` users (their states, or histories, in rotation: a state is not in the CPU's caches because
    the previous request read it). ``interleave`` (this script's first method) instead runs the requests
    round-robin over every (variant, L), one user each: each request then also finds the other models'
    tables in the caches (spreads outside load evenly over the models, but no service holds six models)."""
    g = torch.Generator().manual_seed(1)
    times = {(setup, mode): [] for setup in setups for mode in modes}
    warm_up = 5

    def prepare(variant: str, length: int, n_users: int):
        model = model_of(variant).eval()
        rows = user_rows(batch_of(n_users, length, histories=histories))
        return model, rows, [model.encode_user(row) for row in rows]

    def one_request(prepared, user: int, mode: str, step: int, setup) -> None:
        model, rows, states = prepared
        candidates = Candidates(items=torch.randint(2, N_ITEMS, (1, k), generator=g),
                                cates=torch.randint(2, N_CATES, (1, k), generator=g))
        candidates.timestamps = rows[user].timestamps
        start = time.perf_counter()
        model.score(model.encode_user(rows[user]) if mode == "request" else states[user], candidates)
        if step >= warm_up:
            times[setup, mode].append(1e3 * (time.perf_counter() - start))

    with torch.no_grad():
        if interleave:
            prepared = {setup: prepare(*setup, 1) for setup in setups}
            for mode in modes:  # one mode at a time: cached requests are not timed between encodings
                for step in range(requests + warm_up):
                    for setup in setups:
                        one_request(prepared[setup], 0, mode, step, setup)
        else:
            for setup in setups:
                prepared = prepare(*setup, users)
                for mode in modes:
                    for step in range(requests + warm_up):
                        one_request(prepared, step % users, mode, step, setup)
                del prepared
    return [{"model": variant, "L": length, "K": k, "mode": mode, "histories": histories, "requests": len(values),
             "users": 1 if interleave else users, "order": "interleaved" if interleave else "per model",
             "p50_ms": round(percentile(values, 0.5), 2), "p99_ms": round(percentile(values, 0.99), 2)}
            for ((variant, length), mode), values in times.items()]


def train_speed(variant: str, users: int, length: int, steps: int, build_only: bool = False,
                histories: str = "random") -> dict:
    """Samples/s of ``steps`` training steps (median step time, after a warm-up step) and the process's
    peak RSS; ``build_only`` builds the model, the optimizer and the batch and stops (the baseline RSS)."""
    model = model_of(variant).train()
    batch = batch_of(users, length, histories=histories)
    optimizer = torch.optim.Adam(model.parameters(), lr=1e-3)
    times = []
    for step in range(0 if build_only else steps + 1):
        start = time.perf_counter()
        optimizer.zero_grad(set_to_none=True)
        output = model(batch)
        loss = F.binary_cross_entropy_with_logits(output.logits, batch.labels) + sum(output.aux_losses.values())
        loss.backward()
        optimizer.step()
        if step > 0:
            times.append(time.perf_counter() - start)
    return {"model": variant, "B": users, "L": length, "histories": histories, "build_only": build_only,
            "samples_per_s": round(users / statistics.median(times), 1) if times else None,
            "peak_rss_mb": round(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024)}


def in_fresh_process(args: list[str]) -> dict:
    command = [sys.executable, __file__, *args]
    done = subprocess.run(command, capture_output=True, text=True)
    if done.returncode != 0:
        sys.exit(f"{' '.join(args)} failed:\n{done.stderr[-2000:]}")
    return json.loads(done.stdout.strip().splitlines()[-1])


def train_table(rows: list[dict]) -> str:
    lines = ["| model | L | batch | samples/s | peak RSS (MB) | RSS of model + batch alone (MB) |",
             "| --- | ---: | ---: | ---: | ---: | ---: |"]
    for r in rows:
        lines.append(f"| {r['model']} | {r['L']:,} | {r['B']} | {r['samples_per_s']:,.1f} | {r['peak_rss_mb']:,} | "
                     f"{r['base_rss_mb']:,} |")
    return "\n".join(lines)


def score_table(rows: list[dict]) -> str:
    lines = ["| model | L | user side | requests | p50 (ms) | p99 (ms) |", "| --- | ---: | --- | ---: | ---: | ---: |"]
    for r in rows:
        lines.append(f"| {r['model']} | {r['L']:,} | {'in the request' if r['mode'] == 'request' else 'cached'} | "
                     f"{r['requests']} | {r['p50_ms']:,.2f} | {r['p99_ms']:,.2f} |")
    return "\n".join(lines)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("command", nargs="?", default="table", choices=["table", "memory", "step", "score"])
    parser.add_argument("--quick", action="store_true", help="SDIM's cached p99 at L = 1,000 and 100,000 only")
    parser.add_argument("--what", default="train,score")
    parser.add_argument("--models", default=",".join(VARIANTS))
    parser.add_argument("--lengths", default="1000,10000,100000")
    parser.add_argument("--train-max-length", type=int, default=10_000)
    parser.add_argument("--din-max-length", type=int, default=10_000, help="longest L for DIN's full attention")
    parser.add_argument("--candidates", type=int, default=200)
    parser.add_argument("--requests", type=int, default=200)
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--batch", type=int, default=32)
    parser.add_argument("--steps", type=int, default=5)
    parser.add_argument("--users", type=int, default=4, help="users whose states a model's requests rotate over")
    parser.add_argument("--interleave", action="store_true",
                        help="requests round-robin over every model of one L, one user each (the first method)")
    parser.add_argument("--histories", default="random", choices=["random", "lifelong"],
                        help="random events, or users of the lifelong synthetic log (repeated items)")
    parser.add_argument("--build-only", action="store_true", help=argparse.SUPPRESS)
    parser.add_argument("--out", type=Path, help="also write the tables (markdown) to this file")
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    keep_freed_memory()  # as lifelong serve does: a request's temporaries reuse the last one's pages
    variants = [v for v in args.models.split(",") if v]
    unknown = sorted(set(variants) - set(VARIANTS))
    if unknown:
        parser.error(f"unknown models {unknown}; choose from {sorted(VARIANTS)}")
    lengths = [int(v) for v in args.lengths.split(",")]

    if args.command == "step":  # internal: one (model, L) training measurement in this process
        print(json.dumps(train_speed(variants[0], args.batch, lengths[0], args.steps, args.build_only, args.histories)))
        return
    if args.command == "memory":
        for variant in variants:
            for length in lengths:
                for build_only in (True, False):
                    print(json.dumps(in_fresh_process(["step", "--models", variant, "--lengths", str(length),
                                                       "--batch", str(args.batch), "--steps", "1",
                                                       "--threads", str(args.threads)]
                                                      + (["--build-only"] if build_only else []))), flush=True)
        return
    if args.quick:
        rows = score_latency([("sdim", 1_000), ("sdim", 100_000)], args.candidates, args.requests, ("cached",))
        for row in rows:
            print(json.dumps(row))
        short, long = rows
        print(f"sdim L=100000 cached_p99_ms={long['p99_ms']:.2f} ratio_100k_1k={long['p99_ms'] / short['p99_ms']:.2f}")
        return

    what = set(args.what.split(","))
    sections = []
    if "train" in what:
        rows = []
        for length in (v for v in lengths if v <= args.train_max_length):
            for variant in variants:
                if variant == "din" and length > args.din_max_length:
                    continue
                common = ["step", "--models", variant, "--lengths", str(length), "--batch", str(args.batch),
                          "--threads", str(args.threads), "--histories", args.histories]
                base = in_fresh_process(common + ["--steps", "0", "--build-only"])
                row = in_fresh_process(common + ["--steps", str(args.steps)])
                rows.append({**row, "base_rss_mb": base["peak_rss_mb"]})
                print(json.dumps(rows[-1]), file=sys.stderr, flush=True)
        sections.append(f"## Training\n\nBatches of {args.batch} samples, {args.histories} histories of L events; "
                        f"median of {args.steps} steps after a warm-up, each row in a fresh process.\n\n"
                        + train_table(rows))
    if "score" in what:
        rows = []
        for length in lengths:  # one process per L: the interleaving is over the models of that L
            setups = [("din", 50)] + [(v, length) for v in variants if v != "din" or length <= args.din_max_length]
            part = score_latency(setups, args.candidates, args.requests, ("request", "cached"), args.histories,
                                 args.users, args.interleave)
            rows += [r for r in part if r["L"] != 50 or not rows]  # the DIN-50 baseline once
            print(f"score L={length}: done", file=sys.stderr, flush=True)
        sections.append(f"## Scoring {args.candidates} candidates for one user\n\n"
                        f"{args.requests} requests after 5 warm-up ones, "
                        + ("round-robin over the models of one L, one user each; " if args.interleave else
                           f"one model at a time, each request for the next of {args.users} users (their states "
                           f"or histories in rotation); ")
                        + "eval mode, no gradients. The first row is the baseline, DIN over the last 50 events.\n\n"
                        + score_table(rows))
    text = results_page("The cost of long histories", "\n\n".join(sections), torch.get_num_threads(),
                        f"Default model sizes, random weights; histories: {args.histories}; see the script's "
                        f"docstring.")
    print(text)
    if args.out:
        write_page(args.out, text)


if __name__ == "__main__":
    main()
