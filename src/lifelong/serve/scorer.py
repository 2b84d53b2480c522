"""The :class:`Scorer`: a trained model behind raw ids, for serving and for the Python API.

It is built from a run folder (the best checkpoint and the run's dataset) or from an artifact written by
``lifelong export`` (:mod:`lifelong.serve.artifact`, verified before anything is read), and turns raw ids
into the model's batches exactly as the offline evaluation does (:class:`lifelong.batch.Collator`): the most
recent ``L`` history events, time order, item categories and side features from the item table, the event
context, the user's features. Unknown ids map to the unknown index (1) and are counted (:attr:`Scorer.unknown`).

Ranking goes through the model's two halves (:class:`lifelong.models.ranking.RankingModel`):
``encode_user`` (one state per user, which a server may cache) and ``score`` (all of a user's candidates
at once). Histories are padded to ``L`` (the models are padding-invariant, tested), so the states of any
users have the same shape and can be stacked into one ``score`` call (micro-batching). Retrieval encodes
the user's vector(s) and searches a faiss index over the item vectors, several interests merged by score
as :meth:`lifelong.index.ItemIndex.search_interests` does offline.

Example:
    >>> scorer = Scorer.from_path("runs/din")                        # doctest: +SKIP
    >>> scorer.rank(["i3", "i7", "i9"], candidates=["i1", "i2"])     # doctest: +SKIP
    [-0.41, 1.73]
    >>> retriever = Scorer.from_path("runs/sasrec")                  # doctest: +SKIP
    >>> retriever.retrieve(["i3", "i7"], k=10)                       # doctest: +SKIP
    (['i12', ...], [4.1, ...])
"""

from __future__ import annotations

import dataclasses
import threading
import time
from collections import Counter
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Iterable, Sequence

import numpy as np
import torch

from lifelong.errors import UserError

PAD, UNKNOWN, FIRST_INDEX = 0, 1, 2
RawId = str | int


@dataclass
class History:
    """One user's behavior history, oldest first, with raw ids.

    Attributes:
        items: raw item ids (strings or integers), time order (the most recent last).
        behaviors: one behavior type per event (raw strings, None where unknown), or None.
        timestamps: one unix time (seconds) per event, or None.
        user_id: the user's raw id (for the user features), or None.
        context: request context: a value per user feature name overrides the stored one; ``timestamp``
            (unix seconds) is the time the candidates are scored at (time-aware models; default now).
    """

    items: Sequence[RawId]
    behaviors: Sequence[str | None] | None = None
    timestamps: Sequence[int] | None = None
    user_id: RawId | None = None
    context: dict[str, Any] | None = None


