"""kNN-Embed: a single-embedding retrieval model queried as a locally smoothed mixture of item clusters.

Paper: El-Kishky, Markovich, Leung, Portman, Haghighi and Xiao, kNN-Embed: Locally Smoothed Embedding
Mixtures For Multi-interest Candidate Retrieval, Twitter, 2022 (arXiv 2205.06205). No official code.

Mechanism:
  - Base embedding model (trained): one user vector ``u`` per history, YouTube DNN's (the mean of the
    history's item embeddings through a ReLU tower), trained with the shared next-item loss of
    :class:`~lifelong.models.multi_interest.MultiInterestModel` on that single vector. Training is
    always single-vector, also after the mixture is fitted; until it is fitted, ``interests`` returns
    this one vector (K = 1) and the model *is* the single-embedding baseline.
  - ``prepare_retrieval(user_batches)`` (the loop calls it before every evaluation) fits the mixture
    from the current weights, into buffers:

    1. item clusters: k-means with ``clusters`` centroids over the item embeddings of rows >= 2;
    2. each training user's mixture ``p(c|u) = (n_c + alpha) / (n + C alpha)``, ``n_c`` its history
       events whose item is in cluster ``c`` (``alpha = pseudo_count``; unknown items count in no
       cluster; a history with none is uniform);
    3. a bank of the training users' ids, unit user vectors and raw mixtures.

  - Local smoothing, for any user (training or held-out): ``p~(c|u) = (1 - beta) p(c|u) + beta *
    mean_{v in N(u)} p(c|v)``, ``N(u)`` the ``neighbors`` bank users with the largest cosine
    ``cos(u, v)``, the user itself excluded when it is in the bank (matched by ``batch.users``);
    ``beta = neighbor_weight``.
  - Components: the ``interests`` clusters with the largest ``p~(c|u)`` (ties: lower cluster id), their
    weights renormalised to sum to one. Component ``c``'s query is the per-cluster user embedding
    ``q_c = unit((1 - lambda) unit(m_c) + lambda unit(u))``, ``m_c`` the mean embedding of the user's
    history items in cluster ``c``, or the centroid of ``c`` when the user has none there
    (``lambda = user_blend``).
  - Retrieval (``retrieve``): each component's budget is proportional to its weight, split into integers
    that add up to exactly ``k`` by the largest remainder (:func:`budget_split`). In weight order,
    each component takes its ``budget`` best items by inner product over the whole catalogue that no
    heavier component already took (rows 0 and 1 never), so every list holds ``k`` distinct items
    (:func:`budgeted_union`). The list is ordered by interleaving the components in proportion to their
    budgets: a component's ``r``-th item (from 0) sits at ``(r + 1/2) / budget``, ties in weight order.

How ``retrieve`` knows the weights (it gets the user vectors only): ``interests`` returns each
component's unit query scaled by its weight, ``w_c q_c``; the ranking of one query is unchanged by a
positive scale, and ``retrieve`` reads the weights back as the vectors' norms (renormalised). A slot
that the base class filled with a copy of the first valid one (a switched-off, zero-weight component)
is an exact copy and counts as weight 0. So ``user_vectors(batch)`` alone determines the lists: no state
is kept between calls, any batch order and any chunking give the same result. The weights themselves
are recomputable from the batch with ``components(batch)`` (and the full mixture with ``mixture``).

Deviations and choices where the paper (as far as it was read: abstract and notes) is silent:
  - The base embedding is learned here from the histories (YouTube DNN); the paper takes given
    embeddings (e.g. TwHIN / SimClusters graph embeddings).
  - The component budget searches the whole catalogue with a per-cluster query; restricting a
    component to its own cluster's items (a per-cluster ANN index) is the other reading.
  - Only the top ``interests`` components are queried (the paper queries the mixture's components in
    proportion to their weights; how many it keeps is not in the notes).
  - Exact search (a full inner product), no ANN index.
  - K-means (:func:`lifelong.nn.cluster.kmeans`, torch): k-means++ seeding from a generator seeded
    with ``kmeans_seed`` (deterministic, independent of torch's global RNG), ``kmeans_iterations`` Lloyd
    steps on the raw embeddings (Euclidean), an empty cluster re-seeded with the point farthest from
    its centroid. Add-``alpha`` smoothing of the engagement counts keeps every weight positive (with
    ``alpha = beta = 0`` a zero-weight component is switched off: ``valid`` False).
    The exact form of the smoothing ``p~`` (a convex mix with weight ``beta`` of the own mixture and the
    neighbours' plain mean) and of the per-cluster query are this file's choices.
  - The user vectors of the kNN search and of the bank are the base model's vectors; the bank holds one
    row per training user (its most recent ``L`` training events, as the loop provides).
  - Defaults (not from the paper): 32 clusters, 4 components, 10 neighbours, ``beta = 0.5``,
    ``alpha = 0.01``, ``lambda = 0.5``.
  - The list order (proportional interleaving) is this file's; the paper reports recall (a set).
  - ``training_terms`` repeats the base class's single-vector terms (the base takes them from
    ``interests``, which is the mixture once fitted).
  - The fitted state goes stale while training continues; the loop refits it before every evaluation.
    It is saved in checkpoints (buffers; the bank's size is taken from the checkpoint on loading).

Example:
    >>> model = KNNEmbed(KNNEmbedConfig(n_items=30, n_cates=4, embedding_dim=8, hidden=(16,), clusters=4,
    ...                                 interests=2, neighbors=2))
    >>> budget_split(torch.tensor([[0.5, 0.3, 0.2]]), 7)  # components' shares of a top-7 list
    tensor([[4, 2, 1]])
"""

