"""Shared building blocks: activations, MLP, behavior embeddings, DIN's target attention."""

from __future__ import annotations

import torch
from torch import nn

from lifelong.nn.embedding import init_item_embedding

ACTIVATIONS = ("dice", "prelu", "relu", "sigmoid")
PAIRS_PER_CHUNK = 1 << 13  # (behavior, candidate) pairs per step of TargetAttention at inference
# pairs per step when scoring many candidates per user: a step's mixing matrices (H0 x D per candidate) and
# products stay in the core's cache (1 << 11: 3.7 ms per DIN request of 200 candidates at L = 50 against
# 4.1 to 4.6 ms with 1 << 13, one thread, 2026-12-07)
CANDIDATE_PAIRS_PER_CHUNK = 1 << 11


class Dice(nn.Module):
    """Dice (DIN paper, eq. 9): ``f(s) = p(s) * s + (1 - p(s)) * alpha * s`` with
    ``p(s) = sigmoid((s - E[s]) / sqrt(Var[s] + eps))``; mini-batch statistics in training, moving
    averages at inference.

    Args:
        num_features: size of the last dimension of the input (N, F).
        eps: the paper's epsilon (1e-8).

    Example:
        >>> Dice(4)(torch.randn(8, 4)).shape
        torch.Size([8, 4])
    """

    def __init__(self, num_features: int, eps: float = 1e-8, momentum: float = 0.01) -> None:
        super().__init__()
        # momentum 0.01 = the DIN/DIEN code's moving-average decay 0.99
        self.norm = nn.BatchNorm1d(num_features, eps=eps, affine=False, momentum=momentum)
        self.alpha = nn.Parameter(torch.zeros(num_features))

    def forward(self, x: torch.Tensor) -> torch.Tensor:  # (N, F) -> (N, F)
        if self.training or not self.norm.track_running_stats:
            p = torch.sigmoid(self.norm(x))
            return x * (p + (1 - p) * self.alpha)
        # inference: the moving averages fold into one scale and shift; in place when no gradient is
        # needed (ranking many candidates runs Dice over every (behavior, candidate) pair)
        scale, shift, _, _ = self.folded()  # (F,) each
        p = torch.addcmul(shift, x, scale)  # (N, F) (x - E[s]) / sqrt(Var[s] + eps)
        if torch.is_grad_enabled():
            p = torch.sigmoid(p)
            return x * (p * (1 - self.alpha) + self.alpha)
        return p.sigmoid_().mul_(1 - self.alpha).add_(self.alpha).mul_(x)

    def folded(self) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor]:
        """Inference constants ``(scale, shift, 1 - alpha, alpha)``, each (F,), for :meth:`apply_folded_`
        (computed once when the same Dice runs over many chunks)."""
        scale = torch.rsqrt(self.norm.running_var + self.norm.eps)
        return scale, -self.norm.running_mean * scale, 1 - self.alpha, self.alpha

    @staticmethod
    def apply_folded_(x: torch.Tensor, folded: tuple[torch.Tensor, ...],
                      gate: torch.Tensor | None = None) -> torch.Tensor:
        """Inference Dice with precomputed constants, overwriting ``x`` (N, F) (no gradient); ``gate``,
        a scratch tensor shaped like ``x``, saves an allocation when given."""
        scale, shift, one_minus_alpha, alpha = folded
        gate = torch.addcmul(shift, x, scale, out=gate).sigmoid_()  # p(s)
        return x.mul_(torch.addcmul(alpha, gate, one_minus_alpha, out=gate))  # s * (p + (1 - p) alpha)


def inference_layers(mlp: nn.Module) -> list:
    """An MLP's layers with each Dice replaced by its folded inference constants (see :func:`run_inference`)."""
    layers = list(mlp.layers) if isinstance(mlp, MLP) else [mlp]
    return [layer.folded() if isinstance(layer, Dice) and layer.norm.track_running_stats else layer
            for layer in layers]


