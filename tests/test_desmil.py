"""DESMIL's sample weighting (lifelong.train.desmil): random Fourier features estimate a Gaussian
kernel, the weighted HSIC separates dependent from independent interests and follows its weights, the
learned weights are positive, average to one and lower the HSIC by down-weighting the dependent rows,
and the DESMIL step trains any multi-interest model through the base-class API."""

from __future__ import annotations

import math
from dataclasses import dataclass

import pytest
import torch
from torch import nn

from lifelong.batch import Batch
from lifelong.models.multi_interest import MultiInterestConfig, MultiInterestModel
from lifelong.train.desmil import SampleWeighting, desmil_step, interest_hsic, rff, weighted_hsic
from lifelong.train.desmil import _standardise

from helpers import random_batch


@dataclass
class TinyConfig(MultiInterestConfig):
    """Test-only config (not registered)."""

    model_type = "desmil_test_tiny"


class TinyMultiInterest(MultiInterestModel):
    """Test-only multi-interest model: K interests = K linear maps of the mean history embedding; the
    last interest is switched off for histories of one event (to exercise ``valid``)."""

    def __init__(self, config: TinyConfig) -> None:
        super().__init__()
        self.config = config
        self.item = nn.Embedding(config.n_items, config.embedding_dim, padding_idx=0)
        self.maps = nn.Linear(config.embedding_dim, config.interests * config.embedding_dim)

    def interests(self, batch: Batch) -> tuple[torch.Tensor, torch.Tensor]:
        mask = batch.history_mask.unsqueeze(-1).float()  # (B, T, 1)
        pooled = (self.item(batch.history_items) * mask).sum(1) / mask.sum(1).clamp(min=1.0)  # (B, D)
        b, k, d = pooled.shape[0], self.config.interests, self.config.embedding_dim
        vectors = self.maps(pooled).view(b, k, d)  # (B, K, D)
        valid = torch.ones(b, k, dtype=torch.bool)
        valid[batch.lengths <= 1, k - 1] = False
        return vectors, valid


def tiny_model(seed: int = 0, interests: int = 3) -> TinyMultiInterest:
    torch.manual_seed(seed)
    return TinyMultiInterest(TinyConfig(n_items=30, n_cates=8, embedding_dim=8, interests=interests, loss="full"))


def half_dependent(batch_size: int = 256, dim: int = 8, k: int = 2, seed: int = 0):
    """Interests (B, K, D) whose first half of rows has every interest a function of interest 0 (plus
    a little noise); in the second half all interests are independent. Returns (interests, dependent)."""
    g = torch.Generator().manual_seed(seed)
    vectors = torch.randn(batch_size, k, dim, generator=g)
    dependent = torch.arange(batch_size) < batch_size // 2
    n = int(dependent.sum())
    for j in range(1, k):
        mix = torch.randn(dim, dim, generator=g) / math.sqrt(dim)
        vectors[dependent, j] = torch.tanh(vectors[dependent, 0] @ mix) * 2 + 0.1 * torch.randn(n, dim, generator=g)
    return vectors, dependent


def gen(seed: int) -> torch.Generator:
    return torch.Generator().manual_seed(seed)


# --- random Fourier features ---------------------------------------------------------------------------


def test_rff_estimates_the_gaussian_kernel_and_draws_afresh_per_call():
    x = torch.tensor([[0.0, 0.0, 0.0], [1.0, 0.5, -0.5], [2.0, -1.0, 1.0]])
    for bandwidth in (1.0, 2.0):
        features = rff(x, 40_000, gen(0), bandwidth)  # (3, F)
        kernel = features @ features.T / features.shape[1]
        exact = torch.exp(-torch.cdist(x, x) ** 2 / (2 * bandwidth**2))
        torch.testing.assert_close(kernel, exact, atol=0.03, rtol=0)
    features = rff(x, 64, gen(1))
    assert features.shape == (3, 64) and float(features.abs().max()) <= math.sqrt(2) + 1e-6
    torch.testing.assert_close(rff(x, 64, gen(1)), features)  # same generator state, same draw
    g = gen(1)
    assert not torch.allclose(rff(x, 64, g), rff(x, 64, g))  # a fresh draw on every call
    with pytest.raises(ValueError, match="shape"):
        rff(torch.zeros(3), 4)


