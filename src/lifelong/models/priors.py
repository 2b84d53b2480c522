"""SASRec with prior-conditioned adapter heads: multi-head decoding guided by human priors.

Paper: Zhang et al., Don't Waste It: Guiding Generative Recommenders with Structured Human Priors via
Multi-head Decoding, WWW 2026 (arXiv 2511.10492). The paper is backbone-agnostic (HSTU, HLLM, SASRec
among others); here the backbone is :class:`lifelong.models.sasrec.SASRec`, unchanged.

Mechanism:
  - The backbone's causal output ``h`` (B, T, D) feeds one lightweight residual adapter per value of a
    human prior, ``a_v(h) = h + SiLU(W_v h + b_v)`` with ``W_v``, ``b_v`` zero-initialised, so at
    initialisation every head returns the backbone's vector exactly (Medusa-style heads).
  - Priors (``priors``), each a partition of the target items:
      * ``category``: ``category_heads`` groups of item categories (629 categories on Beauty are too
        many for one head each). Grouping (``category_grouping``): ``balanced`` walks the categories
        from the most to the least catalogue items (ties: lower index first) and puts each into the
        group with the fewest items so far (ties: lower group), so every group's in-group softmax has
        about the same number of items; ``modulo`` puts category ``c`` into group ``c mod G``. The
        balanced grouping needs the item table, so it is computed in :meth:`set_item_categories`;
        until that is called the grouping is ``modulo``. The grouping is a buffer (in checkpoints).
      * ``term``: two heads, long-term (index 0) and short-term (index 1). A target item is
        *short-term-compatible* at a position when its category (not 0, padding) is the category of one
        of the ``short_window`` most recent history events up to that position (the user keeps
        browsing a recent interest) and *long-term-compatible* otherwise (it comes back to an older
        interest or starts a new one).
  - Hierarchical (multiplicative) composition, ``priors = "category,term"``: one head per
    (category group, term) pair, ``2 G`` heads, built as nested residual adapters: the group adapter
    first, then a term adapter of its own per (group, term) pair, ``a_{g,b}(a_g(h))``; head index
    ``2 g + b``. Zero-initialised, the composition is still the identity.
  - Training: the target of every training position is compatible with exactly one head (the priors
    partition the items), and that head's loss is the next-item loss (``loss``) of its vector at the
    positions compatible with it only (compatibility masking); over all heads this is one loss term
    per training position. In-group negatives (``in_group_negatives``, the paper's
    ``neg_sample_by_cat``): with ``full``, the softmax runs over the items compatible with the head
    (the others masked out); with ``sampled``, the shared uniform negatives that are incompatible with
    a row's head are masked out of that row (in-group sampling by rejection). The total loss is the
    backbone's own next-item loss (its plain output, all items, so the backbone keeps training as
    SASRec) plus ``head_loss_weight`` times the heads' loss (``aux_losses["prior_heads"]``).
    A position's head comes from the batch's categories (its next item's, its recent events'); the
    in-group negatives come from the item table of :meth:`set_item_categories` (the same categories
    on prepared data). Until that table is set every item is in category 0, i.e. belongs to the
    long-term head of group 0, and the other heads' in-group softmax holds only their target.
  - Inference: each head gives a user vector at the last position, (B, K, D). The heads' candidate
    lists are merged by ranking every item with the one head it is compatible with (its category
    group and, per user, its term), i.e. merging the heads' lists of their own items by score.
    ``score`` needs each item's category and each user's recent categories, so both travel as extra
    channels of the vectors: ``item_vectors()`` is ``[M_i, cate_i, 0 ... 0]`` (n_items, D + 1 + S)
    and ``user_vectors()`` is ``[v_k, 0, r_1 .. r_S]`` (B, K, D + 1 + S), with ``r`` the categories of
    the user's last ``S = short_window`` events (-1 where none; ``S = 0`` without the term prior).
    The channels are orthogonal, so the plain inner product of the two still equals ``v_k . M_i``.
    ``score`` computes every head's full (B, D) x (D, N) product and keeps, per item, the one of its
    head (K products instead of one, so that at initialisation the scores equal SASRec's bit for bit).

Deviations:
  - Backbone SASRec (the paper's headline backbones are HSTU and HLLM) and only two priors, item
    category groups and long/short term; the paper also uses interaction type, time, item/user
    clusters.
  - The long/short-term compatibility rule (category among the last ``short_window`` events) is ours.
  - Category groups instead of one head per category; the grouping rule above is ours.
  - One loss term per position, no frequency balancing across heads (``weighted_prior_loss``) and no
    temporal discount; the backbone's own next-item loss is added.
  - ``bce`` keeps the loop's negatives (one per position, drawn from the whole catalogue): they are
    not restricted to the head's items. ``sampled`` restricts by rejection, so a row keeps about
    ``negatives`` x (share of the catalogue in its head) negatives rather than ``negatives``.
  - Cost: with ``full`` a training position pays two catalogue softmaxes (backbone and head), about
    2.3x SASRec's step time; inference pays K user x item products instead of one.
  - A head is used only on its own items at inference (no round-robin or quota merging).

Example:
    >>> model = SASRecPriors(PriorHeadsConfig(n_items=10, n_cates=4, embedding_dim=8, max_positions=5,
    ...                                      category_heads=2))
    >>> model.n_heads
    4
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import nn

from lifelong.batch import Batch
from lifelong.models.registry import register
from lifelong.models.retrieval import RetrievalOutput, next_item_loss, next_items
from lifelong.models.sasrec import SASRec, SASRecConfig
from lifelong.streams import STREAMS

PRIORS = ("category", "term", "category,term")
GROUPINGS = ("balanced", "modulo")
LONG, SHORT = 0, 1  # term head indices
NO_CATE = -1  # recent-category channel where the user has no such event


@dataclass
class PriorHeadsConfig(SASRecConfig):
    """Args:
        priors: ``category``, ``term`` or ``category,term`` (hierarchical: group outer, term inner).
        category_heads: ``G``, the number of category groups (one head each), at most ``n_cates``.
        category_grouping: ``balanced`` (by catalogue items per category) or ``modulo``.
        short_window: ``S``, the recent events whose categories make an item short-term-compatible.
        head_loss_weight: weight of the heads' loss next to the backbone's own next-item loss.
        in_group_negatives: restrict the ``full`` / ``sampled`` negatives to the head's items.
        embedding_dim, layers, heads, dropout, max_positions, loss, negatives: see
            :class:`lifelong.models.sasrec.SASRecConfig`.
    """

    model_type = "sasrec_priors"
    priors: str = "category,term"
    category_heads: int = 8
    category_grouping: str = "balanced"
    short_window: int = 3
    head_loss_weight: float = 1.0
    in_group_negatives: bool = True

    def validate(self) -> None:
        super().validate()
        if self.priors not in PRIORS:
            raise ValueError(f"{self.model_type}: priors must be one of {PRIORS}, got {self.priors!r}")
        if not 1 <= self.category_heads <= self.n_cates:
            raise ValueError(f"{self.model_type}: category_heads must be in [1, n_cates={self.n_cates}], "
                             f"got {self.category_heads}")
        if self.category_grouping not in GROUPINGS:
            raise ValueError(f"{self.model_type}: category_grouping must be one of {GROUPINGS}, "
                             f"got {self.category_grouping!r}")
        if self.short_window < 1:
            raise ValueError(f"{self.model_type}: short_window must be at least 1, got {self.short_window}")
        if self.head_loss_weight < 0:
            raise ValueError(f"{self.model_type}: head_loss_weight must be >= 0, got {self.head_loss_weight}")

    @property
    def prior_levels(self) -> list[tuple[str, int]]:
        """(prior, number of values) from the outer to the inner adapter level."""
        sizes = {"category": self.category_heads, "term": 2}
        return [(name, sizes[name]) for name in self.priors.split(",")]


class NestedAdapters(nn.Module):
    """Residual adapters ``x + SiLU(W x + b)`` (zero-initialised), one level per prior: level ``l``
    holds one adapter per value of prior ``l`` *under each head of level l-1* (multiplicative).

    Args:
        dim: ``D``.
        sizes: the number of values of each prior, outer first; ``K = prod(sizes)`` heads.

    Example:
        >>> heads = NestedAdapters(8, [3, 2])
        >>> h = torch.randn(5, 8)
        >>> torch.equal(heads(h), h.unsqueeze(1).expand(5, 6, 8))
        True
    """

    def __init__(self, dim: int, sizes: list[int]) -> None:
        super().__init__()
        self.sizes = list(sizes)
        self.weights = nn.ParameterList()
        self.biases = nn.ParameterList()
        parents = 1
        for size in self.sizes:
            self.weights.append(nn.Parameter(torch.zeros(parents, size, dim, dim)))  # (P, V, D_out, D_in)
            self.biases.append(nn.Parameter(torch.zeros(parents, size, dim)))  # (P, V, D)
            parents *= size

    def forward(self, hidden: torch.Tensor) -> torch.Tensor:
        """hidden (N, D) -> (N, K, D), head ``k = ((v_1 * V_2) + v_2) * V_3 + ...`` (outer value first)."""
        x = hidden.unsqueeze(1)  # (N, 1, D)
        for weight, bias in zip(self.weights, self.biases):
            update = torch.einsum("npd,pved->npve", x, weight) + bias  # (N, P, V, D)
            x = (x.unsqueeze(2) + F.silu(update)).flatten(1, 2)  # (N, P*V, D)
        return x


@register(PriorHeadsConfig)
class SASRecPriors(SASRec):
    """SASRec backbone + prior-conditioned adapter heads (see the module docstring)."""

    def __init__(self, config: PriorHeadsConfig) -> None:
        super().__init__(config)
        levels = config.prior_levels
        self.use_category = any(name == "category" for name, _ in levels)
        self.use_term = any(name == "term" for name, _ in levels)
        self.groups = config.category_heads if self.use_category else 1
        self.adapters = NestedAdapters(config.embedding_dim, [size for _, size in levels])
        self.n_heads = self.groups * (2 if self.use_term else 1)
        self.recent_width = config.short_window if self.use_term else 0
        # item vocabulary index -> category vocabulary index; category -> group (both in checkpoints)
        self.register_buffer("item_cate", torch.zeros(config.n_items, dtype=torch.long))
        self.register_buffer("cate_group", torch.arange(config.n_cates, dtype=torch.long) % self.groups)

    # --- the item -> category table and the category grouping -----------------------------------------

    def set_item_categories(self, cates: torch.Tensor) -> None:
        """Store the category of every item vocabulary index (``(n_items,)`` int, 0 for padding/unknown)
        and, with ``category_grouping = balanced``, group the categories by catalogue items."""
        n_items, n_cates = self.config.n_items, self.config.n_cates
        if cates.shape != (n_items,) or cates.dtype not in (torch.int64, torch.int32):
            raise ValueError(f"sasrec_priors: set_item_categories expects an ({n_items},) integer tensor "
                             f"(one category per item vocabulary index), got {tuple(cates.shape)} {cates.dtype}")
        if cates.numel() and (int(cates.min()) < 0 or int(cates.max()) >= n_cates):
            raise ValueError(f"sasrec_priors: item categories must lie in [0, n_cates={n_cates}), got "
                             f"[{int(cates.min())}, {int(cates.max())}]")
        self.item_cate.copy_(cates.to(self.item_cate))
        if self.config.category_grouping == "balanced":
            self.cate_group.copy_(balanced_groups(cates[2:].long(), n_cates, self.groups))

    # --- compatibility --------------------------------------------------------------------------------

    def head_values(self, heads):
        """Head index (int or tensor) -> (category group, term) (term 0 = long, 1 = short; 0 without
        that prior)."""
        terms = 2 if self.use_term else 1
        return heads // terms, heads % terms

    def _heads_of(self, cates: torch.Tensor, short: torch.Tensor) -> torch.Tensor:
        """The head an item of category ``cates`` belongs to, given its short-term flag (same shapes)."""
        group = self.cate_group[cates] if self.use_category else torch.zeros_like(cates)
        return group * 2 + short.long() if self.use_term else group

    def recent_categories(self, batch: Batch) -> torch.Tensor:
        """(B, T, S) categories of the ``S`` most recent events up to and including each position
        (0 where there is none); ``S = 0`` without the term prior."""
        cates = batch.history_cates * batch.history_mask  # (B, T)
        s = self.recent_width
        if s == 0:
            return cates.new_zeros(*cates.shape, 0)
        padded = F.pad(cates, (s - 1, 0))  # (B, T + S - 1)
        return padded.unfold(1, s, 1)  # (B, T, S): position t sees events t-S+1 .. t

    @staticmethod
    def _is_recent(recent: torch.Tensor, cates: torch.Tensor) -> torch.Tensor:
        """recent (N, S) categories (0 or -1 = none), cates (N or 1, M) -> (N, M) bool: the category
        is one of the row's recent ones (category 0, padding, never is)."""
        hit = torch.zeros(recent.shape[0], cates.shape[1], dtype=torch.bool, device=recent.device)
        for s in range(recent.shape[1]):  # S is small: (N, M) per step, never (N, S, M)
            hit |= recent[:, s : s + 1] == cates
        return hit & (cates > 0)

    def position_heads(self, batch: Batch) -> tuple[torch.Tensor, torch.Tensor]:
        """The head every training position's target is compatible with.

        Returns:
            heads: (B, T) head index at real positions (0 at padding).
            mask: (B, T) bool, the real positions (each has a next item).
        """
        _, mask = next_items(batch)
        next_cates = torch.zeros_like(batch.history_cates)
        next_cates[:, :-1] = batch.history_cates[:, 1:]
        last = batch.lengths - 1
        rows = torch.arange(next_cates.shape[0], device=next_cates.device)
        keep = last >= 0
        next_cates[rows[keep], last[keep]] = batch.target_cates[keep]
        next_cates = next_cates * mask  # (B, T)
        recent = self.recent_categories(batch)  # (B, T, S)
        b, t = next_cates.shape
        short = (self._is_recent(recent.reshape(b * t, -1), next_cates.reshape(b * t, 1)).view(b, t)
                 if self.use_term else torch.zeros_like(mask))
        return self._heads_of(next_cates, short) * mask, mask

    def compatible_categories(self, heads: torch.Tensor, recent: torch.Tensor) -> torch.Tensor:
        """heads (N,), recent (N, S) categories (0 = none) -> (N, n_cates) bool: an item of category
        ``c`` belongs to head ``heads[n]`` at that position."""
        group, term = self.head_values(heads)
        ok = torch.ones(heads.shape[0], self.config.n_cates, dtype=torch.bool, device=heads.device)
        if self.use_category:
            ok &= self.cate_group.unsqueeze(0) == group.unsqueeze(1)
        if self.use_term:
            in_recent = torch.zeros_like(ok).scatter_(1, recent.clamp(min=0), True)
            in_recent[:, 0] = False  # category 0 (padding) is never a recent one
            ok &= in_recent == (term == SHORT).unsqueeze(1)
        return ok

    def compatible_items(self, heads: torch.Tensor, recent: torch.Tensor, items: torch.Tensor) -> torch.Tensor:
        """heads (N,), recent (N, S) categories (0 = none), items (M,) vocabulary indices -> (N, M)
        bool: item ``m`` belongs to head ``heads[n]`` at that position."""
        return self.compatible_categories(heads, recent)[:, self.item_cate[items]]

    # --- user and item vectors ------------------------------------------------------------------------

    def head_vectors(self, batch: Batch) -> torch.Tensor:
        """(B, K, D) every head's user vector at the last real position."""
        return self.adapters(self._last(self.sequence(batch), batch))

    def _with_channels(self, heads: torch.Tensor, batch: Batch) -> torch.Tensor:
        """heads (B, K, D) -> (B, K, D + 1 + S) ``[v_k, 0, recent categories (-1 = none)]``."""
        b, k, _ = heads.shape
        recent = self._last(self.recent_categories(batch), batch)  # (B, S)
        recent = torch.where(recent > 0, recent, torch.full_like(recent, NO_CATE)).to(heads.dtype)
        channels = torch.cat([heads.new_zeros(b, 1), recent], dim=1)  # (B, 1 + S)
        return torch.cat([heads, channels.unsqueeze(1).expand(b, k, -1)], dim=2)

    def user_vectors(self, batch: Batch) -> torch.Tensor:
        return self._with_channels(self.head_vectors(batch), batch)

    def item_vectors(self) -> torch.Tensor:
        """(n_items, D + 1 + S) ``[M_i, cate_i, 0 ... 0]``."""
        weight = self.item.weight
        extra = weight.new_zeros(weight.shape[0], 1 + self.recent_width)
        extra[:, 0] = self.item_cate.to(weight.dtype)
        return torch.cat([weight, extra], dim=1)

    def score(self, users: torch.Tensor, items: torch.Tensor) -> torch.Tensor:
        """users (B, K, D + 1 + S), items (N, D + 1 + S) -> (B, N): every item scored by the head it
        belongs to (its category group; short-term when its category is among the user's recent ones),
        so ranking by it merges the heads' lists of their own items."""
        d = self.config.embedding_dim
        if users.dim() != 3 or users.shape[1] != self.n_heads or users.shape[2] != items.shape[1]:
            raise ValueError(f"sasrec_priors: score expects users (B, {self.n_heads}, {d + 1 + self.recent_width}) "
                             f"from user_vectors() and items from item_vectors(), got {tuple(users.shape)} and "
                             f"{tuple(items.shape)}")
        vectors, embeddings = users[..., :d], items[:, :d]  # (B, K, D), (N, D)
        cates = items[:, d].round().long()  # (N,)
        recent = users[:, 0, d + 1 :].round().long()  # (B, S), -1 = none
        short = self._is_recent(recent, cates.unsqueeze(0)) if self.use_term else None  # (B, N)
        item_group = self.cate_group[cates] if self.use_category else torch.zeros_like(cates)  # (N,)
        scores = vectors.new_empty(users.shape[0], items.shape[0])
        terms = 2 if self.use_term else 1
        for group in range(self.groups):
            # each item is scored once per term head of its own group only: at most two (B, D) x (D, N_g)
            # products per group, so the work is that of one or two backbone products, not K
            columns = (item_group == group).nonzero().squeeze(1)  # (N_g,)
            if columns.numel() == 0:
                continue
            own = embeddings[columns].T  # (D, N_g)
            part = vectors[:, group * terms + LONG] @ own  # (B, N_g)
            if self.use_term:
                part = torch.where(short[:, columns], vectors[:, group * terms + SHORT] @ own, part)
            scores[:, columns] = part
        return scores

    # --- training -------------------------------------------------------------------------------------

    def forward(self, batch: Batch) -> RetrievalOutput:
        batch.validate()
        hidden = self.sequence(batch)  # (B, T, D)
        users = self._with_channels(self.adapters(self._last(hidden, batch)), batch)  # (B, K, D + 1 + S)
        if not self.training:
            return RetrievalOutput(user_vectors=users)
        config = self.config
        positives, mask = self.training_targets(batch)
        heads, _ = self.position_heads(batch)
        negatives = batch.history_negative_items[mask] if batch.history_negative_items is not None else None
        hidden, positives, heads = hidden[mask], positives[mask], heads[mask]  # (N, D), (N,), (N,)
        backbone = next_item_loss(hidden, positives, self.item.weight, config.loss, negatives=negatives,
                                  n_sampled=config.negatives)
        own = self.adapters(hidden)[torch.arange(heads.shape[0], device=heads.device), heads]  # (N, D)
        recent = self.recent_categories(batch)[mask]  # (N, S)
        head_loss = config.head_loss_weight * self.head_loss(own, positives, heads, recent, negatives)
        return RetrievalOutput(user_vectors=users, loss=backbone + head_loss, aux_losses={"prior_heads": head_loss})

    def head_loss(self, hidden: torch.Tensor, positives: torch.Tensor, heads: torch.Tensor, recent: torch.Tensor,
                  negatives: torch.Tensor | None = None) -> torch.Tensor:
        """The next-item loss of every position under its own head, with in-group negatives.

        Args:
            hidden: (N, D) each position's own head vector.
            positives: (N,) next items.
            heads: (N,) the head each position's next item is compatible with.
            recent: (N, S) the position's recent categories (0 = none).
            negatives: (N,) one negative per position, for ``bce``.
        """
        kind, items = self.config.loss, self.item.weight
        if kind == "bce" or not self.config.in_group_negatives:
            return next_item_loss(hidden, positives, items, kind, negatives=negatives, n_sampled=self.config.negatives)
        rows = torch.arange(positives.shape[0], device=positives.device)
        if kind == "full":
            drop = ~self.compatible_categories(heads, recent)[:, self.item_cate]  # (N, n_items)
            drop[rows, positives] = False  # the target always stays in its softmax
            drop[:, :2] = True  # padding and unknown are never the answer
            logits = (hidden @ items.T).masked_fill_(drop, float("-inf"))  # (N, n_items)
            return F.cross_entropy(logits, positives)
        if kind == "sampled":
            sampled = torch.randint(2, items.shape[0], (self.config.negatives,), device=hidden.device,
                                    generator=STREAMS("negatives", hidden.device))  # (S,)
            keep = self.compatible_items(heads, recent, sampled) & (sampled.unsqueeze(0) != positives.unsqueeze(1))
            pos = (hidden * items[positives]).sum(-1, keepdim=True)  # (N, 1)
            neg = (hidden @ items[sampled].T).masked_fill(~keep, float("-inf"))  # (N, S)
            return F.cross_entropy(torch.cat([pos, neg], dim=1), torch.zeros_like(positives))
        raise ValueError(f"sasrec_priors: unknown loss {kind!r}")


def balanced_groups(item_cates: torch.Tensor, n_cates: int, groups: int) -> torch.Tensor:
    """Group categories so the groups hold about the same number of items.

    Categories go from the most to the least items (ties: lower index first), each into the group with
    the fewest items so far (ties: lower group index).

    Args:
        item_cates: (M,) the category of every rankable item.
        n_cates: the category vocabulary size.
        groups: ``G``.

    Returns:
        (n_cates,) int64 group of every category.

    Example:
        >>> balanced_groups(torch.tensor([2, 2, 2, 3, 3, 4]), 5, 2).tolist()
        [0, 0, 0, 1, 1]
    """
    counts = torch.bincount(item_cates, minlength=n_cates)[:n_cates].tolist()
    order = sorted(range(n_cates), key=lambda c: (-counts[c], c))
    load = [0] * groups
    out = [0] * n_cates
    for cate in order:
        group = min(range(groups), key=lambda g: (load[g], g))
        out[cate] = group
        load[group] += counts[cate]
    return torch.tensor(out, dtype=torch.long)
