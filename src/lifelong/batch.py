"""Batches: slice each sample's history from its user's sequence, keep the most recent ``L``, pad to
the longest history in the batch, gather item side features. Vectorised; no loop per event.

Histories are left-aligned in time order: position ``t < length`` holds the ``t``-th of the kept
events, padding (index 0) follows.
"""

from __future__ import annotations

import os
from dataclasses import dataclass, fields

import numpy as np
import torch

from lifelong.dataset.store import PreparedDataset, SampleTable
from lifelong.protocols.negatives import event_negatives


@dataclass
class ItemSide:
    """Side features of the items at some positions of a batch, beyond their ids and categories.

    ``S`` is the positions' shape: (B,) for targets, (B, T) for a history, (B, K) for candidates.

    Attributes:
        attrs: S + (A,) int64 attribute-bag indices (0 = padding), or None.
        dense: S + (D,) float32 content vectors (0 at padding items), or None.
    """

    attrs: torch.Tensor | None = None
    dense: torch.Tensor | None = None

    def to(self, device: torch.device | str) -> "ItemSide":
        return ItemSide(*(_move(v, device) for v in (self.attrs, self.dense)))

    def map(self, fn) -> "ItemSide":
        """``fn`` applied to each tensor (e.g. ``lambda t: t.unsqueeze(1)``)."""
        return ItemSide(*(None if v is None else fn(v) for v in (self.attrs, self.dense)))

    def check(self, name: str, shape: tuple[int, ...]) -> None:
        """Raise ``ValueError`` unless each tensor's leading shape is ``shape``."""
        for field_name in ("attrs", "dense"):
            value = getattr(self, field_name)
            if value is not None and tuple(value.shape[: len(shape)]) != tuple(shape):
                raise ValueError(f"{name}.{field_name} must have leading shape {tuple(shape)}, "
                                 f"got {tuple(value.shape)}")


@dataclass
class Batch:
    """One mini-batch of CTR samples.

    Attributes:
        history_items: (B, T) int64 item vocabulary indices, 0 = padding.
        history_cates: (B, T) int64 category vocabulary indices, 0 = padding.
        history_mask: (B, T) bool, True where a real event is.
        target_items: (B,) int64.
        target_cates: (B,) int64.
        labels: (B,) float32 in {0, 1}.
        users: (B,) int64 user rows (for GAUC).
        history_behaviors: (B, T) int64 behavior indices, or None.
        history_timestamps: (B, T) int64 unix seconds (0 at padding), or None.
        timestamps: (B,) int64 sample (target) time, or None.
        history_negative_items: (B, T) int64 one sampled item per history event that the user never
            interacted with (0 at padding), or None; the data pipeline draws them with the seed.
        history_negative_cates: (B, T) int64 their categories, or None.
        last_target_only: next-item training trains only the last real position of each row (the row
            is one prefix sample, see :func:`lifelong.protocols.training_prefixes`), not every position.
        partner_items: (B, T') int64 the history of another training row with the same target item
            (ICSRec's cross-subsequence positive, :func:`lifelong.protocols.target_partners`), left-aligned
            like ``history_items``, or None; the trainer adds it for models that ask (``target_partners``).
        partner_mask: (B, T') bool, True where ``partner_items`` holds a real event, or None.
        user_features: name -> (B,) tensor: the users' declared features (int64 vocabulary index for a
            categorical one, float32 value for a numeric one), or None. See ``lifelong.dataset.store``.
        history_side, target_side, history_negative_side: the item side features (attribute bag,
            content vector) of the history (B, T), target (B,) and negative (B, T) items, or None.
            ``history_behaviors`` is the event context.
    """

    history_items: torch.Tensor
    history_cates: torch.Tensor
    history_mask: torch.Tensor
    target_items: torch.Tensor
    target_cates: torch.Tensor
    labels: torch.Tensor
    users: torch.Tensor
    history_behaviors: torch.Tensor | None = None
    history_timestamps: torch.Tensor | None = None
    timestamps: torch.Tensor | None = None
    history_negative_items: torch.Tensor | None = None
    history_negative_cates: torch.Tensor | None = None
    last_target_only: bool = False
    partner_items: torch.Tensor | None = None
    partner_mask: torch.Tensor | None = None
    user_features: dict[str, torch.Tensor] | None = None
    history_side: ItemSide | None = None
    target_side: ItemSide | None = None
    history_negative_side: ItemSide | None = None

    def __len__(self) -> int:
        return int(self.target_items.shape[0])

    @property
    def lengths(self) -> torch.Tensor:
        """(B,) number of real history events."""
        return self.history_mask.sum(dim=1)

    def to(self, device: torch.device | str) -> "Batch":
        return Batch(**{f.name: _move(getattr(self, f.name), device) for f in fields(self)})

    @property
    def device(self) -> torch.device:
        return self.history_items.device

    def validate(self, values: bool | None = None) -> None:
        """Raise ``ValueError`` naming the problem when the batch is malformed.

        Shapes and dtypes are always checked (free: no tensor is read). The checks of the values (no
        negative index, a left-aligned mask, zeros at padding) read tensors back from the device, so on
        the hot path of a forward pass they run only when asked: ``values=True``, or the environment
        variable ``LIFELONG_VALIDATE=1`` (the test suite sets it)."""
        if self.history_items.dim() != 2:
            raise ValueError(f"history_items must be (B, T), got shape {tuple(self.history_items.shape)}")
        b, t = self.history_items.shape
        for name in ("history_cates", "history_mask", "history_behaviors", "history_timestamps",
                     "history_negative_items", "history_negative_cates"):
            value = getattr(self, name)
            if value is not None and tuple(value.shape) != (b, t):
                raise ValueError(f"{name} must have shape {(b, t)} like history_items, got {tuple(value.shape)}")
        for name in ("target_items", "target_cates", "labels", "users", "timestamps"):
            value = getattr(self, name)
            if value is not None and tuple(value.shape) != (b,):
                raise ValueError(f"{name} must have shape {(b,)}, got {tuple(value.shape)}")
        if (self.partner_items is None) != (self.partner_mask is None):
            raise ValueError("partner_items and partner_mask come together")
        if self.partner_items is not None and (self.partner_items.shape != self.partner_mask.shape
                                               or self.partner_items.shape[0] != b):
            raise ValueError(f"partner_items and partner_mask must both be ({b}, T'), got "
                             f"{tuple(self.partner_items.shape)} and {tuple(self.partner_mask.shape)}")
        for name, shape in (("history_side", (b, t)), ("target_side", (b,)), ("history_negative_side", (b, t))):
            if getattr(self, name) is not None:
                getattr(self, name).check(name, shape)
        for name, value in (self.user_features or {}).items():
            if tuple(value.shape) != (b,):
                raise ValueError(f"user_features[{name!r}] must have shape {(b,)}, got {tuple(value.shape)}")
        if self.history_mask.dtype != torch.bool:
            raise ValueError(f"history_mask must be bool, got {self.history_mask.dtype}")
        for name in ("history_items", "history_cates", "target_items", "target_cates"):
            value = getattr(self, name)
            if value.dtype not in (torch.int64, torch.int32):
                raise ValueError(f"{name} must hold integer indices, got {value.dtype}")
        if not (CHECK_VALUES if values is None else values):
            return
        for name in ("history_items", "history_cates", "target_items", "target_cates"):
            value = getattr(self, name)
            if value.numel() and int(value.min()) < 0:
                raise ValueError(f"{name} holds a negative index ({int(value.min())}); indices start at 0 (padding)")
        if t > 1 and bool((self.history_mask[:, 1:] & ~self.history_mask[:, :-1]).any()):
            raise ValueError("history_mask must be left-aligned (real events first, then padding): a True "
                             "follows a False in some row")
        if bool((self.history_items[~self.history_mask] != 0).any()):
            raise ValueError("history_items must be 0 (padding) wherever history_mask is False")