# --- weighted HSIC ---------------------------------------------------------------------------------------


def test_hsic_is_near_zero_for_independent_and_large_for_dependent_variables():
    g = gen(0)
    a, c = torch.randn(512, 4, generator=g), torch.randn(512, 4, generator=g)
    squared = a**2
    squared = (squared - squared.mean(0)) / squared.std(0)  # nonlinear, (nearly) uncorrelated with a
    independent = float(weighted_hsic(a, c, generator=gen(1)))
    identical = float(weighted_hsic(a, a, generator=gen(1)))
    nonlinear = float(weighted_hsic(a, squared, generator=gen(1)))
    assert independent < 0.002 and identical > 0.02
    assert identical > 20 * independent
    assert nonlinear > 5 * independent  # a kernel measure: dependence beyond correlation


def test_weighted_hsic_follows_its_weights():
    vectors, dependent = half_dependent(batch_size=512, k=2)
    a, b = vectors[:, 0], vectors[:, 1]
    uniform = weighted_hsic(a, b, None, 64, gen(3))
    torch.testing.assert_close(weighted_hsic(a, b, torch.ones(512), 64, gen(3)), uniform)
    torch.testing.assert_close(weighted_hsic(a, b, torch.full((512,), 3.0), 64, gen(3)), uniform)  # normalised
    # weight 0 on the dependent rows (2 elsewhere, mean one) = the HSIC of the independent rows alone
    only_independent = weighted_hsic(a, b, 2.0 * (~dependent).float(), 64, gen(3))
    torch.testing.assert_close(only_independent, weighted_hsic(a[~dependent], b[~dependent], None, 64, gen(3)))
    only_dependent = weighted_hsic(a, b, 2.0 * dependent.float(), 64, gen(3))
    # (the independent rows' HSIC is the estimator's bias, ~ 1 / rows; mixing halves the covariance)
    assert float(only_independent) < 0.5 * float(uniform) < 0.5 * float(only_dependent)
    # differentiable in the weights (the weight learner needs the gradient)
    w = torch.ones(512, requires_grad=True)
    weighted_hsic(a, b, w, 64, gen(3)).backward()
    assert w.grad is not None and float(w.grad[dependent].mean()) > float(w.grad[~dependent].mean())


def test_interest_hsic_sums_pairs_and_measures_only_valid_interests():
    vectors, _ = half_dependent(batch_size=128, k=2)
    all_valid = torch.ones(128, 2, dtype=torch.bool)
    # K = 2: the weighted HSIC of the two standardised interests, with the same draw
    standard = _standardise(vectors, all_valid)
    torch.testing.assert_close(interest_hsic(vectors, all_valid, None, 32, gen(5)),
                               weighted_hsic(standard[:, 0], standard[:, 1], None, 32, gen(5), bandwidth=math.sqrt(8)))
    # a third interest that copies the first adds a dependent pair (and one as dependent as the first);
    # an independent one adds two pairs of estimator bias only
    g = gen(6)
    copy = torch.cat([vectors, vectors[:, :1]], dim=1)
    fresh = torch.cat([vectors, torch.randn(128, 1, 8, generator=g)], dim=1)
    three = torch.ones(128, 3, dtype=torch.bool)
    pair = float(interest_hsic(vectors, all_valid, None, 32, gen(7)))
    with_copy = float(interest_hsic(copy, three, None, 32, gen(7)))
    with_fresh = float(interest_hsic(fresh, three, None, 32, gen(7)))
    assert with_copy - pair > 3 * (with_fresh - pair) > 0
    # switched-off interests: only rows where both are valid count; their values never matter
    valid = all_valid.clone()
    valid[100:, 1] = False
    garbage = vectors.clone()
    garbage[100:, 1] = 1e6
    masked = interest_hsic(garbage, valid, None, 32, gen(8))
    torch.testing.assert_close(masked, interest_hsic(vectors, valid, None, 32, gen(8)))
    assert not torch.allclose(masked, interest_hsic(vectors, all_valid, None, 32, gen(8)))
    valid[100:, 0] = False  # rows with no valid interest at all drop out entirely
    torch.testing.assert_close(interest_hsic(garbage, valid, None, 32, gen(8)),
                               interest_hsic(vectors[:100], all_valid[:100], None, 32, gen(8)))
    assert float(interest_hsic(vectors[:, :1], all_valid[:, :1], None, 32, gen(8))) == 0.0  # one interest
    lonely = all_valid.clone()
    lonely[1:, 1] = False  # a single row with both interests: nothing to measure
    assert float(interest_hsic(vectors, lonely, None, 32, gen(8))) == 0.0


