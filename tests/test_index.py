"""The faiss item index: exact search against brute force, the merged per-interest search against the
top-k of max-over-interests scores, kNN-Embed's budgeted search, approximate recall, save/load."""

from __future__ import annotations

import faiss
import numpy as np
import pytest
import torch

from lifelong.index import ItemIndex, interest_budgets, merge_unique


def brute_top_k(queries: np.ndarray, vectors: np.ndarray, k: int) -> tuple[np.ndarray, np.ndarray]:
    """Top-k vocabulary ids (rows >= 2) and scores by inner product, by numpy."""
    scores = queries.astype(np.float64) @ vectors.T.astype(np.float64)  # (B, N)
    scores[:, :2] = -np.inf
    ids = np.argsort(-scores, axis=1, kind="stable")[:, :k]
    return np.take_along_axis(scores, ids, axis=1), ids


def clustered(n: int, dim: int, clusters: int, seed: int, spread: float = 0.3) -> np.ndarray:
    rng = np.random.default_rng(seed)
    centers = rng.normal(size=(clusters, dim))
    vectors = centers[rng.integers(clusters, size=n)] + spread * rng.normal(size=(n, dim))
    return (vectors * rng.lognormal(0, 0.3, size=(n, 1))).astype(np.float32)  # varied norms


@pytest.fixture(scope="module")
def items():
    vectors = np.random.default_rng(0).normal(size=(300, 16)).astype(np.float32)
    vectors[:2] *= 100  # padding and unknown would win every query: they must never come back
    return vectors


def test_exact_index_equals_brute_force_and_never_returns_padding_or_unknown(items):
    queries = np.random.default_rng(1).normal(size=(25, 16)).astype(np.float32)
    index = ItemIndex.build(items, "exact", threads=1)
    assert len(index) == 298 and faiss.omp_get_max_threads() == 1
    scores, ids = index.search(queries, 10)
    expected_scores, expected_ids = brute_top_k(queries, items, 10)
    np.testing.assert_array_equal(ids, expected_ids)
    np.testing.assert_allclose(scores, expected_scores, rtol=1e-5, atol=1e-5)
    # a CPU torch tensor is accepted; k beyond the catalogue pads with -1 / -inf
    _, torch_ids = index.search(torch.from_numpy(queries), 10)
    np.testing.assert_array_equal(torch_ids, ids)
    scores, ids = index.search(queries[:1], 300)
    assert (ids[0, :298] >= 2).all() and (ids[0, 298:] == -1).all() and np.isneginf(scores[0, 298:]).all()


def test_merged_interest_search_equals_top_k_of_best_interest_scores(items):
    rng = np.random.default_rng(2)
    interests = rng.normal(size=(12, 4, 16)).astype(np.float32)  # (B, K, D)
    interests[:, 1] = interests[:, 0] + 0.05 * rng.normal(size=(12, 16))  # near-copies: many duplicates
    valid = rng.random((12, 4)) < 0.7
    valid[:, 0] = True
    interests[~valid] *= 50  # switched-off interests would dominate if they were searched
    index = ItemIndex.build(items, "exact")
    scores, ids = index.search_interests(interests, 20, valid=valid, return_scores=True)
    # brute force: the score of an item is its best valid interest's inner product
    per_interest = np.einsum("bkd,nd->bkn", interests.astype(np.float64), items.astype(np.float64))
    best = np.where(valid[:, :, None], per_interest, -np.inf).max(axis=1)  # (B, N)
    best[:, :2] = -np.inf
    expected = np.argsort(-best, axis=1, kind="stable")[:, :20]
    np.testing.assert_array_equal(ids, expected)
    np.testing.assert_allclose(scores, np.take_along_axis(best, expected, axis=1), rtol=1e-5, atol=1e-5)
    assert all(len(set(row)) == 20 for row in ids.tolist())
    # all interests valid = valid=None
    np.testing.assert_array_equal(index.search_interests(interests, 20),
                                  index.search_interests(interests, 20, valid=np.ones((12, 4), bool)))


def test_merge_keeps_each_item_once_with_its_best_score_and_pads_when_short():
    scores = np.array([[0.2, 0.9, 0.5, 0.7, -np.inf]], dtype=np.float32)
    ids = np.array([[5, 3, 5, 8, -1]])
    merged_scores, merged_ids = merge_unique(scores, ids, 4)
    assert merged_ids.tolist() == [[3, 8, 5, -1]]
    np.testing.assert_allclose(merged_scores[0, :3], [0.9, 0.7, 0.5])


def test_budgeted_search_gives_each_component_its_share_of_distinct_items():
    # three well-separated clusters of 100 items; component c queries cluster c
    rng = np.random.default_rng(3)
    centers = 10 * np.eye(3, 16)
    vectors = np.concatenate([np.zeros((2, 16)), np.repeat(centers, 100, axis=0) + rng.normal(size=(300, 16))])
    vectors = vectors.astype(np.float32)
    cluster_of = np.concatenate([[-1, -1], np.repeat(np.arange(3), 100)])
    index = ItemIndex.build(vectors, "exact")
    queries = np.repeat(centers[None].astype(np.float32), 4, axis=0)  # (B=4, C=3, D)
    budgets = np.array([[5, 3, 2], [10, 0, 0], [0, 4, 6], [1, 1, 8]])
    scores, ids = index.search_budgeted(queries, budgets, return_scores=True)
    assert ids.shape == (4, 10) and (np.diff(scores, axis=1) <= 0).all()
    for row, budget in zip(ids, budgets):
        assert len(set(row.tolist())) == 10
        np.testing.assert_array_equal(np.bincount(cluster_of[row], minlength=3), budget)
        for c in range(3):  # each component's items are its own best ones
            top = set(brute_top_k(queries[0, [c]], vectors, budget[c])[1][0].tolist()) if budget[c] else set()
            assert set(row[cluster_of[row] == c].tolist()) == top


