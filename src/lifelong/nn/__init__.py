"""Shared layers used by several models."""

from lifelong.nn.capsule import dynamic_routing, squash
from lifelong.nn.cluster import kmeans, lloyd, nearest_centroid
from lifelong.nn.embedding import init_item_embedding
from lifelong.nn.gru import AttentionalGRU
from lifelong.nn.layers import (
    ACTIVATIONS, MLP, BehaviorEmbedding, Dice, TargetAttention, activation, relative_positions,
)
from lifelong.nn.transformer import EncoderLayer, EncoderSpec

__all__ = ["ACTIVATIONS", "MLP", "AttentionalGRU", "BehaviorEmbedding", "Dice", "EncoderLayer", "EncoderSpec",
           "TargetAttention", "activation", "dynamic_routing", "init_item_embedding", "kmeans", "lloyd",
           "nearest_centroid", "relative_positions", "squash"]
