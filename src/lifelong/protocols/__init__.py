"""Evaluation protocols (../shared/PROTOCOLS.md): who is a sample, where its history ends, its target and label."""

from lifelong.protocols.ctr import (
    InteractionIndex,
    ctr_din_samples,
    ctr_time_samples,
    sample_negatives,
    time_cuts,
)

PROTOCOLS = ("ctr-din", "ctr-time")

__all__ = [
    "PROTOCOLS",
    "InteractionIndex",
    "ctr_din_samples",
    "ctr_time_samples",
    "sample_negatives",
    "time_cuts",
]
