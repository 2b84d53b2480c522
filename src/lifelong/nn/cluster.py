"""K-means in torch (initial centroids, then Lloyd steps), shared by the models that cluster embeddings
(ICLRec's intents: distinct random points; kNN-Embed's item clusters: k-means++ seeding)."""

from __future__ import annotations

import torch

DISTANCE_ROWS = 8192  # distance chunks: at most 8192 x K distances at once
INITS = ("random", "kmeans++")


def nearest_centroid(points: torch.Tensor, centroids: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """points (N, D), centroids (K, D) -> (index (N,), squared distance (N,)) of the nearest centroid.

    Example:
        >>> nearest_centroid(torch.tensor([[0.0], [4.0]]), torch.tensor([[1.0], [5.0]]))
        (tensor([0, 1]), tensor([1., 1.]))
    """
    indices, distances = [], []
    centroid_norms = (centroids * centroids).sum(1)  # (K,)
    for chunk in points.split(DISTANCE_ROWS):
        d = (chunk * chunk).sum(1, keepdim=True) - 2 * chunk @ centroids.T + centroid_norms  # (n, K)
        best, index = d.min(1)
        indices.append(index)
        distances.append(best.clamp(min=0))
    return torch.cat(indices), torch.cat(distances)


def lloyd(points: torch.Tensor, centroids: torch.Tensor, iterations: int) -> tuple[torch.Tensor, torch.Tensor]:
    """``iterations`` Lloyd steps from ``centroids`` (K, D): assign every point to its nearest centroid,
    move each centroid to its points' mean; an empty cluster is re-seeded with the point farthest from
    its centroid. Returns ``(centroids (K, D), assignment (N,))``."""
    centroids = centroids.clone()
    k = centroids.shape[0]
    for _ in range(iterations):
        assignment, distance = nearest_centroid(points, centroids)
        counts = torch.bincount(assignment, minlength=k)  # (K,)
        sums = torch.zeros_like(centroids).index_add_(0, assignment, points)
        centroids = sums / counts.clamp(min=1).unsqueeze(1).to(points.dtype)
        empty = counts == 0
        if bool(empty.any()):
            centroids[empty] = points[distance.topk(int(empty.sum())).indices]
    assignment, _ = nearest_centroid(points, centroids)
    return centroids, assignment


def kmeans(points: torch.Tensor, k: int, iterations: int, generator: torch.Generator,
           init: str = "random") -> tuple[torch.Tensor, torch.Tensor]:
    """K-means: initial centroids drawn with ``generator``, then ``iterations`` :func:`lloyd` steps.

    Args:
        points: (N, D), N >= k.
        k: clusters.
        iterations: Lloyd steps (assign, then move each centroid to its points' mean).
        generator: CPU generator of the initial centroids (the only draws; torch's global RNG is untouched).
        init: ``random``: k distinct points, uniformly (``randperm``); ``kmeans++``: the first point
            uniformly, each next one with probability proportional to its squared distance to the nearest
            chosen one (uniformly when all distances are 0).

    Returns:
        ``(centroids (k, D), assignment (N,))``; an empty cluster is re-seeded with the point farthest
        from its centroid (deterministic given the points).

    Example:
        >>> points = torch.tensor([[0.0], [0.1], [5.0], [5.1]])
        >>> c, a = kmeans(points, 2, 5, torch.Generator().manual_seed(0))
        >>> sorted(a.tolist()) == [0, 0, 1, 1]
        True
        >>> c, a = kmeans(points, 2, 5, torch.Generator().manual_seed(0), init="kmeans++")
        >>> bool(a[0] == a[1] != a[2] == a[3])
        True
    """
    n = points.shape[0]
    if n < k:
        raise ValueError(f"k-means needs at least k={k} points, got {n}")
    if init == "random":
        first = torch.randperm(n, generator=generator)[:k].to(points.device)
        return lloyd(points, points[first], iterations)
    if init != "kmeans++":
        raise ValueError(f"k-means: init must be one of {INITS}, got {init!r}")
    chosen = [int(torch.randint(n, (1,), generator=generator))]
    closest = ((points - points[chosen[0]]) ** 2).sum(1)  # (N,) squared distance to the nearest seed
    for _ in range(1, k):  # the next seed with probability proportional to that distance
        weights = closest.double().cpu()
        nxt = int(torch.multinomial(weights, 1, generator=generator)) if float(weights.sum()) > 0 else \
            int(torch.randint(n, (1,), generator=generator))
        chosen.append(nxt)
        closest = torch.minimum(closest, ((points - points[nxt]) ** 2).sum(1))
    return lloyd(points, points[torch.tensor(chosen, device=points.device)], iterations)