CHECK_VALUES = os.environ.get("LIFELONG_VALIDATE", "") not in ("", "0")  # Batch.validate's value checks by default


def _move(value, device):
    if isinstance(value, dict):
        return {key: _move(v, device) for key, v in value.items()}
    if isinstance(value, ItemSide):
        return value.to(device)
    return value.to(device, non_blocking=True) if isinstance(value, torch.Tensor) else value


class Collator:
    """Builds :class:`Batch` objects from sample indices of one dataset.

    Args:
        dataset: the prepared dataset (CSR event columns and item table).
        max_length: ``L``, the number of most recent history events kept.
        with_timestamps: also gather history and sample timestamps (time-aware models).
        with_negatives: also gather one sampled negative item per history event (see
            :func:`event_negatives`), e.g. for DIEN's auxiliary loss.
        seed: the seed of those negatives.
        device: where the batches go (built on the CPU from the columnar dataset, then moved there).
        features: the groups of declared features to gather (``user``: the user's features; ``item``:
            the items' attribute bags and content vectors, gathered from the per-item table). The
            event context (behavior type) comes whenever the dataset has it.
    """

    def __init__(self, dataset: PreparedDataset, max_length: int = 50, with_timestamps: bool = False,
                 with_negatives: bool = False, seed: int = 2024, device: torch.device | str = "cpu",
                 features: tuple[str, ...] = ()) -> None:
        if max_length < 1:
            raise ValueError(f"max_length must be at least 1, got {max_length}")
        unknown = [g for g in features if g not in ("user", "item", "context")]
        if unknown:
            raise ValueError(f"features: unknown group(s) {unknown}; the groups are user, item, context")
        self.user_features = "user" in features and bool(dataset.user_features)
        self.item_side = "item" in features and (dataset.item_attrs is not None or dataset.item_dense is not None)
        self.device = torch.device(device)
        self.dataset = dataset
        self.max_length = max_length
        self.with_timestamps = with_timestamps
        self.negatives = event_negatives(dataset, seed) if with_negatives else None

    def __call__(self, samples: SampleTable) -> Batch:
        ds = self.dataset
        user = samples.user.astype(np.int64)
        end = samples.end.astype(np.int64)
        length = np.minimum(end, self.max_length)  # (B,)
        start = ds.offsets[user] + end - length  # (B,) first kept event
        width = max(int(length.max(initial=0)), 1)
        steps = np.arange(width, dtype=np.int64)
        mask = steps[None, :] < length[:, None]  # (B, T)
        event = np.where(mask, start[:, None] + steps[None, :], 0)  # (B, T) event positions
        item_rows = np.where(mask, ds.event_items[event], 0)  # (B, T) item rows, 0 = padding row
        history_items = ds.item_idx[item_rows]
        history_cates = ds.item_cate[item_rows]
        target_rows = samples.target.astype(np.int64)
        batch = Batch(
            history_items=torch.from_numpy(history_items),
            history_cates=torch.from_numpy(history_cates),
            history_mask=torch.from_numpy(mask),
            target_items=torch.from_numpy(ds.item_idx[target_rows]),
            target_cates=torch.from_numpy(ds.item_cate[target_rows]),
            labels=torch.from_numpy(samples.label.astype(np.float32, copy=False)),
            users=torch.from_numpy(user),
        )
        if ds.event_behaviors is not None:
            batch.history_behaviors = torch.from_numpy(np.where(mask, ds.event_behaviors[event], 0).astype(np.int64))
        if self.with_timestamps:
            history_ts = np.where(mask, ds.event_timestamps[event], 0)
            batch.history_timestamps = torch.from_numpy(history_ts)
            if samples.timestamp is not None:
                sample_ts = samples.timestamp.astype(np.int64)
            else:  # P1: the target event is the user's event right after the history
                sample_ts = ds.event_timestamps[ds.offsets[user] + end]
            batch.timestamps = torch.from_numpy(sample_ts)
        if self.negatives is not None:
            negative_rows = np.where(mask, self.negatives[event], 0)
            batch.history_negative_items = torch.from_numpy(ds.item_idx[negative_rows])
            batch.history_negative_cates = torch.from_numpy(ds.item_cate[negative_rows])
            if self.item_side:
                batch.history_negative_side = _item_side(ds, negative_rows)
        if self.user_features:
            batch.user_features = {name: torch.from_numpy(values[user]) for name, values in ds.user_features.items()}
        if self.item_side:
            batch.history_side = _item_side(ds, item_rows)
            batch.target_side = _item_side(ds, target_rows)
        return batch if self.device.type == "cpu" else batch.to(self.device)