def test_budgeted_search_goes_deeper_when_components_overlap(items):
    rng = np.random.default_rng(4)
    query = rng.normal(size=16).astype(np.float32)
    other = rng.normal(size=16).astype(np.float32)
    index = ItemIndex.build(items, "exact")
    # two identical components: the second skips the first's items, so the union is the query's top 7
    same = index.search_budgeted(np.stack([query, query])[None], np.array([[4, 3]]))
    assert set(same[0].tolist()) == set(brute_top_k(query[None], items, 7)[1][0].tolist())
    # the larger budget chooses first: component 1 (budget 5) takes its top 5, component 0 the next best 2
    queries = np.stack([query, 0.5 * query + 0.5 * other])[None]  # overlapping tops
    ids = index.search_budgeted(queries, np.array([[2, 5]]))[0]
    top_1 = brute_top_k(queries[0, [1]], items, 5)[1][0]
    ranked_0 = brute_top_k(queries[0, [0]], items, 7)[1][0]
    expected_0 = [item for item in ranked_0 if item not in set(top_1)][:2]
    assert set(ids.tolist()) == set(top_1.tolist()) | set(expected_0)


def test_interest_budgets_are_proportional_and_sum_to_k():
    budgets = interest_budgets(np.array([[0.5, 0.3, 0.2], [1, 1, 1], [0, 0, 2], [0.12, 0.44, 0.44]]), 10)
    assert budgets.tolist() == [[5, 3, 2], [4, 3, 3], [0, 0, 10], [1, 5, 4]]
    weights = np.random.default_rng(5).dirichlet(np.ones(4), size=50)
    budgets = interest_budgets(weights, 50)
    assert (budgets.sum(axis=1) == 50).all() and (np.abs(budgets - 50 * weights) < 1).all()


@pytest.mark.parametrize("kind, params", [("ivf", {"nlist": 40, "nprobe": 8, "seed": 1}),
                                          ("hnsw", {"M": 16, "ef_search": 64, "ef_construction": 64})])
def test_approximate_indexes_reach_high_recall_on_clustered_items(kind, params):
    vectors = clustered(4000, 16, clusters=40, seed=6)
    queries = clustered(200, 16, clusters=40, seed=7)
    exact = ItemIndex.build(vectors, "exact").search(queries, 20)[1]
    approximate = ItemIndex.build(vectors, kind, **params).search(queries, 20)[1]
    recall = np.mean([len(set(a) & set(e)) / 20 for a, e in zip(approximate.tolist(), exact.tolist())])
    assert recall >= 0.9, recall


def test_ivf_nprobe_trades_recall_for_speed_and_all_lists_is_exact():
    vectors = clustered(3000, 16, clusters=30, seed=8)
    queries = clustered(100, 16, clusters=30, seed=9)
    exact = ItemIndex.build(vectors, "exact").search(queries, 10)[1]
    index = ItemIndex.build(vectors, "ivf", nlist=30, nprobe=1)
    recalls = []
    for nprobe in (1, 4, 30):
        index.set_search_params(nprobe=nprobe)
        ids = index.search(queries, 10)[1]
        recalls.append(np.mean([len(set(a) & set(e)) / 10 for a, e in zip(ids.tolist(), exact.tolist())]))
    assert recalls[0] <= recalls[1] <= recalls[2] == 1.0 and recalls[0] < 1.0
    with pytest.raises(ValueError, match="cannot be changed after building"):
        index.set_search_params(nlist=10)


@pytest.mark.parametrize("kind, params", [("exact", {}), ("ivf", {"nlist": 16, "nprobe": 3}),
                                          ("hnsw", {"M": 8, "ef_search": 40})])
def test_save_load_round_trip(tmp_path, kind, params):
    vectors = clustered(1000, 8, clusters=16, seed=10)
    queries = clustered(30, 8, clusters=16, seed=11)
    index = ItemIndex.build(vectors, kind, **params)
    loaded = ItemIndex.load(index.save(tmp_path / kind), threads=1)
    assert loaded.kind == kind and loaded.params == index.params and loaded.ids.tolist() == index.ids.tolist()
    for a, b in zip(index.search(queries, 15), loaded.search(queries, 15)):
        np.testing.assert_array_equal(a, b)


def test_invalid_arguments_are_reported():
    vectors = np.ones((20, 4), np.float32)
    with pytest.raises(ValueError, match="kind must be one of"):
        ItemIndex.build(vectors, "lsh")
    with pytest.raises(ValueError, match="unknown parameter nprobe; hnsw takes M, ef_search, ef_construction$"):
        ItemIndex.build(vectors, "hnsw", nprobe=4, M=8)  # the valid M is not blamed
    with pytest.raises(ValueError, match="nprobe must be an integer"):
        ItemIndex.build(vectors, "ivf", nprobe="4")
    with pytest.raises(ValueError, match="nlist must be in"):
        ItemIndex.build(vectors, "ivf", nlist=100)
    index = ItemIndex.build(vectors, "exact")
    with pytest.raises(ValueError, match="4 features"):
        index.search(np.ones((2, 5), np.float32), 3)
    with pytest.raises(ValueError, match="sum to the same k"):
        index.search_budgeted(np.ones((2, 2, 4), np.float32), np.array([[1, 2], [2, 2]]))
    with pytest.raises(ValueError, match="valid must be a bool array"):
        index.search_interests(np.ones((2, 3, 4), np.float32), 3, valid=np.ones((2, 2), bool))
    with pytest.raises(FileNotFoundError, match="meta.json"):
        ItemIndex.load("/nonexistent-index-folder")
