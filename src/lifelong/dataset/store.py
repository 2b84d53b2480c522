"""Reading a prepared dataset folder.

Layout (written by :func:`lifelong.dataset.prepare.prepare_dataset`)::

    events.parquet    user_row, item_row, timestamp[, behavior][, label]  sorted by user then time
    users.parquet     user_row -> user_id, user_idx (vocabulary index), offset, count   (CSR)
    items.parquet     item_row -> item_id, item_idx, cate_idx[, attr_idx][, title][, embedding]
    vocab.json        raw id lists per field, in index order starting at index 2
    samples/{train,valid,test}.parquet   user, end, target, label[, timestamp]
    manifest.json     counts, source checksums, recipe, protocol, seed, library version

Rows and vocabulary indices are kept apart on purpose: a row addresses storage (every user and item
of the log has one), a vocabulary index addresses an embedding (0 = padding, 1 = unknown, fitted on the
training part only, so an item first seen after the training cut has a row but index 1).
"""

from __future__ import annotations

import hashlib
import json
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import polars as pl

from lifelong.errors import UserError, read_json

PAD = 0
UNKNOWN = 1
SPLITS = ("train", "valid", "test")


@dataclass
class SampleTable:
    """Integer sample rows ``(user, end, target, label[, timestamp])``; never a padded history.

    The history of sample ``i`` is ``events[offset[user[i]] : offset[user[i]] + end[i]]``.
    """

    user: np.ndarray  # (N,) int32 user rows
    end: np.ndarray  # (N,) int32 number of events before the target
    target: np.ndarray  # (N,) int32 item rows
    label: np.ndarray  # (N,) float32 in {0, 1}
    timestamp: np.ndarray | None = None  # (N,) int64, P4 only

    def __len__(self) -> int:
        return int(self.user.shape[0])

    def subset(self, index: np.ndarray) -> "SampleTable":
        return SampleTable(
            self.user[index], self.end[index], self.target[index], self.label[index],
            None if self.timestamp is None else self.timestamp[index],
        )

    def to_frame(self) -> pl.DataFrame:
        columns = {"user": self.user, "end": self.end, "target": self.target, "label": self.label.astype(np.int8)}
        if self.timestamp is not None:
            columns["timestamp"] = self.timestamp
        return pl.DataFrame(columns)

    @classmethod
    def from_frame(cls, frame: pl.DataFrame) -> "SampleTable":
        return cls(
            user=frame["user"].to_numpy().astype(np.int32, copy=False),
            end=frame["end"].to_numpy().astype(np.int32, copy=False),
            target=frame["target"].to_numpy().astype(np.int32, copy=False),
            label=frame["label"].to_numpy().astype(np.float32),
            timestamp=frame["timestamp"].to_numpy() if "timestamp" in frame.columns else None,
        )


@dataclass
class PreparedDataset:
    """A prepared dataset in memory: flat event columns plus CSR offsets, and the item table."""

    path: Path
    manifest: dict
    offsets: np.ndarray  # (n_users + 1,) int64
    event_items: np.ndarray  # (n_events,) int32 item rows
    event_timestamps: np.ndarray  # (n_events,) int64
    event_behaviors: np.ndarray | None  # (n_events,) int16 vocabulary index, or None
    item_idx: np.ndarray  # (n_item_rows,) int64 item vocabulary index per item row
    item_cate: np.ndarray  # (n_item_rows,) int64 category vocabulary index per item row
    user_idx: np.ndarray  # (n_users,) int64 user vocabulary index per user row
    vocab_sizes: dict[str, int]
    features: list[dict] = field(default_factory=list)  # the manifest's feature declarations (see FEATURE_KINDS)
    user_features: dict[str, np.ndarray] = field(default_factory=dict)  # name -> (n_users,) int64 index / float32
    item_attrs: np.ndarray | None = None  # (n_item_rows, A) int64 attribute-bag indices, 0-padded; or None
    item_dense: np.ndarray | None = None  # (n_item_rows, D) float32 item content vectors (0 at padding); or None
    _samples: dict[str, SampleTable] = field(default_factory=dict, repr=False)

    @property
    def n_users(self) -> int:
        return int(self.offsets.shape[0] - 1)

    @property
    def n_events(self) -> int:
        return int(self.event_items.shape[0])

    def samples(self, split: str) -> SampleTable:
        """The sample table of a split (``train``, ``valid`` or ``test``), loaded once."""
        if split not in SPLITS:
            raise ValueError(f"split must be one of {SPLITS}, got {split!r}")
        if split not in self._samples:
            path = self.path / "samples" / f"{split}.parquet"
            if not path.exists():
                raise FileNotFoundError(f"{path} is missing: was the dataset prepared with a protocol?")
            self._samples[split] = SampleTable.from_frame(_read_table(path))
        return self._samples[split]

    def feature(self, name: str, group: str) -> dict | None:
        """The declaration of feature ``name`` of ``group`` (``user``, ``item``, ``context``), or None."""
        return next((f for f in self.features if f["name"] == name and f["group"] == group), None)

    def history(self, user_row: int, end: int) -> np.ndarray:
        """Item rows of one sample's full (untruncated) history, for inspection and tests."""
        start = int(self.offsets[user_row])
        return self.event_items[start : start + end]


