"""Lloyd's k-means steps in torch, shared by the models that cluster embeddings (ICLRec's intents,
kNN-Embed's item clusters); each model chooses its own initial centroids."""

from __future__ import annotations

import torch

DISTANCE_ROWS = 8192  # distance chunks: at most 8192 x K distances at once


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
