"""The next-item table's report (benchmarks/seq_table.py): how rows of several seeds become one line."""

import numpy as np
import pytest

from helpers import benchmark_module


@pytest.fixture(scope="module")
def seq_table():
    return benchmark_module("seq_table")


def row(seq_table, spec, seed, hr10, stopped_at=None, best=10):
    metrics = {m: 0.01 for m in seq_table.METRICS}
    metrics["hr@10"] = hr10
    return {"dataset": "beauty", "spec": spec, "seed": seed, "loss": "full", "best_epoch": best,
            "stopped_at": stopped_at, **metrics}


def line_of(table, label):
    [line] = [l for l in table.splitlines() if l.startswith(f"| beauty | {label}")]
    return [cell.strip() for cell in line.strip("|").split("|")]


def test_a_row_names_the_seeds_stopped_by_hand_and_only_those(seq_table):
    rows = [row(seq_table, "sasrec:loss=full", "2024", 0.05, stopped_at=31, best=24),
            row(seq_table, "sasrec:loss=full", "2025", 0.06, best=27),
            row(seq_table, "sasrec:loss=full", "2026", 0.07, best=42),
            row(seq_table, "idnp:loss=full", "2024", 0.04)]
    table = seq_table.summarise(rows, ["sasrec:loss=full", "idnp:loss=full"], ["beauty"])
    cells = line_of(table, "sasrec loss=full")
    assert cells[1] == "sasrec loss=full, *stopped by hand: seed 2024 at epoch 31*"
    hr10 = cells[3 + seq_table.METRICS.index("hr@10")]
    assert hr10 == f"{np.mean([0.05, 0.06, 0.07]):.4f} ± {np.std([0.05, 0.06, 0.07], ddof=1):.4f}"
    assert cells[-2:] == ["24, 27, 42", "3"]
    # a row none of whose runs was stopped carries no mark, and one seed shows its value without a spread
    cells = line_of(table, "idnp loss=full")
    assert cells[1] == "idnp loss=full" and cells[3 + seq_table.METRICS.index("hr@10")] == "0.0400"
