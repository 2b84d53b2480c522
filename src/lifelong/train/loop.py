"""Training of CTR (ranking) models and the entry point of every run: Adam, early stopping on validation
AUC, atomic checkpoints, exact resume, per-epoch metrics, one result line per run. Under ``torchrun`` it
trains with DDP (gloo on CPU, NCCL on CUDA): each rank trains on its own shard, and metrics are computed on
the gathered predictions of all ranks. The epochs and steps are the one loop of :mod:`lifelong.train.epoch`
(the CTR part is :class:`ClickTask`: the click loss on shuffled samples); retrieval models go through the
same loop from :func:`lifelong.train.retrieval.train_retrieval`. The run's bookkeeping (options, folder,
checkpoints, early stopping) is :mod:`lifelong.train.run`; the names re-exported here keep
``lifelong.train.loop`` imports working.
"""

from __future__ import annotations

import json
import os
import sys
import time
from pathlib import Path
from typing import Any, Callable

import numpy as np
import torch

from lifelong.batch import Batch, Collator, iterate_batches
from lifelong.dataset.store import PreparedDataset, SampleTable, load_dataset
from lifelong.errors import UserError
from lifelong.metrics import ctr_metrics
from lifelong.models import MODELS, build_model, config_from_dict
from lifelong.models.ranking import RankingModel
from lifelong.protocols import training_event_mask, training_popularity
from lifelong.train.checkpoint import load_model_config, load_weights
from lifelong.train.device import resolve_device, training_autocast
from lifelong.train.epoch import (EpochBatches, PlainStep, Selection, Trainer, click_loss, median_speed, train_epoch,
                                  train_epochs)
from lifelong.train.ranking import evaluate_ranking, item_categories
from lifelong.train.retrieval import eval_chunk, evaluate_mi, train_retrieval
from lifelong.train.run import (Distributed, TrainConfig, _log, check_run_dataset, check_task, dataset_protocol,
                                model_config_for, open_run_folder, read_run, run_dataset_path, start_run,
                                write_result_row)


EVAL_HISTORY_CELLS = 1 << 18  # at most 262,144 history positions per evaluation batch, whatever L is