from __future__ import annotations

import logging
from contextlib import contextmanager
from dataclasses import dataclass
from typing import Callable, Iterable, Iterator

import torch
import torch.nn.functional as F
from torch import nn

from lifelong.batch import Batch
from lifelong.budgets import interest_budgets  # the same split the faiss budgeted search uses
from lifelong.models.multi_interest import FIRST_RANKED, MultiInterestConfig, MultiInterestModel
from lifelong.models.registry import register
from lifelong.nn.cluster import kmeans
from lifelong.nn.embedding import init_item_embedding
from lifelong.nn.layers import mean_pool, relu_tower

log = logging.getLogger(__name__)

BANK_CHUNK = 8192  # neighbour search: bank rows compared per step (fixed, so results do not depend on B)


@dataclass
class KNNEmbedConfig(MultiInterestConfig):
    """Args:
        interests: components queried per user (the clusters with the largest smoothed weight);
            at most ``clusters``.
        hidden: ReLU layer sizes of the base model's tower before the final linear map to ``D``.
        clusters: ``C``, k-means item clusters (at most the ``n_items - 2`` rankable items).
        kmeans_iterations: Lloyd steps of the clustering.
        kmeans_seed: seed of the k-means++ initialisation.
        pseudo_count: ``alpha`` of the add-alpha smoothing of a user's cluster counts (>= 0).
        neighbors: ``k`` nearest training users of the local smoothing.
        neighbor_weight: ``beta`` in [0, 1], the neighbours' share of the smoothed mixture.
        user_blend: ``lambda`` in [0, 1), the user vector's share of a component query.
        (embedding_dim, loss, negatives, label_power: see :class:`MultiInterestConfig`.)
    """

    model_type = "knn_embed"
    interests: int = 4
    hidden: tuple[int, ...] = (128,)
    clusters: int = 32
    kmeans_iterations: int = 20
    kmeans_seed: int = 0
    pseudo_count: float = 0.01
    neighbors: int = 10
    neighbor_weight: float = 0.5
    user_blend: float = 0.5

    def validate(self) -> None:
        super().validate()
        name = self.model_type
        if any(h < 1 for h in self.hidden):
            raise ValueError(f"{name}: hidden sizes must be positive, got {self.hidden}")
        if not 1 <= self.clusters <= self.n_items - FIRST_RANKED:
            raise ValueError(f"{name}: clusters must be in [1, n_items - 2 = {self.n_items - FIRST_RANKED}] "
                             f"(one item at least per cluster), got {self.clusters}; lower clusters")
        if self.interests > self.clusters:
            raise ValueError(f"{name}: interests (components per user, {self.interests}) cannot exceed "
                             f"clusters ({self.clusters})")
        if self.kmeans_iterations < 1:
            raise ValueError(f"{name}: kmeans_iterations must be at least 1, got {self.kmeans_iterations}")
        if self.pseudo_count < 0:
            raise ValueError(f"{name}: pseudo_count (alpha) must be >= 0, got {self.pseudo_count}")
        if self.neighbors < 1:
            raise ValueError(f"{name}: neighbors must be at least 1, got {self.neighbors}")
        if not 0.0 <= self.neighbor_weight <= 1.0:
            raise ValueError(f"{name}: neighbor_weight (beta) must be in [0, 1], got {self.neighbor_weight}")
        if not 0.0 <= self.user_blend < 1.0:
            raise ValueError(f"{name}: user_blend (lambda) must be in [0, 1) (1 would make every component "
                             f"query the same vector), got {self.user_blend}")


