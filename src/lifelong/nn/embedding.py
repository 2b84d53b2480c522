"""The item-embedding initialisation shared by the models with their own item table."""

from __future__ import annotations

import torch
from torch import nn


def init_item_embedding(table: nn.Embedding, std: float) -> nn.Embedding:
    """Draw ``table``'s weights from ``N(0, std^2)`` (torch's global generator) and zero the padding row 0.

    Each model keeps its own ``std``: ``D ** -0.5`` for the retrieval models (unit expected norm),
    0.02 for the S3-Rec code's Transformer (SASRec ``encoder = "bert"``), 1e-2 for the ranking models' id and
    feature tables (:class:`lifelong.nn.BehaviorEmbedding`, :class:`lifelong.nn.features.FeatureEmbedding`).

    Args:
        table: (N, D) embedding whose row 0 is padding.
        std: standard deviation of the initial weights.

    Returns:
        ``table``, initialised in place.

    Example:
        >>> table = init_item_embedding(nn.Embedding(5, 4, padding_idx=0), std=0.5)
        >>> bool(table.weight[0].eq(0).all()), bool(table.weight[1:].ne(0).all())
        (True, True)
    """
    nn.init.normal_(table.weight, std=std)
    with torch.no_grad():
        table.weight[0].zero_()
    return table