def run_inference(layers: list, x: torch.Tensor, scratch: dict | None = None) -> torch.Tensor:
    """Runs :func:`inference_layers` (no gradient): Dice in place with constants computed once.

    ``scratch`` (a dict kept across calls of the same shapes or smaller) holds each layer's output and
    Dice's gate, so that a loop over chunks allocates nothing after its first chunk."""
    for i, layer in enumerate(layers):
        if scratch is None:
            x = Dice.apply_folded_(x, layer) if isinstance(layer, tuple) else layer(x)
            continue
        if isinstance(layer, tuple):
            x = Dice.apply_folded_(x, layer, _scratch(scratch, i, x.shape[0], x.shape[1], x))
        elif isinstance(layer, nn.Linear):
            out = _scratch(scratch, i, x.shape[0], layer.out_features, x)
            x = torch.addmm(layer.bias, x, layer.weight.T, out=out) if layer.bias is not None else \
                torch.mm(x, layer.weight.T, out=out)
        else:
            x = layer(x)
    return x


def _scratch(scratch: dict, key: int, rows: int, width: int, like: torch.Tensor) -> torch.Tensor:
    """A (rows, width) view of the scratch buffer ``key``, grown when too small."""
    buffer = scratch.get(key)
    if buffer is None or buffer.numel() < rows * width:
        buffer = scratch[key] = like.new_empty(rows * width)
    return buffer[: rows * width].view(rows, width)


def activation(name: str, num_features: int, dice_momentum: float = 0.01) -> nn.Module:
    if name == "dice":
        return Dice(num_features, momentum=dice_momentum)
    if name == "prelu":
        return nn.PReLU(num_features, init=0.25)
    if name == "relu":
        return nn.ReLU()
    if name == "sigmoid":
        return nn.Sigmoid()
    raise ValueError(f"unknown activation {name!r}; expected one of {ACTIVATIONS}")


class MLP(nn.Module):
    """Linear layers with an activation (and optional dropout) after each hidden layer.

    Args:
        in_dim: input size.
        hidden: hidden layer sizes.
        activation_name: one of ``dice``, ``prelu``, ``relu``, ``sigmoid``.
        out_dim: size of a final linear output layer, or None for none.
        dropout: dropout after each hidden activation.
        dice_momentum: update rate of Dice's moving averages (0.01 = the DIN code's decay 0.99).

    Example:
        >>> MLP(8, [16, 4], "relu", out_dim=1)(torch.randn(3, 8)).shape
        torch.Size([3, 1])
    """

    def __init__(self, in_dim: int, hidden: list[int], activation_name: str = "relu",
                 out_dim: int | None = None, dropout: float = 0.0, dice_momentum: float = 0.01) -> None:
        super().__init__()
        layers: list[nn.Module] = []
        size = in_dim
        for width in hidden:
            layers += [nn.Linear(size, width), activation(activation_name, width, dice_momentum)]
            if dropout > 0:
                layers.append(nn.Dropout(dropout))
            size = width
        if out_dim is not None:
            layers.append(nn.Linear(size, out_dim))
            size = out_dim
        self.layers = nn.Sequential(*layers)
        self.out_dim = size

    def forward(self, x: torch.Tensor) -> torch.Tensor:  # (N, in_dim) -> (N, out_dim)
        return self.layers(x)


class BehaviorEmbedding(nn.Module):
    """Item id and category embeddings, concatenated: a behavior or a target is ``2 * dim`` wide.

    Index 0 is padding (a zero vector that gets no gradient).

    Example:
        >>> emb = BehaviorEmbedding(n_items=10, n_cates=5, dim=4)
        >>> emb(torch.tensor([[1, 2]]), torch.tensor([[1, 1]])).shape
        torch.Size([1, 2, 8])
    """

    def __init__(self, n_items: int, n_cates: int, dim: int) -> None:
        super().__init__()
        self.item = nn.Embedding(n_items, dim, padding_idx=0)
        self.cate = nn.Embedding(n_cates, dim, padding_idx=0)
        for table in (self.item, self.cate):
            init_item_embedding(table, std=1e-2)
        self.out_dim = 2 * dim
        # id frequencies n_j of the mini-batch aware regulariser; the training loop fills them from the data
        self.register_buffer("item_counts", torch.ones(n_items), persistent=False)
        self.register_buffer("cate_counts", torch.ones(n_cates), persistent=False)

    def forward(self, items: torch.Tensor, cates: torch.Tensor) -> torch.Tensor:  # (...,) -> (..., 2D)
        return torch.cat([self.item(items), self.cate(cates)], dim=-1)

    def mini_batch_l2(self, items: torch.Tensor, cates: torch.Tensor,
                      item_counts: torch.Tensor, cate_counts: torch.Tensor) -> torch.Tensor:
        """DIN's mini-batch aware regulariser: ``sum_j ||w_j||^2 / n_j`` over the ids ``j`` that occur
        in this mini-batch (padding excluded), ``n_j`` = the id's frequency in the training data."""
        total = items.new_zeros((), dtype=self.item.weight.dtype)
        for table, ids, counts in ((self.item, items, item_counts), (self.cate, cates, cate_counts)):
            present = torch.unique(ids)
            present = present[present > 0]
            weights = table.weight[present]  # (U, D)
            total = total + (weights.pow(2).sum(dim=1) / counts[present].clamp(min=1)).sum()
        return total

    def batch_l2(self, batch) -> torch.Tensor:
        """:meth:`mini_batch_l2` over the ids of a batch's histories and targets, with this table's counts."""
        items = torch.cat([batch.history_items.flatten(), batch.target_items])
        cates = torch.cat([batch.history_cates.flatten(), batch.target_cates])
        return self.mini_batch_l2(items, cates, self.item_counts, self.cate_counts)


