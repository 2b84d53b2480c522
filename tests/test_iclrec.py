"""ICLRec's mechanism beyond the common retrieval contract: k-means intents, augmentations, the instance
and intent contrastive losses, ICSRec's cross-subsequence positives, and the loop's epoch_start hook."""

from __future__ import annotations

import json

import pytest
import torch

import lifelong.models.iclrec  # noqa: F401  (registers "iclrec")
from lifelong.data.schema import EventLog
from lifelong.models import build_model
from lifelong.models.iclrec import augment, crop, mask_items, nt_xent, reorder, view_positives
from lifelong.nn.cluster import kmeans
from lifelong.dataset.store import load_dataset
from lifelong.models.retrieval import next_item_loss, next_items
from lifelong.pipeline import ProtocolOptions, prepare
from lifelong.streams import STREAMS
from lifelong.train import TrainConfig, train
from lifelong.train.checkpoint import load_weights, save_checkpoint

from helpers import interrupt_after_first_epoch, overfit_losses, random_batch, random_log

N_ITEMS = 30


def tiny(**overrides):
    torch.manual_seed(0)
    values = {"model_type": "iclrec", "n_items": N_ITEMS, "n_cates": 8, "embedding_dim": 8, "heads": 2,
              "max_positions": 16, "dropout": 0.1, "intents": 4, "kmeans_iterations": 5, **overrides}
    return build_model(values)


def windows(n: int = 4, seed: int = 20):
    return [random_batch(batch_size=8, width=6, seed=seed + i) for i in range(n)]


def long_rows(seed: int = 1, rows: int = 64, width: int = 12):
    """Rows with every length 1..width and distinct-ish items, padding after."""
    g = torch.Generator().manual_seed(seed)
    lengths = torch.arange(rows) % width + 1
    mask = torch.arange(width)[None, :] < lengths[:, None]
    items = torch.randint(2, N_ITEMS, (rows, width), generator=g) * mask
    return items, mask, lengths


# --- k-means ------------------------------------------------------------------------------------


def test_kmeans_finds_separated_clusters_and_reseeds_empty_ones():
    points = torch.tensor([[0.0, 0.0]] * 5 + [[10.0, 0.0]] * 5 + [[0.0, 20.0]] * 5)
    for seed in range(8):  # some seeds start two centroids on the same point: one cluster empties
        centroids, assignment = kmeans(points, 3, 4, torch.Generator().manual_seed(seed))
        assert sorted(map(tuple, centroids.tolist())) == [(0.0, 0.0), (0.0, 20.0), (10.0, 0.0)]
        groups = assignment.view(3, 5)
        assert (groups == groups[:, :1]).all() and groups[:, 0].unique().numel() == 3


def test_kmeans_needs_as_many_points_as_clusters():
    with pytest.raises(ValueError, match="k=4"):
        kmeans(torch.randn(3, 2), 4, 2, torch.Generator().manual_seed(0))
    model = tiny(intents=40)
    with pytest.raises(ValueError, match="intents"):  # the model names its own option
        model.cluster([random_batch(batch_size=3)])


def test_epoch_start_assigns_every_window_one_intent_deterministically_given_the_seed():
    model = tiny()
    STREAMS.reset(5)
    assignment = model.cluster(windows())
    centroids = model.centroids.clone()
    assert assignment.shape == (32,) and assignment.min() >= 0 and assignment.max() < 4
    assert bool(model.clustered) and model.training  # the mode is restored
    model.eval()
    users = torch.cat([model.user_vectors(batch) for batch in windows()])
    assert torch.equal(model.intents_of(users), assignment)  # the nearest centroid of each window
    STREAMS.reset(5)
    model.epoch_start(lambda: iter(windows()), epoch=1)
    assert torch.equal(model.centroids, centroids)
    STREAMS.reset(6)
    model.epoch_start(lambda: iter(windows()), epoch=1)
    assert not torch.equal(model.centroids, centroids)  # another seed (the kmeans stream), other initial centroids


def test_reclustering_after_training_moves_the_centroids():
    model = tiny()
    torch.manual_seed(1)
    model.epoch_start(lambda: iter(windows()), epoch=1)
    before = model.centroids.clone()
    optimizer = torch.optim.Adam(model.parameters(), lr=1e-2)
    model.train()
    for batch in windows():
        loss = model(batch).loss
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()
    torch.manual_seed(1)
    model.epoch_start(lambda: iter(windows()), epoch=2)
    assert not torch.allclose(model.centroids, before)