# --- the weight learner ----------------------------------------------------------------------------------


def test_learned_weights_are_positive_average_one_and_lower_the_hsic():
    vectors, dependent = half_dependent(batch_size=256, k=3)
    valid = torch.ones(256, 3, dtype=torch.bool)
    result = SampleWeighting(n_features=32, weight_steps=20, seed=0).learn(vectors, valid)
    w = result.weights
    assert w.shape == (256,) and not w.requires_grad
    assert bool((w > 0).all()) and abs(float(w.mean()) - 1.0) < 1e-5
    assert result.hsic_after < 0.85 * result.hsic_before  # the decorrelation works ...
    assert float(w[dependent].mean()) < 0.9 < 1.1 < float(w[~dependent].mean())  # ... by down-weighting
    # independent of the optimisation's draws: on a fresh draw the learned weights still lower the HSIC
    assert float(interest_hsic(vectors, valid, w, 32, gen(11))) < float(interest_hsic(vectors, valid, None, 32, gen(11)))
    again = SampleWeighting(n_features=32, weight_steps=20, seed=0).learn(vectors, valid)
    torch.testing.assert_close(again.weights, w)  # reproducible from the seed


def test_the_concentration_penalty_keeps_the_weights_near_uniform():
    vectors, _ = half_dependent(batch_size=128, k=2)
    valid = torch.ones(128, 2, dtype=torch.bool)
    free = SampleWeighting(n_features=32, concentration=0.0, seed=0)(vectors, valid)
    held = SampleWeighting(n_features=32, concentration=30.0, seed=0)(vectors, valid)
    assert float(held.var()) < 0.2 * float(free.var())
    # nothing to decorrelate: a single interest, or no steps, gives uniform weights
    assert torch.equal(SampleWeighting(seed=0)(vectors[:, :1], valid[:, :1]), torch.ones(128))
    assert torch.equal(SampleWeighting(weight_steps=0, seed=0)(vectors, valid), torch.ones(128))
    for bad in ({"n_features": 0}, {"weight_steps": -1}, {"weight_lr": 0.0}, {"concentration": -1.0}):
        with pytest.raises(ValueError, match="desmil"):
            SampleWeighting(**bad)


# --- the training step ------------------------------------------------------------------------------------


def test_uniform_weights_give_the_plain_mean_loss_and_weights_select_samples():
    model = tiny_model().train()
    batch = random_batch(batch_size=6, n_items=30, seed=1)
    plain = model(batch).loss
    torch.testing.assert_close(model(batch, sample_weights=torch.ones(6)).loss, plain)
    losses, _, _, _ = model.training_terms(batch)
    torch.testing.assert_close(plain, losses.mean())
    one_hot = torch.zeros(6)
    one_hot[2] = 6.0  # mean one, all on sample 2
    torch.testing.assert_close(model(batch, sample_weights=one_hot).loss, losses[2])


