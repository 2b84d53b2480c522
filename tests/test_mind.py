"""MIND's mechanism beyond the common retrieval contract: B2I dynamic routing, the dynamic number of
interests, the H layers and label-aware attention."""

from __future__ import annotations

import math

import pytest
import torch

from lifelong.models import build_model
from lifelong.models.mind import dynamic_interest_count
from lifelong.nn.capsule import squash
from lifelong.models.multi_interest import label_aware_attention

from helpers import random_batch, select


def tiny(**overrides):
    torch.manual_seed(0)
    values = {"model_type": "mind", "n_items": 30, "n_cates": 8, "embedding_dim": 8, "interests": 4,
              "hidden": (16,), "negatives": 8, **overrides}
    return build_model(values).eval()


def batch_with_lengths(lengths: list[int], seed: int = 0):
    """A random batch whose rows have exactly these history lengths."""
    batch = random_batch(batch_size=len(lengths), width=max(lengths), seed=seed)
    batch.history_mask = torch.arange(max(lengths))[None, :] < torch.tensor(lengths)[:, None]
    batch.history_items = torch.randint(2, 30, batch.history_mask.shape, generator=torch.Generator().manual_seed(seed))
    batch.history_items = batch.history_items * batch.history_mask
    batch.history_cates = batch.history_cates[:, : max(lengths)] * batch.history_mask
    for name in ("history_behaviors", "history_timestamps", "history_negative_items", "history_negative_cates"):
        setattr(batch, name, None)
    return batch


def reference_routing(model, items: list[int]) -> tuple[torch.Tensor, torch.Tensor]:
    """The paper's Algorithm 1 for one user, with loops: capsules (K', D) and last coupling (n, K')."""
    k_user = max(1, min(model.config.interests, int(math.floor(math.log2(len(items))))))
    s = model.bilinear.weight
    mapped = [s @ model.item.weight[i] for i in items]
    logits = [[float(model.initial_logits(len(items))[i, j]) for j in range(k_user)] for i in range(len(items))]
    for step in range(model.config.routing_iterations):
        coupling = [[math.exp(b) / sum(math.exp(c) for c in row) for b in row] for row in logits]
        capsules = []
        for j in range(k_user):
            z = sum(coupling[i][j] * mapped[i] for i in range(len(items)))
            norm2 = float(z @ z)
            capsules.append(norm2 / (1 + norm2) * z / math.sqrt(norm2))
        if step + 1 < model.config.routing_iterations:
            logits = [[logits[i][j] + float(capsules[j] @ mapped[i]) for j in range(k_user)] for i in range(len(items))]
    return torch.stack(capsules), torch.tensor(coupling)


@torch.no_grad()
def test_routing_matches_a_loop_implementation_of_algorithm_1():
    model = tiny()
    batch = batch_with_lengths([9, 5, 2, 17], seed=1)
    capsules, valid, coupling = model.routing(batch)
    for row, length in enumerate(batch.lengths.tolist()):
        expected_caps, expected_coupling = reference_routing(model, batch.history_items[row, :length].tolist())
        k_user = expected_caps.shape[0]
        assert valid[row].sum() == k_user
        torch.testing.assert_close(capsules[row, :k_user], expected_caps, rtol=1e-4, atol=1e-5)
        torch.testing.assert_close(coupling[row, :length, :k_user], expected_coupling, rtol=1e-4, atol=1e-5)
        assert (capsules[row, k_user:] == 0).all()  # switched-off interests receive nothing


@torch.no_grad()
def test_coupling_coefficients_sum_to_one_per_behavior_over_valid_interests():
    model = tiny()
    batch = batch_with_lengths([1, 3, 4, 7, 8, 16, 20], seed=2)
    _, valid, coupling = model.routing(batch)  # coupling (B, T, K)
    mask = batch.history_mask
    torch.testing.assert_close(coupling.sum(-1)[mask], torch.ones(int(mask.sum())))
    assert (coupling[~mask] == 0).all()  # padding behaviors route nowhere
    assert (coupling.masked_select(~valid.unsqueeze(1)) == 0).all()  # nothing goes to a switched-off interest
    assert ((coupling > 0) == (mask.unsqueeze(-1) & valid.unsqueeze(1))).all()