@torch.no_grad()
def predict(model: torch.nn.Module, collator: Collator, samples: SampleTable, batch_size: int) -> np.ndarray:
    """Logits for every sample, in table order (batches shrink with L so memory stays bounded)."""
    model.eval()
    batch_size = max(1, min(batch_size, EVAL_HISTORY_CELLS // collator.max_length))
    out = [model(batch).logits.float().cpu().numpy() for batch in iterate_batches(collator, samples, batch_size)]
    return np.concatenate(out) if out else np.zeros(0, np.float32)


def evaluate(model, collator: Collator, samples: SampleTable, batch_size: int, dist_ctx: Distributed | None = None,
             keep_logits: bool = False):
    """AUC, GAUC and logloss of ``samples``; under DDP each rank scores a shard and the metrics are
    computed on the gathered predictions (never averaged across ranks). With ``keep_logits`` also
    return the logits of every sample, in table order."""
    dist_ctx = dist_ctx or Distributed()
    index = dist_ctx.shard(np.arange(len(samples)), equal=False)
    part = samples.subset(index)
    logits = predict(model, collator, part, batch_size)
    users, labels, logits = dist_ctx.gather((part.user, part.label, logits))
    metrics = ctr_metrics(users, labels, logits)
    if keep_logits:  # the gather concatenates rank shards: put the rows back in table order
        order = np.concatenate(dist_ctx.gather((index,))) if dist_ctx.enabled else index
        restored = np.empty_like(logits)
        restored[order] = logits
        return metrics, restored
    return metrics


def collators_for(model_config: dict[str, Any], dataset: PreparedDataset, max_length: int,
                  seed: int, training: bool = True, device: torch.device | str = "cpu") -> tuple[Collator, Collator]:
    """(evaluation collator, training collator) with the batch fields the model reads; sampled
    negatives only feed training losses, so evaluation batches never carry them (and with
    ``training=False`` they are not even drawn: both collators are the evaluation one)."""
    needs = config_from_dict(model_config).batch_needs()
    reads = {key: value for key, value in needs.items() if key != "with_negatives"}  # what evaluation reads too
    evaluation = Collator(dataset, max_length, device=device, **reads)
    if not training or not needs.get("with_negatives", False):
        return evaluation, evaluation
    return evaluation, Collator(dataset, max_length, seed=seed, device=device, **needs)


def _set_counts(model: torch.nn.Module, dataset: PreparedDataset) -> None:
    """Id frequencies for the mini-batch aware regulariser, counted over the events training sees
    (:func:`lifelong.protocols.training_event_mask`): validation and test targets do not count."""
    if not isinstance(model, RankingModel):  # the ranking models' contract: ids embedded by model.embedding
        return
    embedding = model.embedding
    seen = dataset.event_items[training_event_mask(dataset.offsets, dataset.samples("train"))]
    for counts, ids in ((embedding.item_counts, dataset.item_idx[seen]),
                        (embedding.cate_counts, dataset.item_cate[seen])):
        counts.copy_(torch.from_numpy(np.bincount(ids, minlength=counts.shape[0])[: counts.shape[0]]).float())


CTR_SELECTION = Selection("auc", "best_auc", "train_logloss", "train_samples_per_s",
                          (("AUC", "auc"), ("GAUC", "gauc"), ("logloss", "logloss")))


class ClickTask:
    """The training epochs of a CTR model (a :class:`lifelong.train.epoch.Task`): the click loss
    (:func:`lifelong.train.epoch.click_loss`) on the training samples, shuffled with ``(seed, epoch)``
    (under DDP this rank's equal share), in batches of at least two samples (batch statistics, e.g. Dice,
    need two)."""

    def __init__(self, config: TrainConfig, collator: Collator, samples: SampleTable,
                 dist_ctx: Distributed) -> None:
        self.config, self.collator, self.samples, self.dist_ctx = config, collator, samples, dist_ctx
        self.objective = click_loss

    def batches(self, epoch: int) -> EpochBatches:
        order = np.random.default_rng([self.config.seed, epoch]).permutation(len(self.samples))
        order = self.dist_ctx.shard(order, equal=True)
        batches = iterate_batches(self.collator, self.samples, self.config.batch_size, order)
        return EpochBatches(order.shape[0], (batch for batch in batches if len(batch) >= 2))

    def targets(self, batch: Batch) -> int:
        return len(batch)  # one click label per sample


def train(config: TrainConfig, *, resume: bool = False, overwrite: bool = False, command: str | None = None,
          on_epoch_end: Callable[[int, dict], None] | None = None) -> dict:
    """Train, select the epoch with the best validation AUC, evaluate it on test; return the results.
    A retrieval model (``task = "retrieval"``) trains in :func:`lifelong.train.retrieval.train_retrieval`.

    Before anything is built: the model's task must fit the dataset's protocol, and ``config.out`` is made
    ready (:func:`open_run_folder`: ``resume`` continues it, ``overwrite`` replaces a run lifelong wrote)."""
    config.validate()
    check_task(config.model, dataset_protocol(config.data))
    resume = open_run_folder(config, resume=resume, overwrite=overwrite, main=int(os.environ.get("RANK", "0")) == 0,
                             log=lambda message: _log(config, message))
    if MODELS[config.model][0].task == "retrieval":
        return train_retrieval(config, resume=resume, command=command, on_epoch_end=on_epoch_end)
    with Distributed(resolve_device(config.device)) as ctx:
        return _train_clicks(config, ctx, resume=resume, command=command, on_epoch_end=on_epoch_end)


def _train_clicks(config: TrainConfig, ctx: Distributed, *, resume: bool, command: str | None,
                  on_epoch_end: Callable[[int, dict], None] | None) -> dict:
    device = ctx.device
    if config.threads:
        torch.set_num_threads(config.threads)
    run = Path(config.out)
    dataset = load_dataset(config.data)
    model_config = model_config_for(config, dataset)
    collator, train_collator = collators_for(model_config, dataset, config.max_length, config.seed, device=device)
    train_samples, valid_samples = dataset.samples("train"), dataset.samples("valid")
    torch.manual_seed(config.seed)
    model = build_model(model_config)
    _set_counts(model, dataset)
    model.to(device)
    optimizer = torch.optim.Adam(model.parameters(), lr=config.lr, weight_decay=config.weight_decay)
    state = start_run(config, dataset, model_config, model, optimizer, "best_auc", resume, command, ctx.main)
    net = torch.nn.parallel.DistributedDataParallel(model) if ctx.enabled else model
    task = ClickTask(config, train_collator, train_samples, ctx)
    trainer = Trainer(model, optimizer, task.objective, training_autocast(config.precision, device), config.clip_norm,
                      net)
    step = PlainStep()
    records = train_epochs(config, state, model, model_config, optimizer,
                           lambda model, optimizer, epoch: train_epoch(config, task, trainer, step, epoch, ctx),
                           lambda: evaluate(model, collator, valid_samples, config.eval_batch_size, ctx),
                           CTR_SELECTION, on_epoch_end, ctx)
    results = {
        "best_epoch": state["best_epoch"],
        "epochs_run": state["epoch"],
        "train_samples_per_s": median_speed(records, CTR_SELECTION.speed_key),  # after the warm-up epoch
        "valid": state["best_valid"],  # the best epoch's weights are the ones loaded: no second pass
    }
    test = dataset.samples("test")
    results["test"], logits = evaluate(model, collator, test, config.eval_batch_size, ctx, keep_logits=True)
    if config.save_predictions and ctx.main:
        np.savez_compressed(run / "test_predictions.npz", user=test.user, end=test.end, label=test.label,
                            logit=logits, history_length=np.minimum(test.end, config.max_length))
    if ctx.main:
        (run / "results.json").write_text(json.dumps(results, indent=2))
        if config.results_csv:
            append_result_line(Path(config.results_csv), config, dataset, results, run, command)
    return results


def append_result_line(path: Path, config: TrainConfig, dataset: PreparedDataset, results: dict,
                       run: Path, command: str | None) -> None:
    """One line per run: what, on which data and protocol, with which seed, the metrics, the command."""
    row = {
        "finished": time.strftime("%Y-%m-%d %H:%M:%S"),
        "run": str(run),
        "data": str(config.data),
        "protocol": dataset.manifest.get("protocol", {}).get("name"),
        "model": config.model,
        "seed": config.seed,
        "max_length": config.max_length,
        "embedding_dim": config.model_options.get("embedding_dim", 32),
        "best_epoch": results["best_epoch"],
        "valid_auc": round(results["valid"]["auc"], 5),
        "test_auc": round(results["test"]["auc"], 5),
        "test_gauc": round(results["test"]["gauc"], 5),
        "test_logloss": round(results["test"]["logloss"], 5),
        "train_samples_per_s": round(results["train_samples_per_s"], 1),
        "command": command or " ".join(sys.argv),
    }
    write_result_row(path, row)


def evaluate_run(run: str | Path, split: str = "test", batch_size: int = 8192, index: dict | None = None,
                 data: str | Path | None = None, device: str = "auto") -> dict:
    """Evaluate a finished run's best checkpoint on a split of its dataset (P3 runs: optionally through
    a faiss ``index``, ``{"kind": ..., **params}``; see :func:`lifelong.train.retrieval.evaluate_mi`).

    The dataset is the one stored in the run (an absolute path), or ``data`` when the dataset moved; either
    way it must have the fingerprint the run was trained on (:func:`check_run_dataset`)."""
    run = Path(run)
    resolved = read_run(run)
    try:
        config = TrainConfig.from_dict(resolved["train"])
    except (TypeError, ValueError) as error:
        raise UserError(f"{run / 'config.json'}: its train options are not valid ({error}); train the run again") from None
    config.data = str(data) if data is not None else run_dataset_path(resolved)
    if data is None and not Path(config.data).exists():
        raise UserError(f"the dataset of {run} is not at {config.data} any more; pass --data with its new place")
    dataset = load_dataset(config.data)
    check_run_dataset(resolved, dataset, run)
    best = run / "checkpoints" / "best"
    if not best.is_dir():
        raise UserError(f"{run} has no best checkpoint ({best} is missing): the run ended before its first epoch "
                        f"finished; resume it (`lifelong train --out {run} --resume`)")
    model_config = load_model_config(best)
    model = build_model(model_config)
    load_weights(best, model)
    device = resolve_device(device)
    model.to(device)
    if dataset.manifest.get("protocol", {}).get("name") == "mi-split":
        if split == "train":
            raise ValueError("P3 evaluates held-out users (valid, test); its train rows are next-item positions")

        metrics = evaluate_mi(model, config, dataset, dataset.samples(split), index=index)
        name = f"eval_{split}" + (f"_{index['kind']}" if index else "")
        (run / f"{name}.json").write_text(json.dumps(metrics, indent=2))
        return metrics
    if index is not None:
        raise ValueError("--index evaluates multi-interest retrieval runs (P3 mi-split) through faiss")
    if config_from_dict(model_config).task == "retrieval":
        n_items = model_config["n_items"]
        beyond = {"item_cates": item_categories(dataset, n_items), "popularity": training_popularity(dataset, n_items)}
        metrics = evaluate_ranking(model, Collator(dataset, config.max_length, device=device), dataset.samples(split),
                                   eval_chunk(config, n_items), beyond=beyond)
        (run / f"eval_{split}.json").write_text(json.dumps(metrics, indent=2))
        return metrics
    collator, _ = collators_for(model_config, dataset, config.max_length, config.seed, training=False, device=device)
    metrics = evaluate(model, collator, dataset.samples(split), batch_size)
    (run / f"eval_{split}.json").write_text(json.dumps(metrics, indent=2))
    return metrics
