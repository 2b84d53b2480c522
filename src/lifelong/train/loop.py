"""The training loop: Adam, early stopping on validation AUC, atomic checkpoints, exact resume,
per-epoch metrics, one result line per run. Under ``torchrun`` it trains with DDP (gloo on CPU): each
rank trains on its own shard, and metrics are computed on the gathered predictions of all ranks.
"""

from __future__ import annotations

import csv
import dataclasses
import json
import os
import shutil
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable

import numpy as np
import torch
import torch.distributed as dist
import torch.nn.functional as F

from lifelong.batch import Collator, iterate_batches
from lifelong.dataset.store import PreparedDataset, SampleTable, dataset_fingerprint, load_dataset
from lifelong.errors import UserError, read_json
from lifelong.metrics import ctr_metrics
from lifelong.models import build_model, config_from_dict
from lifelong.nn import BehaviorEmbedding
from lifelong.outputs import RUN, check_output, replace_folder
from lifelong.protocols import TASK_PROTOCOLS, training_event_mask
from lifelong.train.device import check_precision, resolve_device, training_autocast
from lifelong.train.checkpoint import load_checkpoint, load_model_config, load_weights, save_checkpoint


SAMPLE_REGIMES = ("windows", "prefixes")


@dataclass
class TrainConfig:
    """Everything a run needs; saved resolved as ``config.json`` in the run folder."""

    data: str = ""
    model: str = "din"
    out: str = ""
    max_length: int = 50
    batch_size: int = 1024
    eval_batch_size: int = 8192
    epochs: int = 10
    lr: float = 1e-3
    weight_decay: float = 0.0
    patience: int = 2
    lr_decay: float = 1.0  # on a plateau: multiply the learning rate by this factor (1.0: a constant rate)
    lr_decay_patience: int = 0  # ... after every this many epochs without a better validation score (0: never)
    seed: int = 2024
    threads: int | None = None
    progress: bool = True
    results_csv: str | None = None
    save_predictions: bool = False
    refit_with_valid: bool = False  # retrieval (P2): also refit through the validation item, test that too
    desmil: bool = False  # multi-interest retrieval (P3): DESMIL's sample weighting against the interests' HSIC
    samples: str = "windows"  # sequence retrieval training rows: windows (every position of a window) or prefixes
    device: str = "auto"  # auto (CUDA when available) | cpu | cuda | cuda:N  (lifelong.train.device)
    precision: str = "fp32"  # fp32 | bf16 (autocast of the training forward pass; evaluation stays fp32)
    model_options: dict[str, Any] = field(default_factory=dict)

    def validate(self) -> None:
        if not self.data:
            raise ValueError("train: --data (a prepared dataset folder) is required")
        if not self.out:
            raise ValueError("train: --out (the run folder) is required")
        for name in ("max_length", "batch_size", "eval_batch_size", "epochs"):
            if getattr(self, name) < 1:
                raise ValueError(f"train: {name} must be at least 1, got {getattr(self, name)}")
        if self.samples not in SAMPLE_REGIMES:
            raise ValueError(f"train: samples must be one of {SAMPLE_REGIMES}, got {self.samples!r}")
        if self.lr <= 0 or self.weight_decay < 0 or self.patience < 1:
            raise ValueError("train: lr must be positive, weight_decay non-negative, patience at least 1")
        if not 0 < self.lr_decay <= 1 or self.lr_decay_patience < 0:
            raise ValueError(f"train: lr_decay must be in (0, 1] and lr_decay_patience non-negative, got "
                             f"{self.lr_decay} and {self.lr_decay_patience}")
        check_precision(self.precision)
        resolve_device(self.device)  # a CUDA request without CUDA is refused before anything is built
        if self.desmil and self.precision != "fp32":
            raise ValueError("train: --desmil needs --precision fp32 (its HSIC estimate is not safe in bfloat16)")
        if self.refit_with_valid and self.lr_decay_patience and self.lr_decay != 1:
            raise ValueError("train: --refit-with-valid replays the selected number of epochs at a constant rate; "
                             "it cannot replay a reduce-on-plateau schedule (set lr_decay_patience 0)")

    @classmethod
    def from_dict(cls, values: dict[str, Any]) -> "TrainConfig":
        known = {f.name for f in dataclasses.fields(cls)}
        unknown = sorted(set(values) - known)
        if unknown:
            raise ValueError(f"train: unknown option(s) {unknown}; known: {sorted(known)}")
        return cls(**values)


