"""ETA mechanism tests: SimHash signatures, top-k by Hamming distance, exact attention over them."""

from __future__ import annotations

import pytest
import torch

from lifelong.batch import Batch
from lifelong.models import build_model
from lifelong.models.ranking import Candidates
from lifelong.nn.hashing import hamming_distance, hash_bits, pack_bits, popcount
from lifelong.nn.search import gather_events

from helpers import many_keys_batch, random_batch, random_candidates, repeating_batch, select, select_candidates
from model_configs import TINY_CONFIGS, TINY_VOCAB


def eta(seed: int = 0, **options):
    torch.manual_seed(seed)
    model = build_model({"model_type": "eta", **TINY_VOCAB, **TINY_CONFIGS["eta"], **options})
    with torch.no_grad():
        for table in (model.embedding.item, model.embedding.cate):
            table.weight.normal_()
            table.weight[0].zero_()
    return model.eval()


def search_sets(model, batch, candidates):
    with torch.no_grad():
        state = model.encode_user(batch)
        found = model.search(state, candidates, model.embedding.candidates(candidates))
        index, valid = found if isinstance(found, tuple) else (found, True)
        real = gather_events(state.mask, index) & valid
    return [[set(index[b, k][real[b, k]].tolist()) for k in range(index.shape[1])] for b in range(index.shape[0])]


def test_popcount_and_packing():
    words = torch.tensor([0, 1, 3, -1, 2 ** 62, -(2 ** 63)])
    assert popcount(words).tolist() == [0, 1, 2, 64, 1, 1]
    bits = torch.rand(3, 70, generator=torch.Generator().manual_seed(0)) > 0.5
    assert popcount(pack_bits(bits)).sum(dim=-1).tolist() == bits.sum(dim=-1).tolist()


def test_hamming_distance_by_matmul_equals_the_popcount_reference():
    g = torch.Generator().manual_seed(1)
    query, history = torch.rand(2, 5, 64, generator=g) > 0.5, torch.rand(2, 9, 64, generator=g) > 0.5
    expected = (query.unsqueeze(2) != history.unsqueeze(1)).sum(dim=-1)
    assert torch.equal(hamming_distance(query, history, impl="matmul"), expected)
    assert torch.equal(hamming_distance(query, history, impl="popcount"), expected)


@pytest.mark.parametrize("top_k", [1, 3, 5])
def test_search_keeps_the_smallest_hamming_distances_ties_to_the_most_recent(top_k):
    model = eta(top_k=top_k, hashes=6)  # few bits: many ties
    batch = random_batch(batch_size=6, width=9, seed=2)
    candidates = random_candidates(batch, k=4, seed=3)
    got = search_sets(model, batch, candidates)
    with torch.no_grad():
        h = hash_bits(model.embedding.history(batch), model.projections)
        q = hash_bits(model.embedding.candidates(candidates), model.projections)
    distance = (q.unsqueeze(2) != h.unsqueeze(1)).sum(dim=-1)  # (B, K, T)
    for b in range(len(batch)):
        n = int(batch.history_mask[b].sum())
        for k in range(4):
            ranked = sorted(range(n), key=lambda t: (int(distance[b, k, t]), -t))
            assert got[b][k] == set(ranked[:top_k]), (b, k)


def test_matmul_and_popcount_search_select_the_same_events_and_scores():
    batch = random_batch(batch_size=8, width=9, seed=4)
    candidates = random_candidates(batch, k=5, seed=5)
    fast, reference = eta(hashes=8), eta(hashes=8, search_impl="popcount")
    assert search_sets(fast, batch, candidates) == search_sets(reference, batch, candidates)
    with torch.no_grad():
        torch.testing.assert_close(fast.score(fast.encode_user(batch), candidates),
                                   reference.score(reference.encode_user(batch), candidates))


@pytest.mark.parametrize("top_k", [4, 25])
def test_search_over_distinct_keys_selects_the_events_of_the_search_over_every_event(top_k):
    """A few items repeated over 120 events: the keys are hashed once each and a key contributes several
    of its events to the top k (the most recent ones); the same events and scores as hashing every event."""
    batch = repeating_batch()
    candidates = random_candidates(batch, k=6, seed=31)
    distinct, every = eta(hashes=6, top_k=top_k), eta(hashes=6, top_k=top_k, distinct=False)
    with torch.no_grad():
        assert distinct.encode_user(batch).distinct is not None and every.encode_user(batch).distinct is None
        assert search_sets(distinct, batch, candidates) == search_sets(every, batch, candidates)
        torch.testing.assert_close(distinct.score(distinct.encode_user(batch), candidates),
                                   every.score(every.encode_user(batch), candidates))
        state = distinct.encode_user(batch)
        rows = torch.tensor([3, 0])  # a cache's rows: the states of users 3 and 0
        torch.testing.assert_close(distinct.score(state.select(rows), select_candidates(candidates, rows)),
                                   distinct.score(state, candidates)[rows])
    sizes = [len(s) for row in search_sets(distinct, batch, candidates) for s in row]
    assert max(sizes) == top_k and min(sizes) == 3  # the 3-event history keeps all three