class Scorer:
    """Rank candidates and retrieve items for a user's history, on raw ids.

    Build with :meth:`from_path` (a run folder or an artifact). Thread-safe for inference (no gradients,
    eval mode; the unknown-id counters take a lock).

    Methods on raw ids:
        ``rank(history_items, candidates, context=None, *, history_behaviors=None, history_timestamps=None,
        user_id=None) -> list[float]``: one logit per candidate, in order (ranking models).
        ``retrieve(history_items, k, exclude_seen=None, *, history_behaviors=None, history_timestamps=None,
        user_id=None) -> (items, scores)``: the top ``k`` raw item ids and their scores, best first
        (retrieval models); ``exclude_seen`` removes the history's items (default: the protocol's choice,
        True under P2, False under P3).

    Building blocks (a server batches with them): :meth:`encode` (histories -> user state or vectors),
    :meth:`score_states` (states + candidate lists -> score lists), :meth:`search` (vectors -> top-k),
    :func:`concat_states`.

    Attributes:
        task: ``ctr`` (ranking) or ``retrieval``.
        model_type, max_length (``L``), model (the ``nn.Module``, eval mode).
        unknown: counts of unknown ids met (``item``, ``behavior``, ``user``).
    """

    def __init__(self, model: torch.nn.Module, model_config: dict, serving: dict, vocab: dict,
                 items: dict[str, Any], users: dict[str, Any] | None, index=None, source: str = "") -> None:
        self.model = model.eval()
        self.model_config = model_config
        self.serving = serving
        self.task = serving["task"]
        self.model_type = serving["model_type"]
        self.max_length = int(serving["max_length"])
        self.with_timestamps = bool(serving.get("with_timestamps"))
        self.groups = tuple(serving.get("feature_groups", ()))
        self.has_behavior = bool(serving.get("has_behavior"))
        self.exclude_seen_default = bool(serving.get("exclude_seen", True))
        self.source = source
        self.vocab = vocab
        self.item_ids: list[str] = [str(v) for v in vocab["item"]]  # vocabulary index i -> item_ids[i - 2]
        self._item_row: dict[str, int] = items["row"]
        self._item_idx, self._item_cate = items["idx"], items["cate"]
        self._item_attrs, self._item_dense = items.get("attrs"), items.get("dense")
        self._behavior = {str(v): i + FIRST_INDEX for i, v in enumerate(vocab.get("behavior", []))}
        self._users = users
        self.index = index
        self.unknown: Counter = Counter()
        self._lock = threading.Lock()

    # ---- construction -------------------------------------------------------------------------------

    @classmethod
    def from_path(cls, path: str | Path, *, index: str | None = None, threads: int | None = None,
                  data: str | Path | None = None) -> "Scorer":
        """A scorer from a run folder (``config.json`` of a run) or an artifact (``manifest.json``).

        Args:
            path: the run folder or the artifact folder.
            index: retrieval: the artifact's index to search (``exact`` default, ``ivf``, ``hnsw``); a run
                folder always searches an exact index built from the model's item vectors.
            threads: faiss threads for searches (None: faiss's setting).
            data: a run folder's dataset when it moved.
        """
        path = Path(path)
        if (path / "manifest.json").exists():
            return cls._from_artifact(path, index, threads)
        if (path / "config.json").exists() and (path / "checkpoints").exists():
            return cls._from_run(path, threads, data)
        raise UserError(f"{path} is neither a run folder (written by `lifelong train`) nor an artifact (written by "
                        f"`lifelong export`)")

    @classmethod
    def _from_artifact(cls, path: Path, index: str | None, threads: int | None) -> "Scorer":
        from lifelong.serve.artifact import _refuse, load_artifact, read_tensors

        artifact = load_artifact(path)
        model = _build(artifact.model_config, path / "config.json")
        weights = read_tensors(artifact, "model.safetensors")
        try:
            model.load_state_dict(weights)
        except RuntimeError as error:
            raise _refuse(path, "model.safetensors", f"does not match config.json ({str(error).splitlines()[0][:200]})")
        features = list(artifact.model_config.get("features") or [])
        items = read_item_table(path / "items.parquet", features)
        users = read_user_table(path / "users.parquet", features, artifact.vocab) \
            if "user" in artifact.serving.get("feature_groups", ()) else None
        item_index = None
        if artifact.serving["task"] == "retrieval":
            from lifelong.index import ItemIndex

            kind = index or "exact"
            if kind not in artifact.indexes:
                raise UserError(f"--index {kind}: the artifact {path} holds the indexes {artifact.indexes}; export "
                                f"with --index {kind} to add it")
            try:
                item_index = ItemIndex.load(path / "index" / kind, threads=threads)
            except Exception as error:  # faiss raises RuntimeError for a damaged file
                raise _refuse(path, f"index/{kind}", f"cannot be read ({str(error).splitlines()[0][:200]})")
        return cls(model, artifact.model_config, artifact.serving, artifact.vocab, items, users, item_index,
                   source=str(path))

    @classmethod
    def _from_run(cls, run: Path, threads: int | None, data: str | Path | None) -> "Scorer":
        from lifelong.dataset.store import load_dataset
        from lifelong.errors import read_json
        from lifelong.models import config_from_dict
        from lifelong.train.checkpoint import load_model_config, load_weights
        from lifelong.train.run import check_run_dataset, read_run, run_dataset_path

        resolved = read_run(run)
        best = run / "checkpoints" / "best"
        if not best.is_dir():
            raise UserError(f"{run} has no best checkpoint ({best} is missing); resume the run first")
        dataset_path = Path(data) if data is not None else Path(run_dataset_path(resolved))
        dataset = load_dataset(dataset_path)
        check_run_dataset(resolved, dataset, run)
        model_config = load_model_config(best)
        model = _build(model_config, best / "config.json")
        load_weights(best, model)
        config = config_from_dict(model_config)
        needs = config.batch_needs()
        protocol = (dataset.manifest.get("protocol") or {}).get("name")
        serving = {"model_type": config.model_type, "task": config.task,
                   "max_length": int(resolved["train"].get("max_length", 50)),
                   "with_timestamps": bool(needs.get("with_timestamps")),
                   "feature_groups": list(needs.get("features", ())),
                   "has_behavior": dataset.event_behaviors is not None, "protocol": protocol,
                   "exclude_seen": protocol != "mi-split"}
        vocab = read_json(dataset.path / "vocab.json", "the dataset's vocabularies")
        features = list(model_config.get("features") or [])
        items = read_item_table(dataset.path / "items.parquet", features)
        users = read_user_table(dataset.path / "users.parquet", features, vocab) \
            if "user" in serving["feature_groups"] else None
        item_index = None
        if config.task == "retrieval":
            from lifelong.index import ItemIndex

            with torch.no_grad():
                vectors = model.item_vectors().detach().float().numpy()
            item_index = ItemIndex.build(vectors, "exact", threads=threads)
        return cls(model, model_config, serving, vocab, items, users, item_index, source=str(run))

    # ---- raw ids -> indices -------------------------------------------------------------------------

    def _count(self, field: str, n: int) -> None:
        if n:
            with self._lock:
                self.unknown[field] += n

    def item_rows(self, ids: Iterable[RawId]) -> np.ndarray:
        """Rows of the item table (0: an unknown id, counted)."""
        get = self._item_row.get
        rows = np.fromiter((get(str(i), 0) for i in ids), dtype=np.int64)
        self._count("item", int((rows == 0).sum()))
        return rows

    def changes_state(self, context: dict | None) -> bool:
        """Whether a request ``context`` changes the user's encoded state (it sets a user feature the model
        reads), so that state must not come from or go into a per-user cache."""
        if not context or self._users is None:
            return False
        return any(spec["name"] in context for spec in self._users["specs"])

    def knows(self, item_id: RawId) -> bool:
        """Whether ``item_id`` is in the item table."""
        return str(item_id) in self._item_row

    def item_id(self, index: int) -> str:
        """The raw id of item vocabulary index ``index`` (>= 2)."""
        return self.item_ids[index - FIRST_INDEX]

    def _behaviors(self, values: Sequence[str | None]) -> np.ndarray:
        out = np.fromiter((self._behavior.get(str(v), UNKNOWN) if v is not None else UNKNOWN for v in values),
                          dtype=np.int64)
        self._count("behavior", int((out == UNKNOWN).sum()))
        return out

    # ---- batches ------------------------------------------------------------------------------------

    def batch(self, histories: Sequence[History]):
        """The :class:`lifelong.batch.Batch` of ``histories`` (one row per user, padded to ``L``)."""
        from lifelong.batch import Batch, ItemSide

        b, width = len(histories), self.max_length
        rows = np.zeros((b, width), np.int64)
        mask = np.zeros((b, width), bool)
        behaviors = np.zeros((b, width), np.int64) if self.has_behavior else None
        stamps = np.zeros((b, width), np.int64) if self.with_timestamps else None
        for u, history in enumerate(histories):
            items = list(history.items)[-width:]
            n = len(items)
            if not n:
                continue
            rows[u, :n] = self.item_rows(items)
            mask[u, :n] = True
            if behaviors is not None and history.behaviors is not None:
                behaviors[u, :n] = self._behaviors(list(history.behaviors)[-width:])
            elif behaviors is not None:
                behaviors[u, :n] = UNKNOWN
            if stamps is not None and history.timestamps is not None:
                stamps[u, :n] = np.asarray(list(history.timestamps)[-width:], dtype=np.int64)
        batch = Batch(
            history_items=torch.from_numpy(np.where(mask, self._item_idx[rows], 0)),
            history_cates=torch.from_numpy(np.where(mask, self._item_cate[rows], 0)),
            history_mask=torch.from_numpy(mask),
            target_items=torch.zeros(b, dtype=torch.int64), target_cates=torch.zeros(b, dtype=torch.int64),
            labels=torch.zeros(b), users=torch.zeros(b, dtype=torch.int64),
        )
        if behaviors is not None:
            batch.history_behaviors = torch.from_numpy(behaviors)
        if stamps is not None:
            batch.history_timestamps = torch.from_numpy(stamps)
            batch.timestamps = torch.tensor([self.request_time(h) for h in histories], dtype=torch.int64)
        if "item" in self.groups and (self._item_attrs is not None or self._item_dense is not None):
            masked = np.where(mask, rows, 0)
            batch.history_side = ItemSide(
                attrs=None if self._item_attrs is None else torch.from_numpy(self._item_attrs[masked]),
                dense=None if self._item_dense is None else torch.from_numpy(self._item_dense[masked]))
        if "user" in self.groups and self._users is not None:
            batch.user_features = self._user_features(histories)
        return batch

    def request_time(self, history: History) -> int:
        value = (history.context or {}).get("timestamp")
        return int(value) if value is not None else int(time.time())

    def _user_features(self, histories: Sequence[History]) -> dict[str, torch.Tensor]:
        users = self._users
        rows = []
        for history in histories:
            row = users["row"].get(str(history.user_id)) if history.user_id is not None else None
            if row is None:
                self._count("user", 1)
            rows.append(row)
        out = {}
        for spec in users["specs"]:
            name, values = spec["name"], users["values"][spec["name"]]
            numeric = spec["kind"] == "numeric"
            column = []
            for history, row in zip(histories, rows):
                given = (history.context or {}).get(name)
                if given is not None:
                    column.append(float(given) if numeric else users["vocab"][name].get(str(given), UNKNOWN))
                elif row is not None:
                    column.append(values[row])
                else:
                    column.append(float(spec["mean"]) if numeric else UNKNOWN)
            out[name] = torch.tensor(column, dtype=torch.float32 if numeric else torch.int64)
        return out

    def candidates(self, lists: Sequence[Sequence[RawId]], histories: Sequence[History]):
        """:class:`lifelong.models.ranking.Candidates` of the users' candidate lists, padded to the longest
        with the unknown item (its scores are dropped)."""
        from lifelong.batch import ItemSide
        from lifelong.models.ranking import Candidates

        k = max(len(c) for c in lists)
        rows = np.zeros((len(lists), k), np.int64)
        for u, items in enumerate(lists):
            rows[u, : len(items)] = self.item_rows(items)
        side = None
        if "item" in self.groups and (self._item_attrs is not None or self._item_dense is not None):
            side = ItemSide(attrs=None if self._item_attrs is None else torch.from_numpy(self._item_attrs[rows]),
                            dense=None if self._item_dense is None else torch.from_numpy(self._item_dense[rows]))
        stamps = torch.tensor([self.request_time(h) for h in histories], dtype=torch.int64) \
            if self.with_timestamps else None
        return Candidates(items=torch.from_numpy(self._item_idx[rows]), cates=torch.from_numpy(self._item_cate[rows]),
                          timestamps=stamps, side=side)

    # ---- the model ----------------------------------------------------------------------------------

    @torch.no_grad()
    def encode(self, histories: Sequence[History]):
        """Ranking: the model's ``UserState`` of the users (``encode_user``); retrieval: their vectors
        (B, D) or (B, K, D) (``user_vectors``)."""
        batch = self.batch(histories)
        if self.task == "retrieval":
            return self.model.user_vectors(batch).float()
        return self.model.encode_user(batch)

    @torch.no_grad()
    def score_states(self, state, lists: Sequence[Sequence[RawId]], histories: Sequence[History]) -> list[list[float]]:
        """One forward pass of the candidate side: each user's candidates' logits, in order."""
        self._need("ctr", "rank")
        logits = self.model.score(state, self.candidates(lists, histories)).float()  # (B, K)
        return [logits[u, : len(items)].tolist() for u, items in enumerate(lists)]

    def search(self, vectors: torch.Tensor, k: int, seen: Sequence[set[int]] | None = None
               ) -> list[tuple[list[str], list[float]]]:
        """Top ``k`` raw ids and scores per user through the faiss index; ``seen`` (item vocabulary indices
        per user) are removed (searched ``k + len(seen)`` deep)."""
        self._need("retrieval", "retrieve")
        users = vectors if vectors.dim() == 3 else vectors[:, None]  # (B, K, D)
        extra = max((len(s) for s in seen), default=0) if seen else 0
        depth = min(k + extra, len(self.index))
        scores, ids = self.index.search_interests(users.cpu().numpy(), depth, return_scores=True)
        out = []
        for u in range(users.shape[0]):
            drop = seen[u] if seen else set()
            keep = [(int(i), float(s)) for i, s in zip(ids[u], scores[u])
                    if i >= FIRST_INDEX and int(i) not in drop][:k]
            out.append(([self.item_id(i) for i, _ in keep], [s for _, s in keep]))
        return out

    def seen_indices(self, items: Iterable[RawId]) -> set[int]:
        """The item vocabulary indices of raw ids (unknown ones left out)."""
        get = self._item_row.get
        rows = [get(str(i), 0) for i in items]
        return {int(self._item_idx[r]) for r in rows if r and self._item_idx[r] >= FIRST_INDEX}

    def _need(self, task: str, what: str) -> None:
        if self.task != task:
            kind = "a ranking" if self.task == "ctr" else "a retrieval"
            other = "retrieve" if self.task == "retrieval" else "rank"
            raise UserError(f"{self.model_type} is {kind} model: it cannot {what}; use {other} instead")

    # ---- convenience on raw ids ---------------------------------------------------------------------

    def rank(self, history_items: Sequence[RawId], candidates: Sequence[RawId], context: dict | None = None, *,
             history_behaviors: Sequence[str | None] | None = None, history_timestamps: Sequence[int] | None = None,
             user_id: RawId | None = None) -> list[float]:
        """The logits of ``candidates`` for a user with ``history_items`` (oldest first), in order."""
        self._need("ctr", "rank")
        if not candidates:
            raise UserError("rank needs at least one candidate")
        history = History(list(history_items), history_behaviors, history_timestamps, user_id, context)
        return self.score_states(self.encode([history]), [list(candidates)], [history])[0]

    def retrieve(self, history_items: Sequence[RawId], k: int, exclude_seen: bool | None = None, *,
                 history_behaviors: Sequence[str | None] | None = None,
                 history_timestamps: Sequence[int] | None = None, user_id: RawId | None = None
                 ) -> tuple[list[str], list[float]]:
        """The top ``k`` raw item ids (best first) and their scores for a user with ``history_items``."""
        self._need("retrieval", "retrieve")
        if k < 1:
            raise UserError(f"k must be at least 1, got {k}")
        history = History(list(history_items), history_behaviors, history_timestamps, user_id)
        exclude = self.exclude_seen_default if exclude_seen is None else exclude_seen
        seen = [self.seen_indices(history_items)] if exclude else None
        return self.search(self.encode([history]), k, seen)[0]