@pytest.mark.parametrize("k", [1, 2, 4, 6])
def test_dynamic_interest_count_follows_the_formula(k):
    lengths = [1, 2, 3, 4, 5, 7, 8, 9, 15, 16, 17, 31, 32, 33, 63, 64, 100, 1000]
    expected = [max(1, min(k, int(math.floor(math.log2(n))))) for n in lengths]
    assert dynamic_interest_count(torch.tensor(lengths), k).tolist() == expected
    assert dynamic_interest_count(torch.tensor([0]), k).tolist() == [1]  # an empty history keeps one interest
    model = tiny(interests=k)
    _, valid = model.interests(batch_with_lengths([1, 2, 3, 4, 7, 8, 16, 33], seed=3))
    assert valid.sum(1).tolist() == [max(1, min(k, int(math.floor(math.log2(n))))) for n in [1, 2, 3, 4, 7, 8, 16, 33]]
    assert (valid == (torch.arange(k)[None, :] < valid.sum(1, keepdim=True))).all()  # the first K'_u are valid


@torch.no_grad()
def test_padding_behaviors_do_not_change_the_interests_even_with_a_nonzero_padding_embedding():
    model = tiny()
    model.item.weight[0] = torch.randn(8)  # the mask alone must keep padding out of routing
    batch = batch_with_lengths([3, 6, 9, 12], seed=4)
    vectors, valid, coupling = model.routing(batch)
    wider = select(batch, torch.arange(4), width=25)
    wide_vectors, wide_valid, wide_coupling = model.routing(wider)
    torch.testing.assert_close(wide_vectors, vectors)
    assert torch.equal(wide_valid, valid)
    torch.testing.assert_close(wide_coupling[:, :12], coupling)
    for row, length in enumerate(batch.lengths.tolist()):
        alone = model.interests(select(batch, torch.tensor([row]), width=length))[0]
        torch.testing.assert_close(alone[0], model.interests(batch)[0][row])


@torch.no_grad()
def test_one_interest_is_the_squashed_sum_of_mapped_behaviors():
    model = tiny(interests=1)
    batch = batch_with_lengths([5, 2], seed=5)
    capsules, _, coupling = model.routing(batch)
    assert (coupling[batch.history_mask] == 1).all()
    mapped_sum = model.bilinear(model.item(batch.history_items)).sum(1)  # padding rows embed to zero
    torch.testing.assert_close(capsules[:, 0], squash(mapped_sum))
    torch.testing.assert_close(model.interests(batch)[0], model.tower(capsules))  # the H layers on each capsule


def test_squash_keeps_the_direction_and_maps_the_norm_to_n2_over_1_plus_n2():
    z = torch.tensor([[3.0, 4.0], [0.03, -0.04], [0.0, 0.0]])
    out = squash(z)
    norms = z.norm(dim=1)
    torch.testing.assert_close(out.norm(dim=1), norms ** 2 / (1 + norms ** 2))
    torch.testing.assert_close(out[:2] / out[:2].norm(dim=1, keepdim=True), z[:2] / norms[:2, None])
    assert torch.equal(out[2], torch.zeros(2))


@torch.no_grad()
def test_label_aware_attention_with_large_power_approaches_the_hard_choice():
    model = tiny()
    batch = batch_with_lengths([16, 20, 9, 12], seed=6)  # 3 or 4 interests each
    vectors, valid = model.interests(batch)
    target = model.item.weight[batch.target_items]  # (B, D)
    logits = torch.einsum("bkd,bd->bk", vectors, target).masked_fill(~valid, 0)
    target = target * (2.0 / logits.abs().amax(dim=1, keepdim=True))  # the best |inner product| is 2 (> 1)
    hard = label_aware_attention(vectors, valid, target, math.inf)
    errors = [float((label_aware_attention(vectors, valid, target, p) - hard).norm()) for p in (1.0, 4.0, 16.0, 64.0)]
    assert errors[-1] < 1e-3 * float(hard.norm())
    assert errors == sorted(errors, reverse=True)  # sharper as p grows
    assert errors[0] > 10 * errors[-1]  # p = 1 really is soft
    # training uses the configured power: with p = inf the loss sees exactly the hard choice
    assert math.isinf(model.config.label_power)


