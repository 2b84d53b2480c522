"""DIEN: Deep Interest Evolution Network.

Paper: Zhou et al., "Deep Interest Evolution Network for Click-Through Rate Prediction", AAAI 2019.
Mechanism:
  - interest extractor: a GRU over the behaviors gives one interest state ``h_t`` per behavior;
  - auxiliary loss: ``h_t`` is supervised with the next clicked behavior ``e[t+1]`` against a sampled
    item the user never clicked (``L = L_target + alpha * L_aux``, alpha = 1 in the paper); the data
    pipeline draws the negatives with the run's seed (:func:`lifelong.batch.event_negatives`);
  - attention of the target over the interest states, ``a_t = softmax_t(h_t W e_a)`` (the paper's
    bilinear form), over the real behaviors only;
  - interest evolving layer: AUGRU, a GRU whose update gate is scaled by ``a_t``
    (``u~_t = a_t * u_t; h'_t = (1 - u~_t) h'_{t-1} + u~_t h~_t``); AIGRU (``i'_t = a_t h_t`` into a
    plain GRU) and AGRU (``a_t`` replaces the update gate) as ablation options;
  - the final evolved interest ``h'_T`` goes with the target into an MLP.

Deviations:
  - The MLP input is ``[target, sum-pooled behaviors, target * sum-pooled, h'_T]``, as in the authors'
    released model (``Model_DIN_V2_Gru_Vec_attGru_Neg``); the paper text names ``h'_T`` with the ad,
    profile and context embeddings: the dataset's user features join the MLP's input, its event context
    (behavior type) is added to each behavior (:class:`lifelong.nn.features.FeatureEmbedding`); no
    user-id embedding. The auxiliary loss compares the next behavior and its negative without context.
  - The auxiliary classifier is the released code's small MLP on ``[h_t, e]`` (100 -> 50, sigmoid,
    without its batch norm) rather than the paper's inner product ``sigma(h_t . e)``, which would tie
    the GRU width to the embedding width.
  - ``L_aux`` is the mean over the supervised steps of the batch (steps ``t`` whose next behavior is
    real), not the sum over steps, so its scale does not grow with history length.
  - Negatives are drawn uniformly from the items the user never interacted with (in the whole
    prepared log, validation and test events included), one per event, fixed for the run (the
    released code draws from the review list, i.e. by frequency, per position).
  - Both GRUs follow the paper's equations (biases outside the reset gate); they skip padded steps.
  - Optional mini-batch aware L2 regulariser of the DIN paper (``l2_mba``), as in din.py, over the
    ids of the histories and targets (not over the sampled negatives).
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import nn

from lifelong.batch import Batch
from lifelong.models.ranking import Candidates, RankingConfig, RankingModel, UserState, with_user
from lifelong.models.registry import ModelOutput, register
from lifelong.nn import ACTIVATIONS, MLP
from lifelong.nn.features import FeatureEmbedding
from lifelong.nn.gru import EVOLUTIONS, AttentionalGRU

@dataclass
class DIENConfig(RankingConfig):
    """Args:
        embedding_dim: size of each id embedding (a behavior is 2x this: item and category).
        hidden_size: width of both GRUs (0 = the behavior width, as the released code).
        evolution: ``augru`` (paper), ``aigru`` or ``agru`` (ablations).
        aux_weight: alpha, the weight of the auxiliary loss (1.0 in the paper; 0 switches it off).
        aux_hidden: hidden sizes of the auxiliary classifier.
        dnn_hidden: MLP sizes of the final predictor.
        dnn_activation: ``dice`` as in the released code.
        dropout: dropout after each MLP layer.
        l2_mba: weight of the mini-batch aware L2 regulariser (0 = off).
    """

    model_type = "dien"
    hidden_size: int = 0
    evolution: str = "augru"
    aux_weight: float = 1.0
    aux_hidden: tuple[int, ...] = (100, 50)
    dnn_hidden: tuple[int, ...] = (200, 80)
    dnn_activation: str = "dice"
    dropout: float = 0.0
    l2_mba: float = 0.0

    def validate(self) -> None:
        super().validate()
        if self.evolution not in EVOLUTIONS:
            raise ValueError(f"dien: evolution must be one of {EVOLUTIONS}, got {self.evolution!r}")
        if self.dnn_activation not in ACTIVATIONS:
            raise ValueError(f"dien: dnn_activation must be one of {ACTIVATIONS}, got {self.dnn_activation!r}")
        if self.hidden_size < 0 or self.aux_weight < 0 or self.l2_mba < 0 or not 0.0 <= self.dropout < 1.0:
            raise ValueError("dien: hidden_size, aux_weight and l2_mba must be non-negative, dropout in [0, 1)")

    def batch_needs(self) -> dict:
        return {**super().batch_needs(), "with_negatives": self.aux_weight > 0}


@dataclass
class DIENState(UserState):
    """DIEN's user side: all but the candidate's attention and the AUGRU it drives.

    Attributes:
        history: (B, T, D) behavior embeddings (0 at padding).
        mask: (B, T) bool, True at real behaviors.
        interests: (B, T, H) the interest extractor's states ``h_t`` (0 at padding).
        keys: (B, T, D) ``h_t W``, the user's half of the bilinear attention ``h_t W e_a``.
        evolution_inputs: (B, T, G * H) the AUGRU's input projection of ``h_t``
            (:meth:`AttentionalGRU.project`).
        pooled: (B, D) sum-pooled behaviors.
        user: (B, U) user features, or None.
    """

    history: torch.Tensor
    mask: torch.Tensor
    interests: torch.Tensor
    keys: torch.Tensor
    evolution_inputs: torch.Tensor
    pooled: torch.Tensor
    user: torch.Tensor | None = None


@register(DIENConfig)
class DIEN(RankingModel):
    """GRU interest extractor (+ auxiliary loss) -> target attention -> AUGRU -> MLP -> logit.

    The user side runs the interest extractor once per user; each candidate then costs its attention
    over the interest states and one AUGRU pass (the AUGRU's gates depend on the candidate), which
    reuses the states' input projection.

    Example:
        >>> model = DIEN(DIENConfig(n_items=10, n_cates=4, embedding_dim=4, aux_hidden=(8,), dnn_hidden=(8,)))
        >>> batch = Batch(history_items=torch.tensor([[2, 3, 0]]), history_cates=torch.tensor([[1, 2, 0]]),
        ...               history_mask=torch.tensor([[True, True, False]]), target_items=torch.tensor([4]),
        ...               target_cates=torch.tensor([2]), labels=torch.tensor([1.0]), users=torch.tensor([0]))
        >>> candidates = Candidates(items=torch.tensor([[4, 5, 6]]), cates=torch.tensor([[2, 2, 3]]))
        >>> model.eval().score(model.encode_user(batch), candidates).shape  # 3 candidates, one user
        torch.Size([1, 3])
    """

    def __init__(self, config: DIENConfig) -> None:
        super().__init__()
        self.config = config
        self.embedding = FeatureEmbedding.of(config)
        width = self.embedding.out_dim
        hidden = config.hidden_size or width
        self.extractor = AttentionalGRU(width, hidden, "gru")
        self.attention = nn.Linear(hidden, width, bias=False)  # the bilinear W of h_t W e_a
        self.evolution = AttentionalGRU(hidden, hidden, config.evolution)
        if config.aux_weight > 0:
            self.aux_net = MLP(hidden + width, list(config.aux_hidden), "sigmoid", out_dim=1)
        self.dnn = MLP(3 * width + hidden + self.embedding.user_dim, list(config.dnn_hidden), config.dnn_activation,
                       out_dim=1,
                       dropout=config.dropout)

    def extract(self, history: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
        """The interest extractor GRU over the real behaviors only: (B, T, D) -> (B, T, H), 0 at padding."""
        return self.extractor(history, mask, all_states=True)

    def attention_scores(self, keys: torch.Tensor, target: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
        """``softmax_t(h_t W e_a)`` over the real steps, for each of K candidates.

        Args:
            keys: (B, T, D) ``h_t W`` (:attr:`DIENState.keys`).
            target: (B, K, D) candidate embeddings ``e_a``.
            mask: (B, T) bool.

        Returns:
            (B, K, T) weights, 0 at padding.
        """
        logits = torch.einsum("btd,bkd->bkt", keys, target)  # (B, K, T)
        weights = torch.softmax(logits.masked_fill(~mask.unsqueeze(1), float("-inf")), dim=-1)
        return weights.nan_to_num(0.0)  # an empty history gives all zeros

    def auxiliary_loss(self, states: torch.Tensor, next_clicked: torch.Tensor, next_negative: torch.Tensor,
                       mask: torch.Tensor) -> torch.Tensor:
        """The mean over supervised steps of ``-log s(h_t, e[t+1]) - log(1 - s(h_t, e^[t+1]))``.

        Args:
            states: (B, T, H) interest states ``h_t``.
            next_clicked: (B, T, D) embeddings of the behaviors (``e[t]``; step ``t`` uses ``t + 1``).
            next_negative: (B, T, D) embeddings of each behavior's sampled negative.
            mask: (B, T) bool, True at real behaviors.

        Returns:
            A scalar; steps whose next behavior is padding (and padded steps) get no gradient.
        """
        supervised = mask[:, :-1] & mask[:, 1:]  # (B, T-1): h_t with a real e[t+1]
        if not bool(supervised.any()):
            return states.new_zeros(())
        rows, steps = supervised.nonzero(as_tuple=True)  # (N,), (N,)
        h = states[rows, steps]  # (N, H)
        positive = self.aux_net(torch.cat([h, next_clicked[rows, steps + 1]], dim=-1)).squeeze(-1)  # (N,)
        negative = self.aux_net(torch.cat([h, next_negative[rows, steps + 1]], dim=-1)).squeeze(-1)  # (N,)
        return F.binary_cross_entropy_with_logits(positive, torch.ones_like(positive)) + \
            F.binary_cross_entropy_with_logits(negative, torch.zeros_like(negative))

    def encode_user(self, batch: Batch) -> DIENState:
        mask = batch.history_mask  # (B, T)
        history = self.embedding.history(batch)  # (B, T, D)
        interests = self.extract(history, mask)  # (B, T, H)
        return DIENState(
            history=history, mask=mask, interests=interests,
            keys=self.attention(interests),  # (B, T, D)
            evolution_inputs=self.evolution.project(interests),  # (B, T, G*H)
            pooled=(history * mask.unsqueeze(-1)).sum(dim=1),  # (B, D)
            user=self.embedding.user(batch),  # (B, U) or None
        )

    def score(self, state: DIENState, candidates: Candidates) -> torch.Tensor:
        candidates.validate(len(state))
        target = self.embedding.candidates(candidates)  # (B, K, D)
        weights = self.attention_scores(state.keys, target, state.mask)  # (B, K, T)
        evolved = self.evolution(None, state.mask, weights, projected=state.evolution_inputs)  # (B, K, H)
        pooled = state.pooled.unsqueeze(1).expand_as(target)  # (B, K, D)
        features = torch.cat([target, pooled, target * pooled, evolved], dim=-1)  # (B, K, 3D + H)
        return self.dnn(with_user(features, state.user).flatten(0, 1)).view(candidates.items.shape)  # (B, K)

    def forward(self, batch: Batch) -> ModelOutput:
        batch.validate()
        state = self.encode_user(batch)
        logits = self.score(state, Candidates.from_targets(batch)).squeeze(1)  # (B,)
        aux = {}
        if self.training and self.config.aux_weight > 0:
            if batch.history_negative_items is None or batch.history_negative_cates is None:
                raise ValueError("dien: training with aux_weight > 0 needs history_negative_items and "
                                 "history_negative_cates (build the Collator with with_negatives=True), "
                                 "or set aux_weight=0")
            negatives = self.embedding.side(batch.history_negative_items, batch.history_negative_cates,
                                            batch.history_negative_side)  # (B, T, D)
            # the clicked next behaviors as the negatives are embedded: without their event context
            clicked = state.history if self.embedding.behavior is None else self.embedding.history(batch, context=False)
            aux["auxiliary"] = self.config.aux_weight * self.auxiliary_loss(state.interests, clicked,
                                                                            negatives, state.mask)
        if self.config.l2_mba > 0 and self.training:
            aux["l2_mba"] = self.config.l2_mba * self.embedding.batch_l2(batch)
        return ModelOutput(logits=logits, aux_losses=aux)