# --------------------------------------------------------------------------------------------------
# Budgets and the budgeted union (pure functions of weights and vectors)


def budget_split(weights: torch.Tensor, k: int) -> torch.Tensor:
    """Integer budgets proportional to ``weights``, adding up to exactly ``k`` (largest remainder).

    Each row's weights are normalised; component ``c`` gets ``floor(k w_c)``, and the ``k - sum floor``
    items left go one each to the components with the largest fractional parts ``k w_c - floor(k w_c)``
    (ties: lower column first). A zero weight never gets budget.

    Args:
        weights: (B, C) non-negative, every row with a positive sum.
        k: the list length (>= 0).

    Returns:
        (B, C) int64, each row summing to ``k``, each entry within 1 of ``k w_c``.

    Example:
        >>> budget_split(torch.tensor([[0.5, 0.3, 0.2]]), 7)
        tensor([[4, 2, 1]])
    """
    if weights.dim() != 2:
        raise ValueError(f"budget_split: weights must be (B, C), got shape {tuple(weights.shape)}")
    if k < 0:
        raise ValueError(f"budget_split: k must be >= 0, got {k}")
    if k == 0:
        return torch.zeros(weights.shape, dtype=torch.long, device=weights.device)
    return torch.from_numpy(interest_budgets(weights.detach().double().cpu().numpy(), k)).to(weights.device)


def component_weights(users: torch.Tensor) -> torch.Tensor:
    """(B, K, D) weight-scaled component queries -> (B, K) weights summing to one: the vectors' norms,
    an exact copy of an earlier slot (a switched-off component filled by the base class) counting 0.
    A row of zero vectors gets equal weights over its distinct slots."""
    k = users.shape[1]
    same = (users.unsqueeze(2) == users.unsqueeze(1)).all(dim=-1)  # (B, K, K)
    earlier = torch.ones(k, k, dtype=torch.bool, device=users.device).tril(diagonal=-1)  # [j, i]: i < j
    copy = (same & earlier).any(dim=2)  # (B, K)
    weights = users.norm(dim=-1) * ~copy
    total = weights.sum(dim=1, keepdim=True)
    weights = torch.where(total > 0, weights, (~copy).to(weights.dtype))
    return weights / weights.sum(dim=1, keepdim=True)


