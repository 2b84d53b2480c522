"""Splitting a retrieval budget of ``k`` items over a user's interests in proportion to their weights:
one definition for the model that trains with it (kNN-Embed, :mod:`lifelong.models.knn_embed`) and the
faiss search that serves it (:meth:`lifelong.index.ItemIndex.search_budgeted`). Plain numpy, so models
import it without importing the index (models import nothing to their right)."""

from __future__ import annotations

from typing import Any

import numpy as np


def interest_budgets(weights: Any, k: int) -> np.ndarray:
    """Integer budgets ``(B, C)`` proportional to mixture weights, each row summing to ``k``
    (largest remainder: floors of ``k w / sum(w)``, the leftover to the largest remainders).

    Args:
        weights: (B, C) non-negative mixture weights (e.g. kNN-Embed's ``p(c | u)``), rows not all zero.
        k: the total budget per row.

    Example:
        >>> interest_budgets(np.array([[0.5, 0.3, 0.2]]), 10).tolist()
        [[5, 3, 2]]
    """
    weights = np.asarray(weights, dtype=np.float64)
    if not isinstance(k, (int, np.integer)) or k < 1:
        raise ValueError(f"k must be a positive integer, got {k!r}")
    if weights.ndim != 2 or (weights < 0).any() or not (weights.sum(axis=1) > 0).all():
        raise ValueError("weights must be (B, C), non-negative, every row with a positive sum; "
                         f"got shape {weights.shape}")
    share = k * weights / weights.sum(axis=1, keepdims=True)  # (B, C)
    budgets = np.floor(share).astype(np.int64)
    leftover = k - budgets.sum(axis=1)  # (B,) in [0, C)
    by_remainder = np.argsort(-(share - budgets), axis=1, kind="stable")
    bonus = np.arange(weights.shape[1])[None, :] < leftover[:, None]  # (B, C) the first `leftover` ranks
    np.put_along_axis(budgets, by_remainder, np.take_along_axis(budgets, by_remainder, axis=1) + bonus, axis=1)
    return budgets
