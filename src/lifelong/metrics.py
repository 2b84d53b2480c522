"""Exact, vectorised evaluation metrics: AUC, GAUC and log loss for CTR ranking; target ranks,
HR@K, NDCG@K and Recall@K for full-ranking retrieval.

Everything here is plain numpy with no Python loop over samples or users, so the metrics scale to
tens of millions of predictions. AUC is the rank-based (Mann-Whitney) statistic with tied scores
counted as one half, which is what ``sklearn.metrics.roc_auc_score`` computes.
"""

from __future__ import annotations

from typing import Any

import numpy as np
from numpy.typing import ArrayLike, NDArray

__all__ = [
    "auc",
    "ctr_metrics",
    "gauc",
    "gauc_detail",
    "logloss",
    "logloss_from_logits",
    "ranking_metrics",
    "target_ranks",
]


# --------------------------------------------------------------------------------------------------
# input validation
# --------------------------------------------------------------------------------------------------


def _flat(name: str, values: ArrayLike) -> NDArray[Any]:
    """Return ``values`` as a 1-d numpy array, raising if it is not one-dimensional."""
    array = np.asarray(values)
    if array.ndim == 0:
        raise ValueError(f"{name} must be a 1-d array, got a scalar")
    if array.ndim > 1:
        if sum(dim != 1 for dim in array.shape) > 1:
            raise ValueError(f"{name} must be a 1-d array, got shape {array.shape}")
        array = array.reshape(-1)
    return array


def _check_labels(labels: ArrayLike) -> NDArray[np.int64]:
    """Validate binary labels (bool, int or float with values in {0, 1}); return them as int64."""
    y = _flat("labels", labels)
    if y.dtype == np.bool_:
        return y.astype(np.int64)
    if y.dtype.kind not in "iuf":
        raise ValueError(f"labels must be numeric or boolean, got dtype {y.dtype}")
    if y.dtype.kind == "f" and not np.all(np.isfinite(y)):
        raise ValueError("labels contain non-finite values (NaN or inf)")
    if not np.all((y == 0) | (y == 1)):
        raise ValueError("labels must be binary with values in {0, 1}")
    return y.astype(np.int64)


def _check_scores(name: str, scores: ArrayLike) -> NDArray[np.float64]:
    """Validate real-valued, finite scores; return them as float64."""
    s = _flat(name, scores)
    if s.dtype.kind not in "biuf":
        raise ValueError(f"{name} must be numeric, got dtype {s.dtype}")
    s = s.astype(np.float64, copy=False)
    if not np.all(np.isfinite(s)):
        raise ValueError(f"{name} contain non-finite values (NaN or inf)")
    return s


def _check_lengths(**arrays: NDArray[Any]) -> int:
    """Raise unless all arrays are non-empty and share one length; return that length."""
    lengths = {name: len(a) for name, a in arrays.items()}
    if len(set(lengths.values())) > 1:
        detail = ", ".join(f"{name}={n}" for name, n in lengths.items())
        raise ValueError(f"input lengths differ: {detail}")
    n = next(iter(lengths.values()))
    if n == 0:
        raise ValueError("inputs are empty")
    return n


def _check_users(users: ArrayLike) -> NDArray[Any]:
    """Validate user keys; non-integer keys (strings, objects, floats) are factorised to int64."""
    u = _flat("users", users)
    if u.dtype.kind in "biu":
        return u
    if u.dtype.kind == "f" and not np.all(np.isfinite(u)):
        raise ValueError("users contain non-finite values (NaN or inf)")
    try:
        _, inverse = np.unique(u, return_inverse=True)
    except TypeError as error:  # e.g. an object array that mixes str and None
        raise ValueError(f"users must be mutually comparable keys: {error}") from error
    return inverse.reshape(-1).astype(np.int64)


# --------------------------------------------------------------------------------------------------
# rank helpers
# --------------------------------------------------------------------------------------------------


