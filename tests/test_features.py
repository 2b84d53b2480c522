"""Features beyond ids: declared in the manifest, gathered per batch from per-user and per-item tables
(never per sample), embedded by one shared block that every ranking model reads (and options turn off)."""

from __future__ import annotations

import dataclasses
import json

import numpy as np
import polars as pl
import pytest
import torch

from lifelong.batch import Collator, ItemSide
from lifelong.data.recipes import load_recipe
from lifelong.data.schema import EventLog
from lifelong.dataset.store import load_dataset
from lifelong.models import MODELS, build_model
from lifelong.models.ranking import Candidates
from lifelong.nn import BehaviorEmbedding
from lifelong.nn.features import FeatureEmbedding
from lifelong.pipeline import ProtocolOptions, prepare

from helpers import random_batch, shared_data
from model_configs import TINY_CONFIGS, TINY_VOCAB

NAMES = sorted(name for name, (config_class, _) in MODELS.items() if config_class.task == "ctr")
FEATURES = (
    {"name": "age", "group": "user", "kind": "numeric", "mean": 30.0, "std": 10.0},
    {"name": "gender", "group": "user", "kind": "categorical", "vocab_size": 4},
    {"name": "attr", "group": "item", "kind": "bag", "vocab_size": 9, "max_length": 3},
    {"name": "embedding", "group": "item", "kind": "dense", "dim": 3},
    {"name": "behavior", "group": "context", "kind": "categorical", "vocab_size": 4},
)
OFF = {"user_features": False, "item_features": False, "context_features": False}


def featured_batch(seed: int = 0, batch_size: int = 6):
    """A random batch with every feature group filled (attribute bags of 1-3 attributes)."""
    batch = random_batch(batch_size=batch_size, seed=seed)
    g = torch.Generator().manual_seed(seed + 1)
    b, t = batch.history_items.shape

    def side(shape, real):
        attrs = torch.randint(2, 9, (*shape, 3), generator=g)
        keep = torch.arange(3) < torch.randint(1, 4, (*shape, 1), generator=g)
        dense = torch.randn(*shape, 3, generator=g)
        return ItemSide(attrs=attrs * keep * real.unsqueeze(-1), dense=dense * real.unsqueeze(-1))

    return dataclasses.replace(
        batch,
        user_features={"age": torch.randint(18, 60, (b,), generator=g).float(),
                       "gender": torch.randint(2, 4, (b,), generator=g)},
        history_side=side((b, t), batch.history_mask), target_side=side((b,), torch.ones(b, dtype=torch.bool)),
        history_negative_side=side((b, t), batch.history_mask),
    )


def tiny(name: str, seed: int = 0, **options):
    torch.manual_seed(seed)
    return build_model({"model_type": name, **TINY_VOCAB, **TINY_CONFIGS[name], "features": list(FEATURES), **options})


def warm(model, steps: int = 2):
    optimizer = torch.optim.Adam(model.parameters(), lr=1e-2)
    for step in range(steps):
        batch = featured_batch(seed=100 + step)
        output = model(batch)
        loss = torch.nn.functional.binary_cross_entropy_with_logits(output.logits, batch.labels)
        optimizer.zero_grad()
        (loss + sum(output.aux_losses.values())).backward()
        optimizer.step()
    return model.eval()


@pytest.mark.parametrize("name", NAMES)
def test_with_features_k_candidates_score_as_k_forward_passes(name):
    model = warm(tiny(name))
    batch = featured_batch(seed=7)
    g = torch.Generator().manual_seed(3)
    k = 4
    candidates = Candidates(items=torch.randint(2, 30, (len(batch), k), generator=g),
                            cates=torch.randint(2, 8, (len(batch), k), generator=g), timestamps=batch.timestamps,
                            side=ItemSide(attrs=torch.randint(0, 9, (len(batch), k, 3), generator=g),
                                          dense=torch.randn(len(batch), k, 3, generator=g)))
    with torch.no_grad():
        scores = model.score(model.encode_user(batch), candidates)
        expected = torch.stack([model(dataclasses.replace(
            batch, target_items=candidates.items[:, j], target_cates=candidates.cates[:, j],
            target_side=candidates.side.map(lambda v: v[:, j]))).logits for j in range(k)], dim=1)
    torch.testing.assert_close(scores, expected, rtol=1e-5, atol=1e-5)


