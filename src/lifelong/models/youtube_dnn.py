"""YouTube DNN: the single-interest retrieval baseline (one user vector from the mean-pooled history).

Paper: Covington, Adams and Sargin, Deep Neural Networks for YouTube Recommendations, RecSys 2016; the
baseline of MIND and ComiRec (whose tables call it "YouTube DNN").

Mechanism:
  - The history's item embeddings are averaged over the real events (padding excluded).
  - A feed-forward tower (``hidden`` ReLU layers, then a linear map to ``D``) gives the user vector
    ``u``; item ``i`` scores ``<u, e_i>`` with the same item embeddings as the input (weight tying).
  - Trained as every multi-interest model here (:mod:`lifelong.models.multi_interest`), with one
    interest: softmax over the target and sampled negatives (``loss``).

Deviations:
  - The paper's other inputs (search tokens, geography, age, gender, example age) do not exist in the
    shared datasets: the history is the only input. The output item embeddings are the input ones
    (ComiRec's baseline does the same), not a separate softmax weight matrix.
  - ``interests`` is fixed to 1 (the config field is kept for the shared base; any other value is an
    error).

Example:
    >>> model = YouTubeDNN(YouTubeDNNConfig(n_items=10, n_cates=4, embedding_dim=8, hidden=(16,)))
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import nn

from lifelong.batch import Batch
from lifelong.models.multi_interest import MultiInterestConfig, MultiInterestModel
from lifelong.models.registry import register
from lifelong.nn.embedding import init_item_embedding
from lifelong.nn.layers import mean_pool, relu_tower


@dataclass
class YouTubeDNNConfig(MultiInterestConfig):
    """Args:
        hidden: ReLU layer sizes of the tower before the final linear map to ``D``.
        interests: must be 1 (single interest).
        (embedding_dim, loss, negatives, label_power: see :class:`MultiInterestConfig`.)
    """

    model_type = "youtube_dnn"
    interests: int = 1
    hidden: tuple[int, ...] = (128,)

    def validate(self) -> None:
        super().validate()
        if self.interests != 1:
            raise ValueError(f"youtube_dnn is the single-interest baseline: interests must be 1, got {self.interests}")
        if any(h < 1 for h in self.hidden):
            raise ValueError(f"youtube_dnn: hidden sizes must be positive, got {self.hidden}")


@register(YouTubeDNNConfig)
class YouTubeDNN(MultiInterestModel):
    """Mean-pooled history through a ReLU tower: one interest vector per user."""

    def __init__(self, config: YouTubeDNNConfig) -> None:
        super().__init__()
        self.config = config
        d = config.embedding_dim
        self.item = nn.Embedding(config.n_items, d, padding_idx=0)
        self.tower = relu_tower(d, config.hidden)
        init_item_embedding(self.item, std=d ** -0.5)

    def interests(self, batch: Batch) -> tuple[torch.Tensor, torch.Tensor]:
        pooled = mean_pool(self.item(batch.history_items), batch.history_mask)  # (B, D)
        user = self.tower(pooled)  # (B, D)
        return user.unsqueeze(1), torch.ones(user.shape[0], 1, dtype=torch.bool, device=user.device)
