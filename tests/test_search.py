"""The shared search and exact stages (nn/search.py) and what every long-history model keeps for the
gradient of a long history."""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F

from lifelong.models import build_model
from lifelong.models.long_sequence import scoring_gaps
from lifelong.nn.search import (
    NEGATIVE, DistinctKeys, ExactAttention, best_keys, distinct_keys, embed_in_chunks, gather_events, last_events,
    top_k_distinct, top_k_events,
)

from helpers import random_batch, random_candidates
from model_configs import TINY_CONFIGS, TINY_VOCAB

LONG_MODELS = ("sdim", "sim", "eta", "twin")


def test_last_events_are_the_most_recent_real_ones_oldest_first():
    mask = torch.tensor([[True] * 5, [True, True, False, False, False], [True] + [False] * 4])
    index, keep = last_events(mask, 3)
    assert index.tolist() == [[2, 3, 4], [0, 1, 2], [0, 1, 2]]
    assert keep.tolist() == [[True] * 3, [True, True, False], [True, False, False]]


def test_top_k_keeps_the_highest_scores_and_breaks_ties_to_the_most_recent_whatever_the_padding():
    g = torch.Generator().manual_seed(0)
    scores = torch.randint(0, 4, (3, 5, 8), generator=g).float()  # many ties
    got = top_k_events(scores, 3)
    padded = top_k_events(torch.cat([scores, torch.full((3, 5, 6), NEGATIVE)], dim=-1), 3)
    for b in range(3):
        for k in range(5):
            ranked = sorted(range(8), key=lambda t: (-float(scores[b, k, t]), -t))[:3]
            assert set(got[b, k].tolist()) == set(padded[b, k].tolist()) == set(ranked)
    assert top_k_events(scores, 20).shape == (3, 5, 8)  # k beyond the history: all of it


def test_exact_attention_over_a_subset_is_attention_with_the_rest_masked():
    torch.manual_seed(1)
    esu = ExactAttention(8, heads=2, gap="concat", gap_buckets=6)
    target, events = torch.randn(2, 3, 8), torch.randn(2, 3, 7, 8)
    gaps = torch.randint(1, 6, (2, 3, 7))
    mask = torch.rand(2, 3, 7) > 0.4
    mask[..., 0] = True
    full = esu(target, events, mask, gaps)
    for b in range(2):
        for k in range(3):
            keep = mask[b, k]
            alone = esu(target[b : b + 1, k : k + 1], events[b, k][keep][None, None], keep[keep][None, None],
                        gaps[b, k][keep][None, None])
            torch.testing.assert_close(alone[0, 0], full[b, k])
    empty = esu(target, events, torch.zeros_like(mask), gaps)
    assert torch.equal(empty, torch.zeros_like(empty))


@pytest.mark.parametrize("gap", ExactAttention.GAPS)
def test_exact_attention_fused_equals_the_reference(gap):
    torch.manual_seed(3)
    fused = ExactAttention(8, heads=2, gap=gap, gap_buckets=6)
    reference = ExactAttention(8, heads=2, gap=gap, gap_buckets=6, impl="reference")
    reference.load_state_dict(fused.state_dict())
    target, events = torch.randn(2, 3, 8), torch.randn(2, 3, 5, 8)
    mask, gaps = torch.rand(2, 3, 5) > 0.3, torch.randint(1, 6, (2, 3, 5))
    torch.testing.assert_close(fused(target, events, mask, gaps), reference(target, events, mask, gaps))
    events.requires_grad_(True)  # the same gradients, the gap tables' included (read per bucket when fused)
    for got, expected in zip(torch.autograd.grad(fused(target, events, mask, gaps).sum(), [events, *fused.parameters()]),
                             torch.autograd.grad(reference(target, events, mask, gaps).sum(),
                                                 [events, *reference.parameters()])):
        torch.testing.assert_close(got, expected)