def test_intents_are_needed_before_they_are_queried():
    with pytest.raises(ValueError, match="epoch_start"):
        tiny().intents_of(torch.randn(2, 8))


# --- augmentations -------------------------------------------------------------------------------


def test_crop_keeps_a_contiguous_run_left_aligned():
    items, mask, lengths = long_rows()
    torch.manual_seed(0)
    out, out_mask = crop(items, mask, 0.5)
    keep = torch.clamp((lengths * 0.5).floor().long(), min=1)
    assert torch.equal(out_mask.sum(1), keep)
    assert (out[~out_mask] == 0).all() and (out[out_mask] >= 2).all()
    for row in range(items.shape[0]):
        original = items[row, : lengths[row]].tolist()
        run = out[row, : keep[row]].tolist()
        assert any(original[s : s + len(run)] == run for s in range(len(original) - len(run) + 1))


def test_mask_replaces_exactly_its_share_by_the_mask_token_and_keeps_the_rest():
    items, mask, lengths = long_rows(seed=2)
    torch.manual_seed(0)
    out, out_mask = mask_items(items, mask, 0.7, N_ITEMS)
    assert torch.equal(out_mask, mask) and (out[~mask] == 0).all()
    masked = out == N_ITEMS
    assert torch.equal(masked.sum(1), (lengths * 0.7).floor().long())
    assert torch.equal(out[~masked], items[~masked])


def test_reorder_permutes_one_contiguous_run_and_keeps_everything_else():
    items = torch.arange(2, 14).repeat(40, 1)  # distinct items, so positions are traceable
    lengths = torch.arange(40) % 12 + 1
    mask = torch.arange(12)[None, :] < lengths[:, None]
    items = items * mask
    torch.manual_seed(0)
    out, out_mask = reorder(items, mask, 0.5)
    assert torch.equal(out_mask, mask) and (out[~mask] == 0).all()
    shuffled_any = False
    for row in range(40):
        n = int(lengths[row])
        moved = (out[row, :n] != items[row, :n]).nonzero().flatten()
        assert sorted(out[row, :n].tolist()) == items[row, :n].tolist()  # same items
        if moved.numel():
            shuffled_any = True
            span = int(moved.max() - moved.min() + 1)
            assert span <= int(n * 0.5)  # inside one run of floor(rate * n) positions
    assert shuffled_any


def test_augment_applies_one_operator_per_row_and_keeps_padding():
    items, mask, lengths = long_rows(seed=3)
    config = tiny().config
    torch.manual_seed(4)
    out, out_mask = augment(items, mask, config, N_ITEMS)
    assert (out[~out_mask] == 0).all()
    assert not (out_mask[:, 1:] & ~out_mask[:, :-1]).any()  # still left-aligned
    cropped = out_mask.sum(1) < lengths
    masked = (out == N_ITEMS).any(1)
    assert not (cropped & masked).any() and cropped.any() and masked.any()


# --- contrastive losses -------------------------------------------------------------------------


def test_instance_loss_is_lower_for_matching_views_than_for_shuffled_pairs():
    g = torch.Generator().manual_seed(0)
    first = torch.randn(16, 8, generator=g)
    second = first + 0.1 * torch.randn(16, 8, generator=g)
    shuffled = second[torch.randperm(16, generator=g)]
    assert nt_xent(first, second, 1.0) < nt_xent(first, shuffled, 1.0) - 1.0


def test_nt_xent_is_the_softmax_over_all_other_views():
    g = torch.Generator().manual_seed(1)
    first, second = torch.randn(3, 4, generator=g), torch.randn(3, 4, generator=g)
    z = torch.cat([first, second])
    terms = []
    for i in range(6):
        others = [j for j in range(6) if j != i]
        logits = torch.stack([z[i] @ z[j] / 0.5 for j in others])
        terms.append(-logits.log_softmax(0)[others.index((i + 3) % 6)])
    torch.testing.assert_close(nt_xent(first, second, 0.5), torch.stack(terms).mean())


