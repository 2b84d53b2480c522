"""The common contract of retrieval models (task = "retrieval"), run on every registered one."""

from __future__ import annotations

import json

import pytest
import torch

from lifelong.models import MODELS, build_model
from lifelong.train.checkpoint import load_weights, save_checkpoint

from helpers import overfit_losses, random_batch, select
from model_configs import TINY_CONFIGS, TINY_VOCAB

NAMES = sorted(name for name, (config_class, _) in MODELS.items() if config_class.task == "retrieval")
LOSSES = ("bce", "sampled", "full")


def tiny_model(name: str, seed: int = 0, **overrides):
    torch.manual_seed(seed)
    return build_model({"model_type": name, **TINY_VOCAB, **TINY_CONFIGS[name], **overrides})


def warm_up(model, steps: int = 3):
    optimizer = torch.optim.Adam(model.parameters(), lr=1e-2)
    model.train()
    for step in range(steps):
        loss = model(random_batch(seed=100 + step)).loss
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()
    model.eval()
    return model


def test_there_is_a_retrieval_model():
    assert NAMES


@pytest.mark.parametrize("name", NAMES)
def test_user_and_item_vectors_have_matching_shapes_and_scores_cover_the_catalogue(name):
    model = tiny_model(name).eval()
    batch = random_batch()
    users = model.user_vectors(batch)
    items = model.item_vectors()
    assert users.shape[0] == len(batch) and users.shape[-1] == items.shape[1]
    assert items.shape[0] == TINY_VOCAB["n_items"]
    scores = model.score(users, items)
    assert scores.shape == (len(batch), TINY_VOCAB["n_items"])
    # column j scores item j by its own vector alone (what an index over the item vectors relies on): the
    # items in another order give the same scores in that order, and a changed item moves its column only
    order = torch.randperm(items.shape[0], generator=torch.Generator().manual_seed(0))
    torch.testing.assert_close(model.score(users, items[order]), scores[:, order])
    changed = items.detach().clone()
    d = TINY_CONFIGS[name]["embedding_dim"]
    changed[5, :d] += torch.randn(d, generator=torch.Generator().manual_seed(1))
    moved = model.score(users, changed)
    assert not torch.allclose(moved[:, 5], scores[:, 5])
    others = torch.arange(items.shape[0]) != 5
    torch.testing.assert_close(moved[:, others], scores[:, others])
    torch.testing.assert_close(model(batch).user_vectors, users)


@pytest.mark.parametrize("name", NAMES)
@pytest.mark.parametrize("loss", LOSSES)
def test_every_parameter_receives_a_gradient_under_every_loss(name, loss):
    model = tiny_model(name, loss=loss)
    model.train()
    output = model(random_batch(batch_size=16, seed=3))
    assert output.loss is not None and output.loss.dim() == 0 and torch.isfinite(output.loss)
    output.loss.backward()
    silent = [n for n, p in model.named_parameters() if p.grad is None or not torch.any(p.grad != 0)]
    assert not silent, f"{name}/{loss}: parameters with no gradient: {silent}"


@pytest.mark.parametrize("name", NAMES)
def test_evaluation_is_deterministic_and_has_no_loss(name):
    model = warm_up(tiny_model(name))
    batch = random_batch(seed=5)
    first, second = model(batch), model(batch)
    assert first.loss is None
    assert torch.equal(first.user_vectors, second.user_vectors)


@pytest.mark.parametrize("name", NAMES)
def test_user_vector_is_the_same_alone_in_any_order_and_with_more_padding(name):
    model = warm_up(tiny_model(name))
    batch = random_batch(batch_size=8, seed=7)
    full = model.user_vectors(batch)
    for i in range(len(batch)):
        length = int(batch.history_mask[i].sum())
        alone = model.user_vectors(select(batch, torch.tensor([i]), width=length))
        torch.testing.assert_close(alone, full[i : i + 1], rtol=1e-5, atol=1e-5)
    order = torch.randperm(len(batch), generator=torch.Generator().manual_seed(1))
    torch.testing.assert_close(model.user_vectors(select(batch, order)), full[order], rtol=1e-5, atol=1e-5)
    wider = select(batch, torch.arange(len(batch)), width=batch.history_mask.shape[1] + 9)
    torch.testing.assert_close(model.user_vectors(wider), full, rtol=1e-5, atol=1e-5)


@pytest.mark.parametrize("name", NAMES)
def test_config_and_weights_round_trip(name, tmp_path):
    model = warm_up(tiny_model(name))
    save_checkpoint(tmp_path / "ckpt", model, {"model_type": name, **model.config.to_dict()}, {"epoch": 1})
    restored = build_model(json.loads((tmp_path / "ckpt" / "config.json").read_text()))
    load_weights(tmp_path / "ckpt", restored)
    restored.eval()
    batch = random_batch(seed=11)
    assert torch.equal(restored.user_vectors(batch), model.user_vectors(batch))
    assert torch.equal(restored.item_vectors(), model.item_vectors())
    assert restored.config == model.config


@pytest.mark.parametrize("name", NAMES)
@pytest.mark.parametrize("loss", LOSSES)
def test_loss_falls_when_overfitting_one_tiny_batch(name, loss):
    model = tiny_model(name, loss=loss, dropout=0.0) if "dropout" in TINY_CONFIGS[name] else tiny_model(name, loss=loss)
    batch = random_batch(batch_size=16, seed=13)
    losses = overfit_losses(model, batch, steps=80)
    assert losses[-1] < 0.5 * losses[0], f"{name}/{loss}: loss {losses[0]:.3f} -> {losses[-1]:.3f}"
