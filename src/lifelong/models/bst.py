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
    is the item and category embeddings concatenated (no shop id), with the dataset's item side
    features and event context (:class:`lifelong.nn.features.FeatureEmbedding`); the user features
    (the paper's "other features") join the MLP's input.
  - The paper flattens all transformer outputs into the MLP; with variable-length histories that
    would depend on padding, so the MLP gets ``[target token output, masked mean of the behavior
    outputs, raw target embedding]``.
  - The MLP is the shared one, PReLU (200, 80) by default; the paper uses LeakyReLU 1024-512-256.
  - Transformer dropout defaults to 0.0 (the paper: 0.1); ``num_heads`` defaults to 8 (the paper) and
    must divide the token width ``2 * embedding_dim``.
  - The encoder layer is the shared written-out one (:mod:`lifelong.nn.transformer`: attention with a
    key-padding mask, feed-forward, LayerNorm) instead of ``torch.nn.TransformerEncoderLayer``, whose
    eval fast path packs nested tensors; padding tokens are never keys, and their outputs are never read. Attention runs through PyTorch's fused
    scaled-dot-product kernel (``attention_impl="fused"``) or the literal masked softmax
    (``"reference"``); the two are tested against each other.
  - The optional mini-batch aware L2 regulariser on the embeddings is DIN's (as in din.py).
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import torch
from torch import nn

from lifelong.batch import Batch
from lifelong.models.ranking import Candidates, RankingConfig, RankingModel, UserState, candidate_chunks, with_user
from lifelong.models.registry import ModelOutput, register
from lifelong.nn import ACTIVATIONS, MLP, relative_positions
from lifelong.nn.features import FeatureEmbedding
from lifelong.nn.transformer import EncoderLayer as SharedEncoderLayer
from lifelong.nn.transformer import EncoderSpec


@dataclass
class BSTConfig(RankingConfig):
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
        width = self.item_width
        if self.num_heads < 1 or width % self.num_heads:
            raise ValueError(f"bst: num_heads must divide the token width (2 * embedding_dim, plus embedding_dim "
                             f"per item side feature read) = {width}, got {self.num_heads}")
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


class EncoderLayer(SharedEncoderLayer):
    """BST's post-LN encoder layer (:class:`lifelong.nn.transformer.EncoderLayer` with a key-padding
    mask and a LeakyReLU feed-forward), plus the split first layer.

    Besides the plain layer (:meth:`forward`), the first layer of BST runs split in two
    (:meth:`attend_behaviors` once per user, :meth:`forward_with_target` per candidate): the target is
    the only token that depends on the candidate, so each behavior's attention over ``[behaviors,
    target]`` is its attention over the behaviors alone, ``o_i`` with log-normaliser ``lse_i``, mixed
    with the target's value: ``(1 - beta_ik) o_i + beta_ik v_k`` with ``beta_ik = sigmoid(q_i k_k /
    sqrt(d) - lse_i)``, the target's share of the softmax. A candidate then costs ``O(T)`` in
    attention instead of ``O(T^2)``; the token-wise layers still run for every (behavior, candidate).

    Args:
        width: token width D.
        num_heads: attention heads (divide D).
        ffn_dim: feed-forward hidden size.
        dropout: dropout on attention weights and residual branches.
        impl: ``fused`` (``torch.nn.functional.scaled_dot_product_attention``) or ``reference``
            (the literal masked softmax); equal results. (The split first layer needs the
            log-normaliser, so its behaviors' attention is always the literal one.)

    Example:
        >>> layer = EncoderLayer(8, 2, 16, 0.0)
        >>> layer(torch.randn(2, 3, 8), torch.ones(2, 3, dtype=torch.bool)).shape
        torch.Size([2, 3, 8])
    """

    def __init__(self, width: int, num_heads: int, ffn_dim: int, dropout: float, impl: str = "fused") -> None:
        super().__init__(width, EncoderSpec(heads=num_heads, ffn_dim=ffn_dim, activation="leaky_relu",
                                            dropout=dropout, impl=impl))

    def attend_behaviors(self, tokens: torch.Tensor, mask: torch.Tensor) -> dict[str, torch.Tensor]:
        """The user's half of the split layer: the behaviors' queries, keys and values, each behavior's
        attention over the behaviors alone (``context``) and its log-normaliser.

        Args:
            tokens: (B, T, D) behavior tokens; mask: (B, T) bool.

        Returns:
            ``queries``, ``keys``, ``values``, ``context`` (B, H, T, D/H) and ``log_normalizer`` (B, H, T)
            (for a history without real behaviors, finite values that are never read).
        """
        b, t, d = tokens.shape
        h = self.heads
        q, k, v = self.qkv(tokens).view(b, t, 3, h, d // h).permute(2, 0, 3, 1, 4).contiguous()  # each (B, H, T, D/H)
        context, log_normalizer = attention_with_log_normalizer(q, k, v, mask, self.dropout)
        return {"queries": q, "keys": k, "values": v, "context": context, "log_normalizer": log_normalizer}

    def forward_with_target(self, tokens: torch.Tensor, mask: torch.Tensor, behaviors: dict[str, torch.Tensor],
                            targets: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """The candidate's half of the split layer: the layer's outputs over ``[behaviors, target]`` for
        each of K target tokens.

        Args:
            tokens: (B, T, D) behavior tokens; mask: (B, T) bool.
            behaviors: :meth:`attend_behaviors` of those tokens.
            targets: (B, K, D) target tokens.

        Returns:
            the real behaviors' outputs (N, K, D), packed as ``mask.nonzero()``, and the target tokens'
            outputs (B, K, D).
        """
        b, t, d = tokens.shape
        k, h = targets.shape[1], self.heads
        scale = 1.0 / math.sqrt(d // h)
        tq, tk, tv = self.qkv(targets).view(b, k, 3, h, d // h).permute(2, 0, 3, 1, 4)  # each (B, H, K, D/H)
        # the target token attends to the behaviors and to itself
        logits = (tq @ behaviors["keys"].transpose(-1, -2)) * scale  # (B, H, K, T)
        logits = logits.masked_fill(~mask[:, None, None, :], torch.finfo(logits.dtype).min)
        own = (tq * tk).sum(dim=-1, keepdim=True) * scale  # (B, H, K, 1)
        weights = self.dropout(torch.softmax(torch.cat([logits, own], dim=-1), dim=-1))  # (B, H, K, T + 1)
        target_context = weights[..., :t] @ behaviors["values"] + weights[..., t:] * tv  # (B, H, K, D/H)
        target_out = self.finish(targets, target_context.permute(0, 2, 1, 3).reshape(b, k, d))  # (B, K, D)
        # each real behavior: its behaviors-only attention with the target's share of the softmax added
        rows, steps = mask.nonzero(as_tuple=True)  # (N,), (N,)
        queries = behaviors["queries"][rows, :, steps]  # (N, H, D/H)
        share = torch.sigmoid(torch.einsum("nhe,nhke->nhk", queries, tk[rows]) * scale
                              - behaviors["log_normalizer"][rows, :, steps].unsqueeze(-1))  # (N, H, K) beta
        context = behaviors["context"][rows, :, steps].unsqueeze(2)  # (N, H, 1, D/H)
        mixed = context * (1 - share).unsqueeze(-1) + self.dropout(share).unsqueeze(-1) * tv[rows]  # (N, H, K, D/H)
        mixed = mixed.permute(0, 2, 1, 3).reshape(-1, k, d)  # (N, K, D)
        behavior_out = self.finish(tokens[rows, steps].unsqueeze(1), mixed)  # (N, K, D)
        return behavior_out, target_out


def attention_with_log_normalizer(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, mask: torch.Tensor,
                                  dropout: nn.Dropout) -> tuple[torch.Tensor, torch.Tensor]:
    """Softmax attention of every query over the real keys, and its log-normaliser.

    In inference it runs in cache-sized chunks of logits (never the whole (B, H, T, T) at once); in
    training at once, with dropout on the weights.

    Args:
        q, k, v: (B, H, T, E) queries, keys, values.
        mask: (B, T) bool, True at real keys.
        dropout: applied to the attention weights.

    Returns:
        context (B, H, T, E) and ``log sum_j exp(q_i k_j / sqrt(E))`` over the real keys (B, H, T).

    Example:
        >>> q = k = v = torch.randn(1, 2, 3, 4)
        >>> context, lse = attention_with_log_normalizer(q, k, v, torch.ones(1, 3, dtype=torch.bool), nn.Dropout(0.0))
        >>> torch.allclose(lse, torch.logsumexp(q @ k.transpose(-1, -2) / 2, dim=-1))
        True
    """
    b, h, t, e = q.shape
    scale = 1.0 / math.sqrt(e)
    bias = q.new_zeros(b, 1, 1, t).masked_fill(~mask[:, None, None, :], torch.finfo(q.dtype).min)  # (B, 1, 1, T)
    if dropout.training or torch.is_grad_enabled():
        logits = (q * scale) @ k.transpose(-1, -2)  # (B, H, T, T)
        logits += bias  # in place: the product's output is not saved for backward
        weights = torch.softmax(logits, dim=-1)
        return dropout(weights) @ v, LogNormalizer.apply(logits, weights)
    context, log_normalizer = torch.empty_like(q), q.new_empty(b, h, t)
    users = max(1, LOGITS_PER_CHUNK // max(h * t * t, 1))  # users per chunk (short histories)
    queries = t if users > 1 else max(1, LOGITS_PER_CHUNK // max(h * t, 1))  # queries per chunk (long ones)
    for u in range(0, b, users):
        who = slice(u, u + users)
        keys = k[who].transpose(-1, -2)  # (u, H, E, T)
        for i in range(0, t, queries):
            part = slice(i, i + queries)
            logits = (q[who, :, part] * scale) @ keys  # (u, H, n, T)
            logits += bias[who]
            weights = torch.softmax(logits, dim=-1)
            torch.matmul(weights, v[who], out=context[who, :, part])
            log_normalizer[who, :, part] = LogNormalizer.apply(logits, weights)
    return context, log_normalizer


class LogNormalizer(torch.autograd.Function):
    """``logsumexp(logits)`` from the logits and their softmax, without another pass of ``exp``:
    ``max logit - log(max weight)`` (the largest weight is at least ``1 / T``, so it never underflows).
    Its gradient with respect to the logits is the softmax, as that of ``logsumexp``.

    Example:
        >>> logits = torch.randn(2, 5)
        >>> torch.allclose(LogNormalizer.apply(logits, torch.softmax(logits, -1)), torch.logsumexp(logits, -1))
        True
    """

    @staticmethod
    def forward(ctx, logits: torch.Tensor, weights: torch.Tensor) -> torch.Tensor:  # (..., T), (..., T) -> (...)
        ctx.save_for_backward(weights)
        return logits.amax(dim=-1) - weights.amax(dim=-1).log()

    @staticmethod
    def backward(ctx, grad: torch.Tensor):
        (weights,) = ctx.saved_tensors
        return grad.unsqueeze(-1) * weights, None


LOGITS_PER_CHUNK = 1 << 18  # attention logits per step of attention_with_log_normalizer at inference


@dataclass
class BSTState(UserState):
    """BST's user side: the behavior tokens and, once computed, their half of the first encoder layer.

    Attributes:
        tokens: (B, T, 2E) behavior tokens, embedding + relative position.
        mask: (B, T) bool, True at real behaviors.
        queries, keys, values: (B, H, T, 2E / H) the first layer's projections of the tokens.
        context: (B, H, T, 2E / H) each behavior's first-layer attention over the behaviors alone.
        log_normalizer: (B, H, T) its log-normaliser (see :class:`EncoderLayer`).
        user: (B, U) user features, or None.

    The first-layer fields are None until the first ``score`` of several candidates per user fills them
    (:meth:`BST.split_first_layer`), so a cached state computes them once; one candidate per user
    (training, ``forward``) runs the plain encoder and never needs them.
    """

    tokens: torch.Tensor
    mask: torch.Tensor
    queries: torch.Tensor | None = None
    keys: torch.Tensor | None = None
    values: torch.Tensor | None = None
    context: torch.Tensor | None = None
    log_normalizer: torch.Tensor | None = None
    user: torch.Tensor | None = None


@register(BSTConfig)
class BST(RankingModel):
    """[behaviors, target] + positions -> transformer encoder -> [target out, mean behavior out, target] -> MLP.

    Every token attends to the target, so the whole encoder depends on the candidate. The user side is
    the behavior tokens. One candidate per user runs the encoder over ``[behaviors, target]``
    (:meth:`sequence`); several candidates per user split the first layer (:class:`EncoderLayer`): the
    behaviors-only attention (``O(T^2)``) once per user, then per candidate ``O(T)`` attention plus the
    token-wise layers for each behavior, and plain layers from the second on. The two are tested
    against each other.

    Example:
        >>> model = BST(BSTConfig(n_items=10, n_cates=4, embedding_dim=4, num_heads=2, dnn_hidden=(8,)))
        >>> batch = Batch(history_items=torch.tensor([[2, 3, 0]]), history_cates=torch.tensor([[1, 2, 0]]),
        ...               history_mask=torch.tensor([[True, True, False]]), target_items=torch.tensor([4]),
        ...               target_cates=torch.tensor([2]), labels=torch.tensor([1.0]), users=torch.tensor([0]))
        >>> candidates = Candidates(items=torch.tensor([[4, 5, 6]]), cates=torch.tensor([[2, 2, 3]]))
        >>> model.eval().score(model.encode_user(batch), candidates).shape  # 3 candidates, one user
        torch.Size([1, 3])
    """

    def __init__(self, config: BSTConfig) -> None:
        super().__init__()
        self.config = config
        self.embedding = FeatureEmbedding.of(config)
        width = self.embedding.out_dim
        self.position = nn.Embedding(config.max_positions, width)
        nn.init.normal_(self.position.weight, std=1e-2)
        self.layers = nn.ModuleList(
            EncoderLayer(width, config.num_heads, config.ffn_multiplier * width, config.transformer_dropout,
                         config.attention_impl)
            for _ in range(config.num_layers)
        )
        self.dnn = MLP(3 * width + self.embedding.user_dim, list(config.dnn_hidden), config.dnn_activation, out_dim=1,
                       dropout=config.dropout)

    def behavior_tokens(self, batch: Batch) -> torch.Tensor:
        """(B, T, 2E) behavior embeddings + relative positions (the target is position 0)."""
        positions = relative_positions(batch.history_mask).clamp(max=self.config.max_positions - 1)  # (B, T)
        return self.embedding.history(batch) + self.position(positions)

    def sequence(self, tokens: torch.Tensor, mask: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
        """The encoder over ``[behaviors, target]``: tokens (B, T, 2E), mask (B, T), target token (B, 2E)
        -> outputs (B, T + 1, 2E), the target's last (0 at padding)."""
        tokens = torch.cat([tokens, target[:, None]], dim=1)  # (B, T + 1, 2E)
        token_mask = torch.cat([mask, mask.new_ones(mask.shape[0], 1)], dim=1)  # (B, T + 1)
        for layer in self.layers:
            tokens = layer(tokens, token_mask)  # (B, T + 1, 2E)
        return tokens

    def encode(self, batch: Batch) -> torch.Tensor:
        """The encoder's outputs (B, T + 1, 2E) for the batch's targets: the behaviors, then the target token."""
        target = self.embedding.side(batch.target_items, batch.target_cates, batch.target_side)  # (B, 2E)
        return self.sequence(self.behavior_tokens(batch), batch.history_mask, target + self.position.weight[0])

    def encode_user(self, batch: Batch) -> BSTState:
        return BSTState(tokens=self.behavior_tokens(batch), mask=batch.history_mask, user=self.embedding.user(batch))

    def split_first_layer(self, state: BSTState) -> dict[str, torch.Tensor]:
        """The user's half of the split first layer (:meth:`EncoderLayer.attend_behaviors`), computed into
        ``state`` the first time."""
        names = ("queries", "keys", "values", "context", "log_normalizer")
        if state.log_normalizer is None:
            for name, value in self.layers[0].attend_behaviors(state.tokens, state.mask).items():
                setattr(state, name, value)
        return {name: getattr(state, name) for name in names}

    def score(self, state: BSTState, candidates: Candidates) -> torch.Tensor:
        candidates.validate(len(state))
        target = self.embedding.candidates(candidates)  # (B, K, 2E)
        if candidates.per_user == 1:  # the plain encoder over [behaviors, target], as in training
            outputs = self.sequence(state.tokens, state.mask, target[:, 0] + self.position.weight[0])  # (B, T+1, 2E)
            weights = state.mask.unsqueeze(-1).to(outputs.dtype)  # (B, T, 1)
            behavior_mean = (outputs[:, :-1] * weights).sum(dim=1) / weights.sum(dim=1).clamp(min=1)  # (B, 2E)
            features = torch.cat([outputs[:, -1], behavior_mean, target[:, 0]], dim=-1).unsqueeze(1)  # (B, 1, 6E)
            return self.dnn(with_user(features, state.user).squeeze(1))  # (B, 1)
        chunks = candidate_chunks(self, candidates.per_user, state.tokens.shape[0] * state.tokens.shape[1])
        return torch.cat([self.score_split(state, target[:, part]) for part in chunks], dim=1)  # (B, K)

    def score_split(self, state: BSTState, target: torch.Tensor) -> torch.Tensor:
        """Several candidates per user through the split first layer: (B, K, 2E) embeddings -> (B, K) logits."""
        mask = state.mask  # (B, T)
        (b, t, d), k = state.tokens.shape, target.shape[1]
        behavior_out, target_out = self.layers[0].forward_with_target(
            state.tokens, mask, self.split_first_layer(state), target + self.position.weight[0])
        # (N, K, 2E) the real behaviors' outputs, (B, K, 2E) the target tokens' outputs
        rows, steps = mask.nonzero(as_tuple=True)  # (N,), (N,)
        if len(self.layers) > 1:  # later layers see [behaviors, target] per candidate: plain layers
            padded = behavior_out.new_zeros(b, t, k, d).index_put((rows, steps), behavior_out)  # (B, T, K, 2E)
            tokens = torch.cat([padded.transpose(1, 2), target_out.unsqueeze(2)], dim=2).flatten(0, 1)  # (B*K, T+1, 2E)
            token_mask = torch.cat([mask, mask.new_ones(b, 1)], dim=1).repeat_interleave(k, dim=0)  # (B*K, T + 1)
            for layer in self.layers[1:]:
                tokens = layer(tokens, token_mask)
            tokens = tokens.view(b, k, t + 1, d)
            target_out = tokens[:, :, -1]  # (B, K, 2E)
            weights = mask[:, None, :, None].to(tokens.dtype)  # (B, 1, T, 1)
            behavior_mean = (tokens[:, :, :-1] * weights).sum(dim=2) / weights.sum(dim=2).clamp(min=1)  # (B, K, 2E)
        else:
            sums = behavior_out.new_zeros(b, k, d).index_add_(0, rows, behavior_out)  # (B, K, 2E)
            behavior_mean = sums / mask.sum(dim=1).clamp(min=1)[:, None, None].to(sums.dtype)
        features = torch.cat([target_out, behavior_mean, target], dim=-1)  # (B, K, 6E)
        return self.dnn(with_user(features, state.user).flatten(0, 1)).view(b, k)

    def forward(self, batch: Batch) -> ModelOutput:
        batch.validate()
        logits = self.score(self.encode_user(batch), Candidates.from_targets(batch)).squeeze(1)  # (B,)
        aux = {}
        if self.config.l2_mba > 0 and self.training:
            aux["l2_mba"] = self.config.l2_mba * self.embedding.batch_l2(batch)
        return ModelOutput(logits=logits, aux_losses=aux)
