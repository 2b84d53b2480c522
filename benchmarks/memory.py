"""Peak memory of `prepare` and of one epoch of DIN training on a long-sequence synthetic log.

The log: 20,000 users x 1,000 events (20 M events), 50,000 items, 500 categories; P1 with the 5 most
recent training targets per user (plus their negatives), L = 1000, batch 256. Each stage runs in its
own process and its peak resident size is read from the operating system (``wait4``'s ``ru_maxrss``).
A last pair of processes loads the prepared dataset and the sample tables and builds one batch with
L = 100 and with L = 1000: the data side must not grow with L.

    python benchmarks/memory.py [--users 20000] [--events 1000] [--workdir /tmp/lifelong-memory]
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import time
from pathlib import Path

PYTHON = sys.executable
GIB = 1024**3


def run_measured(command: list[str], env: dict | None = None) -> tuple[float, float, str]:
    """Run a command; return (peak RSS in bytes, seconds, stdout)."""
    started = time.perf_counter()
    process = subprocess.Popen(command, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True,
                               env={**os.environ, **(env or {})})
    output = process.stdout.read()
    _, status, usage = os.wait4(process.pid, 0)
    process.returncode = os.waitstatus_to_exitcode(status)
    seconds = time.perf_counter() - started
    if process.returncode != 0:
        raise SystemExit(f"failed ({process.returncode}): {' '.join(command)}\n{output[-4000:]}")
    return usage.ru_maxrss * 1024, seconds, output


LOAD_SNIPPET = """
import json, sys, numpy as np
from lifelong.dataset import load_dataset
from lifelong.batch import Collator
def rss():
    for line in open('/proc/self/status'):
        if line.startswith('VmRSS'):
            return int(line.split()[1]) * 1024
ds = load_dataset(sys.argv[1])
tables = [ds.samples(s) for s in ('train', 'valid', 'test')]
batch = Collator(ds, int(sys.argv[2]))(tables[0].subset(np.arange(256)))
print(json.dumps({'rss': rss(), 'width': int(batch.history_items.shape[1])}))
"""


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--users", type=int, default=20_000)
    parser.add_argument("--events", type=int, default=1_000)
    parser.add_argument("--items", type=int, default=50_000)
    parser.add_argument("--categories", type=int, default=500)
    parser.add_argument("--samples-per-user", type=int, default=5)
    parser.add_argument("--length", type=int, default=1000)
    parser.add_argument("--batch-size", type=int, default=256)
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--workdir", type=Path, default=Path("/tmp/lifelong-memory"))
    args = parser.parse_args()
    work = args.workdir
    work.mkdir(parents=True, exist_ok=True)
    log = work / f"log-{args.users}x{args.events}.parquet"
    data = work / f"data-{args.users}x{args.events}"
    run = work / "run-din"
    rows = []

    if not log.exists():
        # the log carries each event's category, as a Taobao-style log does
        rss, seconds, _ = run_measured([PYTHON, "-c", (
            "from lifelong.data.synthetic import synthetic_log; "
            f"events, items = synthetic_log(n_users={args.users}, n_items={args.items}, "
            f"n_categories={args.categories}, events_per_user={args.events}, seed=0); "
            "events.join(items.select('item_id', 'category'), on='item_id', how='left')"
            f".write_parquet({str(log)!r})")])
        rows.append(("generate synthetic log (not lifelong's footprint)", rss, seconds))
    subprocess.run(["rm", "-rf", str(data), str(run)], check=True)

    rss, seconds, output = run_measured([
        PYTHON, "-m", "lifelong", "prepare", "--recipe", "csv", "--input", str(log), "--out", str(data),
        "--column", "user_id=user_id", "--column", "item_id=item_id", "--column", "timestamp=timestamp",
        "--column", "behavior=behavior", "--column", "category=category", "--max-train-per-user", str(args.samples_per_user)])
    rows.append(("lifelong prepare", rss, seconds))
    manifest = json.loads((data / "manifest.json").read_text())

    rss, seconds, output = run_measured([
        PYTHON, "-m", "lifelong", "train", "--data", str(data), "--model", "din", "--out", str(run),
        "--epochs", "1", "--batch-size", str(args.batch_size), "--max-length", str(args.length),
        "--threads", str(args.threads), "--no-progress"])
    speed = json.loads((run / "metrics.jsonl").read_text().splitlines()[0])["train_samples_per_s"]
    rows.append((f"lifelong train din, 1 epoch, L={args.length}, batch {args.batch_size}", rss, seconds))

    loaded = {}
    for length in (100, args.length):
        _, _, output = run_measured([PYTHON, "-c", LOAD_SNIPPET, str(data), str(length)])
        loaded[length] = json.loads(output.strip().splitlines()[-1])

    print(f"\nsynthetic log: {manifest['n_events']:,} events, {manifest['n_users']:,} users, "
          f"{manifest['n_items']:,} items, {manifest['n_categories']:,} categories; samples "
          + ", ".join(f"{k} {v:,}" for k, v in manifest["samples"].items()))
    print(f"{'stage':<58} {'peak RSS':>10} {'seconds':>9}")
    for name, rss, seconds in rows:
        print(f"{name:<58} {rss / GIB:>8.2f} GiB {seconds:>8.1f}")
    print(f"DIN training throughput at L={args.length}: {speed:,.0f} samples/s ({args.threads} threads)")
    print(f"\n{'resident size after loading dataset + sample tables':<58} {'RSS':>10} {'batch width':>12}")
    for length, values in loaded.items():
        print(f"{'L=' + str(length):<58} {values['rss'] / GIB:>8.3f} GiB {values['width']:>12}")
    small, large = loaded[100]["rss"], loaded[args.length]["rss"]
    print(f"L={args.length} vs L=100: {100 * (large - small) / small:+.1f}%")
    results = {"rows": [{"stage": n, "peak_rss_bytes": r, "seconds": s} for n, r, s in rows],
               "loaded_rss_bytes": {str(k): v["rss"] for k, v in loaded.items()}, "train_samples_per_s": speed,
               "manifest_samples": manifest["samples"]}
    out = Path(__file__).parent / "results" / "memory.json"
    out.parent.mkdir(exist_ok=True)
    out.write_text(json.dumps(results, indent=2))


if __name__ == "__main__":
    main()
