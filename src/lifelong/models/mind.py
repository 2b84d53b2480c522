"""MIND: multi-interest network with dynamic routing.

Paper: Li et al., Multi-Interest Network with Dynamic Routing for Recommendation at Tmall, CIKM 2019
(arXiv 1904.08030); the multi-interest baseline of ComiRec (KDD 2020).

Mechanism:
  - Behavior embeddings ``e_i`` are the shared item embeddings (``self.item``, also the output item
    vectors scored by inner product).
  - Multi-interest extractor, **B2I dynamic routing** (the paper's Algorithm 1): one shared bilinear map
    ``S`` (D x D, no bias) maps every behavior, ``s_i = S e_i``. The user's number of interests is
    ``K'_u = max(1, min(K, floor(log2 n_u)))`` (``n_u`` = real behaviors); interests ``j >= K'_u`` are
    switched off (``valid = False``). Routing logits ``b_ij`` start from a Gaussian ``N(0, sigma^2)``
    (not learned) and for ``routing_iterations`` rounds:
    ``w_ij = softmax_j(b_ij)`` over the user's ``K'_u`` valid interests (each real behavior's coupling
    coefficients sum to one; padding behaviors get ``w = 0`` and contribute nothing),
    ``z_j = sum_i w_ij s_i``, ``u_j = squash(z_j) = |z|^2 / (1 + |z|^2) * z / |z|``,
    ``b_ij += <u_j, s_i>`` (the agreement).
  - H layers: each interest capsule goes through the same feed-forward tower, ``hidden`` ReLU layers
    then a linear map back to ``D`` (default: ``Linear(D, 128)``, ReLU, ``Linear(128, D)``, i.e. two
    layers with biases), giving the user's interest vectors ``v_j``.
  - Training (from :class:`lifelong.models.multi_interest.MultiInterestModel`): label-aware attention
    ``v = V softmax(pow(V^T e_target, p))`` with ``label_power = p``, then the sampled softmax
    (``loss``). Serving: every interest retrieves; lists merge by score (best interest per item).

Choices where the paper is silent, and deviations:
  - Initial routing logits: the paper draws ``b_ij ~ N(0, sigma^2)`` afresh. Here they are a fixed draw
    per (history position, interest): position ``t``'s ``K`` logits come from numpy's generator seeded
    with ``(routing_seed, t)`` (times ``routing_init_std``), the same in training and evaluation, for
    every user and batch. So evaluation is deterministic, a user's vectors do not depend on its batch
    or on torch's RNG, and the logits rebuild from the config (they are not in the state dict). Any
    history length works (rows are drawn on first use and cached). Positions count from the oldest
    kept behavior (histories are left-aligned).
  - Gradients flow through all routing iterations (Algorithm 1 differentiated as written; some code
    stops them in the early rounds).
  - ``label_power`` defaults to ``inf`` (hard choice of the interest with the largest inner product):
    the paper reports that larger ``p`` trains better and the hard attention converges fastest, and
    ComiRec's MIND baseline uses the hard choice. A finite ``p`` works as in the paper, but note that
    ``pow(x, p)`` sharpens only logits above 1 in magnitude: with small inner products a large ``p``
    flattens the attention toward uniform instead of hardening it.
  - Item-side features: behaviors and targets are item ids only (the paper also mean-pools category,
    brand and shop embeddings into ``e_i``); there are no user-profile features to concatenate
    with the capsules before the H layers (the P3 users are new at test time).
  - The H tower's last layer is linear, not ReLU: a ReLU output would confine the user vectors
    to the non-negative orthant although they score items by inner product. (The same tower as
    :mod:`lifelong.models.youtube_dnn`, so MIND with ``K = 1`` is YouTube DNN plus the bilinear map
    and squash.)

Example:
    >>> model = MIND(MINDConfig(n_items=10, n_cates=4, embedding_dim=8, interests=2, hidden=(16,)))
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np
import torch
from torch import nn

from lifelong.batch import Batch
from lifelong.models.multi_interest import MultiInterestConfig, MultiInterestModel
from lifelong.models.registry import register
from lifelong.nn.capsule import dynamic_routing
from lifelong.nn.embedding import init_item_embedding
from lifelong.nn.layers import relu_tower

CACHED_POSITIONS = 64  # initial routing logits drawn at construction; more are drawn on first use


@dataclass
class MINDConfig(MultiInterestConfig):
    """Args:
        interests: ``K``, the maximum number of interests (a user gets ``max(1, min(K, floor(log2 n)))``).
        routing_iterations: rounds of B2I dynamic routing (paper 3).
        routing_init_std: ``sigma`` of the Gaussian initial routing logits (paper: results robust to it).
        routing_seed: seed of the fixed initial routing logits (see the module docstring).
        hidden: ReLU layer sizes of the H tower applied to each capsule, before its final linear map to ``D``.
        label_power: ``p`` of the label-aware attention (default ``inf``, see the module docstring).
        (embedding_dim, loss, negatives: see :class:`MultiInterestConfig`.)
    """

    model_type = "mind"
    interests: int = 4
    routing_iterations: int = 3
    routing_init_std: float = 1.0
    routing_seed: int = 0
    hidden: tuple[int, ...] = (128,)
    label_power: float = math.inf

    def validate(self) -> None:
        super().validate()
        if self.routing_iterations < 1:
            raise ValueError(f"mind: routing_iterations must be at least 1, got {self.routing_iterations}")
        if not self.routing_init_std > 0:
            raise ValueError(f"mind: routing_init_std must be positive, got {self.routing_init_std}")
        if self.routing_seed < 0:
            raise ValueError(f"mind: routing_seed must be non-negative, got {self.routing_seed}")
        if not self.hidden or any(h < 1 for h in self.hidden):
            raise ValueError(f"mind: hidden needs at least one positive ReLU layer size (the H layers), got {self.hidden}")


def dynamic_interest_count(lengths: torch.Tensor, max_interests: int) -> torch.Tensor:
    """``K'_u = max(1, min(K, floor(log2 n_u)))`` for lengths (B,) -> (B,) int64 (1 for an empty history).

    Exact integer arithmetic: ``floor(log2 n) >= j`` iff ``n >= 2^j``.

    Example:
        >>> dynamic_interest_count(torch.tensor([0, 1, 3, 4, 8, 100]), 4).tolist()
        [1, 1, 1, 2, 3, 4]
    """
    powers = 2 ** torch.arange(1, max_interests + 1, device=lengths.device)  # (K,) 2, 4, ..., 2^K
    return (lengths.unsqueeze(1) >= powers).sum(dim=1).clamp(min=1)


@register(MINDConfig)
class MIND(MultiInterestModel):
    """B2I dynamic routing over the history, then the H tower on each interest capsule."""

    def __init__(self, config: MINDConfig) -> None:
        super().__init__()
        self.config = config
        d = config.embedding_dim
        self.item = nn.Embedding(config.n_items, d, padding_idx=0)
        self.bilinear = nn.Linear(d, d, bias=False)  # S, shared by every behavior and interest
        self.tower = relu_tower(d, config.hidden)  # the H layers
        # (positions, K) fixed initial routing logits; rebuilt from the config, so not saved
        self.register_buffer("routing_init", self._draw_initial_logits(0, CACHED_POSITIONS), persistent=False)
        init_item_embedding(self.item, std=d ** -0.5)

    def _draw_initial_logits(self, start: int, stop: int) -> torch.Tensor:
        """(stop - start, K) logits of positions ``start .. stop-1``, each row from its own seeded generator."""
        c = self.config
        rows = [np.random.default_rng([c.routing_seed, t]).standard_normal(c.interests) for t in range(start, stop)]
        values = np.stack(rows) if rows else np.zeros((0, c.interests))
        return torch.from_numpy(values * c.routing_init_std).float()

    def initial_logits(self, length: int) -> torch.Tensor:
        """(T, K) the Gaussian initial routing logits ``b_ij`` of positions ``0 .. T-1``."""
        cached = self.routing_init.shape[0]
        if cached < length:
            more = self._draw_initial_logits(cached, length).to(self.routing_init.device)
            self.routing_init = torch.cat([self.routing_init, more])
        return self.routing_init[:length]

    def routing(self, batch: Batch) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """B2I dynamic routing. Returns the capsules ``u`` (B, K, D) (zero for switched-off interests),
        ``valid`` (B, K) bool and the last round's coupling coefficients ``w`` (B, T, K) (each real
        behavior's row sums to one over the valid interests; zero at padding)."""
        batch.validate()
        mask = batch.history_mask  # (B, T)
        b, t = mask.shape
        k = self.config.interests
        count = dynamic_interest_count(batch.lengths, k)  # (B,) K'_u
        valid = torch.arange(k, device=mask.device).unsqueeze(0) < count.unsqueeze(1)  # (B, K)
        mapped = self.bilinear(self.item(batch.history_items))  # (B, T, D) s_i = S e_i
        logits = self.initial_logits(t).to(mapped.dtype).unsqueeze(0).expand(b, t, k)  # (B, T, K) b_ij
        capsules, couplings = dynamic_routing(mapped, mask, self.config.routing_iterations, logits, valid)
        return capsules, valid, couplings[-1]  # u_j (B, K, D), (B, K), w_ij (B, T, K)

    def interests(self, batch: Batch) -> tuple[torch.Tensor, torch.Tensor]:
        capsules, valid, _ = self.routing(batch)
        return self.tower(capsules), valid  # (B, K, D), (B, K)
