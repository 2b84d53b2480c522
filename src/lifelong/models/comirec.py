"""ComiRec: controllable multi-interest retrieval, with a dynamic-routing (DR) and a self-attentive (SA)
interest extractor and a diversity-controlled aggregation module.

Paper: Cen, Zhang, Zou, Zhou, Yang and Tang, Controllable Multi-Interest Framework for Recommendation,
KDD 2020 (arXiv 2005.09347); official code ``THUDM/ComiRec`` (TensorFlow 1.14).

Mechanism:
  - **ComiRec-DR** (``comirec_dr``): CapsNet dynamic routing from the ``T`` behavior capsules (the
    history's item embeddings ``e_j``) to ``K`` interest capsules.
      - Per-pair transform: every (behavior position ``j``, interest ``k``) pair has its own ``D x D``
        map, ``u_jk = W_jk e_j``; the weights are one ``(L, K, D, D)`` tensor (``L = max_positions``), a
        behavior's map chosen by its position in the (left-aligned) history.
      - Routing logits ``b_jk`` start at zero; each of ``routing_iterations`` (3) iterations computes
        the coupling ``c_j = softmax_k(b_j)`` (over the interests, per behavior; zero for padding, so
        padding contributes nothing), the capsule ``s_k = sum_j c_jk u_jk``, ``v_k = squash(s_k) =
        |s|^2 / (1 + |s|^2) s / |s|`` and, except after the last, ``b_jk += <u_jk, v_k>``.
      - Stop-gradient (CapsNet / official-code practice): every iteration but the last routes with
        ``stop_gradient(u)``, so the couplings carry no gradient and the weights learn only through the
        final ``v_k = squash(sum_j c_jk u_jk)``.
      - All ``K`` interests are valid for every user.
  - **ComiRec-SA** (``comirec_sa``): ``H = E + P`` (item embeddings plus learned position embeddings),
    ``A = softmax_T(w_2^T tanh(W_1 H^T))^T``: ``K`` attention heads over the behaviors (padding
    masked), and ``V_u = A^T E``: each interest a weighted mean of the history's item embeddings (see
    the deviations for ``E`` vs ``H`` here). ``W_1`` has ``attention_hidden`` rows (the official
    ``4 D`` by default).
  - Training (the base class): the target item picks the interest with the largest inner product
    (``label_power = inf``) and that vector is trained by a sampled softmax.
  - **Aggregation module** (:func:`aggregate`, the models' ``retrieve``): each interest retrieves its
    top-``k`` items; the candidates are their union, scored ``f(u, i) = max_k <v_k, e_i>``; then ``k``
    items are picked greedily, each maximising the gain of ``Q(u, S) = sum_{i in S} f(u, i) + lambda
    sum_{i<j in S} g(i, j)`` with ``g(i, j) = 1`` for items of different categories, i.e. the gain
    of candidate ``i`` is ``f(u, i) + lambda * #{j in S: cate(j) != cate(i)}``. ``lambda =
    diversity``; with ``lambda = 0`` the list is the base merge (the top ``k`` of ``f``; ``retrieve``
    then calls the base merge itself, so even exact score ties are ordered alike). Categories
    come from :meth:`ComiRecModel.set_item_categories` (stored in checkpoints).
  - :func:`category_diversity`: the paper's diversity of a list, the share of its item pairs in
    different categories, averaged over users.

Deviations and choices where the paper is silent:
  - DR transform init: ``N(0, 1/D)`` per entry, so ``|W e| ~ |e|`` (the official code draws
    ``N(0, 1)``); item embeddings ``N(0, 1/D)`` as the other retrieval models here.
  - DR has no ReLU projection after routing (the official ComiRec-DR default; MIND has one).
  - SA values: ``V_u = A^T E`` with the item embeddings only, positions used only inside the attention,
    as the official code does (``interest_emb = matmul(att_w, item_list_emb)``); the paper's notation
    leaves it open whether ``H`` in ``V_u = H A`` includes the positions. ``positions_in_values = True``
    gives ``V_u = A^T (E + P)``.
  - SA ``W_1`` has a bias (the official dense layer); ``w_2`` has none (a per-head constant does not
    change a softmax over the behaviors, so it would never be trained).
  - Histories are left-aligned (position 0 = the oldest kept event), as in the official data
    iterator; trailing padding beyond ``max_positions`` is dropped, a real event there is an error.
  - Aggregation: a candidate retrieved by several interests appears once; ties of the gain go to the
    higher ``f`` (then the lower item index). The official code's gain is ``f - lambda * #same
    category``, the same choice at every step (``#different = |S| - #same``). Items of unknown
    category (1) count as one category.

Example:
    >>> model = ComiRecSA(ComiRecSAConfig(n_items=10, n_cates=4, embedding_dim=8, max_positions=5))
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import nn

from lifelong.batch import Batch
from lifelong.models.multi_interest import FIRST_RANKED, MultiInterestConfig, MultiInterestModel
from lifelong.models.registry import register
from lifelong.nn.capsule import dynamic_routing
from lifelong.nn.embedding import init_item_embedding


@dataclass
class ComiRecConfig(MultiInterestConfig):
    """Shared fields of ComiRec-DR and ComiRec-SA.

    Args:
        max_positions: ``L``, the longest history (DR: positions of the per-pair transforms; SA:
            position embeddings); at least the training ``--max-length``.
        diversity: ``lambda >= 0`` of the aggregation module (0 = the plain merge by score).
        (embedding_dim, interests, label_power, loss, negatives: see :class:`MultiInterestConfig`;
        paper: D = 64, K = 4, hard selection, sampled softmax.)
    """

    max_positions: int = 50
    diversity: float = 0.0

    def validate(self) -> None:
        super().validate()
        if self.max_positions < 1:
            raise ValueError(f"{self.model_type}: max_positions must be at least 1, got {self.max_positions}")
        if not self.diversity >= 0:
            raise ValueError(f"{self.model_type}: diversity (lambda) must be >= 0, got {self.diversity}")


@dataclass
class ComiRecDRConfig(ComiRecConfig):
    """Args:
        routing_iterations: dynamic-routing iterations (paper 3).
        (max_positions, diversity: see :class:`ComiRecConfig`.)
    """

    model_type = "comirec_dr"
    routing_iterations: int = 3

    def validate(self) -> None:
        super().validate()
        if self.routing_iterations < 1:
            raise ValueError(f"comirec_dr: routing_iterations must be at least 1, got {self.routing_iterations}")


@dataclass
class ComiRecSAConfig(ComiRecConfig):
    """Args:
        attention_hidden: rows of ``W_1``; 0 = ``4 * embedding_dim`` (the official code).
        positions_in_values: ``V_u = A^T (E + P)`` instead of the official ``A^T E``.
        (max_positions, diversity: see :class:`ComiRecConfig`.)
    """

    model_type = "comirec_sa"
    attention_hidden: int = 0
    positions_in_values: bool = False

    def validate(self) -> None:
        super().validate()
        if self.attention_hidden < 0:
            raise ValueError(f"comirec_sa: attention_hidden must be >= 0 (0 = 4 * embedding_dim), "
                             f"got {self.attention_hidden}")


# --- the aggregation module --------------------------------------------------------------------------


@torch.no_grad()
def aggregate(users: torch.Tensor, items: torch.Tensor, k: int, diversity: float = 0.0,
              cates: torch.Tensor | None = None) -> torch.Tensor:
    """ComiRec's aggregation module: (B, k) item indices, in the order picked.

    Args:
        users: (B, K, D) interest vectors (or (B, D), one interest).
        items: (N, D) item vectors; rows 0 and 1 (padding, unknown) are never retrieved.
        k: list length (also each interest's candidate count).
        diversity: ``lambda >= 0``; 0 gives the top ``k`` of ``f(u, i) = max_k <v_k, e_i>`` (the base
            merge, up to the order of exactly tied scores: here the lower item index first).
        cates: (N,) category of every item, needed when ``diversity > 0``.

    Example:
        >>> users = torch.tensor([[[1.0, 0.0], [0.0, 1.0]]])  # one user, two interests
        >>> items = torch.tensor([[0.0, 0.0], [0.0, 0.0], [3.0, 0.0], [2.9, 0.0], [0.0, 1.0]])
        >>> cates = torch.tensor([0, 1, 2, 2, 3])
        >>> aggregate(users, items, 2).tolist(), aggregate(users, items, 2, 5.0, cates).tolist()
        ([[2, 3]], [[2, 4]])
    """
    if users.dim() == 2:
        users = users.unsqueeze(1)
    if diversity > 0 and cates is None:
        raise ValueError("aggregate: diversity > 0 needs the item categories (cates)")
    per_interest = torch.einsum("bkd,nd->bkn", users, items)  # (B, K, N), as RetrievalModel.score
    per_interest[:, :, :FIRST_RANKED] = float("-inf")
    best = per_interest.amax(dim=1)  # (B, N) f(u, i)
    candidates = per_interest.topk(k, dim=2).indices.flatten(1)  # (B, K k), each interest's top k
    candidates = candidates.sort(dim=1).values
    score = best.gather(1, candidates)  # (B, C)
    duplicate = torch.zeros_like(candidates, dtype=torch.bool)
    duplicate[:, 1:] = candidates[:, 1:] == candidates[:, :-1]
    score = score.masked_fill(duplicate, float("-inf"))  # one copy of each candidate
    score, order = score.sort(dim=1, descending=True, stable=True)  # ties: lower index first
    candidates = candidates.gather(1, order)
    if diversity == 0:
        return candidates[:, :k]  # the greedy pick of Q with lambda = 0 is the order by f
    cand_cates = cates.to(candidates.device)[candidates]  # (B, C)
    rows = torch.arange(candidates.shape[0], device=candidates.device)
    same = torch.zeros_like(score)  # (B, C) picked items of the candidate's category
    taken = torch.zeros_like(candidates, dtype=torch.bool)
    picked = torch.empty(candidates.shape[0], k, dtype=candidates.dtype, device=candidates.device)
    for step in range(k):
        gain = score + diversity * (step - same)  # f(u, i) + lambda * #{j in S: cate(j) != cate(i)}
        choice = gain.masked_fill(taken, float("-inf")).argmax(dim=1)  # (B,) first max = higher f
        picked[:, step] = candidates[rows, choice]
        taken[rows, choice] = True
        same += cand_cates == cand_cates[rows, choice].unsqueeze(1)
    return picked


def category_diversity(top: torch.Tensor, cates: torch.Tensor) -> float:
    """ComiRec's diversity of retrieved lists on tensors (the definition of
    :func:`lifelong.beyond.category_diversity`, which models do not import): the share of item pairs of a
    list in different categories, averaged over the lists (0 for lists shorter than 2; an id outside
    ``cates``, e.g. -1 for a missing entry, takes the category of the nearest valid id, 0 for padding).

    Example:
        >>> round(category_diversity(torch.tensor([[2, 3, 4]]), torch.tensor([0, 1, 5, 5, 6])), 4)
        0.6667
    """
    c = cates[top.long().clamp(0, cates.shape[0] - 1)]  # (N, K)
    k = c.shape[1]
    if k < 2:
        return 0.0
    same = (c[:, :, None] == c[:, None, :]).sum(dim=(1, 2)) - k  # ordered same-category pairs, self excluded
    return float((1.0 - same.double() / (k * (k - 1))).mean())


# --- the models ---------------------------------------------------------------------------------------


class ComiRecModel(MultiInterestModel):
    """What ComiRec-DR and ComiRec-SA share: item embeddings, the history cut to ``max_positions``, the
    item -> category table and the aggregation module as ``retrieve``."""

    config: ComiRecConfig

    def _init_items(self, config: ComiRecConfig) -> None:
        d = config.embedding_dim
        self.item = nn.Embedding(config.n_items, d, padding_idx=0)
        init_item_embedding(self.item, std=d ** -0.5)
        # item vocabulary index -> category vocabulary index (in checkpoints; all 0 = not set)
        self.register_buffer("item_cate", torch.zeros(config.n_items, dtype=torch.long))

    def set_item_categories(self, cates: torch.Tensor) -> None:
        """Store the category of every item vocabulary index (``(n_items,)`` int, 0 for padding/unknown)."""
        n_items, n_cates = self.config.n_items, self.config.n_cates
        if cates.shape != (n_items,) or cates.dtype not in (torch.int64, torch.int32):
            raise ValueError(f"{self.config.model_type}: set_item_categories expects an ({n_items},) integer "
                             f"tensor (one category per item vocabulary index), got {tuple(cates.shape)} {cates.dtype}")
        if cates.numel() and (int(cates.min()) < 0 or int(cates.max()) >= n_cates):
            raise ValueError(f"{self.config.model_type}: item categories must lie in [0, n_cates={n_cates}), got "
                             f"[{int(cates.min())}, {int(cates.max())}]")
        self.item_cate.copy_(cates.to(self.item_cate))

    def history(self, batch: Batch) -> tuple[torch.Tensor, torch.Tensor]:
        """(B, T) items and mask with ``T <= max_positions`` (trailing padding beyond it dropped)."""
        items, mask = batch.history_items, batch.history_mask
        limit = self.config.max_positions
        if items.shape[1] > limit:
            if bool(mask[:, limit:].any()):
                raise ValueError(f"{self.config.model_type}: a history of {int(batch.lengths.max())} events "
                                 f"exceeds max_positions={limit}; raise max_positions or lower --max-length")
            items, mask = items[:, :limit], mask[:, :limit]
        return items, mask

    @torch.no_grad()
    def retrieve(self, users: torch.Tensor, items: torch.Tensor, k: int) -> torch.Tensor:
        """The aggregation module (:func:`aggregate`) with ``lambda = config.diversity``: (B, k)."""
        diversity = self.config.diversity
        if diversity == 0:  # the greedy order is then the base merge; calling it orders exact score ties alike
            return super().retrieve(users, items, k)
        if not bool(self.item_cate.any()):
            raise ValueError(f"{self.config.model_type}: diversity = {diversity} needs the item categories; "
                             "call set_item_categories(cates) first")
        return aggregate(users, items, k, diversity, self.item_cate)


@register(ComiRecDRConfig)
class ComiRecDR(ComiRecModel):
    """Dynamic routing with per-(position, interest) transforms: ``K`` interest capsules per user.

    Example:
        >>> model = ComiRecDR(ComiRecDRConfig(n_items=10, n_cates=4, embedding_dim=8, max_positions=5))
        >>> tuple(model.transform.shape)
        (5, 4, 8, 8)
    """

    def __init__(self, config: ComiRecDRConfig) -> None:
        super().__init__()
        self.config = config
        d = config.embedding_dim
        self._init_items(config)
        # W[j, k]: the map from the behavior at position j to interest k (L, K, D_out, D_in)
        self.transform = nn.Parameter(torch.randn(config.max_positions, config.interests, d, d) * d ** -0.5)

    def predictions(self, batch: Batch) -> tuple[torch.Tensor, torch.Tensor]:
        """``u_jk = W_jk e_j``: (B, T, K, D), and the (B, T) mask."""
        items, mask = self.history(batch)
        history = self.item(items)  # (B, T, D), zero at padding
        u = torch.einsum("tkoi,bti->btko", self.transform[: items.shape[1]], history)
        return u, mask

    def routing(self, batch: Batch) -> tuple[torch.Tensor, torch.Tensor]:
        """Interest capsules (B, K, D) and couplings (R, B, T, K): routing from zero logits, stop-gradient
        before the last round (:func:`lifelong.nn.capsule.dynamic_routing`)."""
        u, mask = self.predictions(batch)
        return dynamic_routing(u, mask, self.config.routing_iterations, stop_gradient_early=True)

    def interests(self, batch: Batch) -> tuple[torch.Tensor, torch.Tensor]:
        capsules, _ = self.routing(batch)
        return capsules, torch.ones(capsules.shape[:2], dtype=torch.bool, device=capsules.device)


@register(ComiRecSAConfig)
class ComiRecSA(ComiRecModel):
    """Multi-head additive self-attention: ``K`` attention-weighted means of the history.

    Example:
        >>> model = ComiRecSA(ComiRecSAConfig(n_items=10, n_cates=4, embedding_dim=8, max_positions=5))
        >>> model.hidden.out_features
        32
    """

    def __init__(self, config: ComiRecSAConfig) -> None:
        super().__init__()
        self.config = config
        d = config.embedding_dim
        self._init_items(config)
        self.position = nn.Embedding(config.max_positions, d)
        nn.init.normal_(self.position.weight, std=d ** -0.5)
        self.hidden = nn.Linear(d, config.attention_hidden or 4 * d)  # W_1 (with the official bias)
        self.heads = nn.Linear(self.hidden.out_features, config.interests, bias=False)  # w_2, one column per head

    def attention(self, batch: Batch) -> tuple[torch.Tensor, torch.Tensor]:
        """``A^T``: (B, K, T) weights (each head sums to one over the real behaviors, 0 at padding), and
        the values (B, T, D) they average."""
        items, mask = self.history(batch)
        embedded = self.item(items)  # (B, T, D) E
        h = embedded + self.position.weight[: items.shape[1]]  # (B, T, D) H = E + P
        logits = self.heads(torch.tanh(self.hidden(h))).transpose(1, 2)  # (B, K, T)
        logits = logits.masked_fill(~mask.unsqueeze(1), torch.finfo(logits.dtype).min)
        weights = torch.softmax(logits, dim=2) * mask.unsqueeze(1)  # exactly 0 at padding
        values = h * mask.unsqueeze(-1) if self.config.positions_in_values else embedded
        return weights, values

    def interests(self, batch: Batch) -> tuple[torch.Tensor, torch.Tensor]:
        weights, values = self.attention(batch)
        vectors = weights @ values  # (B, K, D) V_u = A^T E
        return vectors, torch.ones(vectors.shape[:2], dtype=torch.bool, device=vectors.device)
