"""TWIN mechanism tests: the search stage is the exact stage's own attention (consistency), over
pre-projected behaviors with the cross features as a scalar bias."""

from __future__ import annotations

import dataclasses

import pytest
import torch

from lifelong.models import build_model
from lifelong.models.tin import interval_buckets
from lifelong.nn.search import gather_events, top_k_events

from helpers import many_keys_batch, random_batch, random_candidates, repeating_batch, select, select_candidates
from model_configs import TINY_CONFIGS, TINY_VOCAB


def twin(seed: int = 0, **options):
    torch.manual_seed(seed)
    model = build_model({"model_type": "twin", **TINY_VOCAB, **TINY_CONFIGS["twin"], **options})
    with torch.no_grad():
        for table in (model.embedding.item, model.embedding.cate):
            table.weight.normal_()
            table.weight[0].zero_()
        model.esu.gap_bias.weight.normal_() if model.esu.gap_bias is not None else None
    return model.eval()


def exact_logits(model, batch, candidates):
    """The exact stage's attention logits of every behavior, summed over heads: (B, K, T)."""
    history = model.embedding.history(batch)  # (B, T, W)
    q = model.esu.queries(model.embedding.candidates(candidates))  # (B, K, H, d)
    k = model.esu.keys(history)  # (B, T, H, d)
    logits = torch.einsum("bkhd,bthd->bkt", q, k)
    if model.config.time_gap:
        gaps = interval_buckets(candidates.timestamps, batch.history_timestamps, batch.history_mask,
                                model.config.gap_buckets)
        logits = logits + model.esu.bias(gaps).sum(-1).unsqueeze(1)
    return logits


@pytest.mark.parametrize("k", [4, 12])  # fewer and more candidates than key rows: the two ways of adding the bias
@pytest.mark.parametrize("time_gap", [True, False])
def test_the_search_scores_are_the_exact_stages_own_logits(time_gap, k):
    model = twin(time_gap=time_gap)
    batch = random_batch(batch_size=6, width=9, seed=1)
    candidates = random_candidates(batch, k=k, seed=2)
    with torch.no_grad():
        state = model.encode_user(batch)
        assert state.keys.shape == (6, model.embedding.out_dim, 9)  # pre-projected once per behavior
        got = model.search_scores(state, candidates, model.embedding.candidates(candidates))
        expected = exact_logits(model, batch, candidates)
    real = batch.history_mask.unsqueeze(1).expand_as(got)
    torch.testing.assert_close(got[real], expected[real], rtol=1e-5, atol=1e-5)
    assert bool((got[~real] < -1e29).all())


@pytest.mark.parametrize("top_k", [1, 3])
def test_search_keeps_the_top_k_of_the_exact_logits(top_k):
    model = twin(top_k=top_k)
    batch = random_batch(batch_size=6, width=9, seed=3)
    candidates = random_candidates(batch, k=4, seed=4)
    with torch.no_grad():
        state = model.encode_user(batch)
        scores = model.search_scores(state, candidates, model.embedding.candidates(candidates))
        index = top_k_events(scores, top_k)
        expected = exact_logits(model, batch, candidates).masked_fill(~batch.history_mask.unsqueeze(1), float("-inf"))
    for b in range(6):
        n = min(top_k, int(batch.history_mask[b].sum()))
        for k in range(4):
            real = [int(t) for t in index[b, k] if batch.history_mask[b, t]]
            assert set(real) == set(torch.topk(expected[b, k], n).indices.tolist())


def test_the_cross_feature_bias_changes_which_behaviors_are_retrieved():
    model = twin(top_k=1)
    batch = select(random_batch(batch_size=2, width=9, seed=7), torch.tensor([0]))
    candidates = random_candidates(batch, k=1, seed=8)
    with torch.no_grad():
        state = model.encode_user(batch)
        target = model.embedding.candidates(candidates)
        before = top_k_of(model, state, candidates, target)
        gaps = interval_buckets(candidates.timestamps, batch.history_timestamps, batch.history_mask, 8)[0]
        other = next(t for t in range(9) if gaps[t] != gaps[before])
        model.esu.gap_bias.weight[gaps[other]] = 1e3  # the cross features of that gap dominate
        after = top_k_of(model, state, candidates, target)
    assert gaps[after] == gaps[other] and after != before


def top_k_of(model, state, candidates, target) -> int:
    return int(top_k_events(model.search_scores(state, candidates, target), 1)[0, 0, 0])


def test_a_behavior_outside_the_top_k_does_not_reach_the_score():
    model = twin(top_k=2, short_length=1)
    batch = select(random_batch(batch_size=2, width=9, seed=9), torch.tensor([0]))
    candidates = random_candidates(batch, k=1, seed=10)
    with torch.no_grad():
        state = model.encode_user(batch)
        target = model.embedding.candidates(candidates)
        scores = model.search_scores(state, candidates, target)[0, 0]
        kept = set(torch.topk(scores, 2).indices.tolist())
        base = model.score(state, candidates)
        worst = int(torch.argmin(scores[:8]))  # an old behavior far from the top 2
        moved = dataclasses.replace(batch, history_timestamps=batch.history_timestamps.clone())
        moved.history_timestamps[0, worst] -= 10 ** 4  # its gap changes a little: still far from the top
        moved_state = model.encode_user(moved)
        assert set(torch.topk(model.search_scores(moved_state, candidates, target)[0, 0], 2).indices.tolist()) == kept
        torch.testing.assert_close(model.score(moved_state, candidates), base)
        chosen = next(iter(kept - {8}))
        moved.history_timestamps[0, chosen] -= 10 ** 7
        assert not torch.allclose(model.score(model.encode_user(moved), candidates), base)
    assert gather_events(state.mask, torch.tensor([[[worst]]])).all()