def test_selection_does_not_depend_on_padding():
    model = eta(hashes=4, top_k=2)
    batch = random_batch(batch_size=6, width=9, seed=6)
    candidates = random_candidates(batch, k=3, seed=7)
    wider = select(batch, torch.arange(6), width=40)
    assert search_sets(model, batch, candidates) == search_sets(model, wider, candidates)


def test_only_retrieved_events_reach_the_score():
    model = eta(top_k=2, short_length=1)
    batch = select(random_batch(batch_size=2, width=9, seed=10), torch.tensor([0]))  # 9 events
    candidates = random_candidates(batch, k=1, seed=11)
    chosen = search_sets(model, batch, candidates)[0][0]
    with torch.no_grad():
        base = model.score(model.encode_user(batch), candidates)
        for position in range(8):  # the last event is the short sequence
            changed = select(batch, torch.arange(1))
            changed.history_cates = batch.history_cates.clone()
            changed.history_cates[0, position] = 7 if batch.history_cates[0, position] != 7 else 6
            still = search_sets(model, changed, candidates)[0][0] == chosen
            if position not in chosen and still:  # an unretrieved event that stays unretrieved adds nothing
                torch.testing.assert_close(model.score(model.encode_user(changed), candidates), base)
            if position in chosen and still:
                assert not torch.allclose(model.score(model.encode_user(changed), candidates), base)


def test_hamming_top_k_recalls_most_of_the_inner_product_top_k():
    """Random embeddings shaped like this model's items (an id half and one of 20 category embeddings):
    the 64-bit Hamming top-50 of 1,000 behaviors holds about 60% of the inner-product top-50 (chance: 5%)."""
    torch.manual_seed(0)
    model = build_model({"model_type": "eta", "n_items": 5000, "n_cates": 22, "embedding_dim": 32, "top_k": 50})
    with torch.no_grad():
        for table in (model.embedding.item, model.embedding.cate):
            table.weight.normal_()
    g = torch.Generator().manual_seed(1)
    users, length, k = 16, 1000, 8
    batch = Batch(history_items=torch.randint(2, 5000, (users, length), generator=g),
                  history_cates=torch.randint(2, 22, (users, length), generator=g),
                  history_mask=torch.ones(users, length, dtype=torch.bool), target_items=torch.zeros(users, dtype=torch.long),
                  target_cates=torch.zeros(users, dtype=torch.long), labels=torch.zeros(users),
                  users=torch.arange(users))
    candidates = Candidates(items=torch.randint(2, 5000, (users, k), generator=g),
                            cates=torch.randint(2, 22, (users, k), generator=g))
    got = search_sets(model.eval(), batch, candidates)
    with torch.no_grad():
        inner = torch.einsum("bkd,btd->bkt", model.embedding.candidates(candidates), model.embedding.history(batch))
    best = torch.topk(inner, 50, dim=-1).indices
    recall = sum(len(got[b][j] & set(best[b, j].tolist())) for b in range(users) for j in range(k)) / (users * k * 50)
    assert recall > 0.55, f"recall {recall:.3f}"


def test_search_over_many_distinct_keys_cut_to_a_bound_selects_the_events_of_the_search_over_every_event():
    """At least 8 k distinct keys: the keys are first cut to those at or above a bound k of them reach
    (lifelong.nn.search.best_keys); the same events and scores as hashing every event."""
    batch = many_keys_batch()
    candidates = random_candidates(batch, k=6, seed=32)
    distinct, every = eta(hashes=6, top_k=2), eta(hashes=6, top_k=2, distinct=False)
    with torch.no_grad():
        assert distinct.encode_user(batch).distinct.first.shape[1] >= 16
        assert search_sets(distinct, batch, candidates) == search_sets(every, batch, candidates)
        torch.testing.assert_close(distinct.score(distinct.encode_user(batch), candidates),
                                   every.score(every.encode_user(batch), candidates))
