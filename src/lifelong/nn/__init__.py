"""Shared layers used by several models."""

from lifelong.nn.layers import (
    ACTIVATIONS, MLP, BehaviorEmbedding, Dice, TargetAttention, activation, relative_positions,
)

__all__ = ["ACTIVATIONS", "MLP", "BehaviorEmbedding", "Dice", "TargetAttention", "activation", "relative_positions"]
