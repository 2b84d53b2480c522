"""What multi-interest retrieval models share (P3 ``mi-split``): the config base, label-aware training
and the retrieval of a top-K list from several interest vectors.

A multi-interest model is a :class:`lifelong.models.retrieval.RetrievalModel` that defines one method,

- ``interests(batch) -> (vectors (B, K, D), valid (B, K) bool)``: the user's interest vectors from the
  history (``valid`` is False for interests a model switched off, e.g. MIND's dynamic number; at least
  one per user is valid);

and gets from this base:

- ``user_vectors(batch)``: ``(B, K, D)``, switched-off interests replaced by the user's first valid one
  (a copy never changes the best-interest score nor a merged top-K list);
- training (``forward`` in training mode): **label-aware attention** (MIND): the target item's embedding
  ``e`` weights the interests by ``softmax(pow(V e, p))`` (``label_power = p``; ``inf``, the default, is
  ComiRec's hard choice of the interest with the largest inner product), and the chosen vector ``v``
  is trained with the next-item loss of :func:`lifelong.models.retrieval.next_item_loss`
  (``sampled``: softmax over the target and ``negatives`` shared uniform negatives; ``full``; ``bce``);
- ``training_terms(batch)``: the per-sample losses and the interests, so that a training option such
  as DESMIL's sample weighting can weight the samples (``forward(batch, sample_weights)``);
- ``retrieve(users, items, k)``: each user's top-``k`` item indices. The default is the exact merge of
  the per-interest top-``k`` lists by score, i.e. the top ``k`` of ``max_k <v_k, e_i>`` (ComiRec's
  greedy merge without diversity). Models with another merge (ComiRec's aggregation with a diversity
  factor, kNN-Embed's interest-weighted budget) override it.

Deviation shared by every model here: the sampled softmax draws its negatives uniformly over the
catalogue (no correction); ComiRec's ``tf.nn.sampled_softmax_loss`` draws them log-uniformly over ids
(a Zipf prior for frequency-sorted ids) with the log-probability correction.

Model-specific extra losses (e.g. a term that keeps interests apart) are returned by ``extra_losses``
(named, already weighted) and added to the training loss.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import ClassVar

import torch
from torch import nn

from lifelong.batch import Batch
from lifelong.models.retrieval import RetrievalConfig, RetrievalModel, RetrievalOutput, next_item_loss

FIRST_RANKED = 2  # vocabulary rows 0 (padding) and 1 (unknown) are never retrieved


@dataclass
class MultiInterestConfig(RetrievalConfig):
    """Args:
        embedding_dim: ``D`` of item embeddings and interest vectors.
        interests: ``K``, the (maximum) number of interest vectors per user.
        label_power: ``p`` of the label-aware attention in training; ``inf`` = hard selection.
        loss, negatives: see :class:`lifelong.models.retrieval.RetrievalConfig` (ComiRec: sampled
            softmax; its code draws 10 negatives per sample of a batch of 128, 1280 in all).
        history_negatives: (``sampled`` only; not in the papers) each sample's own input items are
            negatives of its softmax besides the shared ones: hard negatives, near the interest being
            trained, that are never the answer where targets do not repeat history items (true of
            the Amazon sets; a repeated target is masked out of its own row). Off by default.
    """

    multi_interest: ClassVar[bool] = True
    embedding_dim: int = 64
    interests: int = 4
    label_power: float = math.inf
    loss: str = "sampled"
    negatives: int = 1280
    history_negatives: bool = False

    def validate(self) -> None:
        super().validate()
        if self.interests < 1:
            raise ValueError(f"{self.model_type}: interests must be at least 1, got {self.interests}")
        if not self.label_power > 0:
            raise ValueError(f"{self.model_type}: label_power must be positive (inf = hard), got {self.label_power}")
        if self.history_negatives and self.loss != "sampled":
            raise ValueError(f"{self.model_type}: history_negatives needs loss=sampled (full already "
                             f"contrasts every item; bce has one negative), got loss={self.loss!r}")


def label_aware_attention(interests: torch.Tensor, valid: torch.Tensor, target: torch.Tensor,
                          power: float) -> torch.Tensor:
    """MIND's label-aware attention: interests (B, K, D), valid (B, K), target (B, D) -> (B, D).

    ``softmax(pow(<v_k, e>, p))`` over the valid interests; ``p = inf`` picks the interest with the
    largest inner product (ComiRec). ``pow`` of a negative inner product keeps its sign
    (``sign(x) |x|^p``), so an interest pointing away from the target never gains weight by it.

    Example:
        >>> v = torch.tensor([[[1.0, 0.0], [0.0, 1.0]]])
        >>> label_aware_attention(v, torch.ones(1, 2, dtype=torch.bool), torch.tensor([[0.0, 2.0]]), math.inf)
        tensor([[0., 1.]])
    """
    logits = torch.einsum("bkd,bd->bk", interests, target)  # (B, K)
    if math.isinf(power):
        best = logits.masked_fill(~valid, float("-inf")).argmax(dim=1)  # (B,)
        return interests[torch.arange(interests.shape[0], device=interests.device), best]
    big = torch.finfo(logits.dtype).max / 4  # a large power overflows: clamp, so softmax stays finite (and hard)
    logits = (logits.sign() * logits.abs().pow(power)).clamp(-big, big)
    weights = torch.softmax(logits.masked_fill(~valid, float("-inf")), dim=1)  # (B, K)
    return torch.einsum("bk,bkd->bd", weights, interests)


class MultiInterestModel(RetrievalModel):
    """Base class (see the module docstring). Subclasses set ``self.config`` and ``self.item``
    (``nn.Embedding(n_items, D, padding_idx=0)``, also the output item vectors) and define
    ``interests``."""

    multi_interest: ClassVar[bool] = True
    item: nn.Embedding

    def interests(self, batch: Batch) -> tuple[torch.Tensor, torch.Tensor]:  # (B, K, D), (B, K) bool
        raise NotImplementedError

    def training_interests(self, batch: Batch) -> tuple[torch.Tensor, torch.Tensor]:
        """The interests the training loss selects from (by default those of retrieval)."""
        return self.interests(batch)

    def extra_losses(self, batch: Batch, interests: torch.Tensor, valid: torch.Tensor) -> dict[str, torch.Tensor]:
        """Named, weighted extra training terms (none by default)."""
        return {}

    def item_vectors(self) -> torch.Tensor:  # (n_items, D)
        return self.item.weight

    def user_vectors(self, batch: Batch) -> torch.Tensor:  # (B, K, D)
        batch.validate()
        vectors, valid = self.interests(batch)
        return fill_switched_off(vectors, valid)

    def training_terms(self, batch: Batch) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor, dict[str, torch.Tensor]]:
        """Per-sample next-item losses (B,), the interests (B, K, D) and their validity (B, K), and the
        model's extra losses."""
        batch.validate()
        vectors, valid = self.training_interests(batch)
        items = self.item_vectors()
        chosen = label_aware_attention(vectors, valid, items[batch.target_items], self.config.label_power)  # (B, D)
        negatives = None
        if self.config.loss == "bce":
            if batch.history_negative_items is None:
                raise ValueError("the bce loss needs batch.history_negative_items (one negative per position)")
            last = (batch.lengths - 1).clamp(min=0)  # the negative drawn for the item after the last event
            negatives = batch.history_negative_items[torch.arange(len(batch)), last]
        losses = next_item_loss(chosen, batch.target_items, items, self.config.loss, negatives=negatives,
                                n_sampled=self.config.negatives, reduction="none",
                                row_negatives=batch.history_items if self.config.history_negatives else None)
        return losses, vectors, valid, self.extra_losses(batch, vectors, valid)

    def forward(self, batch: Batch, sample_weights: torch.Tensor | None = None) -> RetrievalOutput:
        """Training mode: the (optionally sample-weighted) mean loss plus the extra terms; evaluation
        mode: the user vectors only."""
        if not self.training:
            return RetrievalOutput(user_vectors=self.user_vectors(batch))
        losses, vectors, valid, extra = self.training_terms(batch)
        loss = (losses * sample_weights).mean() if sample_weights is not None else losses.mean()
        for term in extra.values():
            loss = loss + term
        return RetrievalOutput(user_vectors=fill_switched_off(vectors, valid), loss=loss, aux_losses=extra)



def fill_switched_off(vectors: torch.Tensor, valid: torch.Tensor) -> torch.Tensor:
    """(B, K, D) with every invalid interest replaced by the user's first valid one."""
    if bool(valid.all()):
        return vectors
    first = valid.float().argmax(dim=1)  # (B,) index of the first valid interest
    fill = vectors[torch.arange(vectors.shape[0], device=vectors.device), first]  # (B, D)
    return torch.where(valid.unsqueeze(-1), vectors, fill.unsqueeze(1))


def interest_redundancy(vectors: torch.Tensor, valid: torch.Tensor) -> torch.Tensor:
    """(B,) mean pairwise cosine similarity of each user's valid interests (NaN with fewer than two):
    HCN's redundancy measure."""
    unit = torch.nn.functional.normalize(vectors, dim=-1)
    cos = unit @ unit.transpose(1, 2)  # (B, K, K)
    pair = valid.unsqueeze(1) & valid.unsqueeze(2)
    pair &= ~torch.eye(vectors.shape[1], dtype=torch.bool, device=vectors.device)
    count = pair.sum(dim=(1, 2)).float()
    return (cos * pair).sum(dim=(1, 2)) / count  # NaN where count == 0
