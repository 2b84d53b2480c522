"""ComiRec (Cen et al., KDD'20): DR's dynamic routing, SA's multi-head self-attention and the
diversity-controlled aggregation module."""

from __future__ import annotations

import itertools
import math

import pytest
import torch

from lifelong.models import build_model
from lifelong.models.comirec import aggregate, category_diversity
from lifelong.nn.capsule import dynamic_routing, squash
from lifelong.models.multi_interest import MultiInterestModel

from helpers import random_batch, select
from model_configs import TINY_VOCAB

N_ITEMS = TINY_VOCAB["n_items"]


def tiny(name: str, seed: int = 0, **overrides):
    torch.manual_seed(seed)
    config = {"model_type": name, **TINY_VOCAB, "embedding_dim": 8, "max_positions": 7, "negatives": 8, **overrides}
    return build_model(config).eval()


# --- ComiRec-DR ---------------------------------------------------------------------------------------


def test_dr_couplings_sum_to_one_over_interests_at_every_real_behavior_and_vanish_at_padding():
    model = tiny("comirec_dr")
    batch = random_batch(batch_size=8, seed=1)
    _, couplings = model.routing(batch)  # (R, B, T, K)
    assert couplings.shape == (3, 8, 7, 4)
    mask = batch.history_mask
    sums = couplings.sum(dim=-1)  # (R, B, T)
    torch.testing.assert_close(sums[:, mask], torch.ones_like(sums[:, mask]))
    assert torch.all(couplings[:, ~mask] == 0)
    assert torch.all(couplings[:, mask] > 0)


def test_dr_routing_logits_start_at_zero_so_the_first_iteration_couples_uniformly():
    model = tiny("comirec_dr", routing_iterations=1)
    batch = random_batch(batch_size=8, seed=2)
    capsules, couplings = model.routing(batch)
    mask = batch.history_mask
    assert torch.all(couplings[0][mask] == 0.25)  # 1 / K, K = 4
    u, _ = model.predictions(batch)
    expected = squash((u * mask[:, :, None, None]).sum(dim=1) / 4)  # (B, K, D)
    torch.testing.assert_close(capsules, expected)
    # with more iterations the couplings move away from uniform (the logits grow by <u_jk, v_k>)
    _, later = dynamic_routing(u, mask, 3, stop_gradient_early=True)
    assert not torch.allclose(later[2][mask], torch.full_like(later[2][mask], 0.25))


def reference_routing(u: torch.Tensor, length: int, iterations: int) -> torch.Tensor:
    """CapsNet's routing for one user, written out with loops: u (T, K, D) -> (K, D)."""
    k = u.shape[1]
    logits = [[0.0] * k for _ in range(length)]
    for step in range(iterations):
        coupling = [torch.softmax(torch.tensor(row), dim=0) for row in logits]
        capsules = []
        for interest in range(k):
            s = sum(coupling[j][interest] * u[j, interest] for j in range(length))
            norm2 = float((s * s).sum())
            capsules.append(s * (norm2 / (1 + norm2) / math.sqrt(norm2 + 1e-9)))
        if step < iterations - 1:
            for j in range(length):
                for interest in range(k):
                    logits[j][interest] += float(u[j, interest] @ capsules[interest])
    return torch.stack(capsules)


def test_dr_routing_matches_a_loop_reference_and_padding_contributes_nothing():
    g = torch.Generator().manual_seed(3)
    u = torch.randn(3, 5, 4, 6, generator=g)  # (B, T, K, D)
    lengths = torch.tensor([5, 3, 1])
    mask = torch.arange(5)[None, :] < lengths[:, None]
    capsules, _ = dynamic_routing(u, mask, 3, stop_gradient_early=True)
    for b in range(3):
        torch.testing.assert_close(capsules[b], reference_routing(u[b], int(lengths[b]), 3), rtol=1e-5, atol=1e-6)
    garbage = u.clone()
    garbage[~mask] = 100 * torch.randn(int((~mask).sum()), 4, 6, generator=g)  # predictions at padding
    torch.testing.assert_close(dynamic_routing(garbage, mask, 3, stop_gradient_early=True)[0], capsules)