def test_cross_subsequence_adds_positives_exactly_for_rows_sharing_the_target():
    targets = torch.tensor([5, 6, 5, 7])
    plain = view_positives(4)
    assert torch.equal(plain.nonzero(), torch.tensor([[i, (i + 4) % 8] for i in range(8)]))  # the other view only
    cross = view_positives(4, targets)
    expected = torch.zeros(8, 8, dtype=torch.bool)
    for i in range(8):
        for j in range(8):
            expected[i, j] = i != j and bool(targets[i % 4] == targets[j % 4])
    assert torch.equal(cross, expected)
    assert cross[0].nonzero().flatten().tolist() == [2, 4, 6]  # row 2's views and its own other view
    assert cross[1].nonzero().flatten().tolist() == [5]


def test_false_negatives_leave_the_softmax():
    g = torch.Generator().manual_seed(2)
    views, intents = torch.randn(4, 4, generator=g), torch.randn(4, 4, generator=g)
    intent_ids = torch.tensor([0, 0, 1, 2])
    same = intent_ids.unsqueeze(0) == intent_ids.unsqueeze(1)
    z = torch.cat([views, intents])
    terms = []
    for a in range(8):
        positive = (a + 4) % 8  # a view's own intent, an intent's own view
        keep = [j for j in range(8) if j != a and (j == positive or intent_ids[j % 4] != intent_ids[a % 4])]
        logits = torch.stack([z[a] @ z[j] for j in keep])
        terms.append(-logits.log_softmax(0)[keep.index(positive)])
    loss = nt_xent(views, intents, 1.0, false_negatives=same)
    torch.testing.assert_close(loss, torch.stack(terms).mean())
    assert not torch.allclose(loss, nt_xent(views, intents, 1.0))


# --- the model ----------------------------------------------------------------------------------


def test_no_intent_loss_before_clustering_and_both_terms_after():
    model = tiny(loss="full")
    model.train()
    batch = random_batch(batch_size=8, seed=3)
    output = model(batch)
    assert set(output.aux_losses) == {"instance"}
    model.cluster(windows())
    seen, views, intents_of = {}, model._views, model.intents_of

    def spy_views(batch):
        seen["views"] = views(batch)
        return seen["views"]

    def spy_intents(users):
        seen["users"] = users
        return intents_of(users)

    model._views, model.intents_of = spy_views, spy_intents
    output = model(batch)
    assert set(output.aux_losses) == {"instance", "intent"}
    first, second = seen["views"]
    # the intent of each history: the centroid nearest its own (un-augmented) representation
    assert torch.equal(seen["users"], output.user_vectors.detach())
    intent = torch.cdist(seen["users"], model.centroids).argmin(dim=1)
    assert len(intent.unique()) > 1  # several intents in the batch: the false-negative mask has work to do
    prototypes = torch.nn.functional.normalize(model.centroids, dim=1)[intent]
    same = intent.unsqueeze(0) == intent.unsqueeze(1)
    # both terms, weight 0.1, temperature 1: NT-Xent of the two views, and each view against its intent
    torch.testing.assert_close(output.aux_losses["instance"], 0.1 * nt_xent(first, second, 1.0))
    expected = 0.1 * (nt_xent(first, prototypes, 1.0, false_negatives=same)
                      + nt_xent(second, prototypes, 1.0, false_negatives=same)) / 2
    torch.testing.assert_close(output.aux_losses["intent"], expected)


def test_total_loss_is_the_next_item_loss_plus_the_weighted_terms():
    model = tiny(loss="full", dropout=0.0, instance_weight=0.3, intent_weight=0.2)
    model.cluster(windows())
    model.train()
    batch = random_batch(batch_size=8, seed=4)
    output = model(batch)
    hidden = model.sequence(batch)
    positives, mask = next_items(batch)
    rec = next_item_loss(hidden[mask], positives[mask], model.item_vectors(), "full")
    torch.testing.assert_close(output.loss, rec + output.aux_losses["instance"] + output.aux_losses["intent"])
    off = tiny(loss="full", dropout=0.0, instance_weight=0.0, intent_weight=0.0)
    off.train()
    assert off(batch).aux_losses == {}


def test_mask_token_is_an_input_row_that_is_never_scored():
    model = tiny(mask_rate=1.0, crop_rate=1.0, reorder_rate=0.0)
    assert model.item_vectors().shape == (N_ITEMS, 8) and model.item.weight.shape[0] == N_ITEMS + 1
    model.train()
    torch.manual_seed(0)
    model(random_batch(batch_size=16, seed=5)).loss.backward()
    assert model.item.weight.grad[N_ITEMS].abs().sum() > 0  # the masked views train it


