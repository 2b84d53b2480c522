"""ICLRec: intent contrastive learning on a SASRec encoder, with ICSRec's cross-subsequence positives.

Paper(s):
  - Chen, Liu, Li, McAuley, Xiong, Intent Contrastive Learning for Sequential Recommendation, WWW 2022
    (arXiv 2202.02519); official code ``salesforce/ICLRec``.
  - Qin et al., Intent Contrastive Learning with Cross Subsequences for Sequential Recommendation,
    WSDM 2024 (arXiv 2310.14318); official code ``QinHsiu/ICSRec`` (the ``cross_subsequence`` option).

Mechanism:
  - Encoder: :class:`~lifelong.models.sasrec.SASRec` unchanged. The sequence representation ``h`` of a
    history is the encoder output at its last real position, the same vector that ranks items.
  - Intents (E-step, ``epoch_start``): before every epoch the model, in evaluation mode, encodes every
    training window; k-means with ``intents`` clusters gives the centroids ``c_1..c_K`` (a buffer, so
    checkpoints hold them). Until the first clustering the intent loss is skipped.
  - Augmentations: each history gets two views, each made by one operator drawn uniformly from
    crop (keep a random contiguous run of ``floor(crop_rate * n)`` items, at least one), mask (replace
    ``floor(mask_rate * n)`` random items by a mask token) and reorder (shuffle a random contiguous run
    of ``floor(reorder_rate * n)`` items).
  - Instance loss: NT-Xent over the ``2B`` views of the batch, ``s(a, b) = a . b / temperature``: a
    view's positive is the other view of its history, every other view is a negative.
    With ``cross_subsequence`` (ICSRec) the views of other histories in the batch with the same target
    (next) item are positives too (supervised contrastive: the loss averages ``-log p`` over a view's
    positives).
  - Intent loss (M-step): the un-augmented history's representation (the training forward's, detached)
    picks its intent ``z = argmin_k ||h - c_k||``; each view is contrasted with its intent's
    L2-normalised centroid, NT-Xent in ICLRec's form: the ``B`` views and the ``B`` intents of the batch
    form ``2B`` candidates, a view's positive is its own intent (and the intent's positive is the view),
    the other rows' views and intents are negatives. False-negative mitigation: a row with the same
    intent is no negative (its intent is the positive centroid itself). Averaged over the two views.
  - Loss: ``next_item_loss`` over every position (``loss`` bce / sampled / full, as SASRec)
    ``+ instance_weight * L_inst + intent_weight * L_intent``; the weighted terms are in ``aux_losses``.
  - Evaluation is plain SASRec: the user vector is the output at the last real position.

Deviations (choices the papers or their code leave open, or where this file departs from them):
  - Representation: the last real position's output for clustering, the instance and the intent loss.
    ICLRec's code uses the mean over all (left-padded) positions for clustering/intents and the
    flattened ``(T*D)`` outputs for the instance loss; the last position is the vector that is ranked,
    and it does not depend on the padding width.
  - The mask token is one extra row (index ``n_items``) of the input item table, as ICLRec's
    ``mask_id = max_item + 1``; it is never scored (``item_vectors`` returns the first ``n_items`` rows).
  - Crop and reorder draw their start uniformly from every valid position, ``0 .. n - run``; ICLRec's
    ``randint(0, n - run - 1)`` never picks the run that ends at the last item.
  - K-means (:func:`lifelong.nn.cluster.kmeans`, torch): initial centroids are distinct training
    windows drawn with a generator seeded from the ``kmeans`` stream (reset per epoch, so a resumed run
    clusters alike), Lloyd iterations for a fixed ``kmeans_iterations`` (faiss' default 20; no ``nredo``,
    no sub-sampling to ``max_points_per_centroid``); an empty cluster is re-seeded with the window farthest from its
    centroid (the next farthest for the next empty one), deterministic given the data. Assignment uses
    the raw centroids, the loss their L2-normalised copies (as ICLRec).
  - One intent granularity (ICLRec allows a list of cluster counts; its scripts use one).
  - False-negative mitigation is always on in the intent loss (ICLRec's ``--de_noise``; its Beauty
    script runs without it); the instance loss has none, as ICLRec without ``--de_noise``.
  - ``cross_subsequence`` adds ICSRec's same-target positives to the instance loss of augmented views;
    the batch supplies the same-target partners, so with random batches of a large catalogue few rows
    find one.
  - ``subsequence_views`` is ICSRec's coarse-grained intent contrast: a row's two views are its own
    un-augmented history (the training forward's representation, with its dropout) and the history of
    another training row with the same target, drawn per epoch from all training rows
    (:func:`lifelong.protocols.target_partners`; a row whose target no other row has is its own
    partner, contrasted with itself under another dropout draw). Other rows of the batch with the same
    target are removed from the negatives (ICSRec's ``f_neg``). The intent loss then contrasts these two
    views with the row's intent. ICSRec's own fine-grained loss groups representations by target; this
    file keeps ICLRec's k-means intents for it. The next-item loss is the row's only (not the partner's).
  - Defaults: ``instance_weight = intent_weight = 0.1`` and 256 intents (ICLRec's Beauty script),
    ``temperature = 1`` (ICLRec), two heads (ICLRec), dropout 0.5, the ICLRec rates 0.2 / 0.7 / 0.2.

Example:
    >>> model = ICLRec(ICLRecConfig(n_items=10, n_cates=4, embedding_dim=8, max_positions=5, intents=2))
"""

