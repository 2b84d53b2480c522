"""Embedding&MLP base model of the DIN paper (sum pooling of the behaviors).

Paper: Zhou et al., "Deep Interest Network for Click-Through Rate Prediction", KDD 2018, section 4.2
("Base Model"): ids are embedded, the user's behaviors are sum-pooled into one fixed-length vector,
concatenated with the candidate's embedding and fed to an MLP (PReLU) that outputs the click logit.

Deviations:
  - The dataset's declared features (user profile, item side features, event context) are embedded by
    :class:`lifelong.nn.features.FeatureEmbedding`, the block every ranking model shares.
  - A behavior (and the candidate) is the concatenation of its item-id and category embeddings,
    as in the paper's goods_id + cate_id groups; shop ids do not exist in these datasets.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import nn

from lifelong.batch import Batch
from lifelong.models.ranking import Candidates, RankingConfig, RankingModel, UserState, with_user
from lifelong.models.registry import ModelOutput, register
from lifelong.nn import ACTIVATIONS, MLP
from lifelong.nn.features import FeatureEmbedding


@dataclass
class SumPoolConfig(RankingConfig):
    """Args:
        embedding_dim: size of each id embedding (a behavior is 2x this: item and category).
        dnn_hidden: MLP sizes after the concatenation.
        dnn_activation: ``prelu`` in the paper's base model.
        dropout: dropout after each MLP layer.
        l2_mba: weight of the mini-batch aware L2 regulariser on the embeddings (0 = off).
    """

    model_type = "sumpool"
    dnn_hidden: tuple[int, ...] = (200, 80)
    dnn_activation: str = "prelu"
    dropout: float = 0.0
    l2_mba: float = 0.0

    def validate(self) -> None:
        super().validate()
        if self.dnn_activation not in ACTIVATIONS:
            raise ValueError(f"sumpool: dnn_activation must be one of {ACTIVATIONS}, got {self.dnn_activation!r}")
        if not 0.0 <= self.dropout < 1.0 or self.l2_mba < 0:
            raise ValueError("sumpool: dropout must be in [0, 1) and l2_mba non-negative")


@dataclass
class SumPoolState(UserState):
    """The base model's user side.

    Attributes:
        pooled: (B, W) sum-pooled behaviors.
        user: (B, U) user features, or None.
    """

    pooled: torch.Tensor
    user: torch.Tensor | None = None


@register(SumPoolConfig)
class SumPool(RankingModel):
    """Sum-pooled behaviors + candidate -> MLP -> logit.

    The user side is the pooled vector; a candidate costs one pass of the MLP.

    Example:
        >>> model = SumPool(SumPoolConfig(n_items=10, n_cates=4, embedding_dim=4, dnn_hidden=(8,)))
        >>> state = SumPoolState(pooled=torch.zeros(2, 8))
        >>> candidates = Candidates(items=torch.tensor([[4, 5, 6], [7, 8, 9]]), cates=torch.ones(2, 3).long())
        >>> model.eval().score(state, candidates).shape
        torch.Size([2, 3])
    """

    def __init__(self, config: SumPoolConfig) -> None:
        super().__init__()
        self.config = config
        self.embedding = FeatureEmbedding.of(config)
        width = self.embedding.out_dim
        self.dnn = MLP(2 * width + self.embedding.user_dim, list(config.dnn_hidden), config.dnn_activation, out_dim=1,
                       dropout=config.dropout)

    def encode_user(self, batch: Batch) -> SumPoolState:
        history = self.embedding.history(batch)  # (B, T, W)
        return SumPoolState(pooled=(history * batch.history_mask.unsqueeze(-1)).sum(dim=1),  # (B, W)
                            user=self.embedding.user(batch))

    def score(self, state: SumPoolState, candidates: Candidates) -> torch.Tensor:
        candidates.validate(len(state))
        target = self.embedding.candidates(candidates)  # (B, K, W)
        pooled = state.pooled.unsqueeze(1).expand_as(target)  # (B, K, W)
        logits = self.dnn(with_user(torch.cat([pooled, target], dim=-1), state.user).flatten(0, 1))  # (B * K, 1)
        return logits.view(candidates.items.shape)  # (B, K)

    def forward(self, batch: Batch) -> ModelOutput:
        batch.validate()
        logits = self.score(self.encode_user(batch), Candidates.from_targets(batch)).squeeze(1)  # (B,)
        aux = {}
        if self.config.l2_mba > 0 and self.training:
            aux["l2_mba"] = self.config.l2_mba * self.embedding.batch_l2(batch)
        return ModelOutput(logits=logits, aux_losses=aux)
