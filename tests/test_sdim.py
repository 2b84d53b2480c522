"""SDIM mechanism tests: hash-collision sampling of the long history, precomputed per user."""

from __future__ import annotations

import dataclasses
import math

import pytest
import torch
import torch.nn.functional as F

from lifelong.batch import Batch
from lifelong.models import build_model
from lifelong.models.ranking import Candidates
from lifelong.nn.hashing import collision_probability, hash_bits, random_projections, signature_codes

from helpers import random_batch, random_candidates
from model_configs import TINY_VOCAB


def sdim(seed: int = 0, **options):
    torch.manual_seed(seed)
    config = {"model_type": "sdim", **TINY_VOCAB, "embedding_dim": 4, "short_length": 2, "hashes": 12, "hash_bits": 3,
              "chunk_length": 3, "attention_hidden": (8,), "dnn_hidden": (16,), **options}
    model = build_model(config)
    with torch.no_grad():  # embeddings of unit scale, so that hashes and sums are far from rounding
        for table in (model.embedding.item, model.embedding.cate):
            table.weight.normal_()
            table.weight[0].zero_()
    return model.eval()


@pytest.mark.parametrize("tau", [1, 3, 5])
@pytest.mark.parametrize("cosine", [0.95, 0.6, 0.0, -0.5])
def test_collision_weight_matches_the_expected_weight_within_sampling_error(cosine, tau):
    """Two vectors at cosine c collide on a signature of tau bits with probability (1 - arccos(c) / pi) ** tau."""
    dim, signatures = 16, 20_000
    g = torch.Generator().manual_seed(int(1000 * cosine) + tau)
    q = F.normalize(torch.randn(dim, generator=g), dim=0)
    other = torch.randn(dim, generator=g)
    other = F.normalize(other - (other @ q) * q, dim=0)
    s = cosine * q + math.sqrt(1 - cosine ** 2) * other  # exactly at cosine c to q
    projections = random_projections(signatures * tau, dim, seed=tau)
    codes = signature_codes(hash_bits(torch.stack([q, s]), projections), tau)  # (2, signatures)
    observed = (codes[0] == codes[1]).double().mean().item()
    expected = collision_probability(cosine, tau).item()
    error = math.sqrt(expected * (1 - expected) / signatures)
    assert abs(observed - expected) <= 4 * error + 1e-9, f"observed {observed:.4f}, expected {expected:.4f}"


def brute_force_interest(model, batch: Batch, candidates: Candidates) -> torch.Tensor:
    """The paper's formula, literally: for each signature the behaviors colliding with the candidate summed
    and L2-normalised, averaged over signatures. (B, K, W)"""
    history = model.embedding.history(batch)  # (B, T, W)
    target = model.embedding.candidates(candidates)  # (B, K, W)
    tau = model.config.hash_bits
    h_codes = signature_codes(hash_bits(history, model.projections), tau)  # (B, T, n)
    t_codes = signature_codes(hash_bits(target, model.projections), tau)  # (B, K, n)
    collide = (t_codes.unsqueeze(2) == h_codes.unsqueeze(1)) & batch.history_mask[:, None, :, None]  # (B, K, T, n)
    sums = torch.einsum("bktn,btw->bknw", collide.float(), history)  # (B, K, n, W)
    return F.normalize(sums, dim=-1).mean(dim=2)


def test_long_interest_is_the_normalised_collision_sum_averaged_over_signatures():
    model = sdim()
    batch = random_batch(batch_size=6, seed=1)
    candidates = random_candidates(batch, k=4, seed=2)
    with torch.no_grad():
        state = model.encode_user(batch)
        target = model.embedding.candidates(candidates)
        got = model.long_interest(state, candidates, target)
        expected = brute_force_interest(model, batch, candidates)
    torch.testing.assert_close(got, expected, rtol=1e-5, atol=1e-6)
    assert got.abs().sum() > 0


