"""DESMIL's sample weighting: a training option of every multi-interest model (P3 ``mi-split``).

Paper: Z. Liu, Y. Luo, D. Zeng, Q. Liu, D. Chang, D. Kong and Z. Chen, Improving Multi-Interest
Network with Stable Learning (DEep Stable Multi-Interest Learning, DESMIL), Kuaishou, arXiv 2207.07910
(its out-of-distribution version is arXiv 2304.05615). Its
decorrelation is StableNet's (Zhang et al., Deep Stable Learning for Out-of-Distribution
Generalization, CVPR 2021): HSIC estimated with random Fourier features (RFF), minimised by learning
per-sample weights.

Mechanism:
  - The interests a multi-interest network extracts are statistically dependent (items retrieved
    together are trained together), so the model learns spurious links between an irrelevant interest
    and the target. DESMIL measures the dependence of every pair of interests by HSIC and removes it
    by **reweighting the training samples**: weights ``w`` (positive, mean one) under which the
    interests are independent.
  - HSIC of interests ``a, b`` (B, D) with weights ``w``: the squared Frobenius norm of the weighted
    cross-covariance of their RFF ``phi(x) = sqrt(2) cos(x W + phase)`` (``W ~ N(0, 1/s^2)``,
    ``phase ~ U(0, 2 pi)``, a fresh draw per call, as StableNet), divided by ``F^2``: with
    ``k(x, y) ~ phi(x).phi(y) / F`` (a Gaussian kernel of bandwidth ``s``) this is the HSIC of that
    kernel, about 0 when independent and at most about 1, whatever ``n_features = F``.
  - The interests' HSIC is summed over the pairs ``i < j`` of interests.
  - Alternating optimisation (:func:`reweighted_update`): the interests of the batch are computed once
    without gradients; :class:`SampleWeighting` learns the weights of the batch by ``weight_steps``
    Adam steps on the weighted HSIC (a fresh RFF draw per step); the model is then updated with the
    weighted loss ``mean(w * loss)`` (``model(batch, sample_weights=w)``).
  - In the training loop DESMIL is a variant of the step (:class:`DesmilStep`): the forward passes run
    under the run's precision (``--precision bf16``: autocast), the weights are learned in float32 on the
    interests cast to float32, and the weighted update is the loop's own (gradient clipping, DDP).

Choices where the paper is silent (abstract-level notes only; DESMIL's code is not public):
  - RFF of the whole interest *vector* (a multivariate Gaussian kernel on R^D) and HSIC between pairs
    of interests; StableNet decorrelates every pair of scalar feature dimensions instead. The same
    draw ``(W, phase)`` maps all the interests of a batch (one kernel for all; a fresh draw per call).
  - Bandwidth: :func:`interest_hsic` standardises every interest slot over the batch (per dimension,
    over the rows where it is valid, unweighted statistics, so the kernel does not move with the
    weights) and uses ``s = sqrt(D)``: two standardised points are ``sqrt(2 D)`` apart on average, so
    the kernel neither saturates nor vanishes. :func:`weighted_hsic` uses its inputs as given with
    ``s = sqrt(d)`` unless told otherwise.
  - Switched-off interests (``valid`` False, e.g. MIND's dynamic number): a pair is measured on the
    rows where both interests are valid only (their weights renormalised to mean one there); a pair
    with fewer than two such rows counts zero.
  - Weights ``w = B * softmax(logits)`` (positive, mean one; logits start at zero, i.e. uniform),
    learned with Adam on ``HSIC_w / HSIC_uniform + concentration * mean((w - 1)^2)``: the HSIC relative
    to its uniform-weight value (one draw at the start), so that the trade-off does not depend on how
    large the HSIC is (it shrinks with ``D``, grows with the number of pairs), plus the weights'
    variance against collapse onto a few samples (StableNet's ``sum softmax^2`` penalty in the
    mean-one scale). The default ``concentration = 1`` was set on synthetic batches with half the rows
    dependent: the weights then stay within about [0.25, 1.7] and the HSIC drops by about a third.
    (The weighted estimator's own bias, ``~ sum p_n^2``, is smallest at uniform weights, so pure noise
    does not move the weights either.)
  - StableNet's global memory of past features and weights (concatenated to each batch when learning
    the weights) is skipped: the weights are learned per batch, from the batch alone.
  - The extended version's weighted HSIC *loss on the model* (2304.05615) is not added: the model is
    trained on the weighted next-item loss only.
  - The interests for the weights come from ``model.training_terms`` in training mode (dropout and
    sampled negatives draw again in the weighted update, so those are a second draw); the model's own
    ``forward`` then computes the weighted loss, so any model's extra losses are kept.
"""

