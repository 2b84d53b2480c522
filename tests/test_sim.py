"""SIM mechanism tests: hard search (the candidate's category), soft search (inner product, auxiliary
loss), the exact stage over the retrieved events."""

from __future__ import annotations

import dataclasses

import pytest
import torch
import torch.nn.functional as F

from lifelong.models import build_model
from lifelong.models.ranking import Candidates
from lifelong.nn.search import gather_events

from test_search import full_attention
from helpers import (
    assert_candidates_score_as_forward_passes, many_keys_batch, random_batch, random_candidates, repeating_batch, select,
    select_candidates,
)
from model_configs import TINY_CONFIGS, TINY_VOCAB


def sim(search: str = "hard", seed: int = 0, **options):
    torch.manual_seed(seed)
    model = build_model({"model_type": "sim", **TINY_VOCAB, **TINY_CONFIGS["sim"], "search": search, "search_dim": 4,
                         "aux_hidden": (8,), **options})
    with torch.no_grad():  # unit-scale embeddings, so that every effect is far above rounding
        for table in (model.embedding.item, model.embedding.cate):
            table.weight.normal_()
            table.weight[0].zero_()
    return model


def retrieved(model, batch, candidates):
    """Sets of positions each candidate's search keeps: list over users of list over candidates."""
    with torch.no_grad():
        state = model.encode_user(batch)
        index, valid = model.search(state, candidates, model.embedding.candidates(candidates))
        real = valid & gather_events(state.mask, index)
    return [[set(index[b, k][real[b, k]].tolist()) for k in range(index.shape[1])] for b in range(index.shape[0])]


@pytest.mark.parametrize("top_k", [3, 50])
def test_hard_search_retrieves_exactly_the_most_recent_events_of_the_candidates_category(top_k):
    model = sim("hard", top_k=top_k).eval()
    batch = random_batch(batch_size=6, width=20, n_cates=5, seed=1)
    candidates = random_candidates(batch, k=4, n_cates=6, seed=2)  # category 5 is in no history: retrieves nothing
    got = retrieved(model, batch, candidates)
    for b in range(len(batch)):
        for k in range(4):
            same = [t for t in range(20) if batch.history_mask[b, t] and batch.history_cates[b, t] == candidates.cates[b, k]]
            assert got[b][k] == set(same[-top_k:]), (b, k)


def test_hard_search_ignores_events_of_other_categories_and_reads_its_own():
    model = sim("hard", top_k=50).eval()
    batch = select(random_batch(batch_size=2, width=12, seed=3), torch.tensor([0]))  # 12 events
    cate = int(batch.history_cates[0, 2])
    candidates = Candidates(items=torch.tensor([[7]]), cates=torch.tensor([[cate]]), timestamps=batch.timestamps)
    other = next(t for t in range(12) if batch.history_cates[0, t] != cate and t < 12 - model.config.short_length)
    with torch.no_grad():
        base = model.score(model.encode_user(batch), candidates)
        for position, changes in ((other, False), (2, True)):
            changed = dataclasses.replace(batch, history_items=batch.history_items.clone())
            changed.history_items[0, position] = 29 if changed.history_items[0, position] != 29 else 28
            after = model.score(model.encode_user(changed), candidates)
            assert (not torch.allclose(base, after)) == changes, f"position {position}"


@pytest.mark.parametrize("search", ["hard", "soft"])
def test_soft_search_with_k_at_least_the_history_equals_full_target_attention(search):
    model = sim("soft", top_k=7).eval()
    batch = random_batch(batch_size=6, width=7, seed=4)
    candidates = random_candidates(batch, k=5, seed=5)
    with torch.no_grad():
        state = model.encode_user(batch)
        two_stage = model.long_interest(state, candidates, model.embedding.candidates(candidates))
        torch.testing.assert_close(two_stage, full_attention(model, batch, candidates), rtol=1e-5, atol=1e-6)
    if search == "hard":  # and hard search equals full attention over the category's events
        model = sim("hard", top_k=7).eval()
        with torch.no_grad():
            state = model.encode_user(batch)
            two_stage = model.long_interest(state, candidates, model.embedding.candidates(candidates))
            for b in range(len(batch)):
                for k in range(candidates.per_user):
                    keep = batch.history_mask[b] & (batch.history_cates[b] == candidates.cates[b, k])
                    one = select(batch, torch.tensor([b]))
                    one.history_mask = keep.unsqueeze(0)  # attention over the category's events only
                    pair = Candidates(candidates.items[b : b + 1, k : k + 1], candidates.cates[b : b + 1, k : k + 1],
                                      candidates.timestamps[b : b + 1])
                    expected = full_attention(model, one, pair)[0, 0]
                    torch.testing.assert_close(two_stage[b, k], expected, rtol=1e-5, atol=1e-6)


def test_soft_search_keeps_the_top_k_inner_products():
    model = sim("soft", top_k=3).eval()
    batch = random_batch(batch_size=6, width=7, seed=6)
    candidates = random_candidates(batch, k=4, seed=7)
    got = retrieved(model, batch, candidates)
    with torch.no_grad():
        history = model.search_history(model.embedding.history(batch))  # (B, T, D)
        query = model.search_target(model.embedding.candidates(candidates))  # (B, K, D)
        r = torch.einsum("bkd,btd->bkt", query, history).masked_fill(~batch.history_mask[:, None], float("-inf"))
    for b in range(len(batch)):
        n = int(batch.history_mask[b].sum())
        for k in range(4):
            assert got[b][k] == set(torch.topk(r[b, k], min(3, n)).indices.tolist())


