"""What retrieval models share: the output type, the config base and the interface evaluation uses.

A retrieval model is an ``nn.Module`` with

- ``forward(batch) -> RetrievalOutput``: in training mode the (already weighted) training loss, with
  any extra terms named in ``aux_losses``; in both modes the user vectors of the batch;
- ``user_vectors(batch)``: ``(B, D)`` (one vector per user) or ``(B, K, D)`` (K interests);
- ``item_vectors()``: ``(n_items, D)``, row = item vocabulary index (rows 0 and 1, padding and
  unknown, are never ranked);
- ``score(users, items)``: ``(B, n_items)`` scores, by default the inner product (the best interest
  for ``(B, K, D)``).

The full-ranking evaluation (:mod:`lifelong.train.ranking`) needs nothing else, so every retrieval
model is evaluated by the same code.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Callable, ClassVar, Iterable

import torch
import torch.nn.functional as F
from torch import nn

from lifelong.batch import Batch
from lifelong.models.registry import ModelConfig
from lifelong.streams import STREAMS

LOSSES = ("bce", "sampled", "full")


@dataclass
class RetrievalOutput:
    """What a retrieval model returns.

    Attributes:
        user_vectors: (B, D) or (B, K, D).
        loss: the training loss (training mode only; None in evaluation mode).
        aux_losses: named extra loss terms (already weighted, already inside ``loss``), for logging.
    """

    user_vectors: torch.Tensor
    loss: torch.Tensor | None = None
    aux_losses: dict[str, torch.Tensor] = field(default_factory=dict)


@dataclass
class RetrievalConfig(ModelConfig):
    """Base config of a retrieval model.

    Args:
        loss: ``bce`` (one sampled negative per target, never an item of the user: SASRec's original
            loss), ``sampled`` (softmax over the target and ``negatives`` items drawn uniformly, shared
            by the batch) or ``full`` (softmax cross-entropy over the whole catalogue).
        negatives: number of shared negatives of the ``sampled`` loss.
    """

    task: ClassVar[str] = "retrieval"
    loss: str = "full"
    negatives: int = 256

    def validate(self) -> None:
        super().validate()
        if self.loss not in LOSSES:
            raise ValueError(f"{self.model_type}: loss must be one of {LOSSES}, got {self.loss!r}")
        if self.negatives < 1:
            raise ValueError(f"{self.model_type}: negatives must be at least 1, got {self.negatives}")

    def batch_needs(self) -> dict[str, bool]:
        # bce needs one negative per training target; the loop draws them (per epoch, with the seed)
        return {"with_negatives": self.loss == "bce"}


class RetrievalModel(nn.Module):
    """Base class: inner-product scoring over the catalogue, and the whole contract the training loop
    and the evaluation read (no ``hasattr`` probes): what a model declares (class attributes) and the
    hooks the loop always calls (no-ops unless a model needs them).

    Declared:
        multi_interest: the user is several vectors (:class:`lifelong.models.multi_interest.MultiInterestModel`).
        last_target_loss: the training loss follows ``Batch.last_target_only`` (prefix samples).
        target_partners: training batches carry another row with the same target (``partner_items``).
        trains_one_vector: training never uses the interests (DESMIL has nothing to decorrelate).
    """

    task: ClassVar[str] = "retrieval"
    multi_interest: ClassVar[bool] = False
    last_target_loss: ClassVar[bool] = False
    target_partners: ClassVar[bool] = False
    trains_one_vector: ClassVar[bool] = False

    def user_vectors(self, batch: Batch) -> torch.Tensor:  # (B, D) or (B, K, D)
        raise NotImplementedError

    def item_vectors(self) -> torch.Tensor:  # (n_items, D)
        raise NotImplementedError

    def set_item_categories(self, cates: torch.Tensor) -> None:
        """Called once before training with the category of every item vocabulary index, ``(n_items,)``."""

    def epoch_start(self, batches: Callable[[], Iterable[Batch]], epoch: int) -> None:
        """Called before every training epoch with a way to iterate the epoch's training windows."""

    def prepare_retrieval(self, user_batches: Callable[[], Iterable[Batch]]) -> None:
        """Called before a retrieval evaluation with one batch stream of the training users."""

    single_query: ClassVar = None  # a context manager where a model has a single-vector query to compare

    @torch.no_grad()
    def retrieve(self, users: torch.Tensor, items: torch.Tensor, k: int) -> torch.Tensor:
        """Top-``k`` item indices (B, k), best first, by :meth:`score` (several interests: the per-interest
        lists merged by score); padding and unknown rows are never retrieved."""
        scores = self.score(users, items).float()
        scores[:, :2] = float("-inf")
        return scores.topk(k, dim=1).indices

    def index_search(self, index, users: torch.Tensor, k: int):
        """Top-``k`` item ids through a faiss :class:`lifelong.index.ItemIndex` (host tensors): the
        per-interest searches merged by score."""
        return index.search_interests(users if users.dim() == 3 else users[:, None], k)

    def score(self, users: torch.Tensor, items: torch.Tensor) -> torch.Tensor:
        """users (B, D) or (B, K, D), items (N, D) -> (B, N); several interests score by their best."""
        if users.dim() == 3:
            return torch.einsum("bkd,nd->bkn", users, items).amax(dim=1)
        return users @ items.T


