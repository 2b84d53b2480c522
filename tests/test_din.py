"""DIN's mechanism beyond the common contract."""

from __future__ import annotations

import pytest
import torch

from lifelong.models import build_model
from lifelong.nn import BehaviorEmbedding, Dice, TargetAttention

from helpers import assert_candidates_score_as_forward_passes, random_batch
from model_configs import TINY_VOCAB


def test_fused_attention_equals_the_reference_concatenation():
    torch.manual_seed(0)
    reference = TargetAttention(6, [8, 4], "dice", impl="reference")
    fused = TargetAttention(6, [8, 4], "dice", impl="fused")
    fused.load_state_dict(reference.state_dict())
    keys, target = torch.randn(5, 7, 6), torch.randn(5, 6)
    mask = torch.arange(7)[None, :] < torch.tensor([7, 3, 1, 0, 5])[:, None]
    for mode in ("train", "eval"):
        getattr(reference, mode)(), getattr(fused, mode)()
        a, wa = reference(target, keys, mask)
        b, wb = fused(target, keys, mask)
        torch.testing.assert_close(a, b, rtol=1e-5, atol=1e-6)
        torch.testing.assert_close(wa, wb, rtol=1e-5, atol=1e-6)


def test_weights_are_unnormalised_by_default_and_softmax_on_request():
    torch.manual_seed(1)
    keys, target = torch.randn(4, 6, 8), torch.randn(4, 8)
    mask = torch.arange(6)[None, :] < torch.tensor([6, 4, 2, 1])[:, None]
    raw = TargetAttention(8, [16], "prelu").eval()
    _, weights = raw(target, keys, mask)
    assert not torch.allclose(weights.sum(dim=1), torch.ones(4))
    assert (weights[~mask] == 0).all()
    soft = TargetAttention(8, [16], "prelu", normalization="softmax").eval()
    interest, weights = soft(target, keys, mask)
    torch.testing.assert_close(weights.sum(dim=1), torch.ones(4))
    assert (weights[~mask] == 0).all()
    # the interest is the weighted sum of the behaviors
    torch.testing.assert_close(interest, (weights.unsqueeze(-1) * keys).sum(dim=1))


def test_attention_follows_the_target():
    """Different candidates give different weights over the same history (it is target attention)."""
    torch.manual_seed(2)
    att = TargetAttention(8, [16], "prelu").eval()
    keys = torch.randn(1, 5, 8).repeat(2, 1, 1)
    mask = torch.ones(2, 5, dtype=torch.bool)
    _, weights = att(torch.randn(2, 8), keys, mask)
    assert not torch.allclose(weights[0], weights[1])


def test_dice_uses_batch_statistics_in_training_and_running_ones_at_inference():
    dice = Dice(3)
    with torch.no_grad():
        dice.alpha.fill_(0.5)
    x = torch.randn(64, 3) * 4 + 2
    train_out = dice(x)
    p = torch.sigmoid((x - x.mean(0)) / torch.sqrt(x.var(0, unbiased=False) + 1e-8))
    torch.testing.assert_close(train_out, p * x + (1 - p) * 0.5 * x, rtol=1e-4, atol=1e-5)
    dice.eval()
    single = dice(x[:1])
    torch.testing.assert_close(single, dice(x)[:1])


def test_mini_batch_aware_l2_counts_only_ids_in_the_batch_scaled_by_frequency():
    emb = BehaviorEmbedding(n_items=6, n_cates=3, dim=2)
    with torch.no_grad():
        emb.item.weight.fill_(1.0)
        emb.cate.weight.fill_(2.0)
    items = torch.tensor([[2, 2, 0], [3, 0, 0]])  # ids 2 and 3 (2 repeats), 0 is padding
    cates = torch.tensor([[1, 0, 0], [1, 0, 0]])
    item_counts = torch.tensor([1.0, 1.0, 4.0, 2.0, 1.0, 1.0])
    cate_counts = torch.tensor([1.0, 8.0, 1.0])
    value = emb.mini_batch_l2(items, cates, item_counts, cate_counts)
    expected = 2 / 4 + 2 / 2 + 8 / 8  # ||w||^2 = 2 per item row, 8 per category row
    assert abs(value.item() - expected) < 1e-6