def _twice_avg_ranks(new_group: NDArray[np.bool_]) -> NDArray[np.int64]:
    """Twice the 1-based average rank of each position of a sorted array.

    Args:
        new_group: ``new_group[i]`` is True where a tie group starts (always True at 0).

    Returns:
        int64 array; position ``i`` in tie group ``[a, b)`` gets ``a + b + 1``
        (twice the mean of the 1-based ranks a+1..b).
    """
    n = len(new_group)
    starts = np.flatnonzero(new_group)
    ends = np.append(starts[1:], n)
    group = np.cumsum(new_group) - 1
    return (starts + ends + 1)[group]


def _auc_from_rank_sum(
    twice_rank_sum: NDArray[np.int64] | np.int64,
    n_pos: NDArray[np.int64] | np.int64,
    n_neg: NDArray[np.int64] | np.int64,
) -> NDArray[np.float64] | np.float64:
    """Mann-Whitney AUC from twice the positives' rank sum (exact integer numerator)."""
    numerator = twice_rank_sum - n_pos * (n_pos + 1)
    return numerator / (2.0 * n_pos * n_neg)


# --------------------------------------------------------------------------------------------------
# public metrics
# --------------------------------------------------------------------------------------------------


def auc(labels: ArrayLike, scores: ArrayLike) -> float:
    """Exact ROC AUC; tied scores count one half (equals ``sklearn.metrics.roc_auc_score``).

    Args:
        labels: binary labels in {0, 1}, shape (n,).
        scores: finite real scores (any monotone transform of the probability), shape (n,).

    Returns:
        The AUC in [0, 1].

    Raises:
        ValueError: on empty inputs, different lengths, non-finite values, non-binary labels or
            when only one class is present.
    """
    y = _check_labels(labels)
    s = _check_scores("scores", scores)
    n = _check_lengths(labels=y, scores=s)
    n_pos = int(y.sum())
    n_neg = n - n_pos
    if n_pos == 0 or n_neg == 0:
        raise ValueError(
            f"AUC is undefined when only one class is present (positives={n_pos}, "
            f"negatives={n_neg})"
        )
    return _auc_checked(y, s, np.argsort(s), n_pos)


def _auc_checked(
    y: NDArray[np.int64], s: NDArray[np.float64], order: NDArray[np.intp], n_pos: int
) -> float:
    """AUC of validated inputs given an ascending score order (ties in any order)."""
    n = len(y)
    s_sorted = s[order]
    new_group = np.empty(n, dtype=np.bool_)
    new_group[0] = True
    np.not_equal(s_sorted[1:], s_sorted[:-1], out=new_group[1:])
    twice_rank_sum = np.dot(_twice_avg_ranks(new_group), y[order])
    n_neg = n - n_pos
    return float(_auc_from_rank_sum(np.int64(twice_rank_sum), np.int64(n_pos), np.int64(n_neg)))


def gauc_detail(users: ArrayLike, labels: ArrayLike, scores: ArrayLike) -> tuple[float, int]:
    """Group AUC: per-user AUC averaged with weights equal to each user's sample count.

    Users whose samples are all positive or all negative are skipped.

    Args:
        users: user keys (ints, strings, ...), shape (n,).
        labels: binary labels in {0, 1}, shape (n,).
        scores: finite real scores, shape (n,).

    Returns:
        ``(value, n_users_used)``; ``value`` is NaN when no user has both classes.

    Raises:
        ValueError: on empty inputs, different lengths, non-finite values or non-binary labels.
    """
    u = _check_users(users)
    y = _check_labels(labels)
    s = _check_scores("scores", scores)
    _check_lengths(users=u, labels=y, scores=s)
    return _gauc_checked(u, y, s, np.argsort(s))


def _user_then_score_order(u: NDArray[Any], score_order: NDArray[np.intp]) -> NDArray[np.intp]:
    """Order by user, then score: a stable sort by user of the ascending score order.

    User keys are shifted to a compact unsigned type when their range allows, so that numpy's
    stable sort can use radix sort.
    """
    keys = u[score_order]
    low, high = int(keys.min()), int(keys.max())
    span = high - low
    if span < 2**16:
        keys = (keys - low).astype(np.uint16)
    elif span < 2**32:
        keys = (keys - low).astype(np.uint32)
    return score_order[np.argsort(keys, kind="stable")]


