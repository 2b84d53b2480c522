"""One Transformer encoder layer, configured per model (BST, DiffuMIN, SASRec and its bert encoder).

The layer is written out (no ``torch.nn.TransformerEncoderLayer``, whose eval fast path packs nested
tensors) so that padded keys contribute exact zeros whatever the padding width.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import nn

NORMS = ("post", "sasrec")
FFN_ACTIVATIONS = {"relu": nn.ReLU, "gelu": nn.GELU, "leaky_relu": nn.LeakyReLU}
IMPLS = ("fused", "reference")
# parameter names of the layers this one replaced -> its own, so checkpoints saved before still load
LEGACY_KEYS = {"norm1.": "attention_norm.", "norm2.": "ffn_norm.", "out.0.": "out."}


@dataclass(frozen=True)
class EncoderSpec:
    """How an :class:`EncoderLayer` is built.

    Args:
        heads: attention heads (divide the token width).
        ffn_dim: hidden width of the feed-forward sublayer.
        activation: the feed-forward activation, ``relu``, ``gelu`` or ``leaky_relu``.
        dropout: dropout on the attention weights and the residual branches (and, with ``norm="sasrec"``,
            after the feed-forward activation).
        norm: ``post``: ``y = LN(x + Dropout(W_o Attn(x)))``, ``LN(y + Dropout(FFN(y)))`` (Vaswani et al.,
            BST, DiffuMIN, the S3-Rec / ICLRec code). ``sasrec``: the SASRec code's block: the query is
            layer-normalised, keys and values are not, ``y = LN(x) + W_o Attn(q = LN(x), kv = x)``, then
            ``z = LN(y)``, ``z + Dropout(FFN(z))`` with dropout after the FFN's activation (causal only).
        eps: the LayerNorms' epsilon.
        causal: position ``t`` attends to positions ``<= t`` only (left-aligned histories, so never to
            padding); the outputs are zeroed at padding.
        impl: ``fused`` (``torch.nn.functional.scaled_dot_product_attention``) or ``reference`` (the literal
            masked softmax); equal results (tested).

    Example:
        >>> EncoderSpec(heads=2, ffn_dim=16, causal=True).norm
        'post'
    """

    heads: int
    ffn_dim: int
    activation: str = "relu"
    dropout: float = 0.0
    norm: str = "post"
    eps: float = 1e-5
    causal: bool = False
    impl: str = "fused"

    def __post_init__(self) -> None:
        if self.norm not in NORMS:
            raise ValueError(f"EncoderSpec: norm must be one of {NORMS}, got {self.norm!r}")
        if self.activation not in FFN_ACTIVATIONS:
            raise ValueError(f"EncoderSpec: activation must be one of {tuple(FFN_ACTIVATIONS)}, got {self.activation!r}")
        if self.impl not in IMPLS:
            raise ValueError(f"EncoderSpec: impl must be one of {IMPLS}, got {self.impl!r}")
        if self.norm == "sasrec" and not self.causal:
            raise ValueError("EncoderSpec: norm='sasrec' is SASRec's causal block; set causal=True")


class EncoderLayer(nn.Module):
    """One Transformer encoder layer: multi-head self-attention and a feed-forward sublayer, each with a
    residual connection and a LayerNorm arranged as ``spec.norm`` says.

    With a key-padding mask (not causal) the token-wise layers run on the real tokens only (packed) and
    padded tokens' outputs are zero; padded tokens are never keys. Causal layers expect left-aligned
    histories and zero the outputs at padding.

    Args:
        dim: token width ``D``.
        spec: the layer's options (:class:`EncoderSpec`).

    Example:
        >>> layer = EncoderLayer(8, EncoderSpec(heads=2, ffn_dim=16))
        >>> mask = torch.tensor([[True, True, False], [True, True, True]])
        >>> out = layer(torch.randn(2, 3, 8), mask)
        >>> out.shape, bool(out[0, 2].eq(0).all())
        (torch.Size([2, 3, 8]), True)
    """

    def __init__(self, dim: int, spec: EncoderSpec) -> None:
        super().__init__()
        if dim % spec.heads:
            raise ValueError(f"EncoderLayer: heads ({spec.heads}) must divide the token width ({dim})")
        self.spec = spec
        self.heads = spec.heads
        # registration order keeps each model's parameter order and initial draws
        if spec.norm == "sasrec":
            self.attention_norm = nn.LayerNorm(dim, eps=spec.eps)
            self.q = nn.Linear(dim, dim)  # from the normalised input
            self.kv = nn.Linear(dim, 2 * dim)  # from the raw input
            self.out = nn.Linear(dim, dim)
            self.ffn_norm = nn.LayerNorm(dim, eps=spec.eps)
            self.ffn = nn.Sequential(nn.Linear(dim, spec.ffn_dim), FFN_ACTIVATIONS[spec.activation](),
                                     nn.Dropout(spec.dropout), nn.Linear(spec.ffn_dim, dim))
        else:
            self.qkv = nn.Linear(dim, 3 * dim)
            self.out = nn.Linear(dim, dim)
            self.attention_norm = nn.LayerNorm(dim, eps=spec.eps)
            self.ffn = nn.Sequential(nn.Linear(dim, spec.ffn_dim), FFN_ACTIVATIONS[spec.activation](),
                                     nn.Linear(spec.ffn_dim, dim))
            self.ffn_norm = nn.LayerNorm(dim, eps=spec.eps)
        self.dropout = nn.Dropout(spec.dropout)

    def _load_from_state_dict(self, state_dict, prefix, *args, **kwargs):
        # checkpoints of the per-model layers this one replaced name the norms norm1 / norm2 (BST, DiffuMIN)
        # and the bert block's output projection out.0
        for old, new in LEGACY_KEYS.items():
            for key in [key for key in state_dict if key.startswith(prefix + old)]:
                state_dict[prefix + new + key[len(prefix + old):]] = state_dict.pop(key)
        super()._load_from_state_dict(state_dict, prefix, *args, **kwargs)

    def heads_of(self, projected: torch.Tensor, parts: int) -> torch.Tensor:
        """(B, S, parts * D) -> (parts, B, H, S, D / H)."""
        b, s, width = projected.shape
        d = width // parts
        return projected.view(b, s, parts, self.heads, d // self.heads).permute(2, 0, 3, 1, 4)

    def attention(self, q: torch.Tensor, k: torch.Tensor, v: torch.Tensor,
                  mask: torch.Tensor | None = None) -> torch.Tensor:
        """Multi-head attention, ``spec.causal`` or over the real keys.

        Args:
            q, k, v: (B, H, S, E) queries, keys, values.
            mask: (B, S) bool, True at real keys (None = all real); not used by a causal layer.

        Returns:
            (B, S, H * E) the heads' contexts, concatenated.
        """
        b, h, s, e = q.shape
        causal = self.spec.causal
        key_mask = None if mask is None or causal else mask[:, None, None, :]  # (B, 1, 1, S)
        if self.spec.impl == "reference":
            scores = q @ k.transpose(-1, -2) / math.sqrt(e)  # (B, H, S, S)
            if causal:
                key_mask = torch.ones(s, s, dtype=torch.bool, device=q.device).tril()  # (S, S)
            if key_mask is not None:
                scores = scores.masked_fill(~key_mask, torch.finfo(scores.dtype).min)
            context = self.dropout(torch.softmax(scores, dim=-1)) @ v  # (B, H, S, E)
        else:  # PyTorch's fused kernel, same result (tested)
            context = F.scaled_dot_product_attention(q, k, v, attn_mask=key_mask, is_causal=causal,
                                                     dropout_p=self.dropout.p if self.training else 0.0)
        return context.transpose(1, 2).reshape(b, s, h * e)

    def attend(self, x: torch.Tensor, mask: torch.Tensor | None = None) -> torch.Tensor:
        """The attention sublayer with its residual and norm: (B, S, D) -> (B, S, D); ``mask`` (B, S) bool
        marks the real keys (None = all real)."""
        if self.spec.norm == "sasrec":
            query = self.attention_norm(x)
            q = self.heads_of(self.q(query), 1)[0]  # (B, H, S, D/H)
            k, v = self.heads_of(self.kv(x), 2)  # 2 x (B, H, S, D/H)
            return query + self.out(self.attention(q, k, v, mask))
        q, k, v = self.heads_of(self.qkv(x), 3)  # 3 x (B, H, S, D/H)
        return self.attention_norm(x + self.dropout(self.out(self.attention(q, k, v, mask))))

    def feed_forward(self, x: torch.Tensor) -> torch.Tensor:
        """The feed-forward sublayer with its residual and norm, token-wise: (..., D) -> (..., D)."""
        if self.spec.norm == "sasrec":
            x = self.ffn_norm(x)
            return x + self.dropout(self.ffn(x))
        return self.ffn_norm(x + self.dropout(self.ffn(x)))

    def finish(self, tokens: torch.Tensor, context: torch.Tensor) -> torch.Tensor:
        """What follows the attention, token-wise (``norm="post"``): (..., D) tokens and their attention
        contexts -> ``feed_forward(LN(tokens + Dropout(W_o context)))``."""
        return self.feed_forward(self.attention_norm(tokens + self.dropout(self.out(context))))

    def forward(self, x: torch.Tensor, mask: torch.Tensor | None = None) -> torch.Tensor:
        """Args:
            x: (B, S, D) tokens.
            mask: (B, S) bool, True at real tokens (left-aligned for a causal layer); None = all real.

        Returns:
            (B, S, D), zero at padded tokens.
        """
        if self.spec.causal or mask is None:
            out = self.feed_forward(self.attend(x))
            return out if mask is None else out * mask.unsqueeze(-1)
        b, s, d = x.shape
        # token-wise layers run on the real tokens only (packed): most of a batch's width can be padding
        real = mask.nonzero(as_tuple=True)  # (N,), (N,)
        packed = x[real]  # (N, D)
        qkv = x.new_zeros(b, s, 3 * d).index_put(real, self.qkv(packed))  # (B, S, 3D), 0 at padding
        q, k, v = self.heads_of(qkv, 3)  # 3 x (B, H, S, D/H)
        context = self.attention(q, k, v, mask)[real]  # (N, D)
        return x.new_zeros(b, s, d).index_put(real, self.finish(packed, context))  # (B, S, D), 0 at padding