@pytest.mark.parametrize("gap", ExactAttention.GAPS)
def test_two_stages_with_k_at_least_the_history_equal_full_target_attention(gap):
    """The contract of the two-stage models, on the shared units: search (any scoring function) keeping
    k >= T events, then the exact stage over them, equals the exact stage over the whole history."""
    torch.manual_seed(2)
    esu = ExactAttention(8, heads=2, gap=gap, gap_buckets=6)
    b, k, t = 3, 4, 9
    target, history = torch.randn(b, k, 8), torch.randn(b, t, 8)
    mask = torch.arange(t) < torch.tensor([[9], [4], [1]])
    gaps = torch.randint(1, 6, (b, t)) * mask
    scores = torch.einsum("bkd,btd->bkt", target, history).masked_fill(~mask[:, None], NEGATIVE)
    index = top_k_events(scores, t + 3)
    picked = esu(target, gather_events(history, index), gather_events(mask, index), gather_events(gaps, index))
    full = esu(target, history.unsqueeze(1).expand(-1, k, -1, -1), mask.unsqueeze(1).expand(-1, k, -1),
               gaps.unsqueeze(1).expand(-1, k, -1))
    torch.testing.assert_close(picked, full)
    fewer = esu(target, gather_events(history, top_k_events(scores, 2)),
                gather_events(mask, top_k_events(scores, 2)), gather_events(gaps, top_k_events(scores, 2)))
    assert not torch.allclose(fewer[0], full[0])  # the search matters when it keeps fewer


def test_embedding_in_chunks_does_not_depend_on_the_chunk_and_keeps_no_gradient():
    table = torch.nn.Embedding(30, 4)
    items = torch.randint(0, 30, (2, 11))
    whole = embed_in_chunks(lambda part: table(items[:, part]), 11, 100)
    for chunk in (1, 3, 11):
        torch.testing.assert_close(embed_in_chunks(lambda part: table(items[:, part]), 11, chunk), whole)
    assert not whole.requires_grad


def full_attention(model, batch, candidates):
    """A two-stage model's exact stage over every event of the history (no search): (B, K, W)."""
    state = model.encode_user(batch)
    t = batch.history_mask.shape[1]
    index = torch.arange(t).expand(len(batch), candidates.per_user, t)
    gaps = scoring_gaps(state, candidates, index, model.config.gap_buckets) if model.config.time_gap else None
    return model.esu(model.embedding.candidates(candidates), model.events(state, index),
                     gather_events(state.mask, index), gaps)


@pytest.mark.parametrize("name, options", [("sim", {"search": "soft"}), ("eta", {}), ("eta", {"time_gap": True}),
                                           ("twin", {}), ("twin", {"time_gap": False})])
def test_a_two_stage_model_with_k_at_least_the_history_equals_full_target_attention(name, options):
    torch.manual_seed(5)
    model = build_model({"model_type": name, **TINY_VOCAB, **TINY_CONFIGS[name], "top_k": 9, **options}).eval()
    with torch.no_grad():
        for table in (model.embedding.item, model.embedding.cate):
            table.weight.normal_()
            table.weight[0].zero_()
    batch = random_batch(batch_size=6, width=9, seed=6)
    candidates = random_candidates(batch, k=3, seed=7)
    with torch.no_grad():
        got = model.long_interest(model.encode_user(batch), candidates, model.embedding.candidates(candidates))
        torch.testing.assert_close(got, full_attention(model, batch, candidates), rtol=1e-5, atol=1e-6)


def long_batch(users: int, length: int):
    batch = random_batch(batch_size=users, width=length, seed=3)
    batch.history_mask[:] = True  # every history full
    for name in ("history_items", "history_cates", "history_behaviors", "history_timestamps"):
        value = getattr(batch, name)
        setattr(batch, name, torch.where(value == 0, torch.randint(2, 8, value.shape), value))
    batch.history_timestamps = torch.cumsum(batch.history_timestamps, dim=1)
    batch.timestamps = batch.history_timestamps[:, -1] + 10
    return batch


@pytest.mark.parametrize("name, options", [(name, {}) for name in LONG_MODELS] + [("sim", {"search": "soft"})])
def test_training_on_a_long_history_keeps_no_batch_by_length_by_width_tensor_for_the_gradient(name, options):
    """What autograd keeps for backward, over a training forward pass with histories of 2,000 events:
    far less than one (B, L, W) float tensor of the history (the search runs without gradients, SDIM's
    bucket sums and SIM's auxiliary loss are checkpointed chunk by chunk)."""
    torch.manual_seed(4)
    model = build_model({"model_type": name, **TINY_VOCAB, **TINY_CONFIGS[name], "chunk_length": 128, **options}).train()
    batch = long_batch(4, 2000)
    width = model.embedding.out_dim
    kept = []

    def pack(tensor):
        if tensor.is_floating_point():
            kept.append(tensor.numel())
        return tensor

    with torch.autograd.graph.saved_tensors_hooks(pack, lambda tensor: tensor):
        output = model(batch)
        loss = F.binary_cross_entropy_with_logits(output.logits, batch.labels) + sum(output.aux_losses.values())
    history = 4 * 2000 * width  # one (B, L, W) tensor
    assert sum(kept) < history / 4, f"{name}: {sum(kept)} floats kept for backward, a (B, L, W) history is {history}"
    loss.backward()