class TargetAttention(nn.Module):
    """DIN's local activation unit: an MLP scores each behavior from ``[h, t, h - t, h * t]``; the
    interest is the weighted sum of behaviors.

    Weights are used un-normalised as in the paper (``normalization="none"``) or softmax-normalised
    over the real behaviors. Padding never takes part: the MLP runs on the packed real behaviors only,
    so Dice's batch statistics and the result do not depend on how much padding a batch has.

    ``impl="reference"`` builds the 4-way concatenation literally; ``impl="fused"`` (default) splits
    the first linear layer, ``W [h, t, h - t, h * t] = (W_h + W_d) h + (W_t - W_d) t + W_p (h * t)``,
    so the target part is computed once per candidate instead of once per behavior. Both give the same
    result (tested).

    Several candidates per user (targets (B, K, D)) are scored against the same behaviors at once. Each
    (behavior, candidate) pair goes through the MLP, as target attention must, but the first layer is
    one matrix product per user, ``(W_h + W_d + W_p diag(t_k)) h`` for all ``k`` at once, so no
    (N, K, D) tensor of products is built and the behaviors' own part costs nothing extra.

    Args:
        dim: behavior and target width.
        hidden: activation-unit MLP sizes, e.g. [64, 32] (at least one layer).
        activation_name: activation of the hidden layers (the paper: Dice or PReLU).
        normalization: ``none`` or ``softmax``.
        impl: ``fused`` or ``reference``.

    Example:
        >>> att = TargetAttention(8, [16, 4], "relu")
        >>> keys, target = torch.randn(2, 5, 8), torch.randn(2, 8)
        >>> mask = torch.tensor([[1, 1, 0, 0, 0], [1, 1, 1, 1, 1]], dtype=torch.bool)
        >>> att(target, keys, mask)[0].shape
        torch.Size([2, 8])
        >>> att(torch.randn(2, 3, 8), keys, mask)[0].shape  # 3 candidates per user
        torch.Size([2, 3, 8])
    """

    def __init__(self, dim: int, hidden: list[int], activation_name: str = "dice",
                 normalization: str = "none", impl: str = "fused") -> None:
        super().__init__()
        if not hidden:
            raise ValueError("TargetAttention needs at least one hidden layer")
        if normalization not in ("none", "softmax"):
            raise ValueError(f"normalization must be 'none' or 'softmax', got {normalization!r}")
        if impl not in ("fused", "reference"):
            raise ValueError(f"impl must be 'fused' or 'reference', got {impl!r}")
        self.dim = dim
        self.first = nn.Linear(4 * dim, hidden[0])
        self.first_activation = activation(activation_name, hidden[0])
        self.rest = MLP(hidden[0], list(hidden[1:]), activation_name, out_dim=1)
        self.normalization = normalization
        self.impl = impl

    def forward(self, target: torch.Tensor, keys: torch.Tensor,
                mask: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """Args:
            target: (B, D) candidate embedding, or (B, K, D) for K candidates per user.
            keys: (B, T, D) behavior embeddings.
            mask: (B, T) bool, True at real behaviors.

        Returns:
            interest (B, D) and weights (B, T) (0 at padding); (B, K, D) and (B, K, T) for (B, K, D) targets.
        """
        single = target.dim() == 2
        targets = target.unsqueeze(1) if single else target  # (B, K, D)
        b, t, _ = keys.shape
        k = targets.shape[1]
        rows, steps = mask.nonzero(as_tuple=True)  # (N,), (N,) real behaviors
        n = rows.shape[0]
        if self.training or torch.is_grad_enabled():  # every pair at once: Dice's batch statistics see them all
            scores = self.pair_scores(targets, keys, rows, steps)  # (N, K)
        elif k == 1:  # inference, in chunks of pairs whose intermediates stay in the cache (same result)
            parts = [slice(i, i + PAIRS_PER_CHUNK) for i in range(0, n, PAIRS_PER_CHUNK)]
            scores = torch.cat([self.pair_scores(targets, keys, rows[part], steps[part]) for part in parts]
                               or [targets.new_zeros(0, 1)])
        elif self.impl == "fused":
            scores = self.many_pair_scores(targets, keys, rows, steps)  # (N, K)
        else:
            chunk = max(1, PAIRS_PER_CHUNK // max(n, 1))  # candidates per chunk
            scores = torch.cat([self.pair_scores(targets[:, i : i + chunk], keys, rows, steps)
                                for i in range(0, k, chunk)], dim=1)  # (N, K)
        if self.normalization == "softmax":
            logits = scores.new_full((b, t, k), float("-inf")).index_put((rows, steps), scores)  # (B, T, K)
            weights = torch.softmax(logits, dim=1).nan_to_num(0.0)  # an empty history gives all zeros
        else:
            weights = scores.new_zeros((b, t, k)).index_put((rows, steps), scores)  # (B, T, K)
        interest = torch.einsum("btk,btd->bkd", weights, keys)  # (B, K, D)
        weights = weights.transpose(1, 2)  # (B, K, T)
        if single:
            return interest.squeeze(1), weights.squeeze(1)
        return interest, weights

    def pair_scores(self, targets: torch.Tensor, keys: torch.Tensor, rows: torch.Tensor,
                    steps: torch.Tensor) -> torch.Tensor:
        """The activation unit's raw score of every (behavior, candidate) pair.

        Args:
            targets: (B, K, D) candidates.
            keys: (B, T, D) behaviors.
            rows, steps: (N,) the behaviors scored, ``keys[rows, steps]``; with ``K > 1`` (fused) every
                real behavior of ``keys`` in row-major order (``mask.nonzero()``).

        Returns:
            (N, K) scores.
        """
        b, t, d = keys.shape
        k = targets.shape[1]
        if self.impl == "reference":
            packed = keys[rows, steps].unsqueeze(1).expand(-1, k, -1)  # (N, K, D)
            paired = targets[rows]  # (N, K, D)
            hidden = self.first(torch.cat([packed, paired, packed - paired, packed * paired], dim=-1))  # (N, K, H0)
        else:
            w_h, w_t, w_d, w_p = self.first.weight.split(d, dim=1)  # 4 x (H0, D)
            per_target = targets @ (w_t - w_d).T + self.first.bias  # (B, K, H0)
            if k == 1:  # one candidate per user (training, forward): the listed behaviors, packed
                packed = keys[rows, steps]  # (N, D)
                hidden = packed @ (w_h + w_d).T + (packed * targets[rows, 0]) @ w_p.T + per_target[rows, 0]  # (N, H0)
            else:  # (W_h + W_d + W_p diag(t_k)) h for every k: one (T, D) x (D, K * H0) product per user
                mixing = (w_h + w_d) + w_p * targets.unsqueeze(2)  # (B, K, H0, D)
                hidden = torch.bmm(keys, mixing.flatten(1, 2).transpose(1, 2)).view(b, t, k, -1)  # (B, T, K, H0)
                hidden += per_target.unsqueeze(1)  # in place: the product's output is not saved for backward
                if rows.shape[0] < b * t:  # padding: keep the real behaviors (Dice's batch statistics)
                    hidden = hidden[rows, steps]  # (N, K, H0)
        return self.rest(self.first_activation(hidden.reshape(-1, hidden.shape[-1]))).view(-1, k)  # (N, K)


    def many_pair_scores(self, targets: torch.Tensor, keys: torch.Tensor, rows: torch.Tensor,
                         steps: torch.Tensor) -> torch.Tensor:
        """:meth:`pair_scores` (fused) of K candidates per user at inference, without gradients.

        The same arithmetic, arranged for scoring many candidates: the candidates' part of the first
        layer is built once for all K; each chunk of candidates builds its mixing matrices
        ``W_h + W_d + W_p diag(t_k)`` (one ``addcmul`` into a buffer the chunks share) and is one ``baddbmm``
        (their bias folded into the product); Dice runs in place with constants computed once
        (:func:`inference_layers`).

        Returns:
            (N, K) scores, N = ``rows.shape[0]`` (every real behavior of ``keys``, row-major).
        """
        b, t, d = keys.shape
        k = targets.shape[1]
        w_h, w_t, w_d, w_p = self.first.weight.split(d, dim=1)  # 4 x (H0, D)
        h0 = w_h.shape[0]
        per_target = torch.addmm(self.first.bias, targets.reshape(-1, d), (w_t - w_d).T).view(b, 1, k * h0)
        shared = w_h + w_d  # (H0, D)
        first = inference_layers(self.first_activation)
        rest = inference_layers(self.rest)
        padded = rows.shape[0] < b * t
        chunk = min(k, max(1, CANDIDATE_PAIRS_PER_CHUNK // max(b * t, 1)))  # candidates per chunk
        # scratch reused by every chunk (large per-chunk allocations cost page faults); a chunk's mixing
        # matrices are built just before its product reads them, while they are in the cache
        product, first_scratch, rest_scratch = keys.new_empty(b * t * chunk * h0), {}, {}
        mixing = keys.new_empty(b * chunk * h0 * d)
        scores = keys.new_empty(rows.shape[0], k)  # (N, K)
        for i in range(0, k, chunk):
            kc = min(k, i + chunk) - i
            cols = slice(i * h0, (i + kc) * h0)
            mixed = torch.addcmul(shared, w_p, targets[:, i : i + kc].unsqueeze(2),
                                  out=mixing[: b * kc * h0 * d].view(b, kc, h0, d))  # (B, k_c, H0, D)
            hidden = torch.baddbmm(per_target[:, :, cols], keys, mixed.view(b, kc * h0, d).transpose(1, 2),
                                   out=product[: b * t * kc * h0].view(b, t, kc * h0))  # (B, T, k_c * H0)
            hidden = hidden.view(b, t, kc, h0)
            if padded:
                hidden = hidden[rows, steps]  # (N, k_c, H0)
            hidden = hidden.reshape(-1, h0)  # (N * k_c, H0)
            activated = run_inference(first, hidden, first_scratch)
            scores[:, i : i + kc] = run_inference(rest, activated, rest_scratch).view(-1, kc)
        return scores


def relative_positions(mask: torch.Tensor) -> torch.Tensor:
    """Position of each behavior relative to the target for left-aligned histories (TIN, BST).

    Args:
        mask: (B, T) bool, True at real events (left-aligned).

    Returns:
        (B, T) int64: ``l - t`` at real events (most recent = 1), 0 at padding.

    Example:
        >>> relative_positions(torch.tensor([[True, True, False]]))
        tensor([[2, 1, 0]])
    """
    lengths = mask.sum(dim=1, keepdim=True)  # (B, 1)
    steps = torch.arange(mask.shape[1], device=mask.device)[None, :]  # (1, T)
    return torch.where(mask, lengths - steps, torch.zeros_like(steps))


def relu_tower(dim: int, hidden: tuple[int, ...]) -> nn.Sequential:
    """``hidden`` ReLU layers then a linear map back to ``dim`` (a user-vector tower: YouTube DNN's,
    MIND's H layers). The last layer is linear, so vectors scored by inner product can be negative.

    Example:
        >>> relu_tower(8, (16,))(torch.zeros(2, 8)).shape
        torch.Size([2, 8])
    """
    layers: list[nn.Module] = []
    width = dim
    for size in hidden:
        layers += [nn.Linear(width, size), nn.ReLU()]
        width = size
    return nn.Sequential(*layers, nn.Linear(width, dim))


def mean_pool(embeddings: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
    """(B, T, D) embeddings, (B, T) bool mask -> (B, D) mean over the real positions (0 when none)."""
    weights = mask.unsqueeze(-1).to(embeddings.dtype)  # (B, T, 1)
    return (embeddings * weights).sum(1) / weights.sum(1).clamp(min=1.0)
