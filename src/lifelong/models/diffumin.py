"""DiffuMIN: diffusion-driven multi-interest network.

Paper: Lai et al., DiffuMIN, a diffusion-driven multi-interest network for CTR prediction,
arXiv 2508.15311, RecSys 2025 (pp. 289-298); the reference for the tensor ops is the authors' TF1 code
(``handle_layer/handle_lib/handle_rec_unit.py``).

Mechanism:
  - OMIE (orthogonal multi-interest extractor): the target is projected, ``e_s W`` with
    ``W in R^{D x cD}``, reshaped to ``D x c`` and QR-decomposed into ``c`` orthonormal channels ``O``;
    the relevance ``A = E O`` routes each behavior to its top-1 channel; per channel the
    ``top_per_channel`` most relevant routed behaviors are mean-pooled into an interest ``r_i``
    (an empty channel gives a zero vector).
  - DMIG (diffusion multi-interest generator): a DDPM (``diffusion_steps`` = 1000, linear beta
    1e-4 .. 0.02) whose denoiser, a small Transformer over the ``c`` channel tokens (each token = noisy
    interest + step embedding + projected channel vector ``o_i``; the other channels are the context
    through self-attention), predicts ``x_0`` and is trained with an L2 loss. Generation starts from
    the noised aggregated interest and runs ``infer_steps`` reverse steps, giving ``r*``.
  - CMIC (contrastive multi-interest calibrator): InfoNCE per channel, positive ``(r_i, r*_i)`` of
    the same sample, negatives ``r*_i`` of the other in-batch samples, cosine / temperature 0.05.
  - Short-term interest: the most recent ``short_length`` behaviors and the target through a
    Transformer encoder (dff factor 3); its output at the target token.
  - Prediction: MLP (Dice) on ``[r, r*, short-term, e_s]``; loss
    ``L_CTR + 0.01 L_diff + 0.001 L_cl`` (the latter two returned as ``aux_losses`` in training).

Deviations:
  - OMIE pooling: the forward value is the paper's mean pool, but each kept behavior is multiplied
    by the straight-through factor ``1 + a - stop_grad(a)`` (``a`` its relevance to its channel),
    so ``W`` receives a gradient through the relevance (the hard routing and top-k have none).
  - QR's sign ambiguity is fixed by making ``diag(R)`` positive (deterministic, continuous channels).
  - The channels are computed from the *detached* target embedding (``W`` still learns through the
    QR). ``Q`` depends only on the direction of ``e_s W``, so its gradient with respect to ``e_s``
    scales with ``1 / ||e_s W||``; with embeddings at ~1e-2 per dimension this path dominated the
    target embedding's updates and made training unstable (Beauty, 2 epochs, seed 2026, no
    diffusion: test AUC 0.7402 with the gradient, 0.7639 without).
  - ``top_per_channel`` is a count (default 20 for histories of 50; the code keeps 100 of 5000).
  - Step indexing: step 0 is the clean interest (``alpha_bar_0 = 1``), steps 1..T follow the DDPM
    schedule.
  - The diffusion target ``r`` is detached (``L_diff`` trains the denoiser only, it cannot shrink
    the interests to make them easy to predict); the noised input keeps its gradient.
  - The diffusion runs on unit-RMS interests (``r / (||r|| / sqrt(D))``, the scale restored on the
    output): the embeddings are ~1e-2 per dimension, so with the DDPM's unit noise almost every step
    would show the denoiser pure noise. Training steps are drawn from ``1..infer_start_step``, the noise
    levels inference starts from (the paper draws from ``1..T``), so the ``r*`` the MLP sees in
    training and at inference come from the same range. CMIC's negatives are the in-batch samples of
    *other users* (a user's other samples share its history).
  - In training ``r*`` is the denoiser's ``x_0`` prediction at the sampled training step (with
    gradient). At inference the start is ``sqrt(alpha_bar_t') r`` (the noise set to its mean, zero)
    at ``t' = infer_start_step``, followed by deterministic DDIM (eta = 0) steps to 0 over
    ``infer_steps`` evenly spaced steps; ``r*`` is the last ``x_0`` prediction (with
    ``infer_start_step = 0``, one prediction at step 0). The paper samples noise at inference; this
    keeps evaluation deterministic and a sample's score independent of its batch.
  - The step embedding is sinusoidal followed by a two-layer MLP (as in DDPM); the channel vector is
    projected to ``D`` by a linear layer. Both Transformers are post-norm with ReLU feed-forward,
    written out so that padded keys contribute exact zeros (no ``nn.TransformerEncoderLayer`` fast path).
  - The short-term branch adds learned recency-position embeddings (not specified in the paper).
  - MLP (200, 80) instead of 1024-512-256 (the Transformers keep the code's 2 layers, 2 heads).
  - No other features (the shared datasets have none): a behavior is its item-id and category
    embeddings concatenated.
  - An empty channel (no behavior routed to it) has a zero placeholder interest: it is left out of
    ``L_diff`` and ``L_cl`` (neither anchor nor negative), which average over the non-empty channels.
  - The training step and noise of the diffusion draw from their own seeded stream (``"diffusion"``,
    :mod:`lifelong.streams`), so switching dropout on does not change them.
  - ``use_diffusion = False`` (ablation) drops DMIG, ``r*`` and therefore CMIC as well
    (``use_contrastive`` is then ignored, since the calibrator needs ``r*``).
  - Optional DIN mini-batch-aware L2 regulariser (``l2_mba``) on the embedding tables.
  - Dropout 0.5 after each hidden layer of the prediction MLP (the paper gives none). Chosen on P1
    Beauty *validation* AUC (no-diffusion variant, 2 epochs, seeds 2024 and 2025) among 0, 0.3 and 0.5:
    mean 0.7762, 0.7851, 0.7874. Without it the model fits the training set faster than DIN but
    generalises like sumpool.
  - Dice's moving averages update at rate ``dice_momentum`` = 0.1 (DIN's code: 0.01). The MLP input
    mixes the LayerNorm-scale short-term vector with 1e-2-scale interests, so the first layer's
    pre-activations have a large, fast-drifting mean and a small spread; averages at 0.01 lag by
    several standard deviations and inference disagrees with training (Beauty, 2 epochs, seed 2025,
    no diffusion: valid AUC 0.7447 with the moving averages, 0.7793 with the batch's statistics;
    0.7684 after training at 0.1).
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import nn

from lifelong.batch import Batch
from lifelong.models.ranking import Candidates, RankingConfig, RankingModel, UserState, with_user
from lifelong.models.registry import ModelOutput, register
from lifelong.nn import ACTIVATIONS, MLP
from lifelong.nn.features import FeatureEmbedding
from lifelong.nn.transformer import EncoderLayer as SharedEncoderLayer
from lifelong.nn.transformer import EncoderSpec
from lifelong.streams import STREAMS


@dataclass
class DiffuMINConfig(RankingConfig):
    """Args:
        embedding_dim: size of each id embedding (a behavior is ``D = 2 * embedding_dim`` wide, plus
            ``embedding_dim`` per item side feature read).
        channels: number of interest channels ``c`` (paper ``channel_num`` 4); at most ``D``.
        top_per_channel: behaviors kept per channel before mean pooling.
        diffusion_steps: DDPM steps ``T`` (1000).
        beta_start, beta_end: linear beta schedule (1e-4, 0.02).
        infer_start_step: step ``t'`` at which inference starts from the (noise-free) noised interest.
        infer_steps: DDIM reverse steps at inference (paper ``infer_timesteps`` 10).
        denoiser_layers: Transformer layers of the denoiser (2 in the code).
        short_length: number of most recent behaviors in the short-term branch.
        short_layers: Transformer layers of the short-term branch.
        heads: attention heads of both Transformers (must divide ``D``).
        ffn_factor: feed-forward width factor of both Transformers (paper dff factor 3).
        temperature: InfoNCE temperature (0.05).
        diffusion_weight: ``lambda_1`` of ``L_diff`` (0.01).
        contrastive_weight: ``lambda_2`` of ``L_cl`` (0.001).
        use_diffusion: keep DMIG (and ``r*``); False is the "without diffusion" ablation.
        use_contrastive: keep CMIC (only with ``use_diffusion``).
        dnn_hidden: MLP sizes of the prediction layer.
        dnn_activation: ``dice`` in the paper.
        dice_momentum: update rate of Dice's moving averages (0.1; DIN's code uses 0.01).
        dropout: dropout after each hidden MLP layer (0.5; not given by the paper, see Deviations).
        l2_mba: weight of the mini-batch aware L2 regulariser (0 = off).
    """

    model_type = "diffumin"
    channels: int = 4
    top_per_channel: int = 20
    diffusion_steps: int = 1000
    beta_start: float = 1e-4
    beta_end: float = 0.02
    infer_start_step: int = 100
    infer_steps: int = 10
    denoiser_layers: int = 2
    short_length: int = 10
    short_layers: int = 2
    heads: int = 2
    ffn_factor: int = 3
    temperature: float = 0.05
    diffusion_weight: float = 0.01
    contrastive_weight: float = 0.001
    use_diffusion: bool = True
    use_contrastive: bool = True
    dnn_hidden: tuple[int, ...] = (200, 80)
    dnn_activation: str = "dice"
    dice_momentum: float = 0.1
    dropout: float = 0.5
    l2_mba: float = 0.0

    def validate(self) -> None:
        super().validate()
        width = self.item_width
        if not 0.0 < self.dice_momentum <= 1.0:
            raise ValueError(f"diffumin: dice_momentum must be in (0, 1], got {self.dice_momentum}")
        if not 1 <= self.channels <= width:
            raise ValueError(f"diffumin: channels must be in [1, D = {width}] (the behavior width; QR needs c <= D), "
                             f"got {self.channels}")
        for name in ("top_per_channel", "diffusion_steps", "infer_steps", "short_length", "heads", "ffn_factor",
                     "denoiser_layers", "short_layers"):
            if getattr(self, name) < 1:
                raise ValueError(f"diffumin: {name} must be at least 1, got {getattr(self, name)}")
        if width % self.heads:
            raise ValueError(f"diffumin: heads ({self.heads}) must divide the behavior width 2 * embedding_dim = {width}")
        if not 0 < self.beta_start <= self.beta_end < 1:
            raise ValueError(f"diffumin: need 0 < beta_start <= beta_end < 1, got {self.beta_start}, {self.beta_end}")
        if not 0 <= self.infer_start_step <= self.diffusion_steps:
            raise ValueError(f"diffumin: infer_start_step must be in [0, diffusion_steps = {self.diffusion_steps}], "
                             f"got {self.infer_start_step}")
        if self.temperature <= 0 or self.diffusion_weight < 0 or self.contrastive_weight < 0:
            raise ValueError("diffumin: temperature must be positive and the loss weights non-negative")
        if self.dnn_activation not in ACTIVATIONS:
            raise ValueError(f"diffumin: dnn_activation must be one of {ACTIVATIONS}, got {self.dnn_activation!r}")
        if not 0.0 <= self.dropout < 1.0 or self.l2_mba < 0:
            raise ValueError("diffumin: dropout must be in [0, 1) and l2_mba non-negative")


class EncoderLayer(SharedEncoderLayer):
    """DiffuMIN's Transformer layer: the shared post-norm layer (:class:`lifelong.nn.transformer.EncoderLayer`)
    with a ReLU feed-forward of width ``ffn_factor * D``, no dropout and the literal masked softmax.

    Args:
        dim: token width ``D``.
        heads: attention heads (divide ``D``).
        ffn_factor: feed-forward width is ``ffn_factor * D``.

    Example:
        >>> EncoderLayer(8, 2, 3)(torch.randn(2, 5, 8), torch.ones(2, 5, dtype=torch.bool)).shape
        torch.Size([2, 5, 8])
    """

    def __init__(self, dim: int, heads: int, ffn_factor: int) -> None:
        super().__init__(dim, EncoderSpec(heads=heads, ffn_dim=ffn_factor * dim, impl="reference"))


class OrthogonalInterestExtractor(nn.Module):
    """OMIE: target-conditioned orthonormal channels, top-1 routing, per-channel top-k mean pooling.

    The channels depend on the target, so everything here is per candidate; K candidates per user
    (target (B, K, D)) share the behaviors without copying them.

    Args:
        dim: behavior width ``D``.
        channels: ``c`` (at most ``D``).
        top_per_channel: behaviors kept per channel.

    Example:
        >>> omie = OrthogonalInterestExtractor(8, 3, 2)
        >>> mask = torch.tensor([[True, True, True, False]])
        >>> omie(torch.randn(1, 4, 8) * mask[..., None], mask, torch.randn(1, 8))[0].shape
        torch.Size([1, 3, 8])
        >>> omie(torch.randn(1, 4, 8) * mask[..., None], mask, torch.randn(1, 5, 8))[0].shape  # 5 candidates
        torch.Size([1, 5, 3, 8])
    """

    def __init__(self, dim: int, channels: int, top_per_channel: int) -> None:
        super().__init__()
        self.channels = channels
        self.top_per_channel = top_per_channel
        self.projection = nn.Linear(dim, dim * channels, bias=False)  # the paper's W (D x cD)

    def orthonormal_channels(self, target: torch.Tensor) -> torch.Tensor:
        """target (..., D) -> O (..., D, c) with orthonormal columns."""
        d = target.shape[-1]
        # the target is detached here: Q depends only on the direction of W e_s, so its gradient with
        # respect to e_s scales with 1 / ||W e_s||, which at the embeddings' 1e-2 scale swamps the target
        # embedding's other gradients (W itself still learns through Q)
        basis = self.projection(target.detach()).view(*target.shape[:-1], d, self.channels)  # (..., D, c)
        q, r = torch.linalg.qr(basis, mode="reduced")  # (..., D, c), (..., c, c)
        sign = torch.where(torch.diagonal(r, dim1=-2, dim2=-1) < 0, -1.0, 1.0)  # (..., c)
        return q * sign.unsqueeze(-2)

    def forward(self, history: torch.Tensor, mask: torch.Tensor, target: torch.Tensor):
        """Args:
            history: (B, T, D) behaviors (zero at padding); mask: (B, T) bool; target: (B, D), or
            (B, K, D) for K candidates per user.

        Returns:
            interests (B, c, D), channels O (B, D, c), routing (B, T, c) bool (one-hot at real
            behaviors, all False at padding), kept (B, c, T) bool (the pooled behaviors); with a
            K dimension after B for (B, K, D) targets.
        """
        single = target.dim() == 2
        targets = target.unsqueeze(1) if single else target  # (B, K, D)
        channels = self.orthonormal_channels(targets)  # (B, K, D, c)
        relevance = torch.einsum("btd,bkdc->bktc", history, channels)  # (B, K, T, c)
        top1 = F.one_hot(relevance.argmax(dim=-1), self.channels).bool()  # (B, K, T, c)
        routing = top1 & mask[:, None, :, None]  # padding is never routed
        relevance = relevance.transpose(2, 3)  # (B, K, c, T)
        scores = relevance.detach().masked_fill(~routing.transpose(2, 3), float("-inf"))  # (B, K, c, T)
        k = min(self.top_per_channel, scores.shape[-1])
        values, index = scores.topk(k, dim=-1)  # (B, K, c, k)
        kept = torch.zeros_like(scores, dtype=torch.bool).scatter(-1, index, torch.isfinite(values))  # (B, K, c, T)
        weights = kept.to(history.dtype) / kept.sum(dim=-1, keepdim=True).clamp(min=1)  # mean pool, (B, K, c, T)
        weights = weights * (1 + relevance - relevance.detach())  # straight-through: value unchanged
        interests = torch.einsum("bkct,btd->bkcd", weights, history)  # (B, K, c, D); empty channel -> 0
        if single:
            return interests.squeeze(1), channels.squeeze(1), routing.squeeze(1), kept.squeeze(1)
        return interests, channels, routing, kept


def sinusoidal_embedding(steps: torch.Tensor, dim: int) -> torch.Tensor:
    """steps (B,) int -> (B, dim) sin/cos features (DDPM / Transformer positional encoding)."""
    half = dim // 2
    freqs = torch.exp(-math.log(10000.0) * torch.arange(half, device=steps.device, dtype=torch.float32) / max(half, 1))
    args = steps.float().unsqueeze(-1) * freqs  # (B, half)
    features = torch.cat([args.sin(), args.cos()], dim=-1)
    return F.pad(features, (0, dim - 2 * half))


class DiffusionInterestGenerator(nn.Module):
    """DMIG: DDPM over the ``c`` interests with a Transformer denoiser that predicts ``x_0``.

    Step 0 is the clean interest; steps 1..T follow the linear beta schedule.

    Args:
        dim: interest width ``D``.
        config: the model config (steps, schedule, inference, Transformer sizes).

    Example:
        >>> cfg = DiffuMINConfig(n_items=10, n_cates=4, embedding_dim=4, heads=2)
        >>> gen = DiffusionInterestGenerator(8, cfg)
        >>> gen.q_sample(torch.ones(2, 4, 8), torch.tensor([0, 1000]), torch.zeros(2, 4, 8))[0, 0, 0].item()
        1.0
    """

    def __init__(self, dim: int, config: DiffuMINConfig) -> None:
        super().__init__()
        self.dim = dim
        self.steps = config.diffusion_steps
        betas = torch.linspace(config.beta_start, config.beta_end, config.diffusion_steps, dtype=torch.float64)
        alpha_bar = torch.cat([torch.ones(1, dtype=torch.float64), torch.cumprod(1 - betas, dim=0)])  # (T + 1,)
        self.register_buffer("alpha_bar", alpha_bar.float(), persistent=False)
        # evenly spaced inference steps t' > ... > 0 (duplicates removed)
        start = config.infer_start_step
        schedule = sorted({round(start * (1 - i / config.infer_steps)) for i in range(config.infer_steps + 1)}, reverse=True)
        self.infer_schedule = schedule  # e.g. [100, 90, ..., 10, 0]
        self.step_mlp = nn.Sequential(nn.Linear(dim, dim), nn.SiLU(), nn.Linear(dim, dim))
        self.channel_projection = nn.Linear(dim, dim)
        self.layers = nn.ModuleList(EncoderLayer(dim, config.heads, config.ffn_factor) for _ in range(config.denoiser_layers))
        self.head = nn.Linear(dim, dim)

    def q_sample(self, x0: torch.Tensor, step: torch.Tensor, noise: torch.Tensor) -> torch.Tensor:
        """Forward process: x0 (B, c, D), step (B,) in 0..T, noise (B, c, D) -> x_t (B, c, D)."""
        alpha_bar = self.alpha_bar[step].view(-1, 1, 1)  # (B, 1, 1)
        return alpha_bar.sqrt() * x0 + (1 - alpha_bar).sqrt() * noise

    def denoise(self, noisy: torch.Tensor, step: torch.Tensor, channels: torch.Tensor) -> torch.Tensor:
        """Predict x_0: noisy (B, c, D), step (B,), channels O (B, D, c) -> (B, c, D)."""
        tokens = noisy + self.step_mlp(sinusoidal_embedding(step, self.dim)).unsqueeze(1)  # (B, c, D)
        tokens = tokens + self.channel_projection(channels.transpose(1, 2))  # + o_i, (B, c, D)
        for layer in self.layers:
            tokens = layer(tokens)  # each channel attends to the others (context interests)
        return self.head(tokens)

    def generate(self, interests: torch.Tensor, channels: torch.Tensor) -> torch.Tensor:
        """Deterministic inference: from sqrt(alpha_bar_t') r, DDIM (eta = 0) down to step 0.

        interests (B, c, D), channels (B, D, c) -> r* (B, c, D), the last x_0 prediction.
        """
        b = interests.shape[0]
        schedule = self.infer_schedule

        def steps(value: int) -> torch.Tensor:
            return interests.new_full((b,), value, dtype=torch.long)

        x = self.q_sample(interests, steps(schedule[0]), torch.zeros_like(interests))  # noise at its mean
        if len(schedule) == 1:  # start step 0: one x_0 prediction of the clean interest
            return self.denoise(x, steps(0), channels)
        for current, following in zip(schedule[:-1], schedule[1:]):
            x0 = self.denoise(x, steps(current), channels)  # (B, c, D)
            a_t, a_next = self.alpha_bar[current], self.alpha_bar[following]
            eps = (x - a_t.sqrt() * x0) / (1 - a_t).sqrt()  # implied noise
            x = a_next.sqrt() * x0 + (1 - a_next).sqrt() * eps
        return x0


def diffusion_loss(predicted: torch.Tensor, clean: torch.Tensor, present: torch.Tensor) -> torch.Tensor:
    """DMIG's L2 loss of the x_0 prediction over the non-empty channels: the squared error, averaged over
    ``D`` and over the (sample, channel) pairs whose channel pooled a behavior. An empty channel's interest
    is a placeholder zero, not an interest, so it contributes nothing.

    Args:
        predicted: (..., c, D) x_0 predictions. clean: (..., c, D) targets. present: (..., c) bool.

    Returns:
        scalar loss (zero when every channel is empty).

    Example:
        >>> clean = torch.zeros(1, 2, 4)
        >>> float(diffusion_loss(torch.ones(1, 2, 4), clean, torch.tensor([[True, False]])))
        1.0
    """
    error = (predicted - clean).pow(2).mean(dim=-1)  # (..., c)
    weights = present.to(error.dtype)
    return (error * weights).sum() / weights.sum().clamp(min=1)


def contrastive_loss(interests: torch.Tensor, generated: torch.Tensor, temperature: float,
                     users: torch.Tensor | None = None, present: torch.Tensor | None = None) -> torch.Tensor:
    """CMIC InfoNCE, averaged over the (sample, channel) anchors: positive (r_i, r*_i) of the same sample,
    negatives r*_i of the other samples (of other users when ``users`` is given: a user's other samples
    share most of the history, so they would be false negatives); cosine similarity / temperature.
    With ``present``, an empty channel is neither an anchor nor a negative.

    Args:
        interests: r (B, c, D). generated: r* (B, c, D). users: (B,) user ids, or None.
        present: (B, c) bool, True at the channels that pooled a behavior (None = all).

    Returns:
        scalar loss (zero when B = 1 or no channel is present: no negatives or no anchors).

    Example:
        >>> r = torch.randn(4, 2, 8)
        >>> bool(contrastive_loss(r, r, 0.05) < contrastive_loss(r, r[[1, 0, 3, 2]], 0.05))
        True
    """
    b, c, _ = interests.shape
    if b < 2:
        return interests.new_zeros(())
    anchors = F.normalize(interests, dim=-1).transpose(0, 1)  # (c, B, D)
    positives = F.normalize(generated, dim=-1).transpose(0, 1)  # (c, B, D)
    logits = anchors @ positives.transpose(1, 2) / temperature  # (c, B, B)
    if users is not None:
        same_user = (users[:, None] == users[None, :]) & ~torch.eye(b, dtype=torch.bool, device=users.device)
        logits = logits.masked_fill(same_user, float("-inf"))  # (c, B, B)
    labels = torch.arange(b, device=interests.device).repeat(c)  # (c * B,)
    if present is None:
        return F.cross_entropy(logits.reshape(c * b, b), labels)
    present = present.T  # (c, B)
    logits = logits.masked_fill(~present.unsqueeze(1), float("-inf"))  # an empty channel is no negative
    anchors_kept = present.reshape(-1)  # (c * B,)
    if not bool(anchors_kept.any()):
        return interests.new_zeros(())
    return F.cross_entropy(logits.reshape(c * b, b)[anchors_kept], labels[anchors_kept])


@dataclass
class DiffuMINState(UserState):
    """DiffuMIN's user side. (OMIE's channels come from the target, so interest extraction and the
    diffusion are per candidate.)

    Attributes:
        history: (B, T, D) behavior embeddings (0 at padding).
        mask: (B, T) bool, True at real behaviors.
        recent: (B, k, D) the short-term branch's tokens: the ``short_length`` most recent behaviors
            plus their recency positions (0 + position where the history is shorter).
        recent_mask: (B, k) bool, True at real recent behaviors.
        user: (B, U) user features, or None.
    """

    history: torch.Tensor
    mask: torch.Tensor
    recent: torch.Tensor
    recent_mask: torch.Tensor
    user: torch.Tensor | None = None


@register(DiffuMINConfig)
class DiffuMIN(RankingModel):
    """OMIE interests (+ DMIG generated interests) + short-term Transformer + target -> MLP -> logit.

    The user side is the embedded history and the short-term branch's recent tokens; everything else
    depends on the candidate and runs for all (user, candidate) pairs at once.

    Example:
        >>> model = DiffuMIN(DiffuMINConfig(n_items=10, n_cates=4, embedding_dim=4, dnn_hidden=(8,)))
        >>> batch = Batch(history_items=torch.tensor([[2, 3, 0]]), history_cates=torch.tensor([[1, 2, 0]]),
        ...               history_mask=torch.tensor([[True, True, False]]), target_items=torch.tensor([4]),
        ...               target_cates=torch.tensor([2]), labels=torch.tensor([1.0]), users=torch.tensor([0]))
        >>> candidates = Candidates(items=torch.tensor([[4, 5, 6]]), cates=torch.tensor([[2, 2, 3]]))
        >>> model.eval().score(model.encode_user(batch), candidates).shape  # 3 candidates, one user
        torch.Size([1, 3])
    """

    def __init__(self, config: DiffuMINConfig) -> None:
        super().__init__()
        self.config = config
        self.embedding = FeatureEmbedding.of(config)
        width = self.embedding.out_dim
        self.extractor = OrthogonalInterestExtractor(width, config.channels, config.top_per_channel)
        self.generator = DiffusionInterestGenerator(width, config) if config.use_diffusion else None
        self.short_positions = nn.Parameter(torch.randn(config.short_length + 1, width) * 0.02)  # recency positions
        self.short_layers = nn.ModuleList(EncoderLayer(width, config.heads, config.ffn_factor) for _ in range(config.short_layers))
        n_interest_sets = 2 if config.use_diffusion else 1
        in_dim = n_interest_sets * config.channels * width + 2 * width + self.embedding.user_dim
        self.dnn = MLP(in_dim, list(config.dnn_hidden), config.dnn_activation, out_dim=1, dropout=config.dropout,
                       dice_momentum=config.dice_momentum)

    def recent_tokens(self, history: torch.Tensor, mask: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """The short-term branch's behavior tokens: the last ``short_length`` real behaviors (B, k, D) +
        recency positions, and which of them are real (B, k)."""
        k = self.config.short_length
        lengths = mask.sum(dim=1)  # (B,)
        index = lengths.unsqueeze(1) - k + torch.arange(k, device=history.device)  # (B, k), left-aligned history
        valid = index >= 0
        index = index.clamp(min=0)
        recent = history.gather(1, index.unsqueeze(-1).expand(-1, -1, history.shape[-1]))  # (B, k, D)
        return recent * valid.unsqueeze(-1) + self.short_positions[:k], valid

    def short_term(self, recent: torch.Tensor, valid: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
        """The recent tokens (B, k, D) and each of K targets (B, K, D) through the short-term Transformer
        -> the target token's output (B, K, D)."""
        (b, k, d), n = recent.shape, target.shape[1]
        target_token = target + self.short_positions[k]  # (B, K, D)
        tokens = torch.cat([recent.unsqueeze(1).expand(b, n, k, d), target_token.unsqueeze(2)], dim=2)  # (B, K, k+1, D)
        tokens = tokens.flatten(0, 1)  # (B * K, k + 1, D)
        token_mask = torch.cat([valid, valid.new_ones(b, 1)], dim=1).repeat_interleave(n, dim=0)  # (B * K, k + 1)
        for layer in self.short_layers:
            tokens = layer(tokens, token_mask)
        return tokens[:, -1].view(b, n, d)

    def encode_user(self, batch: Batch) -> DiffuMINState:
        history = self.embedding.history(batch)  # (B, T, D)
        recent, valid = self.recent_tokens(history, batch.history_mask)  # (B, k, D), (B, k)
        return DiffuMINState(history=history, mask=batch.history_mask, recent=recent, recent_mask=valid,
                             user=self.embedding.user(batch))

    def candidate_side(self, state: DiffuMINState, target: torch.Tensor) -> dict[str, torch.Tensor]:
        """Everything that depends on the candidates (B, K, D): ``logits`` (B, K) and, for the auxiliary
        losses, ``interests`` r (B, K, c, D), ``generated`` r*, ``predicted`` and ``clean`` (the
        diffusion's x_0 prediction and target, unit-RMS), each (B, K, c, D) where the config has them, and
        ``present`` (B, K, c) bool, True at the channels that pooled at least one behavior."""
        config = self.config
        (b, k, d), c = target.shape, config.channels
        interests, channels, _, kept = self.extractor(state.history, state.mask, target)  # (B, K, c, D), (B, K, D, c)
        parts = {"interests": interests, "present": kept.any(dim=-1)}  # present: (B, K, c) non-empty channels
        features = [interests.flatten(2)]
        if self.generator is not None:
            # diffuse unit-RMS interests: embeddings are ~1e-2 per dimension, the DDPM noise is ~1
            scale = interests.norm(dim=-1, keepdim=True).clamp(min=1e-6) / math.sqrt(d)  # (B, K, c, 1)
            clean = (interests / scale).view(b * k, c, d)  # 0 for an empty channel
            channels = channels.view(b * k, d, c)
            if self.training:
                top = max(config.infer_start_step, 1)  # the noise levels inference starts from
                # the diffusion's own stream: another random option (dropout) does not shift its draws
                generator = STREAMS("diffusion", target.device)
                step = torch.randint(1, top + 1, (b * k,), device=target.device, generator=generator)  # (B * K,)
                noise = torch.randn(clean.shape, dtype=clean.dtype, device=clean.device, generator=generator)
                noisy = self.generator.q_sample(clean, step, noise)  # (B * K, c, D)
                predicted = self.generator.denoise(noisy, step, channels)  # x_0 prediction
                parts.update(predicted=predicted.view(b, k, c, d), clean=clean.view(b, k, c, d))
            else:
                predicted = self.generator.generate(clean, channels)  # (B * K, c, D)
            generated = predicted.view(b, k, c, d) * scale  # r*, back at the interests' scale
            parts["generated"] = generated
            features.append(generated.flatten(2))
        features += [self.short_term(state.recent, state.recent_mask, target), target]
        inputs = with_user(torch.cat(features, dim=-1), state.user)  # (B, K, in_dim)
        parts["logits"] = self.dnn(inputs.flatten(0, 1)).view(b, k)  # (B, K)
        return parts

    def score(self, state: DiffuMINState, candidates: Candidates) -> torch.Tensor:
        candidates.validate(len(state))
        return self.candidate_side(state, self.embedding.candidates(candidates))["logits"]  # (B, K)

    def forward(self, batch: Batch) -> ModelOutput:
        batch.validate()
        config = self.config
        state = self.encode_user(batch)
        candidates = Candidates.from_targets(batch)
        candidates.validate(len(state))
        parts = self.candidate_side(state, self.embedding.candidates(candidates))  # K = 1
        aux = {}
        if self.training and self.generator is not None:
            aux["diffusion"] = config.diffusion_weight * diffusion_loss(parts["predicted"], parts["clean"].detach(),
                                                                        parts["present"])
            if config.use_contrastive:
                aux["contrastive"] = config.contrastive_weight * contrastive_loss(
                    parts["interests"][:, 0], parts["generated"][:, 0], config.temperature, batch.users,
                    parts["present"][:, 0])
        if config.l2_mba > 0 and self.training:
            aux["l2_mba"] = config.l2_mba * self.embedding.batch_l2(batch)
        return ModelOutput(logits=parts["logits"][:, 0], aux_losses=aux)