def test_dr_transform_is_one_map_per_behavior_position_and_interest():
    model = tiny("comirec_dr")
    assert tuple(model.transform.shape) == (7, 4, 8, 8)  # (L, K, D, D)
    batch = random_batch(batch_size=4, seed=4)
    u, _ = model.predictions(batch)
    e = model.item(batch.history_items)
    for t, k in [(0, 0), (2, 3), (6, 1)]:
        torch.testing.assert_close(u[:, t, k], e[:, t] @ model.transform[t, k].T)
    # the same item at two positions or towards two interests is mapped differently
    same = select(batch, torch.tensor([0]))
    same.history_items[:] = 5
    u_same, _ = model.predictions(same)
    assert not torch.allclose(u_same[0, 0, 0], u_same[0, 1, 0])
    assert not torch.allclose(u_same[0, 0, 0], u_same[0, 0, 1])


def test_dr_non_final_iterations_pass_no_gradient_through_the_couplings():
    g = torch.Generator().manual_seed(5)
    u = torch.randn(2, 4, 3, 5, generator=g, requires_grad=True)
    mask = torch.tensor([[True] * 4, [True, True, False, False]])
    weights = torch.randn(2, 3, 5, generator=g)
    capsules, couplings = dynamic_routing(u, mask, 3, stop_gradient_early=True)
    (grad,) = torch.autograd.grad((capsules * weights).sum(), u)
    # the same output with the final couplings as constants: squash(sum_j c_jk u_jk)
    fixed = squash(torch.einsum("btk,btkd->bkd", couplings[-1].detach(), u))
    torch.testing.assert_close(fixed, capsules)
    (expected,) = torch.autograd.grad((fixed * weights).sum(), u)
    torch.testing.assert_close(grad, expected)
    assert not couplings.requires_grad


def test_squash_keeps_the_direction_and_maps_the_norm_below_one():
    s = torch.tensor([[3.0, 4.0], [0.0, 0.0], [0.1, 0.0]])
    v = squash(s)
    torch.testing.assert_close(v.norm(dim=-1), torch.tensor([25 / 26, 0.0, 0.01 / 1.01]))
    torch.testing.assert_close(v[0] / v[0].norm(), s[0] / 5)


def test_dr_all_interests_are_valid_and_a_history_beyond_max_positions_is_an_error():
    model = tiny("comirec_dr", max_positions=5)
    batch = random_batch(batch_size=4, width=5, seed=6)
    vectors, valid = model.interests(batch)
    assert vectors.shape == (4, 4, 8) and bool(valid.all())
    with pytest.raises(ValueError, match="max_positions"):
        model.interests(random_batch(batch_size=4, width=6, seed=6))
    with pytest.raises(ValueError, match="routing_iterations"):
        tiny("comirec_dr", routing_iterations=0)


# --- ComiRec-SA ---------------------------------------------------------------------------------------


def test_sa_attention_sums_to_one_over_real_behaviors_and_ignores_padding():
    model = tiny("comirec_sa")
    batch = random_batch(batch_size=8, seed=7)
    weights, _ = model.attention(batch)  # (B, K, T)
    mask = batch.history_mask
    assert weights.shape == (8, 4, 7)
    torch.testing.assert_close(weights.sum(dim=2), torch.ones(8, 4))
    assert torch.all(weights.masked_select(~mask.unsqueeze(1)) == 0)
    assert torch.all(weights.masked_select(mask.unsqueeze(1)) > 0)
    wider, _ = model.attention(select(batch, torch.arange(8), width=7))
    torch.testing.assert_close(wider, weights)
    short = select(batch, torch.tensor([7]), width=1)  # the length-1 user alone
    torch.testing.assert_close(model.attention(short)[0][0, :, 0], torch.ones(4))


