"""A run and its folder, shared by every training run (CTR in :mod:`lifelong.train.loop`, retrieval in
:mod:`lifelong.train.retrieval`, both through the one loop of :mod:`lifelong.train.epoch`): the resolved
options (:class:`TrainConfig`), the distributed context, the run folder's life (made ready, started with
its ``config.json``, the dataset it knows, checkpoints and early stopping after each epoch, result lines)
and the console output. It imports only the checkpoint and device modules of the package, so no cycle
runs through it.
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

from lifelong.dataset.store import PreparedDataset, dataset_fingerprint
from lifelong.errors import UserError, read_json
from lifelong.models import MODELS, config_from_dict
from lifelong.outputs import RUN, check_output, replace_folder
from lifelong.protocols import TASK_PROTOCOLS
from lifelong.train.checkpoint import load_checkpoint, save_checkpoint
from lifelong.train.device import check_precision, resolve_device


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
    clip_norm: float = 0.0  # clip the gradients' global norm to this before every step (0: no clipping)
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
        if not self.clip_norm >= 0:
            raise ValueError(f"train: clip_norm must be non-negative (0: no clipping), got {self.clip_norm}")
        check_precision(self.precision)
        resolve_device(self.device)  # a CUDA request without CUDA is refused before anything is built
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
    under torchrun (each rank on its own GPU: ``cuda:LOCAL_RANK``).

    Used as a context manager, it ends the process group it started: after a last barrier when the body
    finished, at once when it raised. A rank that leaves with its gloo group still open can abort at exit
    ("terminate called without an active exception") while the others still write the results."""

    def __init__(self, device: torch.device | None = None) -> None:
        self.world_size = int(os.environ.get("WORLD_SIZE", "1"))
        self.rank = int(os.environ.get("RANK", "0"))
        self.device = device if device is not None else torch.device("cpu")
        if self.world_size > 1 and self.device.type == "cuda" and self.device.index is None:
            self.device = torch.device("cuda", int(os.environ.get("LOCAL_RANK", "0")))
        self.owned = self.world_size > 1 and not dist.is_initialized()
        if self.owned:
            dist.init_process_group("nccl" if self.device.type == "cuda" else "gloo")

    def __enter__(self) -> "Distributed":
        return self

    def __exit__(self, kind, value, traceback) -> None:
        if self.owned and dist.is_initialized():
            if kind is None:
                dist.barrier()  # every rank is done before any group is torn down
            dist.destroy_process_group()

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
    if "features" in config.model_options:
        raise UserError("--set features: the feature declarations come from the dataset's manifest; turn a group "
                        "off with --set user_features=false (or item_features, context_features)")
    config_class = MODELS[config.model][0] if config.model in MODELS else None
    if config_class is not None and "features" in {f.name for f in dataclasses.fields(config_class)}:
        values["features"] = [dict(f) for f in dataset.features]  # the manifest's declarations, like the sizes
    return config_from_dict(values).to_dict()


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
        events = f", {m['n_events']:,} events" if isinstance(m.get("n_events"), int) else ""
        return f"protocol {(m.get('protocol') or {}).get('name')}, seed {m.get('seed')}{events}"

    raise UserError(
        f"{run} was trained on dataset {stored} ({run_dataset_path(resolved)}: {describe(old)}), but {dataset.path} "
        f"is dataset {found} ({describe(new)}): it was re-prepared or is another dataset, so the run's numbers "
        f"would not hold. Pass --data with the dataset the run was trained on, or train a new run on this one")


def check_task(model: str, protocol: str | None) -> None:
    """Refuse a model on a dataset of a protocol its task does not train on (before anything is built)."""
    if model not in MODELS:
        raise UserError(f"unknown model {model!r}; `lifelong models` lists them: {', '.join(sorted(MODELS))}")
    task = MODELS[model][0].task
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
    if overwrite:  # checks the folder (as check_output does), then removes it if it exists
        replace_folder(run, RUN, inputs=[config.data])
    else:
        check_output(run, RUN, inputs=[config.data])
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


def dataset_protocol(path: str | Path) -> str | None:
    """The protocol a prepared dataset folder was prepared with (read from its manifest alone)."""
    manifest = Path(path) / "manifest.json"
    if not manifest.exists():
        raise UserError(f"--data {path} is not a prepared dataset (no manifest.json); run `lifelong prepare` first")
    values = read_json(manifest, "the prepared dataset's manifest")
    protocol = values.get("protocol") if isinstance(values, dict) else None
    return protocol.get("name") if isinstance(protocol, dict) else None


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


def _stderr_console():
    """A rich console on stderr when it is a terminal (or a notebook); ``None`` for a pipe or a file."""
    from rich.console import Console

    console = Console(stderr=True)
    return console if console.is_terminal or console.is_jupyter else None


def _log(config: TrainConfig, message: str) -> None:
    """One line of a run's progress (an epoch's line...) on stderr: through rich in a terminal, as a plain
    line otherwise (never wrapped: a log file gets exactly one line per message)."""
    console = _stderr_console() if config.progress else None
    if console is not None:
        console.print(message, soft_wrap=True, highlight=False, markup=False)
    else:
        print(message, file=sys.stderr, flush=True)


class _progress:
    """Within an epoch, in a terminal (or a notebook): a rich progress bar on stderr with samples/s, the
    elapsed time and the ETA, gone when the epoch ends (its line is logged then). Nothing when disabled
    or when stderr is not a terminal: a log file gets the epoch's line alone."""

    def __init__(self, enabled: bool, label: str, total: int) -> None:
        self.enabled, self.label, self.total = enabled, label, total
        self.bar = None

    def __enter__(self):
        console = _stderr_console() if self.enabled else None
        if console is None:
            return lambda n: None
        from rich.progress import (BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn,
                                   TimeRemainingColumn)

        self.bar = Progress(TextColumn("{task.description}"), BarColumn(), MofNCompleteColumn(),
                            TextColumn("{task.fields[rate]} samples/s"), TimeElapsedColumn(),
                            TextColumn("ETA"), TimeRemainingColumn(), console=console, transient=True)
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
        if self.bar is not None:
            self.bar.__exit__(*exc)