def test_top_k_with_many_ties_keeps_the_highest_then_the_most_recent():
    """Scores from a few values (a lifelong history repeats items): the selection is the k best by
    (score, position), padding never before a real event."""
    g = torch.Generator().manual_seed(12)
    scores = torch.randint(0, 4, (3, 5, 60), generator=g).float()
    scores[2, :, 50:] = NEGATIVE  # padding
    for k in (1, 7, 30, 55):
        got = top_k_events(scores, k)
        for b in range(3):
            for c in range(5):
                ranked = sorted(range(60), key=lambda t: (float(scores[b, c, t]), t), reverse=True)[:k]
                assert sorted(got[b, c].tolist()) == sorted(ranked), (k, b, c)


@pytest.mark.parametrize("first_keys", [None, 1, 3])
@pytest.mark.parametrize("n_levels", [1, 3])
@pytest.mark.parametrize("k", [1, 7, 40])
def test_top_k_over_distinct_keys_selects_the_top_k_events_with_ties_to_the_most_recent(k, n_levels, first_keys):
    """Few keys repeated over long histories, integer key scores and a few offset levels (many ties, as ETA's
    Hamming distances and TWIN's time-gap bias have): the same events as ranking every event by
    (key score + offset, position), whatever bounds the search reads the keys with, and whether a candidate's
    events are found among its first few best keys or searched again over the k best (``first_keys``)."""
    g = torch.Generator().manual_seed(k * 10 + n_levels)
    b, kk, t = 3, 5, 90
    ids = torch.randint(1, 13, (b, t), generator=g)
    mask = torch.ones(b, t, dtype=torch.bool)
    mask[1, 60:] = False  # a shorter user
    mask[2, 3:] = False  # fewer events than k
    keys = distinct_keys(ids, mask, t)
    d = keys.first.shape[1]
    base = torch.randint(0, 3, (b, kk, d), generator=g).float()
    level_values = torch.tensor([0.0, 1.0, 2.0])[:n_levels]
    event_level = torch.randint(0, n_levels, (b, t), generator=g)  # per history event, as a time-gap bucket
    segment = keys.segments()
    level = event_level[segment // d, keys.positions]
    p = level.numel()  # each key's events by offset, highest first, then the most recent (the listing order)
    order = torch.argsort((segment * n_levels + (n_levels - 1 - level)) * p + torch.arange(p))
    positions, level = keys.positions[order], level[order]
    first = torch.where(keys.first >= 0, positions[keys.start.clamp(max=p - 1)], -1)
    listed = DistinctKeys(first, keys.start, keys.count, positions)
    index, valid = top_k_distinct(base, level_values[level], listed, t, k, first_keys=first_keys)
    compact = torch.unique(torch.where(mask, ids, -1), return_inverse=True)[1]
    for u in range(b):
        slot_of = {int(compact[u, int(keys.first[u, s])]): s for s in range(d) if keys.first[u, s] >= 0}
        real = [i for i in range(t) if mask[u, i]]
        for c in range(kk):
            score = {i: float(base[u, c, slot_of[int(compact[u, i])]]) + float(level_values[event_level[u, i]])
                     for i in real}
            expected = set(sorted(real, key=lambda i: (-score[i], -i))[:k])
            assert set(index[u, c][valid[u, c]].tolist()) == expected, (u, c)


@pytest.mark.parametrize("integral", [True, False])
@pytest.mark.parametrize("n", [3, 10])
def test_best_keys_cut_to_a_bound_then_ordered_are_the_best_by_score_then_position(n, integral):
    """Many keys (the cut to a bound runs from 8 n keys), few distinct scores (ties at the cut, which go to
    the highest position) and absent keys: the same keys, in the same order, as ordering every key."""
    g = torch.Generator().manual_seed(n)
    b, kk, d, t = 2, 4, 40 * n + 3, 1000
    scores = torch.randint(0, 3 * n, (b, kk, d), generator=g).float() * (7 if integral else 0.37)
    scores[1, :, -5:] = float("-inf")  # absent keys
    positions = torch.stack([torch.randperm(t, generator=g)[:d] for _ in range(b)])
    got = best_keys(scores, positions, t, n, integral)
    for u in range(b):
        for c in range(kk):
            expected = sorted(range(d), key=lambda i: (-float(scores[u, c, i]), -int(positions[u, i])))[:n]
            assert got[u, c].tolist() == expected, (u, c)
