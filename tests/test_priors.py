"""Multi-head decoding with human priors (sasrec_priors) beyond the common retrieval contract, and the
beyond-accuracy metrics."""

from __future__ import annotations

import math

import pytest
import torch
import torch.nn.functional as F

import lifelong.models.priors  # noqa: F401  (registers sasrec_priors)
from lifelong.beyond import beyond_accuracy, catalogue_category_coverage, category_coverage, category_entropy, novelty
from lifelong.models import build_model
from lifelong.models.priors import balanced_groups
from lifelong.models.retrieval import next_items
from lifelong.models.sasrec import SASRec
from lifelong.train.checkpoint import load_weights, save_checkpoint

from helpers import overfit_losses, random_batch, select

N_ITEMS, N_CATES = 30, 8
TABLE = torch.tensor([0, 0] + [2 + (i * 5) % 6 for i in range(N_ITEMS - 2)])  # item -> category (2..7)


def tiny(seed: int = 0, table: bool = True, **overrides):
    torch.manual_seed(seed)
    values = {"model_type": "sasrec_priors", "n_items": N_ITEMS, "n_cates": N_CATES, "embedding_dim": 8, "heads": 2,
              "max_positions": 20, "dropout": 0.0, "loss": "full", "category_heads": 3, "short_window": 2,
              **overrides}
    model = build_model(values)
    if table:
        model.set_item_categories(TABLE.clone())
    return model


def batch_with_categories(batch_size: int = 8, seed: int = 0):
    """A random batch whose categories follow TABLE (as the data pipeline's do)."""
    batch = random_batch(batch_size=batch_size, seed=seed)
    batch.history_cates = TABLE[batch.history_items] * batch.history_mask
    batch.target_cates = TABLE[batch.target_items]
    return batch


def randomise_adapters(model, seed: int = 1):
    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for p in model.adapters.parameters():
            p.copy_(torch.randn(p.shape, generator=g) * 0.5)
    return model


def expected_heads(model, batch):
    """Brute force: (row, position) -> head, from the next item's category and the recent events."""
    positives, mask = next_items(batch)
    out = {}
    for row in range(len(batch)):
        length = int(batch.lengths[row])
        for t in range(length):
            cate = int(batch.history_cates[row, t + 1]) if t + 1 < length else int(batch.target_cates[row])
            recent = {int(c) for c in batch.history_cates[row, max(0, t - model.config.short_window + 1) : t + 1]}
            group = int(model.cate_group[cate])
            term = int(cate in recent and cate != 0)
            out[row, t] = {"category": group, "term": term, "category,term": 2 * group + term}[model.config.priors]
    return out


def compatible(model, head: int, recent: set[int], item: int) -> bool:
    cate = int(model.item_cate[item])
    priors = model.config.priors
    group = head // 2 if priors == "category,term" else head
    term = head % 2 if priors != "category" else None
    ok = True
    if "category" in priors:
        ok &= int(model.cate_group[cate]) == group
    if "term" in priors:
        ok &= (cate in recent and cate != 0) == (term == 1)
    return ok


# --- adapters ------------------------------------------------------------------------------------------


@pytest.mark.parametrize("priors", ["category", "term", "category,term"])
def test_adapter_heads_at_initialisation_leave_the_backbone_scores_unchanged(priors):
    model = tiny(priors=priors).eval()
    batch = batch_with_categories(seed=2)
    backbone = SASRec.user_vectors(model, batch)  # (B, D)
    heads = model.head_vectors(batch)  # (B, K, D)
    assert heads.shape == (len(batch), model.n_heads, 8)
    assert torch.equal(heads, backbone.unsqueeze(1).expand_as(heads))
    scores = model.score(model.user_vectors(batch), model.item_vectors())
    # score() multiplies each group's columns on their own: equal up to float rounding, the same ranking
    reference = backbone @ model.item.weight.T
    torch.testing.assert_close(scores, reference)
    assert torch.equal(torch.argsort(scores, dim=1, descending=True), torch.argsort(reference, dim=1, descending=True))


