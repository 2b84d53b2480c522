"""The common contract, run on every registered model automatically (STYLE.md habits 5 and 6)."""

from __future__ import annotations

import json

import pytest
import torch
import torch.nn.functional as F

from lifelong.models import MODELS, build_model
from lifelong.train.checkpoint import load_weights, save_checkpoint

from helpers import random_batch, select
from model_configs import TINY_CONFIGS, TINY_VOCAB

NAMES = sorted(name for name, (config_class, _) in MODELS.items() if config_class.task == "ctr")  # ranking models
ALL_NAMES = sorted(MODELS)  # retrieval models have their own contract in test_retrieval_contract.py


def tiny_model(name: str, seed: int = 0):
    torch.manual_seed(seed)
    return build_model({"model_type": name, **TINY_VOCAB, **TINY_CONFIGS[name]})


def warm_up(model, steps: int = 3):
    """A few training steps, so that weights and batch statistics are not at their initial values."""
    optimizer = torch.optim.Adam(model.parameters(), lr=1e-2)
    for step in range(steps):
        batch = random_batch(seed=100 + step)
        loss = F.binary_cross_entropy_with_logits(model(batch).logits, batch.labels)
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()
    model.eval()
    return model


def test_every_registered_model_has_a_tiny_config():
    missing = sorted(set(MODELS) - set(TINY_CONFIGS))
    assert not missing, f"registered models without a tiny test config in tests/model_configs.py: {missing}"


@pytest.mark.parametrize("name", NAMES)
def test_output_shape_and_finite(name):
    model = tiny_model(name)
    batch = random_batch()
    for mode in (model.train, model.eval):
        mode()
        logits = model(batch).logits
        assert logits.shape == (len(batch),)
        assert torch.isfinite(logits).all()


@pytest.mark.parametrize("name", NAMES)
def test_every_parameter_receives_a_gradient(name):
    model = tiny_model(name)
    model.train()
    batch = random_batch(batch_size=16, seed=3)
    output = model(batch)
    loss = F.binary_cross_entropy_with_logits(output.logits, batch.labels) + sum(output.aux_losses.values())
    loss.backward()
    silent = [n for n, p in model.named_parameters() if p.grad is None or not torch.any(p.grad != 0)]
    assert not silent, f"{name}: parameters with no gradient: {silent}"


@pytest.mark.parametrize("name", NAMES)
def test_evaluation_is_deterministic(name):
    model = warm_up(tiny_model(name))
    batch = random_batch(seed=5)
    assert torch.equal(model(batch).logits, model(batch).logits)


@pytest.mark.parametrize("name", NAMES)
def test_sample_scores_the_same_alone_in_any_order_and_with_more_padding(name):
    model = warm_up(tiny_model(name))
    batch = random_batch(batch_size=8, seed=7)
    full = model(batch).logits
    for i in range(len(batch)):
        length = int(batch.history_mask[i].sum())
        alone = model(select(batch, torch.tensor([i]), width=length)).logits
        torch.testing.assert_close(alone, full[i : i + 1], rtol=1e-5, atol=1e-5)
    order = torch.randperm(len(batch), generator=torch.Generator().manual_seed(1))
    torch.testing.assert_close(model(select(batch, order)).logits, full[order], rtol=1e-5, atol=1e-5)
    wider = select(batch, torch.arange(len(batch)), width=batch.history_mask.shape[1] + 9)
    torch.testing.assert_close(model(wider).logits, full, rtol=1e-5, atol=1e-5)


@pytest.mark.parametrize("name", NAMES)
def test_config_and_weights_round_trip(name, tmp_path):
    model = warm_up(tiny_model(name))
    config = {"model_type": name, **model.config.to_dict()}
    save_checkpoint(tmp_path / "ckpt", model, config, {"epoch": 1})
    saved = json.loads((tmp_path / "ckpt" / "config.json").read_text())
    restored = build_model(saved)
    load_weights(tmp_path / "ckpt", restored)
    restored.eval()
    batch = random_batch(seed=11)
    assert torch.equal(restored(batch).logits, model(batch).logits)
    assert restored.config == model.config


@pytest.mark.parametrize("name", NAMES)
def test_loss_falls_when_overfitting_one_tiny_batch(name):
    model = tiny_model(name)
    model.train()
    batch = random_batch(batch_size=16, seed=13)
    optimizer = torch.optim.Adam(model.parameters(), lr=1e-2)
    losses = []
    for _ in range(60):
        output = model(batch)
        loss = F.binary_cross_entropy_with_logits(output.logits, batch.labels)
        optimizer.zero_grad()
        (loss + sum(output.aux_losses.values())).backward()
        optimizer.step()
        losses.append(loss.item())
    assert losses[-1] < 0.5 * losses[0], f"{name}: loss {losses[0]:.3f} -> {losses[-1]:.3f}"


def _malformed_batches():
    def wrong_mask_shape(b):
        b.history_mask = b.history_mask[:, :-1]

    def negative_index(b):
        b.target_items = b.target_items.clone()
        b.target_items[0] = -3

    def float_items(b):
        b.history_items = b.history_items.float()

    def wrong_target_length(b):
        b.target_cates = b.target_cates[:-1]

    def items_under_padding(b):
        b.history_items = b.history_items.clone()
        b.history_items[-1, -1] = 5  # the last sample has one event, so this is a padded step

    def mask_not_bool(b):
        b.history_mask = b.history_mask.long()

    def right_aligned(b):
        for name in ("history_items", "history_cates", "history_mask"):
            setattr(b, name, getattr(b, name).flip(1))

    return {"left-aligned": right_aligned, "history_mask": wrong_mask_shape, "negative": negative_index, "integer": float_items,
            "target_cates": wrong_target_length, "padding": items_under_padding, "bool": mask_not_bool}


@pytest.mark.parametrize("name", ALL_NAMES)
@pytest.mark.parametrize("problem", sorted(_malformed_batches()))
def test_malformed_batch_raises_a_value_error_naming_the_problem(name, problem):
    model = tiny_model(name)
    batch = random_batch()
    _malformed_batches()[problem](batch)
    with pytest.raises(ValueError, match=problem):
        model(batch)