def _gauc_checked(
    u: NDArray[Any], y: NDArray[np.int64], s: NDArray[np.float64], score_order: NDArray[np.intp]
) -> tuple[float, int]:
    """GAUC of validated inputs given an ascending score order (ties in any order)."""
    n = len(y)
    order = _user_then_score_order(u, score_order)
    u_sorted = u[order]
    s_sorted = s[order]
    y_sorted = y[order]

    new_user = np.empty(n, dtype=np.bool_)
    new_user[0] = True
    np.not_equal(u_sorted[1:], u_sorted[:-1], out=new_user[1:])
    new_group = new_user.copy()
    new_group[1:] |= s_sorted[1:] != s_sorted[:-1]

    user_starts = np.flatnonzero(new_user)
    user_of = np.cumsum(new_user) - 1
    # Ranks are global positions; shift them so they restart at 1 for each user.
    twice_rank = _twice_avg_ranks(new_group) - 2 * user_starts[user_of]

    n_samples = np.diff(np.append(user_starts, n))
    n_pos = np.add.reduceat(y_sorted, user_starts)
    n_neg = n_samples - n_pos
    twice_rank_sum = np.add.reduceat(twice_rank * y_sorted, user_starts)

    used = (n_pos > 0) & (n_neg > 0)
    n_used = int(used.sum())
    if n_used == 0:
        return float("nan"), 0
    per_user = _auc_from_rank_sum(twice_rank_sum[used], n_pos[used], n_neg[used])
    weights = n_samples[used]
    return float(np.dot(per_user, weights) / weights.sum()), n_used


def gauc(users: ArrayLike, labels: ArrayLike, scores: ArrayLike) -> float:
    """Group AUC weighted by per-user sample count, over users that have both classes.

    Args:
        users: user keys (ints, strings, ...), shape (n,).
        labels: binary labels in {0, 1}, shape (n,).
        scores: finite real scores, shape (n,).

    Returns:
        The GAUC in [0, 1].

    Raises:
        ValueError: as :func:`gauc_detail`, and when no user has both classes.
    """
    value, n_used = gauc_detail(users, labels, scores)
    if n_used == 0:
        raise ValueError("GAUC is undefined: no user has both positive and negative samples")
    return value


def logloss(labels: ArrayLike, probs: ArrayLike, eps: float = 1e-7) -> float:
    """Mean binary cross-entropy with probabilities clipped to ``[eps, 1 - eps]``.

    Args:
        labels: binary labels in {0, 1}, shape (n,).
        probs: predicted probabilities in [0, 1], shape (n,).
        eps: clipping bound, in (0, 0.5).

    Returns:
        The mean log loss (natural log).

    Raises:
        ValueError: on empty inputs, different lengths, non-finite values, non-binary labels,
            probabilities outside [0, 1] or an invalid ``eps``.
    """
    if not 0.0 < eps < 0.5:
        raise ValueError(f"eps must lie in (0, 0.5), got {eps}")
    y = _check_labels(labels)
    p = _check_scores("probs", probs)
    _check_lengths(labels=y, probs=p)
    if np.any((p < 0.0) | (p > 1.0)):
        raise ValueError("probs must lie in [0, 1]")
    p = np.clip(p, eps, 1.0 - eps)
    return float(-np.mean(np.where(y == 1, np.log(p), np.log1p(-p))))


def logloss_from_logits(labels: ArrayLike, logits: ArrayLike) -> float:
    """Mean binary cross-entropy computed stably from logits (no clipping needed).

    Uses ``-log sigmoid(z) = softplus(-z)``, i.e. loss = ``log(1 + exp(z)) - y * z``.

    Args:
        labels: binary labels in {0, 1}, shape (n,).
        logits: finite real logits, shape (n,).

    Returns:
        The mean log loss (natural log).

    Raises:
        ValueError: on empty inputs, different lengths, non-finite values or non-binary labels.
    """
    y = _check_labels(labels)
    z = _check_scores("logits", logits)
    _check_lengths(labels=y, logits=z)
    return float(np.mean(np.logaddexp(0.0, z) - y * z))


