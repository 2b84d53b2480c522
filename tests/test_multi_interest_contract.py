"""The common contract of multi-interest retrieval models (every registered model built on
``MultiInterestModel``): what P3 evaluation and DESMIL rely on."""

from __future__ import annotations

import pytest
import torch

from lifelong.models import MODELS, build_model
from lifelong.streams import STREAMS

from helpers import random_batch, select
from model_configs import TINY_CONFIGS, TINY_VOCAB

NAMES = sorted(name for name, (config_class, _) in MODELS.items() if getattr(config_class, "multi_interest", False))


def tiny(name: str, **overrides):
    torch.manual_seed(0)
    return build_model({"model_type": name, **TINY_VOCAB, **TINY_CONFIGS[name], **overrides})


def test_the_multi_interest_models_are_registered():
    assert {"youtube_dnn", "mind", "comirec_dr", "comirec_sa", "hcn", "knn_embed"} <= set(NAMES)


@pytest.mark.parametrize("name", NAMES)
def test_every_user_has_a_valid_interest_and_switched_off_ones_never_change_the_merged_list(name):
    model = tiny(name).eval()
    batch = random_batch(batch_size=8, seed=3)
    vectors, valid = model.interests(batch)
    assert vectors.shape[:2] == valid.shape and valid.any(dim=1).all()
    users = model.user_vectors(batch)
    assert torch.equal(users[valid], vectors[valid])
    only_valid = torch.stack([model.score(vectors[i][valid[i]][None], model.item_vectors())[0] for i in range(8)])
    torch.testing.assert_close(model.score(users, model.item_vectors()), only_valid)


@pytest.mark.parametrize("name", NAMES)
@pytest.mark.parametrize("k", [1, 5, TINY_VOCAB["n_items"] - 2])
def test_retrieve_returns_k_distinct_rankable_items(name, k):
    model = tiny(name).eval()
    batch = random_batch(batch_size=6, seed=4)
    top = model.retrieve(model.user_vectors(batch), model.item_vectors(), k)
    assert top.shape == (6, k) and (top >= 2).all() and (top < TINY_VOCAB["n_items"]).all()
    assert all(len(set(row.tolist())) == k for row in top)


@pytest.mark.parametrize("name", NAMES)
def test_the_training_loss_is_the_sample_weighted_mean_of_the_per_sample_losses_plus_the_extra_terms(name):
    model = tiny(name, loss="full").train()
    batch = random_batch(batch_size=8, seed=5)
    losses, vectors, valid, extra = model.training_terms(batch)
    assert losses.shape == (8,)
    # per-sample: each loss is the one the sample has alone, so that a sample weight scales that sample's
    # term and nothing else (the values themselves: the hard-label-attention test below)
    for row in range(8):
        alone = model.training_terms(select(batch, torch.tensor([row])))[0]
        torch.testing.assert_close(alone, losses[row : row + 1])
    rest = sum(extra.values()) if extra else 0.0
    torch.testing.assert_close(model(batch).loss, losses.mean() + rest)
    weights = torch.arange(1.0, 9.0) / 4.5  # positive, mean one
    torch.testing.assert_close(model(batch, weights).loss, (losses * weights).mean() + rest)


@pytest.mark.parametrize("name", NAMES)
def test_the_chosen_interest_is_the_one_nearest_the_target_under_hard_label_attention(name):
    model = tiny(name, loss="full").train()
    batch = random_batch(batch_size=8, seed=6)
    vectors, valid = model.training_interests(batch)
    target = model.item_vectors()[batch.target_items]
    best = torch.einsum("bkd,bd->bk", vectors, target).masked_fill(~valid, float("-inf")).argmax(1)
    chosen = vectors[torch.arange(8), best]
    logits = chosen @ model.item_vectors().T
    logits[:, :2] = float("-inf")
    expected = torch.nn.functional.cross_entropy(logits, batch.target_items, reduction="none")
    torch.testing.assert_close(model.training_terms(batch)[0], expected)


@pytest.mark.parametrize("name", NAMES)
def test_history_negatives_contrast_the_target_with_the_samples_own_history_items(name):
    batch = random_batch(batch_size=8, seed=7)
    plain, with_history = tiny(name).train(), tiny(name, history_negatives=True).train()
    torch.manual_seed(3), STREAMS.reset(3)  # dropout; the negatives stream
    base = plain.training_terms(batch)[0]
    torch.manual_seed(3), STREAMS.reset(3)  # dropout; the negatives stream
    losses, vectors, valid, _ = with_history.training_terms(batch)
    items = with_history.item_vectors()
    target = items[batch.target_items]
    best = torch.einsum("bkd,bd->bk", vectors, target).masked_fill(~valid, float("-inf")).argmax(1)
    chosen = vectors[torch.arange(8), best]
    torch.manual_seed(3), STREAMS.reset(3)  # dropout; the negatives stream
    drawn = torch.randint(2, items.shape[0], (with_history.config.negatives,), generator=STREAMS("negatives"))
    for row in range(8):
        negatives = set(drawn.tolist()) | set(batch.history_items[row][batch.history_mask[row]].tolist())
        negatives.discard(int(batch.target_items[row]))
        # shared draws may repeat (each copy counts); the row's own items count once, and not again if drawn
        own = sorted(negatives - set(drawn.tolist()))
        shared = [j for j in drawn.tolist() if j != int(batch.target_items[row])]
        logits = chosen[row] @ items[[int(batch.target_items[row])] + shared + own].T
        torch.testing.assert_close(losses[row], -logits.log_softmax(0)[0])
    assert (losses >= base - 1e-6).all()


def test_history_negatives_need_the_sampled_loss():
    with pytest.raises(ValueError, match="history_negatives needs loss=sampled"):
        tiny("comirec_sa", loss="full", history_negatives=True)