def _build(model_config: dict, where: Path) -> torch.nn.Module:
    from lifelong.models import build_model

    try:
        return build_model(model_config).eval()
    except (TypeError, ValueError) as error:
        raise UserError(f"{where} is not a valid model config ({error}); export the run again with this version "
                        f"of lifelong") from None


def state_form(state: Any) -> Any:
    """What parts a user state holds (which are None), recursively: states of one form stack
    (:func:`concat_states`)."""
    if state is None or isinstance(state, torch.Tensor):
        return state is None
    if dataclasses.is_dataclass(state):
        return tuple(state_form(getattr(state, f.name)) for f in dataclasses.fields(state))
    if isinstance(state, (tuple, list)):
        return tuple(state_form(part) for part in state)
    if isinstance(state, dict):
        return tuple((key, state_form(value)) for key, value in state.items())
    return type(state).__name__


def concat_states(states: Sequence[Any]):
    """Stack users' states (each from :meth:`Scorer.encode`, padded to the same ``L``) into one, in order:
    tensors along dim 0, nested states recursively (a type with a ``concat`` of its own, such as
    :class:`lifelong.nn.search.DistinctKeys`, stacks itself), ``None`` kept.

    A tensor sized per user beyond dim 0 (a lifelong history's distinct events: their keys, signatures,
    embeddings) is padded with zeros to the largest, slots that the state marks absent (``first`` -1).
    Raises ValueError where a part is None for some users only: group users by :func:`state_form` first."""
    first = states[0]
    if len(states) == 1:
        return first
    if any((state is None) != (first is None) for state in states):
        raise ValueError(f"user states of different forms (group them by state_form): "
                         f"{[type(state).__name__ for state in states]}")
    if isinstance(first, torch.Tensor):
        size = [max(state.shape[d] for state in states) for d in range(first.dim())]
        padded = [state if list(state.shape[1:]) == size[1:] else torch.nn.functional.pad(
            state, [p for d in reversed(range(1, first.dim())) for p in (0, size[d] - state.shape[d])])
            for state in states]
        return torch.cat(padded, dim=0)
    if first is None:
        return None
    if hasattr(type(first), "concat"):
        return type(first).concat(list(states))
    if dataclasses.is_dataclass(first):
        return dataclasses.replace(first, **{f.name: concat_states([getattr(s, f.name) for s in states])
                                             for f in dataclasses.fields(first)})
    if isinstance(first, (bool, int, float, str)):
        return first
    if isinstance(first, (tuple, list)):
        return type(first)(concat_states(list(parts)) for parts in zip(*states))
    if isinstance(first, dict):
        return {key: concat_states([s[key] for s in states]) for key in first}
    raise TypeError(f"cannot stack user states holding {type(first).__name__}")


