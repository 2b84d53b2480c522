"""Batches: slice each sample's history from its user's sequence, keep the most recent ``L``, pad to
the longest history in the batch, gather item side features. Vectorised; no loop per event.

Histories are left-aligned in time order: position ``t < length`` holds the ``t``-th of the kept
events, padding (index 0) follows.
"""

from __future__ import annotations

from dataclasses import dataclass, fields

import numpy as np
import torch

from lifelong.dataset.store import PreparedDataset, SampleTable


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

    def __len__(self) -> int:
        return int(self.target_items.shape[0])

    @property
    def lengths(self) -> torch.Tensor:
        """(B,) number of real history events."""
        return self.history_mask.sum(dim=1)

    def to(self, device: torch.device | str) -> "Batch":
        return Batch(**{f.name: _move(getattr(self, f.name), device) for f in fields(self)})

    def validate(self) -> None:
        """Raise ``ValueError`` naming the problem when the batch is malformed."""
        if self.history_items.dim() != 2:
            raise ValueError(f"history_items must be (B, T), got shape {tuple(self.history_items.shape)}")
        b, t = self.history_items.shape
        for name in ("history_cates", "history_mask", "history_behaviors", "history_timestamps"):
            value = getattr(self, name)
            if value is not None and tuple(value.shape) != (b, t):
                raise ValueError(f"{name} must have shape {(b, t)} like history_items, got {tuple(value.shape)}")
        for name in ("target_items", "target_cates", "labels", "users", "timestamps"):
            value = getattr(self, name)
            if value is not None and tuple(value.shape) != (b,):
                raise ValueError(f"{name} must have shape {(b,)}, got {tuple(value.shape)}")
        if self.history_mask.dtype != torch.bool:
            raise ValueError(f"history_mask must be bool, got {self.history_mask.dtype}")
        for name in ("history_items", "history_cates", "target_items", "target_cates"):
            value = getattr(self, name)
            if value.dtype not in (torch.int64, torch.int32):
                raise ValueError(f"{name} must hold integer indices, got {value.dtype}")
            if value.numel() and int(value.min()) < 0:
                raise ValueError(f"{name} holds a negative index ({int(value.min())}); indices start at 0 (padding)")
        if bool((self.history_items[~self.history_mask] != 0).any()):
            raise ValueError("history_items must be 0 (padding) wherever history_mask is False")


def _move(value, device):
    return value.to(device) if isinstance(value, torch.Tensor) else value


class Collator:
    """Builds :class:`Batch` objects from sample indices of one dataset.

    Args:
        dataset: the prepared dataset (CSR event columns and item table).
        max_length: ``L``, the number of most recent history events kept.
        with_timestamps: also gather history and sample timestamps (time-aware models).
    """

    def __init__(self, dataset: PreparedDataset, max_length: int = 50, with_timestamps: bool = False) -> None:
        if max_length < 1:
            raise ValueError(f"max_length must be at least 1, got {max_length}")
        self.dataset = dataset
        self.max_length = max_length
        self.with_timestamps = with_timestamps

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
        return batch


def iterate_batches(
    collator: Collator, samples: SampleTable, batch_size: int, order: np.ndarray | None = None
):
    """Yield batches of ``samples`` in ``order`` (default: table order)."""
    n = len(samples)
    order = np.arange(n) if order is None else order
    for begin in range(0, order.shape[0], batch_size):
        yield collator(samples.subset(order[begin : begin + batch_size]))
