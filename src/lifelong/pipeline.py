"""``prepare``: event log -> prepared dataset folder with the sample tables of one protocol.

Written into a temporary sibling folder and renamed at the end, so a failed or interrupted run leaves
no half-written dataset behind.
"""

from __future__ import annotations

import hashlib
import json
import os
import shutil
import time
from dataclasses import asdict, dataclass
from pathlib import Path

import numpy as np

import lifelong
from lifelong.data.schema import EventLog
from lifelong.errors import UserError
from lifelong.dataset.prepare import prepare_dataset
from lifelong.dataset.store import SPLITS, dataset_fingerprint, load_dataset
from lifelong.protocols import (PROTOCOLS, P2_MIN_EVENTS, P3_MIN_EVENTS, USER_ORDERS, InteractionIndex,
                                ctr_din_samples, ctr_time_samples, mi_split_samples, seq_loo_samples, time_cuts)
from lifelong.protocols.ctr import P1_MIN_EVENTS
from lifelong.protocols.long import P5_MIN_EVENTS, ctr_long_samples
from lifelong.outputs import DATASET, TMP_MARKER, check_output, make_temporary, replace_folder


@dataclass
class ProtocolOptions:
    """Which protocol makes the samples, and its knobs (defaults of docs/protocols.md)."""

    name: str = "ctr-din"
    seed: int = 2024
    max_train_per_user: int | None = None  # P1: keep only the most recent training targets per user
    t_valid: int | None = None  # P4: cut points (unix seconds); default the 80% / 90% quantiles
    t_test: int | None = None
    positive_behaviors: tuple[str, ...] | None = None  # P4: behaviors that are positive targets (default all)
    user_order: str = "random"  # P3: random user split (the protocol) or "time" (the shifted split)
    min_events: int | None = None  # P5: drop users with fewer events (default 20)

    def __post_init__(self) -> None:
        if self.name not in PROTOCOLS:
            raise ValueError(f"unknown protocol {self.name!r}; expected one of {PROTOCOLS}")
        if self.max_train_per_user is not None and self.max_train_per_user < 1:
            raise ValueError("max_train_per_user must be at least 1")
        if self.user_order not in USER_ORDERS:
            raise ValueError(f"user_order must be one of {USER_ORDERS}, got {self.user_order!r}")
        if self.min_events is not None and (self.name != "ctr-long" or self.min_events < 2):
            raise ValueError("min_events is P5's (ctr-long) and at least 2 (a validation and a test target)")


DATASET_FILES = ("events.parquet", "users.parquet", "items.parquet", "vocab.json",
                 *(f"samples/{split}.parquet" for split in SPLITS))


def file_md5(path: Path) -> str:
    with open(path, "rb") as handle:
        return hashlib.file_digest(handle, "md5").hexdigest()


def prepare(log: EventLog, out: str | Path, protocol: ProtocolOptions | None = None, *, overwrite: bool = False) -> Path:
    """Prepare ``log`` into the dataset folder ``out`` (atomically) and return its path.

    An existing ``out`` is replaced only with ``overwrite`` and only when it is a dataset lifelong wrote
    that holds nothing else and none of the log's sources (:mod:`lifelong.outputs`)."""
    protocol = protocol or ProtocolOptions()
    out = Path(out)
    check_output(out, DATASET, inputs=log.sources, overwrite=overwrite)
    try:
        out.parent.mkdir(parents=True, exist_ok=True)
        tmp = make_temporary(out)
    except OSError as error:
        raise UserError(f"--out {out}: cannot create the dataset folder: {error.strerror or error}") from None
    try:
        _prepare_into(log, tmp, protocol)
        (tmp / TMP_MARKER).unlink()
        if out.exists():
            replace_folder(out, DATASET, inputs=log.sources)
        os.replace(tmp, out)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    return out


