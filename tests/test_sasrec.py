"""SASRec's mechanism beyond the common retrieval contract."""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F

from lifelong.models import build_model

from helpers import assert_later_items_do_not_change_earlier_outputs, random_batch


def tiny(**overrides):
    torch.manual_seed(0)
    values = {"model_type": "sasrec", "n_items": 30, "n_cates": 8, "embedding_dim": 8, "heads": 2,
              "max_positions": 12, "layers": 2, **overrides}
    return build_model(values).eval()


@pytest.mark.parametrize("encoder", ["sasrec", "bert"])
@pytest.mark.parametrize("positions", ["start", "end"])
def test_output_at_position_t_does_not_change_when_later_items_change(positions, encoder):
    model = tiny(positions=positions, encoder=encoder)
    batch = random_batch(batch_size=4, width=7, seed=2)
    batch.history_mask[:] = True  # full rows
    batch.history_items = torch.randint(2, 30, batch.history_items.shape, generator=torch.Generator().manual_seed(3))
    assert_later_items_do_not_change_earlier_outputs(model.sequence, batch)


@pytest.mark.parametrize("encoder", ["sasrec", "bert"])
def test_prefix_alone_gives_the_same_outputs_as_inside_the_longer_sequence(encoder):
    model = tiny(encoder=encoder)
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


@pytest.mark.parametrize("encoder", ["sasrec", "bert"])
def test_training_predicts_the_next_item_at_every_position(encoder):
    model = tiny(loss="full", dropout=0.0, encoder=encoder)
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
                                          ("positions", "middle"), ("encoder", "gpt")])
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


def test_bert_encoder_is_post_ln_with_a_4d_gelu_feed_forward_and_unscaled_inputs():
    """encoder=bert (the S3-Rec / ICLRec / ICSRec Transformer): the embeddings are item + position with no
    sqrt(D) factor, layer-normalised; each block is x = LN(x + attention), then LN(x + FFN(x)) with the
    FFN D -> 4D -> D under GELU, and the last block's output is the model's (no final LayerNorm);
    Linear and Embedding weights start from N(0, 0.02), biases from 0."""
    model = tiny(encoder="bert", embedding_dim=16, dropout=0.0)
    batch = random_batch(batch_size=4, width=6, seed=13)
    inputs, outputs = {}, {}
    for i, block in enumerate(model.blocks):
        block.register_forward_pre_hook(lambda module, args, i=i: inputs.update({i: args[0]}))
        block.attention_norm.register_forward_hook(lambda module, args, out, i=i: outputs.update({i: out}))
    hidden = model.sequence(batch)
    mask = batch.history_mask.unsqueeze(-1)
    items, positions = batch.history_items, torch.arange(batch.history_items.shape[1])
    embedded = F.layer_norm(model.item(items) + model.position(positions), (16,), eps=1e-12)
    torch.testing.assert_close(inputs[0], embedded * mask)  # no sqrt(D) scaling
    for i, block in enumerate(model.blocks):  # post-LN: the block's output is LN(x + FFN(x)) of its mid-point
        after_attention = outputs[i]
        expected = F.layer_norm(after_attention + block.ffn(after_attention), (16,), eps=1e-12) * mask
        torch.testing.assert_close(inputs[i + 1] if i + 1 < len(model.blocks) else hidden, expected)
    first = model.blocks[0].ffn
    assert (first[0].in_features, first[0].out_features, first[2].out_features) == (16, 64, 16)
    assert isinstance(first[1], torch.nn.GELU)
    assert isinstance(model.final_norm, torch.nn.Identity)
    bert = tiny(encoder="bert", embedding_dim=64)
    linear = torch.cat([m.weight.flatten() for m in bert.modules() if isinstance(m, torch.nn.Linear)])
    assert abs(linear.std().item() - 0.02) < 0.002 and abs(bert.item.weight[1:].std().item() - 0.02) < 0.003
    assert all((m.bias == 0).all() for m in bert.modules() if isinstance(m, torch.nn.Linear))


def test_default_encoder_keeps_the_papers_blocks_parameters_and_scaled_inputs():
    model = tiny(embedding_dim=16)
    assert model.config.encoder == "sasrec"
    assert isinstance(model.final_norm, torch.nn.LayerNorm)
    assert model.blocks[0].ffn[0].out_features == 16 and isinstance(model.blocks[0].ffn[1], torch.nn.ReLU)
    # the parameter names of the paper's blocks, so checkpoints saved before the bert option load as before
    block = ["attention_norm.weight", "attention_norm.bias", "q.weight", "q.bias", "kv.weight", "kv.bias",
             "out.weight", "out.bias", "ffn_norm.weight", "ffn_norm.bias", "ffn.0.weight", "ffn.0.bias",
             "ffn.3.weight", "ffn.3.bias"]
    assert list(model.state_dict()) == ["item.weight", "position.weight",
                                        *[f"blocks.{i}.{name}" for i in range(2) for name in block],
                                        "final_norm.weight", "final_norm.bias"]
    batch = random_batch(batch_size=3, width=5, seed=14)
    captured = {}
    model.blocks[0].register_forward_pre_hook(lambda module, args: captured.update(x=args[0]))
    model.sequence(batch)
    expected = model.item(batch.history_items) * 4.0 + model.position(torch.arange(5))
    torch.testing.assert_close(captured["x"], expected * batch.history_mask.unsqueeze(-1))