from __future__ import annotations

import math
from typing import NamedTuple

import numpy as np
import torch

from lifelong.batch import Batch
from lifelong.train.epoch import Trainer, model_loss


def rff(x: torch.Tensor, n_features: int, generator: torch.Generator | None = None,
        bandwidth: float = 1.0) -> torch.Tensor:
    """Random Fourier features ``sqrt(2) cos(x W + phase)``: x (B, d) -> (B, n_features).

    ``W`` (d, n_features) ~ N(0, 1/bandwidth^2) and ``phase`` ~ U(0, 2 pi) are drawn afresh on each call
    from ``generator`` (a CPU generator; torch's global RNG when None), so that
    ``phi(x).phi(y) / n_features`` estimates the Gaussian kernel ``exp(-|x - y|^2 / (2 bandwidth^2))``.

    Example:
        >>> rff(torch.zeros(3, 2), 5, torch.Generator().manual_seed(0)).shape
        torch.Size([3, 5])
    """
    if x.dim() != 2:
        raise ValueError(f"rff expects x of shape (B, d), got {tuple(x.shape)}")
    if n_features < 1:
        raise ValueError(f"n_features must be at least 1, got {n_features}")
    if not bandwidth > 0:
        raise ValueError(f"bandwidth must be positive, got {bandwidth}")
    projection = torch.randn(x.shape[1], n_features, generator=generator) / bandwidth  # (d, F)
    phase = torch.rand(n_features, generator=generator) * (2 * math.pi)  # (F,)
    projection = projection.to(device=x.device, dtype=x.dtype)
    phase = phase.to(device=x.device, dtype=x.dtype)
    return math.sqrt(2.0) * torch.cos(x @ projection + phase)  # (B, F)


def weighted_hsic(a: torch.Tensor, b: torch.Tensor, weights: torch.Tensor | None = None, n_features: int = 64,
                  generator: torch.Generator | None = None, bandwidth: float | None = None) -> torch.Tensor:
    """Weighted HSIC of two variables: ``|Cov_w(phi(a), phi(b))|_F^2 / F^2`` (a scalar, differentiable in
    ``weights``).

    Args:
        a, b: (B, d) samples of the two variables (row ``n`` of both is one sample).
        weights: (B,) non-negative sample weights (normalised here to mean one), None = uniform.
        n_features: ``F``, the number of random Fourier features.
        generator: the RNG of the RFF draw (one draw, shared by ``a`` and ``b``).
        bandwidth: of the Gaussian kernel; None = ``sqrt(d)``.

    Example:
        >>> a = torch.randn(64, 3)
        >>> float(weighted_hsic(a, a, generator=torch.Generator().manual_seed(0))) > 0.01
        True
    """
    if a.dim() != 2 or a.shape != b.shape:
        raise ValueError(f"weighted_hsic expects a and b of the same shape (B, d), got {tuple(a.shape)} and {tuple(b.shape)}")
    n, d = a.shape
    if weights is None:
        weights = torch.ones(n, device=a.device, dtype=a.dtype)
    if tuple(weights.shape) != (n,):
        raise ValueError(f"weights must have shape ({n},) like the rows of a and b, got {tuple(weights.shape)}")
    bandwidth = math.sqrt(d) if bandwidth is None else bandwidth
    features = rff(torch.cat([a, b]), n_features, generator, bandwidth)  # (2B, F): the same draw for a and b
    fa, fb = features[:n], features[n:]  # (B, F) each
    p = weights / weights.sum()  # (B,) = w / B with w of mean one
    ca = fa - p @ fa  # (B, F) centred under the weights
    cb = fb - p @ fb
    cov = (ca * p.unsqueeze(1)).T @ cb  # (F, F) weighted cross-covariance
    return cov.pow(2).sum() / n_features**2


