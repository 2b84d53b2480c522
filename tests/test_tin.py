"""TIN mechanism tests: target-aware temporal encoding, attention and representation."""

from __future__ import annotations

import dataclasses

import pytest
import torch

from lifelong.models import build_model
from lifelong.models.ranking import Candidates
from lifelong.models.tin import interval_buckets
from lifelong.nn import relative_positions

from helpers import assert_candidates_score_as_forward_passes, random_batch, select
from model_configs import TINY_VOCAB


def tin(encoding: str = "position", seed: int = 0):
    torch.manual_seed(seed)
    model = build_model({"model_type": "tin", **TINY_VOCAB, "embedding_dim": 4, "temporal_encoding": encoding,
                         "n_buckets": 12, "dnn_hidden": (16, 8)})
    with torch.no_grad():  # larger embeddings than the 1e-2 init, so that every effect is visible
        for name, param in model.named_parameters():
            if "embedding" in name or "position" in name or "interval" in name:
                param.normal_()
        for table in (model.embedding.item, model.embedding.cate):
            table.weight[0].zero_()
    return model.eval()


def test_relative_positions_are_length_minus_index():
    mask = torch.tensor([[True, True, True, False], [True, False, False, False], [False] * 4])
    expected = torch.tensor([[3, 2, 1, 0], [1, 0, 0, 0], [0, 0, 0, 0]])
    assert torch.equal(relative_positions(mask), expected)


def parts_of(model, batch):
    """The intermediate tensors of the batch's targets (K = 1), squeezed to (B, ...)."""
    parts = model.attend(model.encode_user(batch), Candidates.from_targets(batch))
    return {name: value if name == "history" else value.squeeze(1) for name, value in parts.items()}


def test_position_encoding_uses_rows_l_minus_t_and_row_0_for_the_target():
    model = tin("position")
    batch = random_batch(seed=1)
    history, target = model.position_embeddings(batch.history_mask), model.target_temporal()
    for i in range(len(batch)):
        length = int(batch.history_mask[i].sum())
        for t in range(length):
            torch.testing.assert_close(history[i, t], model.position.weight[length - t])
    torch.testing.assert_close(target, model.position.weight[0])


def test_interval_buckets_are_log2_minutes_and_clipped():
    history_ts = torch.tensor([[1000, 1000 - 60, 1000 - 180, -10**9, 0]])
    mask = torch.tensor([[True, True, True, True, False]])
    buckets = interval_buckets(torch.tensor([1000]), history_ts, mask, n_buckets=6)
    # gaps 0 s, 60 s, 180 s, huge, padding -> 1 + floor(log2(1 + gap / 60)) clipped to 5, padding 0
    assert buckets.tolist() == [[1, 2, 3, 5, 0]]


@pytest.mark.parametrize("encoding, changes",
                         [("interval", True), ("both", True), ("position", False), ("none", False)])
def test_score_depends_on_a_behavior_timestamp_only_in_interval_modes(encoding, changes):
    model = tin(encoding)
    batch = random_batch(seed=2)
    moved = select(batch, torch.arange(len(batch)))
    moved.history_timestamps = batch.history_timestamps.clone()
    moved.history_timestamps[0, 0] -= 10**7  # the oldest behavior of sample 0, many buckets earlier
    before, after = model(batch).logits, model(moved).logits
    torch.testing.assert_close(before[1:], after[1:])
    assert (not torch.allclose(before[0], after[0], atol=1e-6)) == changes


def test_attention_weights_sum_to_one_over_real_behaviors_and_are_zero_at_padding():
    model = tin("both")
    batch = random_batch(seed=3)
    weights = parts_of(model, batch)["weights"]
    assert torch.all(weights[~batch.history_mask] == 0)
    assert torch.all(weights[batch.history_mask] > 0)
    torch.testing.assert_close(weights.sum(dim=1), torch.ones(len(batch)))


def test_attention_is_a_scaled_dot_product_and_interest_is_the_four_way_interaction():
    model = tin("both")
    batch = random_batch(seed=4)
    parts = parts_of(model, batch)
    history, target, weights = parts["history"], parts["target"], parts["weights"]
    for i in range(len(batch)):
        length = int(batch.history_mask[i].sum())
        scores = history[i, :length] @ target[i] / history.shape[-1] ** 0.5
        torch.testing.assert_close(weights[i, :length], torch.softmax(scores, dim=0))
    pooled = (weights.unsqueeze(-1) * history).sum(dim=1) * target  # (sum_i alpha_i e~_i) * v~_t
    torch.testing.assert_close(parts["interest"], pooled)


@pytest.mark.parametrize("encoding", ["position", "both"])
def test_temporal_embedding_is_added_to_behaviors_and_target(encoding):
    model = tin(encoding)
    batch = random_batch(seed=5)
    parts = parts_of(model, batch)
    history_time, target_time = model.position_embeddings(batch.history_mask), model.target_temporal()
    if encoding == "both":
        history_time = history_time + model.interval_embeddings(batch.timestamps, batch.history_timestamps,
                                                                batch.history_mask)
        torch.testing.assert_close(target_time, model.position.weight[0] + model.interval.weight[0])
    plain_history = model.embedding(batch.history_items, batch.history_cates)
    torch.testing.assert_close(parts["history"], plain_history + history_time)
    torch.testing.assert_close(parts["target"], parts["plain_target"] + target_time)


def test_none_mode_equals_a_temporal_model_whose_table_is_zero():
    plain, timed = tin("none"), tin("position")
    assert not any("position" in n or "interval" in n for n, _ in plain.named_parameters())
    with torch.no_grad():
        timed.position.weight.zero_()
    missing = plain.load_state_dict({k: v for k, v in timed.state_dict().items() if "position" not in k})
    assert not missing.missing_keys and not missing.unexpected_keys
    batch = random_batch(seed=6)
    torch.testing.assert_close(plain(batch).logits, timed(batch).logits)


def test_interval_mode_asks_for_timestamps():
    assert tin("interval").config.batch_needs() == {"with_timestamps": True}
    assert tin("position").config.batch_needs() == {}
    batch = random_batch()
    batch.timestamps = None
    with pytest.raises(ValueError, match="with_timestamps"):
        tin("interval")(batch)


def test_config_rejects_an_unknown_temporal_encoding():
    with pytest.raises(ValueError, match="temporal_encoding"):
        build_model({"model_type": "tin", **TINY_VOCAB, "temporal_encoding": "clock"})


@pytest.mark.parametrize("encoding", ["position", "interval", "both", "none"])
def test_every_encoding_scores_several_candidates_as_forward_passes(encoding):
    assert_candidates_score_as_forward_passes(tin(encoding), random_batch(batch_size=6, seed=42), k=4)


def test_a_state_scores_at_any_time_as_forward_passes_at_that_time():
    """The state holds no scoring time (a cached state stays valid); the interval encoding is added per call."""
    model = tin("both")
    batch = random_batch(seed=43)
    state = model.encode_user(batch)
    later = dataclasses.replace(batch, timestamps=batch.timestamps + 10**6)
    now, then = (model.score(state, Candidates.from_targets(b))[:, 0] for b in (batch, later))
    torch.testing.assert_close(now, model(batch).logits)
    torch.testing.assert_close(then, model(later).logits)
    assert not torch.allclose(now, then, atol=1e-4)
