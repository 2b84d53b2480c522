"""DIEN's mechanisms: AUGRU/AGRU/AIGRU, the auxiliary loss and its sampled negatives."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from lifelong.batch import Collator, event_negatives
from lifelong.data.schema import EventLog
from lifelong.dataset import load_dataset
from lifelong.models import build_model
from lifelong.models.dien import AttentionalGRU
from lifelong.pipeline import ProtocolOptions, prepare
from lifelong.train.loop import collators_for

from helpers import assert_candidates_score_as_forward_passes, random_batch, random_log, select
from model_configs import TINY_VOCAB


def tiny_dien(**options):
    torch.manual_seed(0)
    return build_model({"model_type": "dien", **TINY_VOCAB, "embedding_dim": 4, "aux_hidden": (8,),
                        "dnn_hidden": (16, 8), **options})


@pytest.mark.parametrize("kind", ["augru", "agru"])
def test_zero_attention_leaves_the_hidden_state_unchanged(kind):
    torch.manual_seed(1)
    gru = AttentionalGRU(5, 3, kind)
    initial = torch.randn(4, 3)
    inputs = torch.randn(4, 6, 5)
    mask = torch.ones(4, 6, dtype=torch.bool)
    out = gru(inputs, mask, torch.zeros(4, 6), initial=initial)
    assert torch.equal(out, initial)
    # and a non-zero attention does move it
    assert not torch.allclose(gru(inputs, mask, torch.full((4, 6), 0.5), initial=initial), initial)


def test_augru_attention_scales_the_update_gate():
    """With attention 1 everywhere AUGRU is a plain GRU with the same weights."""
    torch.manual_seed(2)
    gru = AttentionalGRU(5, 3, "augru")
    inputs = torch.randn(2, 4, 5)
    state = torch.zeros(2, 3)
    for step in range(4):  # the paper's GRU equations, written out
        x_r, x_u, x_h = gru.input_proj(inputs[:, step]).chunk(3, dim=-1)
        h_r, h_u, h_h = gru.state_proj(state).chunk(3, dim=-1)
        r, u = torch.sigmoid(x_r + h_r), torch.sigmoid(x_u + h_u)
        state = (1 - u) * state + u * torch.tanh(x_h + r * h_h)
    out = gru(inputs, torch.ones(2, 4, dtype=torch.bool), torch.ones(2, 4))
    torch.testing.assert_close(out, state)
    plain = AttentionalGRU(5, 3, "gru")
    plain.load_state_dict(gru.state_dict())
    torch.testing.assert_close(plain(inputs, torch.ones(2, 4, dtype=torch.bool)), state)


def test_extractor_states_match_step_by_step_and_are_zero_at_padding():
    torch.manual_seed(5)
    gru = AttentionalGRU(5, 3, "gru")
    inputs = torch.randn(3, 4, 5)
    mask = torch.tensor([[True, True, True, False], [True, False, False, False], [True] * 4])
    states = gru(inputs * mask.unsqueeze(-1), mask, all_states=True)  # (3, 4, 3)
    for i in range(3):
        n = int(mask[i].sum())
        for t in range(n):
            prefix = gru(inputs[i : i + 1, : t + 1], torch.ones(1, t + 1, dtype=torch.bool))
            torch.testing.assert_close(states[i, t], prefix[0])
        assert bool((states[i, n:] == 0).all())


@pytest.mark.parametrize("kind", ["gru", "augru", "aigru", "agru"])
def test_padded_steps_leave_the_state_unchanged(kind):
    torch.manual_seed(3)
    gru = AttentionalGRU(5, 3, kind)
    inputs, attention = torch.randn(1, 4, 5), torch.rand(1, 4)
    short = gru(inputs[:, :2], torch.ones(1, 2, dtype=torch.bool), attention[:, :2])
    padded_inputs = torch.cat([inputs[:, :2], torch.randn(1, 2, 5)], dim=1)
    mask = torch.tensor([[True, True, False, False]])
    torch.testing.assert_close(gru(padded_inputs, mask, attention * mask), short)


def test_attention_is_a_softmax_over_real_behaviors():
    model = tiny_dien()
    batch = random_batch(seed=4)
    state = model.encode_user(batch)
    target = model.embedding(batch.target_items, batch.target_cates)
    weights = model.attention_scores(state.keys, target.unsqueeze(1), batch.history_mask).squeeze(1)
    torch.testing.assert_close(weights.sum(dim=1), torch.ones(len(batch)))
    assert bool((weights[~batch.history_mask] == 0).all())


def test_auxiliary_loss_gives_no_gradient_to_padded_or_unsupervised_steps():
    model = tiny_dien()
    batch = random_batch(seed=5)
    history = model.embedding(batch.history_items, batch.history_cates)
    negatives = model.embedding(batch.history_negative_items, batch.history_negative_cates)
    states = torch.randn(len(batch), batch.history_mask.shape[1], 8, requires_grad=True)
    model.auxiliary_loss(states, history, negatives, batch.history_mask).backward()
    lengths = batch.lengths
    for i in range(len(batch)):
        n = int(lengths[i])
        assert bool((states.grad[i, n - 1 :] == 0).all())  # the last real step has no next behavior
        if n >= 2:
            assert bool((states.grad[i, : n - 1].abs().sum(dim=-1) > 0).all())


def test_auxiliary_loss_pairs_each_state_with_the_next_behavior():
    """h_t is scored against e[t+1]: the first behavior is never a 'next' one, the last state has none."""
    model = tiny_dien()
    batch = random_batch(seed=12)
    mask = batch.history_mask
    states = torch.randn(len(batch), mask.shape[1], 8)
    clicked = torch.randn(len(batch), mask.shape[1], 8, requires_grad=True)
    negative = torch.randn(len(batch), mask.shape[1], 8, requires_grad=True)
    model.auxiliary_loss(states, clicked, negative, mask).backward()
    for grad in (clicked.grad, negative.grad):
        for i in range(len(batch)):
            n = int(mask[i].sum())
            assert bool((grad[i, 0] == 0).all()) and bool((grad[i, n:] == 0).all())
            assert bool((grad[i, 1:n].abs().sum(dim=-1) > 0).all())


def test_auxiliary_loss_prefers_the_clicked_next_behavior():
    """A classifier that scores e[t+1] above the negative has the lower loss."""
    model = tiny_dien()
    batch = random_batch(seed=6)
    mask = batch.history_mask
    history = torch.randn(len(batch), mask.shape[1], 8)
    negatives = torch.randn(len(batch), mask.shape[1], 8)
    states = torch.randn(len(batch), mask.shape[1], 8)
    loss = model.auxiliary_loss(states, history, negatives, mask)
    swapped = model.auxiliary_loss(states, negatives, history, mask)
    assert torch.isfinite(loss) and torch.isfinite(swapped)
    optimizer = torch.optim.Adam(model.aux_net.parameters(), lr=1e-2)
    for _ in range(100):
        optimizer.zero_grad()
        model.auxiliary_loss(states, history, negatives, mask).backward()
        optimizer.step()
    assert model.auxiliary_loss(states, history, negatives, mask) < model.auxiliary_loss(states, negatives, history, mask)


def test_aux_weight_zero_switches_the_auxiliary_loss_and_its_negatives_off():
    model = tiny_dien(aux_weight=0.0)
    assert not hasattr(model, "aux_net")
    assert model.config.batch_needs() == {"with_negatives": False}
    model.train()
    batch = random_batch(seed=7)
    batch.history_negative_items = batch.history_negative_cates = None
    assert model(batch).aux_losses == {}


def test_aux_weight_scales_the_auxiliary_loss():
    batch = random_batch(seed=8)
    one = tiny_dien(aux_weight=1.0).train()(batch).aux_losses["auxiliary"]
    half = tiny_dien(aux_weight=0.5).train()(batch).aux_losses["auxiliary"]
    torch.testing.assert_close(half, 0.5 * one)


def test_training_without_negatives_is_an_error_naming_the_fix():
    model = tiny_dien().train()
    batch = random_batch(seed=9)
    batch.history_negative_items = None
    with pytest.raises(ValueError, match="with_negatives"):
        model(batch)


@pytest.mark.parametrize("kind", ["aigru", "agru"])
def test_ablation_variants_score_a_sample_the_same_alone_and_padded(kind):
    model = tiny_dien(evolution=kind).eval()
    batch = random_batch(batch_size=6, seed=10)
    full = model(batch).logits
    for i in range(len(batch)):
        alone = model(select(batch, torch.tensor([i]), width=int(batch.history_mask[i].sum()))).logits
        torch.testing.assert_close(alone, full[i : i + 1], rtol=1e-5, atol=1e-5)


@pytest.fixture(scope="module")
def dataset(tmp_path_factory):
    events, items = random_log(n_users=30, n_items=40, max_events=25, seed=4)
    path = prepare(EventLog(events=events, items=items, recipe="test"), tmp_path_factory.mktemp("dien") / "d",
                   ProtocolOptions())
    return load_dataset(path)


def test_negatives_are_never_the_users_own_items_and_follow_the_seed(dataset):
    negatives = event_negatives(dataset, seed=11)
    assert negatives.shape == dataset.event_items.shape
    for user in range(dataset.offsets.shape[0] - 1):
        begin, end = dataset.offsets[user], dataset.offsets[user + 1]
        own = set(dataset.event_items[begin : end - 2].tolist())  # its training events (P1 holds out the last two)
        assert not own & set(negatives[begin:end].tolist())  # held-out items may be drawn: tests/test_leaks.py
    assert bool((dataset.item_idx[negatives] >= 2).all())  # a real item, never padding or unknown
    assert np.array_equal(negatives, event_negatives(dataset, seed=11))
    assert not np.array_equal(negatives, event_negatives(dataset, seed=12))


def test_the_loop_gives_negatives_to_training_batches_only(dataset):
    config = build_model({"model_type": "dien", "n_items": 50, "n_cates": 10, "embedding_dim": 4}).config.to_dict()
    evaluation, training = collators_for(config, dataset, 10, seed=3)
    samples = dataset.samples("train").subset(np.arange(20))
    assert evaluation(samples).history_negative_items is None
    batch = training(samples)
    batch.validate()
    mask = batch.history_mask
    assert bool((batch.history_negative_items[mask] >= 2).all())
    assert bool((batch.history_negative_items[~mask] == 0).all())
    assert not bool((batch.history_negative_items == batch.history_items)[mask].any())
    plain = {**config, "aux_weight": 0.0}
    evaluation, training = collators_for(plain, dataset, 10, seed=3)
    assert training is evaluation and training.negatives is None


@pytest.mark.parametrize("options", [{}, {"evolution": "aigru"}, {"evolution": "agru"}, {"hidden_size": 6}])
def test_variants_score_several_candidates_as_forward_passes(options):
    model = tiny_dien(**options)
    with torch.no_grad():  # O(1) embeddings: the 1e-2 init hides the candidate's effect
        for table in (model.embedding.item, model.embedding.cate):
            table.weight.normal_()
            table.weight[0].zero_()
    assert_candidates_score_as_forward_passes(model.eval(), random_batch(batch_size=6, seed=41), k=4)


@pytest.mark.parametrize("kind", ["augru", "aigru", "agru"])
def test_k_attention_sequences_over_shared_inputs_equal_k_runs(kind):
    """Attention (B, K, T): K runs over the same inputs, sharing their projection (given or not)."""
    torch.manual_seed(6)
    gru = AttentionalGRU(5, 3, kind)
    mask = torch.arange(6)[None, :] < torch.tensor([6, 2, 0, 4])[:, None]  # one history is empty
    inputs = torch.randn(4, 6, 5) * mask.unsqueeze(-1)
    attention = torch.rand(4, 3, 6) * mask.unsqueeze(1)
    initial = torch.randn(4, 3)
    together = gru(inputs, mask, attention, initial=initial)  # (B, K, H)
    shared = gru(None, mask, attention, initial=initial, projected=gru.project(inputs))
    assert together.shape == (4, 3, 3)
    torch.testing.assert_close(shared, together)
    for j in range(3):
        torch.testing.assert_close(together[:, j], gru(inputs, mask, attention[:, j], initial=initial))
    torch.testing.assert_close(together[2], initial[2].expand(3, 3))  # no step: the initial state
