"""SDIM: Sampling-based Deep Interest Modeling.

Paper: Cao et al., "Sampling Is All You Need on Modeling Long-Term User Behaviors for CTR Prediction",
CIKM 2022 (arXiv 2205.10249).
Mechanism: ``m`` fixed random Gaussian directions (drawn once, never trained) hash every vector to
``m`` bits ``sign(R x)``; every ``tau`` consecutive bits form one signature, ``m / tau`` signatures per
vector. A behavior collides with the candidate under a signature when all its ``tau`` bits agree; the
long-term interest is ``(tau / m) sum_i l2norm(sum_{j collides under i} s_j)``: the colliding behaviors
summed and L2-normalised per signature, then averaged over signatures. No top-k and no attention: a
behavior's expected weight is ``(1 - arccos(cos(q, s_j)) / pi) ** tau`` (tested), an approximation of
softmax target attention whose temperature ``tau`` sets.

The behavior-sequence encoding (the paper's BSE server) depends on the user alone, so ``encode_user``
computes it: for each signature, the sum of the behaviors of each of its ``2 ** tau`` buckets,
``(B, m / tau, 2 ** tau, W)``. A candidate then costs its own hash (``O(m W)``) and ``m / tau`` lookups,
whatever the history's length.

The overall model is the paper's: a DIN over the last ``short_length`` events, the SDIM interest over
the whole history, the target and the user features -> MLP (Dice) -> logit; logloss.

Deviations:
  - A behavior and a target are the shared :class:`lifelong.nn.features.FeatureEmbedding` item vectors
    (id, category, declared side features; the event context added to behaviors).
  - Training reads only the bucket of each sample's target (:meth:`SDIM.target_sums`: per signature the
    colliding events, one ``embedding_bag``; each distinct event embedded and hashed once), the same value
    as the full encoding (tested). The full encoding (serving, evaluation) is built chunk by chunk
    (``chunk_length`` events; ``embedding_bag``
    sums of the events sorted by bucket), each chunk under activation checkpointing: backward keeps
    only the chunk's ids and embeds it again, so no (B, L, W) tensor is kept for the gradient and at
    most one chunk's (B, chunk, W) events are alive. Gradients reach every behavior's embedding through
    its bucket sum (the hashes themselves are not differentiable, as in the paper).
  - Projections are drawn from ``hash_seed`` and saved with the weights (a buffer).
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch.utils.checkpoint import checkpoint

from lifelong.batch import Batch
from lifelong.models.long_sequence import LongSequenceConfig, LongSequenceModel, LongSequenceState, event_fields
from lifelong.models.ranking import Candidates
from lifelong.models.registry import ModelOutput, register
from lifelong.nn.hashing import hash_bits, random_projections, signature_codes
from lifelong.nn.search import embed_events


@dataclass
class SDIMConfig(LongSequenceConfig):
    """Args:
        hashes: number of hash bits ``m`` (the paper: 48).
        hash_bits: bits per signature ``tau`` (the paper: 3, so 16 signatures); ``m`` must be a multiple.
        hash_seed: seed of the fixed random projections.
        (and :class:`LongSequenceConfig`'s short sequence, DIN and MLP fields.)
    """

    model_type = "sdim"
    hashes: int = 48
    hash_bits: int = 3
    hash_seed: int = 0

    def validate(self) -> None:
        super().validate()
        if self.hash_bits < 1 or self.hashes < self.hash_bits or self.hashes % self.hash_bits:
            raise ValueError(f"sdim: hashes ({self.hashes}) must be a positive multiple of hash_bits "
                             f"({self.hash_bits}), e.g. hashes=48, hash_bits=3")
        if self.hash_bits > 16:
            raise ValueError(f"sdim: hash_bits must be at most 16 (2 ** hash_bits buckets per signature), "
                             f"got {self.hash_bits}")

    @property
    def signatures(self) -> int:
        return self.hashes // self.hash_bits


@dataclass
class SDIMState(LongSequenceState):
    """SDIM's user side: the history (see :class:`LongSequenceState`) and its hashed encoding.

    Attributes:
        buckets: (B, m / tau, 2 ** tau, W) for each signature and bucket code, the sum of the user's
            behaviors hashed there (0 for an empty bucket).
    """

    buckets: torch.Tensor | None = None


@register(SDIMConfig)
class SDIM(LongSequenceModel):
    """Short-term DIN + hash-collision sampling of the long history -> MLP -> logit.

    Example (scoring as :class:`lifelong.models.sim.SIM`'s example shows):
        >>> model = SDIM(SDIMConfig(n_items=10, n_cates=4, embedding_dim=4, hashes=8, hash_bits=2))
        >>> model.codes(torch.randn(3, 8)).shape  # 4 signatures of 2 bits per vector, codes in [0, 4)
        torch.Size([3, 4])
    """

    state_class = SDIMState

    def __init__(self, config: SDIMConfig) -> None:
        super().__init__(config)
        self.register_buffer("projections", random_projections(config.hashes, self.embedding.out_dim, config.hash_seed))
        self.build_head(self.embedding.out_dim)

    def codes(self, vectors: torch.Tensor) -> torch.Tensor:
        """(..., W) vectors -> (..., m / tau) signature codes in ``[0, 2 ** tau)`` (no gradient)."""
        return signature_codes(hash_bits(vectors.detach(), self.projections), self.config.hash_bits)

    def bucket_sums(self, items: torch.Tensor, cates: torch.Tensor, behaviors: torch.Tensor | None = None,
                    attrs: torch.Tensor | None = None, dense: torch.Tensor | None = None) -> torch.Tensor:
        """The behavior-sequence encoding of some events: for each user, signature and bucket code, the sum
        of the events hashed there.

        Args:
            items, cates: (B, c) the events' ids (0 at padding); behaviors (B, c), attrs (B, c, A), dense
                (B, c, D) or None.

        Returns:
            (B * m / tau * 2 ** tau, W), row ``(b * m / tau + i) * 2 ** tau + code``.
        """
        events = embed_events(self.embedding, items, cates, behaviors, attrs, dense)  # (B, c, W)
        b, c, width = events.shape
        n, size = self.config.signatures, 2 ** self.config.hash_bits
        signature_rows = (torch.arange(b, device=items.device).view(b, 1, 1) * n
                          + torch.arange(n, device=items.device)) * size  # (B, 1, n)
        rows = (signature_rows + self.codes(events)).flatten()  # (B * c * n,) bucket of each (event, signature)
        rows, order = torch.sort(rows, stable=True)
        counts = torch.bincount(rows, minlength=b * n * size)
        offsets = torch.cumsum(counts, dim=0) - counts
        return F.embedding_bag(order // n, events.reshape(b * c, width), offsets, mode="sum")  # each bucket's sum

    def encode_long(self, batch: Batch, history: LongSequenceState) -> dict:
        b, t = history.items.shape
        n, size = self.config.signatures, 2 ** self.config.hash_bits
        buckets = 0
        for start in range(0, max(t, 1), self.config.chunk_length):  # at most (B, chunk, W) events at once
            part = slice(start, min(start + self.config.chunk_length, t))
            fields = event_fields(history, part)
            if torch.is_grad_enabled():  # keep only the chunk's ids for backward; it is embedded again there
                buckets = buckets + checkpoint(self.bucket_sums, *fields, use_reentrant=False)
            else:
                buckets = buckets + self.bucket_sums(*fields)
        return {"buckets": buckets.view(b, n, size, self.embedding.out_dim)}

    def target_sums(self, target_codes: torch.Tensor, items: torch.Tensor, cates: torch.Tensor,
                    behaviors: torch.Tensor | None = None, attrs: torch.Tensor | None = None,
                    dense: torch.Tensor | None = None) -> torch.Tensor:
        """Training's shortcut to the one bucket a sample's target reads: for each signature, the sum of
        the events colliding with the target there (what ``buckets[b, i, code_i(target)]`` holds), one
        ``embedding_bag`` over the colliding events; each distinct event embedded and hashed once.

        Args:
            target_codes: (B, n) the targets' signature codes.
            items, cates, ...: (B, c) the events' ids (0 at padding), as :meth:`bucket_sums`.

        Returns:
            (B, n, W) the colliding sums.
        """
        part = LongSequenceState(items=items, cates=cates, behaviors=behaviors, attrs=attrs, dense=dense)
        distinct, inverse = self.distinct_events(part, slice(None))  # (U, W), (B, c)
        b, n = target_codes.shape
        small = torch.int8 if self.config.hash_bits <= 7 else torch.int32  # codes < 2 ** tau
        collides = self.codes(distinct).to(small)[inverse] == target_codes.to(small).unsqueeze(1)  # (B, c, n)
        if not bool((items != 0).all()):
            collides &= (items != 0).unsqueeze(-1)  # padding never collides
        rows, signatures, events = collides.permute(0, 2, 1).nonzero(as_tuple=True)  # by (user, signature)
        bags = rows * n + signatures
        counts = torch.bincount(bags, minlength=b * n)
        # each (user, signature) bag sums its colliding events' distinct rows: no (B, c, W) tensor is built
        sums = F.embedding_bag(inverse[rows, events], distinct, torch.cumsum(counts, 0) - counts, mode="sum")
        return sums.view(b, n, -1)  # (B, n, W)

    def forward(self, batch: Batch):
        if not (self.training and torch.is_grad_enabled()):
            return super().forward(batch)
        # training: each sample reads one bucket per signature, its target's; sum those events directly
        # instead of every bucket (the same value; the serving path keeps the whole encoding)
        batch.validate()
        history = self.history(batch)
        candidates = Candidates.from_targets(batch)
        target = self.embedding.candidates(candidates)  # (B, 1, W)
        codes = self.codes(target[:, 0])  # (B, n)
        t, sums = history.items.shape[1], 0
        for start in range(0, max(t, 1), self.config.chunk_length):  # at most (B, chunk, W) events at once
            fields = event_fields(history, slice(start, min(start + self.config.chunk_length, t)))
            if t > self.config.chunk_length:  # several chunks: backward embeds each again (no (B, L, W) kept)
                sums = sums + checkpoint(self.target_sums, codes, *fields, use_reentrant=False)
            else:
                sums = sums + self.target_sums(codes, *fields)
        long_interest = F.normalize(sums, dim=-1).mean(dim=1, keepdim=True)  # (B, 1, W)
        logits = self.head(target, history.short, history.short_mask, long_interest, history.user).squeeze(1)
        return ModelOutput(logits=logits, aux_losses={})

    def long_interest(self, state: SDIMState, candidates: Candidates, target: torch.Tensor) -> torch.Tensor:
        b, n, size, width = state.buckets.shape
        codes = self.codes(target)  # (B, K, n)
        rows = torch.arange(b, device=codes.device).view(b, 1, 1)
        signatures = torch.arange(n, device=codes.device)
        collided = state.buckets[rows, signatures, codes]  # (B, K, n, W): each signature's colliding sum
        return F.normalize(collided, dim=-1).mean(dim=2)  # (B, K, W)
