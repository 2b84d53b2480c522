"""The shared blocks of lifelong.nn beyond what the models' own tests cover: the Transformer encoder layer's
options, k-means, the item-embedding initialisation and capsule routing."""

from __future__ import annotations

import pytest
import torch

from lifelong.models import build_model
from lifelong.nn.capsule import dynamic_routing
from lifelong.nn.cluster import kmeans
from lifelong.nn.embedding import init_item_embedding
from lifelong.nn.transformer import EncoderLayer, EncoderSpec

from model_configs import TINY_CONFIGS, TINY_VOCAB

SPECS = {
    "post": EncoderSpec(heads=2, ffn_dim=16),
    "post_causal": EncoderSpec(heads=2, ffn_dim=16, activation="gelu", eps=1e-12, causal=True),
    "sasrec": EncoderSpec(heads=2, ffn_dim=8, norm="sasrec", eps=1e-8, causal=True),
}


def layer(spec: EncoderSpec, **changes) -> EncoderLayer:
    torch.manual_seed(0)
    return EncoderLayer(8, EncoderSpec(**{**vars(spec), **changes})).eval()


def left_aligned(lengths: list[int], width: int) -> torch.Tensor:
    return torch.arange(width)[None, :] < torch.tensor(lengths)[:, None]


@pytest.mark.parametrize("name", sorted(SPECS))
def test_fused_and_reference_attention_agree(name):
    mask = left_aligned([5, 3, 1], 5)
    x = torch.randn(3, 5, 8, generator=torch.Generator().manual_seed(1)) * mask.unsqueeze(-1)
    fused, reference = layer(SPECS[name]), layer(SPECS[name], impl="reference")
    torch.testing.assert_close(fused(x, mask), reference(x, mask))


@pytest.mark.parametrize("name", ["post_causal", "sasrec"])
def test_a_causal_layer_never_looks_ahead_and_zeroes_padding(name):
    block = layer(SPECS[name])
    mask = left_aligned([6, 4], 6)
    g = torch.Generator().manual_seed(2)
    x = torch.randn(2, 6, 8, generator=g) * mask.unsqueeze(-1)
    changed = x.clone()
    changed[:, 3:] = torch.randn(2, 3, 8, generator=g) * mask[:, 3:].unsqueeze(-1)  # later positions only
    out, out_changed = block(x, mask), block(changed, mask)
    torch.testing.assert_close(out[:, :3], out_changed[:, :3])  # position t sees <= t
    assert not torch.allclose(out[0, 3:], out_changed[0, 3:])
    assert out[1, 4:].eq(0).all()


def test_a_padding_mask_keeps_padding_out_of_the_real_tokens():
    """Padded tokens are never keys: their content and the batch's width change no real token's output."""
    block = layer(SPECS["post"])
    mask = left_aligned([4, 2], 4)
    g = torch.Generator().manual_seed(3)
    x = torch.randn(2, 4, 8, generator=g)
    out = block(x, mask)
    garbage = torch.where(mask.unsqueeze(-1), x, torch.randn(2, 4, 8, generator=g))
    torch.testing.assert_close(block(garbage, mask), out)
    wider = torch.cat([x, torch.randn(2, 3, 8, generator=g)], dim=1)
    torch.testing.assert_close(block(wider, torch.cat([mask, mask.new_zeros(2, 3)], dim=1))[:, :4], out)
    assert out[1, 2:].eq(0).all()
    torch.testing.assert_close(block(x[:1]), out[:1])  # no mask: every token real


def test_the_sasrec_arrangement_normalises_the_query_only():
    """norm="sasrec": y = LN(x) + W_o Attn(q = LN(x), kv = x); out = z + FFN(z) with z = LN(y)."""
    block = layer(SPECS["sasrec"])
    mask = left_aligned([3], 3)
    x = torch.randn(1, 3, 8, generator=torch.Generator().manual_seed(4))
    query = block.attention_norm(x)
    q = block.q(query).view(1, 3, 2, 4).transpose(1, 2)
    k, v = block.kv(x).view(1, 3, 2, 2, 4).permute(2, 0, 3, 1, 4)
    scores = (q @ k.transpose(-1, -2) / 2).masked_fill(~torch.ones(3, 3, dtype=torch.bool).tril(), float("-inf"))
    y = query + block.out((scores.softmax(-1) @ v).transpose(1, 2).reshape(1, 3, 8))
    z = block.ffn_norm(y)
    torch.testing.assert_close(block(x, mask), z + block.ffn(z))


