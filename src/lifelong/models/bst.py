"""BST: Behavior Sequence Transformer.

Paper: Chen et al., "Behavior Sequence Transformer for E-commerce Recommendation in Alibaba",
DLP-KDD 2019 (arXiv 1905.06874).
Mechanism: the user's behaviors and the target item form one sequence (the target is the last
token); each token is its item embedding plus a positional embedding; a transformer encoder
(multi-head self-attention and a LeakyReLU feed-forward layer, each followed by residual, dropout and
LayerNorm: post-LN) lets every token, the target included, attend to the others; an MLP on the
transformer's outputs gives the click logit.

Deviations:
  - The position of a token is relative to the target (target 0, most recent behavior 1, ...) and is
    a learned embedding; the paper uses ``pos(v_i) = t(v_t) - t(v_i)`` (a time gap) as the position
    feature. Relative positions keep the score independent of padding; positions beyond
    ``max_positions - 1`` share the last row.
  - The embedding is added to the token (the paper concatenates it to the item features); a token
    is the item and category embeddings concatenated (no shop id, no user-profile/context features).
  - The paper flattens all transformer outputs into the MLP; with variable-length histories that
    would depend on padding, so the MLP gets ``[target token output, masked mean of the behavior
    outputs, raw target embedding]``.
  - The MLP is the shared one, PReLU (200, 80) by default; the paper uses LeakyReLU 1024-512-256.
  - Transformer dropout defaults to 0.0 (the paper: 0.1); ``num_heads`` defaults to 8 (the paper) and
    must divide the token width ``2 * embedding_dim``.
  - The encoder layer is written out (attention with a key-padding mask, feed-forward, LayerNorm)
    instead of ``torch.nn.TransformerEncoderLayer``, whose eval fast path packs nested tensors; padding
    tokens are never keys, and their outputs are never read. Attention runs through PyTorch's fused
    scaled-dot-product kernel (``attention_impl="fused"``) or the literal masked softmax
    (``"reference"``); the two are tested against each other.
  - The optional mini-batch aware L2 regulariser on the embeddings is DIN's (as in din.py).
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import nn

from lifelong.batch import Batch
from lifelong.models.registry import ModelConfig, ModelOutput, register
from lifelong.nn import ACTIVATIONS, MLP, BehaviorEmbedding, relative_positions


@dataclass
class BSTConfig(ModelConfig):
    """Args:
        embedding_dim: size of each id embedding (a token is 2x this: item and category).
        max_positions: rows of the positional table; larger relative positions are clipped to the last.
        num_layers: transformer encoder layers (the paper: 1).
        num_heads: attention heads (the paper: 8); must divide ``2 * embedding_dim``.
        ffn_multiplier: feed-forward hidden size as a multiple of the token width.
        transformer_dropout: dropout on the attention weights and both residual branches (the paper: 0.1).
        attention_impl: ``fused`` (PyTorch's scaled-dot-product kernel, default) or ``reference`` (literal
            masked softmax); equal results.
        dnn_hidden: MLP sizes after the transformer.
        dnn_activation: activation of the MLP.
        dropout: dropout after each MLP layer.
        l2_mba: weight of the mini-batch aware L2 regulariser (0 = off).
    """

    model_type = "bst"
    max_positions: int = 512
    num_layers: int = 1
    num_heads: int = 8
    ffn_multiplier: int = 4
    transformer_dropout: float = 0.0
    attention_impl: str = "fused"
    dnn_hidden: tuple[int, ...] = (200, 80)
    dnn_activation: str = "prelu"
    dropout: float = 0.0
    l2_mba: float = 0.0

    def validate(self) -> None:
        super().validate()
        width = 2 * self.embedding_dim
        if self.num_heads < 1 or width % self.num_heads:
            raise ValueError(f"bst: num_heads must divide the token width 2 * embedding_dim = {width}, "
                             f"got {self.num_heads}")
        if self.num_layers < 1 or self.ffn_multiplier < 1:
            raise ValueError(f"bst: num_layers and ffn_multiplier must be positive, "
                             f"got {self.num_layers} and {self.ffn_multiplier}")
        if self.max_positions < 2:
            raise ValueError(f"bst: max_positions must be at least 2 (target and one behavior), "
                             f"got {self.max_positions}")
        if self.attention_impl not in ("fused", "reference"):
            raise ValueError(f"bst: attention_impl must be 'fused' or 'reference', got {self.attention_impl!r}")
        if self.dnn_activation not in ACTIVATIONS:
            raise ValueError(f"bst: dnn_activation must be one of {ACTIVATIONS}, got {self.dnn_activation!r}")
        for name in ("transformer_dropout", "dropout"):
            if not 0.0 <= getattr(self, name) < 1.0:
                raise ValueError(f"bst: {name} must be in [0, 1), got {getattr(self, name)}")
        if self.l2_mba < 0:
            raise ValueError(f"bst: l2_mba must be non-negative, got {self.l2_mba}")


class EncoderLayer(nn.Module):
    """One post-LN transformer encoder layer with a key-padding mask.

    Args:
        width: token width D.
        num_heads: attention heads (divide D).
        ffn_dim: feed-forward hidden size.
        dropout: dropout on attention weights and residual branches.
        impl: ``fused`` (``torch.nn.functional.scaled_dot_product_attention``) or ``reference``
            (the literal masked softmax); equal results.

    Example:
        >>> layer = EncoderLayer(8, 2, 16, 0.0)
        >>> layer(torch.randn(2, 3, 8), torch.ones(2, 3, dtype=torch.bool)).shape
        torch.Size([2, 3, 8])
    """

    def __init__(self, width: int, num_heads: int, ffn_dim: int, dropout: float, impl: str = "fused") -> None:
        super().__init__()
        self.num_heads = num_heads
        self.impl = impl
        self.qkv = nn.Linear(width, 3 * width)
        self.out = nn.Linear(width, width)
        self.ffn = nn.Sequential(nn.Linear(width, ffn_dim), nn.LeakyReLU(), nn.Linear(ffn_dim, width))
        self.norm1 = nn.LayerNorm(width)
        self.norm2 = nn.LayerNorm(width)
        self.dropout = nn.Dropout(dropout)

    def forward(self, x: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
        """x: (B, S, D) tokens; mask: (B, S) bool, True at real tokens (the only keys). Returns (B, S, D),
        zero at padded tokens."""
        b, s, d = x.shape
        h = self.num_heads
        # token-wise layers run on the real tokens only (packed): most of a batch's width is padding
        real = mask.nonzero(as_tuple=True)  # (N,), (N,)
        packed = x[real]  # (N, D)
        qkv = x.new_zeros(b, s, 3 * d).index_put(real, self.qkv(packed))  # (B, S, 3D), 0 at padding
        q, k, v = qkv.view(b, s, 3, h, d // h).permute(2, 0, 3, 1, 4)  # each (B, H, S, D/H)
        if self.impl == "reference":
            scores = q @ k.transpose(-1, -2) / math.sqrt(d // h)  # (B, H, S, S)
            scores = scores.masked_fill(~mask[:, None, None, :], torch.finfo(scores.dtype).min)
            attended = self.dropout(torch.softmax(scores, dim=-1)) @ v  # (B, H, S, D/H)
        else:  # PyTorch's fused kernel, same result (tested); padding keys masked out
            attended = F.scaled_dot_product_attention(
                q, k, v, attn_mask=mask[:, None, None, :], dropout_p=self.dropout.p if self.training else 0.0,
            )  # (B, H, S, D/H)
        attended = attended.transpose(1, 2).reshape(b, s, d)[real]  # (N, D)
        packed = self.norm1(packed + self.dropout(self.out(attended)))
        packed = self.norm2(packed + self.dropout(self.ffn(packed)))  # (N, D)
        return x.new_zeros(b, s, d).index_put(real, packed)  # (B, S, D), 0 at padding


@register(BSTConfig)
class BST(nn.Module):
    """[behaviors, target] + positions -> transformer encoder -> [target out, mean behavior out, target] -> MLP.

    Example:
        >>> model = BST(BSTConfig(n_items=10, n_cates=4, embedding_dim=4, num_heads=2, dnn_hidden=(8,)))
    """

    def __init__(self, config: BSTConfig) -> None:
        super().__init__()
        self.config = config
        self.embedding = BehaviorEmbedding(config.n_items, config.n_cates, config.embedding_dim)
        width = self.embedding.out_dim
        self.position = nn.Embedding(config.max_positions, width)
        nn.init.normal_(self.position.weight, std=1e-2)
        self.layers = nn.ModuleList(
            EncoderLayer(width, config.num_heads, config.ffn_multiplier * width, config.transformer_dropout,
                         config.attention_impl)
            for _ in range(config.num_layers)
        )
        self.dnn = MLP(3 * width, list(config.dnn_hidden), config.dnn_activation, out_dim=1, dropout=config.dropout)

    def encode(self, batch: Batch) -> torch.Tensor:
        """Transformer outputs (B, T + 1, 2E): the behaviors, then the target token last."""
        mask = batch.history_mask  # (B, T)
        history = self.embedding(batch.history_items, batch.history_cates)  # (B, T, 2E)
        target = self.embedding(batch.target_items, batch.target_cates)  # (B, 2E)
        positions = relative_positions(mask).clamp(max=self.config.max_positions - 1)  # (B, T), target 0
        tokens = torch.cat([history + self.position(positions), (target + self.position.weight[0])[:, None]], dim=1)
        token_mask = torch.cat([mask, mask.new_ones(mask.shape[0], 1)], dim=1)  # (B, T + 1)
        for layer in self.layers:
            tokens = layer(tokens, token_mask)  # (B, T + 1, 2E)
        return tokens

    def forward(self, batch: Batch) -> ModelOutput:
        batch.validate()
        mask = batch.history_mask
        outputs = self.encode(batch)  # (B, T + 1, 2E)
        target_out = outputs[:, -1]  # (B, 2E)
        weights = mask.unsqueeze(-1).to(outputs.dtype)  # (B, T, 1)
        behavior_mean = (outputs[:, :-1] * weights).sum(dim=1) / weights.sum(dim=1).clamp(min=1)  # (B, 2E)
        target = self.embedding(batch.target_items, batch.target_cates)  # (B, 2E)
        logits = self.dnn(torch.cat([target_out, behavior_mean, target], dim=-1)).squeeze(-1)  # (B,)
        aux = {}
        if self.config.l2_mba > 0 and self.training:
            aux["l2_mba"] = self.config.l2_mba * self.embedding.batch_l2(batch)
        return ModelOutput(logits=logits, aux_losses=aux)