from __future__ import annotations

import logging
import time
from dataclasses import dataclass
from typing import Callable, Iterable

import torch
import torch.nn.functional as F

from lifelong.batch import Batch
from lifelong.models.registry import register
from lifelong.models.retrieval import RetrievalOutput, next_item_loss
from lifelong.models.sasrec import SASRec, SASRecConfig
from lifelong.nn.cluster import kmeans, nearest_centroid
from lifelong.streams import STREAMS

log = logging.getLogger(__name__)



@dataclass
class ICLRecConfig(SASRecConfig):
    """Args:
        intents: ``K``, the number of k-means intent clusters (ICLRec 256).
        kmeans_iterations: Lloyd iterations per clustering (fixed; faiss' default 20).
        crop_rate: fraction of the history a crop keeps (ICLRec ``tao``, 0.2).
        mask_rate: fraction of the history a mask replaces by the mask token (ICLRec ``gamma``, 0.7).
        reorder_rate: fraction of the history a reorder shuffles (ICLRec ``beta``, 0.2).
        temperature: of both contrastive losses (ICLRec 1.0).
        instance_weight: weight of the instance (view-view) contrastive loss (ICLRec ``cf_weight``).
        intent_weight: weight of the intent contrastive loss (ICLRec ``intent_cf_weight``).
        cross_subsequence: ICSRec: views of other histories with the same target item are positives too.
        subsequence_views: ICSRec's views: a row's two views are its own history and the history of another
            training row with the same target (``Batch.partner_items``, which the trainer supplies), not
            augmentations; other rows of the batch with the same target are no negatives (ICSRec's
            ``f_neg``) unless ``cross_subsequence`` makes them positives.
        embedding_dim, layers, heads, dropout, max_positions, loss, negatives: see :class:`SASRecConfig`.
    """

    model_type = "iclrec"
    heads: int = 2
    intents: int = 256
    kmeans_iterations: int = 20
    crop_rate: float = 0.2
    mask_rate: float = 0.7
    reorder_rate: float = 0.2
    temperature: float = 1.0
    instance_weight: float = 0.1
    intent_weight: float = 0.1
    cross_subsequence: bool = False
    subsequence_views: bool = False

    def validate(self) -> None:
        super().validate()
        if self.intents < 1:
            raise ValueError(f"iclrec: intents must be at least 1, got {self.intents}")
        if self.kmeans_iterations < 1:
            raise ValueError(f"iclrec: kmeans_iterations must be at least 1, got {self.kmeans_iterations}")
        for name in ("crop_rate", "mask_rate", "reorder_rate"):
            if not 0.0 <= getattr(self, name) <= 1.0:
                raise ValueError(f"iclrec: {name} must be in [0, 1], got {getattr(self, name)}")
        if not self.temperature > 0:
            raise ValueError(f"iclrec: temperature must be positive, got {self.temperature}")
        for name in ("instance_weight", "intent_weight"):
            if not getattr(self, name) >= 0:
                raise ValueError(f"iclrec: {name} must be non-negative, got {getattr(self, name)}")


# ---------------------------------------------------------------------------------------------------
# Augmentations: (B, T) left-aligned item indices and mask in, the same shapes out; the ``augment`` stream.


def _run_length(lengths: torch.Tensor, rate: float) -> torch.Tensor:
    """(B,) ``floor(rate * n)`` computed in float64 (as Python's ``int(rate * n)``)."""
    return (lengths.double() * rate).floor().long()