def _changed(batch, group: str):
    """The batch with one group's values changed (every user's gender, every history event's behavior,
    the targets' attribute bags and content vectors)."""
    if group == "user":
        return dataclasses.replace(batch, user_features={**batch.user_features,
                                                         "gender": 5 - batch.user_features["gender"]})
    if group == "context":
        behaviors = torch.where(batch.history_mask, 5 - batch.history_behaviors, 0)
        return dataclasses.replace(batch, history_behaviors=behaviors)
    side = batch.target_side
    return dataclasses.replace(batch, target_side=ItemSide(attrs=torch.where(side.attrs > 0, 10 - side.attrs, 0),
                                                           dense=-side.dense))


@pytest.mark.parametrize("name", NAMES)
@pytest.mark.parametrize("group", ["user", "item", "context"])
def test_a_feature_group_moves_the_score_when_on_and_not_when_off(name, group):
    batch = featured_batch(seed=11)
    on = warm(tiny(name))
    with torch.no_grad():
        assert not torch.allclose(on(batch).logits, on(_changed(batch, group)).logits, atol=1e-6), \
            f"{name}: the {group} features do not reach the score"
    off = warm(tiny(name, **{f"{group}_features": False}))
    with torch.no_grad():
        torch.testing.assert_close(off(batch).logits, off(_changed(batch, group)).logits)


@pytest.mark.parametrize("name", NAMES)
def test_all_groups_off_is_the_ids_only_model(name):
    """With every group off, a model over a featured dataset has exactly the parameters (names and shapes)
    of the model over a dataset without features, so old checkpoints and results carry over."""
    featured = tiny(name, **OFF)
    plain = build_model({"model_type": name, **TINY_VOCAB, **TINY_CONFIGS[name]})
    assert {k: v.shape for k, v in featured.state_dict().items()} == {k: v.shape for k, v in plain.state_dict().items()}
    assert featured.config.batch_needs().get("features") is None


def test_feature_embedding_widths_and_padding():
    emb = FeatureEmbedding(10, 4, 2, list(FEATURES))
    assert isinstance(emb, BehaviorEmbedding)
    assert (emb.out_dim, emb.user_dim) == (2 * 4, 2 * 2)
    out = emb.items(torch.tensor([[3, 0]]), torch.tensor([[2, 0]]), torch.tensor([[[2, 4, 0], [0, 0, 0]]]),
                    torch.ones(1, 2, 3))
    assert torch.equal(out[0, 1], torch.zeros(8)), "padding embeds to zero, content vector included"
    # the bag is the mean of its attributes' embeddings (padding slots excluded)
    expected = (emb.attr.weight[2] + emb.attr.weight[4]) / 2
    torch.testing.assert_close(out[0, 0, 4:6], expected)
    with pytest.raises(ValueError, match="attribute bags"):
        emb.items(torch.tensor([3]), torch.tensor([2]))


def _log_with_features() -> EventLog:
    rows = [(u, (u * 7 + j) % 12 + 1, 1000 + 10 * j) for u in range(1, 9) for j in range(8)]
    events = pl.DataFrame({
        "user_id": [r[0] for r in rows], "item_id": [r[1] for r in rows], "timestamp": [r[2] for r in rows],
        "row": list(range(len(rows))), "behavior": [("pv", "buy")[j % 2] for j in range(len(rows))],
        "user__age": [20 + r[0] for r in rows], "user__job": [("a", "b", "c")[r[0] % 3] for r in rows],
    }).cast({"user_id": pl.Int64, "item_id": pl.Int64, "timestamp": pl.Int64, "row": pl.Int64})
    items = pl.DataFrame({
        "item_id": list(range(1, 13)), "category": [str(i % 3) for i in range(1, 13)],
        "attributes": [[f"x{i % 4}", f"y{i % 5}"][: 1 + i % 2] for i in range(1, 13)],
        "embedding": [[float(i), float(-i)] for i in range(1, 13)],
    }).cast({"item_id": pl.Int64, "attributes": pl.List(pl.Utf8), "embedding": pl.List(pl.Float32)})
    return EventLog(events=events, items=items)