def budgeted_union(users: torch.Tensor, items: torch.Tensor, weights: torch.Tensor, k: int) -> torch.Tensor:
    """kNN-Embed's retrieval: every component takes its budget of best items (inner product) that no
    heavier component took; the lists are interleaved in proportion to the budgets.

    Args:
        users: (B, K, D) component queries (any positive scale).
        items: (N, D) item vectors; rows 0 and 1 are never retrieved.
        weights: (B, K) component weights (row sums positive); budgets by :func:`budget_split`.
        k: list length, at most ``N - 2``.

    Returns:
        (B, k) distinct item indices >= 2, best first.

    Example:
        >>> items = torch.tensor([[0.0, 0], [0, 0], [1, 0], [0.9, 0], [0, 1], [0, 0.9]])
        >>> users = torch.tensor([[[1.0, 0], [0, 1]]])
        >>> budgeted_union(users, items, torch.tensor([[0.5, 0.5]]), 4)
        tensor([[2, 4, 3, 5]])
    """
    b, n = users.shape[0], items.shape[0]
    if not 1 <= k <= n - FIRST_RANKED:
        raise ValueError(f"retrieve: k must be in [1, {n - FIRST_RANKED}] (the rankable items), got {k}")
    budgets = budget_split(weights, k)  # (B, K)
    order = weights.argsort(dim=1, descending=True, stable=True)  # (B, K) heaviest first
    rows = torch.arange(b, device=users.device)
    taken = torch.zeros(b, n, dtype=torch.bool, device=users.device)
    taken[:, :FIRST_RANKED] = True
    picks, keys = [], []
    for slot in range(users.shape[1]):
        component = order[:, slot]  # (B,)
        budget = budgets[rows, component]  # (B,)
        width = int(budget.max())
        if width == 0:
            continue
        scores = (users[rows, component] @ items.T).masked_fill(taken, float("-inf"))  # (B, N)
        top = scores.topk(width, dim=1).indices  # (B, width)
        rank = torch.arange(width, device=users.device).unsqueeze(0)  # (1, width)
        keep = rank < budget.unsqueeze(1)  # (B, width)
        taken[rows.unsqueeze(1).expand_as(top)[keep], top[keep]] = True
        picks.append(top)
        keys.append(torch.where(keep, (rank + 0.5) / budget.clamp(min=1).unsqueeze(1), float("inf")))
    picked, key = torch.cat(picks, dim=1), torch.cat(keys, dim=1)  # (B, sum of widths)
    position = key.argsort(dim=1, stable=True)[:, :k]  # ties: the heavier component first
    return picked.gather(1, position)


def distinct_clusters(top: torch.Tensor, item_cluster: torch.Tensor) -> torch.Tensor:
    """(B, k) item indices -> (B,) number of distinct item clusters in each list (the diversity measure
    of kNN-Embed's comparison with the single-embedding query)."""
    clusters = item_cluster[top].sort(dim=1).values  # (B, k)
    return 1 + (clusters[:, 1:] != clusters[:, :-1]).sum(dim=1)


