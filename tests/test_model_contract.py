"""The common contract, run on every registered model automatically (the common tests: the domain's invariances, not only shapes)."""

from __future__ import annotations

import dataclasses
import json

import pytest
import torch
import torch.nn.functional as F

from lifelong.models import MODELS, build_model
from lifelong.models.ranking import Candidates, RankingModel
from lifelong.nn import BehaviorEmbedding
from lifelong.streams import STREAMS
from lifelong.train.checkpoint import load_weights, save_checkpoint

from helpers import assert_candidates_score_as_forward_passes, random_batch, random_candidates, select
from model_configs import TINY_CONFIGS, TINY_VOCAB

NAMES = sorted(name for name, (config_class, _) in MODELS.items() if config_class.task == "ctr")  # ranking models
ALL_NAMES = sorted(MODELS)  # retrieval models have their own contract in test_retrieval_contract.py


def tiny_model(name: str, seed: int = 0):
    torch.manual_seed(seed)
    return build_model({"model_type": name, **TINY_VOCAB, **TINY_CONFIGS[name]})


def warm_up(model, steps: int = 3):
    """A few training steps, so that weights and batch statistics are not at their initial values."""
    optimizer = torch.optim.Adam(model.parameters(), lr=1e-2)
    for step in range(steps):
        batch = random_batch(seed=100 + step)
        loss = F.binary_cross_entropy_with_logits(model(batch).logits, batch.labels)
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()
    model.eval()
    return model


@pytest.mark.parametrize("name", NAMES)
def test_a_ranking_model_embeds_its_ids_with_the_shared_block(name):
    """The loop fills the mini-batch-aware regulariser's counts of ``model.embedding`` (no probing)."""
    model = tiny_model(name)
    assert isinstance(model, RankingModel) and isinstance(model.embedding, BehaviorEmbedding)


def test_every_registered_model_has_a_tiny_config():
    missing = sorted(set(MODELS) - set(TINY_CONFIGS))
    assert not missing, f"registered models without a tiny test config in tests/model_configs.py: {missing}"


@pytest.mark.parametrize("name", NAMES)
def test_output_shape_and_finite(name):
    model = tiny_model(name)
    batch = random_batch()
    for mode in (model.train, model.eval):
        mode()
        logits = model(batch).logits
        assert logits.shape == (len(batch),)
        assert torch.isfinite(logits).all()


@pytest.mark.parametrize("name", NAMES)
def test_every_parameter_receives_a_gradient(name):
    model = tiny_model(name)
    model.train()
    batch = random_batch(batch_size=16, seed=3)
    output = model(batch)
    loss = F.binary_cross_entropy_with_logits(output.logits, batch.labels) + sum(output.aux_losses.values())
    loss.backward()
    silent = [n for n, p in model.named_parameters() if p.grad is None or not torch.any(p.grad != 0)]
    assert not silent, f"{name}: parameters with no gradient: {silent}"


@pytest.mark.parametrize("name", NAMES)
def test_evaluation_is_deterministic(name):
    model = warm_up(tiny_model(name))
    batch = random_batch(seed=5)
    assert torch.equal(model(batch).logits, model(batch).logits)


@pytest.mark.parametrize("name", NAMES)
def test_sample_scores_the_same_alone_in_any_order_and_with_more_padding(name):
    model = warm_up(tiny_model(name))
    batch = random_batch(batch_size=8, seed=7)
    full = model(batch).logits
    for i in range(len(batch)):
        length = int(batch.history_mask[i].sum())
        alone = model(select(batch, torch.tensor([i]), width=length)).logits
        torch.testing.assert_close(alone, full[i : i + 1], rtol=1e-5, atol=1e-5)
    order = torch.randperm(len(batch), generator=torch.Generator().manual_seed(1))
    torch.testing.assert_close(model(select(batch, order)).logits, full[order], rtol=1e-5, atol=1e-5)
    wider = select(batch, torch.arange(len(batch)), width=batch.history_mask.shape[1] + 9)
    torch.testing.assert_close(model(wider).logits, full, rtol=1e-5, atol=1e-5)


@pytest.mark.parametrize("name", NAMES)
def test_config_and_weights_round_trip(name, tmp_path):
    model = warm_up(tiny_model(name))
    config = {"model_type": name, **model.config.to_dict()}
    save_checkpoint(tmp_path / "ckpt", model, config, {"epoch": 1})
    saved = json.loads((tmp_path / "ckpt" / "config.json").read_text())
    restored = build_model(saved)
    load_weights(tmp_path / "ckpt", restored)
    restored.eval()
    batch = random_batch(seed=11)
    assert torch.equal(restored(batch).logits, model(batch).logits)
    assert restored.config == model.config