def search_sets(model, batch, candidates):
    with torch.no_grad():
        state = model.encode_user(batch)
        target = model.embedding.candidates(candidates)
        if state.distinct is not None:
            index, valid = model.search_distinct(state, candidates, target)
        else:
            index, valid = top_k_events(model.search_scores(state, candidates, target), model.config.top_k), True
        real = gather_events(state.mask, index) & valid
    return [[set(index[b, k][real[b, k]].tolist()) for k in range(index.shape[1])] for b in range(index.shape[0])]


@pytest.mark.parametrize("time_gap", [True, False])
@pytest.mark.parametrize("top_k", [5, 30])
def test_search_over_distinct_behaviors_selects_the_events_of_the_search_over_every_event(top_k, time_gap):
    """A few items repeated over 120 events whose time gaps fall in many buckets: each distinct behavior is
    projected once, its events ranked by their cross-feature bias for the call; the same top k (ties to the
    most recent) and the same scores as scoring every event."""
    batch = repeating_batch()
    candidates = random_candidates(batch, k=6, seed=31)
    distinct, every = twin(top_k=top_k, time_gap=time_gap), twin(top_k=top_k, time_gap=time_gap, distinct=False)
    with torch.no_grad():
        state = distinct.encode_user(batch)
        assert state.distinct is not None and state.keys.shape[-1] < 60 and every.encode_user(batch).distinct is None
        assert search_sets(distinct, batch, candidates) == search_sets(every, batch, candidates)
        scores = distinct.score(state, candidates)
        torch.testing.assert_close(scores, every.score(every.encode_user(batch), candidates))
        rows = torch.tensor([4, 1])  # a cache's rows
        torch.testing.assert_close(distinct.score(state.select(rows), select_candidates(candidates, rows)), scores[rows])
    sizes = [len(s) for row in search_sets(distinct, batch, candidates) for s in row]
    assert max(sizes) == top_k and min(sizes) == 3


@pytest.mark.parametrize("time_gap", [True, False])
def test_search_over_many_distinct_behaviors_cut_to_a_bound_selects_the_events_of_the_search_over_every_event(time_gap):
    """At least 8 k distinct behaviors: they are first cut to those at or above a bound k of them reach
    (lifelong.nn.search.best_keys); the same top k and scores as scoring every event."""
    batch = many_keys_batch()
    candidates = random_candidates(batch, k=6, seed=32)
    distinct, every = twin(top_k=2, time_gap=time_gap), twin(top_k=2, time_gap=time_gap, distinct=False)
    with torch.no_grad():
        assert distinct.encode_user(batch).distinct.first.shape[1] >= 16
        assert search_sets(distinct, batch, candidates) == search_sets(every, batch, candidates)
        torch.testing.assert_close(distinct.score(distinct.encode_user(batch), candidates),
                                   every.score(every.encode_user(batch), candidates))


def test_a_reused_listing_follows_the_scoring_time():
    """The listing of a state's events by time-gap bias is kept for the next call while the gap buckets are
    unchanged; a later scoring time moves events to other buckets, and the search then lists them again:
    the same top k and scores as a fresh state and as scoring every event, at both times."""
    batch = repeating_batch()
    distinct, every = twin(top_k=5), twin(top_k=5, distinct=False)
    with torch.no_grad():
        state = distinct.encode_user(batch)
        for shift in (0, 0, 3_000_000, 3_000_000, 0):  # seconds after the batch's own scoring time
            candidates = random_candidates(batch, k=6, seed=33)
            candidates.timestamps = candidates.timestamps + shift
            expected = every.score(every.encode_user(batch), candidates)
            torch.testing.assert_close(distinct.score(state, candidates), expected)
            torch.testing.assert_close(distinct.score(distinct.encode_user(batch), candidates), expected)
            assert search_sets(distinct, batch, candidates) == search_sets(every, batch, candidates)


def test_the_listing_horizon_is_the_last_second_before_an_event_changes_gap_bucket():
    """bucket_horizon: within it every event keeps its gap bucket, two seconds past it one event has moved;
    the model reuses its listing within the horizon and lists again past it (scores equal to scoring every
    event at each time)."""
    from lifelong.models.twin import bucket_horizon

    batch = repeating_batch()
    g = torch.Generator().manual_seed(5)
    times = batch.timestamps - torch.randint(0, 5_000, batch.timestamps.shape, generator=g)
    buckets = interval_buckets(times, batch.history_timestamps, batch.history_mask, 24)
    horizon = bucket_horizon(times, batch.history_timestamps, batch.history_mask, buckets, 24)
    for user in range(len(batch)):
        one = slice(user, user + 1)
        at = lambda shift: interval_buckets(times[one] + shift, batch.history_timestamps[one],  # noqa: E731
                                            batch.history_mask[one], 24)
        h = int(horizon[user])
        assert torch.equal(at(h), buckets[one]) and not torch.equal(at(h + 2), buckets[one]), user
    distinct, every = twin(top_k=5), twin(top_k=5, distinct=False)
    n = distinct.config.gap_buckets
    own = interval_buckets(batch.timestamps, batch.history_timestamps, batch.history_mask, n)
    h = int(bucket_horizon(batch.timestamps, batch.history_timestamps, batch.history_mask, own, n).min())
    with torch.no_grad():
        state = distinct.encode_user(batch)
        candidates = random_candidates(batch, k=6, seed=34)
        listings = []
        for shift in (0, h, h + 2):
            candidates.timestamps = batch.timestamps + shift
            torch.testing.assert_close(distinct.score(state, candidates),
                                       every.score(every.encode_user(batch), candidates))
            listings.append(state._listing)
    assert listings[1] is listings[0] and listings[2] is not listings[0]  # reused within, listed again past
