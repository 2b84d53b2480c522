"""An item index for retrieval by inner product, built with faiss: exact search, IVF and HNSW, plus the
two ways a multi-interest user (K vectors) is turned into one top-k list.

- :meth:`ItemIndex.build` indexes the item vectors ``(N, D)`` of a vocabulary (row = item vocabulary
  index) from row 2 on: rows 0 (padding) and 1 (unknown) are never returned. ``kind`` is
  ``exact`` (``faiss.IndexFlatIP``, brute force), ``ivf`` (``faiss.IndexIVFFlat`` with
  ``METRIC_INNER_PRODUCT``: k-means into ``nlist`` lists, trained on a seeded sample of the items;
  ``nprobe`` lists scanned per query) or ``hnsw`` (``faiss.IndexHNSWFlat`` with
  ``METRIC_INNER_PRODUCT``: a graph of ``M`` links per node, built with a beam of
  ``ef_construction`` and searched with a beam of ``ef_search``).
- :meth:`ItemIndex.search`: ``(B, D)`` queries -> ``(B, k)`` scores and item ids, best first.
- :meth:`ItemIndex.search_interests`: ``(B, K, D)`` interests -> ``(B, k)`` ids: each interest's
  top-``k`` merged by score, an item found by several interests keeping its best score (ComiRec's
  greedy merge without diversity; with the exact index this is the top ``k`` of
  ``max_k <v_k, e_i>``, what :meth:`lifelong.models.multi_interest.MultiInterestModel.retrieve`
  computes by brute force).
- :meth:`ItemIndex.search_budgeted`: ``(B, C, D)`` mixture components and integer budgets ``(B, C)``
  summing to ``k`` -> ``(B, k)`` ids: kNN-Embed's interest-weighted retrieval, component ``c``
  contributing its best ``budgets[c]`` items not already taken. :func:`interest_budgets` turns
  mixture weights into such budgets.
- :meth:`ItemIndex.save` / :meth:`ItemIndex.load`: a folder with the faiss index, the id mapping and
  the parameters (``meta.json``), so a saved index describes itself.

Choices where the sources are silent (kNN-Embed gives no code):

- budgeted search: components take their items in the order of decreasing budget (ties: component
  order), each from its own ranked list searched ``k`` deep (enough for its budget whatever the others
  took); if an approximate index returns too few distinct items, the list is completed from the
  other components' remaining results by score, then padded with -1. The final list is ordered by the
  score under the component that contributed each item.
- IVF: the coarse quantizer is trained by faiss's k-means (spherical for inner product, faiss's
  default) on ``train_size`` items drawn with ``seed``.

``threads`` (build, load) sets faiss's OpenMP thread count (``faiss.omp_set_num_threads``, a process-wide
setting) before every build and search of this index; ``None`` leaves faiss's setting alone.
"""

from __future__ import annotations

import json
import math
from dataclasses import asdict, dataclass, fields
from pathlib import Path
from typing import Any, ClassVar

import faiss
import numpy as np

from lifelong.budgets import interest_budgets  # noqa: F401  (re-exported: the split the budgeted search uses)

FIRST_ID = 2  # vocabulary rows 0 (padding) and 1 (unknown, lifelong.dataset.store) are never returned
KINDS = ("exact", "ivf", "hnsw")


@dataclass
class ExactParams:
    """Exact search (``faiss.IndexFlatIP``): no parameters."""

    search_fields: ClassVar[tuple[str, ...]] = ()

    def validate(self, n: int) -> None:
        pass