def _uniform_start(last: torch.Tensor) -> torch.Tensor:
    """(B,) a uniform draw from ``0 .. last`` per row (float64, clamped: float rounding never overshoots)."""
    draw = torch.rand(last.shape, device=last.device, dtype=torch.float64, generator=STREAMS("augment", last.device))
    draw = draw * (last + 1)
    return torch.minimum(draw.floor().long(), last)


def crop(items: torch.Tensor, mask: torch.Tensor, rate: float) -> tuple[torch.Tensor, torch.Tensor]:
    """Keep a random contiguous run of ``max(1, floor(rate * n))`` items, moved to the front."""
    lengths = mask.sum(1)  # (B,)
    keep = torch.minimum(_run_length(lengths, rate).clamp(min=1), lengths)  # (B,)
    start = _uniform_start(lengths - keep)  # (B,)
    steps = torch.arange(items.shape[1], device=items.device)
    new_mask = steps.unsqueeze(0) < keep.unsqueeze(1)  # (B, T)
    source = (start.unsqueeze(1) + steps.unsqueeze(0)).clamp(max=items.shape[1] - 1)  # (B, T)
    return items.gather(1, source) * new_mask, new_mask


def mask_items(items: torch.Tensor, mask: torch.Tensor, rate: float,
               mask_index: int) -> tuple[torch.Tensor, torch.Tensor]:
    """Replace ``floor(rate * n)`` random real items (without replacement) by ``mask_index``."""
    count = _run_length(mask.sum(1), rate)  # (B,)
    scores = torch.rand(items.shape, device=items.device, generator=STREAMS("augment", items.device))
    scores = scores.masked_fill(~mask, 2.0)  # padding ranks last
    rank = scores.argsort(1).argsort(1)  # (B, T) rank of every position's draw
    masked = rank < count.unsqueeze(1)
    return items.masked_fill(masked, mask_index), mask


def reorder(items: torch.Tensor, mask: torch.Tensor, rate: float) -> tuple[torch.Tensor, torch.Tensor]:
    """Shuffle a random contiguous run of ``floor(rate * n)`` items in place."""
    lengths = mask.sum(1)
    size = torch.minimum(_run_length(lengths, rate), lengths)  # (B,)
    start = _uniform_start(lengths - size)  # (B,)
    steps = torch.arange(items.shape[1], device=items.device).unsqueeze(0)  # (1, T)
    inside = (steps >= start.unsqueeze(1)) & (steps < (start + size).unsqueeze(1))  # (B, T)
    # sort keys: a position outside the run keeps its index; inside, a random key in
    # [start - 0.5, start + size - 0.5), which stays between the run's neighbours
    draw = torch.rand(items.shape, device=items.device, dtype=torch.float64,
                      generator=STREAMS("augment", items.device))  # (B, T)
    random_key = start.unsqueeze(1) - 0.5 + draw * size.unsqueeze(1)
    key = torch.where(inside, random_key, steps.double().expand_as(random_key))
    return items.gather(1, key.argsort(1)), mask


def augment(items: torch.Tensor, mask: torch.Tensor, config: ICLRecConfig,
            mask_index: int) -> tuple[torch.Tensor, torch.Tensor]:
    """One view: per history, one operator drawn uniformly from crop, mask, reorder."""
    operator = torch.randint(0, 3, (items.shape[0], 1), device=items.device,
                             generator=STREAMS("augment", items.device))  # (B, 1)
    cropped, cropped_mask = crop(items, mask, config.crop_rate)
    masked, _ = mask_items(items, mask, config.mask_rate, mask_index)
    reordered, _ = reorder(items, mask, config.reorder_rate)
    view = torch.where(operator == 0, cropped, torch.where(operator == 1, masked, reordered))
    return view, torch.where(operator == 0, cropped_mask, mask)


# ---------------------------------------------------------------------------------------------------
# Contrastive losses.


def view_positives(batch_size: int, targets: torch.Tensor | None = None,
                   device: torch.device | str | None = None) -> torch.Tensor:
    """(2B, 2B) bool positives of the ``2B`` views (rows ``0..B-1`` first views, ``B..2B-1`` second):
    each view's other view, and with ``targets`` (B,) also both views of every other history with the
    same target item (ICSRec). Never a view itself."""
    if targets is not None:
        same = targets.unsqueeze(0) == targets.unsqueeze(1)  # (B, B), diagonal True
    else:
        same = torch.eye(batch_size, dtype=torch.bool, device=device)
    tiled = same.repeat(2, 2)  # (2B, 2B)
    return tiled & ~torch.eye(2 * batch_size, dtype=torch.bool, device=tiled.device)