def test_sa_attention_is_the_additive_multi_head_form_and_interests_average_the_item_embeddings():
    model = tiny("comirec_sa")
    assert model.hidden.out_features == 32  # 4 D by default
    batch = random_batch(batch_size=5, seed=8)
    mask = batch.history_mask
    weights, _ = model.attention(batch)
    e = model.item(batch.history_items)
    h = e + model.position.weight[:7]
    logits = torch.tanh(h @ model.hidden.weight.T + model.hidden.bias) @ model.heads.weight.T  # (B, T, K)
    expected = torch.softmax(logits.masked_fill(~mask.unsqueeze(-1), float("-inf")), dim=1).transpose(1, 2)
    torch.testing.assert_close(weights, expected)
    vectors, valid = model.interests(batch)
    torch.testing.assert_close(vectors, expected @ e)  # V_u = A^T E (official code)
    assert bool(valid.all())
    with_positions = tiny("comirec_sa", positions_in_values=True)
    w, _ = with_positions.attention(batch)
    h = with_positions.item(batch.history_items) + with_positions.position.weight[:7]
    torch.testing.assert_close(with_positions.interests(batch)[0], w @ (h * mask.unsqueeze(-1)))
    assert tiny("comirec_sa", attention_hidden=5).hidden.out_features == 5


def test_sa_positions_make_the_interests_depend_on_the_behavior_order():
    model = tiny("comirec_sa")
    batch = select(random_batch(batch_size=3, seed=9), torch.tensor([0]))  # one full-length history
    reversed_batch = select(batch, torch.tensor([0]))
    reversed_batch.history_items = batch.history_items.flip(1)
    assert not torch.allclose(model.interests(batch)[0], model.interests(reversed_batch)[0])
    with torch.no_grad():
        model.position.weight.zero_()  # without positions the history is a set
    torch.testing.assert_close(model.interests(batch)[0], model.interests(reversed_batch)[0])


# --- the aggregation module ---------------------------------------------------------------------------


def random_interests(seed: int, batch_size: int = 6, k: int = 4, n: int = 60, d: int = 5):
    g = torch.Generator().manual_seed(seed)
    return torch.randn(batch_size, k, d, generator=g), torch.randn(n, d, generator=g), \
        torch.randint(2, 7, (n,), generator=g)


@pytest.mark.parametrize("name", ["comirec_dr", "comirec_sa"])
def test_aggregation_with_lambda_zero_is_the_base_merge_exactly(name):
    model = tiny(name)
    for seed, k in [(0, 5), (1, 20), (2, 50)]:
        users, items, _ = random_interests(seed, batch_size=16, n=80)
        base = MultiInterestModel.retrieve(model, users, items, k)
        assert torch.equal(model.retrieve(users, items, k), base)
        assert torch.equal(aggregate(users, items, k), base)
    batch = random_batch(batch_size=8, seed=10)
    users, items = model.user_vectors(batch), model.item_vectors()
    assert torch.equal(model.retrieve(users, items, 10), MultiInterestModel.retrieve(model, users, items, 10))


def reference_aggregate(users, items, k, diversity, cates):
    """The paper's greedy, literally: candidates = union of per-interest top k; repeatedly add the item
    that maximises Q(u, S) = sum f + lambda * #pairs of S in different categories."""
    out = []
    for v in users:
        per = v @ items.T  # (K, N)
        per[:, :2] = float("-inf")
        f = per.max(dim=0).values
        candidates = sorted({int(i) for row in per.topk(k, dim=1).indices for i in row})

        def q(chosen):
            pairs = sum(int(cates[a] != cates[b]) for a, b in itertools.combinations(chosen, 2))
            return float(sum(f[i] for i in chosen)) + diversity * pairs

        chosen = []
        for _ in range(k):
            best = max((i for i in candidates if i not in chosen), key=lambda i: (q(chosen + [i]), float(f[i])))
            chosen.append(best)
        out.append(chosen)
    return torch.tensor(out)


@pytest.mark.parametrize("diversity", [0.0, 0.3, 1.0, 10.0])
def test_aggregation_is_the_greedy_maximisation_of_q(diversity):
    users, items, cates = random_interests(11)
    got = aggregate(users, items, 8, diversity, cates)
    torch.testing.assert_close(got, reference_aggregate(users, items, 8, diversity, cates))