def next_item_loss(hidden: torch.Tensor, positives: torch.Tensor, items: torch.Tensor, kind: str,
                   negatives: torch.Tensor | None = None, n_sampled: int = 256, reduction: str = "mean",
                   row_negatives: torch.Tensor | None = None) -> torch.Tensor:
    """The next-item training loss of sequence positions, averaged over them (``reduction="none"``:
    (N,) one loss per position, for per-sample weights).

    Args:
        hidden: (N, D) sequence representations of the N training positions.
        positives: (N,) item vocabulary indices of their next items (>= 2).
        items: (n_items, D) the item vectors (output embedding).
        kind: ``bce`` | ``sampled`` | ``full`` (see :class:`RetrievalConfig`).
        negatives: (N,) one negative per position, for ``bce``.
        n_sampled: shared negatives drawn uniformly from ``2 .. n_items-1`` (the ``negatives`` stream) for
            ``sampled``; a negative equal to a row's positive is masked out of that row.
        row_negatives: (N, E) extra negatives of each row for ``sampled`` (item indices, 0 = none),
            e.g. the row's own history items; an extra negative equal to the row's positive, to one
            of the shared negatives or to an earlier extra negative of the row is masked out, so every
            item counts at most once in a row's softmax.

    Example:
        >>> h, items = torch.randn(4, 8), torch.randn(10, 8)
        >>> float(next_item_loss(h, torch.tensor([2, 3, 4, 5]), items, "full")) > 0
        True
    """
    if kind == "bce":
        if negatives is None:
            raise ValueError("the bce loss needs one negative per position")
        pos = (hidden * items[positives]).sum(-1)
        neg = (hidden * items[negatives]).sum(-1)
        losses = F.softplus(-pos) + F.softplus(neg)
        return losses if reduction == "none" else losses.mean()
    if kind == "sampled":
        sampled = torch.randint(2, items.shape[0], (n_sampled,), device=hidden.device,
                                generator=STREAMS("negatives", hidden.device))  # (S,)
        pos = (hidden * items[positives]).sum(-1, keepdim=True)  # (N, 1)
        neg = hidden @ items[sampled].T  # (N, S)
        neg = neg.masked_fill(sampled.unsqueeze(0) == positives.unsqueeze(1), float("-inf"))
        logits = torch.cat([pos, neg], dim=1)
        if row_negatives is not None:
            logits = torch.cat([logits, _row_negative_logits(hidden, positives, items, sampled, row_negatives)], dim=1)
        return F.cross_entropy(logits, torch.zeros_like(positives), reduction=reduction)
    if kind == "full":
        logits = hidden @ items.T  # (N, n_items)
        logits[:, :2] = float("-inf")  # padding and unknown are never the answer
        return F.cross_entropy(logits, positives, reduction=reduction)
    raise ValueError(f"unknown loss {kind!r}; expected one of {LOSSES}")


def _row_negative_logits(hidden: torch.Tensor, positives: torch.Tensor, items: torch.Tensor,
                         sampled: torch.Tensor, extra: torch.Tensor) -> torch.Tensor:
    """(N, E) logits of each row's own negatives, -inf where masked (see :func:`next_item_loss`)."""
    logits = torch.einsum("nd,ned->ne", hidden, items[extra])
    drop = (extra == 0) | (extra == positives.unsqueeze(1))
    in_draw = torch.zeros(items.shape[0], dtype=torch.bool, device=extra.device)
    in_draw[sampled] = True  # catalogue mask of the shared draw: O(N*E) lookups, not an (N, E, S) comparison
    drop |= in_draw[extra]
    earlier = extra.unsqueeze(2) == extra.unsqueeze(1)  # (N, E, E): [n, e, f] extra e equals extra f
    drop |= torch.tril(earlier, diagonal=-1).any(dim=2)  # a repeat of an earlier column
    return logits.masked_fill(drop, float("-inf"))


def next_items(batch: Batch) -> tuple[torch.Tensor, torch.Tensor]:
    """The next item of every input position of a training window: the history shifted by one, with
    the window's target after the last real event. Returns ``(next_items (B, T), mask (B, T))``
    (the mask is the history mask: every real input position has a next item; with
    ``batch.last_target_only`` only the last real position, the row's own target)."""
    items = batch.history_items
    nxt = torch.zeros_like(items)
    nxt[:, :-1] = items[:, 1:]
    last = batch.lengths - 1  # (B,) index of the last real input position
    rows = torch.arange(items.shape[0], device=items.device)
    keep = last >= 0
    nxt[rows[keep], last[keep]] = batch.target_items[keep]
    mask = batch.history_mask
    if batch.last_target_only:
        mask = torch.zeros_like(mask)
        mask[rows[keep], last[keep]] = True
    return nxt * mask, mask