def split_state(state: Any, n: int) -> list[Any]:
    """The per-user rows of a state of ``n`` users (inverse of :func:`concat_states`)."""
    if torch.is_tensor(state) or not hasattr(state, "select"):
        return [state[i : i + 1] for i in range(n)] if torch.is_tensor(state) else [state] * n
    return [state.select(torch.tensor([i])) for i in range(n)]


def read_item_table(path: Path, features: list[dict]) -> dict[str, Any]:
    """The item table for lookups: raw id -> row, and per row the vocabulary index, category and side
    features (row 0 = an unknown id: unknown index and category, no side features)."""
    import polars as pl

    columns = pl.read_parquet_schema(path)
    bag = next((f for f in features if f.get("group") == "item" and f.get("name") == "attr"), None)
    dense = next((f for f in features if f.get("group") == "item" and f.get("name") == "embedding"), None)
    wanted = ["item_id", "item_idx", "cate_idx"] + (["attr_idx"] if bag and "attr_idx" in columns else []) + (
        ["embedding"] if dense and "embedding" in columns else [])
    table = pl.read_parquet(path, columns=wanted).filter(pl.col("item_idx") > 0)
    n = table.height + 1
    ids = table["item_id"].cast(pl.Utf8).to_list()
    out: dict[str, Any] = {
        "row": {item: r + 1 for r, item in enumerate(ids)},
        "idx": np.concatenate([[UNKNOWN], table["item_idx"].to_numpy().astype(np.int64)]),
        "cate": np.concatenate([[UNKNOWN], table["cate_idx"].to_numpy().astype(np.int64)]),
    }
    if bag and "attr_idx" in columns:
        width = max(int(bag["max_length"]), 1)
        lists = table["attr_idx"].list.head(width)
        padded = np.zeros((n, width), dtype=np.int64)
        lengths = lists.list.len().fill_null(0).to_numpy().astype(np.int64)
        rows = np.repeat(np.arange(1, n), lengths)
        cols = np.arange(lengths.sum()) - np.repeat(np.cumsum(lengths) - lengths, lengths)
        padded[rows, cols] = lists.explode().drop_nulls().to_numpy()
        out["attrs"] = padded
    if dense and "embedding" in columns:
        vectors = np.zeros((n, int(dense["dim"])), dtype=np.float32)
        present = table["embedding"].is_not_null().to_numpy()
        if present.any():
            vectors[1:][present] = np.stack(table["embedding"].filter(pl.Series(present)).to_list()).astype(np.float32)
        out["dense"] = vectors
    return out


def read_user_table(path: Path, features: list[dict], vocab: dict) -> dict[str, Any]:
    """The user features by raw user id (categorical: vocabulary index; numeric: value, the mean if missing)."""
    import polars as pl

    specs = [f for f in features if f.get("group") == "user"]
    table = pl.read_parquet(path, columns=["user_id", *(f"uf_{f['name']}" for f in specs)])
    values = {}
    for spec in specs:
        column = table[f"uf_{spec['name']}"]
        if spec["kind"] == "numeric":
            values[spec["name"]] = column.cast(pl.Float32).fill_null(float(spec["mean"])).to_list()
        else:
            values[spec["name"]] = column.cast(pl.Int64).fill_null(UNKNOWN).to_list()
    return {"row": {str(u): r for r, u in enumerate(table["user_id"].cast(pl.Utf8).to_list())}, "specs": specs,
            "values": values,
            "vocab": {s["name"]: {str(v): i + FIRST_INDEX for i, v in enumerate(vocab.get(f"user__{s['name']}", []))}
                      for s in specs if s["kind"] != "numeric"}}
