"""Exact full-ranking evaluation of retrieval models (P2): every user's target is ranked against the
whole catalogue, items of the user's input history removed (docs/protocols.md, P2 step 3). What the
protocol decides (the items never ranked, a sample's history at evaluation, the training events an item's
popularity counts) is :mod:`lifelong.protocols.evaluation`; its names are re-exported here.

Users are scored in chunks: no users x items matrix larger than ``chunk_users x n_items`` exists at
any time. The item vectors are computed once per evaluation.
"""

from __future__ import annotations

import numpy as np
import torch

from lifelong.batch import Collator, length_order
from lifelong.dataset.store import PreparedDataset, SampleTable
from lifelong.metrics import ranking_metrics, target_ranks
from lifelong.protocols.evaluation import FIRST_RANKED, history_cells, training_popularity  # noqa: F401 (re-exported)


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
            scores[torch.from_numpy(rows).to(scores.device), torch.from_numpy(seen).to(scores.device)] = float("-inf")
        out.append(target_ranks(scores, batch.target_items).cpu().numpy())
        if top_k:
            tops.append(scores.topk(top_k, dim=1).indices.cpu().numpy())
    ranks = np.zeros(len(samples), np.int64)
    ranks[by_length] = np.concatenate(out) if out else ranks
    if top_k:
        top = np.zeros((len(samples), top_k), np.int64)
        if tops:
            top[by_length] = np.concatenate(tops)
        return ranks, top
    return ranks


def evaluate_ranking(model: torch.nn.Module, collator: Collator, samples: SampleTable, chunk_users: int = 2048,
                     exclude_history: bool = True, keep_ranks: bool = False, beyond: dict | None = None,
                     dist_ctx=None):
    """HR@5/10/20, NDCG@5/10/20 and Recall@50 over ``samples``; with ``keep_ranks`` also the ranks.

    With ``beyond = {"item_cates": (n_items,), "popularity": (n_items,)}`` the beyond-accuracy metrics
    of every user's top 10 are added (``top10_category_coverage``, ``top10_catalogue_category_coverage``,
    ``top10_category_entropy``, ``top10_novelty``; see :mod:`lifelong.beyond`). Under DDP
    (``dist_ctx``, a :class:`lifelong.train.run.Distributed`) each rank ranks its share of the rows and the
    metrics are computed on the gathered ranks of all rows (never averaged across ranks)."""
    from lifelong.beyond import beyond_accuracy

    index = np.arange(len(samples)) if dist_ctx is None else dist_ctx.shard(np.arange(len(samples)), equal=False)
    part = samples.subset(index)
    if beyond is None:
        ranks = rank_targets(model, collator, part, chunk_users, exclude_history)
        top = np.zeros((len(part), 0), np.int64)
    else:
        ranks, top = rank_targets(model, collator, part, chunk_users, exclude_history, top_k=10)
    if dist_ctx is not None and dist_ctx.enabled:  # every rank's rows, back in table order
        index, ranks, top = dist_ctx.gather((index, ranks, top))
        order = np.argsort(index, kind="stable")
        ranks, top = ranks[order], top[order]
    metrics = ranking_metrics(ranks)
    if beyond is not None:
        metrics.update({f"top10_{k}": v for k, v in
                        beyond_accuracy(top, beyond["item_cates"], beyond["popularity"]).items()})
    return (metrics, ranks) if keep_ranks else metrics


SET_KS = (20, 50)  # P3 reports Recall / NDCG / HitRate at 20 and 50