def test_prepare_declares_every_kind_and_batches_gather_from_per_user_and_per_item_tables(tmp_path):
    out = prepare(_log_with_features(), tmp_path / "ds", ProtocolOptions(name="ctr-din"))
    manifest = json.loads((out / "manifest.json").read_text())
    kinds = {(f["group"], f["name"]): f["kind"] for f in manifest["features"]}
    assert kinds == {("user", "age"): "numeric", ("user", "job"): "categorical", ("item", "attr"): "bag",
                     ("item", "embedding"): "dense", ("context", "behavior"): "categorical"}
    ds = load_dataset(out)
    assert ds.item_attrs.shape == (ds.item_idx.shape[0], 2)  # one row per item, not per sample
    assert ds.item_dense.shape == (ds.item_idx.shape[0], 2)
    assert {k: v.shape for k, v in ds.user_features.items()} == {"age": (8,), "job": (8,)}
    samples = ds.samples("train")
    batch = Collator(ds, max_length=5, features=("user", "item"))(samples.subset(np.arange(6)))
    users = samples.user[:6]
    user_ids = pl.read_parquet(out / "users.parquet")["user_id"].to_numpy()[users].astype(int)
    assert batch.user_features["age"].tolist() == [20.0 + u for u in user_ids]
    target_ids = pl.read_parquet(out / "items.parquet")["item_id"].to_numpy()[samples.target[:6]].astype(int)
    assert batch.target_side.dense[:, 0].tolist() == [float(i) for i in target_ids]
    assert batch.history_side.attrs.shape == (*batch.history_items.shape, 2)
    assert bool((batch.history_side.attrs[~batch.history_mask] == 0).all())
    plain = Collator(ds, max_length=5)(samples.subset(np.arange(6)))
    assert plain.user_features is None and plain.history_side is None


def test_movielens_user_features_and_genre_bags_reach_the_batch(tmp_path):
    log = load_recipe("movielens", shared_data("movielens-100k"))
    out = prepare(log, tmp_path / "ml", ProtocolOptions(name="ctr-din"))
    ds = load_dataset(out)
    declared = {(f["group"], f["name"]): f for f in ds.features}
    assert declared[("user", "age")]["kind"] == "numeric"
    assert declared[("user", "gender")]["kind"] == "categorical" and declared[("user", "gender")]["vocab_size"] == 4
    assert declared[("user", "occupation")]["vocab_size"] == 21 + 2  # 21 occupations in u.occupation
    assert declared[("item", "attr")]["kind"] == "bag"  # the genres
    vocab = json.loads((out / "vocab.json").read_text())
    users = pl.read_parquet(out / "users.parquet")
    row = users["user_id"].to_list().index("1")  # u.user: 1|24|M|technician|85711
    assert ds.user_features["age"][row] == 24.0
    assert vocab["user__gender"][ds.user_features["gender"][row] - 2] == "M"
    assert vocab["user__occupation"][ds.user_features["occupation"][row] - 2] == "technician"
    items = pl.read_parquet(out / "items.parquet")
    toy_story = items["item_id"].to_list().index("1")  # u.item: Toy Story, Animation|Children's|Comedy
    genres = sorted(vocab["attr"][i - 2] for i in ds.item_attrs[toy_story] if i > 0)
    assert genres == ["Animation", "Children's", "Comedy"]


def test_taobao_behavior_is_the_event_context(tmp_path):
    log = load_recipe("taobao-userbehavior", shared_data("taobao-userbehavior", "UserBehavior_head.csv"))
    out = prepare(log, tmp_path / "tb", ProtocolOptions(name="ctr-time"))
    ds = load_dataset(out)
    assert ds.feature("behavior", "context") == {"name": "behavior", "group": "context", "kind": "categorical",
                                                 "vocab_size": 6}  # pv, cart, fav, buy + padding, unknown
    model = build_model({"model_type": "din", "n_items": ds.vocab_sizes["item"], "n_cates": ds.vocab_sizes["cate"],
                         "embedding_dim": 4, "features": ds.features})
    assert model.config.batch_needs() == {"features": ("context",)}
    batch = Collator(ds, max_length=10, **model.config.batch_needs())(ds.samples("train").subset(np.arange(32)))
    changed = dataclasses.replace(batch, history_behaviors=torch.where(batch.history_mask, 7 - batch.history_behaviors, 0))
    with torch.no_grad():
        assert not torch.allclose(model.eval()(batch).logits, model(changed).logits)


def test_a_run_takes_the_declarations_from_the_dataset_and_the_groups_from_its_options(tmp_path):
    from lifelong.errors import UserError
    from lifelong.train.run import TrainConfig, model_config_for

    out = prepare(_log_with_features(), tmp_path / "ds", ProtocolOptions(name="ctr-din"))
    ds = load_dataset(out)
    resolved = model_config_for(TrainConfig(data=str(out), model="dien", model_options={"item_features": False}), ds)
    assert [f["name"] for f in resolved["features"]] == [f["name"] for f in ds.features]
    config = build_model(resolved).config
    assert config.feature_groups == ("user", "context")
    assert "features" not in model_config_for(TrainConfig(data=str(out), model="sasrec"), ds)  # retrieval: none
    with pytest.raises(UserError, match="come from the dataset's manifest"):
        model_config_for(TrainConfig(data=str(out), model="din", model_options={"features": []}), ds)
