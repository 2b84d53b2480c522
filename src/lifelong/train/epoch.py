"""The one training loop of every model: CTR (ranking) and retrieval models train through the same
epochs and the same steps; what differs is a small typed object, not a second loop.

- :class:`Objective`: the loss of a batch. :func:`click_loss` for CTR models (binary cross-entropy of
  the click logits, plus the model's auxiliary losses), :func:`model_loss` for retrieval models (the
  model's own training loss, optionally weighted per sample).
- :class:`Task`: what an epoch trains on (its batches, in an order drawn after the epoch's seeding, and
  how many targets a batch trains) and its objective. The CTR task is in :mod:`lifelong.train.loop`,
  the retrieval tasks (P2 windows or prefixes, P3 rows) in :mod:`lifelong.train.retrieval`.
- :class:`Step`: one optimisation step. :class:`PlainStep` is the forward pass under the run's
  precision (:func:`lifelong.train.device.training_autocast`), the loss, the backward pass, gradient
  clipping (``TrainConfig.clip_norm``) and the optimizer step, all in :class:`Trainer`. DESMIL's
  sample reweighting (:class:`lifelong.train.desmil.DesmilStep`) is a variant of the step: it learns the
  batch's weights, then takes the same :meth:`Trainer.update`, so precision, clipping and DDP apply to it.
- :func:`train_epoch`: one epoch (seeding of torch and of every component's stream, the batches, the
  steps, the progress bar); :func:`train_epochs`: the epochs of a run (validation, the per-epoch record,
  checkpoints and early stopping through :func:`lifelong.train.run.end_epoch`), then the best weights.

Under ``torchrun`` the :class:`Trainer`'s ``net`` is the DDP wrapper of the model: every step's forward
pass runs through it (gradients all-reduced), each rank trains its share of the epoch's rows.
"""

from __future__ import annotations

import contextlib
import json
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable, ContextManager, Iterable, NamedTuple, Protocol

import numpy as np
import torch
import torch.distributed as dist
import torch.nn.functional as F

from lifelong.batch import Batch
from lifelong.streams import STREAMS
from lifelong.train.checkpoint import load_weights
from lifelong.train.run import Distributed, TrainConfig, _log, _progress, end_epoch


class Loss(NamedTuple):
    """The loss of one batch: ``total`` is backpropagated, ``reported`` (the batch mean) is what the
    epoch's training loss averages (for CTR the click log loss, without the auxiliary losses)."""

    total: torch.Tensor
    reported: torch.Tensor


class Objective(Protocol):
    """The training loss of a kind of model, computed from the module that runs the forward pass
    (the model or its DDP wrapper)."""

    def __call__(self, net: torch.nn.Module, batch: Batch, sample_weights: torch.Tensor | None = None) -> Loss: ...


def click_loss(net: torch.nn.Module, batch: Batch, sample_weights: torch.Tensor | None = None) -> Loss:
    """CTR models: binary cross-entropy of the click logits (in float32) plus the model's auxiliary
    losses (DIEN's); per-sample weights are a retrieval training option."""
    if sample_weights is not None:
        raise ValueError("per-sample weights train retrieval models (DESMIL); a CTR model has none")
    output = net(batch)
    loss = F.binary_cross_entropy_with_logits(output.logits.float(), batch.labels)
    return Loss(loss + sum(output.aux_losses.values()) if output.aux_losses else loss, loss)


def model_loss(net: torch.nn.Module, batch: Batch, sample_weights: torch.Tensor | None = None) -> Loss:
    """Retrieval models: the model's own training loss (in float32), weighted per sample when given."""
    output = net(batch) if sample_weights is None else net(batch, sample_weights=sample_weights)
    loss = output.loss.float()
    return Loss(loss, loss)


class EpochBatches(NamedTuple):
    """An epoch's training batches: how many rows they hold on this rank (the progress bar's total) and
    the batches themselves (an iterable that builds each batch when it is reached)."""

    rows: int
    batches: Iterable[Batch]


