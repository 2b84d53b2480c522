"""SASRec's mechanism beyond the common retrieval contract."""

from __future__ import annotations

import pytest
import torch

from lifelong.models import build_model

from helpers import assert_later_items_do_not_change_earlier_outputs, random_batch


def tiny(**overrides):
    torch.manual_seed(0)
    values = {"model_type": "sasrec", "n_items": 30, "n_cates": 8, "embedding_dim": 8, "heads": 2,
              "max_positions": 12, "layers": 2, **overrides}
    return build_model(values).eval()


@pytest.mark.parametrize("positions", ["start", "end"])
def test_output_at_position_t_does_not_change_when_later_items_change(positions):
    model = tiny(positions=positions)
    batch = random_batch(batch_size=4, width=7, seed=2)
    batch.history_mask[:] = True  # full rows
    batch.history_items = torch.randint(2, 30, batch.history_items.shape, generator=torch.Generator().manual_seed(3))
    assert_later_items_do_not_change_earlier_outputs(model.sequence, batch)


def test_prefix_alone_gives_the_same_outputs_as_inside_the_longer_sequence():
    model = tiny()
    batch = random_batch(batch_size=3, width=7, seed=5)
    batch.history_mask[:] = True
    batch.history_items = torch.randint(2, 30, (3, 7), generator=torch.Generator().manual_seed(6))
    full = model.sequence(batch)
    batch.history_mask[:, 5:] = False
    batch.history_items = batch.history_items * batch.history_mask
    prefix = model.sequence(batch)
    torch.testing.assert_close(prefix[:, :5], full[:, :5])
    assert (prefix[:, 5:] == 0).all()


@pytest.mark.parametrize("positions", ["start", "end"])
def test_position_table_rows_used_are_counted_from_the_oldest_or_the_newest_item(positions):
    """start: a history of n items uses position rows 0..n-1; end (the paper's left padding): rows
    P-n..P-1, so the newest item always gets row P-1. Rewriting the unused rows changes nothing."""
    model = tiny(positions=positions, max_positions=12)
    batch = random_batch(batch_size=6, width=7, seed=11)
    users = model.user_vectors(batch)
    for row, n in enumerate(batch.lengths.tolist()):
        used = range(n) if positions == "start" else range(12 - n, 12)
        with torch.no_grad():
            saved = model.position.weight.clone()
            unused = [p for p in range(12) if p not in used]
            model.position.weight[unused] = torch.randn(len(unused), 8)
            torch.testing.assert_close(model.user_vectors(batch)[row], users[row])
            model.position.weight[used[-1]] += 1.0  # the newest item's row
            assert not torch.allclose(model.user_vectors(batch)[row], users[row])
            model.position.weight.copy_(saved)


def test_user_vector_is_the_output_at_the_last_real_position_and_scores_use_the_item_table():
    model = tiny()
    batch = random_batch(batch_size=5, width=6, seed=7)
    hidden = model.sequence(batch)
    users = model.user_vectors(batch)
    for row, length in enumerate(batch.lengths.tolist()):
        torch.testing.assert_close(users[row], hidden[row, length - 1])
    torch.testing.assert_close(model.score(users, model.item_vectors()), users @ model.item.weight.T)


def test_training_predicts_the_next_item_at_every_position():
    model = tiny(loss="full", dropout=0.0)
    model.train()
    batch = random_batch(batch_size=4, width=5, seed=8)
    loss = model(batch).loss
    hidden = model.sequence(batch)
    logits = hidden @ model.item.weight.T
    logits[..., :2] = float("-inf")
    terms = []
    for row, length in enumerate(batch.lengths.tolist()):
        sequence = batch.history_items[row, :length].tolist() + [int(batch.target_items[row])]
        for t in range(length):
            terms.append(-logits[row, t].log_softmax(-1)[sequence[t + 1]])
    torch.testing.assert_close(loss, torch.stack(terms).mean())


def test_too_long_history_is_refused():
    model = tiny(max_positions=4)
    with pytest.raises(ValueError, match="max_positions"):
        model.user_vectors(random_batch(width=6))


@pytest.mark.parametrize("field, value", [("loss", "hinge"), ("heads", 3), ("dropout", 1.0), ("negatives", 0),
                                          ("positions", "middle")])
def test_invalid_config_is_rejected(field, value):
    with pytest.raises(ValueError, match=field):
        tiny(**{field: value})


def test_end_positions_do_not_depend_on_the_padding_width():
    model = tiny(positions="end")
    batch = random_batch(batch_size=4, width=6, seed=12)
    users = model.user_vectors(batch)
    batch.history_items = torch.cat([batch.history_items, torch.zeros(4, 3, dtype=torch.long)], dim=1)
    batch.history_mask = torch.cat([batch.history_mask, torch.zeros(4, 3, dtype=torch.bool)], dim=1)
    torch.testing.assert_close(model.user_vectors(batch), users)