def test_soft_search_aux_loss_is_the_gsu_ctr_loss_on_the_long_sequence_and_trains_the_projections():
    model = sim("soft", aux_weight=0.5).train()
    batch = random_batch(batch_size=8, seed=8)
    output = model(batch)
    assert set(output.aux_losses) == {"gsu"}
    with torch.no_grad():  # U_r = mean_i r_i e_i, r_i = (W_b e_i) . (W_a e_a)
        history = model.embedding.history(batch)  # (B, T, W)
        target = model.embedding.side(batch.target_items, batch.target_cates, None)  # (B, W)
        r = torch.einsum("btd,bd->bt", model.search_history(history), model.search_target(target)) * batch.history_mask
        pooled = (r.unsqueeze(-1) * history).sum(1) / batch.history_mask.sum(1, keepdim=True)
        logits = model.aux_dnn(torch.cat([pooled, target], dim=-1)).squeeze(-1)
        expected = 0.5 * F.binary_cross_entropy_with_logits(logits, batch.labels)
    torch.testing.assert_close(output.aux_losses["gsu"], expected, rtol=1e-5, atol=1e-6)
    output.aux_losses["gsu"].backward()
    for layer in (model.search_history, model.search_target):
        assert layer.weight.grad is not None and layer.weight.grad.abs().sum() > 0
    assert model.eval()(batch).aux_losses == {}  # training only


@pytest.mark.parametrize("search", ["hard", "soft"])
def test_the_time_gap_of_a_retrieved_event_moves_the_score(search):
    batch = random_batch(batch_size=4, width=7, seed=9)
    moved = dataclasses.replace(batch, history_timestamps=batch.history_timestamps.clone())
    moved.history_timestamps[0, 0] -= 10**7  # the oldest event of user 0, many buckets earlier
    for time_gap in (True, False):
        model = sim(search, top_k=7, time_gap=time_gap).eval()
        with torch.no_grad():
            before, after = model(batch).logits, model(moved).logits
        torch.testing.assert_close(before[1:], after[1:])
        if search == "soft" or batch.history_cates[0, 0] == batch.target_cates[0]:
            assert (not torch.allclose(before[0], after[0])) == time_gap


def test_soft_search_model_keeps_the_contract():
    """The common contract (run on the default, hard, configuration automatically) for soft search."""
    model = sim("soft")
    model.train()
    batch = random_batch(batch_size=16, seed=10)
    output = model(batch)
    (F.binary_cross_entropy_with_logits(output.logits, batch.labels) + sum(output.aux_losses.values())).backward()
    silent = [n for n, p in model.named_parameters() if p.grad is None or not torch.any(p.grad != 0)]
    assert not silent
    model.eval()
    assert_candidates_score_as_forward_passes(model, random_batch(batch_size=6, seed=11), k=5, seed=12)
    batch = random_batch(batch_size=8, seed=13)
    with torch.no_grad():
        full = model(batch).logits
        for i in range(len(batch)):
            alone = model(select(batch, torch.tensor([i]), width=int(batch.history_mask[i].sum()))).logits
            torch.testing.assert_close(alone, full[i : i + 1], rtol=1e-5, atol=1e-5)
        wider = select(batch, torch.arange(len(batch)), width=batch.history_mask.shape[1] + 9)
        torch.testing.assert_close(model(wider).logits, full, rtol=1e-5, atol=1e-5)


def test_soft_search_ties_go_to_the_most_recent_event_whatever_the_padding():
    model = sim("soft", top_k=2).eval()
    batch = select(random_batch(batch_size=2, width=6, seed=14), torch.tensor([0]))
    batch.history_items[0] = torch.tensor([5, 9, 5, 9, 5, 9])  # repeated events: equal search scores
    batch.history_cates[0] = torch.tensor([3, 4, 3, 4, 3, 4])
    candidates = random_candidates(batch, k=3, seed=15)
    got = retrieved(model, batch, candidates)
    wider = retrieved(model, select(batch, torch.arange(1), width=11), candidates)
    assert got == wider
    for chosen in got[0]:
        assert chosen in ({4, 2}, {5, 3}, {4, 5})


@pytest.mark.parametrize("batch_of, top_k", [(repeating_batch, 4), (repeating_batch, 25), (many_keys_batch, 2)])
def test_soft_search_over_distinct_events_selects_the_events_of_the_search_over_every_event(batch_of, top_k):
    """Histories that repeat events: each distinct event is projected once and a key gives several of its
    events (the most recent) to the top k; with 8 k keys and more they are first cut to a bound. The same
    events and scores as projecting every event."""
    batch = batch_of()
    candidates = random_candidates(batch, k=6, seed=31)
    distinct, every = sim("soft", top_k=top_k).eval(), sim("soft", top_k=top_k, distinct=False).eval()
    with torch.no_grad():
        state = distinct.encode_user(batch)
        assert state.distinct is not None and every.encode_user(batch).distinct is None
        assert retrieved(distinct, batch, candidates) == retrieved(every, batch, candidates)
        scores = distinct.score(state, candidates)
        torch.testing.assert_close(scores, every.score(every.encode_user(batch), candidates))
        rows = torch.tensor([3, 0])  # a cache's rows
        torch.testing.assert_close(distinct.score(state.select(rows), select_candidates(candidates, rows)), scores[rows])
