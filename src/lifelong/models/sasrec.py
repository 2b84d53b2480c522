"""SASRec: self-attentive sequential recommendation.

Paper: Kang and McAuley, Self-Attentive Sequential Recommendation, ICDM 2018 (arXiv 1808.09781).

Mechanism:
  - Input: item embeddings scaled by ``sqrt(D)`` plus learned absolute position embeddings, dropout,
    padding positions zeroed.
  - ``layers`` blocks, each: ``Q = LN(x)``; causal multi-head self-attention ``A = Attn(Q, x, x)``
    (position t sees positions <= t only); ``x = Q + A``; ``x = LN(x)``;
    ``x = x + Dropout(W2 ReLU(W1 x))`` (the point-wise feed-forward), padding zeroed; a final LN.
  - The output at position t, ``F_t``, scores item i by ``F_t . M_i`` with the shared item
    embedding ``M`` (no output bias). The user vector is ``F`` at the last real position.
  - Training on every prefix at once: position t's target is the item after it (the causal mask makes
    this the same as one sample per prefix). The loss is selectable (``loss``): the paper's binary
    cross-entropy with one sampled negative per position (never an item of the user), a sampled softmax
    over ``negatives`` shared uniform negatives, or a full softmax over the catalogue; every result
    names its loss.

Deviations:
  - Histories are left-aligned (real items first, padding after). With ``positions = "start"`` position
    0 is the oldest kept item, so position t does not depend on how many items follow it (a strict
    prefix model). ``positions = "end"`` is the paper's numbering (it left-pads): the newest item always
    sits at position L-1, so a position embedding says how far an item is from the end of the history.
  - ``heads`` defaults to 1 (paper); ICLRec-style runs use 2.
  - ``encoder = "bert"`` swaps the paper's blocks for the Transformer of the S3-Rec codebase, which ICLRec,
    ICSRec and BSARec report their "SASRec" encoder with: item plus position embeddings (no ``sqrt(D)``
    scaling), LayerNorm and dropout; each block post-LN, ``x = LN(x + Dropout(W_o Attn(x)))`` then
    ``x = LN(x + Dropout(W2 GELU(W1 x)))`` with ``W1`` of width ``4D``; no final LN; every weight drawn
    from N(0, 0.02). Causality and the scoring are unchanged. That code left-pads, so its newest item
    always sits at the last position: ``positions = "end"`` is the faithful pairing.
  - ``encoder = "bsarec"`` (Shin et al., An Attentive Inductive Bias for Sequential Recommendation beyond
    the Self-Attention, AAAI 2024): the ``bert`` blocks with a second, fixed-filter path beside the
    attention. The filter takes the sequence's discrete Fourier transform over positions, keeps the
    ``bsarec_cutoff // 2 + 1`` lowest frequencies (the low-frequency component ``LFC``), and rescales
    the rest, ``HFC = x - LFC``, by a learned per-dimension ``beta**2``:
    ``dsp = LN(x + Dropout(LFC + beta**2 * HFC))``. The block mixes ``alpha * dsp + (1 - alpha) * attn``
    (``bsarec_alpha``) before the feed-forward. The transform runs over ``max_positions`` positions with
    zeros after the history, so a row's output does not depend on the batch's width; a circular filter
    commutes with the circular shift between that layout and the paper's left padding. The filter sees
    every position, so an output depends on later positions too: the encoder trains on prefix samples
    only (``--samples prefixes``, the loss at each row's last position, as BSARec's code trains), where
    no target is ever an input, and a training batch without ``last_target_only`` is refused.

Example:
    >>> model = SASRec(SASRecConfig(n_items=10, n_cates=4, embedding_dim=8, max_positions=5))
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from functools import partial

import torch
from torch import nn

from lifelong.batch import Batch
from lifelong.models.registry import register
from lifelong.models.retrieval import RetrievalConfig, RetrievalModel, RetrievalOutput, next_item_loss, next_items
from lifelong.nn.embedding import init_item_embedding
from lifelong.nn.transformer import EncoderLayer, EncoderSpec


@dataclass
class SASRecConfig(RetrievalConfig):
    """Args:
        embedding_dim: ``D`` (item embeddings, hidden size).
        layers: self-attention blocks (paper 2).
        heads: attention heads (paper 1).
        dropout: dropout of embeddings, attention weights and feed-forward (paper 0.5 on Amazon).
        max_positions: position embeddings (at least the training ``L``).
        positions: ``start`` numbers the positions from the oldest kept item (position 0); ``end``
            numbers them back from the newest, which always sits at position ``max_positions - 1``
            (the paper's left padding).
        encoder: ``sasrec`` (the paper's pre-LN blocks), ``bert`` (the post-LN, GELU, ``4D``-wide
            feed-forward Transformer of the S3-Rec / ICLRec / ICSRec code) or ``bsarec`` (``bert`` blocks
            with BSARec's frequency filter beside the attention; prefix samples only); see Deviations.
        bsarec_alpha: ``encoder = "bsarec"``: the filter path's share ``alpha`` (BSARec's Beauty 0.7).
        bsarec_cutoff: ``encoder = "bsarec"``: BSARec's ``c`` (5); the filter keeps ``c // 2 + 1`` frequencies.
        loss, negatives: see :class:`RetrievalConfig`.
    """

    model_type = "sasrec"
    embedding_dim: int = 64
    layers: int = 2
    heads: int = 1
    dropout: float = 0.5
    max_positions: int = 50
    positions: str = "start"
    encoder: str = "sasrec"
    bsarec_alpha: float = 0.7
    bsarec_cutoff: int = 5

    def validate(self) -> None:
        super().validate()
        if self.layers < 1 or self.heads < 1 or self.max_positions < 1:
            raise ValueError("sasrec: layers, heads and max_positions must be at least 1")
        if self.embedding_dim % self.heads:
            raise ValueError(f"sasrec: heads ({self.heads}) must divide embedding_dim ({self.embedding_dim})")
        if not 0.0 <= self.dropout < 1.0:
            raise ValueError(f"sasrec: dropout must be in [0, 1), got {self.dropout}")
        if self.positions not in ("start", "end"):
            raise ValueError(f"sasrec: positions must be 'start' or 'end', got {self.positions!r}")
        if self.encoder not in ("sasrec", "bert", "bsarec"):
            raise ValueError(f"sasrec: encoder must be 'sasrec', 'bert' or 'bsarec', got {self.encoder!r}")
        if not 0.0 <= self.bsarec_alpha <= 1.0:
            raise ValueError(f"sasrec: bsarec_alpha must be in [0, 1], got {self.bsarec_alpha}")
        if self.bsarec_cutoff < 0:
            raise ValueError(f"sasrec: bsarec_cutoff must be non-negative, got {self.bsarec_cutoff}")


class FrequencyFilter(nn.Module):
    """BSARec's inductive-bias path ``LN(x + Dropout(LFC + beta**2 * HFC))`` (module docstring)."""

    def __init__(self, dim: int, dropout: float, length: int, cutoff: int) -> None:
        super().__init__()
        self.length = length  # the transform's length: max_positions, zeros after the history
        self.keep = cutoff // 2 + 1  # frequencies 0 .. keep-1 form the low-frequency component
        self.sqrt_beta = nn.Parameter(torch.randn(dim))  # BSARec draws it from N(0, 1)
        self.dropout = nn.Dropout(dropout)
        self.norm = nn.LayerNorm(dim, eps=1e-12)

    def low_pass(self, x: torch.Tensor) -> torch.Tensor:
        """(B, T, D) with T <= length -> its low-frequency component over positions, (B, T, D)."""
        spectrum = torch.fft.rfft(x, n=self.length, dim=1, norm="ortho")  # (B, length // 2 + 1, D)
        # irfft zero-fills the frequencies cut off here
        return torch.fft.irfft(spectrum[:, : self.keep], n=self.length, dim=1, norm="ortho")[:, : x.shape[1]]

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        low = self.low_pass(x)
        return self.norm(x + self.dropout(low + self.sqrt_beta.square() * (x - low)))


class BSARecBlock(EncoderLayer):
    """A ``bert`` block whose attention output is mixed with the frequency filter's (module docstring).

    Args:
        dim: token width ``D``.
        spec: the ``bert`` block's options (:class:`EncoderSpec`).
        length, alpha, cutoff: the filter's transform length, its share ``alpha`` and BSARec's ``c``.
    """

    def __init__(self, dim: int, spec: EncoderSpec, length: int, alpha: float, cutoff: int) -> None:
        super().__init__(dim, spec)
        self.alpha = alpha
        self.filter = FrequencyFilter(dim, spec.dropout, length, cutoff)

    def forward(self, x: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
        """x (B, T, D) zero at padding, mask (B, T) bool (left-aligned) -> (B, T, D), zero at padding."""
        x = self.alpha * self.filter(x) + (1.0 - self.alpha) * self.attend(x)
        return self.feed_forward(x) * mask.unsqueeze(-1)


def block_spec(config: SASRecConfig) -> EncoderSpec:
    """The encoder's block options: the paper's blocks (``sasrec``) or the S3-Rec code's (``bert``,
    ``bsarec``); both causal (module docstring)."""
    if config.encoder == "sasrec":
        return EncoderSpec(heads=config.heads, ffn_dim=config.embedding_dim, dropout=config.dropout, norm="sasrec",
                           eps=1e-8, causal=True)
    return EncoderSpec(heads=config.heads, ffn_dim=4 * config.embedding_dim, activation="gelu",
                       dropout=config.dropout, eps=1e-12, causal=True)


@register(SASRecConfig)
class SASRec(RetrievalModel):
    """Causal self-attention over the item sequence; the last position's output is the user vector."""

    extra_input_rows = 0  # input-only item rows after the catalogue (ICLRec's mask token); never scored
    last_target_loss = True  # the training loss follows Batch.last_target_only (prefix samples)

    def __init__(self, config: SASRecConfig) -> None:
        super().__init__()
        self.config = config
        d = config.embedding_dim
        self.item = nn.Embedding(config.n_items + self.extra_input_rows, d, padding_idx=0)
        self.position = nn.Embedding(config.max_positions, d)
        self.dropout = nn.Dropout(config.dropout)
        bert = config.encoder in ("bert", "bsarec")  # bsarec: the bert blocks plus a filter path
        block = partial(BSARecBlock, length=config.max_positions, alpha=config.bsarec_alpha,
                        cutoff=config.bsarec_cutoff) if config.encoder == "bsarec" else EncoderLayer
        self.blocks = nn.ModuleList(block(d, block_spec(config)) for _ in range(config.layers))
        # the paper's blocks end in a LayerNorm; the bert encoder normalises its input embeddings instead
        self.final_norm = nn.Identity() if bert else nn.LayerNorm(d, eps=1e-8)
        self.input_norm = nn.LayerNorm(d, eps=1e-12) if bert else nn.Identity()
        self.input_scale = 1.0 if bert else math.sqrt(d)
        # the S3-Rec code's initialisation (bert): every Linear and Embedding weight N(0, 0.02), biases 0;
        # the item table is the first of them, so it is drawn first in both cases
        init_item_embedding(self.item, std=0.02 if bert else d ** -0.5)
        if bert:
            for module in self.modules():
                if isinstance(module, (nn.Linear, nn.Embedding)) and module is not self.item:
                    nn.init.normal_(module.weight, std=0.02)
                if isinstance(module, nn.Linear):
                    nn.init.zeros_(module.bias)

    def sequence(self, batch: Batch) -> torch.Tensor:
        """(B, T, D) outputs ``F_t`` at every position (zero at padding)."""
        items, mask = batch.history_items, batch.history_mask
        t = items.shape[1]
        if t > self.config.max_positions:
            raise ValueError(f"sasrec: a history of {t} events exceeds max_positions={self.config.max_positions}; "
                             "raise max_positions or lower --max-length")
        positions = torch.arange(t, device=items.device)
        if self.config.positions == "end":  # the newest item at max_positions - 1; padding clamped (masked)
            positions = (positions + (self.config.max_positions - batch.lengths).unsqueeze(1)).clamp(
                max=self.config.max_positions - 1)  # (B, T)
        x = self.input_norm(self.item(items) * self.input_scale + self.position(positions))
        x = self.dropout(x) * mask.unsqueeze(-1)
        for block in self.blocks:
            x = block(x, mask)
        return self.final_norm(x) * mask.unsqueeze(-1)

    def user_vectors(self, batch: Batch) -> torch.Tensor:
        return self._last(self.sequence(batch), batch)

    def training_targets(self, batch: Batch) -> tuple[torch.Tensor, torch.Tensor]:
        """:func:`next_items` of a training batch, refused when an input could hold a position's own
        target: the bsarec encoder's filter sees later positions, so it trains on prefix samples only."""
        if self.config.encoder == "bsarec" and not batch.last_target_only:
            raise ValueError("sasrec: encoder=bsarec sees later positions, so it trains on prefix samples only "
                             "(--samples prefixes: the loss at each row's last position)")
        return next_items(batch)

    @staticmethod
    def _last(hidden: torch.Tensor, batch: Batch) -> torch.Tensor:
        last = (batch.lengths - 1).clamp(min=0)  # (B,)
        return hidden[torch.arange(hidden.shape[0], device=hidden.device), last]  # (B, D)

    def item_vectors(self) -> torch.Tensor:
        return self.item.weight[: self.config.n_items]  # (n_items, D)

    def forward(self, batch: Batch) -> RetrievalOutput:
        batch.validate()
        hidden = self.sequence(batch)  # (B, T, D)
        users = self._last(hidden, batch)
        if not self.training:
            return RetrievalOutput(user_vectors=users)
        positives, mask = self.training_targets(batch)
        negatives = batch.history_negative_items[mask] if batch.history_negative_items is not None else None
        loss = next_item_loss(hidden[mask], positives[mask], self.item_vectors(), self.config.loss,
                              negatives=negatives, n_sampled=self.config.negatives)
        return RetrievalOutput(user_vectors=users, loss=loss)
