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


# --- encoder = "bsarec": BSARec's frequency filter beside the attention ------------------------------------


def test_bsarec_filter_keeps_the_low_frequencies_and_rescales_the_rest_by_beta_squared():
    """The low-pass over max_positions keeps frequencies 0 .. c//2 and removes the others; the filter's
    output is LN(x + LFC + beta**2 * HFC)."""
    model = tiny(encoder="bsarec", embedding_dim=8, dropout=0.0, max_positions=12, bsarec_cutoff=5)
    block = model.blocks[0].filter
    assert block.keep == 3
    t = torch.arange(12, dtype=torch.float32)
    slow = torch.cos(2 * torch.pi * 2 * t / 12)  # frequency 2: kept
    fast = torch.cos(2 * torch.pi * 4 * t / 12)  # frequency 4: removed
    x = (slow[None, :, None] * torch.ones(1, 1, 8)) + (fast[None, :, None] * torch.linspace(-1, 1, 8))
    low = block.low_pass(x)
    torch.testing.assert_close(low, slow[None, :, None].expand(1, 12, 8), atol=1e-5, rtol=0)
    with torch.no_grad():
        block.sqrt_beta.copy_(torch.linspace(0.5, 2.0, 8))
    expected = F.layer_norm(x + low + block.sqrt_beta.square() * (x - low), (8,), block.norm.weight,
                            block.norm.bias, eps=1e-12)
    torch.testing.assert_close(block(x), expected)
    with torch.no_grad():  # beta = 1: the filter passes x unchanged, LN(x + x)
        block.sqrt_beta.fill_(1.0)
    torch.testing.assert_close(block(x), F.layer_norm(2 * x, (8,), block.norm.weight, block.norm.bias, eps=1e-12))


def test_bsarec_mixes_the_filter_and_attention_by_alpha_and_alpha_zero_is_the_bert_encoder():
    """alpha = 0 leaves only the attention path: the same weights give the bert encoder's outputs."""
    bsarec = tiny(encoder="bsarec", bsarec_alpha=0.0, dropout=0.0)
    bert = tiny(encoder="bert", dropout=0.0)
    missing = bert.load_state_dict(bsarec.state_dict(), strict=False)
    assert missing.missing_keys == [] and all(".filter." in key for key in missing.unexpected_keys)
    batch = random_batch(batch_size=5, width=7, seed=21)
    torch.testing.assert_close(bsarec.sequence(batch), bert.sequence(batch))
    # any other alpha mixes the two paths in that proportion before the feed-forward sublayer
    mixed = tiny(encoder="bsarec", bsarec_alpha=0.7, dropout=0.0)
    block = mixed.blocks[0]
    x = torch.randn(5, 7, 8, generator=torch.Generator().manual_seed(22)) * batch.history_mask.unsqueeze(-1)
    mix = 0.7 * block.filter(x) + 0.3 * block.attend(x)
    expected = block.ffn_norm(mix + block.ffn(mix)) * batch.history_mask.unsqueeze(-1)
    torch.testing.assert_close(block(x, batch.history_mask), expected)


def test_bsarec_user_vector_does_not_depend_on_the_batch_width_but_its_filter_sees_later_items():
    """The transform always runs over max_positions, so padding a batch wider changes no user vector;
    unlike the causal encoders, an earlier position's output moves when a later item changes (the reason
    bsarec trains on prefix samples only)."""
    model = tiny(encoder="bsarec", positions="end")
    batch = random_batch(batch_size=4, width=6, seed=22)
    users = model.user_vectors(batch)
    wide = random_batch(batch_size=4, width=6, seed=22)
    wide.history_items = torch.cat([wide.history_items, torch.zeros(4, 4, dtype=torch.long)], dim=1)
    wide.history_mask = torch.cat([wide.history_mask, torch.zeros(4, 4, dtype=torch.bool)], dim=1)
    torch.testing.assert_close(model.user_vectors(wide), users)
    before = model.sequence(batch)[0, 2]
    batch.history_items[0, 5] = 1 + batch.history_items[0, 5] % 29
    assert not torch.allclose(model.sequence(batch)[0, 2], before)


def test_bsarec_trains_on_prefix_samples_only():
    """Every-position training would show position t its own target through the filter: refused. With
    last_target_only the loss is the full softmax at each row's last position."""
    model = tiny(encoder="bsarec", loss="full", dropout=0.0)
    model.train()
    batch = random_batch(batch_size=4, width=5, seed=23)
    with pytest.raises(ValueError, match="prefix"):
        model(batch)
    batch.last_target_only = True
    loss = model(batch).loss
    logits = model.user_vectors(batch) @ model.item.weight.T
    logits[:, :2] = float("-inf")
    torch.testing.assert_close(loss, F.cross_entropy(logits, batch.target_items))
    loss.backward()
    assert model.blocks[0].filter.sqrt_beta.grad.abs().sum() > 0
