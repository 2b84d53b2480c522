"""Devices and precision, tested on the CPU: what ``--device`` resolves to, the refusal of a CUDA request
without CUDA (before anything is built or written), batches built where the model is, and bf16 autocast
of the training forward pass only (evaluation stays fp32). The CUDA path itself is checked by
``benchmarks/gpu_check.py`` on a machine with a GPU."""

from __future__ import annotations

import json

import pytest
import torch

from lifelong.batch import Collator
from lifelong.data.schema import EventLog
from lifelong.dataset.store import load_dataset
from lifelong.errors import UserError
from lifelong.pipeline import ProtocolOptions, prepare
from lifelong.train import TrainConfig, evaluate_run, train
from lifelong.train.device import resolve_device, training_autocast

from helpers import random_log


@pytest.fixture(scope="module")
def data(tmp_path_factory):
    events, items = random_log(n_users=40, seed=5)
    log = EventLog(events=events, items=items, sources=[], rejected=None, recipe="test")
    return prepare(log, tmp_path_factory.mktemp("device") / "data", ProtocolOptions(name="ctr-din"))


def test_auto_is_cpu_without_cuda_and_cpu_is_cpu():
    assert resolve_device("auto") == torch.device("cuda" if torch.cuda.is_available() else "cpu")
    assert resolve_device(None) == resolve_device("auto")
    assert resolve_device("cpu") == torch.device("cpu")


@pytest.mark.skipif(torch.cuda.is_available(), reason="checks the refusal on a machine without CUDA")
@pytest.mark.parametrize("name", ["cuda", "cuda:0", "cuda:3"])
def test_a_cuda_request_without_cuda_is_a_clear_error(name):
    with pytest.raises(UserError, match=f"--device {name}: CUDA is not available here.*--device cpu"):
        resolve_device(name)


@pytest.mark.parametrize("name", ["gpu", "tpu:0", "mps"])
def test_a_device_lifelong_does_not_run_on_is_named(name):
    with pytest.raises(UserError, match=f"--device '{name}'"):
        resolve_device(name)


@pytest.mark.skipif(torch.cuda.is_available(), reason="checks the refusal on a machine without CUDA")
def test_train_refuses_cuda_before_the_run_folder_is_made(data, tmp_path):
    with pytest.raises(UserError, match="CUDA is not available"):
        train(TrainConfig(data=str(data), model="din", out=str(tmp_path / "run"), epochs=1, device="cuda",
                          progress=False))
    assert not (tmp_path / "run").exists()


def test_the_collator_builds_batches_on_its_device(data):
    dataset = load_dataset(data)
    samples = dataset.samples("valid").subset(torch.arange(8).numpy())
    batch = Collator(dataset, 10, device="meta")(samples)  # a device without data: only placement is checked
    assert batch.device.type == "meta" and batch.labels.device.type == "meta"
    assert Collator(dataset, 10)(samples).device.type == "cpu"


def test_bf16_autocasts_the_training_forward_pass_only():
    layer = torch.nn.Linear(4, 3)
    x = torch.randn(2, 4)
    with training_autocast("bf16", torch.device("cpu")):
        assert layer(x).dtype == torch.bfloat16
    with training_autocast("fp32", torch.device("cpu")):
        assert layer(x).dtype == torch.float32
    assert layer.weight.dtype == torch.float32
    with pytest.raises(UserError, match="--precision"):
        training_autocast("fp16", torch.device("cpu"))


def test_a_bf16_run_trains_in_bf16_but_evaluates_in_fp32(data, tmp_path):
    """The same seed in fp32 and bf16: training differs (the forward pass is rounded), evaluation of one
    checkpoint does not depend on the run's precision (it is fp32 either way)."""
    runs = {}
    for precision in ("fp32", "bf16"):
        config = TrainConfig(data=str(data), model="din", out=str(tmp_path / precision), epochs=2, batch_size=32,
                             precision=precision, device="cpu", progress=False,
                             model_options={"embedding_dim": 4, "attention_hidden": [8], "dnn_hidden": [8]})
        runs[precision] = train(config)
        saved = json.loads((tmp_path / precision / "config.json").read_text())["train"]
        assert saved["precision"] == precision and saved["device"] == "cpu"
    losses = [json.loads(line)["train_logloss"] for p in ("fp32", "bf16")
              for line in (tmp_path / p / "metrics.jsonl").read_text().splitlines()[:1]]
    assert losses[0] != losses[1]  # bf16 rounding reached the training forward pass
    assert abs(losses[0] - losses[1]) < 0.05  # ... and only rounding
    # evaluation is fp32: re-evaluating the bf16 run's checkpoint reproduces its reported test metrics exactly
    assert evaluate_run(tmp_path / "bf16", "test", device="cpu") == runs["bf16"]["test"]


def test_desmil_accepts_bf16(tmp_path):
    """DESMIL is a step of the one loop: its forward passes run under bf16, its weights are learned in
    float32 (tests/test_epoch.py)."""
    TrainConfig(data="x", out=str(tmp_path), desmil=True, precision="bf16").validate()


def test_batch_validate_reads_values_only_when_asked():
    """On a forward pass's hot path Batch.validate checks shapes and dtypes only (no read-back from the
    device); the value checks run with values=True or LIFELONG_VALIDATE=1 (set for the test suite)."""
    from helpers import random_batch

    batch = random_batch()
    batch.history_items[0, 0] = -3
    batch.validate(values=False)  # shapes and dtypes are fine
    with pytest.raises(ValueError, match="negative index"):
        batch.validate(values=True)
    with pytest.raises(ValueError, match="negative index"):
        batch.validate()  # the suite's default (LIFELONG_VALIDATE=1)
    batch.history_items = batch.history_items.float()
    with pytest.raises(ValueError, match="integer indices"):
        batch.validate(values=False)