@torch.no_grad()
def retrieve_lists(model: torch.nn.Module, collator: Collator, samples: SampleTable, chunk_users: int = 2048,
                   ks: tuple[int, ...] = SET_KS, interests: bool = False, index=None):
    """Every sample's top-K item lists (vocabulary indices, best first) for each K, from the model's
    ``retrieve(users, items, k)`` (the base multi-interest merge, or a model's own), else its scores'
    top K. Users are scored in chunks ordered by history length; nothing is masked (P3 ranks the full
    catalogue, as ComiRec). With ``interests``, also each user's interest redundancy (mean pairwise
    cosine of its valid interests; NaN with one interest). With ``index`` (a :class:`lifelong.index.ItemIndex`
    over the model's item vectors) the lists come from faiss: each interest searched and the lists merged
    by score, or the model's own ``index_search(index, users, k)`` (kNN-Embed's budgets).

    Returns:
        ``{K: (N, K)}`` (and the (N,) redundancies with ``interests``).
    """
    from lifelong.models.multi_interest import interest_redundancy
    from lifelong.models.retrieval import RetrievalModel

    model.eval()
    items = model.item_vectors()
    order = length_order(samples, collator.max_length)
    parts: dict[int, list[np.ndarray]] = {k: [] for k in ks}
    redundancy = []
    for begin in range(0, len(samples), chunk_users):
        batch = collator(samples.subset(order[begin : begin + chunk_users]))
        users = model.user_vectors(batch)
        nested = index is None and type(model).retrieve is RetrievalModel.retrieve  # a plain top-K by score
        for k in ks:
            reachable = min(k, items.shape[0] - FIRST_RANKED)  # a catalogue smaller than K: the rest is -1
            if nested and k != max(ks):  # a plain top-K by score: the shorter lists are prefixes of the longest
                continue
            if index is not None:  # faiss searches on the host
                top = torch.from_numpy(model.index_search(index, users.cpu(), reachable))
            else:
                top = model.retrieve(users, items, reachable)
            parts[k].append(np.pad(top.cpu().numpy(), ((0, 0), (0, k - reachable)), constant_values=-1))
        if nested:
            for k in ks:
                if k != max(ks):
                    parts[k].append(parts[max(ks)][-1][:, :k])
        if interests:
            if model.multi_interest:
                redundancy.append(interest_redundancy(*model.interests(batch)).cpu().numpy())
            else:
                redundancy.append(np.full(len(batch), np.nan))
    tops = {}
    for k in ks:
        tops[k] = np.zeros((len(samples), k), np.int64)
        if parts[k]:
            tops[k][order] = np.concatenate(parts[k])
    if interests:
        out = np.full(len(samples), np.nan)
        if redundancy:
            out[order] = np.concatenate(redundancy)
        return tops, out
    return tops


def evaluate_sets(model: torch.nn.Module, collator: Collator, samples: SampleTable, chunk_users: int = 2048,
                  ks: tuple[int, ...] = SET_KS, keep_tops: bool = False, details: bool = False, index=None):
    """P3 metrics: Recall / NDCG / HitRate at each K against every held-out user's target set (the
    distinct items after its input, :func:`lifelong.protocols.target_sets`). With ``details`` also the
    mean interest redundancy (``interest_redundancy``, over users with two or more interests) and the
    category diversity of the top-K lists (``top{K}_category_diversity``: share of item pairs of a
    list in different categories, averaged over users) and how many of the user's own input items a
    top-K list holds (``top{K}_history_items``, mean over users; P3 masks nothing, so a list may
    repeat them, while the targets are the items after the input)."""
    from lifelong.metrics import set_retrieval_metrics
    from lifelong.protocols import target_sets

    dataset = collator.dataset
    target_offsets, target_rows = target_sets(samples, dataset.offsets, dataset.event_items)
    if details:
        tops, redundancy = retrieve_lists(model, collator, samples, chunk_users, ks, interests=True, index=index)
    else:
        tops = retrieve_lists(model, collator, samples, chunk_users, ks, index=index)
    metrics = set_retrieval_metrics(tops, target_offsets, dataset.item_idx[target_rows])
    if details:
        finite = redundancy[np.isfinite(redundancy)]
        if finite.size:  # only models with several interests (NaN is no JSON number and never equals itself)
            metrics["interest_redundancy"] = float(finite.mean())
        from lifelong.beyond import category_diversity

        cates = item_categories(dataset, int(model.item_vectors().shape[0]))
        for k, top in tops.items():
            metrics[f"top{k}_category_diversity"] = category_diversity(top, cates)
        history = history_items_in_lists(tops, samples, dataset)
        metrics.update({f"top{k}_history_items": value for k, value in history.items()})
    return (metrics, tops) if keep_tops else metrics


def history_items_in_lists(tops: dict[int, np.ndarray], samples: SampleTable, dataset: PreparedDataset) -> dict[int, float]:
    """``{K: mean number of items of a row's top-K list that occur in its input events[:end]}``."""
    user = samples.user.astype(np.int64)
    begin, size = dataset.offsets[user], samples.end.astype(np.int64)
    rows = np.repeat(np.arange(user.shape[0], dtype=np.int64), size)
    events = np.repeat(begin - np.concatenate([[0], np.cumsum(size)[:-1]]), size) + np.arange(int(size.sum()))
    seen = dataset.item_idx[dataset.event_items[events]].astype(np.int64)
    span = int(max(int(dataset.item_idx.max(initial=0)), *(int(top.max(initial=0)) for top in tops.values())) + 1)
    seen_keys = np.unique(rows * span + seen)
    out = {}
    for k, top in tops.items():
        top = np.asarray(top, dtype=np.int64)
        keys = np.arange(top.shape[0], dtype=np.int64)[:, None] * span + top
        out[k] = float(np.isin(keys, seen_keys).sum(axis=1).mean())
    return out


def item_categories(dataset: PreparedDataset, n_items: int) -> np.ndarray:
    """(n_items,) category vocabulary index of every item vocabulary index (0 for padding/unknown)."""
    cates = np.zeros(n_items, dtype=np.int64)
    known = dataset.item_idx >= FIRST_RANKED
    cates[dataset.item_idx[known]] = dataset.item_cate[known]
    return cates
