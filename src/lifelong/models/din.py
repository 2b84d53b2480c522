"""DIN: Deep Interest Network.

Paper: Zhou et al., "Deep Interest Network for Click-Through Rate Prediction", KDD 2018.
Mechanism: a local activation unit scores each behavior against the candidate from the behavior, the
candidate, their difference and their element-wise product (the out product of the paper's figure;
the released code uses the difference and the product, as here); the user interest is the
*un-normalised* weighted sum of behaviors (the paper keeps the intensity of interests, so no softmax);
the interest and the candidate go through an MLP with Dice activations. Training may add the
mini-batch aware L2 regulariser on the embeddings (section 4.3.1).

Deviations:
  - Softmax-normalised weights are available as an option (``attention_normalization="softmax"``),
    over the real behaviors only. The authors' released code also normalises with a softmax (after
    scaling the scores by 1/sqrt(d)); here there is no fixed scale, the activation unit learns it.
  - A behavior is its item-id and category embeddings concatenated (no shop id), plus the features the
    dataset declares (attribute bag, content vector; the event's behavior type added), and the user
    profile joins the candidate and the interest at the MLP's input, as in the paper's figure
    (:class:`lifelong.nn.features.FeatureEmbedding`; ``user_features``/``item_features``/
    ``context_features`` turn a group off).
  - The MBA regulariser's ``n_j`` is the id's number of events in the prepared log (the loop passes
    the counts), and it is applied to the id and category tables.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import nn

from lifelong.batch import Batch
from lifelong.models.ranking import Candidates, RankingConfig, RankingModel, UserState, with_user
from lifelong.models.registry import ModelOutput, register
from lifelong.nn import ACTIVATIONS, MLP, TargetAttention
from lifelong.nn.features import FeatureEmbedding


@dataclass
class DINConfig(RankingConfig):
    """Args:
        embedding_dim: size of each id embedding (a behavior is 2x this: item and category).
        attention_hidden: activation-unit MLP sizes.
        attention_activation: ``dice`` (paper) or another activation.
        attention_normalization: ``none`` (paper) or ``softmax``.
        attention_impl: ``fused`` (fast, default) or ``reference`` (literal concatenation); equal results.
        dnn_hidden: MLP sizes after the concatenation of interest and candidate.
        dnn_activation: ``dice`` in the paper.
        dropout: dropout after each MLP layer.
        l2_mba: weight of the mini-batch aware L2 regulariser (0 = off).
    """

    model_type = "din"
    attention_hidden: tuple[int, ...] = (64, 32)
    attention_activation: str = "dice"
    attention_normalization: str = "none"
    attention_impl: str = "fused"
    dnn_hidden: tuple[int, ...] = (200, 80)
    dnn_activation: str = "dice"
    dropout: float = 0.0
    l2_mba: float = 0.0

    def validate(self) -> None:
        super().validate()
        for name in ("attention_activation", "dnn_activation"):
            if getattr(self, name) not in ACTIVATIONS:
                raise ValueError(f"din: {name} must be one of {ACTIVATIONS}, got {getattr(self, name)!r}")
        if self.attention_normalization not in ("none", "softmax"):
            raise ValueError(f"din: attention_normalization must be 'none' or 'softmax', got {self.attention_normalization!r}")
        if self.attention_impl not in ("fused", "reference"):
            raise ValueError(f"din: attention_impl must be 'fused' or 'reference', got {self.attention_impl!r}")
        if not self.attention_hidden:
            raise ValueError("din: attention_hidden needs at least one layer")
        if not 0.0 <= self.dropout < 1.0 or self.l2_mba < 0:
            raise ValueError("din: dropout must be in [0, 1) and l2_mba non-negative")


@dataclass
class DINState(UserState):
    """DIN's user side: the embedded history. (The behaviors' own part of the activation unit,
    ``(W_h + W_d) h``, is folded into the product that scores a user's candidates together, see
    :class:`lifelong.nn.TargetAttention`; storing it would save nothing.)

    Attributes:
        history: (B, T, W) behavior embeddings (0 at padding; W = 2E with ids only, wider with item
            features, see :class:`lifelong.nn.features.FeatureEmbedding`).
        mask: (B, T) bool, True at real behaviors.
        user: (B, U) user features, or None.
    """

    history: torch.Tensor
    mask: torch.Tensor
    user: torch.Tensor | None = None


@register(DINConfig)
class DIN(RankingModel):
    """Target attention over the behaviors + candidate -> MLP (Dice) -> logit.

    The user side is the embedded history; each candidate then costs one pass of the activation unit's
    MLP per behavior (target attention is per candidate), all of a user's candidates in one batch.

    Example:
        >>> model = DIN(DINConfig(n_items=10, n_cates=4, embedding_dim=4, attention_hidden=(8,), dnn_hidden=(8,)))
        >>> batch = Batch(history_items=torch.tensor([[2, 3, 0]]), history_cates=torch.tensor([[1, 2, 0]]),
        ...               history_mask=torch.tensor([[True, True, False]]), target_items=torch.tensor([4]),
        ...               target_cates=torch.tensor([2]), labels=torch.tensor([1.0]), users=torch.tensor([0]))
        >>> candidates = Candidates(items=torch.tensor([[4, 5, 6]]), cates=torch.tensor([[2, 2, 3]]))
        >>> model.eval().score(model.encode_user(batch), candidates).shape  # 3 candidates, one user
        torch.Size([1, 3])
    """

    def __init__(self, config: DINConfig) -> None:
        super().__init__()
        self.config = config
        self.embedding = FeatureEmbedding.of(config)
        width = self.embedding.out_dim
        self.attention = TargetAttention(
            width, list(config.attention_hidden), config.attention_activation,
            config.attention_normalization, config.attention_impl,
        )
        self.dnn = MLP(2 * width + self.embedding.user_dim, list(config.dnn_hidden), config.dnn_activation, out_dim=1,
                       dropout=config.dropout)

    def encode_user(self, batch: Batch) -> DINState:
        history = self.embedding.history(batch)  # (B, T, W)
        return DINState(history=history, mask=batch.history_mask, user=self.embedding.user(batch))

    def score(self, state: DINState, candidates: Candidates) -> torch.Tensor:
        candidates.validate(len(state))
        target = self.embedding.candidates(candidates)  # (B, K, W)
        interest, _ = self.attention(target, state.history, state.mask)  # (B, K, W)
        logits = self.dnn(with_user(torch.cat([interest, target], dim=-1), state.user).flatten(0, 1))  # (B * K, 1)
        return logits.view(candidates.items.shape)  # (B, K)

    def forward(self, batch: Batch) -> ModelOutput:
        batch.validate()
        logits = self.score(self.encode_user(batch), Candidates.from_targets(batch)).squeeze(1)  # (B,)
        aux = {}
        if self.config.l2_mba > 0 and self.training:
            aux["l2_mba"] = self.config.l2_mba * self.embedding.batch_l2(batch)
        return ModelOutput(logits=logits, aux_losses=aux)