FINGERPRINT_FIELDS = ("format", "recipe", "protocol", "seed", "n_events", "n_users", "n_items", "vocab_sizes",
                      "samples", "rejected_rows", "files", "features")

FEATURE_GROUPS = ("user", "item", "context")
FEATURE_KINDS = ("categorical", "bag", "dense", "numeric")
"""Features beyond ids, declared in ``manifest["features"]`` (a list; datasets prepared before features
have none), each ``{"name", "group", "kind", ...}``:

- ``user`` ``categorical`` (``vocab_size``; ``users.parquet`` column ``uf_<name>``, index per user row) or
  ``numeric`` (``mean``, ``std`` for standardising; ``uf_<name>``, a number per user row, null if missing);
- ``item`` ``bag`` ``attr`` (``vocab_size``, ``max_length``: the attribute indices of each item,
  ``items.parquet`` column ``attr_idx``) and ``dense`` ``embedding`` (``dim``: a content vector per item);
- ``context`` ``categorical`` ``behavior`` (``vocab_size``; the behavior type of each event).

An item's id and category are not in the list: every model reads them."""


def dataset_fingerprint(manifest: dict) -> str:
    """A short hash of what makes a prepared dataset what it is: its sources' checksums (not their paths),
    recipe, protocol and seed, counts and vocabulary sizes, and the checksums of its tables. Two
    preparations of the same log with the same options have the same fingerprint; another seed, protocol,
    log or edit of a table gives another. Timestamps and run times are left out."""
    subset = {key: manifest.get(key) for key in FINGERPRINT_FIELDS}
    subset["sources"] = sorted((s.get("md5"), s.get("bytes")) for s in manifest.get("sources", []))
    text = json.dumps(subset, sort_keys=True, default=str)
    return hashlib.sha256(text.encode()).hexdigest()[:16]


