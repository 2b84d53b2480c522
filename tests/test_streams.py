"""Each random component draws from its own seeded stream (lifelong.streams): turning one option on does
not shift another component's draws, and a stream restarts exactly at every epoch."""

from __future__ import annotations

import torch

import lifelong.models.idnp as idnp
from lifelong.models import build_model
from lifelong.streams import STREAMS, RandomStreams

from helpers import random_batch


def test_a_stream_does_not_move_when_another_draws():
    STREAMS.reset(7, 1)
    alone = torch.rand(4, generator=STREAMS("negatives"))
    STREAMS.reset(7, 1)
    torch.rand(100, generator=STREAMS("context_split"))
    torch.rand(100)  # nor when torch's global generator draws (dropout)
    assert torch.equal(torch.rand(4, generator=STREAMS("negatives")), alone)


def test_streams_differ_by_name_seed_and_epoch():
    draws = {}
    for seed, epoch, name in ((1, 1, "a"), (1, 1, "b"), (2, 1, "a"), (1, 2, "a")):
        draws[(seed, epoch, name)] = torch.rand(8, generator=RandomStreams(seed, epoch)(name)).tolist()
    assert len({tuple(v) for v in draws.values()}) == 4
    assert torch.rand(8, generator=RandomStreams(1, 1)("a")).tolist() == draws[(1, 1, "a")]


def test_sampled_negatives_do_not_shift_idnps_context_splits(monkeypatch):
    """IDNP under the full softmax and under sampled negatives (which draw every step): the context
    steps drawn over three training steps are the same. With one global generator they were not."""
    batch = random_batch(batch_size=8, width=7, seed=2)
    splits, split = {}, idnp.split_context
    for loss in ("full", "sampled"):
        torch.manual_seed(0)
        model = build_model({"model_type": "idnp", "n_items": 30, "n_cates": 8, "embedding_dim": 8,
                             "decoder_hidden": 16, "dropout": 0.0, "loss": loss, "negatives": 5}).train()
        drawn = []
        monkeypatch.setattr(idnp, "split_context", lambda mask, ratio: drawn.append(split(mask, ratio)) or drawn[-1])
        STREAMS.reset(3, 1)
        for _ in range(3):
            model(batch).loss.backward()
        splits[loss] = drawn
    assert all(torch.equal(a, b) for a, b in zip(splits["full"], splits["sampled"]))
    assert not torch.equal(splits["full"][0], splits["full"][1])  # the stream moves from step to step