@pytest.mark.parametrize("name", NAMES)
def test_loss_falls_when_overfitting_one_tiny_batch(name):
    model = tiny_model(name)
    model.train()
    batch = random_batch(batch_size=16, seed=13)
    optimizer = torch.optim.Adam(model.parameters(), lr=1e-2)
    losses = []
    for _ in range(60):
        output = model(batch)
        loss = F.binary_cross_entropy_with_logits(output.logits, batch.labels)
        optimizer.zero_grad()
        (loss + sum(output.aux_losses.values())).backward()
        optimizer.step()
        losses.append(loss.item())
    assert losses[-1] < 0.5 * losses[0], f"{name}: loss {losses[0]:.3f} -> {losses[-1]:.3f}"


# The user side apart from the candidates: encode_user(batch) -> state, score(state, candidates) -> (B, K).


def warm_and_visible(name: str):
    """A warmed-up model whose id embeddings are scaled from ~1e-2 up to ~1, so that every effect of a
    candidate on a score is far above the tolerance of a comparison."""
    model = warm_up(tiny_model(name))
    with torch.no_grad():
        for module in model.modules():
            if isinstance(module, BehaviorEmbedding):
                module.item.weight.mul_(30.0)
                module.cate.weight.mul_(30.0)
    return model


@pytest.mark.parametrize("name", NAMES)
def test_every_ranking_model_splits_the_user_side_from_the_candidates(name):
    model_class = MODELS[name][1]
    assert issubclass(model_class, RankingModel)
    for method in ("encode_user", "score"):
        assert getattr(model_class, method) is not getattr(RankingModel, method), f"{name} does not define {method}"


@pytest.mark.parametrize("chunks", ["at once", "in chunks"])
@pytest.mark.parametrize("name", NAMES)
def test_scoring_k_candidates_equals_k_forward_passes(name, chunks, monkeypatch):
    """One encoded user state, K candidates scored together (as serving does, without gradients) equal K
    forward passes with each candidate as the target; and the candidates get different scores."""
    if chunks == "in chunks":  # inference splits the (behavior, candidate) pairs into chunks of this many
        monkeypatch.setattr("lifelong.nn.layers.PAIRS_PER_CHUNK", 8)
        monkeypatch.setattr("lifelong.nn.layers.CANDIDATE_PAIRS_PER_CHUNK", 8)
    model = warm_and_visible(name)
    assert_candidates_score_as_forward_passes(model, random_batch(batch_size=6, seed=21), k=5, seed=22)


@pytest.mark.parametrize("name", NAMES)
def test_a_candidates_score_does_not_depend_on_the_other_candidates(name):
    model = warm_and_visible(name)
    batch = random_batch(batch_size=6, seed=23)
    candidates = random_candidates(batch, k=6, seed=24)
    state = model.encode_user(batch)
    scores = model.score(state, candidates)  # (B, K)
    # permuted, differently for each user: the scores follow their candidates
    order = torch.argsort(torch.rand(len(batch), 6, generator=torch.Generator().manual_seed(25)), dim=1)
    permuted = Candidates(candidates.items.gather(1, order), candidates.cates.gather(1, order), candidates.timestamps)
    torch.testing.assert_close(model.score(state, permuted), scores.gather(1, order), rtol=1e-5, atol=1e-5)
    # the others replaced: candidate 0 keeps its score
    others = random_candidates(batch, k=6, seed=26)
    replaced = Candidates(torch.cat([candidates.items[:, :1], others.items[:, 1:]], dim=1),
                          torch.cat([candidates.cates[:, :1], others.cates[:, 1:]], dim=1), candidates.timestamps)
    torch.testing.assert_close(model.score(state, replaced)[:, 0], scores[:, 0], rtol=1e-5, atol=1e-5)
    # alone (K = 1): the same score
    for j in (0, 3):
        alone = Candidates(candidates.items[:, j : j + 1], candidates.cates[:, j : j + 1], candidates.timestamps)
        torch.testing.assert_close(model.score(state, alone)[:, 0], scores[:, j], rtol=1e-5, atol=1e-5)


@pytest.mark.parametrize("mode", ["eval", "train"])
@pytest.mark.parametrize("name", NAMES)
def test_forward_equals_encode_user_then_score_of_the_targets(name, mode):
    model = warm_and_visible(name)
    getattr(model, mode)()
    batch = random_batch(batch_size=8, seed=27)
    torch.manual_seed(3)  # dropout (torch's generator) and the diffusion's noise (its stream) draw the same in both
    STREAMS.reset(seed=3)
    forward = model(batch).logits
    torch.manual_seed(3)
    STREAMS.reset(seed=3)
    split = model.score(model.encode_user(batch), Candidates.from_targets(batch))
    assert split.shape == (len(batch), 1)
    torch.testing.assert_close(split[:, 0], forward, rtol=1e-5, atol=1e-5)


