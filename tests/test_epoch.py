"""The one training loop (lifelong.train.epoch): CTR, retrieval and DESMIL runs take the same step, so
gradient clipping and the run's precision apply to every one of them (DESMIL included), and DESMIL
learns its weights in float32 whatever the precision."""

from __future__ import annotations

import pytest
import torch

from lifelong.data.schema import EventLog
from lifelong.models import build_model
from lifelong.models.comirec import ComiRecSA
from lifelong.pipeline import ProtocolOptions, prepare
from lifelong.train import TrainConfig, train
from lifelong.train.desmil import DesmilStep, SampleWeighting
from lifelong.train.epoch import Trainer, model_loss

from helpers import random_batch, random_log

CLIP = 1e-3  # far below every unclipped gradient norm of these runs
RUNS = {  # protocol -> (model, options, train options)
    "ctr-din": ("din", {"embedding_dim": 4, "attention_hidden": [8], "dnn_hidden": [8]}, {}),
    "seq-loo": ("sasrec", {"embedding_dim": 8, "max_positions": 8}, {}),
    "mi-split": ("comirec_sa", {"embedding_dim": 8, "max_positions": 8, "interests": 2}, {"desmil": True}),
}


@pytest.fixture(scope="module")
def datasets(tmp_path_factory):
    events, items = random_log(n_users=40, n_items=30, max_events=12, seed=11)
    root = tmp_path_factory.mktemp("epoch")
    return {name: prepare(EventLog(events=events, items=items, recipe="test"), root / name, ProtocolOptions(name=name))
            for name in RUNS}


def config(data, out, protocol: str, **kw) -> TrainConfig:
    model, options, extra = RUNS[protocol]
    values = dict(data=str(data), model=model, out=str(out), epochs=1, batch_size=16, max_length=8, patience=5,
                  progress=False, device="cpu", model_options=options, **extra)
    values.update(kw)
    return TrainConfig(**values)


def gradient_norms_at_each_step(monkeypatch) -> list[float]:
    """Record the global gradient norm every Adam step of the model sees (the weight learner's steps on
    its own logits are left out)."""
    norms, step = [], torch.optim.Adam.step

    def spy(self, *args, **kwargs):
        params = [p for group in self.param_groups for p in group["params"] if p.grad is not None]
        if len(params) > 1:  # DESMIL's weight learner optimises one tensor (its logits)
            norms.append(float(torch.linalg.vector_norm(torch.stack([p.grad.norm() for p in params]))))
        return step(self, *args, **kwargs)

    monkeypatch.setattr(torch.optim.Adam, "step", spy)
    return norms


@pytest.mark.parametrize("protocol", list(RUNS))
def test_gradient_clipping_applies_to_ctr_retrieval_and_desmil_steps(datasets, tmp_path, monkeypatch, protocol):
    norms = gradient_norms_at_each_step(monkeypatch)
    train(config(datasets[protocol], tmp_path / "free", protocol))
    free, norms[:] = list(norms), []
    train(config(datasets[protocol], tmp_path / "clipped", protocol, clip_norm=CLIP))
    assert free and max(free) > 10 * CLIP  # unclipped, the gradients are far larger ...
    assert len(norms) == len(free) and max(norms) <= CLIP * (1 + 1e-4)  # ... every clipped step is within the norm


def test_a_desmil_step_runs_its_forward_passes_under_bf16_and_learns_its_weights_in_float32(datasets, tmp_path,
                                                                                          monkeypatch):
    forwards, learned = [], []
    forward, terms, learn = ComiRecSA.forward, ComiRecSA.training_terms, SampleWeighting.learn

    def forward_spy(self, batch, sample_weights=None):
        if self.training:
            forwards.append(("forward", torch.is_autocast_enabled("cpu"), sample_weights is not None))
        return forward(self, batch, sample_weights)

    def terms_spy(self, batch):
        if not torch.is_grad_enabled():  # DESMIL's pass for the interests (the forward pass calls it too)
            forwards.append(("interests", torch.is_autocast_enabled("cpu"), False))
        return terms(self, batch)

    def learn_spy(self, interests, valid):
        learned.append(interests.dtype)
        return learn(self, interests, valid)

    monkeypatch.setattr(ComiRecSA, "forward", forward_spy)
    monkeypatch.setattr(ComiRecSA, "training_terms", terms_spy)
    monkeypatch.setattr(SampleWeighting, "learn", learn_spy)
    results = train(config(datasets["mi-split"], tmp_path / "bf16", "mi-split", precision="bf16"))
    assert results["desmil"] and learned and set(learned) == {torch.float32}
    interests = [autocast for kind, autocast, _ in forwards if kind == "interests"]
    weighted = [autocast for kind, autocast, weights in forwards if kind == "forward" and weights]
    assert len(interests) == len(learned) and all(interests)  # the interests' forward pass under bf16 autocast
    assert len(weighted) == len(learned) and all(weighted)  # ... and the weighted update's


def test_train_options_refuse_a_negative_clipping_norm(tmp_path):
    with pytest.raises(ValueError, match="clip_norm must be non-negative"):
        TrainConfig(data="x", out=str(tmp_path), clip_norm=-1.0).validate()


def test_a_desmil_step_updates_through_the_trainers_net_as_a_ddp_run_does():
    """Under torchrun the trainer's ``net`` is the DDP wrapper: DESMIL's weighted update runs through it
    (so its gradients are all-reduced); only the interests for the weights are read from the model."""
    model = build_model({"model_type": "comirec_sa", "n_items": 30, "n_cates": 8, "embedding_dim": 8,
                         "interests": 2, "max_positions": 8}).train()
    calls = []

    class Wrapper(torch.nn.Module):  # stands for DistributedDataParallel
        def __init__(self, module):
            super().__init__()
            self.module = module

        def forward(self, batch, **kwargs):
            calls.append(sorted(kwargs))
            return self.module(batch, **kwargs)

    before = [p.detach().clone() for p in model.parameters()]
    trainer = Trainer(model, torch.optim.Adam(model.parameters()), model_loss, net=Wrapper(model))
    step = DesmilStep(SampleWeighting(weight_steps=3, seed=0), seed=0)
    step.start_epoch(1)
    loss = step(trainer, random_batch(batch_size=8, width=6))
    assert calls == [["sample_weights"]] and loss > 0
    assert any(not torch.equal(a, b) for a, b in zip(before, model.parameters()))  # the update was taken
    assert set(step.report()) == {"train_hsic_uniform", "train_hsic_weighted"}