def interest_hsic(interests: torch.Tensor, valid: torch.Tensor, weights: torch.Tensor | None = None,
                  n_features: int = 64, generator: torch.Generator | None = None) -> torch.Tensor:
    """Weighted HSIC summed over the pairs ``i < j`` of interests (a scalar; 0 with a single interest).

    Each interest slot is standardised over the rows where it is valid (per dimension); one RFF draw of
    bandwidth ``sqrt(D)`` maps every interest (the same kernel for all); a pair is measured on the rows
    where both interests are valid (weights renormalised there); a pair with fewer than two such rows
    counts zero. With ``K = 2`` and all interests valid this is :func:`weighted_hsic` of the two
    standardised interests (same draw).

    Args:
        interests: (B, K, D) interest vectors.
        valid: (B, K) bool, False for switched-off interests.
        weights: (B,) non-negative sample weights, None = uniform.
        n_features, generator: see :func:`weighted_hsic`.

    Example:
        >>> v = torch.randn(32, 3, 4)
        >>> float(interest_hsic(v, torch.ones(32, 3, dtype=torch.bool), generator=torch.Generator().manual_seed(0))) >= 0
        True
    """
    if interests.dim() != 3 or tuple(valid.shape) != tuple(interests.shape[:2]):
        raise ValueError(f"interest_hsic expects interests (B, K, D) and valid (B, K), got "
                         f"{tuple(interests.shape)} and {tuple(valid.shape)}")
    b, k, d = interests.shape
    if weights is None:
        weights = torch.ones(b, device=interests.device, dtype=interests.dtype)
    if tuple(weights.shape) != (b,):
        raise ValueError(f"weights must have shape ({b},), one per row of interests, got {tuple(weights.shape)}")
    if k < 2:
        return interests.new_zeros(())
    standard = _standardise(interests, valid)  # (B, K, D)
    features = rff(standard.reshape(b * k, d), n_features, generator, math.sqrt(d)).reshape(b, k, n_features)
    first, last = torch.triu_indices(k, k, offset=1, device=interests.device)  # the P pairs i < j
    fi, fj = features[:, first], features[:, last]  # (B, P, F) each
    both = valid[:, first] & valid[:, last]  # (B, P) rows where both interests of the pair are valid
    p = weights.unsqueeze(1) * both  # (B, P)
    p = p / p.sum(0).clamp(min=1e-12)  # each pair's weights normalised over its rows
    mean_i = torch.einsum("np,npf->pf", p, fi)  # (P, F)
    mean_j = torch.einsum("np,npf->pf", p, fj)
    second_moment = (fi * p.unsqueeze(2)).permute(1, 2, 0) @ fj.transpose(0, 1)  # (P, F, B) @ (P, B, F)
    cov = second_moment - mean_i.unsqueeze(2) * mean_j.unsqueeze(1)  # (P, F, F) weighted cross-covariances
    counted = both.sum(0) >= 2  # (P,) pairs with enough rows
    return (cov.pow(2).sum((1, 2)) * counted).sum() / n_features**2


def _standardise(interests: torch.Tensor, valid: torch.Tensor) -> torch.Tensor:
    """(B, K, D) each slot's dimensions at zero mean and unit variance over its valid rows (0 elsewhere)."""
    mask = valid.unsqueeze(-1).to(interests.dtype)  # (B, K, 1)
    x = torch.where(valid.unsqueeze(-1), interests, torch.zeros_like(interests))
    count = mask.sum(0).clamp(min=1.0)  # (K, 1)
    mean = x.sum(0) / count  # (K, D)
    var = ((x - mean) ** 2 * mask).sum(0) / count
    return (x - mean) / var.sqrt().clamp(min=1e-6) * mask


