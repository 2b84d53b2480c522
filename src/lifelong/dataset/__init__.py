"""Prepared datasets: one sequence per user (CSR), an item table, vocabularies, sample tables."""

from lifelong.dataset.store import PreparedDataset, SampleTable, load_dataset
from lifelong.dataset.prepare import prepare_dataset

__all__ = ["PreparedDataset", "SampleTable", "load_dataset", "prepare_dataset"]
