"""Approximate vs exact inner-product retrieval with :class:`lifelong.index.ItemIndex` on a synthetic
catalogue of one million items (D = 64): recall@50 against exact search, batched queries per second
(median of --passes timed passes, all indexes at the same --threads), build time and the process's
peak resident size. Prints a markdown table; the bar: an approximate index reaching recall@50 >= 0.95
of exact search at >= 5x its queries per second.

    python benchmarks/ann_index.py [--items 1000000] [--queries 1000] [--threads 2] [--seed 0]
        [--kinds ivf] [--nlist 2048] [--nprobe 32,64,128] [--kinds ivf,hnsw --ef-search 64,128,256]

The approximate index timed by default is IVF (``IndexIVFFlat``, inner product): 2,048 lists (~490
items each; fewer than faiss's rule of thumb 4 sqrt(N) = 4,000 to keep the k-means and assignment of a
million items near a minute on two threads), nprobe swept over 32, 64, 128 (1.6-6% of the lists).
HNSW (``--kinds ivf,hnsw``) is optional: with inner product on items of varied norms its recall levels
off below 0.95 at M = 32, ef_construction = 64 on 100,000 items (0.94 at ef_search = 512), and building
it for a million items takes several minutes on two threads.

The catalogue imitates learned item embeddings scored by inner product:

- items form a Gaussian mixture of --clusters (2,000) topics with Zipf-like sizes (size of the r-th
  topic ~ r^-0.8): item = topic centre (unit norm on average) + isotropic noise of norm ~0.6;
- norms vary: every item is scaled by a log-normal factor (sigma 0.3, a popularity-like effect that
  inner-product retrieval rewards), so maximum inner product is not nearest-neighbour search;
- a query is a user vector: a Dirichlet-weighted mix of 1-8 history items drawn from 1-3 of the user's
  topics (topics drawn by size), plus Gaussian noise of 0.5x the mix's norm.

Timings are wall-clock medians on a machine that may be shared with other jobs: read ratios rather
than absolute numbers.
"""

from __future__ import annotations

import argparse
import json
import resource
import sys
import time
from pathlib import Path

import faiss
import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "src"))
from lifelong.index import ItemIndex  # noqa: E402

K = 50
FIRST_ID = 2  # the index skips vocabulary rows 0 and 1: the catalogue starts at row 2


def catalogue(n_items: int, dim: int, n_clusters: int, seed: int) -> tuple[np.ndarray, np.ndarray]:
    """Item vectors (FIRST_ID + n_items, D) float32 (rows 0, 1 zero) and each item's topic (-1 for 0, 1)."""
    rng = np.random.default_rng(seed)
    sizes = np.arange(1, n_clusters + 1, dtype=np.float64) ** -0.8
    centres = (rng.standard_normal((n_clusters, dim)) / np.sqrt(dim)).astype(np.float32)  # (C, D)
    topics = rng.choice(n_clusters, size=n_items, p=sizes / sizes.sum())
    vectors = np.zeros((FIRST_ID + n_items, dim), dtype=np.float32)
    for start in range(0, n_items, 100_000):  # chunks keep float temporaries small
        stop = min(start + 100_000, n_items)
        noise = rng.standard_normal((stop - start, dim), dtype=np.float32) * np.float32(0.6 / np.sqrt(dim))
        scale = rng.lognormal(0.0, 0.3, size=(stop - start, 1)).astype(np.float32)
        vectors[FIRST_ID + start:FIRST_ID + stop] = (centres[topics[start:stop]] + noise) * scale
    return vectors, np.concatenate([[-1] * FIRST_ID, topics])


def user_queries(vectors: np.ndarray, topics: np.ndarray, n_queries: int, seed: int) -> np.ndarray:
    """(n_queries, D) user vectors: noisy Dirichlet mixes of a few history items from 1-3 topics."""
    rng = np.random.default_rng(seed + 1)
    order = np.argsort(topics[FIRST_ID:], kind="stable") + FIRST_ID  # item rows grouped by topic
    starts = np.searchsorted(topics[order], np.arange(topics.max() + 2))
    popular = topics[FIRST_ID:]  # drawing a random item's topic = drawing a topic by its size
    queries = np.empty((n_queries, vectors.shape[1]), dtype=np.float32)
    for q in range(n_queries):
        user_topics = popular[rng.integers(len(popular), size=rng.integers(1, 4))]
        history = []
        for topic in user_topics[rng.integers(len(user_topics), size=rng.integers(1, 9))]:
            history.append(order[rng.integers(starts[topic], starts[topic + 1])])
        mix = rng.dirichlet(np.ones(len(history))) @ vectors[history]  # (D,)
        queries[q] = mix + 0.5 * np.linalg.norm(mix) * rng.standard_normal(len(mix)) / np.sqrt(len(mix))
    return queries


def timed_search(index: ItemIndex, queries: np.ndarray, batch: int, passes: int) -> tuple[np.ndarray, float]:
    """Ids (B, K) of the first pass and the median queries per second over ``passes``."""
    rates, ids = [], None
    for _ in range(passes):
        started = time.perf_counter()
        found = [index.search(queries[i:i + batch], K)[1] for i in range(0, len(queries), batch)]
        rates.append(len(queries) / (time.perf_counter() - started))
        ids = np.concatenate(found) if ids is None else ids
    return ids, float(np.median(rates))


