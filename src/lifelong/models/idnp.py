"""IDNP: interest dynamics modeling with generative neural processes, as a retrieval model.

Paper: Du, Ye, Guo, Yu and Yao, IDNP: Interest Dynamics Modeling using Generative Neural Processes for
Sequential Recommendation, WSDM 2023 (arXiv 2208.04600).

Mechanism:
  - Neural-process framing: a user's interest is one function of time drawn from a learned family. In
    training each window's real time steps are split at random (the ``context_split`` stream of
    :mod:`lifelong.streams`) into a **context** set and a **target** set: each step is context with probability ``context_ratio``; a window of two or more
    steps always keeps at least one of each (its lowest-draw step is context, its highest-draw step a
    target); a window of one step is a single target with an empty context.
  - Attentive interest encoder, one representation ``h_t`` per time step from steps ``<= t`` only. For
    each window size ``s`` in ``scales``, a short-term interest ``u_s(t)`` attends over the items
    ``t-s+1 .. t`` (additive attention: key = item embedding + embedding of its offset ``t-j``, query =
    the newest item ``e_t``; one scorer shared by the scales). The scales are combined by a second
    attention, ``beta_s(t) = softmax_s(w . tanh(W u_s(t) + b_s))`` with a learned vector per scale, and
    ``h_t = LN(sum_s beta_s(t) u_s(t))``.
  - Deterministic path: ``r_d(t) = Attn(q = W_q h_t; k = W_k h_c, v = W_v h_c)`` over the context steps
    ``c <= t`` (scaled dot product, one head); ``r_d = 0`` when no context step precedes the query.
  - Latent path: one set encoder (``MLP`` on each step's ``h``, mean-pooled, then ``mu`` and
    ``sigma = 1e-3 + softplus(.)`` heads) gives the prior ``q(z | context)`` and the posterior
    ``q(z | context + target)`` of a latent ``z`` (``D`` dimensions), both restricted to the steps at or
    before the query step (see Deviations); training decodes with the reparameterised sample
    ``z = mu_post + sigma_post * eps``.
  - Interest decoder: ``d_q = MLP([r_d, z, r_q])`` with ``r_q = h_q``, the query step's representation;
    ``d_q`` scores item ``i`` by ``d_q . e_i`` with the input item embeddings.
  - Loss (the negative ELBO): the next-item loss (``loss``: bce / sampled / full, see
    :class:`~lifelong.models.retrieval.RetrievalConfig`) averaged over the target steps, plus
    ``kl_weight * KL(posterior || prior)`` (analytic Gaussian KL, summed over the latent dimensions,
    averaged over the target steps; over the windows with ``latent_path = "global"``), reported as
    ``aux_losses["kl"]``.
  - Inference: every real history step is context, the query is the last step (whose next item is
    predicted), ``z`` is the prior mean (so ``q(z | whole history)``). Deterministic.

Deviations:
  - The deterministic path is causal: a target step attends only to context steps at or before it. With
    the unordered context of a plain NP, a target step ``t`` would see the context step ``t+1``, whose
    representation contains the answer (the item at ``t+1``); and at inference the context is the past
    only.
  - The latent path is causal too (``latent_path = "causal"``, the default): the target step ``q`` decodes
    with ``z_q`` drawn from the posterior over the real steps ``<= q``, and its KL compares that posterior
    with the prior over the context steps ``<= q`` (averaged over the target steps). The NP's global sets
    (``latent_path = "global"``, the paper's behaviour: one ``z`` per window from the posterior over every
    step, the KL averaged over the windows) let a step's latent see the later steps, whose
    representations hold its answer. Inference is the same either way (the whole history is the past).
  - A time step is one context/target point, encoded by its ``h_t`` (which contains the step's own item,
    i.e. the observation at that time); the target of a step is its next item. At inference the query
    step is also a context step (all of the history is known); in training targets and context are
    disjoint, so there a query never attends to itself.
  - Prior and posterior share one set encoder (as in Garnelo et al.'s NP); the paper's parameterisation
    of the two is not known to us. ``kl_weight`` (default 0.1) scales the KL against the loss averaged
    per target step; the paper's balance is not known.
  - No user embedding ``e_u`` in the scorer: the loop does not give models the user vocabulary, a free
    per-user vector makes the model transductive, and ``z`` and ``r_d`` are already the user's long-term
    summary of their history; the other retrieval baselines (SASRec) have none either. ``d_q`` alone is
    the user vector, scored by the inner product with the item embeddings (the paper concatenates ``e_u``
    and predicts the interaction from both).
  - The encoder's exact layers (window attention form, scale attention, layer norm), the decoder size
    (``decoder_hidden``, one hidden ReLU layer) and ``dropout`` (on item embeddings and the decoder's
    hidden layer) are our choices; item categories and timestamps are not used.
  - Training predicts only the target steps of each window (about ``1 - context_ratio`` of them), so an
    epoch trains fewer next-item targets than SASRec's.

Example:
    >>> model = IDNP(IDNPConfig(n_items=10, n_cates=4, embedding_dim=8))
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import nn

from lifelong.batch import Batch
from lifelong.models.registry import register
from lifelong.models.retrieval import RetrievalConfig, RetrievalModel, RetrievalOutput, next_item_loss, next_items
from lifelong.nn.embedding import init_item_embedding
from lifelong.streams import STREAMS

MIN_SIGMA = 1e-3  # floor of the latent standard deviation (keeps the KL finite)


@dataclass
class IDNPConfig(RetrievalConfig):
    """Args:
        embedding_dim: ``D`` (item embeddings, interest representations, latent ``z``).
        scales: window sizes of the multi-scale short-term interests (at least two, increasing).
        context_ratio: probability that a training time step is a context step.
        kl_weight: weight of ``KL(posterior || prior)`` in the loss.
        decoder_hidden: hidden width of the interest decoder's MLP.
        dropout: dropout of item embeddings and of the decoder's hidden layer.
        latent_path: ``causal`` (each target step's latent from the steps at or before it; the default) or
            ``global`` (the paper's one latent per window from all of its steps, later ones included).
        loss, negatives: see :class:`RetrievalConfig`.
    """

    model_type = "idnp"
    embedding_dim: int = 64
    scales: tuple[int, ...] = (1, 2, 4)
    context_ratio: float = 0.5
    kl_weight: float = 0.1
    decoder_hidden: int = 256
    dropout: float = 0.2
    latent_path: str = "causal"

    def validate(self) -> None:
        super().validate()
        scales = tuple(self.scales)
        if (len(scales) < 2 or any(not isinstance(s, int) or s < 1 for s in scales)
                or any(a >= b for a, b in zip(scales, scales[1:]))):
            raise ValueError(f"idnp: scales must be at least two increasing window sizes >= 1, e.g. (1, 2, 4); "
                             f"got {self.scales!r}")
        if not 0.0 < self.context_ratio < 1.0:
            raise ValueError(f"idnp: context_ratio must be in (0, 1), got {self.context_ratio}")
        if not self.kl_weight >= 0.0:
            raise ValueError(f"idnp: kl_weight must be >= 0, got {self.kl_weight}")
        if self.decoder_hidden < 1:
            raise ValueError(f"idnp: decoder_hidden must be at least 1, got {self.decoder_hidden}")
        if not 0.0 <= self.dropout < 1.0:
            raise ValueError(f"idnp: dropout must be in [0, 1), got {self.dropout}")
        if self.latent_path not in ("causal", "global"):
            raise ValueError(f"idnp: latent_path must be 'causal' or 'global', got {self.latent_path!r}")


def gaussian_kl(mu_q: torch.Tensor, sigma_q: torch.Tensor, mu_p: torch.Tensor, sigma_p: torch.Tensor) -> torch.Tensor:
    """``KL(N(mu_q, sigma_q) || N(mu_p, sigma_p))`` of diagonal Gaussians, summed over the last dim.

    Example:
        >>> mu, sigma = torch.zeros(2, 3), torch.ones(2, 3)
        >>> gaussian_kl(mu, sigma, mu, sigma).tolist()
        [0.0, 0.0]
    """
    ratio = (sigma_q / sigma_p) ** 2
    return 0.5 * (ratio + ((mu_q - mu_p) / sigma_p) ** 2 - 1.0 - torch.log(ratio)).sum(-1)


def latent_noise(like: torch.Tensor) -> torch.Tensor:
    """Standard normal noise shaped like ``like``, from the ``latent_noise`` stream (:mod:`lifelong.streams`)."""
    return torch.randn(like.shape, dtype=like.dtype, device=like.device, generator=STREAMS("latent_noise", like.device))


def split_context(mask: torch.Tensor, ratio: float) -> torch.Tensor:
    """Random context steps of left-aligned windows (the ``context_split`` stream of
    :mod:`lifelong.streams`); the targets are ``mask & ~context``.

    Args:
        mask: (B, T) bool real steps.
        ratio: probability that a step is context.

    Returns:
        (B, T) bool context mask, a subset of ``mask``; a row with ``n >= 2`` real steps has at least one
        context and one target step, a row with one step has no context step.
    """
    draw = torch.rand(mask.shape, device=mask.device, generator=STREAMS("context_split", mask.device))
    draw = draw.masked_fill(~mask, 2.0)  # (B, T), padding last
    rows = torch.arange(mask.shape[0], device=mask.device)
    context = (draw < ratio) & mask
    several = mask.sum(1) >= 2  # (B,)
    context[rows[several], draw.argmin(1)[several]] = True  # at least one context step
    highest = draw.masked_fill(~mask, -1.0).argmax(1)  # (B,) the real step with the highest draw
    context[rows, highest] = False  # at least one target step (the only step of a one-step window)
    return context


class InterestEncoder(nn.Module):
    """Multi-scale attentive short-term interests: (B, T) items -> (B, T, D), step t from steps <= t."""

    def __init__(self, dim: int, scales: tuple[int, ...]) -> None:
        super().__init__()
        self.scales = tuple(scales)
        self.offset = nn.Embedding(max(self.scales), dim)  # offset t - j of an item inside the window
        self.window_key = nn.Linear(dim, dim)
        self.window_query = nn.Linear(dim, dim, bias=False)
        self.window_score = nn.Linear(dim, 1, bias=False)
        self.scale_key = nn.Linear(dim, dim)
        self.scale_bias = nn.Parameter(torch.zeros(len(self.scales), dim))
        self.scale_score = nn.Linear(dim, 1, bias=False)
        self.norm = nn.LayerNorm(dim, eps=1e-8)

    def forward(self, items: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
        """items (B, T, D) embedded (zero at padding), mask (B, T) -> h (B, T, D), zero at padding."""
        b, t, d = items.shape
        width = max(self.scales)
        padded = F.pad(items, (0, 0, width - 1, 0))  # (B, T + S - 1, D): S - 1 empty steps before step 0
        window = torch.stack([padded[:, width - 1 - k : width - 1 - k + t] for k in range(width)], dim=2)  # (B, T, S, D): e_{t-k}
        steps = torch.arange(t, device=items.device)
        offsets = torch.arange(width, device=items.device)
        valid = (steps[:, None] >= offsets[None, :]) & mask.unsqueeze(-1)  # (B, T, S): item t-k exists
        key = self.window_key(window + self.offset.weight)  # (B, T, S, D)
        query = self.window_query(items).unsqueeze(2)  # (B, T, 1, D): the newest item asks
        score = self.window_score(torch.tanh(key + query)).squeeze(-1)  # (B, T, S)
        interests = []
        for s in self.scales:
            allowed = valid & (offsets < s)  # (B, T, S)
            weight = score.masked_fill(~allowed, float("-inf")).masked_fill(~mask.unsqueeze(-1), 0.0).softmax(-1)
            interests.append(torch.einsum("bts,btsd->btd", weight * allowed, window))
        interests = torch.stack(interests, dim=2)  # (B, T, n_scales, D)
        scale_weight = self.scale_score(torch.tanh(self.scale_key(interests) + self.scale_bias)).softmax(dim=2)  # (B, T, n_scales, 1)
        h = self.norm((scale_weight * interests).sum(2))  # (B, T, D)
        return h * mask.unsqueeze(-1)


@register(IDNPConfig)
class IDNP(RetrievalModel):
    """Neural process over a user's time steps: context attention, a global latent, an interest decoder."""

    def __init__(self, config: IDNPConfig) -> None:
        super().__init__()
        self.config = config
        d = config.embedding_dim
        self.item = nn.Embedding(config.n_items, d, padding_idx=0)
        self.dropout = nn.Dropout(config.dropout)
        self.encoder = InterestEncoder(d, config.scales)
        self.attention_query = nn.Linear(d, d)
        self.attention_key = nn.Linear(d, d)
        self.attention_value = nn.Linear(d, d)
        self.latent_point = nn.Sequential(nn.Linear(d, d), nn.ReLU(), nn.Linear(d, d))
        self.latent_mu = nn.Linear(d, d)
        self.latent_sigma = nn.Linear(d, d)
        self.decoder = nn.Sequential(nn.Linear(3 * d, config.decoder_hidden), nn.ReLU(), nn.Dropout(config.dropout),
                                     nn.Linear(config.decoder_hidden, d))
        init_item_embedding(self.item, std=d ** -0.5)

    def sequence(self, batch: Batch) -> torch.Tensor:
        """(B, T, D) interest representations ``h_t`` (zero at padding)."""
        mask = batch.history_mask
        items = self.dropout(self.item(batch.history_items)) * mask.unsqueeze(-1)
        return self.encoder(items, mask)

    def attend(self, queries: torch.Tensor, hidden: torch.Tensor, allowed: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """The deterministic path.

        Args:
            queries: (B, Q, D) query representations ``r_q``.
            hidden: (B, T, D) step representations.
            allowed: (B, Q, T) bool, the context steps each query may attend to.

        Returns:
            ``r_d`` (B, Q, D) and the attention weights (B, Q, T): they sum to one over the allowed steps
            and are zero elsewhere (all zero, and ``r_d = 0``, for a query with no allowed step).
        """
        q = self.attention_query(queries)  # (B, Q, D)
        k, v = self.attention_key(hidden), self.attention_value(hidden)  # (B, T, D)
        logits = q @ k.transpose(1, 2) / math.sqrt(q.shape[-1])  # (B, Q, T)
        any_allowed = allowed.any(-1, keepdim=True)
        logits = logits.masked_fill(~allowed, float("-inf")).masked_fill(~any_allowed, 0.0)
        weights = logits.softmax(-1) * allowed  # (B, Q, T)
        return weights @ v, weights

    def latent(self, hidden: torch.Tensor, members: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """``q(z | set)``: hidden (B, T, D), members (B, T) bool -> (mu, sigma), each (B, D). An empty set
        pools to zero (the encoder's unconditional prior)."""
        points = self.latent_point(hidden) * members.unsqueeze(-1)  # (B, T, D)
        pooled = points.sum(1) / members.sum(1, keepdim=True).clamp(min=1)  # (B, D)
        return self.latent_mu(pooled), MIN_SIGMA + F.softplus(self.latent_sigma(pooled))

    def latent_steps(self, hidden: torch.Tensor, members: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """``q(z | the set's steps at or before t)`` for every step ``t``: hidden (B, T, D), members (B, T)
        bool -> (mu, sigma), each (B, T, D) (the causal latent path; at the last step it is :meth:`latent`)."""
        points = self.latent_point(hidden) * members.unsqueeze(-1)  # (B, T, D)
        pooled = points.cumsum(1) / members.cumsum(1).clamp(min=1).unsqueeze(-1)  # (B, T, D)
        return self.latent_mu(pooled), MIN_SIGMA + F.softplus(self.latent_sigma(pooled))

    def decode(self, r_d: torch.Tensor, z: torch.Tensor, r_q: torch.Tensor) -> torch.Tensor:
        """(..., D) x 3 -> ``d_q`` (..., D)."""
        return self.decoder(torch.cat([r_d, z, r_q], dim=-1))

    def _infer(self, hidden: torch.Tensor, batch: Batch) -> torch.Tensor:
        """(B, D) user vectors: all real steps are context, the last is the query, ``z`` the prior mean."""
        mask = batch.history_mask
        last = (batch.lengths - 1).clamp(min=0)  # (B,)
        r_q = hidden[torch.arange(hidden.shape[0], device=hidden.device), last]  # (B, D)
        r_d, _ = self.attend(r_q.unsqueeze(1), hidden, mask.unsqueeze(1))
        mu, _ = self.latent(hidden, mask)
        return self.decode(r_d.squeeze(1), mu, r_q)

    def user_vectors(self, batch: Batch) -> torch.Tensor:
        return self._infer(self.sequence(batch), batch)

    def item_vectors(self) -> torch.Tensor:
        return self.item.weight

    def training_terms(self, batch: Batch, hidden: torch.Tensor, context: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """The next-item loss at the target steps and the mean ``KL(posterior || prior)`` of the windows.

        Args:
            batch: the training windows.
            hidden: (B, T, D) step representations.
            context: (B, T) bool context steps (a subset of the real ones); the other real steps are targets.
        """
        mask = batch.history_mask
        target = mask & ~context  # (B, T)
        t = mask.shape[1]
        steps = torch.arange(t, device=mask.device)
        causal = steps[None, :] <= steps[:, None]  # (T, T): context step c <= query step q
        r_d, _ = self.attend(hidden, hidden, context.unsqueeze(1) & causal)  # (B, T, D)
        if self.config.latent_path == "causal":  # step q: posterior over the steps <= q, prior over the context <= q
            mu_prior, sigma_prior = (v[target] for v in self.latent_steps(hidden, context))  # (N, D)
            mu_post, sigma_post = (v[target] for v in self.latent_steps(hidden, mask))
            z = mu_post + sigma_post * latent_noise(sigma_post)  # (N, D) reparameterised
        else:  # the paper's global sets: one latent per window, from every real step of it
            mu_prior, sigma_prior = self.latent(hidden, context)
            mu_post, sigma_post = self.latent(hidden, mask)  # context + target = every real step
            z = (mu_post + sigma_post * latent_noise(sigma_post)).unsqueeze(1).expand(-1, t, -1)[target]
        d_q = self.decode(r_d[target], z, hidden[target])  # (N, D)
        positives, _ = next_items(batch)
        negatives = batch.history_negative_items[target] if batch.history_negative_items is not None else None
        nll = next_item_loss(d_q, positives[target], self.item.weight, self.config.loss,
                             negatives=negatives, n_sampled=self.config.negatives)
        kl = gaussian_kl(mu_post, sigma_post, mu_prior, sigma_prior).mean()
        return nll, kl

    def forward(self, batch: Batch) -> RetrievalOutput:
        batch.validate()
        hidden = self.sequence(batch)  # (B, T, D)
        users = self._infer(hidden, batch)
        if not self.training:
            return RetrievalOutput(user_vectors=users)
        context = split_context(batch.history_mask, self.config.context_ratio)
        nll, kl = self.training_terms(batch, hidden, context)
        kl_term = self.config.kl_weight * kl
        return RetrievalOutput(user_vectors=users, loss=nll + kl_term, aux_losses={"kl": kl_term})