@pytest.mark.parametrize("name", NAMES)
def test_the_user_state_reads_neither_targets_nor_labels_nor_sample_times(name):
    model = warm_and_visible(name)
    batch = random_batch(seed=28)
    other = dataclasses.replace(batch, target_items=batch.target_items.flip(0), target_cates=batch.target_cates.flip(0),
                                labels=1 - batch.labels, timestamps=batch.timestamps + 10**6)
    state, other_state = model.encode_user(batch), model.encode_user(other)
    assert type(state) is type(other_state) and len(state) == len(batch)
    for field in dataclasses.fields(state):
        a, b = getattr(state, field.name), getattr(other_state, field.name)
        assert (a is None and b is None) or torch.equal(a, b), f"{name}: state.{field.name} depends on the targets"


@pytest.mark.parametrize("name", NAMES)
def test_the_states_of_some_users_score_as_in_the_whole_batch(name):
    """``UserState.select`` (a cache's rows) keeps each user's state intact."""
    model = warm_and_visible(name)
    batch = random_batch(batch_size=6, seed=29)
    candidates = random_candidates(batch, k=4, seed=30)
    state = model.encode_user(batch)
    scores = model.score(state, candidates)
    index = torch.tensor([4, 1])
    some = Candidates(candidates.items[index], candidates.cates[index], candidates.timestamps[index])
    torch.testing.assert_close(model.score(state.select(index), some), scores[index], rtol=1e-5, atol=1e-5)


@pytest.mark.parametrize("name", NAMES)
def test_scoring_several_candidates_in_training_mode_backpropagates(name):
    """Training mode normalises over all B * K rows (Dice, dropout): not the scores of eval mode, but a
    loss over several candidates per user trains."""
    model = tiny_model(name).train()
    batch = random_batch(batch_size=6, seed=31)
    scores = model.score(model.encode_user(batch), random_candidates(batch, k=3, seed=32))
    assert scores.shape == (6, 3) and torch.isfinite(scores).all()
    scores.logsumexp(dim=1).sum().backward()
    assert any(p.grad is not None and bool(p.grad.abs().sum() > 0) for p in model.parameters())


@pytest.mark.parametrize("name", NAMES)
def test_candidates_that_do_not_fit_the_state_raise_a_value_error(name):
    model = tiny_model(name).eval()
    batch = random_batch(seed=33)
    state = model.encode_user(batch)
    candidates = random_candidates(batch, k=3)
    too_many = Candidates(torch.cat([candidates.items, candidates.items[:1]]),
                          torch.cat([candidates.cates, candidates.cates[:1]]), candidates.timestamps)
    with pytest.raises(ValueError, match="users"):
        model.score(state, too_many)
    negative = Candidates(candidates.items.clone(), candidates.cates, candidates.timestamps)
    negative.items[0, 0] = -1
    with pytest.raises(ValueError, match="negative"):
        model.score(state, negative)
    with pytest.raises(ValueError, match="shape"):
        model.score(state, Candidates(candidates.items, candidates.cates[:, :2], candidates.timestamps))


def _malformed_batches():
    def wrong_mask_shape(b):
        b.history_mask = b.history_mask[:, :-1]

    def negative_index(b):
        b.target_items = b.target_items.clone()
        b.target_items[0] = -3

    def float_items(b):
        b.history_items = b.history_items.float()

    def wrong_target_length(b):
        b.target_cates = b.target_cates[:-1]

    def items_under_padding(b):
        b.history_items = b.history_items.clone()
        b.history_items[-1, -1] = 5  # the last sample has one event, so this is a padded step

    def mask_not_bool(b):
        b.history_mask = b.history_mask.long()

    def right_aligned(b):
        for name in ("history_items", "history_cates", "history_mask"):
            setattr(b, name, getattr(b, name).flip(1))

    return {"left-aligned": right_aligned, "history_mask": wrong_mask_shape, "negative": negative_index, "integer": float_items,
            "target_cates": wrong_target_length, "padding": items_under_padding, "bool": mask_not_bool}


@pytest.mark.parametrize("name", ALL_NAMES)
@pytest.mark.parametrize("problem", sorted(_malformed_batches()))
def test_malformed_batch_raises_a_value_error_naming_the_problem(name, problem):
    model = tiny_model(name)
    batch = random_batch()
    _malformed_batches()[problem](batch)
    with pytest.raises(ValueError, match=problem):
        model(batch)
