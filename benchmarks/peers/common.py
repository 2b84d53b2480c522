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


def timed_fit(model, train_gen, valid_gen, params: dict, label: str) -> dict:
    """FuxiCTR ``model.fit`` with each epoch's training loop timed apart from its validation (``eval_step``
    runs inside ``train_epoch``): the epochs' training seconds, the validation AUCs that improved (None
    where one did not) and the best epoch; the model holds the best checkpoint afterwards."""
    import time

    epoch_seconds, eval_seconds, valid_aucs = [], [0.0], []
    best = {"epoch": 0}
    train_epoch, eval_step = model.train_epoch, model.eval_step

    def timed_eval_step():
        started = time.perf_counter()
        before = model._best_metric
        eval_step()
        eval_seconds[-1] += time.perf_counter() - started
        valid_aucs.append(float(model._best_metric) if model._best_metric != before else None)
        if model._best_metric != before:
            best["epoch"] = model._epoch_index + 1

    def timed_train_epoch(data_generator):
        eval_seconds[-1] = 0.0
        started = time.perf_counter()
        train_epoch(data_generator)
        seconds = time.perf_counter() - started - eval_seconds[-1]
        epoch_seconds.append(seconds)
        log(f"{label} epoch {len(epoch_seconds)}: {train_gen.num_samples / seconds:,.0f} samples/s "
            f"({seconds:.1f}s train, {eval_seconds[-1]:.1f}s validation)")
        eval_seconds.append(0.0)

    model.train_epoch, model.eval_step = timed_train_epoch, timed_eval_step
    started = time.perf_counter()
    model.fit(train_gen, validation_data=valid_gen, **params)  # reloads the best checkpoint at the end
    return {"epoch_seconds": epoch_seconds, "valid_aucs": valid_aucs, "best_epoch": best["epoch"],
            "fit_seconds": time.perf_counter() - started}
