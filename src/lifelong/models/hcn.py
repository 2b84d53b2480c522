"""HCN: hierarchical multi-interest co-network.

Paper: Yuan et al., HCN: Hierarchical Multi-Interest Co-Network for Coarse-Grained Ranking, Alibaba
(arXiv 2210.10547). Only the abstract is known (no full text, no code), so the design below is the
simplest one that does what the abstract names; every choice is listed under "Choices".

Mechanism:
  - Behaviors are the shared item embeddings ``h_i = e_i`` (``self.item``, also the output item
    vectors scored by inner product).
  - **Hierarchical multi-interest extraction layer** (:class:`InterestExtractor`): ``K`` interest
    centres start from ``K`` learned centre queries ``c_j^0`` (the same for every user) and are
    refined level by level, ``levels`` times, each level with its own parameters:
    ``a_ij = softmax_j(<c_j^{l-1}, W_k^l h_i> / sqrt(D))`` (each real behavior's assignment is a
    distribution over the centres; padding gets ``a = 0``),
    ``m_j = sum_i a_ij h_i / (sum_i a_ij + eps)`` (the weighted mean of the centre's behaviors),
    ``c_j^l = c_j^{l-1} + W_v^l m_j`` (the residual update). The centres of level ``l`` are the
    queries of level ``l + 1``; the last level's centres are the interests.
  - **Keeping the interests apart** (the abstract's "reduce redundancy"): the training loss gets
    ``separation_weight * mean_u r_u``, where ``r_u`` is the mean pairwise cosine similarity of user
    ``u``'s interest vectors (:func:`lifelong.models.multi_interest.interest_redundancy`), returned by
    ``extra_losses`` as ``{"separation": ...}``. Inside the update, the softmax over centres makes
    the centres compete for each behavior (a behavior taken by one centre is not taken by another);
    there is no further repulsion term in the update.
  - **Co-interest network**: two extractors with separate parameters, a long-term one over the
    whole history (``interests - short_interests`` centres) and a short-term one over the
    ``short_window`` most recent real behaviors only (``short_interests`` centres). The user's
    interest set is the two sets concatenated, ``(B, K, D)`` = long-term first, then short-term,
    all valid; the separation term runs over this combined set, so a short-term interest that
    duplicates a long-term one is penalised too.
  - Training and serving (from :class:`lifelong.models.multi_interest.MultiInterestModel`):
    label-aware attention with ``label_power`` (default: the interest with the largest inner product
    with the target), then the next-item loss (``loss``); every interest retrieves and the lists
    merge by score.

Choices where the paper is silent:
  - Centre initialisation: learned queries (not k-means over the history, not random draws), so a
    user's interests are a deterministic function of its history alone, independent of the batch
    and of torch's RNG.
  - The assignment normalises over centres (slot-attention style), not over behaviors; the update
    is a normalised weighted mean (``eps = 1e-6``) plus a residual, with no layer norm or MLP.
  - "Hierarchical" is read as levels of the same assign-and-update step, each level with its own
    key and value maps, refining the previous level's centres; the number of centres is the same at
    every level. An extractor with a single centre has no key maps (the softmax over one centre is
    always 1, so they would get no gradient).
  - The separation penalty is the plain mean pairwise cosine similarity (it can go below 0, to
    ``-1 / (K - 1)`` at best), averaged over the users of the batch.
  - Co-interest combination: concatenation of the two sets (no gating), so serving retrieves with
    both kinds and the label-aware attention picks between them per target. The short window counts
    real behaviors from the most recent one; a history shorter than the window is used whole. The
    long-term extractor sees the recent behaviors too (the "full history").
  - No position, time or category features: behaviors are item ids only.

Example:
    >>> model = HCN(HCNConfig(n_items=10, n_cates=4, embedding_dim=8, interests=3, short_interests=1))
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import torch
from torch import nn

from lifelong.batch import Batch
from lifelong.models.multi_interest import MultiInterestConfig, MultiInterestModel, interest_redundancy
from lifelong.models.registry import register
from lifelong.nn.embedding import init_item_embedding

EPS = 1e-6  # keeps the weighted mean of a centre with (almost) no assigned behaviors finite


@dataclass
class HCNConfig(MultiInterestConfig):
    """Args:
        interests: ``K``, the user's interest vectors in all (long-term plus short-term).
        short_interests: how many of them the short-term extractor gives (at least 1, fewer than ``K``).
        short_window: the most recent real behaviors the short-term extractor sees.
        levels: refinement levels of each extractor (each with its own parameters).
        separation_weight: weight of the mean pairwise cosine similarity of a user's interests in the
            training loss (0 switches the term off).
        (embedding_dim, label_power, loss, negatives: see :class:`MultiInterestConfig`.)
    """

    model_type = "hcn"
    interests: int = 4
    short_interests: int = 1
    short_window: int = 10
    levels: int = 3
    separation_weight: float = 0.1

    def validate(self) -> None:
        super().validate()
        if not 1 <= self.short_interests < self.interests:
            raise ValueError(f"hcn: short_interests must be at least 1 and below interests ({self.interests}) so "
                             f"that both extractors have centres, got {self.short_interests}")
        if self.short_window < 1:
            raise ValueError(f"hcn: short_window must be at least 1, got {self.short_window}")
        if self.levels < 1:
            raise ValueError(f"hcn: levels must be at least 1, got {self.levels}")
        if not (self.separation_weight >= 0 and math.isfinite(self.separation_weight)):
            raise ValueError(f"hcn: separation_weight must be finite and non-negative, got {self.separation_weight}")


class InterestExtractor(nn.Module):
    """Hierarchical multi-interest extraction: learned centre queries refined over ``levels`` levels
    of soft assignment and weighted-mean residual updates (see the module docstring).

    Args:
        dim: ``D``.
        centres: ``K`` centres of this extractor.
        levels: refinement levels.

    Example:
        >>> extractor = InterestExtractor(dim=8, centres=3, levels=2)
        >>> centres, assignment = extractor(torch.randn(2, 5, 8), torch.ones(2, 5, dtype=torch.bool))
        >>> tuple(centres.shape), tuple(assignment.shape)
        ((2, 3, 8), (2, 5, 3))
    """

    def __init__(self, dim: int, centres: int, levels: int) -> None:
        super().__init__()
        self.scale = dim ** -0.5
        self.queries = nn.Parameter(torch.randn(centres, dim) * self.scale)  # (K, D) c^0
        # with one centre the assignment is always 1: no key maps (they would get no gradient)
        self.keys = nn.ModuleList(nn.Linear(dim, dim, bias=False) for _ in range(levels)) if centres > 1 else None
        self.values = nn.ModuleList(nn.Linear(dim, dim, bias=False) for _ in range(levels))

    def forward(self, behaviors: torch.Tensor, mask: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """behaviors (B, T, D), mask (B, T) bool -> centres (B, K, D) and the last level's assignment
        (B, T, K) (a distribution over centres at each masked-in behavior, 0 elsewhere)."""
        b, t, _ = behaviors.shape
        real = mask.unsqueeze(-1).to(behaviors.dtype)  # (B, T, 1)
        centres = self.queries.unsqueeze(0).expand(b, -1, -1)  # (B, K, D)
        assignment = real.expand(b, t, centres.shape[1])  # one centre: every behavior is its own
        for level, value in enumerate(self.values):
            if self.keys is not None:
                keys = self.keys[level](behaviors)  # (B, T, D)
                logits = torch.einsum("bkd,btd->btk", centres, keys) * self.scale  # (B, T, K)
                assignment = torch.softmax(logits, dim=2) * real  # (B, T, K), padding 0
            mass = assignment.sum(dim=1).unsqueeze(-1)  # (B, K, 1)
            means = torch.einsum("btk,btd->bkd", assignment, behaviors) / (mass + EPS)  # (B, K, D)
            centres = centres + value(means)
        return centres, assignment


def recent_mask(mask: torch.Tensor, window: int) -> torch.Tensor:
    """(B, T) bool: the ``window`` most recent real behaviors of left-aligned histories (all of them
    when fewer).

    Example:
        >>> recent_mask(torch.tensor([[True, True, True, False], [True, False, False, False]]), 2).tolist()
        [[False, True, True, False], [True, False, False, False]]
    """
    lengths = mask.sum(dim=1, keepdim=True)  # (B, 1)
    positions = torch.arange(mask.shape[1], device=mask.device).unsqueeze(0)  # (1, T)
    return mask & (positions >= lengths - window)


@register(HCNConfig)
class HCN(MultiInterestModel):
    """Long-term and short-term hierarchical interest extractors, concatenated; a separation penalty
    keeps the interests apart."""

    def __init__(self, config: HCNConfig) -> None:
        super().__init__()
        self.config = config
        d = config.embedding_dim
        self.item = nn.Embedding(config.n_items, d, padding_idx=0)
        self.long_term = InterestExtractor(d, config.interests - config.short_interests, config.levels)
        self.short_term = InterestExtractor(d, config.short_interests, config.levels)
        init_item_embedding(self.item, std=d ** -0.5)

    def co_interests(self, batch: Batch) -> dict[str, torch.Tensor]:
        """Both extractors' outputs: ``long`` (B, K - K_s, D) and ``short`` (B, K_s, D) interests and
        their last-level assignments ``long_assignment`` (B, T, K - K_s) and ``short_assignment``
        (B, T, K_s) (zero outside the behaviors each extractor sees)."""
        batch.validate()
        behaviors = self.item(batch.history_items)  # (B, T, D)
        long, long_assignment = self.long_term(behaviors, batch.history_mask)
        short, short_assignment = self.short_term(behaviors, recent_mask(batch.history_mask, self.config.short_window))
        return {"long": long, "short": short, "long_assignment": long_assignment,
                "short_assignment": short_assignment}

    def interests(self, batch: Batch) -> tuple[torch.Tensor, torch.Tensor]:
        parts = self.co_interests(batch)
        vectors = torch.cat([parts["long"], parts["short"]], dim=1)  # (B, K, D) long-term first
        return vectors, torch.ones(vectors.shape[:2], dtype=torch.bool, device=vectors.device)

    def extra_losses(self, batch: Batch, interests: torch.Tensor, valid: torch.Tensor) -> dict[str, torch.Tensor]:
        if self.config.separation_weight == 0:
            return {}
        redundancy = interest_redundancy(interests, valid)  # (B,) mean pairwise cosine (K >= 2: finite)
        return {"separation": self.config.separation_weight * redundancy.mean()}
