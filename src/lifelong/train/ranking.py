"""Exact full-ranking evaluation of retrieval models (P2): every user's target is ranked against the
whole catalogue, items of the user's input history removed (PROTOCOLS.md P2.3).

Users are scored in chunks: no users x items matrix larger than ``chunk_users x n_items`` exists at
any time. The item vectors are computed once per evaluation.
"""

from __future__ import annotations

import numpy as np
import torch

from lifelong.batch import Collator, iterate_batches, length_order
from lifelong.dataset.store import PreparedDataset, SampleTable
from lifelong.metrics import ranking_metrics, target_ranks

FIRST_RANKED = 2  # vocabulary indices 0 (padding) and 1 (unknown) are never ranked


def history_cells(dataset: PreparedDataset, samples: SampleTable) -> tuple[np.ndarray, np.ndarray]:
    """(row, item vocabulary index) of every item in each sample's *whole* input history
    ``events[:end]`` (not only the most recent L), for masking."""
    user = samples.user.astype(np.int64)
    length = samples.end.astype(np.int64)
    rows = np.repeat(np.arange(user.shape[0]), length)
    within = np.arange(rows.shape[0], dtype=np.int64) - np.repeat(np.cumsum(length) - length, length)
    events = dataset.offsets[user][rows] + within
    return rows, dataset.item_idx[dataset.event_items[events]]


@torch.no_grad()
def rank_targets(model: torch.nn.Module, collator: Collator, samples: SampleTable, chunk_users: int = 2048,
                 exclude_history: bool = True, top_k: int = 0):
    """0-based rank of each sample's target item over the catalogue (ties broken by item index).

    Args:
        model: a retrieval model (``user_vectors``, ``item_vectors``, ``score``).
        collator: builds the batches (history of the most recent L events).
        samples: one row per user to evaluate (target = the held-out item).
        chunk_users: users scored at once (the score matrix is ``chunk_users x n_items``).
        exclude_history: remove the items of the whole input history from the ranking.
        top_k: also return each user's top ``top_k`` items (vocabulary indices), (N, top_k).

    Returns:
        (N,) ranks, or (ranks, top lists) with ``top_k``.
    """
    model.eval()
    dataset = collator.dataset
    items = model.item_vectors()
    out, tops = [], []
    # users in order of history length, so a chunk's batch is padded to similar lengths (the ranks are
    # put back in table order at the end; each user's scores do not depend on the others in its chunk)
    by_length = length_order(samples, collator.max_length)
    for begin in range(0, len(samples), chunk_users):
        part = samples.subset(by_length[begin : begin + chunk_users])
        batch = collator(part)
        scores = model.score(model.user_vectors(batch), items).float()  # (b, n_items)
        scores[:, :FIRST_RANKED] = float("-inf")
        if exclude_history:
            rows, seen = history_cells(dataset, part)
            scores[torch.from_numpy(rows), torch.from_numpy(seen)] = float("-inf")
        out.append(target_ranks(scores, batch.target_items).numpy())
        if top_k:
            tops.append(scores.topk(top_k, dim=1).indices.numpy())
    ranks = np.zeros(len(samples), np.int64)
    ranks[by_length] = np.concatenate(out) if out else ranks
    if top_k:
        top = np.zeros((len(samples), top_k), np.int64)
        if tops:
            top[by_length] = np.concatenate(tops)
        return ranks, top
    return ranks


def evaluate_ranking(model: torch.nn.Module, collator: Collator, samples: SampleTable, chunk_users: int = 2048,
                     exclude_history: bool = True, keep_ranks: bool = False, beyond: dict | None = None):
    """HR@5/10/20, NDCG@5/10/20 and Recall@50 over ``samples``; with ``keep_ranks`` also the ranks.

    With ``beyond = {"item_cates": (n_items,), "popularity": (n_items,)}`` the beyond-accuracy metrics
    of every user's top 10 are added (``top10_category_coverage``, ``top10_catalogue_category_coverage``,
    ``top10_category_entropy``, ``top10_novelty``; see :mod:`lifelong.beyond`)."""
    if beyond is None:
        ranks = rank_targets(model, collator, samples, chunk_users, exclude_history)
        metrics = ranking_metrics(ranks)
    else:
        from lifelong.beyond import beyond_accuracy

        ranks, top = rank_targets(model, collator, samples, chunk_users, exclude_history, top_k=10)
        metrics = ranking_metrics(ranks)
        metrics.update({f"top10_{k}": v for k, v in
                        beyond_accuracy(top, beyond["item_cates"], beyond["popularity"]).items()})
    return (metrics, ranks) if keep_ranks else metrics


def training_popularity(dataset: PreparedDataset, n_items: int) -> np.ndarray:
    """(n_items,) interactions of every item vocabulary index in the training sequences (each user's
    events but the last two, the validation and test targets)."""
    counts = np.diff(dataset.offsets)
    position = np.arange(dataset.n_events) - np.repeat(dataset.offsets[:-1], counts)
    training = position < np.repeat(counts - 2, counts)
    return np.bincount(dataset.item_idx[dataset.event_items[training]], minlength=n_items)[:n_items]