@register(KNNEmbedConfig)
class KNNEmbed(MultiInterestModel):
    """A single user embedding, queried after ``prepare_retrieval`` as a smoothed mixture of item clusters.

    Example:
        >>> model = KNNEmbed(KNNEmbedConfig(n_items=30, n_cates=4, embedding_dim=8, hidden=(16,), clusters=4,
        ...                                 interests=2, neighbors=2))
        >>> bool(model.fitted)
        False
    """

    trains_one_vector = True  # training never uses the mixture (DESMIL has no interests to decorrelate)

    # the bank's size is the number of training users: taken from a checkpoint when one is loaded
    _SIZED_BY_DATA = ("bank_users", "bank_vectors", "bank_mixtures")

    def __init__(self, config: KNNEmbedConfig) -> None:
        super().__init__()
        self.config = config
        d, c = config.embedding_dim, config.clusters
        self.item = nn.Embedding(config.n_items, d, padding_idx=0)
        self.tower = relu_tower(d, config.hidden)
        init_item_embedding(self.item, std=d ** -0.5)
        # the fitted mixture (prepare_retrieval): buffers, saved in checkpoints, never trained
        self.register_buffer("fitted", torch.zeros((), dtype=torch.bool))
        self.register_buffer("centroids", torch.zeros(c, d))  # (C, D)
        self.register_buffer("item_cluster", torch.full((config.n_items,), -1, dtype=torch.long))  # -1: rows 0, 1
        self.register_buffer("bank_users", torch.zeros(0, dtype=torch.long))  # (M,) training user ids
        self.register_buffer("bank_vectors", torch.zeros(0, d))  # (M, D) unit user vectors
        self.register_buffer("bank_mixtures", torch.zeros(0, c))  # (M, C) raw p(c|v)

    # ---- the base embedding model -----------------------------------------------------------------

    def base_embedding(self, batch: Batch) -> torch.Tensor:
        """(B, D) the single user vector: the mean history embedding through the tower."""
        batch.validate()
        pooled = mean_pool(self.item(batch.history_items), batch.history_mask)  # (B, D)
        return self.tower(pooled)

    def training_interests(self, batch: Batch) -> tuple[torch.Tensor, torch.Tensor]:
        """Training uses the single base vector (K = 1), never the mixture."""
        vectors = self.base_embedding(batch).unsqueeze(1)  # (B, 1, D)
        return vectors, torch.ones(vectors.shape[:2], dtype=torch.bool, device=vectors.device)

    # ---- fitting the mixture ------------------------------------------------------------------------

    @torch.no_grad()
    def prepare_retrieval(self, user_batches: Callable[[], Iterable[Batch]]) -> None:
        """Fit the item clusters and the training users' bank from the current weights.

        Args:
            user_batches: a function yielding batches with one row per training user
                (``batch.users`` = user ids), as the training loop passes before every evaluation.
        """
        config = self.config
        device = self.item.weight.device
        was_training = self.training
        self.eval()
        try:
            points = self.item.weight[FIRST_RANKED:]  # (N - 2, D) rankable items
            if points.shape[0] < config.clusters:
                raise ValueError(f"knn_embed: k-means needs at least clusters={config.clusters} items, "
                                 f"got {points.shape[0]}; lower clusters")
            generator = torch.Generator().manual_seed(config.kmeans_seed)  # private: the global RNG plays no part
            centroids, assignment = kmeans(points, config.clusters, config.kmeans_iterations, generator, init="kmeans++")
            self.centroids.copy_(centroids)
            self.item_cluster.fill_(-1)
            self.item_cluster[FIRST_RANKED:] = assignment
            users, vectors, mixtures = [], [], []
            for batch in user_batches():
                batch = batch.to(device)
                users.append(batch.users)
                vectors.append(F.normalize(self.base_embedding(batch), dim=1))
                mixtures.append(self._raw_mixture(batch))
        finally:
            self.train(was_training)
        if not users:
            raise ValueError("knn_embed: prepare_retrieval got no training users; the bank would be empty")
        self.bank_users = torch.cat(users).long()
        self.bank_vectors = torch.cat(vectors)
        self.bank_mixtures = torch.cat(mixtures)
        self.fitted.fill_(True)
        sizes = torch.bincount(assignment, minlength=config.clusters)
        log.info("knn_embed: %d items in %d clusters (sizes %d..%d), bank of %d training users",
                 points.shape[0], config.clusters, int(sizes.min()), int(sizes.max()), self.bank_users.shape[0])

    def _load_from_state_dict(self, state_dict, prefix, *args, **kwargs):
        for name in self._SIZED_BY_DATA:  # resize the bank to the checkpoint's before copying into it
            saved = state_dict.get(prefix + name)
            if saved is not None:
                current = getattr(self, name)
                setattr(self, name, torch.empty(saved.shape, dtype=current.dtype, device=current.device))
        super()._load_from_state_dict(state_dict, prefix, *args, **kwargs)

    def _check_fitted(self) -> None:
        if not bool(self.fitted):
            raise ValueError("knn_embed: the mixture is not fitted; call prepare_retrieval(user_batches) first "
                             "(the training loop does before every evaluation)")

    # ---- mixtures -------------------------------------------------------------------------------------

    def _raw_mixture(self, batch: Batch) -> torch.Tensor:
        """(B, C) ``p(c|u)``: add-alpha smoothed cluster counts of the history (uniform without any)."""
        c, alpha = self.config.clusters, self.config.pseudo_count
        cluster = self.item_cluster[batch.history_items]  # (B, T), -1 at padding and unknown items
        known = (cluster >= 0) & batch.history_mask
        counts = torch.zeros(cluster.shape[0], c, device=cluster.device)
        counts.scatter_add_(1, cluster.clamp(min=0), known.float())  # (B, C)
        total = counts.sum(dim=1, keepdim=True) + c * alpha
        return torch.where(total > 0, (counts + alpha) / total.clamp(min=1e-12), torch.full_like(counts, 1.0 / c))

    def raw_mixture(self, batch: Batch) -> torch.Tensor:
        """(B, C) the user's own mixture ``p(c|u)`` from its history's engagements."""
        self._check_fitted()
        return self._raw_mixture(batch)

    def neighbors_of(self, user: torch.Tensor, users: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """The ``neighbors`` bank rows most cosine-similar to each user vector, the user itself excluded.

        Args:
            user: (B, D) base user vectors.
            users: (B,) user ids (a bank row with the same id is the user itself).

        Returns:
            ``(rows (B, n), found (B, n) bool)``, ``n = min(neighbors, M)``, best first; ``found`` is False
            where fewer bank users than ``n`` are left once the user itself is excluded.
        """
        unit = F.normalize(user, dim=1)
        b, n = unit.shape[0], min(self.config.neighbors, self.bank_users.shape[0])
        best = torch.full((b, 0), float("-inf"), device=unit.device)
        rows = torch.zeros(b, 0, dtype=torch.long, device=unit.device)
        for start in range(0, self.bank_users.shape[0], BANK_CHUNK):
            similarity = unit @ self.bank_vectors[start : start + BANK_CHUNK].T  # (B, m)
            itself = self.bank_users[start : start + BANK_CHUNK].unsqueeze(0) == users.unsqueeze(1)
            similarity = similarity.masked_fill(itself, float("-inf"))
            index = torch.arange(start, start + similarity.shape[1], device=unit.device).expand(b, -1)
            best, pos = torch.cat([best, similarity], dim=1).topk(min(n, best.shape[1] + similarity.shape[1]), dim=1)
            rows = torch.cat([rows, index], dim=1).gather(1, pos)
        return rows, torch.isfinite(best)

    def _smoothed(self, raw: torch.Tensor, user: torch.Tensor, users: torch.Tensor) -> torch.Tensor:
        beta = self.config.neighbor_weight
        rows, found = self.neighbors_of(user, users)  # (B, n)
        count = found.sum(dim=1, keepdim=True)  # (B, 1)
        neighbour = (self.bank_mixtures[rows] * found.unsqueeze(-1)).sum(1) / count.clamp(min=1)  # (B, C)
        return torch.where(count > 0, (1 - beta) * raw + beta * neighbour, raw)

    def mixture(self, batch: Batch) -> torch.Tensor:
        """(B, C) the locally smoothed mixture ``p~(c|u)`` (rows sum to one)."""
        self._check_fitted()
        return self._smoothed(self._raw_mixture(batch), self.base_embedding(batch), batch.users)

    def _components(self, smoothed: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        weights, clusters = smoothed.sort(dim=1, descending=True, stable=True)
        weights, clusters = weights[:, : self.config.interests], clusters[:, : self.config.interests]  # (B, K)
        return clusters, weights / weights.sum(dim=1, keepdim=True)

    def components(self, batch: Batch) -> tuple[torch.Tensor, torch.Tensor]:
        """The queried components: cluster ids (B, K) by decreasing smoothed weight, and their weights
        (B, K) renormalised to sum to one (the retrieval budgets' proportions)."""
        return self._components(self.mixture(batch))

    def component_queries(self, batch: Batch, user: torch.Tensor, clusters: torch.Tensor) -> torch.Tensor:
        """(B, K, D) unit per-cluster user embeddings of ``clusters`` (B, K) (see the module docstring)."""
        blend = self.config.user_blend
        cluster = self.item_cluster[batch.history_items]  # (B, T)
        member = (cluster.unsqueeze(-1) == clusters.unsqueeze(1)) & batch.history_mask.unsqueeze(-1)  # (B, T, K)
        sums = torch.einsum("btk,btd->bkd", member.float(), self.item(batch.history_items))  # (B, K, D)
        has = member.any(dim=1).unsqueeze(-1)  # (B, K, 1)
        anchor = torch.where(has, F.normalize(sums, dim=-1), F.normalize(self.centroids[clusters], dim=-1))
        return F.normalize((1 - blend) * anchor + blend * F.normalize(user, dim=-1).unsqueeze(1), dim=-1)

    # ---- the multi-interest interface --------------------------------------------------------------

    def interests(self, batch: Batch) -> tuple[torch.Tensor, torch.Tensor]:  # (B, K, D), (B, K) bool
        """Unfitted: the single base vector (K = 1). Fitted: the component queries scaled by their
        weights (the norms carry the weights to ``retrieve``); valid where the weight is positive."""
        user = self.base_embedding(batch)  # (B, D)
        if not bool(self.fitted):
            return user.unsqueeze(1), torch.ones(user.shape[0], 1, dtype=torch.bool, device=user.device)
        smoothed = self._smoothed(self._raw_mixture(batch), user, batch.users)  # (B, C)
        clusters, weights = self._components(smoothed)  # (B, K)
        queries = self.component_queries(batch, user, clusters)  # (B, K, D)
        return queries * weights.unsqueeze(-1), weights > 0

    @torch.no_grad()
    def retrieve(self, users: torch.Tensor, items: torch.Tensor, k: int) -> torch.Tensor:
        """(B, k) distinct item indices: the budgeted union of the components (weights = the vectors'
        norms, see the module docstring). Unfitted (one vector): the plain top-``k``."""
        if users.dim() == 2:
            users = users.unsqueeze(1)
        return budgeted_union(users, items, component_weights(users), k)

    @torch.no_grad()
    def index_search(self, index, users: torch.Tensor, k: int):
        """The budgeted retrieval through a faiss :class:`lifelong.index.ItemIndex` (approximate when the
        index is): the same budgets as :meth:`retrieve`, each component's items from the index. Returns
        (B, k) numpy item ids. With an exact index the *set* equals :meth:`retrieve`'s; the order differs
        (the index orders the list by score, :meth:`retrieve` interleaves the components), so NDCG may."""
        if users.shape[1] == 1:
            return index.search(users[:, 0], k)[1]
        return index.search_budgeted(users, budget_split(component_weights(users), k).numpy())

    @contextmanager
    def single_query(self) -> Iterator[None]:
        """Inside: retrieval with the single base embedding (one query, the whole budget), the
        comparison the paper reports against; the fitted mixture is restored on exit."""
        fitted = bool(self.fitted)
        self.fitted.fill_(False)
        try:
            yield
        finally:
            self.fitted.fill_(fitted)

    def cluster_diversity(self, batch: Batch, k: int) -> dict[str, torch.Tensor]:
        """Distinct item clusters in each user's top-``k`` (B,) for the mixture query (``mixture``) and
        for the single base embedding at the same ``k`` (``single``)."""
        self._check_fitted()
        items = self.item_vectors()
        mixture = self.retrieve(self.user_vectors(batch), items, k)
        single = self.retrieve(self.base_embedding(batch), items, k)
        return {"mixture": distinct_clusters(mixture, self.item_cluster),
                "single": distinct_clusters(single, self.item_cluster)}