def test_evaluation_is_plain_sasrec_and_ignores_the_centroids():
    model = tiny()
    batch = random_batch(seed=6)
    model.eval()
    before = model(batch).user_vectors
    model.cluster(windows())
    after = model(batch)
    assert after.loss is None and torch.equal(after.user_vectors, before)
    torch.testing.assert_close(after.user_vectors, model._last(model.sequence(batch), batch))


def test_checkpoint_holds_the_centroids(tmp_path):
    model = tiny()
    model.cluster(windows())
    save_checkpoint(tmp_path / "ckpt", model, model.config.to_dict(), {"epoch": 1})
    restored = build_model(json.loads((tmp_path / "ckpt" / "config.json").read_text()))
    assert not bool(restored.clustered)
    load_weights(tmp_path / "ckpt", restored)
    assert bool(restored.clustered) and torch.equal(restored.centroids, model.centroids)


@pytest.mark.parametrize("loss", ["bce", "sampled", "full"])
def test_loss_falls_on_one_tiny_batch_with_intents_and_cross_subsequences(loss):
    model = tiny(loss=loss, dropout=0.0, cross_subsequence=True, negatives=8)
    model.cluster(windows())
    model.train()
    batch = random_batch(batch_size=16, seed=13)
    batch.target_items[8:] = batch.target_items[:8]  # shared targets: cross-subsequence positives exist
    losses = overfit_losses(model, batch, steps=90)  # every step draws new views and negatives: a noisy descent
    assert losses[-1] < 0.5 * losses[0], f"{loss}: {losses[0]:.3f} -> {losses[-1]:.3f}"


def with_partners(batch, partner_rows):
    """``batch`` with each row's partner history taken from row ``partner_rows[i]`` of the batch."""
    batch.partner_items, batch.partner_mask = batch.history_items[partner_rows], batch.history_mask[partner_rows]
    return batch


def test_subsequence_views_contrast_a_row_with_its_same_target_partner_and_drop_same_target_negatives():
    model = tiny(loss="full", dropout=0.0, subsequence_views=True, instance_weight=0.3, intent_weight=0.0)
    assert model.target_partners and not tiny().target_partners
    model.train()
    batch = random_batch(batch_size=8, seed=21)
    batch.target_items[4:] = batch.target_items[:4]  # rows i and i+4 share a target: partners of each other
    partner_rows = torch.tensor([4, 5, 6, 7, 0, 1, 2, 3])
    output = model(with_partners(batch, partner_rows))
    own = model._last(model.sequence(batch), batch)
    partner = own[partner_rows]  # the partner history is row partner_rows[i]'s own history
    same = batch.target_items.unsqueeze(0) == batch.target_items.unsqueeze(1)
    expected = 0.3 * nt_xent(own, partner, 1.0, false_negatives=same)
    torch.testing.assert_close(output.aux_losses["instance"], expected)
    assert not torch.allclose(expected, 0.3 * nt_xent(own, partner, 1.0))  # the same-target rows left the softmax
    # the next-item loss is the row's own (its partner has no separate term)
    positives, mask = next_items(batch)
    rec = next_item_loss(model.sequence(batch)[mask], positives[mask], model.item_vectors(), "full")
    torch.testing.assert_close(output.loss, rec + output.aux_losses["instance"])


def test_subsequence_views_need_the_partners_and_feed_the_intent_loss():
    model = tiny(loss="full", dropout=0.0, subsequence_views=True)
    model.train()
    batch = random_batch(batch_size=8, seed=22)
    with pytest.raises(ValueError, match="partner_items"):
        model(batch)
    model.cluster(windows())
    output = model(with_partners(batch, torch.arange(8)))
    assert set(output.aux_losses) == {"instance", "intent"}
    own = model._last(model.sequence(batch), batch)
    intent = model.intents_of(own)
    prototypes = torch.nn.functional.normalize(model.centroids, dim=1)[intent]
    same = intent.unsqueeze(0) == intent.unsqueeze(1)
    expected = 0.1 * nt_xent(own, prototypes, 1.0, false_negatives=same)  # both views are the row itself here
    torch.testing.assert_close(output.aux_losses["intent"], expected)


