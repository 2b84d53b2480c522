"""IDNP's mechanism beyond the common retrieval contract."""

from __future__ import annotations

import math

import pytest
import torch

import lifelong.models.idnp as idnp  # registers "idnp"
from lifelong.models import build_model
from lifelong.models.retrieval import next_items
from lifelong.streams import STREAMS

from helpers import assert_later_items_do_not_change_earlier_outputs, random_batch


def tiny(**overrides):
    torch.manual_seed(0)
    values = {"model_type": "idnp", "n_items": 30, "n_cates": 8, "embedding_dim": 8, "scales": (1, 2, 4),
              "decoder_hidden": 32, "dropout": 0.0, "loss": "full", **overrides}
    return build_model(values).eval()


def full_rows(batch_size: int = 4, width: int = 7, seed: int = 3):
    batch = random_batch(batch_size=batch_size, width=width, seed=seed)
    batch.history_mask[:] = True
    batch.history_items = torch.randint(2, 30, batch.history_items.shape, generator=torch.Generator().manual_seed(seed))
    return batch


def test_gaussian_kl_is_zero_for_equal_distributions_and_matches_torch_otherwise():
    g = torch.Generator().manual_seed(0)
    mu, sigma = torch.randn(5, 4, generator=g), torch.rand(5, 4, generator=g) + 0.1
    assert torch.equal(idnp.gaussian_kl(mu, sigma, mu, sigma), torch.zeros(5))
    mu_p, sigma_p = torch.randn(5, 4, generator=g), torch.rand(5, 4, generator=g) + 0.1
    expected = torch.distributions.kl_divergence(torch.distributions.Normal(mu, sigma),
                                                 torch.distributions.Normal(mu_p, sigma_p)).sum(-1)
    torch.testing.assert_close(idnp.gaussian_kl(mu, sigma, mu_p, sigma_p), expected)
    assert (expected > 0).all()


def test_kl_term_vanishes_when_prior_and_posterior_are_forced_equal(monkeypatch):
    model = tiny(kl_weight=0.5, latent_path="global").train()  # paper's path; causal: test_idnp_causal
    batch = random_batch(batch_size=8, seed=1)
    latent = model.latent
    model.latent = lambda hidden, members: latent(hidden, batch.history_mask)  # prior set := posterior set
    output = model(batch)
    assert output.aux_losses["kl"].item() == 0.0
    model.latent = latent
    drawn, split = [], idnp.split_context
    monkeypatch.setattr(idnp, "split_context", lambda mask, ratio: drawn.append(split(mask, ratio)) or drawn[-1])
    output = model(batch)
    # otherwise: kl_weight x the windows' mean KL(q(z | every real step) || q(z | the drawn context steps))
    hidden = model.sequence(batch)
    posterior, prior = model.latent(hidden, batch.history_mask), model.latent(hidden, drawn[0])
    kl = idnp.gaussian_kl(*posterior, *prior).detach()  # (B,)
    assert float(kl.max()) > 1e-3  # the context is a strict subset: the two latents differ
    torch.testing.assert_close(output.aux_losses["kl"], 0.5 * kl.mean())


def test_context_and_target_steps_cover_every_real_position_exactly_once():
    torch.manual_seed(0)
    batch = random_batch(batch_size=64, width=9, seed=2)
    mask = batch.history_mask
    shares = []
    for _ in range(20):
        context = idnp.split_context(mask, 0.3)
        target = mask & ~context
        assert not (context & ~mask).any()  # never padding
        assert torch.equal(context | target, mask) and not (context & target).any()
        several = mask.sum(1) >= 2
        assert context[several].any(1).all() and target[several].any(1).all()
        assert not context[~several].any() and target[~several].any(1).all()
        shares.append(float(context.sum() / mask.sum()))
    assert 0.2 < sum(shares) / len(shares) < 0.45