def load_dataset(path: str | Path) -> PreparedDataset:
    """Load a prepared dataset folder (events as flat numpy columns, no per-sample copies)."""
    path = Path(path)
    manifest_path = path / "manifest.json"
    if not manifest_path.exists():
        raise FileNotFoundError(f"{path} is not a prepared dataset (no manifest.json); run `lifelong prepare` first")
    manifest = read_json(manifest_path, "the prepared dataset's manifest")
    if not isinstance(manifest, dict) or "vocab_sizes" not in manifest:
        raise UserError(f"{manifest_path} is not a lifelong dataset manifest; prepare the dataset again "
                        f"(`lifelong prepare ... --out {path} --overwrite`)")
    manifest.setdefault("fingerprint", dataset_fingerprint(manifest))  # datasets prepared before fingerprints
    events = _read_table(path / "events.parquet", _event_columns(manifest))
    features = [dict(f) for f in manifest.get("features") or []]
    _check_features(features, path)
    users = _read_table(path / "users.parquet",  # each table read once, with its declared feature columns
                        ["user_idx", "offset", "count", *(f"uf_{f['name']}" for f in features if f["group"] == "user")])
    item_side = [{"attr": "attr_idx", "embedding": "embedding"}[f["name"]] for f in features
                 if f["group"] == "item" and f["name"] in ("attr", "embedding")]
    items = _read_table(path / "items.parquet", ["item_idx", "cate_idx", *item_side])
    offsets = np.zeros(users.height + 1, dtype=np.int64)
    offsets[1:] = np.cumsum(users["count"].to_numpy())
    behaviors = events["behavior"].to_numpy().astype(np.int16) if "behavior" in events.columns else None
    dataset = PreparedDataset(
        path=path,
        manifest=manifest,
        offsets=offsets,
        event_items=events["item_row"].to_numpy().astype(np.int32, copy=False),
        event_timestamps=events["timestamp"].to_numpy().astype(np.int64, copy=False),
        event_behaviors=behaviors,
        item_idx=items["item_idx"].to_numpy().astype(np.int64),
        item_cate=items["cate_idx"].to_numpy().astype(np.int64),
        user_idx=users["user_idx"].to_numpy().astype(np.int64),
        vocab_sizes=dict(manifest["vocab_sizes"]),
        features=features,
    )
    del events
    _load_features(dataset, users, items)
    return dataset


def _check_features(features: list[dict], path: Path) -> None:
    """Refuse a declaration this version does not know (a dataset prepared by another version)."""
    for feature in features:
        if feature.get("group") not in FEATURE_GROUPS or feature.get("kind") not in FEATURE_KINDS:
            raise UserError(f"{path / 'manifest.json'} declares a feature lifelong does not know ({feature}); "
                            f"prepare the dataset again with this version of lifelong")


def _load_features(dataset: PreparedDataset, users: pl.DataFrame, items: pl.DataFrame) -> None:
    """The declared features' columns of the user and item tables: per user row, per item row (bags padded
    per item, not per sample)."""
    for feature in dataset.features:
        if feature["group"] == "user":
            values = users[f"uf_{feature['name']}"]
            if feature["kind"] == "numeric":
                dataset.user_features[feature["name"]] = values.cast(pl.Float32).fill_null(float(feature["mean"])).to_numpy()
            else:
                dataset.user_features[feature["name"]] = values.cast(pl.Int64).fill_null(UNKNOWN).to_numpy()
    bag = dataset.feature("attr", "item")
    dense = dataset.feature("embedding", "item")
    if bag:
        lists = items["attr_idx"].list.head(bag["max_length"])  # ids from 2, one per attribute (null: none)
        width = max(int(bag["max_length"]), 1)
        padded = np.zeros((items.height, width), dtype=np.int64)
        lengths = lists.list.len().fill_null(0).to_numpy().astype(np.int64)
        rows = np.repeat(np.arange(items.height), lengths)
        cols = np.arange(lengths.sum()) - np.repeat(np.cumsum(lengths) - lengths, lengths)
        padded[rows, cols] = lists.explode().drop_nulls().to_numpy()
        dataset.item_attrs = padded
    if dense:
        vectors = np.zeros((items.height, int(dense["dim"])), dtype=np.float32)
        present = items["embedding"].is_not_null().to_numpy()
        if present.any():
            vectors[present] = np.stack(items["embedding"].filter(pl.Series(present)).to_list()).astype(np.float32)
        dataset.item_dense = vectors


def _read_table(path: Path, columns: list[str] | None = None) -> pl.DataFrame:
    """A table of the prepared dataset; a missing or damaged file is a :class:`UserError` naming it."""
    try:
        return pl.read_parquet(path, columns=columns)
    except FileNotFoundError:
        raise UserError(f"{path} is missing: the prepared dataset is incomplete; prepare it again") from None
    except (pl.exceptions.PolarsError, OSError) as error:
        first = str(error).strip().splitlines()[0][:200] if str(error).strip() else type(error).__name__
        raise UserError(f"{path} is damaged or not a lifelong table ({first}); prepare the dataset again") from None


def _event_columns(manifest: dict) -> list[str]:
    columns = ["item_row", "timestamp"]
    if manifest.get("has_behavior"):
        columns.append("behavior")
    return columns
