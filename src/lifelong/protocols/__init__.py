"""Evaluation protocols (../shared/PROTOCOLS.md): who is a sample, where its history ends, its target and label."""

from lifelong.protocols.ctr import (
    InteractionIndex,
    ctr_din_samples,
    ctr_time_samples,
    sample_negatives,
    time_cuts,
)
from lifelong.protocols.seq import P2_MIN_EVENTS, seq_loo_samples, training_windows

PROTOCOLS = ("ctr-din", "ctr-time", "seq-loo")
RETRIEVAL_PROTOCOLS = ("seq-loo",)

__all__ = [
    "P2_MIN_EVENTS",
    "PROTOCOLS",
    "RETRIEVAL_PROTOCOLS",
    "seq_loo_samples",
    "training_windows",
    "InteractionIndex",
    "ctr_din_samples",
    "ctr_time_samples",
    "sample_negatives",
    "time_cuts",
]