class Task(Protocol):
    """What a training epoch runs on: the objective, the epoch's batches and the targets of a batch."""

    objective: Objective

    def batches(self, epoch: int) -> EpochBatches:
        """The batches of ``epoch`` (called after the epoch's seeding; under DDP this rank's share)."""
        ...

    def targets(self, batch: Batch) -> int | torch.Tensor:
        """How many training targets ``batch`` trains (the throughput's unit)."""
        ...


@dataclass
class Trainer:
    """What every training step uses: the model, the module its forward pass runs through (``net``: the
    model, or its DDP wrapper under ``torchrun``), the optimizer, the objective, the precision's autocast
    context and the gradient clipping norm (0: no clipping)."""

    model: torch.nn.Module
    optimizer: torch.optim.Optimizer
    objective: Objective
    autocast: ContextManager = field(default_factory=contextlib.nullcontext)
    clip_norm: float = 0.0
    net: torch.nn.Module | None = None

    def __post_init__(self) -> None:
        if self.net is None:
            self.net = self.model

    def loss(self, batch: Batch, sample_weights: torch.Tensor | None = None) -> Loss:
        """The objective of ``batch`` with its forward pass under the run's precision."""
        with self.autocast:
            return self.objective(self.net, batch, sample_weights)

    def update(self, loss: torch.Tensor) -> None:
        """Backpropagate ``loss``, clip the gradients' global norm to ``clip_norm`` (when set) and step."""
        self.optimizer.zero_grad(set_to_none=True)
        loss.backward()
        if self.clip_norm:
            torch.nn.utils.clip_grad_norm_(self.model.parameters(), self.clip_norm)
        self.optimizer.step()


class Step(Protocol):
    """One optimisation step on a batch; returns the batch's reported loss (a tensor on the device, or a
    number). ``start_epoch`` is called after the epoch's seeding, ``report`` after its last step (extra
    values of the epoch's record)."""

    def start_epoch(self, epoch: int) -> None: ...

    def __call__(self, trainer: Trainer, batch: Batch) -> torch.Tensor | float: ...

    def report(self) -> dict[str, float]: ...


class PlainStep:
    """The step of every model: the loss under the run's precision, then :meth:`Trainer.update`."""

    def start_epoch(self, epoch: int) -> None:
        """Nothing to restart."""

    def __call__(self, trainer: Trainer, batch: Batch) -> torch.Tensor:
        loss = trainer.loss(batch)
        trainer.update(loss.total)
        return loss.reported.detach()  # stays on the device: no host synchronisation per step

    def report(self) -> dict[str, float]:
        return {}


class EpochResult(NamedTuple):
    """One trained epoch: the summed (batch-size weighted) training loss, the rows seen on this rank, the
    targets trained by all ranks, the step's extra values and the seconds it took."""

    loss_sum: float
    seen: int
    targets: int
    extra: dict[str, float]
    seconds: float


def train_epoch(config: TrainConfig, task: Task, trainer: Trainer, step: Step, epoch: int,
                dist_ctx: Distributed | None = None) -> EpochResult:
    """Train one epoch: seed torch (dropout...) and every component's stream (:data:`lifelong.streams.STREAMS`)
    for ``epoch``, so a resumed run continues exactly; then one ``step`` per batch of ``task``. Without
    ``dist_ctx`` the epoch runs in this process alone."""
    main, world_size = (True, 1) if dist_ctx is None else (dist_ctx.main, dist_ctx.world_size)
    started = time.perf_counter()
    torch.manual_seed(config.seed * 1000 + epoch)  # dropout etc. restart exactly on resume
    STREAMS.reset(config.seed, epoch)  # each random component its own stream (negatives, splits, noise, ...)
    epoch_batches = task.batches(epoch)
    step.start_epoch(epoch)
    trainer.net.train()
    loss_sum, seen, targets = 0.0, 0, 0
    with _progress(config.progress and main, f"epoch {epoch}", epoch_batches.rows) as advance:
        for batch in epoch_batches.batches:
            loss = step(trainer, batch)
            loss_sum += loss * len(batch)  # summed on the device when the step leaves it there
            seen += len(batch)
            targets += task.targets(batch)
            advance(len(batch))
    loss_sum, targets = float(loss_sum), int(targets)  # one host synchronisation per epoch
    return EpochResult(loss_sum, seen, targets * world_size, step.report(),
                       time.perf_counter() - started)


