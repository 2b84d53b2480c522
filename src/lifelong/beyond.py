"""Beyond-accuracy metrics of top-k recommendation lists: category coverage, category entropy, novelty.

Every function takes the lists as a (B, k) array of item vocabulary indices (one row per user, e.g.
the top 10 of the full ranking) and returns a float. Torch tensors and NumPy arrays both work.

Example:
    >>> top = [[2, 3], [2, 4]]
    >>> cates = [0, 0, 5, 5, 6]  # item vocabulary index -> category vocabulary index
    >>> category_coverage(top, cates), category_entropy(top, cates)
    (1.5, 0.5)
"""

from __future__ import annotations

import numpy as np


def _lists(top_items, n_items: int) -> np.ndarray:
    top = np.asarray(top_items, dtype=np.int64)
    if top.ndim != 2 or top.shape[1] == 0:
        raise ValueError(f"top_items must be a (users, k) array with k >= 1, got shape {top.shape}")
    if top.size and (top.min() < 0 or top.max() >= n_items):
        raise ValueError(f"top_items must hold item vocabulary indices in [0, {n_items}), "
                         f"got [{top.min()}, {top.max()}]")
    return top


def category_coverage(top_items, item_cates) -> float:
    """Distinct categories in a user's list, averaged over users.

    Args:
        top_items: (B, k) item vocabulary indices.
        item_cates: (n_items,) category vocabulary index of every item.
    """
    cates = np.asarray(item_cates, dtype=np.int64)
    listed = np.sort(cates[_lists(top_items, cates.shape[0])], axis=1)  # (B, k)
    distinct = 1 + (listed[:, 1:] != listed[:, :-1]).sum(axis=1)  # (B,)
    return float(distinct.mean()) if distinct.size else 0.0


def catalogue_category_coverage(top_items, item_cates) -> float:
    """Share of the catalogue's categories (those of items with index >= 2) that appear in any list.

    Args:
        top_items: (B, k) item vocabulary indices.
        item_cates: (n_items,) category vocabulary index of every item.
    """
    cates = np.asarray(item_cates, dtype=np.int64)
    listed = np.unique(cates[_lists(top_items, cates.shape[0])])
    catalogue = np.unique(cates[2:])
    return float(np.isin(listed, catalogue).sum() / max(catalogue.shape[0], 1))


def category_entropy(top_items, item_cates) -> float:
    """Shannon entropy (bits) of the categories in a user's list, ``-sum_c p_c log2 p_c`` with ``p_c``
    the share of the list in category ``c``, averaged over users.

    Args:
        top_items: (B, k) item vocabulary indices.
        item_cates: (n_items,) category vocabulary index of every item.
    """
    cates = np.asarray(item_cates, dtype=np.int64)
    listed = cates[_lists(top_items, cates.shape[0])]  # (B, k)
    b, k = listed.shape
    if b == 0:
        return 0.0
    rows = np.repeat(np.arange(b, dtype=np.int64), k)
    keys, counts = np.unique(rows * (int(cates.max()) + 1) + listed.reshape(-1), return_counts=True)
    share = counts / k
    per_user = np.bincount(keys // (int(cates.max()) + 1), weights=-share * np.log2(share), minlength=b)
    return float(per_user.mean())


def novelty(top_items, popularity) -> float:
    """Mean self-information ``-log2(count_i / sum count)`` of the recommended items, over every entry
    of every list. Counts below 1 count as 1 (an item never seen in training is as novel as one seen
    once), so the value stays finite.

    Args:
        top_items: (B, k) item vocabulary indices.
        popularity: (n_items,) interaction count of every item (e.g. in the training events).
    """
    counts = np.asarray(popularity, dtype=np.float64)
    top = _lists(top_items, counts.shape[0])
    if top.size == 0:
        return 0.0
    total = counts.sum()
    if total <= 0:
        raise ValueError("popularity must count at least one interaction")
    share = np.maximum(counts[top], 1.0) / total
    return float(-np.log2(share).mean())


def category_diversity(top_items, item_cates) -> float:
    """ComiRec's diversity of retrieved lists: the share of item pairs of a list in different categories,
    averaged over the lists (0 for lists shorter than 2; an id outside ``item_cates``, e.g. -1 for a
    missing entry, counts as category 0).

    Example:
        >>> round(category_diversity(np.array([[2, 3, 4]]), np.array([0, 0, 1, 1, 2])), 4)
        0.6667
    """
    top = np.asarray(top_items, dtype=np.int64)
    cates = np.asarray(item_cates)
    c = cates[np.clip(top, 0, cates.shape[0] - 1)]  # (N, K)
    k = c.shape[1]
    if k < 2:
        return 0.0
    same = (c[:, :, None] == c[:, None, :]).sum(axis=(1, 2)) - k  # ordered same-category pairs, self excluded
    return float((1.0 - same / (k * (k - 1))).mean())


def beyond_accuracy(top_items, item_cates, popularity) -> dict[str, float]:
    """All of the above in one dict (``category_coverage``, ``catalogue_category_coverage``,
    ``category_entropy``, ``novelty``)."""
    return {
        "category_coverage": category_coverage(top_items, item_cates),
        "catalogue_category_coverage": catalogue_category_coverage(top_items, item_cates),
        "category_entropy": category_entropy(top_items, item_cates),
        "novelty": novelty(top_items, popularity),
    }