def nt_xent(first: torch.Tensor, second: torch.Tensor, temperature: float, positives: torch.Tensor | None = None,
            false_negatives: torch.Tensor | None = None) -> torch.Tensor:
    """NT-Xent between row-aligned sets ``first`` and ``second`` (B, D): the ``2B`` vectors score each
    other by ``a . b / temperature``; ``first[i]`` and ``second[i]`` are positives of each other.

    Args:
        positives: (2B, 2B) bool, default :func:`view_positives` without targets; several positives of
            a row average their ``-log p``.
        false_negatives: (B, B) bool, rows that are no negatives of each other (tiled over the two sets,
            removed from the softmax unless they are positives).

    Returns:
        The mean loss over the ``2B`` anchors (a scalar).
    """
    b = first.shape[0]
    z = torch.cat([first, second])  # (2B, D)
    logits = z @ z.T / temperature  # (2B, 2B)
    if positives is None:
        positives = view_positives(b, device=z.device)
    excluded = torch.eye(2 * b, dtype=torch.bool, device=z.device)
    if false_negatives is not None:
        excluded = excluded | (false_negatives.repeat(2, 2) & ~positives)
    log_prob = logits.masked_fill(excluded, float("-inf")).log_softmax(-1)  # (2B, 2B)
    per_anchor = log_prob.masked_fill(~positives, 0.0).sum(-1) / positives.sum(-1)  # (2B,)
    return -per_anchor.mean()


