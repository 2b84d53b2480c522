"""kNN-Embed's mechanism beyond the common retrieval contract: the budget split, the mixtures and their
neighbour smoothing, the component queries, the budgeted union and the single-vector base model."""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F

from lifelong.models import build_model
from lifelong.models.knn_embed import budget_split, budgeted_union, component_weights, distinct_clusters
from lifelong.nn.cluster import kmeans
from lifelong.models.multi_interest import MultiInterestModel
from lifelong.streams import STREAMS
from lifelong.train.checkpoint import load_weights, save_checkpoint

from helpers import random_batch, select

TINY = {"model_type": "knn_embed", "n_items": 30, "n_cates": 8, "embedding_dim": 8, "hidden": (16,),
        "negatives": 8, "clusters": 4, "interests": 2, "neighbors": 3}


def tiny(**overrides):
    torch.manual_seed(0)
    return build_model({**TINY, **overrides}).eval()


def bank_batch():
    """12 'training users' with ids 0..11."""
    return random_batch(batch_size=12, width=7, seed=21)


def held_out_batch():
    batch = random_batch(batch_size=6, width=7, seed=22)
    batch.users = batch.users + 100  # not in the bank
    return batch


def fitted(**overrides):
    model = tiny(**overrides)
    model.prepare_retrieval(lambda: [bank_batch()])
    return model


def same_weights(model, **overrides):
    """A model with other config values and the same weights and fitted state."""
    other = tiny(**overrides)
    other.load_state_dict(model.state_dict())
    return other.eval()


# ---- budget split -----------------------------------------------------------------------------------


def test_budget_split_is_the_largest_remainder_and_adds_up_to_k():
    assert budget_split(torch.tensor([[0.5, 0.3, 0.2]]), 7).tolist() == [[4, 2, 1]]  # 3.5 2.1 1.4
    assert budget_split(torch.tensor([[1.0, 1.0, 1.0]]), 4).tolist() == [[2, 1, 1]]  # ties: lower column
    assert budget_split(torch.tensor([[0.6, 0.4, 0.0]]), 3).tolist() == [[2, 1, 0]]  # 1.8 1.2 0
    assert budget_split(torch.tensor([[2.0, 6.0]]), 5).tolist() == [[1, 4]]  # normalised: 1.25 3.75
    assert budget_split(torch.tensor([[0.3, 0.7]]), 0).tolist() == [[0, 0]]
    g = torch.Generator().manual_seed(0)
    weights = torch.rand(300, 5, generator=g) * (torch.rand(300, 5, generator=g) > 0.3)
    weights[:, 0] += 0.01  # every row has a positive sum
    for k in (1, 7, 20, 50):
        budget = budget_split(weights, k)
        quota = weights.double() / weights.double().sum(1, keepdim=True) * k
        assert (budget.sum(1) == k).all()
        assert ((budget - quota).abs() < 1).all() and (budget >= quota.floor()).all()
        assert (budget[weights == 0] == 0).all()
        # largest remainder: every component given an extra item has a fraction >= every one not given
        fraction = quota - quota.floor()
        extra = budget > quota.floor()
        lowest_given = torch.where(extra, fraction, torch.inf).amin(1)
        highest_not = torch.where(~extra, fraction, -torch.inf).amax(1)
        assert (lowest_given >= highest_not).all()


def test_budget_split_rejects_bad_weights():
    with pytest.raises(ValueError, match="positive sum"):
        budget_split(torch.zeros(1, 3), 5)
    with pytest.raises(ValueError, match="non-negative"):
        budget_split(torch.tensor([[1.0, -0.5]]), 5)


# ---- the budgeted union ----------------------------------------------------------------------------


ITEMS = torch.tensor([[0.0, 0.0], [0.0, 0.0],  # padding, unknown (would win if they were ranked)
                      [1.0, 0.0], [0.9, 0.1], [0.8, 0.2], [0.7, 0.3],  # rows 2..5 near the x axis
                      [0.0, 1.0], [0.1, 0.9], [0.2, 0.8]]) * 10  # rows 6..8 near the y axis


def test_each_component_retrieves_its_budget_and_the_lists_interleave():
    users = torch.tensor([[[0.75, 0.0], [0.0, 0.25]]])  # weights carried as the norms
    top = budgeted_union(users, ITEMS, component_weights(users), 4)
    # x: 3 items at keys 1/6, 3/6, 5/6; y: 1 item at key 1/2, after x's item at the same key (heavier first)
    assert top.tolist() == [[2, 3, 6, 4]]
    assert budgeted_union(users, ITEMS, component_weights(users), 1).tolist() == [[2]]