def test_a_behavior_counts_only_under_the_signatures_where_it_collides():
    """A behavior that collides with the candidate under no signature adds nothing; one that collides does."""
    model = sdim()
    batch = random_batch(batch_size=1, width=7, seed=3)
    candidates = random_candidates(batch, k=1, seed=4)
    tau = model.config.hash_bits
    with torch.no_grad():
        target = model.embedding.candidates(candidates)  # (1, 1, W)
        t_codes = signature_codes(hash_bits(target[0, 0], model.projections), tau)
        found = {}
        for item in range(2, 30):  # an item that never collides with the candidate, and one that does
            for cate in range(2, 8):
                e = model.embedding.items(torch.tensor(item), torch.tensor(cate))
                hits = int((signature_codes(hash_bits(e, model.projections), tau) == t_codes).sum())
                found.setdefault(hits > 0, (item, cate))
        assert set(found) == {False, True}
        without = model.long_interest(model.encode_user(batch), candidates, target)
        for collides, (item, cate) in found.items():
            added = dataclasses.replace(batch, history_items=torch.cat([torch.tensor([[item]]), batch.history_items], 1),
                                        history_cates=torch.cat([torch.tensor([[cate]]), batch.history_cates], 1),
                                        history_mask=torch.cat([torch.tensor([[True]]), batch.history_mask], 1))
            added.history_behaviors = added.history_timestamps = None
            got = model.long_interest(model.encode_user(added), candidates, target)
            assert torch.allclose(got, without) != collides, f"collides={collides}"


def test_the_user_side_does_not_grow_with_the_history_and_chunks_do_not_change_it():
    model = sdim()
    short, long = random_batch(batch_size=2, width=5, seed=5), random_batch(batch_size=2, width=60, seed=5)
    with torch.no_grad():
        assert model.encode_user(short).buckets.shape == model.encode_user(long).buckets.shape == (2, 4, 8, 8)
        chunked = model.encode_user(long).buckets
        model.config.chunk_length = 1000
        torch.testing.assert_close(model.encode_user(long).buckets, chunked)


def test_gradients_reach_the_behaviors_as_through_the_formula():
    """Training: the chunked bucket sums give every embedding the gradient of the literal formula."""
    model = sdim().train()
    batch = random_batch(batch_size=4, seed=6)
    candidates = random_candidates(batch, k=8, seed=7)
    weights = torch.randn(4, 8, model.embedding.out_dim, generator=torch.Generator().manual_seed(8))
    grads = []
    for interest in (lambda: model.long_interest(model.encode_user(batch), candidates,
                                                 model.embedding.candidates(candidates)),
                     lambda: brute_force_interest(model, batch, candidates)):
        model.zero_grad()
        (interest() * weights).sum().backward()
        grads.append(model.embedding.item.weight.grad.clone())
    torch.testing.assert_close(grads[0], grads[1], rtol=1e-4, atol=1e-6)
    seen = torch.unique(batch.history_items[batch.history_mask])
    assert int((grads[0][seen].abs().sum(dim=1) > 0).sum()) > len(seen) // 2


@pytest.mark.parametrize("chunk_length", [3, 1000])  # several checkpointed chunks, or one
def test_training_forward_reads_the_targets_buckets_with_the_gradient_of_the_formula(chunk_length):
    """Training sums the events colliding with each sample's target directly (one bucket per signature):
    the same logits as the bucket encoding, and every embedding gets the gradient of the literal formula."""
    model = sdim(chunk_length=chunk_length, dnn_activation="relu", attention_activation="relu")
    batch = random_batch(batch_size=6, width=9, seed=9)
    outputs, grads = [], []
    for train in (True, False):  # the training shortcut, then the bucket encoding (with gradients)
        model.train(train)
        model.zero_grad()
        with torch.enable_grad():
            logits = model(batch).logits
        (logits * torch.arange(1.0, 7.0)).sum().backward()
        outputs.append(logits.detach())
        grads.append(model.embedding.item.weight.grad.clone())
    torch.testing.assert_close(outputs[0], outputs[1], rtol=1e-5, atol=1e-6)
    torch.testing.assert_close(grads[0], grads[1], rtol=1e-4, atol=1e-6)
    seen = torch.unique(batch.history_items[batch.history_mask])
    assert int((grads[0][seen].abs().sum(dim=1) > 0).sum()) > len(seen) // 2