@dataclass
class IVFParams:
    """Args:
        nlist: number of inverted lists (k-means clusters); ``None`` = ``4 sqrt(N)``, at most ``N / 39``
            (faiss wants 39 training points per centroid) and at least 1.
        nprobe: lists scanned per query (recall vs speed).
        train_size: items the k-means is trained on; ``None`` = ``min(N, 64 nlist)``.
        seed: draws the training sample (and seeds faiss's k-means).
    """

    search_fields: ClassVar[tuple[str, ...]] = ("nprobe",)
    nlist: int | None = None
    nprobe: int = 16
    train_size: int | None = None
    seed: int = 0

    def validate(self, n: int) -> None:
        if self.nlist is None:
            self.nlist = int(min(max(1, round(4 * math.sqrt(n))), max(1, n // 39)))
        if self.train_size is None:
            self.train_size = min(n, 64 * self.nlist)
        if not 1 <= self.nlist <= n:
            raise ValueError(f"ivf: nlist must be in [1, {n}] (the number of indexed items), got {self.nlist}")
        if not 1 <= self.nprobe:
            raise ValueError(f"ivf: nprobe must be at least 1, got {self.nprobe}")
        if not self.nlist <= self.train_size <= n:
            raise ValueError(f"ivf: train_size must be in [nlist = {self.nlist}, {n}], got {self.train_size}")


@dataclass
class HNSWParams:
    """Args:
        M: links per node (the graph's degree; memory ``~ 8 M`` bytes per item on top of the vectors).
        ef_search: beam width of a search (recall vs speed; faiss uses ``max(ef_search, k)``).
        ef_construction: beam width while inserting items (graph quality vs build time).
    """

    search_fields: ClassVar[tuple[str, ...]] = ("ef_search",)
    M: int = 32
    ef_search: int = 64
    ef_construction: int = 80

    def validate(self, n: int) -> None:
        for name in ("M", "ef_search", "ef_construction"):
            if getattr(self, name) < 1:
                raise ValueError(f"hnsw: {name} must be at least 1, got {getattr(self, name)}")


PARAMS = {"exact": ExactParams, "ivf": IVFParams, "hnsw": HNSWParams}


def check_params(kind: str, params: dict[str, Any]) -> None:
    """Raise ``ValueError`` naming the unknown kind, the misspelled keys alone (with the known ones) or a
    value that is not an integer (``seed``, ``nlist``... are all integers)."""
    if kind not in KINDS:
        raise ValueError(f"index kind must be one of {KINDS}, got {kind!r}")
    known = [f.name for f in fields(PARAMS[kind])]
    unknown = sorted(set(params) - set(known))
    if unknown:
        raise ValueError(f"{kind}: unknown parameter{'s' if len(unknown) > 1 else ''} {', '.join(unknown)}; "
                         f"{kind} takes {', '.join(known) if known else 'no parameters'}")
    for key, value in params.items():
        if value is not None and (isinstance(value, bool) or not isinstance(value, int)):
            raise ValueError(f"{kind}: {key} must be an integer, got {value!r}")


class ItemIndex:
    """Top-k items by inner product over an item vocabulary (see the module docstring).

    Build with :meth:`build` or :meth:`load`; the constructor wraps an existing faiss index.

    Args:
        index: the faiss index over the item vectors of ``ids``.
        ids: (n,) int64, the item vocabulary id of each faiss row.
        params: the parameters of the index kind (:class:`ExactParams`, :class:`IVFParams`,
            :class:`HNSWParams`).
        threads: faiss OpenMP threads for every build/search call; ``None`` = leave faiss's setting.

    Example:
        >>> vectors = np.random.default_rng(0).normal(size=(100, 8)).astype(np.float32)
        >>> index = ItemIndex.build(vectors, "exact", threads=1)
        >>> scores, ids = index.search(vectors[[5]], k=3)
        >>> bool(ids.min() >= 2), ids.shape
        (True, (1, 3))
    """

    def __init__(self, index: faiss.Index, ids: np.ndarray, params: ExactParams | IVFParams | HNSWParams,
                 threads: int | None = None):
        if index.ntotal != len(ids):
            raise ValueError(f"the faiss index holds {index.ntotal} vectors but {len(ids)} ids were given")
        self.index = index
        self.ids = np.asarray(ids, dtype=np.int64)
        self.params = params
        self.threads = threads
        self._apply_search_params()

    @property
    def kind(self) -> str:
        return next(kind for kind, cls in PARAMS.items() if isinstance(self.params, cls))

    @property
    def dim(self) -> int:
        return self.index.d

    def __len__(self) -> int:
        return len(self.ids)

    def __repr__(self) -> str:
        return f"ItemIndex({self.kind}, {len(self):,} items, D={self.dim}, {asdict(self.params)})"

    @classmethod
    def build(cls, vectors: Any, kind: str = "exact", *, first_id: int = FIRST_ID, threads: int | None = None,
              **params: Any) -> ItemIndex:
        """Index the rows ``first_id..N-1`` of ``vectors`` (row = item vocabulary id).

        Args:
            vectors: (N, D) item vectors (numpy or a CPU torch tensor), e.g. ``model.item_vectors()``.
            kind: ``exact``, ``ivf`` or ``hnsw``.
            first_id: first row indexed (2: padding and unknown are never returned; 0 to index all rows).
            threads: faiss OpenMP threads (build and later searches); ``None`` = faiss's setting.
            **params: the kind's parameters (:class:`IVFParams`: ``nlist``, ``nprobe``, ``train_size``,
                ``seed``; :class:`HNSWParams`: ``M``, ``ef_search``, ``ef_construction``).

        Example:
            >>> vectors = np.random.default_rng(0).normal(size=(1000, 8)).astype(np.float32)
            >>> ItemIndex.build(vectors, "ivf", nlist=8, nprobe=8).kind
            'ivf'
        """
        if kind not in KINDS:
            raise ValueError(f"kind must be one of {KINDS}, got {kind!r}")
        vectors = as_float32(vectors, "vectors", ndim=2)
        if not 0 <= first_id < len(vectors):
            raise ValueError(f"first_id must be in [0, {len(vectors)}) for {len(vectors)} item vectors, got {first_id}")
        check_params(kind, params)
        config = PARAMS[kind](**params)
        items = np.ascontiguousarray(vectors[first_id:])  # (n, D)
        n, dim = items.shape
        config.validate(n)
        if threads is not None:
            faiss.omp_set_num_threads(threads)
        if kind == "exact":
            index = faiss.IndexFlatIP(dim)
        elif kind == "ivf":
            quantizer = faiss.IndexFlatIP(dim)
            index = faiss.IndexIVFFlat(quantizer, dim, config.nlist, faiss.METRIC_INNER_PRODUCT)
            index.cp.seed = config.seed
            index.cp.max_points_per_centroid = max(1, math.ceil(config.train_size / config.nlist))  # our sample, whole
            sample = np.random.default_rng(config.seed).choice(n, size=config.train_size, replace=False)
            index.train(items[np.sort(sample)])
        else:
            index = faiss.IndexHNSWFlat(dim, config.M, faiss.METRIC_INNER_PRODUCT)
            index.hnsw.efConstruction = config.ef_construction
        index.add(items)
        return cls(index, np.arange(first_id, first_id + n, dtype=np.int64), config, threads)

    def set_search_params(self, **params: Any) -> None:
        """Change search-time parameters without rebuilding (``nprobe`` for ivf, ``ef_search`` for hnsw).

        Example:
            >>> vectors = np.random.default_rng(0).normal(size=(500, 8)).astype(np.float32)
            >>> index = ItemIndex.build(vectors, "hnsw", M=8)
            >>> index.set_search_params(ef_search=128); index.params.ef_search
            128
        """
        unknown = set(params) - set(self.params.search_fields)
        if unknown:
            raise ValueError(f"{self.kind}: {sorted(unknown)} cannot be changed after building; "
                             f"search-time parameters: {list(self.params.search_fields)}")
        for name, value in params.items():
            setattr(self.params, name, value)
        self.params.validate(len(self))
        self._apply_search_params()

    def search(self, queries: Any, k: int) -> tuple[np.ndarray, np.ndarray]:
        """The ``k`` items with the largest inner product with each query, best first.

        Args:
            queries: (B, D) float vectors.
            k: items per query.

        Returns:
            scores (B, k) float32 and ids (B, k) int64 item vocabulary ids; where the index returns
            fewer than ``k`` items (``k`` above its size, or an approximate search that ran dry) the
            missing places hold id -1 and score ``-inf``.

        Example:
            >>> vectors = np.eye(4, dtype=np.float32)
            >>> ItemIndex.build(vectors, "exact").search(vectors[[3]], k=2)[1].tolist()
            [[3, 2]]
        """
        queries = as_float32(queries, "queries", ndim=2, dim=self.dim)
        check_k(k)
        if len(queries) == 0:
            return np.zeros((0, k), np.float32), np.zeros((0, k), np.int64)
        self._set_threads()
        scores, rows = self.index.search(queries, k)  # (B, k), (B, k) faiss rows, -1 when missing
        found = rows >= 0
        ids = np.where(found, self.ids[np.where(found, rows, 0)], -1)
        return np.where(found, scores, -np.inf).astype(np.float32), ids

    def search_interests(self, interests: Any, k: int, valid: Any = None,
                         return_scores: bool = False) -> np.ndarray | tuple[np.ndarray, np.ndarray]:
        """Each interest's top-``k`` merged into one top-``k`` list by score, duplicates removed (an item
        found by several interests keeps its best score).

        Args:
            interests: (B, K, D) interest vectors.
            k: items per user.
            valid: (B, K) bool, False for switched-off interests (not searched); ``None`` = all valid.
            return_scores: also return the merged scores.

        Returns:
            ids (B, k) int64, best first, -1 only where fewer than ``k`` distinct items were found;
            with ``return_scores``, ``(scores (B, k), ids (B, k))``.

        Example:
            >>> vectors = np.eye(4, dtype=np.float32)
            >>> interests = np.array([[[0, 0, 2, 0], [0, 0, 0, 1]]], dtype=np.float32)  # (1, 2, 4)
            >>> ItemIndex.build(vectors, "exact").search_interests(interests, k=2).tolist()
            [[2, 3]]
        """
        interests = as_float32(interests, "interests", ndim=3, dim=self.dim)
        n_users, n_interests, _ = interests.shape
        valid = check_valid(valid, (n_users, n_interests))
        check_k(k)
        scores = np.full((n_users, n_interests, k), -np.inf, dtype=np.float32)  # (B, K, k)
        ids = np.full((n_users, n_interests, k), -1, dtype=np.int64)
        scores[valid], ids[valid] = self.search(interests[valid], k)  # only the valid interests are searched
        merged_scores, merged_ids = merge_unique(scores.reshape(n_users, -1), ids.reshape(n_users, -1), k)
        return (merged_scores, merged_ids) if return_scores else merged_ids

    def search_budgeted(self, queries: Any, budgets: Any,
                        return_scores: bool = False) -> np.ndarray | tuple[np.ndarray, np.ndarray]:
        """kNN-Embed's interest-weighted retrieval: component ``c`` contributes its best ``budgets[c]``
        items not already taken by a component with a larger budget, going deeper into its own results
        when duplicates occur.

        Args:
            queries: (B, C, D) one query vector per mixture component.
            budgets: (B, C) non-negative ints, every row summing to the same ``k`` (see
                :func:`interest_budgets`).
            return_scores: also return the scores (each under its contributing component).

        Returns:
            ids (B, k) int64, distinct, ordered by score; -1 only if the index returned fewer than ``k``
            distinct items. With ``return_scores``, ``(scores (B, k), ids (B, k))``.

        Example:
            >>> vectors = np.eye(6, dtype=np.float32) + 0.1 * np.arange(6, dtype=np.float32)[:, None]
            >>> queries = np.array([[[0, 0, 1, 0, 0, 0], [0, 0, 0, 0, 0, 1]]], dtype=np.float32)
            >>> ItemIndex.build(vectors, "exact").search_budgeted(queries, [[2, 1]]).tolist()
            [[2, 5, 4]]
        """
        queries = as_float32(queries, "queries", ndim=3, dim=self.dim)
        n_users, n_components, _ = queries.shape
        budgets = np.asarray(budgets)
        if budgets.shape != (n_users, n_components) or not np.issubdtype(budgets.dtype, np.integer):
            raise ValueError(f"budgets must be integers of shape (B, C) = {(n_users, n_components)}, "
                             f"got {budgets.dtype} {budgets.shape}")
        if (budgets < 0).any():
            raise ValueError("budgets must be non-negative")
        totals = budgets.sum(axis=1)
        if n_users and (totals != totals[0]).any():
            raise ValueError(f"every row of budgets must sum to the same k, got sums {sorted(set(totals.tolist()))}")
        k = int(totals[0]) if n_users else 0
        check_k(k)
        # k deep is enough: component c meets at most k - budgets[c] items taken by the others
        scores = np.full((n_users, n_components, k), -np.inf, dtype=np.float32)  # (B, C, k)
        ids = np.full((n_users, n_components, k), -1, dtype=np.int64)
        searched = budgets > 0
        scores[searched], ids[searched] = self.search(queries[searched], k)
        out_scores = np.full((n_users, k), -np.inf, dtype=np.float32)
        out_ids = np.full((n_users, k), -1, dtype=np.int64)
        for user in range(n_users):
            taken: dict[int, float] = {}
            for component in np.argsort(-budgets[user], kind="stable"):
                share = budgets[user, component]
                for item, score in zip(ids[user, component].tolist(), scores[user, component].tolist()):
                    if share == 0:
                        break
                    if item >= 0 and item not in taken:
                        taken[item] = score
                        share -= 1
            if len(taken) < k:  # an approximate search ran dry: complete from all results by score
                order = np.argsort(-scores[user].ravel(), kind="stable")
                for item, score in zip(ids[user].ravel()[order].tolist(), scores[user].ravel()[order].tolist()):
                    if len(taken) == k:
                        break
                    if item >= 0 and item not in taken:
                        taken[item] = score
            ranked = sorted(taken.items(), key=lambda pair: -pair[1])
            out_ids[user, :len(ranked)] = [item for item, _ in ranked]
            out_scores[user, :len(ranked)] = [score for _, score in ranked]
        return (out_scores, out_ids) if return_scores else out_ids

    def save(self, folder: str | Path) -> Path:
        """Write ``index.faiss``, ``ids.npy`` and ``meta.json`` (kind, parameters, sizes) to ``folder``."""
        folder = Path(folder)
        folder.mkdir(parents=True, exist_ok=True)
        faiss.write_index(self.index, str(folder / "index.faiss"))
        np.save(folder / "ids.npy", self.ids)
        meta = {"kind": self.kind, "params": asdict(self.params), "items": len(self), "dim": self.dim,
                "faiss_version": faiss.__version__}
        (folder / "meta.json").write_text(json.dumps(meta, indent=2) + "\n")
        return folder

    @classmethod
    def load(cls, folder: str | Path, threads: int | None = None) -> ItemIndex:
        """Read an index written by :meth:`save`.

        Example:
            >>> import tempfile
            >>> vectors = np.random.default_rng(0).normal(size=(50, 4)).astype(np.float32)
            >>> folder = ItemIndex.build(vectors, "hnsw", M=8).save(tempfile.mkdtemp())
            >>> ItemIndex.load(folder).params.M
            8
        """
        folder = Path(folder)
        if not (folder / "meta.json").exists():
            raise FileNotFoundError(f"{folder} holds no saved ItemIndex (meta.json missing); "
                                    "write one with ItemIndex.save")
        meta = json.loads((folder / "meta.json").read_text())
        params = PARAMS[meta["kind"]](**meta["params"])
        index = faiss.read_index(str(folder / "index.faiss"))
        return cls(index, np.load(folder / "ids.npy"), params, threads)

    def _set_threads(self) -> None:
        if self.threads is not None:
            faiss.omp_set_num_threads(self.threads)

    def _apply_search_params(self) -> None:
        if isinstance(self.params, IVFParams):
            self.index.nprobe = self.params.nprobe
        elif isinstance(self.params, HNSWParams):
            self.index.hnsw.efSearch = self.params.ef_search


def merge_unique(scores: np.ndarray, ids: np.ndarray, k: int) -> tuple[np.ndarray, np.ndarray]:
    """Per row, the ``k`` best distinct ids by score, each id with its best score.

    Args:
        scores: (B, M) candidate scores (``-inf`` for none).
        ids: (B, M) candidate ids (-1 for none).
        k: ids kept per row.

    Returns:
        scores (B, k) and ids (B, k), best first, padded with ``-inf`` / -1.

    Example:
        >>> merge_unique(np.array([[0.9, 0.8, 0.7]]), np.array([[4, 4, 6]]), 2)[1].tolist()
        [[4, 6]]
    """
    n_rows = len(ids)
    order = np.argsort(-scores, axis=1, kind="stable")  # (B, M) best first
    ranked_ids = np.take_along_axis(ids, order, axis=1)
    ranked_scores = np.take_along_axis(scores, order, axis=1)
    by_id = np.argsort(ranked_ids, axis=1, kind="stable")  # equal ids stay in rank order: first = best
    sorted_ids = np.take_along_axis(ranked_ids, by_id, axis=1)
    repeated = np.zeros_like(sorted_ids, dtype=bool)
    repeated[:, 1:] = sorted_ids[:, 1:] == sorted_ids[:, :-1]
    duplicate = np.empty_like(repeated)
    np.put_along_axis(duplicate, by_id, repeated, axis=1)
    keep = ~duplicate & (ranked_ids >= 0)
    place = np.cumsum(keep, axis=1) - 1  # (B, M) place of each kept candidate in the output
    rows, cols = np.nonzero(keep & (place < k))
    out_scores = np.full((n_rows, k), -np.inf, dtype=np.float32)
    out_ids = np.full((n_rows, k), -1, dtype=np.int64)
    out_scores[rows, place[rows, cols]] = ranked_scores[rows, cols]
    out_ids[rows, place[rows, cols]] = ranked_ids[rows, cols]
    return out_scores, out_ids


def as_float32(array: Any, name: str, ndim: int, dim: int | None = None) -> np.ndarray:
    """A C-contiguous float32 numpy array from numpy or a (CPU) torch tensor, shape-checked."""
    if hasattr(array, "detach"):
        array = array.detach().cpu().numpy()
    array = np.ascontiguousarray(np.asarray(array, dtype=np.float32))
    if array.ndim != ndim:
        raise ValueError(f"{name} must have {ndim} dimensions, got shape {array.shape}")
    if dim is not None and array.shape[-1] != dim:
        raise ValueError(f"{name} must have {dim} features (the index dimension), got shape {array.shape}")
    return array


def check_k(k: int) -> None:
    if not isinstance(k, (int, np.integer)) or k < 1:
        raise ValueError(f"k must be a positive integer, got {k!r}")


def check_valid(valid: Any, shape: tuple[int, int]) -> np.ndarray:
    if valid is None:
        return np.ones(shape, dtype=bool)
    if hasattr(valid, "detach"):
        valid = valid.detach().cpu().numpy()
    valid = np.asarray(valid)
    if valid.shape != shape or valid.dtype != bool:
        raise ValueError(f"valid must be a bool array of shape (B, K) = {shape}, got {valid.dtype} {valid.shape}")
    return valid
