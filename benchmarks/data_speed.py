"""Speed of the data side: the collate of a large batch and the default synthetic log, each against a
baseline measured in the same run. These were wall-clock assertions in the test suite
(``tests/test_batch.py``: 20,000 samples with L = 50 collated in under 1 s; ``tests/test_synthetic.py``:
the default ``synthetic_log()`` in under 2 s); the tests now check behaviour only and the timings live here.

    python benchmarks/data_speed.py [--threads 1] [--repeats 5] [--samples 20000] [--max-length 50]

Rows (median seconds over --repeats; the first call of each is a warm-up and is not timed):
  - ``collate``: ``Collator(dataset, L)`` on ``--samples`` P1 training samples (the samples of a prepared
    synthetic log, repeated). Baseline: the same batch built by a per-sample Python loop over the events
    (what the vectorised collate replaces); the row checks that both give the same arrays.
  - ``synthetic_log``: the default ``synthetic_log()`` (2,000 users, 20-80 events each). Baseline: a
    Polars frame of the same number of rows and columns from NumPy draws (the cost of producing that
    many rows at all).

Columns: threads (torch intra-op threads; Polars' pool size), seconds, baseline seconds, ratio
(seconds / baseline), the former test budget and whether this run is within it (a budget is a figure for
the machine the suite runs on, 2 shared cores, not a pass / fail of the code).
"""

from __future__ import annotations

import argparse
import os
import statistics
import sys
import tempfile
import time
from pathlib import Path


def timed(function, repeats: int) -> tuple[float, object]:
    """Median wall seconds of ``repeats`` calls after one warm-up call; returns (seconds, last result)."""
    result = function()
    times = []
    for _ in range(repeats):
        started = time.perf_counter()
        result = function()
        times.append(time.perf_counter() - started)
    return statistics.median(times), result


def loop_collate(dataset, samples, max_length: int):
    """The reference collate: a Python loop over the samples and their events (items, categories, mask)."""
    import numpy as np

    n = len(samples)
    width = int(min(samples.end.max(), max_length))
    items = np.zeros((n, width), np.int64)
    cates = np.zeros((n, width), np.int64)
    mask = np.zeros((n, width), bool)
    for i in range(n):
        start = int(dataset.offsets[samples.user[i]])
        end = start + int(samples.end[i])
        for j, event in enumerate(range(max(start, end - max_length), end)):
            row = dataset.event_items[event]
            items[i, j] = dataset.item_idx[row]
            cates[i, j] = dataset.item_cate[row]
            mask[i, j] = True
    return items, cates, mask


def polars_floor(rows: int, seed: int = 0):
    """A frame of ``rows`` rows with the synthetic log's columns, from NumPy draws."""
    import numpy as np
    import polars as pl

    rng = np.random.default_rng(seed)
    return pl.DataFrame({
        "user_id": np.sort(rng.integers(1, 2001, rows)),
        "item_id": rng.integers(1, 2001, rows),
        "timestamp": np.cumsum(rng.integers(1, 3600, rows)),
        "behavior": np.where(rng.random(rows) < 0.05, "buy", "click"),
        "row": np.arange(rows),
    })


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--threads", type=int, default=1)
    parser.add_argument("--repeats", type=int, default=5)
    parser.add_argument("--samples", type=int, default=20_000)
    parser.add_argument("--max-length", type=int, default=50)
    args = parser.parse_args()
    os.environ["POLARS_MAX_THREADS"] = str(args.threads)  # before polars is imported

    import numpy as np
    import polars as pl
    import torch

    from lifelong.batch import Collator
    from lifelong.data.schema import EventLog
    from lifelong.data.synthetic import synthetic_log
    from lifelong.dataset import load_dataset
    from lifelong.pipeline import ProtocolOptions, prepare

    torch.set_num_threads(args.threads)
    rows = []

    with tempfile.TemporaryDirectory() as folder:
        events, items = synthetic_log(n_users=200, n_items=500, n_categories=20, seed=1)
        dataset = load_dataset(prepare(EventLog(events=events, items=items, recipe="synthetic"), Path(folder) / "d",
                                       ProtocolOptions()))
        train = dataset.samples("train")
        big = train.subset(np.resize(np.arange(len(train)), args.samples))
        collator = Collator(dataset, args.max_length)
        seconds, batch = timed(lambda: collator(big), args.repeats)
        baseline, (ref_items, ref_cates, ref_mask) = timed(lambda: loop_collate(dataset, big, args.max_length),
                                                           max(1, args.repeats // 2))
        same = (np.array_equal(batch.history_items.numpy(), ref_items)
                and np.array_equal(batch.history_cates.numpy(), ref_cates)
                and np.array_equal(batch.history_mask.numpy(), ref_mask))
        if not same:
            raise SystemExit("collate and the loop reference disagree: the timing compares different work")
        rows.append((f"collate ({args.samples:,} samples, L={args.max_length})", seconds,
                     "per-sample Python loop", baseline, 1.0))

    seconds, (events, _) = timed(synthetic_log, args.repeats)
    baseline, _ = timed(lambda: polars_floor(events.height), args.repeats)
    rows.append((f"synthetic_log() ({events.height:,} events)", seconds, "Polars frame of as many rows",
                 baseline, 2.0))

    threads = f"torch {torch.get_num_threads()}, polars {pl.thread_pool_size()}"
    header = ("check", "threads", "seconds", "baseline", "baseline s", "ratio", "budget s", "within")
    table = [header] + [(name, threads, f"{s:.4f}", base_name, f"{b:.4f}", f"{s / b:.3f}", f"{budget:.1f}",
                         "yes" if s < budget else "NO") for name, s, base_name, b, budget in rows]
    widths = [max(len(row[i]) for row in table) for i in range(len(header))]
    for k, row in enumerate(table):
        print(" | ".join(cell.ljust(w) for cell, w in zip(row, widths)))
        if k == 0:
            print("-+-".join("-" * w for w in widths))
    print(f"repeats {args.repeats} (median; one warm-up call each), python {sys.version.split()[0]}, "
          f"numpy {np.__version__}, polars {pl.__version__}, torch {torch.__version__}")


if __name__ == "__main__":
    main()