def test_the_composition_is_multiplicative_and_nested():
    model = randomise_adapters(tiny(priors="category,term", category_heads=3)).eval()
    assert model.n_heads == 3 * 2
    batch = batch_with_categories(seed=3)
    h = SASRec.user_vectors(model, batch)  # (B, D)
    heads = model.head_vectors(batch)
    (w1, w2), (b1, b2) = list(model.adapters.weights), list(model.adapters.biases)
    assert w1.shape == (1, 3, 8, 8) and w2.shape == (3, 2, 8, 8)
    for group in range(3):
        outer = h + F.silu(h @ w1[0, group].T + b1[0, group])  # the group adapter
        for term in range(2):
            inner = outer + F.silu(outer @ w2[group, term].T + b2[group, term])  # its term adapter
            torch.testing.assert_close(heads[:, 2 * group + term], inner)


# --- compatibility masking in training -----------------------------------------------------------------


@pytest.mark.parametrize("priors", ["category", "term", "category,term"])
def test_every_head_trains_on_exactly_the_compatible_positions(priors):
    model = tiny(priors=priors)
    batch = batch_with_categories(batch_size=12, seed=4)
    heads, mask = model.position_heads(batch)
    expected = expected_heads(model, batch)
    assert {(r, t): int(heads[r, t]) for r, t in mask.nonzero().tolist()} == expected
    if priors == "category,term":  # each (a, b) head sees the positions compatible with a and with b
        group_only = expected_heads(tiny(priors="category"), batch)
        term_only = expected_heads(tiny(priors="term"), batch)
        for key, head in expected.items():
            assert head == 2 * group_only[key] + term_only[key]
        assert len(set(expected.values())) == 6  # this batch reaches every (group, term) head


@pytest.mark.parametrize("priors", ["category", "term", "category,term"])
def test_head_loss_is_each_heads_in_group_softmax_over_its_own_positions(priors):
    model = randomise_adapters(tiny(priors=priors))
    model.train()
    batch = batch_with_categories(batch_size=10, seed=5)
    output = model(batch)
    hidden = model.sequence(batch)
    positives, mask = next_items(batch)
    heads = expected_heads(model, batch)
    total, count = 0.0, len(heads)
    for head in range(model.n_heads):
        positions = [key for key, value in heads.items() if value == head]
        for row, t in positions:  # head k's vector, scored against the items compatible with head k
            vector = model.adapters(hidden[row, t].unsqueeze(0))[0, head]
            recent = {int(c) for c in batch.history_cates[row, max(0, t - 1) : t + 1]}
            target = int(positives[row, t])
            kept = [i for i in range(2, N_ITEMS) if compatible(model, head, recent, i) or i == target]
            logits = model.item.weight[kept] @ vector
            total = total - torch.log_softmax(logits, 0)[kept.index(target)]
    torch.testing.assert_close(output.aux_losses["prior_heads"], total / count)


def test_a_head_without_compatible_positions_gets_no_gradient():
    model = randomise_adapters(tiny(priors="category", category_heads=3))
    model.train()
    batch = batch_with_categories(batch_size=10, seed=6)
    heads, mask = model.position_heads(batch)
    missing = 2
    keep = (heads != missing).all(dim=1) | ~mask.any(dim=1)
    batch = select(batch, keep.nonzero().squeeze(1))
    assert not (model.position_heads(batch)[0][batch.history_mask] == missing).any()
    model(batch).aux_losses["prior_heads"].backward()
    grad = model.adapters.weights[0].grad  # (1, 3, D, D)
    assert torch.all(grad[0, missing] == 0) and torch.any(grad[0, :missing] != 0)


@pytest.mark.parametrize("priors, loss", [("category", "full"), ("term", "full"), ("category,term", "bce"),
                                          ("category,term", "sampled"), ("category,term", "full")])
