"""IDNP's causal latent path (the default): in training, the latent a target step decodes with, and its
KL, do not change when later items change; the paper's global path (``latent_path = "global"``) does."""

from __future__ import annotations

import pytest
import torch

import lifelong.models.idnp as idnp  # registers "idnp"
from lifelong.models import build_model
from lifelong.streams import STREAMS

from helpers import assert_later_items_do_not_change_earlier_outputs, random_batch


def tiny(**overrides):
    torch.manual_seed(0)
    values = {"model_type": "idnp", "n_items": 30, "n_cates": 8, "embedding_dim": 8, "scales": (1, 2, 4),
              "decoder_hidden": 32, "dropout": 0.0, "loss": "full", **overrides}
    return build_model(values)


def full_rows(seed: int = 3):
    batch = random_batch(batch_size=4, width=8, seed=seed)
    batch.history_mask[:] = True
    batch.history_items = torch.randint(2, 30, batch.history_items.shape, generator=torch.Generator().manual_seed(seed))
    return batch


def decoded(model, context):
    """(B, T, D) what each step decodes from in training (``d_q``, with the posterior mean as ``z``), for
    every real step taken as a target; the context split is fixed."""

    def sequence(batch):
        hidden = model.sequence(batch)
        t = hidden.shape[1]
        steps = torch.arange(t)
        r_d, _ = model.attend(hidden, hidden, context.unsqueeze(1) & (steps[None, :] <= steps[:, None]))
        if model.config.latent_path == "causal":
            mu, _ = model.latent_steps(hidden, batch.history_mask)
        else:
            mu = model.latent(hidden, batch.history_mask)[0].unsqueeze(1).expand(-1, t, -1)
        return model.decode(r_d, mu, hidden)

    return sequence


def test_the_causal_latent_of_a_step_ignores_later_items():
    model = tiny().eval()
    assert model.config.latent_path == "causal"  # the default
    batch = full_rows()
    context = torch.zeros_like(batch.history_mask)
    context[:, ::2] = True
    with torch.no_grad():
        assert_later_items_do_not_change_earlier_outputs(decoded(model, context), batch, cut=4)


def test_the_global_latent_path_sees_later_items():
    model = tiny(latent_path="global").eval()
    batch = full_rows()
    context = torch.zeros_like(batch.history_mask)
    context[:, ::2] = True
    with torch.no_grad(), pytest.raises(AssertionError):
        assert_later_items_do_not_change_earlier_outputs(decoded(model, context), batch, cut=4)


def test_the_causal_latent_at_the_last_step_is_the_whole_history_latent_used_at_inference():
    model = tiny().eval()
    batch = full_rows(seed=5)
    batch.history_mask[1, 5:] = False  # a shorter row: its last real step is 4
    batch.history_items[1, 5:] = 0
    with torch.no_grad():
        hidden = model.sequence(batch)
        mu_steps, sigma_steps = model.latent_steps(hidden, batch.history_mask)
        mu, sigma = model.latent(hidden, batch.history_mask)
    last = batch.lengths - 1
    rows = torch.arange(4)
    torch.testing.assert_close(mu_steps[rows, last], mu)
    torch.testing.assert_close(sigma_steps[rows, last], sigma)


@pytest.mark.parametrize("latent_path", ["causal", "global"])
def test_the_training_loss_of_early_targets_reads_later_items_only_on_the_global_path(latent_path):
    """Targets 1 and 3 (their answers are the items at 2 and 4), every other step context; the items from
    step 5 on change. Through the real training terms (next-item loss and KL, same noise): unchanged on
    the causal path, changed on the paper's global path."""
    model = tiny(kl_weight=0.5, latent_path=latent_path).train()
    batch = full_rows(seed=9)
    context = batch.history_mask.clone()
    context[:, [1, 3]] = False
    changed = full_rows(seed=9)
    changed.history_items[:, 5:] = torch.randint(2, 30, changed.history_items[:, 5:].shape,
                                                 generator=torch.Generator().manual_seed(2))
    terms = []
    for b in (batch, changed):
        STREAMS.reset(1)
        terms.append(model.training_terms(b, model.sequence(b), context))
    (nll, kl), (nll_changed, kl_changed) = terms
    if latent_path == "causal":
        torch.testing.assert_close(nll, nll_changed)
        torch.testing.assert_close(kl, kl_changed)
    else:
        assert not torch.isclose(kl, kl_changed) and not torch.isclose(nll, nll_changed)


def test_latent_path_is_validated():
    with pytest.raises(ValueError, match="latent_path"):
        tiny(latent_path="future")
    assert idnp.IDNPConfig().latent_path == "causal"


def test_the_causal_training_loss_is_each_target_steps_loss_with_its_own_latent_plus_the_weighted_kl():
    model = tiny(kl_weight=0.5).train()
    batch = random_batch(batch_size=5, width=6, seed=6)
    mask = batch.history_mask
    torch.manual_seed(7)
    context = idnp.split_context(mask, 0.5)
    hidden = model.sequence(batch)
    STREAMS.reset(8)
    nll, kl = model.training_terms(batch, hidden, context)
    STREAMS.reset(8)  # the same reparameterisation noise, one row per target step in row-major order
    targets = [(row, t) for row in range(5) for t in range(int(batch.lengths[row])) if not context[row, t]]
    eps = idnp.latent_noise(torch.zeros(len(targets), 8))
    positives = torch.cat([batch.history_items[:, 1:], batch.target_items[:, None]], dim=1)
    for row, length in enumerate(batch.lengths.tolist()):
        positives[row, length - 1] = batch.target_items[row]
    terms, kls = [], []
    for (row, t), noise in zip(targets, eps):
        upto = slice(0, t + 1)
        post = model.latent(hidden[row : row + 1, upto], mask[row : row + 1, upto])
        prior = model.latent(hidden[row : row + 1, upto], context[row : row + 1, upto])
        z = post[0][0] + post[1][0] * noise
        earlier = [c for c in range(t + 1) if context[row, c]]
        if earlier:
            h = hidden[row, earlier]
            weights = (model.attention_key(h) @ model.attention_query(hidden[row, t]) / 8 ** 0.5).softmax(0)
            r_d = weights @ model.attention_value(h)
        else:
            r_d = torch.zeros(8)
        logits = model.decode(r_d, z, hidden[row, t]) @ model.item.weight.T
        logits[:2] = float("-inf")
        terms.append(-logits.log_softmax(-1)[positives[row, t]])
        kls.append(idnp.gaussian_kl(*post, *prior)[0])
    torch.testing.assert_close(nll, torch.stack(terms).mean())
    torch.testing.assert_close(kl, torch.stack(kls).mean())