@dataclass(frozen=True)
class Selection:
    """How a run reports its epochs and selects the best one.

    Args:
        metric: the validation metric selected on (higher is better).
        best_key: the trainer state's key of its best value (kept as checkpoints always named it).
        loss_key: the record's name of the epoch's mean training loss.
        speed_key: the record's name of the training throughput (targets of all ranks per second).
        shown: ``(label, metric)`` pairs of the validation metrics in the console line of an epoch.
    """

    metric: str
    best_key: str
    loss_key: str
    speed_key: str
    shown: tuple[tuple[str, str], ...]

    def describe(self, epoch: int, record: dict[str, Any], valid: dict[str, Any]) -> str:
        """The console line of an epoch."""
        loss_name = self.loss_key.removeprefix("train_").replace("_", " ")
        unit = self.speed_key.removeprefix("train_").removesuffix("_per_s")
        return (f"epoch {epoch}: train {loss_name} {record[self.loss_key]:.4f}, {record[self.speed_key]:,.0f} "
                f"{unit}/s, valid " + ", ".join(f"{label} {valid[key]:.4f}" for label, key in self.shown))


def train_epochs(config: TrainConfig, state: dict, model: torch.nn.Module, model_config: dict,
                 optimizer: torch.optim.Optimizer, epoch_of: Callable[[torch.nn.Module, Any, int], EpochResult],
                 validate: Callable[[], dict], selection: Selection,
                 on_epoch_end: Callable[[int, dict], None] | None = None,
                 dist_ctx: Distributed | None = None) -> list[dict]:
    """The epochs of a run, whatever the model: train one epoch (``epoch_of(model, optimizer, epoch)``,
    a :func:`train_epoch`), validate, record, checkpoint and stop early on ``selection.metric``
    (:func:`lifelong.train.run.end_epoch`); then load the best weights. Returns every epoch's record
    (``metrics.jsonl``, resumed epochs included; on the main process, nothing on the others). Without
    ``dist_ctx`` the run is this process alone."""
    main, ddp = (True, False) if dist_ctx is None else (dist_ctx.main, dist_ctx.enabled)
    run = Path(config.out)
    while not state["done"] and state["epoch"] < config.epochs:
        epoch = state["epoch"] + 1
        trained = epoch_of(model, optimizer, epoch)
        valid = validate()
        record = {"epoch": epoch, selection.loss_key: trained.loss_sum / max(trained.seen, 1),
                  selection.speed_key: trained.targets / trained.seconds, "train_seconds": trained.seconds,
                  **trained.extra, **{f"valid_{k}": v for k, v in valid.items()}}
        end_epoch(run, state, selection.best_key, valid[selection.metric], valid, record, config, model,
                  model_config, optimizer, main)
        if main:
            _log(config, selection.describe(epoch, record, valid))
        if ddp:
            dist.barrier()  # the main process has written the epoch's checkpoints
        if on_epoch_end is not None:
            on_epoch_end(epoch, record)
    load_weights(run / "checkpoints" / "best", model)
    if not main:
        return []
    return [json.loads(line) for line in (run / "metrics.jsonl").read_text().splitlines()]


def median_speed(records: list[dict], key: str) -> float:
    """Median throughput ``key`` over the epochs after the first (warm-up) one (0 without records)."""
    speeds = [r[key] for r in records]
    return float(np.median(speeds[1:] or speeds)) if speeds else 0.0
