"""What ranking (CTR) models share: the user side apart from the candidates.

A ranking model is a :class:`RankingModel`, an ``nn.Module`` with

- ``encode_user(batch) -> UserState``: everything that depends on the user alone, computed once per
  user: the embedded history, attention keys and their projections, interest-extractor outputs, any
  other candidate-independent precomputation. It reads the batch's history fields only, never its
  targets, labels or sample times;
- ``score(state, candidates) -> (B, K)`` logits of ``K`` candidates per user. Each candidate is scored
  against the user's state on its own: where a model's candidate side is genuinely per candidate
  (DIN's target attention, DIEN's AUGRU), it runs for all ``B * K`` (user, candidate) pairs at once
  and reuses the state;
- ``forward(batch) -> ModelOutput``: ``encode_user`` then ``score`` with each sample's target as its
  one candidate (``Candidates.from_targets``), plus the auxiliary losses of training.

Serving encodes a user once per request (or takes the state from a cache: the state never depends on
the candidates or on the time they are scored at) and scores all of the request's candidates in one
call.

Train and eval mode: in eval mode (what serving and evaluation use) a candidate's score does not
depend on the other candidates, and ``score`` of ``K`` candidates equals ``K`` forward passes. In
training mode, Dice and batch-norm layers normalise with the statistics of all the rows they see, i.e.
all ``B * K`` pairs, and dropout draws per row; ``forward`` (``K = 1``) sees the same rows as before
the split, so training is unchanged.
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass
from typing import ClassVar, TypeVar

import torch
from torch import nn

from lifelong.batch import Batch, ItemSide
from lifelong.models.registry import ModelConfig
from lifelong.nn import layers

State = TypeVar("State", bound="UserState")


@dataclass
class RankingConfig(ModelConfig):
    """Base of the ranking models' configs: the features beyond ids a model reads.

    Args:
        features: the dataset's feature declarations (filled from its manifest, like the vocabulary
            sizes); empty for a dataset without features.
        user_features: read the user features (e.g. age, gender), when the dataset has them.
        item_features: read the items' attribute bags and content vectors, when the dataset has them.
        context_features: read each history event's context (behavior type), when the dataset has it.
    """

    features: tuple[dict, ...] = ()
    user_features: bool = True
    item_features: bool = True
    context_features: bool = True

    @property
    def feature_groups(self) -> tuple[str, ...]:
        """The groups turned on and declared by the dataset, e.g. ``("user", "item")``."""
        declared = {f.get("group") for f in self.features}
        wanted = {"user": self.user_features, "item": self.item_features, "context": self.context_features}
        return tuple(g for g in ("user", "item", "context") if wanted[g] and g in declared)

    @property
    def item_width(self) -> int:
        """The width of an embedded item: ``embedding_dim`` times 2 (id, category) plus one per item side
        feature read (attribute bag, content vector)."""
        side = [f for f in self.features if f.get("group") == "item" and f.get("name") in ("attr", "embedding")]
        return self.embedding_dim * (2 + (len(side) if "item" in self.feature_groups else 0))

    def validate(self) -> None:
        super().validate()
        for feature in self.features:
            if not isinstance(feature, dict) or not {"name", "group", "kind"} <= set(feature):
                raise ValueError(f"{self.model_type}: features holds {feature!r}; each must be a declaration "
                                 f"with name, group and kind (they come from the dataset's manifest)")

    def batch_needs(self) -> dict:
        """The feature groups the collator gathers (see :meth:`ModelConfig.batch_needs`)."""
        groups = self.feature_groups
        return {"features": groups} if groups else {}


@dataclass
class Candidates:
    """``K`` candidate items for each of ``B`` users, as vocabulary indices.

    Attributes:
        items: (B, K) int64 item vocabulary indices (0 is padding, 1 unknown).
        cates: (B, K) int64 category vocabulary indices of those items.
        timestamps: (B,) int64 unix seconds, the time the user's candidates are scored at (the request
            time; for a sample, its target's time), shared by the user's ``K`` candidates; or None.
            Only models that encode the time between a behavior and the target read it (TIN's
            ``interval`` encoding); its config's ``batch_needs()`` then asks for timestamps.
        side: the candidates' side features (attribute bags (B, K, A), content vectors (B, K, D)), or
            None; a model that reads the ``item`` feature group needs them.

    Example:
        >>> c = Candidates(items=torch.tensor([[5, 7, 9]]), cates=torch.tensor([[2, 2, 3]]))
        >>> len(c), c.per_user
        (1, 3)
    """

    items: torch.Tensor
    cates: torch.Tensor
    timestamps: torch.Tensor | None = None
    side: ItemSide | None = None

    @classmethod
    def from_targets(cls, batch: Batch) -> "Candidates":
        """Each sample's target as its one candidate (K = 1), at the sample's time."""
        side = None if batch.target_side is None else batch.target_side.map(lambda t: t.unsqueeze(1))
        return cls(items=batch.target_items.unsqueeze(1), cates=batch.target_cates.unsqueeze(1),
                   timestamps=batch.timestamps, side=side)

    def __len__(self) -> int:
        return int(self.items.shape[0])

    @property
    def per_user(self) -> int:
        """``K``, the number of candidates of each user."""
        return int(self.items.shape[1])

    def to(self, device: torch.device | str) -> "Candidates":
        return Candidates(*(None if v is None else v.to(device) for v in (self.items, self.cates, self.timestamps,
                                                                           self.side)))

    def validate(self, users: int) -> None:
        """Raise ``ValueError`` naming the problem when the candidates do not fit a state of ``users`` users."""
        if self.items.dim() != 2:
            raise ValueError(f"candidates.items must be (B, K), got shape {tuple(self.items.shape)}")
        if self.cates.shape != self.items.shape:
            raise ValueError(f"candidates.cates must have the shape of candidates.items {tuple(self.items.shape)}, "
                             f"got {tuple(self.cates.shape)}")
        if self.items.shape[0] != users:
            raise ValueError(f"candidates are for {self.items.shape[0]} users but the user state holds {users}; "
                             "give one row of candidates per encoded user")
        if self.items.shape[1] < 1:
            raise ValueError("candidates must hold at least one item per user (K >= 1)")
        for name in ("items", "cates"):
            value = getattr(self, name)
            if value.dtype not in (torch.int64, torch.int32):
                raise ValueError(f"candidates.{name} must hold integer indices, got {value.dtype}")
            if value.numel() and int(value.min()) < 0:
                raise ValueError(f"candidates.{name} holds a negative index ({int(value.min())}); indices start at 0")
        if self.side is not None:
            self.side.check("candidates.side", tuple(self.items.shape))
        if self.timestamps is not None and tuple(self.timestamps.shape) != (users,):
            raise ValueError(f"candidates.timestamps must be ({users},), one scoring time per user, "
                             f"got {tuple(self.timestamps.shape)}")


@dataclass
class UserState:
    """Base of each ranking model's user state: the tensors ``encode_user`` computes, batch-first
    (dim 0 is the user), ``None`` where a configuration does not need one.

    A model subclasses it with its own fields (documented there); ``select`` and ``to`` work on any.
    """

    def __len__(self) -> int:
        for f in dataclasses.fields(self):
            value = getattr(self, f.name)
            if isinstance(value, torch.Tensor):
                return int(value.shape[0])
        raise ValueError(f"{type(self).__name__} holds no tensor")

    def select(self: State, index: torch.Tensor) -> State:
        """The states of users ``index`` (e.g. rows of a cache), in that order."""
        return dataclasses.replace(self, **{f.name: _rows(getattr(self, f.name), index)
                                            for f in dataclasses.fields(self)})

    def to(self: State, device: torch.device | str) -> State:
        return dataclasses.replace(self, **{f.name: _move(getattr(self, f.name), device)
                                            for f in dataclasses.fields(self)})


def _rows(value, index):
    if isinstance(value, torch.Tensor):
        return value[index]
    return value.select(index) if hasattr(value, "select") else value  # a nested per-user structure


def _move(value, device):
    return value.to(device) if isinstance(value, torch.Tensor) or hasattr(value, "to") else value


class RankingModel(nn.Module):
    """Base class of the ranking models: the user side (``encode_user``) apart from the candidate side
    (``score``); ``forward`` is the two in a row (see the module docstring)."""

    task: ClassVar[str] = "ctr"
    embedding: layers.BehaviorEmbedding  # the ids (and features): the loop fills its mini-batch-aware counts

    def encode_user(self, batch: Batch) -> UserState:
        """Everything that depends on the user alone; reads the batch's history fields only.

        Args:
            batch: the users' histories (``target_*``, ``labels`` and ``timestamps`` are not read).

        Returns:
            the model's :class:`UserState`, one row per user.
        """
        raise NotImplementedError

    def score(self, state: UserState, candidates: Candidates) -> torch.Tensor:
        """Click logits of ``K`` candidates per user.

        Args:
            state: ``encode_user``'s output for ``B`` users.
            candidates: (B, K) candidates.

        Returns:
            (B, K) logits.
        """
        raise NotImplementedError


def with_user(inputs: torch.Tensor, user: torch.Tensor | None) -> torch.Tensor:
    """``inputs`` (B, K, X) with the user features (B, U) appended to each candidate's row: (B, K, X + U);
    ``inputs`` itself when the model reads no user features (``user`` is None)."""
    if user is None:
        return inputs
    return torch.cat([inputs, user.unsqueeze(1).expand(-1, inputs.shape[1], -1)], dim=-1)


def candidate_chunks(module: nn.Module, k: int, rows_per_candidate: int) -> list[slice]:
    """Slices of a user's ``K`` candidates to score one after another.

    At inference, chunks of at most :data:`lifelong.nn.layers.PAIRS_PER_CHUNK` (behavior, candidate)
    rows, so that the per-pair intermediates stay in the cache and memory stays bounded; every layer is
    row-wise then, so the result is the same as at once. In training, or with gradients, all at once
    (batch statistics).

    Example:
        >>> with torch.no_grad():
        ...     candidate_chunks(nn.Linear(1, 1).eval(), k=5, rows_per_candidate=layers.PAIRS_PER_CHUNK // 2)
        [slice(0, 2, None), slice(2, 4, None), slice(4, 5, None)]
    """
    if module.training or torch.is_grad_enabled():
        return [slice(0, k)]
    size = max(1, layers.PAIRS_PER_CHUNK // max(rows_per_candidate, 1))
    return [slice(i, min(i + size, k)) for i in range(0, k, size)]