def test_greedy_path_keeps_the_score_order_when_every_item_has_one_category():
    users, items, _ = random_interests(12, n=80)
    one = torch.full((80,), 3)
    assert torch.equal(aggregate(users, items, 20, 5.0, one), aggregate(users, items, 20))


def test_larger_lambda_gives_more_categories_and_never_leaves_the_candidates():
    # interest 1 sees items 2..9 (category 2, high scores), interest 2 items 10..14 (one category each,
    # lower scores); item 15 (category 8) is in neither top-5 list
    users = torch.tensor([[[1.0, 0.0], [0.0, 1.0]]])
    first = torch.tensor([0.0, 0.0, 10, 9.9, 9.8, 9.7, 9.6, 9.5, 9.4, 9.3, 0, 0, 0, 0, 0, 0.5])
    second = torch.tensor([0.0, 0.0, 0, 0, 0, 0, 0, 0, 0, 0, 5, 4, 3, 2, 1, 0.5])
    items = torch.stack([first, second], dim=1)
    cates = torch.tensor([0, 1] + [2] * 8 + [3, 4, 5, 6, 7, 8])
    distinct = []
    for diversity in (0.0, 0.5, 2.0, 100.0):
        top = aggregate(users, items, 5, diversity, cates)
        assert 15 not in top[0].tolist()
        distinct.append(len(set(cates[top[0]].tolist())))
    assert distinct == sorted(distinct) and distinct[0] == 1 and distinct[-1] == 5, distinct
    # on random interests: more categories with lambda, never an item outside the union of top-k lists
    users, items, cates = random_interests(13, batch_size=32, n=200)
    k = 10
    union = torch.einsum("bkd,nd->bkn", users, items)
    union[:, :, :2] = float("-inf")
    union = union.topk(k, dim=2).indices.flatten(1)
    plain, diverse = aggregate(users, items, k), aggregate(users, items, k, 100.0, cates)
    assert all(set(row.tolist()) <= set(u.tolist()) for row, u in zip(diverse, union))
    assert category_diversity(diverse, cates) > category_diversity(plain, cates)
    n_plain = torch.tensor([len(set(cates[row].tolist())) for row in plain])
    n_diverse = torch.tensor([len(set(cates[row].tolist())) for row in diverse])
    assert torch.all(n_diverse >= n_plain) and bool((n_diverse > n_plain).any())


def test_model_retrieve_uses_the_configured_lambda_and_the_stored_categories(tmp_path):
    model = tiny("comirec_sa", diversity=100.0)
    users, items, cates = random_interests(14, d=8, n=N_ITEMS)
    with pytest.raises(ValueError, match="set_item_categories"):
        model.retrieve(users, items, 5)
    with pytest.raises(ValueError, match="set_item_categories"):
        model.set_item_categories(torch.zeros(N_ITEMS - 1, dtype=torch.long))
    with pytest.raises(ValueError, match="n_cates"):
        model.set_item_categories(torch.full((N_ITEMS,), TINY_VOCAB["n_cates"]))
    model.set_item_categories(cates)
    assert torch.equal(model.retrieve(users, items, 5), aggregate(users, items, 5, 100.0, cates))
    restored = tiny("comirec_sa", diversity=100.0)
    restored.load_state_dict(model.state_dict())  # the categories travel with the weights
    assert torch.equal(restored.item_cate, cates)
    with pytest.raises(ValueError, match="diversity"):
        tiny("comirec_dr", diversity=-1.0)


def test_category_diversity_is_the_share_of_pairs_in_different_categories():
    cates = torch.tensor([0, 1, 2, 2, 3, 4])
    top = torch.tensor([[2, 3, 4, 5], [2, 3, 3, 2]])  # pairs differing: 5 of 6, 0 of 6
    assert category_diversity(top, cates) == pytest.approx((5 / 6 + 0) / 2)
    assert category_diversity(torch.tensor([[2]]), cates) == 0.0