def test_the_loop_feeds_each_row_a_training_prefix_with_the_same_target(tmp_path, monkeypatch):
    events, items = random_log(n_users=30, n_items=12, max_events=12, seed=19)  # few items: shared targets
    data = prepare(EventLog(events=events, items=items, recipe="test"), tmp_path / "d", ProtocolOptions(name="seq-loo"))
    dataset = load_dataset(data)
    prefixes = {}  # training history (item indices) -> the next items that follow it
    train_rows = dataset.samples("train")
    for user in train_rows.user.tolist():
        sequence = dataset.item_idx[dataset.event_items[dataset.offsets[user]:dataset.offsets[user + 1]]][:-2]
        for end in range(1, len(sequence)):
            prefixes.setdefault(tuple(sequence[max(0, end - 8):end].tolist()), set()).add(int(sequence[end]))
    seen = []
    original = lifelong.models.iclrec.ICLRec.forward

    def recorded(self, batch):
        if self.training:
            seen.append(batch)
        return original(self, batch)

    monkeypatch.setattr(lifelong.models.iclrec.ICLRec, "forward", recorded)
    options = {"embedding_dim": 8, "max_positions": 8, "intents": 4, "kmeans_iterations": 3, "loss": "full",
               "subsequence_views": True}
    train(TrainConfig(data=str(data), model="iclrec", out=str(tmp_path / "run"), epochs=1, batch_size=16,
                      progress=False, max_length=8, samples="prefixes", model_options=options))
    rows = 0
    for batch in seen:
        for i in range(len(batch)):
            partner = tuple(batch.partner_items[i][batch.partner_mask[i]].tolist())
            assert int(batch.target_items[i]) in prefixes[partner]
            rows += 1
    assert rows == int(train_rows.end.sum())  # every training prefix once


@pytest.mark.parametrize("field, value", [("intents", 0), ("kmeans_iterations", 0), ("crop_rate", 1.5),
                                          ("mask_rate", -0.1), ("reorder_rate", 2.0), ("temperature", 0.0),
                                          ("instance_weight", -1.0), ("intent_weight", -0.5), ("loss", "hinge")])
def test_invalid_config_is_rejected(field, value):
    with pytest.raises(ValueError, match=field):
        tiny(**{field: value})


# --- the loop -----------------------------------------------------------------------------------


def test_the_loop_clusters_every_epoch_and_resumes_exactly(tmp_path, monkeypatch):
    events, items = random_log(n_users=30, n_items=40, max_events=12, seed=9)
    data = prepare(EventLog(events=events, items=items, recipe="test"), tmp_path / "d", ProtocolOptions(name="seq-loo"))
    options = {"embedding_dim": 8, "max_positions": 8, "dropout": 0.2, "intents": 4, "kmeans_iterations": 3,
               "loss": "full"}

    def config(out):
        return TrainConfig(data=str(data), model="iclrec", out=str(out), epochs=2, batch_size=32, patience=5,
                           progress=False, max_length=8, lr=5e-3, model_options=options)

    calls = []
    original = lifelong.models.iclrec.ICLRec.epoch_start

    def counted(self, batches, epoch):
        calls.append(epoch)
        original(self, batches, epoch)

    monkeypatch.setattr(lifelong.models.iclrec.ICLRec, "epoch_start", counted)
    straight = train(config(tmp_path / "straight"))
    monkeypatch.undo()
    assert calls == [1, 2]

    interrupt_after_first_epoch(config(tmp_path / "resumed"))
    resumed = train(config(tmp_path / "resumed"), resume=True)
    assert resumed["test"] == straight["test"]


def test_encoding_by_length_groups_equals_one_forward_of_the_whole_batch():
    model = tiny(dropout=0.0)
    model.eval()
    items, mask, _ = long_rows(seed=3, rows=40, width=12)
    batch = random_batch(batch_size=40, width=12, seed=3)
    batch.history_items, batch.history_mask = items, mask
    torch.testing.assert_close(model._encode_by_length(items, mask), model._last(model.sequence(batch), batch))
    model.train()
    model._encode_by_length(items, mask).sum().backward()  # gradients flow through the scattered groups
    assert model.item.weight.grad.abs().sum() > 0