def test_din_adds_the_regulariser_only_in_training():
    model = build_model({"model_type": "din", "n_items": 30, "n_cates": 8, "embedding_dim": 4,
                         "attention_hidden": (8,), "dnn_hidden": (8,), "l2_mba": 0.1})
    batch = random_batch()
    assert "l2_mba" in model.train()(batch).aux_losses
    assert not model.eval()(batch).aux_losses


def visible_din(**options):
    """A DIN in eval mode with O(1) embeddings (the 1e-2 init hides the candidate's effect)."""
    torch.manual_seed(3)
    model = build_model({"model_type": "din", **TINY_VOCAB, "embedding_dim": 4, "attention_hidden": (8, 4),
                         "dnn_hidden": (16, 8), **options})
    with torch.no_grad():
        for table in (model.embedding.item, model.embedding.cate):
            table.weight.normal_()
            table.weight[0].zero_()
    return model.eval()


@pytest.mark.parametrize("options", [{}, {"attention_normalization": "softmax"}, {"attention_impl": "reference"},
                                     {"attention_activation": "prelu", "dnn_activation": "relu"}])
def test_variants_score_several_candidates_as_forward_passes(options):
    assert_candidates_score_as_forward_passes(visible_din(**options), random_batch(batch_size=6, seed=40), k=4)


@pytest.mark.parametrize("pairs_per_chunk", [1 << 14, 5])
@pytest.mark.parametrize("impl", ["fused", "reference"])
@pytest.mark.parametrize("normalization", ["none", "softmax"])
def test_attention_over_k_candidates_equals_k_calls_with_one(impl, normalization, pairs_per_chunk, monkeypatch):
    monkeypatch.setattr("lifelong.nn.layers.PAIRS_PER_CHUNK", pairs_per_chunk)
    monkeypatch.setattr("lifelong.nn.layers.CANDIDATE_PAIRS_PER_CHUNK", pairs_per_chunk)
    torch.manual_seed(4)
    att = TargetAttention(6, [8, 4], "dice", normalization, impl)
    with torch.no_grad():
        att.first_activation.norm.running_mean.normal_()
        att.first_activation.norm.running_var.uniform_(0.5, 2.0)
    att.eval()
    keys, targets = torch.randn(5, 7, 6), torch.randn(5, 3, 6)
    mask = torch.arange(7)[None, :] < torch.tensor([7, 3, 1, 0, 5])[:, None]  # one history is empty
    keys = keys * mask.unsqueeze(-1)
    with torch.no_grad():
        interest, weights = att(targets, keys, mask)  # (B, K, D), (B, K, T)
    for j in range(3):
        one_interest, one_weights = att(targets[:, j], keys, mask)
        torch.testing.assert_close(interest[:, j], one_interest, rtol=1e-5, atol=1e-6)
        torch.testing.assert_close(weights[:, j], one_weights, rtol=1e-5, atol=1e-6)
    assert bool((weights[3] == 0).all()) and bool((interest[3] == 0).all())


def test_dice_at_inference_is_the_moving_average_formula_with_or_without_gradients():
    dice = Dice(3)
    with torch.no_grad():
        dice.alpha.copy_(torch.tensor([0.5, -0.2, 0.1]))
        dice.norm.running_mean.copy_(torch.tensor([1.0, -2.0, 0.0]))
        dice.norm.running_var.copy_(torch.tensor([4.0, 0.5, 1.0]))
    dice.eval()
    x = torch.randn(16, 3) * 3
    p = torch.sigmoid((x - dice.norm.running_mean) / torch.sqrt(dice.norm.running_var + 1e-8))
    expected = p * x + (1 - p) * dice.alpha.detach() * x
    with_gradients = dice(x)
    torch.testing.assert_close(with_gradients, expected)
    with torch.no_grad():  # the in-place path
        assert torch.equal(dice(x), with_gradients.detach())