def test_spec_rejects_unknown_options_and_a_non_causal_sasrec_block():
    for changes in ({"norm": "pre"}, {"activation": "tanh"}, {"impl": "flash"}, {"norm": "sasrec"}):
        with pytest.raises(ValueError, match="EncoderSpec"):
            EncoderSpec(heads=2, ffn_dim=8, **changes)
    with pytest.raises(ValueError, match="heads"):
        EncoderLayer(6, EncoderSpec(heads=4, ffn_dim=8))


@pytest.mark.parametrize("name, overrides, renames", [
    ("bst", {}, {"attention_norm.": "norm1.", "ffn_norm.": "norm2."}),
    ("diffumin", {}, {"attention_norm.": "norm1.", "ffn_norm.": "norm2."}),
    ("sasrec", {"encoder": "bert"}, {"out.": "out.0."}),
])
def test_checkpoints_of_the_per_model_layers_still_load(name, overrides, renames):
    """The layers this one replaced named their norms norm1 / norm2 (BST, DiffuMIN) and the bert block's
    output projection out.0: such state dicts load, strictly, into the same weights."""
    def build(seed):
        torch.manual_seed(seed)
        return build_model({"model_type": name, **TINY_VOCAB, **TINY_CONFIGS[name], **overrides})

    source, target = build(0), build(1)
    old = {}
    for key, value in source.state_dict().items():
        for new, legacy in renames.items():
            key = key.replace("." + new, "." + legacy)
        old[key] = value
    assert set(old) != set(source.state_dict())  # the renames apply
    target.load_state_dict(old)  # strict
    for (key, value), (_, expected) in zip(target.state_dict().items(), source.state_dict().items()):
        assert torch.equal(value, expected), key


def test_kmeans_initialisations_are_seeded_and_validated():
    points = torch.cat([torch.randn(10, 2, generator=torch.Generator().manual_seed(5)) + shift
                        for shift in (torch.tensor([0.0, 0.0]), torch.tensor([20.0, 0.0]), torch.tensor([0.0, 20.0]))])
    for init in ("random", "kmeans++"):
        first = kmeans(points, 3, 5, torch.Generator().manual_seed(0), init=init)
        torch.manual_seed(123)  # the global generator plays no part
        again = kmeans(points, 3, 5, torch.Generator().manual_seed(0), init=init)
        assert torch.equal(first[0], again[0]) and torch.equal(first[1], again[1])
        groups = first[1].view(3, 10)
        assert (groups == groups[:, :1]).all() and groups[:, 0].unique().numel() == 3
    with pytest.raises(ValueError, match="init"):
        kmeans(points, 3, 5, torch.Generator(), init="forgy")
    with pytest.raises(ValueError, match="k=40"):
        kmeans(points, 40, 5, torch.Generator())


def test_item_embedding_initialisation_draws_the_given_std_and_zeroes_padding():
    torch.manual_seed(0)
    table = init_item_embedding(torch.nn.Embedding(4000, 16, padding_idx=0), std=0.25)
    assert table.weight[0].eq(0).all()
    assert abs(table.weight[1:].std().item() - 0.25) < 0.01


def test_routing_with_a_shared_prediction_equals_routing_with_it_copied_to_every_interest():
    """MIND's variant (one prediction per behavior, random initial logits, switched-off interests) is the
    general routing with that prediction repeated for every interest."""
    g = torch.Generator().manual_seed(6)
    shared = torch.randn(3, 5, 8, generator=g)
    logits = torch.randn(3, 5, 4, generator=g)
    mask = left_aligned([5, 3, 1], 5)
    valid = torch.tensor([[True] * 4, [True, True, False, False], [True, False, False, False]])
    capsules, couplings = dynamic_routing(shared, mask, 3, logits, valid)
    copied, copied_couplings = dynamic_routing(shared.unsqueeze(2).expand(-1, -1, 4, -1), mask, 3, logits, valid)
    torch.testing.assert_close(capsules, copied)
    torch.testing.assert_close(couplings, copied_couplings)
    assert capsules[~valid].eq(0).all() and couplings[:, ~mask].eq(0).all()
    torch.testing.assert_close(couplings[:, mask].sum(-1), torch.ones(3, int(mask.sum())))