def _item_side(ds: PreparedDataset, rows: np.ndarray) -> ItemSide:
    """The side features of item ``rows`` (any shape S): S + (A,) bags, S + (D,) vectors."""
    return ItemSide(
        attrs=None if ds.item_attrs is None else torch.from_numpy(ds.item_attrs[rows]),
        dense=None if ds.item_dense is None else torch.from_numpy(ds.item_dense[rows]),
    )


def iterate_batches(
    collator: Collator, samples: SampleTable, batch_size: int, order: np.ndarray | None = None
):
    """Yield batches of ``samples`` in ``order`` (default: table order)."""
    n = len(samples)
    order = np.arange(n) if order is None else order
    for begin in range(0, order.shape[0], batch_size):
        yield collator(samples.subset(order[begin : begin + batch_size]))


def length_bucketed_order(order: np.ndarray, lengths: np.ndarray, batch_size: int,
                          rng: np.random.Generator) -> np.ndarray:
    """Reorder ``order`` so that each consecutive block of ``batch_size`` rows has similar history
    lengths (and is padded to little more than its own length), the blocks in random order.

    The rows are sorted by length (stably, so rows of equal length keep the random order of
    ``order``), cut into full blocks, the blocks shuffled with ``rng``; the remainder block comes
    last, so :func:`iterate_batches` with the same ``batch_size`` yields exactly these blocks. Every
    row appears once, as in ``order``.

    Example:
        >>> lengths = np.array([5, 1, 5, 1, 3, 3])
        >>> o = length_bucketed_order(np.arange(6), lengths, 2, np.random.default_rng(0))
        >>> sorted(o.tolist()), sorted(lengths[o].reshape(3, 2).tolist())
        ([0, 1, 2, 3, 4, 5], [[1, 1], [3, 3], [5, 5]])
    """
    ranked = order[np.argsort(lengths[order], kind="stable")]
    full = ranked.shape[0] // batch_size * batch_size
    blocks = ranked[:full].reshape(-1, batch_size)[rng.permutation(full // batch_size)]
    return np.concatenate([blocks.reshape(-1), ranked[full:]])


def length_order(samples: SampleTable, max_length: int) -> np.ndarray:
    """Row indices of ``samples`` by kept history length ``min(end, L)`` (stable): batches cut from this
    order are padded to little more than their own length."""
    return np.argsort(np.minimum(samples.end, max_length), kind="stable")