def test_routing_is_deterministic_in_eval_and_does_not_use_torch_rng():
    model = tiny()
    batch = batch_with_lengths([4, 9, 17, 30], seed=7)
    torch.manual_seed(1)
    first = model.user_vectors(batch)
    torch.manual_seed(2)
    second = model.user_vectors(batch)
    assert torch.equal(first, second)
    evaluated = model.interests(batch)[0]
    model.train()  # no randomness in training either (the initial logits are a fixed draw)
    assert torch.equal(model.interests(batch)[0], evaluated)
    rebuilt = tiny()
    rebuilt.load_state_dict(model.state_dict())
    rebuilt.eval()
    assert torch.equal(rebuilt.user_vectors(batch), first)


def test_initial_routing_logits_are_fixed_gaussian_draws_per_position_not_parameters():
    model = tiny(interests=6, routing_init_std=2.0)
    assert "routing_init" not in dict(model.named_parameters()) and "routing_init" not in model.state_dict()
    logits = model.initial_logits(2000)  # grows past the cached rows
    assert logits.shape == (2000, 6)
    assert abs(float(logits.mean())) < 0.15 and abs(float(logits.std()) - 2.0) < 0.1
    torch.testing.assert_close(tiny(interests=6, routing_init_std=2.0).initial_logits(10), logits[:10])  # position-wise
    # routing_seed draws another, independent set: uncorrelated with the first, of the same spread
    other = tiny(interests=6, routing_init_std=2.0, routing_seed=1).initial_logits(2000)
    assert abs(float(torch.corrcoef(torch.stack([other.flatten(), logits.flatten()]))[0, 1])) < 0.05
    assert abs(float(other.std()) - 2.0) < 0.1


@torch.no_grad()
def test_agreement_updates_route_two_separated_groups_to_different_interests():
    """Behaviors from two well-separated directions: each extra routing round (logits += <u_j, s_i>)
    moves the coupling further toward one interest per group, until the groups are split."""
    gaps = []
    for rounds in (1, 2, 3, 5):
        model = tiny(interests=2, routing_iterations=rounds)
        g = torch.Generator().manual_seed(0)
        model.bilinear.weight.copy_(torch.eye(8))
        model.item.weight[2:12] = 3 * torch.eye(8)[0] + 0.3 * torch.randn(10, 8, generator=g)
        model.item.weight[12:22] = 3 * torch.eye(8)[1] + 0.3 * torch.randn(10, 8, generator=g)
        batch = batch_with_lengths([8])
        batch.history_items = torch.tensor([[2, 12, 3, 13, 4, 14, 5, 15]])  # groups interleaved
        _, _, coupling = model.routing(batch)
        first_group, second_group = coupling[0, 0::2, 0], coupling[0, 1::2, 0]  # weight on interest 0
        gaps.append(float(first_group.mean() - second_group.mean()))
    assert gaps == sorted(gaps) and gaps[0] < 0.2  # the initial logits alone barely separate them
    assert float(first_group.min()) > 0.95 and float(second_group.max()) < 0.05  # split after 5 rounds


@pytest.mark.parametrize("bad", [{"routing_iterations": 0}, {"routing_init_std": 0.0}, {"hidden": ()},
                                 {"hidden": (0,)}, {"routing_seed": -1}, {"interests": 0}])
def test_config_rejects_out_of_range_values(bad):
    with pytest.raises(ValueError, match="mind"):
        tiny(**bad)