def recall(found: np.ndarray, exact: np.ndarray) -> float:
    return float(np.mean([len(set(a) & set(e)) / K for a, e in zip(found.tolist(), exact.tolist())]))


def peak_rss_gib() -> float:
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024 / 1024**3  # Linux: KiB


def integers(text: str) -> list[int]:
    return [int(value) for value in text.split(",") if value]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--items", type=int, default=1_000_000)
    parser.add_argument("--dim", type=int, default=64)
    parser.add_argument("--clusters", type=int, default=2_000)
    parser.add_argument("--queries", type=int, default=1_000)
    parser.add_argument("--batch", type=int, default=1_000, help="queries per search call")
    parser.add_argument("--passes", type=int, default=3, help="timed passes; the median is reported")
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--kinds", default="ivf", help="approximate indexes to build: ivf, hnsw (comma-separated)")
    parser.add_argument("--nlist", type=int, default=2048, help="ivf lists (0: faiss's 4 sqrt(items))")
    parser.add_argument("--nprobe", type=integers, default=[32, 64, 128], help="ivf nprobe values to time")
    parser.add_argument("--M", type=int, default=32, help="hnsw links per node")
    parser.add_argument("--ef-construction", type=int, default=64)
    parser.add_argument("--ef-search", type=integers, default=[64, 128, 256], help="hnsw ef_search values to time")
    parser.add_argument("--json", type=Path, default=None, help="also write the rows as JSON here")
    args = parser.parse_args()
    kinds = [kind for kind in args.kinds.split(",") if kind]
    if set(kinds) - {"ivf", "hnsw"}:
        parser.error(f"--kinds takes ivf and/or hnsw, got {args.kinds}")
    faiss.omp_set_num_threads(args.threads)

    started = time.perf_counter()
    vectors, topics = catalogue(args.items, args.dim, args.clusters, args.seed)
    queries = user_queries(vectors, topics, args.queries, args.seed)
    print(f"catalogue: {args.items:,} items x {args.dim} in {args.clusters:,} topics, {args.queries:,} user "
          f"queries, generated in {time.perf_counter() - started:.1f} s", file=sys.stderr)

    rows = []

    def measure(name: str, params: str, index: ItemIndex, build_s: float, exact_ids=None, exact_qps=None):
        ids, qps = timed_search(index, queries, args.batch, args.passes)
        row = {"index": name, "params": params, "recall@50": 1.0 if exact_ids is None else recall(ids, exact_ids),
               "queries/s": qps, "speed-up": 1.0 if exact_qps is None else qps / exact_qps,
               "build s": build_s, "peak RSS GiB": peak_rss_gib()}
        passed = row["recall@50"] >= 0.95 and row["speed-up"] >= 5
        row["bar"] = "-" if exact_ids is None else ("yes" if passed else "no")
        rows.append(row)
        print(f"{name} {params}: recall@50 {row['recall@50']:.4f}, {qps:,.0f} q/s", file=sys.stderr)
        return ids, qps

    started = time.perf_counter()
    exact = ItemIndex.build(vectors, "exact", threads=args.threads)
    exact_ids, exact_qps = measure("exact (IndexFlatIP)", "", exact, time.perf_counter() - started)
    del exact
    if "ivf" in kinds:
        started = time.perf_counter()
        ivf = ItemIndex.build(vectors, "ivf", threads=args.threads, nlist=args.nlist or None, nprobe=args.nprobe[0],
                              seed=args.seed)
        build_s = time.perf_counter() - started
        for nprobe in args.nprobe:
            ivf.set_search_params(nprobe=nprobe)
            measure("IVF (IndexIVFFlat)", f"nlist={ivf.params.nlist}, nprobe={nprobe}", ivf, build_s,
                    exact_ids, exact_qps)
        del ivf
    if "hnsw" in kinds:
        started = time.perf_counter()
        hnsw = ItemIndex.build(vectors, "hnsw", threads=args.threads, M=args.M,
                               ef_construction=args.ef_construction, ef_search=args.ef_search[0])
        build_s = time.perf_counter() - started
        for ef_search in args.ef_search:
            hnsw.set_search_params(ef_search=ef_search)
            measure("HNSW (IndexHNSWFlat)", f"M={args.M}, ef_construction={args.ef_construction}, "
                    f"ef_search={ef_search}", hnsw, build_s, exact_ids, exact_qps)
        del hnsw

    print(f"{args.items:,} items x {args.dim}, inner product, {args.queries:,} queries in batches of {args.batch}, "
          f"top-{K}, {args.threads} threads, faiss {faiss.__version__}, queries/s = median of {args.passes} passes; "
          f"peak RSS = the process's peak so far. Bar: recall@50 >= 0.95 at >= 5x exact queries/s.\n")
    print("| index | parameters | recall@50 | queries/s | speed-up | build s | peak RSS GiB | bar |")
    print("|---|---|---|---|---|---|---|---|")
    for row in rows:
        print(f"| {row['index']} | {row['params']} | {row['recall@50']:.4f} | {row['queries/s']:,.0f} | "
              f"{row['speed-up']:.1f}x | {row['build s']:.1f} | {row['peak RSS GiB']:.2f} | {row['bar']} |")
    if args.json is not None:
        args.json.write_text(json.dumps({"args": {k: v for k, v in vars(args).items() if k != "json"},
                                         "rows": rows}, indent=2) + "\n")


if __name__ == "__main__":
    main()
