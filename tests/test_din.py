"""DIN's mechanism beyond the common contract."""

from __future__ import annotations

import torch

from lifelong.models import build_model
from lifelong.nn import BehaviorEmbedding, Dice, TargetAttention

from helpers import random_batch


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