def test_overlapping_components_fill_their_budget_with_their_next_best_unseen_items():
    users = torch.tensor([[[0.5, 0.0], [0.45, 0.05]]])  # both near the x axis: their top lists overlap
    top = budgeted_union(users, ITEMS, component_weights(users), 4)
    # budgets 2 / 2: the heavier takes 2, 3; the lighter's best two (2, 3) are taken, so it takes 4, 5
    assert top.tolist() == [[2, 4, 3, 5]]
    assert len(set(top[0].tolist())) == 4


def test_a_copied_slot_is_a_switched_off_component_and_gets_no_budget():
    users = torch.tensor([[[0.0, 0.7], [1.0, 0.0], [0.0, 0.7]]])  # slot 2 is an exact copy of slot 0
    weights = component_weights(users)
    torch.testing.assert_close(weights, torch.tensor([[0.7 / 1.7, 1.0 / 1.7, 0.0]]))
    with pytest.raises(ValueError, match="rankable"):
        budgeted_union(users, ITEMS, weights, 8)  # only 7 rankable items


# ---- before fitting: the single-vector model ------------------------------------------------------


def test_before_fitting_the_model_is_youtube_dnn_with_one_interest():
    model = tiny(loss="sampled")
    torch.manual_seed(0)
    baseline = build_model({"model_type": "youtube_dnn", "n_items": 30, "n_cates": 8, "embedding_dim": 8,
                            "hidden": (16,), "negatives": 8, "loss": "sampled"}).eval()
    baseline.load_state_dict({k: v for k, v in model.state_dict().items() if k.startswith(("item.", "tower."))})
    batch = random_batch(seed=3)
    vectors, valid = model.interests(batch)
    assert vectors.shape == (len(batch), 1, 8) and valid.all()
    torch.testing.assert_close(model.user_vectors(batch), baseline.user_vectors(batch))
    items = model.item_vectors()
    for k in (1, 5, 28):
        assert torch.equal(model.retrieve(model.user_vectors(batch), items, k),
                           MultiInterestModel.retrieve(model, model.user_vectors(batch), items, k))
    model.train(), baseline.train()
    torch.manual_seed(9), STREAMS.reset(9)  # dropout; the negatives stream
    ours = model(batch).loss
    torch.manual_seed(9), STREAMS.reset(9)
    torch.testing.assert_close(ours, baseline(batch).loss)
    with pytest.raises(ValueError, match="prepare_retrieval"):
        model.mixture(batch)


def test_training_stays_single_vector_after_fitting():
    model = fitted(loss="sampled")
    unfitted = tiny(loss="sampled")
    batch = random_batch(seed=4)
    assert model.interests(batch)[0].shape[1] == 2  # fitted: two components in evaluation
    model.train(), unfitted.train()
    torch.manual_seed(1), STREAMS.reset(1)  # dropout; the negatives stream
    output = model(batch)
    torch.manual_seed(1), STREAMS.reset(1)
    torch.testing.assert_close(output.loss, unfitted(batch).loss)
    assert output.user_vectors.shape == (len(batch), 1, 8)


# ---- fitting: clusters and mixtures --------------------------------------------------------------


def test_kmeans_is_seeded_deterministic_and_clusters_only_the_rankable_items():
    model = tiny()
    model.prepare_retrieval(lambda: [bank_batch()])
    first = model.item_cluster.clone(), model.centroids.clone()
    torch.manual_seed(123)  # the global RNG plays no part
    model.prepare_retrieval(lambda: [bank_batch()])
    assert torch.equal(model.item_cluster, first[0]) and torch.equal(model.centroids, first[1])
    assert model.item_cluster[:2].tolist() == [-1, -1]
    assert set(model.item_cluster[2:].tolist()) == {0, 1, 2, 3}
    # obvious groups are found, whatever the seed
    groups = torch.arange(12) // 3  # 4 groups of 3 points
    points = F.one_hot(groups, 4).float() * 10 + torch.randn(12, 4, generator=torch.Generator().manual_seed(0)) * 0.1
    for seed in range(3):
        _, assignment = kmeans(points, 4, 10, torch.Generator().manual_seed(seed), init="kmeans++")
        assert all(len(set(assignment[groups == g].tolist())) == 1 for g in range(4))
        assert len(set(assignment.tolist())) == 4


def test_raw_mixture_is_add_alpha_smoothed_cluster_counts():
    model = fitted(pseudo_count=0.5)
    batch = held_out_batch()
    raw = model.raw_mixture(batch)
    torch.testing.assert_close(raw.sum(1), torch.ones(len(batch)))
    for row in range(len(batch)):
        items = batch.history_items[row, batch.history_mask[row]]
        counts = torch.bincount(model.item_cluster[items], minlength=4).float()
        torch.testing.assert_close(raw[row], (counts + 0.5) / (len(items) + 4 * 0.5))
    assert torch.equal(model.bank_mixtures, model.raw_mixture(bank_batch()))  # the bank holds raw mixtures


