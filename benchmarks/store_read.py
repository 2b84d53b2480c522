"""Reading a lifelong history from the behavior store (issue 29): ms to read one user's N events, newest first.

For each backend (SQLite in a temporary file; Redis on a redis-server of our own with ``appendonly yes``,
``appendfsync always``), append N events for one user (in timestamp order, and a second user whose events
arrive out of order), then time ``history(user)`` (all N) and ``history(user, 200)`` after one warm-up read;
the median of ``--repeats`` reads, in this process, on this machine.

    .venv/bin/python benchmarks/store_read.py              # N = 100,000
"""

from __future__ import annotations

import argparse
import random
import shutil
import statistics
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))

from serve_durability import RedisServer  # noqa: E402

from lifelong.serve.store import Event, open_store  # noqa: E402


def timed(fn, repeats: int) -> float:
    fn()
    times = []
    for _ in range(repeats):
        t = time.perf_counter()
        fn()
        times.append(time.perf_counter() - t)
    return statistics.median(times) * 1000


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--events", type=int, default=100_000)
    parser.add_argument("--repeats", type=int, default=5)
    parser.add_argument("--backends", nargs="+", default=["sqlite", "redis"], choices=["sqlite", "redis"])
    args = parser.parse_args()
    n = args.events
    work = Path(tempfile.mkdtemp(prefix="lifelong-store-read-"))
    rows = []
    try:
        for backend in args.backends:
            server = None
            if backend == "redis":
                server = RedisServer(work / "redis")
                server.start()
                url = server.url
            else:
                url = f"sqlite:{work / 'store.db'}"
            store = open_store(url)
            try:
                ordered = [Event("ordered", f"i{k % 50_000}", 1_600_000_000 + k, "click") for k in range(n)]
                shuffled = list(ordered)
                random.Random(0).shuffle(shuffled)
                shuffled = [Event("shuffled", e.item_id, e.timestamp, e.behavior) for e in shuffled]
                t = time.perf_counter()
                for start in range(0, n, 1000):
                    store.append(ordered[start:start + 1000])
                append_s = time.perf_counter() - t
                for start in range(0, n, 1000):
                    store.append(shuffled[start:start + 1000])
                assert store.history("ordered") == ordered[::-1]
                assert [e.timestamp for e in store.history("shuffled", 10)] == [e.timestamp for e in ordered[::-1][:10]]
                for user in ("ordered", "shuffled"):
                    rows.append((backend, user, timed(lambda: store.history(user), args.repeats),
                                 timed(lambda: store.history(user, 200), args.repeats), n / append_s))
            finally:
                store.close()
                if server is not None:
                    server.stop()
    finally:
        shutil.rmtree(work, ignore_errors=True)
    print(f"\nbehavior store: one user's {n:,} events, median of {args.repeats} reads after a warm-up (this machine)")
    print("| backend | arrival order | read all (ms) | read newest 200 (ms) | append, batches of 1,000 (events/s) |")
    print("|---|---|---:|---:|---:|")
    for backend, user, all_ms, few_ms, rate in rows:
        order = "in timestamp order" if user == "ordered" else "shuffled"
        print(f"| {backend} | {order} | {all_ms:,.0f} | {few_ms:,.1f} | {rate:,.0f} |")


if __name__ == "__main__":
    main()