def _prepare_into(log: EventLog, folder: Path, protocol: ProtocolOptions) -> None:
    started = time.time()
    cuts = None
    if protocol.name == "ctr-time":
        if protocol.t_valid is not None and protocol.t_test is not None:
            cuts = (protocol.t_valid, protocol.t_test)
        else:
            auto = time_cuts(log.events["timestamp"].to_numpy())
            cuts = (protocol.t_valid or auto[0], protocol.t_test or auto[1])
    summary = prepare_dataset(
        log.events, log.items, folder,
        min_events={"ctr-din": P1_MIN_EVENTS, "seq-loo": P2_MIN_EVENTS, "mi-split": P3_MIN_EVENTS,
                    "ctr-long": protocol.min_events or P5_MIN_EVENTS}.get(protocol.name, 1),
        vocab_cutoff=cuts[0] if cuts else None, protocol=protocol.name,
    )
    dataset = load_dataset_arrays(folder, summary)
    index = InteractionIndex.build(dataset.offsets, dataset.event_items, summary["n_item_rows"])
    if protocol.name == "seq-loo":
        samples = seq_loo_samples(dataset.offsets, dataset.event_items)
    elif protocol.name == "mi-split":
        samples = mi_split_samples(dataset.offsets, dataset.event_items, protocol.seed, protocol.user_order,
                                   dataset.event_timestamps)
    elif protocol.name == "ctr-long":
        samples = ctr_long_samples(dataset.offsets, dataset.event_items, summary["n_item_rows"], seed=protocol.seed,
                                   index=index)
    elif protocol.name == "ctr-din":
        samples = ctr_din_samples(
            dataset.offsets, dataset.event_items, summary["n_item_rows"],
            seed=protocol.seed, max_train_per_user=protocol.max_train_per_user, index=index,
        )
    else:
        positive = None
        if protocol.positive_behaviors:
            if dataset.event_behaviors is None:
                raise ValueError("--positive-behaviors needs a behavior column in the log")
            vocab = json.loads((folder / "vocab.json").read_text())["behavior"]
            unknown = [b for b in protocol.positive_behaviors if b not in vocab]
            if unknown:  # silently ignored, a misspelt name would leave fewer (or no) positives
                raise UserError(f"--positive-behaviors: {', '.join(map(repr, unknown))} never occur before the "
                                f"validation cut; the behaviors there are {', '.join(map(repr, vocab))}")
            wanted = [vocab.index(b) + 2 for b in protocol.positive_behaviors]
            positive = np.isin(dataset.event_behaviors, wanted)
        samples = ctr_time_samples(
            dataset.offsets, dataset.event_items, dataset.event_timestamps, summary["n_item_rows"],
            t_valid=cuts[0], t_test=cuts[1], positive=positive, seed=protocol.seed, index=index,
        )
    (folder / "samples").mkdir()
    sample_counts = {}
    for split in SPLITS:
        table = samples[split]
        table.to_frame().write_parquet(folder / "samples" / f"{split}.parquet")
        sample_counts[split] = len(table)
    train_end = samples["train"].end
    rejected = 0
    if log.rejected is not None:
        rejected = log.rejected.height
        log.rejected.write_csv(folder / "rejected.csv")
    manifest = {
        "format": "lifelong-dataset/1",
        "library_version": lifelong.__version__,
        "created": time.strftime("%Y-%m-%dT%H:%M:%S%z"),
        "recipe": log.recipe,
        "sources": [
            {"path": str(Path(p).resolve()), "md5": file_md5(Path(p)), "bytes": Path(p).stat().st_size}
            for p in log.sources
        ],
        "protocol": {**asdict(protocol), "t_valid": cuts[0] if cuts else None, "t_test": cuts[1] if cuts else None},
        "seed": protocol.seed,
        **summary,
        "samples": sample_counts,
        "mean_train_history": float(train_end.mean()) if train_end.size else 0.0,
        "rejected_rows": rejected,
        "seconds": round(time.time() - started, 2),
        # checksums of the written tables: the dataset's fingerprint covers its content, not just its counts
        "files": {name: file_md5(folder / name) for name in DATASET_FILES if (folder / name).exists()},
    }
    manifest["fingerprint"] = dataset_fingerprint(manifest)
    (folder / "manifest.json").write_text(json.dumps(manifest, indent=2))


def load_dataset_arrays(folder: Path, summary: dict):
    """Load the just-written columns through the same reader training uses."""
    (folder / "manifest.json").write_text(json.dumps(summary))
    return load_dataset(folder)
