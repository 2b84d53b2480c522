"""Features beyond ids, embedded by one block that every ranking model shares.

A dataset declares its features in the manifest (:data:`lifelong.dataset.store.FEATURE_KINDS`), in three
groups; :class:`FeatureEmbedding` turns them into vectors:

- ``item``: an item is its id and category embeddings (as in :class:`BehaviorEmbedding`), followed by
  the mean of its attribute-bag embeddings (``bag``) and a linear projection of its content vector
  (``dense``). History behaviors and candidates are embedded alike, so target attention still compares
  like with like. Width ``dim * (2 + bag + dense)``.
- ``context``: the event's behavior type (``categorical``), an embedding of the item's full width
  *added* to the history behavior (like a position embedding). Candidates have no context.
- ``user``: one ``dim``-wide vector per feature (a categorical one's embedding; a numeric one's
  standardised value times a learned vector, plus a bias), concatenated: ``user_dim`` wide. A model
  concatenates it to the input of its final MLP.

A model reads the groups its config turns on (``RankingConfig.feature_groups``); with none, the block is
exactly :class:`BehaviorEmbedding` (same parameters, same names: old checkpoints load).
"""

from __future__ import annotations

import torch
from torch import nn

from lifelong.nn.embedding import init_item_embedding
from lifelong.nn.layers import BehaviorEmbedding

GROUPS = ("user", "item", "context")


class FeatureEmbedding(BehaviorEmbedding):
    """Item id + category (+ attribute bag, content vector), event context, user features.

    Args:
        n_items, n_cates, dim: as :class:`BehaviorEmbedding`.
        features: the dataset's feature declarations (``manifest["features"]``).
        groups: which groups to read (a subset of ``user``, ``item``, ``context``).

    Example:
        >>> features = [{"name": "attr", "group": "item", "kind": "bag", "vocab_size": 6, "max_length": 2},
        ...             {"name": "age", "group": "user", "kind": "numeric", "mean": 30.0, "std": 10.0}]
        >>> emb = FeatureEmbedding(10, 4, 3, features, groups=("user", "item"))
        >>> emb.out_dim, emb.user_dim
        (9, 3)
        >>> emb.items(torch.tensor([[2, 0]]), torch.tensor([[1, 0]]), torch.tensor([[[2, 3], [0, 0]]])).shape
        torch.Size([1, 2, 9])
    """

    def __init__(self, n_items: int, n_cates: int, dim: int, features: list[dict] | tuple = (),
                 groups: tuple[str, ...] = GROUPS) -> None:
        super().__init__(n_items, n_cates, dim)
        unknown = [g for g in groups if g not in GROUPS]
        if unknown:
            raise ValueError(f"feature groups must be among {GROUPS}, got {unknown}")
        declared = {(f["group"], f["name"]): f for f in features if f["group"] in groups}
        bag = declared.get(("item", "attr"))
        dense = declared.get(("item", "embedding"))
        behavior = declared.get(("context", "behavior"))
        self.attr = _table(bag["vocab_size"], dim) if bag else None
        self.dense = nn.Linear(int(dense["dim"]), dim) if dense else None
        self.out_dim = dim * (2 + (bag is not None) + (dense is not None))
        self.behavior = _table(behavior["vocab_size"], self.out_dim) if behavior else None
        self.user_specs = [f for f in features if f["group"] == "user" and "user" in groups]
        self.user_tables = nn.ModuleDict({f["name"]: _table(f["vocab_size"], dim)
                                          for f in self.user_specs if f["kind"] == "categorical"})
        self.user_numeric = nn.ModuleDict({f["name"]: nn.Linear(1, dim)
                                           for f in self.user_specs if f["kind"] == "numeric"})
        self.user_dim = dim * len(self.user_specs)

    @classmethod
    def of(cls, config) -> "FeatureEmbedding":
        """The block a ranking config asks for: its vocabulary sizes, ``embedding_dim``, the dataset's
        declarations and the groups it turns on (``RankingConfig.feature_groups``)."""
        return cls(config.n_items, config.n_cates, config.embedding_dim, config.features, config.feature_groups)

    def items(self, items: torch.Tensor, cates: torch.Tensor, attrs: torch.Tensor | None = None,
              dense: torch.Tensor | None = None) -> torch.Tensor:
        """Items at any positions S: (S,) ids and categories, S + (A,) bags, S + (D,) vectors -> S + (out_dim,)."""
        parts = [self.item(items), self.cate(cates)]
        if self.attr is not None:
            if attrs is None:
                raise ValueError("this model reads the item attribute bags (the `item` feature group) and the "
                                 "batch has none: build batches with Collator(features=('item', ...)), or turn the "
                                 "group off (item_features=false)")
            counts = (attrs > 0).sum(dim=-1, keepdim=True).clamp(min=1)
            parts.append(self.attr(attrs).sum(dim=-2) / counts)
        if self.dense is not None:
            if dense is None:
                raise ValueError("this model reads the items' content vectors (the `item` feature group) and the "
                                 "batch has none: build batches with Collator(features=('item', ...)), or turn the "
                                 "group off (item_features=false)")
            parts.append(self.dense(dense) * (items > 0).unsqueeze(-1))  # padding stays 0
        return parts[0] if len(parts) == 1 else torch.cat(parts, dim=-1)

    def side(self, items: torch.Tensor, cates: torch.Tensor, side) -> torch.Tensor:
        """:meth:`items` with an :class:`lifelong.batch.ItemSide` (or None)."""
        return self.items(items, cates, None if side is None else side.attrs, None if side is None else side.dense)

    def history(self, batch, context: bool = True) -> torch.Tensor:
        """(B, T, out_dim) the history behaviors, with their event context added when ``context``."""
        embedded = self.side(batch.history_items, batch.history_cates, batch.history_side)
        if context and self.behavior is not None:
            if batch.history_behaviors is None:
                raise ValueError("this model reads the event context (behavior types) and the batch has none")
            embedded = embedded + self.behavior(batch.history_behaviors)
        return embedded

    def candidates(self, candidates) -> torch.Tensor:
        """(B, K, out_dim) the candidates of :class:`lifelong.models.ranking.Candidates`."""
        return self.side(candidates.items, candidates.cates, candidates.side)

    def user(self, batch) -> torch.Tensor | None:
        """(B, user_dim) the users' features, or None when the model reads none."""
        if not self.user_specs:
            return None
        values = batch.user_features or {}
        missing = [f["name"] for f in self.user_specs if f["name"] not in values]
        if missing:
            raise ValueError(f"this model reads the user features {missing} and the batch lacks them: build batches "
                             f"with Collator(features=('user', ...)), or turn the group off (user_features=false)")
        parts = []
        for spec in self.user_specs:
            value = values[spec["name"]]
            if spec["kind"] == "numeric":
                standard = (value.float() - float(spec["mean"])) / float(spec["std"])
                parts.append(self.user_numeric[spec["name"]](standard.unsqueeze(-1)))
            else:
                parts.append(self.user_tables[spec["name"]](value))
        return torch.cat(parts, dim=-1)


def _table(size: int, dim: int) -> nn.Embedding:
    """An embedding table initialised like the id tables (normal, std 1e-2; index 0 = padding, zero)."""
    return init_item_embedding(nn.Embedding(int(size), dim, padding_idx=0), std=1e-2)