class Distributed:
    """Rank and world size; initialises NCCL when the tensors live on CUDA, gloo otherwise, when run
    under torchrun (each rank on its own GPU: ``cuda:LOCAL_RANK``)."""

    def __init__(self, device: torch.device | None = None) -> None:
        self.world_size = int(os.environ.get("WORLD_SIZE", "1"))
        self.rank = int(os.environ.get("RANK", "0"))
        self.device = device if device is not None else torch.device("cpu")
        if self.world_size > 1 and self.device.type == "cuda" and self.device.index is None:
            self.device = torch.device("cuda", int(os.environ.get("LOCAL_RANK", "0")))
        if self.world_size > 1 and not dist.is_initialized():
            dist.init_process_group("nccl" if self.device.type == "cuda" else "gloo")

    @property
    def enabled(self) -> bool:
        return self.world_size > 1

    @property
    def main(self) -> bool:
        return self.rank == 0

    def shard(self, order: np.ndarray, equal: bool) -> np.ndarray:
        """This rank's part of ``order``; ``equal`` trims so every rank runs the same number of steps."""
        if not self.enabled:
            return order
        if equal:
            order = order[: (order.shape[0] // self.world_size) * self.world_size]
        return order[self.rank :: self.world_size]

    def gather(self, arrays: tuple[np.ndarray, ...]) -> tuple[np.ndarray, ...]:
        if not self.enabled:
            return arrays
        parts: list = [None] * self.world_size
        dist.all_gather_object(parts, arrays)
        return tuple(np.concatenate([p[i] for p in parts]) for i in range(len(arrays)))


def model_config_for(config: TrainConfig, dataset: PreparedDataset) -> dict[str, Any]:
    sizes = dataset.vocab_sizes
    values = {
        "model_type": config.model,
        "n_items": sizes["item"],
        "n_cates": max(sizes.get("cate", 2), 2),
        "n_behaviors": sizes.get("behavior", 0),
        **config.model_options,
    }
    return config_from_dict(values).to_dict()


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
    evaluation = Collator(dataset, max_length, with_timestamps=needs.get("with_timestamps", False), device=device)
    if not training or not needs.get("with_negatives", False):
        return evaluation, evaluation
    return evaluation, Collator(dataset, max_length, seed=seed, device=device, **needs)


RUN_FORMAT = "lifelong-run/1"


def read_run(run: str | Path) -> dict:
    """The resolved ``config.json`` of a run folder; a missing, malformed or incomplete one is a
    :class:`UserError` naming the file."""
    run = Path(run)
    if not run.is_dir():
        raise UserError(f"{run} is not a run folder (it does not exist or is a file); pass a folder written by "
                        f"`lifelong train`")
    path = run / "config.json"
    if not path.exists():
        raise UserError(f"{run} is not a lifelong run folder: it has no config.json")
    resolved = read_json(path, "the run's config")
    missing = [key for key in ("train", "model") if not isinstance(resolved, dict) or key not in resolved]
    if missing:
        raise UserError(f"{path} lacks {', '.join(missing)}: it is not a complete lifelong run config; "
                        f"train the run again (`lifelong train ... --out {run} --overwrite`)")
    return resolved


def run_dataset_path(resolved: dict) -> str:
    """Where a run's dataset was: the absolute path stored at training (the options' path in older runs)."""
    return resolved.get("dataset", {}).get("path") or resolved["train"]["data"]


def check_run_dataset(resolved: dict, dataset: PreparedDataset, run: Path) -> None:
    """Refuse a dataset that is not the one the run was trained on, naming both fingerprints."""
    stored = resolved.get("dataset", {}).get("fingerprint")
    if stored is None and "dataset_manifest" in resolved:  # runs written before fingerprints
        stored = dataset_fingerprint(resolved["dataset_manifest"])
    found = dataset.manifest["fingerprint"]
    if stored is None or stored == found:
        return
    old = resolved.get("dataset_manifest", {})
    new = dataset.manifest

    def describe(m: dict) -> str:
        protocol = m.get("protocol", {}).get("name") if isinstance(m.get("protocol"), dict) else m.get("protocol")
        return f"protocol {protocol}, seed {m.get('seed')}, {m.get('n_events', '?'):,} events" \
            if isinstance(m.get("n_events"), int) else f"protocol {protocol}, seed {m.get('seed')}"

    raise UserError(
        f"{run} was trained on dataset {stored} ({run_dataset_path(resolved)}: {describe(old)}), but {dataset.path} "
        f"is dataset {found} ({describe(new)}): it was re-prepared or is another dataset, so the run's numbers "
        f"would not hold. Pass --data with the dataset the run was trained on, or train a new run on this one")


def check_task(model: str, protocol: str | None) -> None:
    """Refuse a model on a dataset of a protocol its task does not train on (before anything is built)."""
    from lifelong.models import MODELS

    if model not in MODELS:
        raise UserError(f"unknown model {model!r}; `lifelong models` lists them: {', '.join(sorted(MODELS))}")
    task = getattr(MODELS[model][0], "task", "ctr")
    wanted = TASK_PROTOCOLS[task]
    if protocol not in wanted:
        kind = "a CTR (ranking) model" if task == "ctr" else "a retrieval model"
        raise UserError(f"{model} is {kind}: it trains on data prepared with --protocol {' or '.join(wanted)}, "
                        f"but the dataset's protocol is {protocol!r}; prepare the data with one of those protocols "
                        f"or choose a model for {protocol!r} (`lifelong models`)")


def open_run_folder(config: TrainConfig, *, resume: bool, overwrite: bool, main: bool = True,
                    log: Callable[[str], None] | None = None) -> bool:
    """Make ``config.out`` ready for training and say whether to resume from its last checkpoint.

    A new or empty folder starts a run. An existing run continues with ``resume`` (from scratch when it
    was interrupted before its first checkpoint) or starts again with ``overwrite`` (only a run folder
    lifelong wrote, holding nothing else: :mod:`lifelong.outputs`). Anything else is refused with what
    to do. Only the main process changes the folder; the others take the same decision from it."""
    run = Path(config.out)
    has_checkpoint = (run / "checkpoints" / "last" / "trainer_state.json").exists()
    if resume:
        if not run.exists():
            raise UserError(f"--resume: {run} does not exist; start the run without --resume")
        if has_checkpoint:
            return True
        if main:  # started, but killed before its first checkpoint: nothing to continue, start it over
            replace_folder(run, RUN, inputs=[config.data])
            if log is not None:
                log(f"{run} has no checkpoint yet (it stopped before its first epoch ended): starting it from "
                    f"epoch 1 with its saved options")
        return False
    if not main:
        return False
    if run.is_dir() and any(run.iterdir()) and not overwrite and (run / "config.json").exists():
        done = "finished" if (run / "results.json").exists() else (
            "interrupted after a checkpoint" if has_checkpoint else "interrupted before its first checkpoint")
        fix = "--resume to continue it, " if has_checkpoint else "--resume (starts it again from epoch 1), "
        raise UserError(f"--out {run} already holds a training run ({done}); pass {fix}--overwrite to replace it, "
                        f"or choose another --out")
    check_output(run, RUN, inputs=[config.data], overwrite=overwrite)
    if overwrite and run.exists():
        replace_folder(run, RUN, inputs=[config.data])
    return False


def start_run(config: TrainConfig, dataset: PreparedDataset, model_config: dict, model, optimizer, best_key: str,
              resume: bool, command: str | None, main: bool = True) -> dict:
    """The trainer state of a run: restored from ``checkpoints/last`` (``resume``, after checking that the
    dataset is the run's), or fresh, after the main process has created the run folder (made ready by
    :func:`open_run_folder`) with the resolved ``config.json`` (the run's marker, with its dataset's
    absolute path and fingerprint) and ``vocab.json``. ``best_key`` names the selection metric's best value
    in the state."""
    run = Path(config.out)
    if resume:
        check_run_dataset(read_run(run), dataset, run)
        return load_checkpoint(run / "checkpoints" / "last", model, optimizer)
    if main:
        if run.exists() and any(run.iterdir()):
            raise UserError(f"--out {run} is not empty; pass --overwrite to replace it or choose another --out")
        try:
            run.mkdir(parents=True, exist_ok=True)
        except OSError as error:
            raise UserError(f"--out {run}: cannot create the run folder: {error.strerror or error}") from None
        resolved = {"format": RUN_FORMAT, "train": dataclasses.asdict(config), "model": model_config,
                    "command": command,
                    "dataset": {"path": str(Path(config.data).resolve()), "fingerprint": dataset.manifest["fingerprint"]},
                    "dataset_manifest": dataset.manifest}
        (run / "config.json").write_text(json.dumps(resolved, indent=2, default=str))
        shutil.copyfile(Path(config.data) / "vocab.json", run / "vocab.json")
    return {"epoch": 0, best_key: -1.0, "best_epoch": 0, "bad_epochs": 0, "done": False}


def end_epoch(run: Path, state: dict, best_key: str, score: float, valid: dict, record: dict, config: TrainConfig,
              model, model_config: dict, optimizer, main: bool = True) -> bool:
    """Early-stopping bookkeeping after an epoch: update ``state`` with the validation ``score``; stop after
    ``config.patience`` epochs without a better one; every ``config.lr_decay_patience`` such epochs (since
    the last better one) multiply the learning rate by ``config.lr_decay`` for the epochs that follow
    (reduce-on-plateau; the rate lives in the optimizer's state, so a resumed run keeps it). The main
    process appends ``record`` (with the rate the epoch trained at) to ``metrics.jsonl`` and writes the best
    and last checkpoints. Returns whether the epoch improved."""
    epoch = record["epoch"]
    record["lr"] = optimizer.param_groups[0]["lr"]
    improved = score > state[best_key]
    state.update(epoch=epoch, bad_epochs=0 if improved else state["bad_epochs"] + 1)
    if improved:
        state.update({best_key: score, "best_epoch": epoch, "best_valid": valid})
    state["done"] = state["bad_epochs"] >= config.patience
    if config.lr_decay_patience and not improved and state["bad_epochs"] % config.lr_decay_patience == 0:
        for group in optimizer.param_groups:
            group["lr"] *= config.lr_decay
    if main:
        with open(run / "metrics.jsonl", "a") as handle:
            handle.write(json.dumps(record) + "\n")
        if improved:
            save_checkpoint(run / "checkpoints" / "best", model, model_config, state)
        save_checkpoint(run / "checkpoints" / "last", model, model_config, state, optimizer)
    return improved


def _config_class(name: str):
    from lifelong.models import MODELS

    return MODELS[name][0] if name in MODELS else None


def _set_counts(model: torch.nn.Module, dataset: PreparedDataset) -> None:
    """Id frequencies for the mini-batch aware regulariser, counted over the events training sees
    (:func:`lifelong.protocols.training_event_mask`): validation and test targets do not count."""
    embedding = getattr(model, "embedding", None)
    if not isinstance(embedding, BehaviorEmbedding):
        return
    seen = dataset.event_items[training_event_mask(dataset.offsets, dataset.samples("train"))]
    for counts, ids in ((embedding.item_counts, dataset.item_idx[seen]),
                        (embedding.cate_counts, dataset.item_cate[seen])):
        counts.copy_(torch.from_numpy(np.bincount(ids, minlength=counts.shape[0])[: counts.shape[0]]).float())


def dataset_protocol(path: str | Path) -> str | None:
    """The protocol a prepared dataset folder was prepared with (read from its manifest alone)."""
    manifest = Path(path) / "manifest.json"
    if not manifest.exists():
        raise UserError(f"--data {path} is not a prepared dataset (no manifest.json); run `lifelong prepare` first")
    values = read_json(manifest, "the prepared dataset's manifest")
    protocol = values.get("protocol") if isinstance(values, dict) else None
    return protocol.get("name") if isinstance(protocol, dict) else None


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
    if config.model and getattr(_config_class(config.model), "task", "ctr") == "retrieval":
        from lifelong.train.retrieval import train_retrieval

        return train_retrieval(config, resume=resume, command=command, on_epoch_end=on_epoch_end)
    ctx = Distributed(resolve_device(config.device))
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
    autocast = training_autocast(config.precision, device)

    while not state["done"] and state["epoch"] < config.epochs:
        epoch = state["epoch"] + 1
        torch.manual_seed(config.seed * 1000 + epoch)  # dropout etc. restart exactly on resume
        order = np.random.default_rng([config.seed, epoch]).permutation(len(train_samples))
        order = ctx.shard(order, equal=True)
        net.train()
        loss_sum, seen, started = 0.0, 0, time.perf_counter()
        with _progress(config.progress and ctx.main, f"epoch {epoch}", order.shape[0]) as advance:
            for batch in iterate_batches(train_collator, train_samples, config.batch_size, order):
                if len(batch) < 2:  # batch statistics (Dice) need two samples
                    continue
                with autocast:
                    output = net(batch)
                loss = F.binary_cross_entropy_with_logits(output.logits.float(), batch.labels)
                total = loss + sum(output.aux_losses.values()) if output.aux_losses else loss
                optimizer.zero_grad(set_to_none=True)
                total.backward()
                optimizer.step()
                loss_sum += loss.detach() * len(batch)  # a device tensor: no host synchronisation per step
                seen += len(batch)
                advance(len(batch))
        loss_sum = float(loss_sum)
        seconds = time.perf_counter() - started
        valid = evaluate(model, collator, valid_samples, config.eval_batch_size, ctx)
        record = {"epoch": epoch, "train_logloss": loss_sum / max(seen, 1),
                  "train_samples_per_s": seen * ctx.world_size / seconds, "train_seconds": seconds,
                  **{f"valid_{k}": v for k, v in valid.items()}}
        end_epoch(run, state, "best_auc", valid["auc"], valid, record, config, model, model_config,
                  optimizer, ctx.main)
        if ctx.main:
            _log(config, f"epoch {epoch}: train logloss {record['train_logloss']:.4f}, "
                         f"{record['train_samples_per_s']:,.0f} samples/s, valid AUC {valid['auc']:.4f} "
                         f"GAUC {valid['gauc']:.4f} logloss {valid['logloss']:.4f}")
        if ctx.enabled:
            dist.barrier()
        if on_epoch_end is not None:
            on_epoch_end(epoch, record)

    load_weights(run / "checkpoints" / "best", model)
    speeds = [json.loads(line)["train_samples_per_s"] for line in (run / "metrics.jsonl").read_text().splitlines()] if ctx.main else [0.0]
    results = {
        "best_epoch": state["best_epoch"],
        "epochs_run": state["epoch"],
        "train_samples_per_s": float(np.median(speeds[1:] or speeds)),  # after the warm-up epoch
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


def write_result_row(path: Path, row: dict) -> None:
    """Append ``row`` to the CSV at ``path`` (with a header when the file is new)."""
    path.parent.mkdir(parents=True, exist_ok=True)
    new = not path.exists()
    if not new:
        with open(path, newline="") as handle:
            header = next(csv.reader(handle), [])
        if header and header != list(row):
            raise ValueError(f"{path} holds result lines of another kind (its columns differ, e.g. another "
                             f"protocol); pass another --results-csv")
    with open(path, "a", newline="") as handle:
        writer = csv.DictWriter(handle, fieldnames=list(row))
        if new:
            writer.writeheader()
        writer.writerow(row)


def _log(config: TrainConfig, message: str) -> None:
    if config.progress:
        from rich.console import Console

        Console(stderr=True).print(message)
    else:
        print(message, file=sys.stderr)


class _progress:
    """A rich progress bar with samples/s, or nothing when disabled."""

    def __init__(self, enabled: bool, label: str, total: int) -> None:
        self.enabled, self.label, self.total = enabled, label, total

    def __enter__(self):
        if not self.enabled:
            return lambda n: None
        from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn

        self.bar = Progress(TextColumn("{task.description}"), BarColumn(), MofNCompleteColumn(),
                            TextColumn("{task.fields[rate]} samples/s"), TimeElapsedColumn(), transient=True)
        self.bar.__enter__()
        task = self.bar.add_task(self.label, total=self.total, rate="-")
        start = time.perf_counter()
        done = [0]

        def advance(n: int) -> None:
            done[0] += n
            rate = done[0] / max(time.perf_counter() - start, 1e-9)
            self.bar.update(task, advance=n, rate=f"{rate:,.0f}")

        return advance

    def __exit__(self, *exc) -> None:
        if self.enabled:
            self.bar.__exit__(*exc)


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
        from lifelong.train.retrieval import evaluate_mi

        if split == "train":
            raise ValueError("P3 evaluates held-out users (valid, test); its train rows are next-item positions")

        metrics = evaluate_mi(model, config, dataset, dataset.samples(split), index=index)
        name = f"eval_{split}" + (f"_{index['kind']}" if index else "")
        (run / f"{name}.json").write_text(json.dumps(metrics, indent=2))
        return metrics
    if index is not None:
        raise ValueError("--index evaluates multi-interest retrieval runs (P3 mi-split) through faiss")
    if getattr(model, "task", "ctr") == "retrieval":
        from lifelong.train.ranking import evaluate_ranking, item_categories, training_popularity
        from lifelong.train.retrieval import eval_chunk

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