def test_desmil_step_lowers_the_hsic_and_updates_with_the_weighted_per_sample_gradients():
    model = tiny_model().train()
    batch = random_batch(batch_size=16, n_items=30, seed=2)
    before = [p.detach().clone() for p in model.parameters()]
    optimizer = torch.optim.Adam(model.parameters(), lr=1e-2)
    step = desmil_step(model, optimizer, batch, SampleWeighting(n_features=16, weight_steps=20, seed=0))
    loss, weights, hsic_before, hsic_after = step
    assert weights.shape == (16,) and bool((weights > 0).all()) and abs(float(weights.mean()) - 1) < 1e-5
    # the weights lower the weighted HSIC of the batch's interests: on the step's own draw, on fresh draws,
    # and to first order (they move against the HSIC's gradient at uniform weights)
    assert hsic_after < 0.95 * hsic_before
    replica = model_at(before)
    with torch.no_grad():
        losses, interests, valid, _ = replica.training_terms(batch)
    draws = [(interest_hsic(interests, valid, weights, 64, gen(seed)),
              interest_hsic(interests, valid, None, 64, gen(seed))) for seed in range(20, 28)]
    assert sum(float(w) for w, _ in draws) < 0.95 * sum(float(u) for _, u in draws)
    uniform = torch.ones(16, requires_grad=True)
    sum(interest_hsic(interests, valid, uniform, 64, gen(seed)) for seed in range(20, 28)).backward()
    assert float((weights - 1) @ uniform.grad) < 0
    # the update is one Adam step on the weighted mean of the per-sample gradients at those weights
    torch.testing.assert_close(torch.tensor(loss), (losses * weights).mean())
    per_sample = []
    for row in range(16):
        grads = torch.autograd.grad(replica.training_terms(batch)[0][row], list(replica.parameters()),
                                    allow_unused=True)
        per_sample.append([torch.zeros_like(p) if g is None else g for g, p in zip(grads, replica.parameters())])
    weighted = [sum(float(weights[row]) / 16 * per_sample[row][i] for row in range(16)) for i in range(len(before))]
    plain = [sum(per_sample[row][i] / 16 for row in range(16)) for i in range(len(before))]
    for p, expected in zip(model.parameters(), weighted):
        torch.testing.assert_close(p.grad, expected, rtol=1e-4, atol=1e-6)
    assert max(float((w - u).abs().max()) for w, u in zip(weighted, plain)) > 1e-3  # the weights matter here
    replica_optimizer = torch.optim.Adam(replica.parameters(), lr=1e-2)
    for p, expected in zip(replica.parameters(), weighted):
        p.grad = expected.clone()
    replica_optimizer.step()
    for p, q in zip(model.parameters(), replica.parameters()):
        torch.testing.assert_close(p, q, rtol=1e-4, atol=1e-6)
    model.eval()
    with pytest.raises(ValueError, match="train"):
        desmil_step(model, optimizer, batch, SampleWeighting(seed=0))


def model_at(parameters: list[torch.Tensor]) -> TinyMultiInterest:
    model = tiny_model().train()
    with torch.no_grad():
        for p, value in zip(model.parameters(), parameters):
            p.copy_(value)
    return model


def test_desmil_without_weight_steps_is_the_plain_step():
    batch = random_batch(batch_size=8, n_items=30, seed=3)
    plain, desmil = tiny_model(seed=4).train(), tiny_model(seed=4).train()
    opt_plain = torch.optim.Adam(plain.parameters(), lr=1e-2)
    opt_desmil = torch.optim.Adam(desmil.parameters(), lr=1e-2)
    loss = plain(batch).loss
    opt_plain.zero_grad()
    loss.backward()
    opt_plain.step()
    step = desmil_step(desmil, opt_desmil, batch, SampleWeighting(weight_steps=0, seed=0))
    assert step.loss == pytest.approx(loss.item())
    for p, q in zip(plain.parameters(), desmil.parameters()):
        torch.testing.assert_close(p, q)