class WeightingResult(NamedTuple):
    """What :meth:`SampleWeighting.learn` returns: the detached weights (B,) (positive, mean one) and
    the interests' HSIC with uniform weights and with them (one common RFF draw)."""

    weights: torch.Tensor
    hsic_before: float
    hsic_after: float


class SampleWeighting:
    """DESMIL's weight learner: per-sample weights that minimise the interests' weighted HSIC.

    Args:
        n_features: RFF per interest (``F``).
        weight_steps: Adam steps on the weights per batch.
        weight_lr: their learning rate (on the softmax logits).
        concentration: weight of the ``mean((w - 1)^2)`` penalty (against the relative HSIC) that keeps
            the weights from collapsing onto a few samples.
        seed: seed of the RFF draws (a generator owned by the learner).

    Example:
        >>> weighting = SampleWeighting(weight_steps=5, seed=0)
        >>> w = weighting(torch.randn(16, 2, 4), torch.ones(16, 2, dtype=torch.bool))
        >>> bool((w > 0).all()), round(float(w.mean()), 4)
        (True, 1.0)
    """

    def __init__(self, n_features: int = 64, weight_steps: int = 20, weight_lr: float = 0.1,
                 concentration: float = 1.0, seed: int = 0) -> None:
        if n_features < 1:
            raise ValueError(f"desmil: n_features must be at least 1, got {n_features}")
        if weight_steps < 0:
            raise ValueError(f"desmil: weight_steps must be non-negative, got {weight_steps}")
        if not weight_lr > 0:
            raise ValueError(f"desmil: weight_lr must be positive, got {weight_lr}")
        if not concentration >= 0:
            raise ValueError(f"desmil: concentration must be non-negative, got {concentration}")
        self.n_features = n_features
        self.weight_steps = weight_steps
        self.weight_lr = weight_lr
        self.concentration = concentration
        self.generator = torch.Generator().manual_seed(seed)

    def __call__(self, interests: torch.Tensor, valid: torch.Tensor) -> torch.Tensor:
        """(B,) detached weights for interests (B, K, D) and valid (B, K)."""
        return self.learn(interests, valid).weights

    def learn(self, interests: torch.Tensor, valid: torch.Tensor) -> WeightingResult:
        """Learn the weights of one batch (see :class:`WeightingResult`)."""
        interests = interests.detach()
        b, k, _ = interests.shape
        uniform = torch.ones(b, device=interests.device, dtype=interests.dtype)
        if k < 2:  # nothing to decorrelate
            return WeightingResult(uniform, 0.0, 0.0)
        logits = torch.zeros(b, device=interests.device, dtype=interests.dtype, requires_grad=True)
        optimizer = torch.optim.Adam([logits], lr=self.weight_lr)
        with torch.no_grad():  # the HSIC's scale, so that the trade-off with the penalty does not depend on D, K
            scale = interest_hsic(interests, valid, uniform, self.n_features, self.generator).clamp(min=1e-12)
        with torch.enable_grad():
            for _ in range(self.weight_steps):
                weights = b * torch.softmax(logits, dim=0)  # (B,) positive, mean one
                objective = interest_hsic(interests, valid, weights, self.n_features, self.generator) / scale
                objective = objective + self.concentration * (weights - 1).pow(2).mean()
                optimizer.zero_grad()
                objective.backward()
                optimizer.step()
        weights = (b * torch.softmax(logits, dim=0)).detach()
        with torch.no_grad():  # before / after on one common draw, independent of the optimisation's
            seed = int(torch.randint(0, 2**62, (1,), generator=self.generator))
            before = interest_hsic(interests, valid, uniform, self.n_features, torch.Generator().manual_seed(seed))
            after = interest_hsic(interests, valid, weights, self.n_features, torch.Generator().manual_seed(seed))
        return WeightingResult(weights, float(before), float(after))


class DESMILStep(NamedTuple):
    """What :func:`desmil_step` returns: the weighted training loss, the weights (B,) and the
    interests' HSIC before / after the reweighting."""

    loss: float
    weights: torch.Tensor
    hsic_before: float
    hsic_after: float