def test_mixture_sums_to_one_before_and_after_smoothing():
    model = fitted()
    for batch in (held_out_batch(), bank_batch()):
        torch.testing.assert_close(model.raw_mixture(batch).sum(1), torch.ones(len(batch)))
        torch.testing.assert_close(model.mixture(batch).sum(1), torch.ones(len(batch)))
        _, weights = model.components(batch)
        torch.testing.assert_close(weights.sum(1), torch.ones(len(batch)))


def test_neighbour_smoothing_interpolates_between_the_raw_mixture_and_the_neighbours_mean():
    model = fitted(neighbor_weight=0.5)
    batch = held_out_batch()
    raw = model.raw_mixture(batch)
    # the neighbours by hand: the 3 bank users with the largest cosine of base vectors
    unit = F.normalize(model.base_embedding(batch), dim=1)
    nearest = (unit @ model.bank_vectors.T).topk(3, dim=1).indices  # (B, 3)
    neighbours = model.bank_mixtures[nearest].mean(1)  # (B, C)
    assert not torch.allclose(raw, neighbours)
    torch.testing.assert_close(same_weights(model, neighbor_weight=0.0).mixture(batch), raw)
    torch.testing.assert_close(same_weights(model, neighbor_weight=1.0).mixture(batch), neighbours)
    torch.testing.assert_close(model.mixture(batch), 0.5 * raw + 0.5 * neighbours)


def test_a_training_user_is_not_its_own_neighbour():
    model = fitted(neighbor_weight=1.0, neighbors=1)
    batch = bank_batch()
    unit = F.normalize(model.base_embedding(batch), dim=1)
    similarity = unit @ model.bank_vectors.T
    similarity.fill_diagonal_(float("-inf"))  # bank row i is user i
    torch.testing.assert_close(model.mixture(batch), model.bank_mixtures[similarity.argmax(1)])
    # the same histories as held-out users (other ids) find themselves
    batch.users = batch.users + 100
    torch.testing.assert_close(model.mixture(batch), model.bank_mixtures)


# ---- components and retrieval of the fitted model ------------------------------------------------


def test_components_are_the_top_clusters_and_their_weights_travel_as_the_query_norms():
    model = fitted()
    batch = held_out_batch()
    smoothed = model.mixture(batch)
    clusters, weights = model.components(batch)
    top = smoothed.sort(dim=1, descending=True, stable=True)
    assert torch.equal(clusters, top.indices[:, :2])
    torch.testing.assert_close(weights, top.values[:, :2] / top.values[:, :2].sum(1, keepdim=True))
    vectors = model.user_vectors(batch)
    torch.testing.assert_close(vectors.norm(dim=-1), weights)
    torch.testing.assert_close(component_weights(vectors), weights)
    items = model.item_vectors()
    units = model.component_queries(batch, model.base_embedding(batch), clusters)
    assert torch.equal(model.retrieve(vectors, items, 9), budgeted_union(units, items, weights, 9))


def test_component_query_blends_the_cluster_history_mean_or_the_centroid_with_the_user_vector():
    model = fitted(user_blend=0.25)
    batch = held_out_batch()
    user = model.base_embedding(batch)
    clusters = torch.arange(4).expand(len(batch), 4)  # every cluster, with and without history there
    queries = model.component_queries(batch, user, clusters)
    seen = 0
    for row in range(len(batch)):
        items = batch.history_items[row, batch.history_mask[row]]
        for c in range(4):
            inside = items[model.item_cluster[items] == c]
            anchor = model.item.weight[inside].mean(0) if len(inside) else model.centroids[c]
            seen += bool(len(inside))
            expected = F.normalize(0.75 * F.normalize(anchor, dim=0) + 0.25 * F.normalize(user[row], dim=0), dim=0)
            torch.testing.assert_close(queries[row, c], expected)
    assert 0 < seen < 4 * len(batch)  # both cases were checked


@pytest.mark.parametrize("k", [1, 5, 20, 28])
def test_retrieve_returns_k_distinct_rankable_items(k):
    model = fitted()
    batch = held_out_batch()
    top = model.retrieve(model.user_vectors(batch), model.item_vectors(), k)
    assert top.shape == (len(batch), k)
    assert (top >= 2).all() and (top < 30).all()
    assert all(len(set(row)) == k for row in top.tolist())