def test_loss_falls_on_one_tiny_batch(priors, loss):
    model = tiny(priors=priors, loss=loss)
    model.train()
    batch = batch_with_categories(batch_size=16, seed=7)
    losses = overfit_losses(model, batch)
    assert losses[-1] < 0.5 * losses[0], f"{priors}/{loss}: {losses[0]:.3f} -> {losses[-1]:.3f}"


# --- inference: merging the heads' lists ---------------------------------------------------------------


@pytest.mark.parametrize("priors", ["category", "term", "category,term"])
def test_ranking_by_score_equals_merging_the_heads_lists(priors):
    model = randomise_adapters(tiny(priors=priors)).eval()
    batch = batch_with_categories(batch_size=6, seed=8)
    heads = model.head_vectors(batch)  # (B, K, D)
    scores = model.score(model.user_vectors(batch), model.item_vectors())  # (B, n_items)
    for row in range(len(batch)):
        length = int(batch.lengths[row])
        recent = {int(c) for c in batch.history_cates[row, max(0, length - 2) : length]}
        merged = []
        for head in range(model.n_heads):  # each head's own list, best first
            own = [i for i in range(2, N_ITEMS) if compatible(model, head, recent, i)]
            head_scores = (model.item.weight[own] @ heads[row, head]).detach()
            merged += [(float(s), i) for s, i in zip(head_scores, own)]
        assert sorted(i for _, i in merged) == list(range(2, N_ITEMS))  # the heads' lists partition the items
        merged_order = [i for _, i in sorted(merged, key=lambda pair: -pair[0])]
        ranked = (torch.argsort(scores[row, 2:], descending=True, stable=True) + 2).tolist()
        assert ranked == merged_order


def test_scores_are_the_same_alone_in_any_order_and_with_more_padding():
    model = randomise_adapters(tiny()).eval()
    batch = batch_with_categories(batch_size=8, seed=9)
    items = model.item_vectors()
    full = model.score(model.user_vectors(batch), items)
    for i in range(len(batch)):
        alone = select(batch, torch.tensor([i]), width=int(batch.lengths[i]))
        torch.testing.assert_close(model.score(model.user_vectors(alone), items), full[i : i + 1])
    order = torch.randperm(len(batch), generator=torch.Generator().manual_seed(1))
    torch.testing.assert_close(model.score(model.user_vectors(select(batch, order)), items), full[order])
    wider = select(batch, torch.arange(len(batch)), width=batch.history_mask.shape[1] + 5)
    torch.testing.assert_close(model.score(model.user_vectors(wider), items), full)
    permutation = torch.randperm(N_ITEMS, generator=torch.Generator().manual_seed(2))  # candidates permuted
    torch.testing.assert_close(model.score(model.user_vectors(batch), items[permutation]), full[:, permutation])


def test_the_extra_channels_do_not_change_the_inner_product():
    model = randomise_adapters(tiny()).eval()
    batch = batch_with_categories(seed=10)
    users, items = model.user_vectors(batch), model.item_vectors()
    torch.testing.assert_close(torch.einsum("bkd,nd->bkn", users, items),
                               torch.einsum("bkd,nd->bkn", model.head_vectors(batch), model.item.weight))


# --- item categories and their grouping ----------------------------------------------------------------


def test_item_categories_and_grouping_survive_a_checkpoint_round_trip(tmp_path):
    model = randomise_adapters(tiny()).eval()
    assert torch.equal(model.item_cate, TABLE)
    save_checkpoint(tmp_path / "ckpt", model, model.config.to_dict(), {"epoch": 1})
    restored = tiny(seed=5, table=False).eval()
    assert not torch.equal(restored.item_cate, TABLE)
    load_weights(tmp_path / "ckpt", restored)
    assert torch.equal(restored.item_cate, TABLE) and torch.equal(restored.cate_group, model.cate_group)
    batch = batch_with_categories(seed=11)
    assert torch.equal(restored.score(restored.user_vectors(batch), restored.item_vectors()),
                       model.score(model.user_vectors(batch), model.item_vectors()))