def ctr_metrics(users: ArrayLike, labels: ArrayLike, logits: ArrayLike) -> dict[str, float | int]:
    """AUC, GAUC and log loss of CTR predictions given as logits.

    AUC and GAUC are computed on the logits themselves (rank-equivalent to the sigmoid, without the
    ties that float saturation of the sigmoid would create); log loss uses a stable log-sigmoid.

    Args:
        users: user keys, shape (n,).
        labels: binary labels in {0, 1}, shape (n,).
        logits: finite real logits, shape (n,).

    Returns:
        ``{'auc', 'gauc', 'logloss', 'n'}``; ``gauc`` is NaN when no user has both classes.

    Raises:
        ValueError: on invalid inputs, or when only one class is present overall (AUC undefined).
    """
    u = _check_users(users)
    y = _check_labels(labels)
    z = _check_scores("logits", logits)
    n = _check_lengths(users=u, labels=y, logits=z)
    n_pos = int(y.sum())
    if n_pos == 0 or n_pos == n:
        raise ValueError(
            f"AUC is undefined when only one class is present (positives={n_pos}, "
            f"negatives={n - n_pos})"
        )
    order = np.argsort(z)  # shared by AUC and GAUC
    value, _ = _gauc_checked(u, y, z, order)
    return {
        "auc": _auc_checked(y, z, order, n_pos),
        "gauc": value,
        "logloss": float(np.mean(np.logaddexp(0.0, z) - y * z)),
        "n": n,
    }


# ---------------------------------------------------------------------------------------------
# Full-ranking retrieval metrics (P2: one target per user; the rank is 0-based)


def target_ranks(scores: "torch.Tensor", targets: "torch.Tensor") -> "torch.Tensor":
    """0-based rank of each row's target among all columns, ties broken by column index: the position
    of the target in a stable sort by descending score (so a brute-force ``argsort`` gives the same).

    Args:
        scores: (B, N) float; excluded items must already be ``-inf``.
        targets: (B,) int64 column of the target.

    Returns:
        (B,) int64 ranks; a target scored ``-inf`` (excluded, e.g. a repeat of a history item) gets
        rank ``N``, a miss at every cut-off.

    Example:
        >>> import torch
        >>> target_ranks(torch.tensor([[0.1, 0.5, 0.5, 0.2]]), torch.tensor([2])).tolist()
        [1]
    """
    import torch

    target_scores = scores.gather(1, targets.unsqueeze(1))  # (B, 1)
    n = scores.shape[1]
    if n < 1 << 24:  # float32 sums of +-1 are exact: one pass for both counts (2-4x faster than bool sums)
        sign = (scores.float() - target_scores.float()).sign_()  # +1 above the target, -1 below, 0 tied
        above_minus_below = sign.sum(dim=1)
        above_plus_below = sign.abs_().sum(dim=1)
        ranks = ((above_minus_below + above_plus_below) / 2).round().long()
        tied = (n - above_plus_below) > 1.5  # another item than the target scores exactly the same (rare)
    else:
        ranks = torch.count_nonzero(scores > target_scores, dim=1)
        tied = torch.count_nonzero(scores == target_scores, dim=1) > 1
    if bool(tied.any()):
        rows = tied.nonzero().squeeze(1)
        columns = torch.arange(scores.shape[1], device=scores.device)
        before = (scores[rows] == target_scores[rows]) & (columns.unsqueeze(0) < targets[rows].unsqueeze(1))
        ranks[rows] += torch.count_nonzero(before, dim=1)
    return torch.where(torch.isneginf(target_scores.squeeze(1)), torch.full_like(ranks, scores.shape[1]), ranks)


