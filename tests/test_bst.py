"""BST mechanism tests: the target token attends to the behaviors, padding never takes part,
positions break the permutation invariance of self-attention."""

from __future__ import annotations

import dataclasses

import pytest
import torch

from lifelong.models import build_model
from lifelong.models.bst import attention_with_log_normalizer
from lifelong.models.ranking import Candidates

from helpers import assert_candidates_score_as_forward_passes, random_batch, random_candidates, select
from model_configs import TINY_VOCAB


def bst(seed: int = 0, **overrides):
    torch.manual_seed(seed)
    config = {"model_type": "bst", **TINY_VOCAB, "embedding_dim": 4, "num_heads": 2, "dnn_hidden": (16, 8)}
    model = build_model({**config, **overrides})
    with torch.no_grad():  # larger embeddings than the 1e-2 init, so that every effect is visible
        for table in (model.embedding.item, model.embedding.cate, model.position):
            table.weight.normal_()
        for table in (model.embedding.item, model.embedding.cate):
            table.weight[0].zero_()
    return model.eval()


def test_target_token_attends_to_the_behaviors():
    model = bst()
    batch = random_batch(seed=1)
    changed = select(batch, torch.arange(len(batch)))
    changed.history_items = batch.history_items.clone()
    changed.history_items[0, 0] = 2 if int(batch.history_items[0, 0]) != 2 else 3
    before, after = model.encode(batch)[:, -1], model.encode(changed)[:, -1]  # target token outputs
    assert not torch.allclose(before[0], after[0], atol=1e-5)
    torch.testing.assert_close(before[1:], after[1:])
    assert not torch.allclose(model(batch).logits[0], model(changed).logits[0], atol=1e-6)


def test_outputs_at_real_positions_equal_those_of_the_unpadded_sequence():
    model = bst(num_layers=2)
    batch = random_batch(seed=2)
    padded = select(batch, torch.arange(len(batch)), width=batch.history_mask.shape[1] + 5)
    outputs = model.encode(padded)  # (B, T + 5 + 1, D)
    for i in range(len(batch)):
        length = int(batch.history_mask[i].sum())
        alone = model.encode(select(batch, torch.tensor([i]), width=length))[0]  # (length + 1, D)
        torch.testing.assert_close(outputs[i, :length], alone[:length], rtol=1e-5, atol=1e-5)
        torch.testing.assert_close(outputs[i, -1], alone[-1], rtol=1e-5, atol=1e-5)


def _reversed_history(batch, i):
    """Sample ``i`` alone with its real behaviors in reverse order."""
    one = select(batch, torch.tensor([i]))
    length = int(one.history_mask.sum())
    order = torch.cat([torch.arange(length - 1, -1, -1), torch.arange(length, one.history_mask.shape[1])])
    one.history_items, one.history_cates = one.history_items[:, order], one.history_cates[:, order]
    return select(batch, torch.tensor([i])), one


def test_without_positions_the_score_ignores_behavior_order_and_with_them_it_does_not():
    batch = random_batch(seed=3)
    original, reordered = _reversed_history(batch, 0)  # sample 0 has the full width, 7 behaviors
    model = bst()
    assert not torch.allclose(model(original).logits, model(reordered).logits, atol=1e-5)
    with torch.no_grad():
        model.position.weight.zero_()
    torch.testing.assert_close(model(original).logits, model(reordered).logits, rtol=1e-5, atol=1e-5)


def test_num_heads_must_divide_the_token_width():
    with pytest.raises(ValueError, match="num_heads"):
        build_model({"model_type": "bst", **TINY_VOCAB, "embedding_dim": 4, "num_heads": 3})


def test_fused_and_reference_attention_agree_in_eval_and_in_gradients():
    fused, reference = bst(attention_impl="fused"), bst(attention_impl="reference")
    reference.load_state_dict(fused.state_dict())
    batch = random_batch(seed=4)
    torch.testing.assert_close(fused(batch).logits, reference(batch).logits, rtol=1e-5, atol=1e-5)
    for model in (fused, reference):
        model.train()
        model(batch).logits.sum().backward()
    for (name, a), (_, b) in zip(fused.named_parameters(), reference.named_parameters()):
        torch.testing.assert_close(a.grad, b.grad, rtol=1e-4, atol=1e-5, msg=name)


@pytest.mark.parametrize("options", [{}, {"num_layers": 2}, {"attention_impl": "reference"}, {"max_positions": 3}])
def test_the_split_first_layer_scores_several_candidates_as_the_plain_encoder(options):
    """K > 1 candidates run the split first layer; each forward pass (K = 1) the plain encoder."""
    assert_candidates_score_as_forward_passes(bst(**options), random_batch(batch_size=6, seed=44), k=4)


def test_the_split_first_layer_trains_as_the_plain_encoder():
    """Same gradients (through the log-normaliser too) as one plain forward pass per candidate."""
    split, plain = bst(), bst()
    split.train(), plain.train()
    batch = random_batch(batch_size=6, seed=45)
    candidates = random_candidates(batch, k=3, seed=46)
    split.score(split.encode_user(batch), candidates).sum().backward()
    sum(plain(dataclasses.replace(batch, target_items=candidates.items[:, j], target_cates=candidates.cates[:, j]))
        .logits.sum() for j in range(3)).backward()
    for (name, a), (_, b) in zip(split.named_parameters(), plain.named_parameters()):
        torch.testing.assert_close(a.grad, b.grad, rtol=1e-4, atol=1e-5, msg=name)


@pytest.mark.parametrize("logits_per_chunk", [1 << 18, 7])
def test_behaviors_only_attention_and_its_log_normalizer(logits_per_chunk, monkeypatch):
    monkeypatch.setattr("lifelong.models.bst.LOGITS_PER_CHUNK", logits_per_chunk)
    torch.manual_seed(7)
    q, k, v = torch.randn(3, 2, 5, 4), torch.randn(3, 2, 5, 4), torch.randn(3, 2, 5, 4)
    mask = torch.arange(5)[None, :] < torch.tensor([5, 2, 0])[:, None]  # the last history is empty
    logits = (q @ k.transpose(-1, -2) / 2).masked_fill(~mask[:, None, None, :], float("-inf"))
    with torch.no_grad():
        context, lse = attention_with_log_normalizer(q, k, v, mask, torch.nn.Dropout(0.0).eval())
    torch.testing.assert_close(context[:2], (torch.softmax(logits, dim=-1) @ v)[:2])
    torch.testing.assert_close(lse[:2], torch.logsumexp(logits, dim=-1)[:2])
    assert torch.isfinite(context).all() and torch.isfinite(lse).all()  # never read for an empty history
    at_once, lse_at_once = attention_with_log_normalizer(q, k, v, mask, torch.nn.Dropout(0.0))  # with gradients
    torch.testing.assert_close(at_once, context)
    torch.testing.assert_close(lse_at_once, lse)


def test_the_behaviors_half_of_the_first_layer_is_computed_once_per_state():
    model = bst()
    batch = random_batch(seed=47)
    state = model.encode_user(batch)
    model.score(state, Candidates.from_targets(batch))  # one candidate: the plain encoder
    assert state.log_normalizer is None
    first = model.score(state, random_candidates(batch, k=3))
    kept = state.context
    assert kept is not None
    torch.testing.assert_close(model.score(state, random_candidates(batch, k=3)), first)
    assert state.context is kept
