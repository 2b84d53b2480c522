"""Evaluation protocols (docs/protocols.md): who is a sample, where its history ends, its target and label."""

from lifelong.protocols.ctr import ctr_din_samples, ctr_time_samples, time_cuts
from lifelong.protocols.evaluation import FIRST_RANKED, history_cells, training_popularity
from lifelong.protocols.negatives import InteractionIndex, negative_index, sample_negatives
from lifelong.protocols.long import P5_MIN_EVENTS, ctr_long_samples
from lifelong.protocols.mi import P3_MIN_EVENTS, USER_ORDERS, mi_split_samples, target_sets
from lifelong.protocols.training import training_event_mask
from lifelong.protocols.seq import (P2_MIN_EVENTS, seq_loo_samples, target_partners, training_prefixes,
                                    training_windows)

PROTOCOLS = ("ctr-din", "ctr-time", "seq-loo", "mi-split", "ctr-long")
RETRIEVAL_PROTOCOLS = ("seq-loo", "mi-split")
TASK_PROTOCOLS = {"ctr": ("ctr-din", "ctr-time", "ctr-long"), "retrieval": RETRIEVAL_PROTOCOLS}  # what each model task trains on

__all__ = [
    "P2_MIN_EVENTS",
    "P3_MIN_EVENTS",
    "P5_MIN_EVENTS",
    "ctr_long_samples",
    "USER_ORDERS",
    "mi_split_samples",
    "target_sets",
    "PROTOCOLS",
    "RETRIEVAL_PROTOCOLS",
    "TASK_PROTOCOLS",
    "seq_loo_samples",
    "target_partners",
    "training_prefixes",
    "training_windows",
    "InteractionIndex",
    "ctr_din_samples",
    "ctr_time_samples",
    "sample_negatives",
    "negative_index",
    "FIRST_RANKED",
    "history_cells",
    "training_popularity",
    "time_cuts",
    "training_event_mask",
]
