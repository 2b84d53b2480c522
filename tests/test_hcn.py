"""HCN's mechanism beyond the common retrieval contract: the hierarchical extraction (assignments,
weighted-mean residual updates), the separation term that keeps interests apart, and the co-interest
network's long-term and short-term extractors."""

from __future__ import annotations

import pytest
import torch

from lifelong.models import build_model
from lifelong.models.hcn import InterestExtractor, recent_mask
from lifelong.models.multi_interest import interest_redundancy

from helpers import overfit_losses, random_batch, select

N_ITEMS = 30


def tiny(**overrides):
    torch.manual_seed(0)
    values = {"model_type": "hcn", "n_items": N_ITEMS, "n_cates": 8, "embedding_dim": 8, "interests": 4,
              "short_interests": 2, "short_window": 3, "levels": 2, "negatives": 8, **overrides}
    return build_model(values).eval()


def test_assignments_are_a_distribution_per_seen_behavior_and_zero_elsewhere():
    model = tiny()
    batch = random_batch(batch_size=8, width=7, seed=1)
    parts = model.co_interests(batch)
    mask, recent = batch.history_mask, recent_mask(batch.history_mask, 3)
    long_sums, short_sums = parts["long_assignment"].sum(-1), parts["short_assignment"].sum(-1)  # (B, T)
    torch.testing.assert_close(long_sums, mask.float())
    torch.testing.assert_close(short_sums, recent.float())
    # exactly 0 at the behaviors an extractor does not see, and there the softmax over the centres of
    # <c_j, W_k h_i> / sqrt(D), the centres those of the previous level (hand-computed level by level)
    for extractor, seen, name in ((model.long_term, mask, "long_assignment"),
                                  (model.short_term, recent, "short_assignment")):
        assignment = parts[name]
        assert torch.equal(assignment[~seen], torch.zeros_like(assignment[~seen]))
        torch.testing.assert_close(assignment[seen], hand_assignment(extractor, model.item(batch.history_items),
                                                                     seen)[seen])
    # a real choice between centres, not a uniform split
    assert (parts["long_assignment"][mask].amax(-1) > 0.5 + 1e-3).any()


def hand_assignment(extractor: InterestExtractor, behaviors: torch.Tensor, seen: torch.Tensor) -> torch.Tensor:
    """The last level's assignment (B, T, K) written out with loops over rows, levels and behaviors."""
    b, t, d = behaviors.shape
    out = torch.zeros(b, t, extractor.queries.shape[0])
    for row in range(b):
        centres = extractor.queries.detach()  # (K, D)
        for level in range(len(extractor.values)):
            keys = extractor.keys[level](behaviors[row])  # (T, D)
            a = torch.zeros(t, centres.shape[0])
            for i in range(t):
                if seen[row, i]:
                    a[i] = torch.softmax(centres @ keys[i] / d ** 0.5, dim=0)
            means = a.T @ behaviors[row] / (a.sum(0).unsqueeze(-1) + 1e-6)  # (K, D)
            centres = centres + extractor.values[level](means)
        out[row] = a
    return out


def test_recent_window_counts_real_behaviors_from_the_most_recent():
    mask = torch.arange(6)[None, :] < torch.tensor([[6], [4], [2], [0]])
    got = recent_mask(mask, 3)
    assert got.tolist() == [[False, False, False, True, True, True], [False, True, True, True, False, False],
                            [True, True, False, False, False, False], [False] * 6]


def test_an_empty_history_leaves_the_learned_centre_queries_and_padding_adds_nothing():
    extractor = InterestExtractor(dim=4, centres=3, levels=2)
    behaviors = torch.randn(2, 5, 4)
    mask = torch.tensor([[False] * 5, [True, True, False, False, False]])
    centres, assignment = extractor(behaviors, mask)
    torch.testing.assert_close(centres[0], extractor.queries.detach())
    assert (assignment[0] == 0).all()
    # garbage at padded positions changes nothing
    noisy = behaviors.clone()
    noisy[~mask] = torch.randn(int((~mask).sum()), 4) * 100
    torch.testing.assert_close(extractor(noisy, mask)[0], centres)


def test_an_update_adds_the_weighted_mean_of_the_assigned_behaviors_to_each_centre():
    extractor = InterestExtractor(dim=3, centres=2, levels=1)
    with torch.no_grad():
        extractor.values[0].weight.copy_(torch.eye(3))
        extractor.keys[0].weight.copy_(torch.eye(3))
    h = torch.tensor([[[1.0, 2.0, 3.0], [1.0, 2.0, 3.0], [0.0, 0.0, 0.0]]])  # two equal real behaviors
    mask = torch.tensor([[True, True, False]])
    centres, assignment = extractor(h, mask)
    # the mean of two copies of h is h: a weighted mean, not a weighted sum
    torch.testing.assert_close(centres[0], extractor.queries.detach() + h[0, 0], rtol=1e-4, atol=1e-4)
    logits = extractor.queries.detach() @ h[0, 0] * 3 ** -0.5
    torch.testing.assert_close(assignment[0, 0], torch.softmax(logits, 0))