def test_a_user_with_one_component_gets_the_whole_budget_from_it():
    model = fitted(pseudo_count=0.0, neighbor_weight=0.0)
    batch = held_out_batch()
    item = int((model.item_cluster == 0).nonzero()[0])
    batch.history_items[0, batch.history_mask[0]] = item  # every event in cluster 0
    vectors, valid = model.interests(batch)
    assert valid[0].tolist() == [True, False]  # the second component has weight 0: switched off
    users = model.user_vectors(batch)
    assert torch.equal(users[0, 1], users[0, 0])  # the base class's copy
    items = model.item_vectors()
    scores = users[0, 0] @ items.T
    scores[:2] = float("-inf")
    assert torch.equal(model.retrieve(users, items, 10)[0], scores.topk(10).indices)


def test_mixture_query_covers_more_clusters_than_the_single_embedding():
    model = tiny(embedding_dim=8, hidden=(), clusters=4, interests=2, neighbor_weight=0.0)
    groups = torch.arange(28) // 7  # 4 item groups of 7 along 4 axes
    with torch.no_grad():
        noise = torch.randn(28, 8, generator=torch.Generator().manual_seed(0))
        model.item.weight[2:] = F.one_hot(groups, 8).float() + 0.01 * noise
        model.tower[0].weight.copy_(torch.eye(8))  # base vector = mean history embedding
        model.tower[0].bias.zero_()
    model.prepare_retrieval(lambda: [bank_batch()])
    a, b = [int((groups == g).nonzero()[0]) + 2 for g in (0, 1)]
    batch = select(held_out_batch(), torch.tensor([0]), width=4)
    batch.history_items[:] = torch.tensor([[a, a + 1, a + 2, b]])  # 3 events in one group, 1 in another
    batch.history_mask[:] = True
    diversity = model.cluster_diversity(batch, 4)
    assert diversity["single"].tolist() == [1] and diversity["mixture"].tolist() == [2]
    top = model.retrieve(model.user_vectors(batch), model.item_vectors(), 4)
    assert sorted(groups[top[0] - 2].tolist()) == [0, 0, 0, 1]  # budgets 3 / 1
    assert distinct_clusters(top, model.item_cluster).tolist() == [2]


def test_fitted_user_vectors_are_the_same_alone_and_in_any_order():
    model = fitted()
    batch = held_out_batch()
    full = model.user_vectors(batch)
    for i in range(len(batch)):
        alone = model.user_vectors(select(batch, torch.tensor([i]), width=int(batch.lengths[i]) + 2))
        torch.testing.assert_close(alone, full[i : i + 1], rtol=1e-5, atol=1e-6)
    order = torch.tensor([3, 0, 5, 1, 4, 2])
    torch.testing.assert_close(model.user_vectors(select(batch, order)), full[order], rtol=1e-5, atol=1e-6)


def test_the_fitted_state_round_trips_through_a_checkpoint(tmp_path):
    model = fitted()
    save_checkpoint(tmp_path / "ckpt", model, model.config.to_dict(), {"epoch": 1})
    restored = tiny()
    load_weights(tmp_path / "ckpt", restored)
    assert bool(restored.fitted) and restored.bank_users.shape == (12,)
    batch = held_out_batch()
    items = model.item_vectors()
    assert torch.equal(restored.retrieve(restored.user_vectors(batch), items, 10),
                       model.retrieve(model.user_vectors(batch), items, 10))


@pytest.mark.parametrize("overrides, message", [
    ({"clusters": 29}, "clusters"),
    ({"interests": 5}, "interests"),
    ({"neighbor_weight": 1.5}, "neighbor_weight"),
    ({"user_blend": 1.0}, "user_blend"),
    ({"pseudo_count": -0.1}, "pseudo_count"),
    ({"neighbors": 0}, "neighbors"),
])
def test_config_rejects_out_of_range_values(overrides, message):
    with pytest.raises(ValueError, match=message):
        build_model({**TINY, **overrides})


def test_single_query_retrieves_with_the_base_embedding_and_keeps_the_fitted_mixture():
    model = fitted()
    batch = held_out_batch()
    items = model.item_vectors()
    mixture = model.retrieve(model.user_vectors(batch), items, 5)
    with model.single_query():
        single = model.retrieve(model.user_vectors(batch), items, 5)
        assert model.user_vectors(batch).shape[1] == 1
    base = model.base_embedding(batch) @ items.T
    base[:, :2] = float("-inf")
    assert torch.equal(single, base.topk(5, dim=1).indices)
    assert bool(model.fitted) and torch.equal(model.retrieve(model.user_vectors(batch), items, 5), mixture)