def test_inference_ignores_the_split_and_uses_the_prior_mean_of_the_whole_history():
    model = tiny()
    batch = random_batch(batch_size=6, seed=4)
    torch.manual_seed(1)
    first = model.user_vectors(batch)
    torch.manual_seed(2)
    assert torch.equal(model.user_vectors(batch), first)
    with torch.no_grad():  # the latent spread plays no part at inference
        model.latent_sigma.weight.mul_(5.0).add_(1.0)
    assert torch.equal(model.user_vectors(batch), first)
    hidden = model.sequence(batch)
    for row, length in enumerate(batch.lengths.tolist()):
        h = hidden[row, :length]  # (n, D) every real step is context
        query = h[-1]
        logits = model.attention_key(h) @ model.attention_query(query) / math.sqrt(8)
        r_d = logits.softmax(0) @ model.attention_value(h)
        mu = model.latent_mu(model.latent_point(h).mean(0))
        torch.testing.assert_close(first[row], model.decode(r_d, mu, query))


def test_representation_at_step_t_does_not_change_when_later_items_change():
    model = tiny()
    assert_later_items_do_not_change_earlier_outputs(model.sequence, full_rows())


def test_representation_uses_only_the_largest_window_of_recent_items():
    model = tiny(scales=(1, 3))
    batch = full_rows()
    before = model.sequence(batch)
    batch.history_items[:, :2] = torch.randint(2, 30, (4, 2), generator=torch.Generator().manual_seed(9))
    after = model.sequence(batch)
    torch.testing.assert_close(after[:, 4:], before[:, 4:])  # step 4 sees steps 2..4 only


def test_deterministic_attention_sums_to_one_over_earlier_context_steps_only():
    model = tiny()
    batch = random_batch(batch_size=8, width=7, seed=5)
    hidden = model.sequence(batch)
    torch.manual_seed(3)
    context = idnp.split_context(batch.history_mask, 0.5)
    steps = torch.arange(7)
    allowed = context.unsqueeze(1) & (steps[None, :] <= steps[:, None])  # (B, T, T)
    r_d, weights = model.attend(hidden, hidden, allowed)
    assert (weights[~allowed] == 0).all()
    sums = weights.sum(-1)
    has_context = allowed.any(-1)
    torch.testing.assert_close(sums[has_context], torch.ones(int(has_context.sum())))
    assert (sums[~has_context] == 0).all() and (r_d[~has_context] == 0).all()


def test_training_loss_is_the_next_item_loss_of_the_target_steps_plus_the_weighted_kl(monkeypatch):
    model = tiny(kl_weight=0.5, latent_path="global").train()  # paper's path; causal: test_idnp_causal
    batch = random_batch(batch_size=5, width=6, seed=6)
    mask = batch.history_mask
    torch.manual_seed(7)
    context = idnp.split_context(mask, 0.5)
    monkeypatch.setattr(idnp, "split_context", lambda m, ratio: context)
    STREAMS.reset(8)
    output = model(batch)
    STREAMS.reset(8)  # the same reparameterisation noise (the latent_noise stream)
    hidden = model.sequence(batch)
    positives, _ = next_items(batch)
    mu_post, sigma_post = model.latent(hidden, mask)
    mu_prior, sigma_prior = model.latent(hidden, context)
    z = mu_post + sigma_post * idnp.latent_noise(sigma_post)
    terms = []
    for row, length in enumerate(batch.lengths.tolist()):
        for t in range(length):
            if context[row, t]:
                continue
            earlier = [c for c in range(t + 1) if context[row, c]]
            if earlier:
                h = hidden[row, earlier]
                weights = (model.attention_key(h) @ model.attention_query(hidden[row, t]) / math.sqrt(8)).softmax(0)
                r_d = weights @ model.attention_value(h)
            else:
                r_d = torch.zeros(8)
            logits = model.decode(r_d, z[row], hidden[row, t]) @ model.item.weight.T
            logits[:2] = float("-inf")
            terms.append(-logits.log_softmax(-1)[positives[row, t]])
    nll = torch.stack(terms).mean()
    kl = idnp.gaussian_kl(mu_post, sigma_post, mu_prior, sigma_prior).mean()
    torch.testing.assert_close(output.aux_losses["kl"], 0.5 * kl)
    torch.testing.assert_close(output.loss, nll + 0.5 * kl)


@pytest.mark.parametrize("field, value", [("scales", (2,)), ("scales", (4, 2)), ("scales", (0, 1)),
                                          ("context_ratio", 1.0), ("context_ratio", 0.0), ("kl_weight", -0.1),
                                          ("decoder_hidden", 0), ("dropout", 1.0), ("loss", "hinge")])
def test_invalid_config_is_rejected(field, value):
    with pytest.raises(ValueError, match=field):
        tiny(**{field: value})