def test_each_level_refines_the_previous_levels_centres():
    extractor = InterestExtractor(dim=4, centres=2, levels=2)
    behaviors, mask = torch.randn(1, 4, 4), torch.ones(1, 4, dtype=torch.bool)
    one_level = InterestExtractor(dim=4, centres=2, levels=1)
    one_level.load_state_dict({"queries": extractor.queries, "keys.0.weight": extractor.keys[0].weight,
                               "values.0.weight": extractor.values[0].weight})
    first, _ = one_level(behaviors, mask)
    second, _ = extractor(behaviors, mask)
    # the second level starts from the first level's centres, assigns again with its own key map
    keys = extractor.keys[1](behaviors)
    assignment = torch.softmax(torch.einsum("bkd,btd->btk", first, keys) * 0.5, dim=2)
    means = torch.einsum("btk,btd->bkd", assignment, behaviors) / assignment.sum(1).unsqueeze(-1)
    torch.testing.assert_close(second, first + extractor.values[1](means), rtol=1e-4, atol=1e-5)
    assert not torch.allclose(second, first)


def test_short_term_interests_see_only_the_recent_window_and_long_term_ones_the_whole_history():
    model = tiny(short_window=3)
    batch = random_batch(batch_size=8, width=7, seed=2)
    before = model.co_interests(batch)
    older = batch.history_mask & ~recent_mask(batch.history_mask, 3)
    assert older.any()
    changed = batch.history_items.clone()
    changed[older] = (changed[older] - 2 + 1) % (N_ITEMS - 2) + 2  # every older behavior becomes another item
    batch.history_items = changed
    after = model.co_interests(batch)
    torch.testing.assert_close(after["short"], before["short"])
    rows = older.any(dim=1)
    assert not torch.allclose(after["long"][rows], before["long"][rows])
    torch.testing.assert_close(after["long"][~rows], before["long"][~rows])
    # the short-term interests equal those of the recent window alone
    i = int(torch.nonzero(rows)[0])
    length = int(batch.history_mask[i].sum())
    alone = select(batch, torch.tensor([i]))
    alone.history_items = batch.history_items[i : i + 1, length - 3 : length]
    alone.history_cates = batch.history_cates[i : i + 1, length - 3 : length]
    alone.history_mask = torch.ones(1, 3, dtype=torch.bool)
    for name in ("history_behaviors", "history_timestamps", "history_negative_items", "history_negative_cates"):
        setattr(alone, name, None)
    torch.testing.assert_close(model.co_interests(alone)["short"], after["short"][i : i + 1])


def test_interests_are_long_term_then_short_term_and_all_valid():
    model = tiny(interests=5, short_interests=2)
    batch = random_batch(seed=3)
    vectors, valid = model.interests(batch)
    parts = model.co_interests(batch)
    assert vectors.shape == (len(batch), 5, 8) and valid.all()
    torch.testing.assert_close(vectors, torch.cat([parts["long"], parts["short"]], dim=1))


def test_separation_term_is_the_weighted_mean_redundancy_and_has_gradient():
    model = tiny(separation_weight=0.5).train()
    batch = random_batch(batch_size=8, seed=4)
    vectors, valid = model.interests(batch)
    extra = model.extra_losses(batch, vectors, valid)
    assert set(extra) == {"separation"}
    torch.testing.assert_close(extra["separation"], 0.5 * interest_redundancy(vectors, valid).mean())
    extra["separation"].backward()
    assert model.long_term.queries.grad.abs().sum() > 0 and model.short_term.queries.grad.abs().sum() > 0
    output = model(batch)
    assert "separation" in output.aux_losses
    assert tiny(separation_weight=0.0).extra_losses(batch, vectors, valid) == {}


def test_the_separation_term_makes_trained_interests_less_similar():
    batch = random_batch(batch_size=16, width=7, seed=13)

    def redundancy_after_training(weight: float) -> float:
        model = tiny(separation_weight=weight, loss="full").train()
        overfit_losses(model, batch, steps=40)
        model.eval()
        with torch.no_grad():
            return float(interest_redundancy(*model.interests(batch)).mean())

    with_term, without = redundancy_after_training(1.0), redundancy_after_training(0.0)
    assert with_term < without - 0.1 and with_term < -0.2, (with_term, without)  # the bound is -1/3 for K = 4


def test_config_validation_names_the_field():
    with pytest.raises(ValueError, match="short_interests"):
        tiny(interests=2, short_interests=2)
    with pytest.raises(ValueError, match="short_window"):
        tiny(short_window=0)
    with pytest.raises(ValueError, match="levels"):
        tiny(levels=0)
    with pytest.raises(ValueError, match="separation_weight"):
        tiny(separation_weight=-1.0)