@register(ICLRecConfig)
class ICLRec(SASRec):
    """SASRec trained with next-item, instance-contrastive and intent-contrastive losses.

    Example:
        >>> model = ICLRec(ICLRecConfig(n_items=10, n_cates=4, embedding_dim=8, max_positions=5, intents=2))
        >>> model.item_vectors().shape
        torch.Size([10, 8])
    """

    extra_input_rows = 1  # the mask token of the augmentations, index n_items; never scored

    def __init__(self, config: ICLRecConfig) -> None:
        super().__init__(config)
        self.config = config
        d = config.embedding_dim
        self.mask_index = config.n_items  # the extra input row (see extra_input_rows)
        self.register_buffer("centroids", torch.zeros(config.intents, d))  # (K, D) raw k-means centroids
        self.register_buffer("clustered", torch.zeros((), dtype=torch.bool))  # centroids are set

    @torch.no_grad()
    def cluster(self, batches: Iterable[Batch]) -> torch.Tensor:
        """Encode ``batches`` in evaluation mode, run k-means, store the centroids; return the intent of
        every encoded history, (N,) in ``0..K-1``. The k-means seed comes from the ``kmeans`` stream."""
        was_training = self.training
        self.eval()
        try:
            points = torch.cat([self.user_vectors(batch) for batch in batches])  # (N, D)
        finally:
            self.train(was_training)
        if points.shape[0] < self.config.intents:
            raise ValueError(f"iclrec: k-means needs at least intents={self.config.intents} points, "
                             f"got {points.shape[0]}; lower intents")
        generator = torch.Generator().manual_seed(int(torch.randint(0, 2**62, (), generator=STREAMS("kmeans"))))
        # initial centroids: distinct encoded histories, uniformly
        centroids, assignment = kmeans(points, self.config.intents, self.config.kmeans_iterations, generator)
        self.centroids.copy_(centroids)
        self.clustered.fill_(True)
        return assignment

    def epoch_start(self, batches: Callable[[], Iterable[Batch]], epoch: int) -> None:
        """Re-cluster the intents on every training window (the loop calls this before each epoch);
        nothing to do when the intent loss is off (``intent_weight = 0``)."""
        if self.config.intent_weight == 0:
            return
        started = time.perf_counter()
        assignment = self.cluster(batches())
        log.info("iclrec epoch %d: %d windows clustered into %d intents (%d used) in %.1f s", epoch,
                 assignment.shape[0], self.config.intents, int(assignment.unique().numel()),
                 time.perf_counter() - started)

    def intents_of(self, users: torch.Tensor) -> torch.Tensor:
        """(B, D) representations -> (B,) index of the nearest centroid (needs a clustering)."""
        if not bool(self.clustered):
            raise ValueError("iclrec: no intents yet; call epoch_start (or cluster) first")
        return nearest_centroid(users, self.centroids)[0]

    @property
    def target_partners(self) -> bool:
        """The trainer adds each row's same-target partner history to the batch (ICSRec's views)."""
        return self.config.subsequence_views

    def _partner_view(self, batch: Batch) -> torch.Tensor:
        """(B, D) representation of each row's same-target partner history (its last real position)."""
        if batch.partner_items is None:
            raise ValueError("iclrec: subsequence_views needs Batch.partner_items (the training loop adds them "
                             "for a model with target_partners = True)")
        return self._encode_by_length(batch.partner_items, batch.partner_mask)

    def _encode_by_length(self, items: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
        """(B, T) left-aligned histories -> (B, D) last-position representations, encoded in groups of
        similar length (lengths up to 1, 2, 4, 8, ...), each group cut to its own longest history. The
        rows are independent, so this equals one forward of the whole batch; it spares the padding of
        partner rows, whose lengths the length-bucketed batch order does not control."""
        lengths = mask.sum(dim=1)  # (B,)
        width_class = torch.ceil(torch.log2(lengths.clamp(min=1).float())).long()  # (B,)
        out = torch.empty(items.shape[0], self.config.embedding_dim, device=items.device)
        for group in width_class.unique().tolist():
            rows = (width_class == group).nonzero().squeeze(1)
            width = int(lengths[rows].max())
            out = out.index_put((rows,), self._represent(items[rows, :width], mask[rows, :width]))
        return out

    def _represent(self, items: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
        """(B, T) left-aligned histories alone -> (B, D) outputs at their last real positions."""
        rows = torch.arange(items.shape[0], device=items.device)
        histories = Batch(history_items=items, history_cates=torch.zeros_like(items), history_mask=mask,
                          target_items=rows, target_cates=rows, labels=torch.ones(rows.shape[0]), users=rows)
        return self._last(self.sequence(histories), histories)

    def _views(self, batch: Batch) -> tuple[torch.Tensor, torch.Tensor]:
        """Two augmented views of every history -> their representations, 2 x (B, D)."""
        b = len(batch)
        first = augment(batch.history_items, batch.history_mask, self.config, self.mask_index)
        second = augment(batch.history_items, batch.history_mask, self.config, self.mask_index)
        items, mask = torch.cat([first[0], second[0]]), torch.cat([first[1], second[1]])  # (2B, T)
        represented = self._represent(items, mask)  # (2B, D)
        return represented[:b], represented[b:]

    def forward(self, batch: Batch) -> RetrievalOutput:
        batch.validate()
        config = self.config
        hidden = self.sequence(batch)  # (B, T, D)
        users = self._last(hidden, batch)  # (B, D)
        if not self.training:
            return RetrievalOutput(user_vectors=users)
        positives, mask = self.training_targets(batch)
        negatives = batch.history_negative_items[mask] if batch.history_negative_items is not None else None
        loss = next_item_loss(hidden[mask], positives[mask], self.item_vectors(), config.loss,
                              negatives=negatives, n_sampled=config.negatives)
        aux: dict[str, torch.Tensor] = {}
        use_intents = bool(self.clustered) and config.intent_weight > 0
        if config.instance_weight > 0 or use_intents:
            if config.subsequence_views:  # ICSRec: the row itself (this forward) and its same-target partner
                first, second = users, self._partner_view(batch)
            else:
                first, second = self._views(batch)
            if config.instance_weight > 0:
                view_pos = view_positives(len(batch), batch.target_items if config.cross_subsequence else None,
                                          device=users.device)
                same_target = batch.target_items.unsqueeze(0) == batch.target_items.unsqueeze(1) \
                    if config.subsequence_views else None  # (B, B) ICSRec's f_neg
                aux["instance"] = config.instance_weight * nt_xent(first, second, config.temperature, view_pos,
                                                                   false_negatives=same_target)
            if use_intents:
                intent = self.intents_of(users.detach())  # (B,) of the un-augmented histories
                prototypes = F.normalize(self.centroids, dim=1)[intent]  # (B, D)
                same = intent.unsqueeze(0) == intent.unsqueeze(1)  # (B, B) false-negative mitigation
                intent_loss = (nt_xent(first, prototypes, config.temperature, false_negatives=same)
                               + nt_xent(second, prototypes, config.temperature, false_negatives=same)) / 2
                aux["intent"] = config.intent_weight * intent_loss
        for term in aux.values():
            loss = loss + term
        return RetrievalOutput(user_vectors=users, loss=loss, aux_losses=aux)