def test_balanced_grouping_evens_the_items_per_group_and_modulo_is_the_default():
    # categories 2..5 hold 5, 3, 2, 2 items: 2 -> g0 (5), 3 -> g1 (3), 4 -> g1 (5), 5 -> g0 (7), then
    # the empty categories 0 and 1 -> g1 (the lighter group)
    cates = torch.tensor([2] * 5 + [3] * 3 + [4] * 2 + [5] * 2)
    assert balanced_groups(cates, 6, 2).tolist() == [1, 1, 0, 1, 1, 0]
    model = tiny(table=False, category_heads=3)
    assert model.cate_group.tolist() == [c % 3 for c in range(N_CATES)]
    model = tiny(category_heads=3, category_grouping="modulo")
    assert model.cate_group.tolist() == [c % 3 for c in range(N_CATES)]
    model = tiny(category_heads=3)
    per_group = torch.bincount(model.cate_group[TABLE[2:]], minlength=3)
    assert int(per_group.max() - per_group.min()) <= 5  # six categories of 4-5 items in three groups


def test_set_item_categories_rejects_a_wrong_table():
    model = tiny(table=False)
    with pytest.raises(ValueError, match=r"\(30,\)"):
        model.set_item_categories(torch.zeros(29, dtype=torch.long))
    with pytest.raises(ValueError, match="n_cates"):
        model.set_item_categories(torch.full((N_ITEMS,), N_CATES, dtype=torch.long))


@pytest.mark.parametrize("field, value", [("priors", "brand"), ("priors", "term,category"), ("category_heads", 0),
                                          ("category_heads", N_CATES + 1), ("category_grouping", "random"),
                                          ("short_window", 0), ("head_loss_weight", -1.0)])
def test_invalid_config_names_the_field(field, value):
    with pytest.raises(ValueError, match=field):
        tiny(table=False, **{field: value})


# --- beyond-accuracy metrics ---------------------------------------------------------------------------


def test_beyond_accuracy_metrics_on_hand_made_lists():
    item_cates = [0, 0, 2, 2, 3, 4, 5, 5]  # items 2..7; catalogue categories {2, 3, 4, 5}
    popularity = [0, 0, 8, 4, 2, 1, 1, 0]  # 16 interactions; item 7 never seen (counts as 1)
    top = [[2, 3, 4, 5],  # categories 2, 2, 3, 4
           [2, 2, 2, 2],  # 2, 2, 2, 2
           [6, 7, 4, 5]]  # 5, 5, 3, 4
    assert category_coverage(top, item_cates) == pytest.approx((3 + 1 + 3) / 3)
    assert catalogue_category_coverage(top, item_cates) == pytest.approx(4 / 4)
    assert catalogue_category_coverage([[2, 3]], item_cates) == pytest.approx(1 / 4)
    mixed = -(0.5 * math.log2(0.5) + 2 * 0.25 * math.log2(0.25))  # 1.5 bits
    assert category_entropy(top, item_cates) == pytest.approx((mixed + 0.0 + mixed) / 3)
    info = {2: -math.log2(8 / 16), 3: -math.log2(4 / 16), 4: -math.log2(2 / 16), 5: -math.log2(1 / 16),
            6: -math.log2(1 / 16), 7: -math.log2(1 / 16)}
    assert novelty(top, popularity) == pytest.approx(sum(info[i] for row in top for i in row) / 12)
    everything = beyond_accuracy(top, torch.tensor(item_cates), torch.tensor(popularity))
    assert everything["novelty"] == pytest.approx(novelty(top, popularity))
    with pytest.raises(ValueError, match="top_items"):
        category_coverage([[2, 99]], item_cates)
