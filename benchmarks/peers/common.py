"""Small helpers shared by the benchmark workers (standard library only, so every venv can import it).

Each worker is one process; it ends by writing one JSON result file whose ``peak_rss_mb`` is this
process's own peak resident size (``resource.getrusage(RUSAGE_SELF).ru_maxrss``, KiB on Linux).
"""

from __future__ import annotations

import json
import os
import resource
import statistics
import sys
from pathlib import Path

THREADS = 2
MAX_LEN = 50
EMBEDDING_DIM = 32
ATTENTION_HIDDEN = (64, 32)
DNN_HIDDEN = (200, 80)
BATCH_SIZE = 1024
LR = 1e-3
SEED = 2024


def peak_rss_mb() -> dict[str, float]:
    """Peak RSS of this process and of its largest finished child (data-loader workers), in MB."""
    own = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
    children = resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss / 1024
    return {"peak_rss_mb": round(own, 1), "peak_rss_children_mb": round(children, 1)}


def median_after_warmup(speeds: list[float]) -> float:
    """Median samples/s over the epochs after the first (the first is warm-up)."""
    return float(statistics.median(speeds[1:] or speeds)) if speeds else float("nan")


def set_threads(torch) -> None:
    torch.set_num_threads(THREADS)


def write_result(path: str | Path, result: dict) -> None:
    result = {**result, **peak_rss_mb(), "pid": os.getpid(), "python": sys.executable}
    Path(path).parent.mkdir(parents=True, exist_ok=True)
    Path(path).write_text(json.dumps(result, indent=2))


def log(message: str) -> None:
    print(message, file=sys.stderr, flush=True)