def reweighted_update(trainer: Trainer, batch: Batch, weighting: SampleWeighting) -> DESMILStep:
    """One DESMIL step through ``trainer``: the batch's interests without gradients (forward pass under
    the run's precision), the weights that decorrelate them (learned in float32), then the weighted loss
    and the trainer's update (backward pass, gradient clipping, optimizer step; under DDP through its
    wrapper)."""
    if not trainer.model.training:
        raise ValueError("desmil_step trains the model: call model.train() first")
    with torch.no_grad(), trainer.autocast:
        _, interests, valid, _ = trainer.model.training_terms(batch)  # (B, K, D), (B, K)
    result = weighting.learn(interests.float(), valid)  # the HSIC is a small difference of large sums: float32
    loss = trainer.loss(batch, sample_weights=result.weights)
    trainer.update(loss.total)
    return DESMILStep(float(loss.reported.detach()), result.weights, result.hsic_before, result.hsic_after)


def desmil_step(model, optimizer: torch.optim.Optimizer, batch: Batch, weighting: SampleWeighting) -> DESMILStep:
    """One DESMIL training step of a multi-interest model (in training mode), in float32 without
    clipping: the batch's interests without gradients, the weights that decorrelate them, then the
    weighted model update (:func:`reweighted_update` with a plain :class:`lifelong.train.epoch.Trainer`).

    Args:
        model: a :class:`lifelong.models.multi_interest.MultiInterestModel` (``training_terms`` and
            ``forward(batch, sample_weights)``).
        optimizer: the model's optimizer.
        batch: the training batch.
        weighting: the weight learner (holds the RFF generator across steps).

    Example:
        >>> from lifelong.models import build_model
        >>> from lifelong.batch import Batch
        >>> model = build_model({"model_type": "youtube_dnn", "n_items": 10, "n_cates": 4, "embedding_dim": 4,
        ...                      "hidden": [8], "negatives": 4}).train()
        >>> items = torch.tensor([[2, 3, 4], [5, 6, 0]])
        >>> batch = Batch(history_items=items, history_cates=(items > 0).long() * 2, history_mask=items > 0,
        ...               target_items=torch.tensor([7, 8]), target_cates=torch.tensor([2, 2]),
        ...               labels=torch.ones(2), users=torch.arange(2))
        >>> step = desmil_step(model, torch.optim.Adam(model.parameters()), batch, SampleWeighting(seed=0))
        >>> step.weights  # one interest: nothing to decorrelate, uniform weights
        tensor([1., 1.])
    """
    return reweighted_update(Trainer(model, optimizer, model_loss), batch, weighting)


class DesmilStep:
    """DESMIL as a variant of the training loop's step (:class:`lifelong.train.epoch.Step`): every batch
    is reweighted (:func:`reweighted_update`); the weight learner's RFF draws restart with the epoch (so a
    resumed run continues exactly), and the epoch reports the batch-mean HSIC of the interests under
    uniform weights (``train_hsic_uniform``) and under the learned ones (``train_hsic_weighted``).

    Args:
        weighting: the weight learner.
        seed: the run's seed (the RFF generator of epoch ``e`` starts at ``seed * 1000 + e``).
    """

    def __init__(self, weighting: SampleWeighting, seed: int) -> None:
        self.weighting, self.seed = weighting, seed
        self.hsic, self.steps = np.zeros(2), 0

    def start_epoch(self, epoch: int) -> None:
        self.weighting.generator.manual_seed(self.seed * 1000 + epoch)  # its RFF draws restart exactly on resume
        self.hsic, self.steps = np.zeros(2), 0

    def __call__(self, trainer: Trainer, batch: Batch) -> float:
        step = reweighted_update(trainer, batch, self.weighting)
        self.hsic += (step.hsic_before, step.hsic_after)
        self.steps += 1
        return step.loss

    def report(self) -> dict[str, float]:
        steps = max(self.steps, 1)
        return {"train_hsic_uniform": self.hsic[0] / steps, "train_hsic_weighted": self.hsic[1] / steps}