def ranking_metrics(ranks: ArrayLike, ks: tuple[int, ...] = (5, 10, 20), recall_ks: tuple[int, ...] = (50,)) -> dict[str, float]:
    """HR@K and NDCG@K (one relevant item per user: NDCG = 1 / log2(rank + 2) inside the top K),
    and Recall@K (equal to HR@K with one target), averaged over users.

    Example:
        >>> ranking_metrics([0, 3, 100], ks=(5,), recall_ks=())
        {'hr@5': 0.6666666666666666, 'ndcg@5': 0.47689218602446437, 'n': 3}
    """
    r = _flat("ranks", ranks).astype(np.int64)
    if r.size == 0:
        raise ValueError("ranking metrics need at least one user")
    out: dict[str, float] = {}
    gain = 1.0 / np.log2(r + 2.0)
    for k in ks:
        hit = r < k
        out[f"hr@{k}"] = float(hit.mean())
        out[f"ndcg@{k}"] = float(np.where(hit, gain, 0.0).mean())
    for k in recall_ks:
        out[f"recall@{k}"] = float((r < k).mean())
    out["n"] = int(r.size)
    return out


def set_retrieval_metrics(tops: dict[int, ArrayLike], target_offsets: ArrayLike, target_items: ArrayLike) -> dict[str, float]:
    """Recall@K, NDCG@K and HitRate@K of top-K lists against each user's *set* of target items (P3).

    Args:
        tops: ``{K: (N, K) item ids, best first}``; one list per K, since a budgeted merge's top 20 need
            not be the first 20 of its top 50. Ids in a list are distinct.
        target_offsets: (N+1,) CSR offsets into ``target_items``; each user's targets are distinct.
        target_items: the targets of all users, concatenated.

    Per user, with ``T`` its targets and ``hits`` the positions ``r`` (0-based) of the list that are
    targets: Recall@K = ``|hits| / |T|``; HitRate@K = ``|hits| > 0``; NDCG@K = ``sum 1/log2(r+2) /
    sum_{j < min(|T|, K)} 1/log2(j+2)`` (the ideal list puts targets first). Averaged over users.
    ComiRec's code computes its DCG from the order of the *targets* instead of the rank in the list,
    and divides by the ideal DCG of the number of *hits* (close to an NDCG given a hit), so its NDCG
    numbers are not comparable with these; this is the standard rank-based NDCG.

    Example:
        >>> m = set_retrieval_metrics({2: [[5, 7], [1, 2]]}, [0, 2, 3], [7, 9, 4])
        >>> m["recall@2"], m["hitrate@2"], round(m["ndcg@2"], 4)
        (0.25, 0.5, 0.1934)
    """
    offsets = _flat("target_offsets", target_offsets).astype(np.int64)
    targets = _flat("target_items", target_items).astype(np.int64)
    n = offsets.shape[0] - 1
    if n < 1:
        raise ValueError("set retrieval metrics need at least one user")
    sizes = np.diff(offsets)
    if sizes.min() < 1:
        raise ValueError("every user needs at least one target item")
    span = int(max(targets.max(initial=0), max(int(np.max(t)) for t in tops.values())) + 1)
    target_keys = np.repeat(np.arange(n, dtype=np.int64), sizes) * span + targets
    out: dict[str, float] = {}
    for k, top in sorted(tops.items()):
        top = np.asarray(top, dtype=np.int64)
        if top.shape != (n, k):
            raise ValueError(f"tops[{k}] must have shape ({n}, {k}), got {top.shape}")
        hits = np.isin(np.arange(n, dtype=np.int64)[:, None] * span + top, target_keys) & (top >= 0)  # (N, K); -1 = no item
        discount = 1.0 / np.log2(np.arange(k) + 2.0)  # (K,)
        ideal = np.cumsum(discount)[np.minimum(sizes, k) - 1]  # (N,)
        out[f"recall@{k}"] = float((hits.sum(1) / sizes).mean())
        out[f"ndcg@{k}"] = float(((hits * discount).sum(1) / ideal).mean())
        out[f"hitrate@{k}"] = float(hits.any(1).mean())
    out["n"] = n
    return out
