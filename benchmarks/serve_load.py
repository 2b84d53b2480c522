"""Load test of ``lifelong serve``: latency (p50, p99) and throughput at several concurrencies, with and without
micro-batching, measured by this process (an asyncio client) against a server in its own process.

    python benchmarks/serve_load.py [--workdir DIR] [--requests 1000] [--warmup 100] [--concurrency 1,8,32]
        [--threads 1] [--max-delay-ms 0] [--items 1000000] [--client raw] [--skip-retrieval] [--out PAGE]

Two servers, each started twice: with micro-batching (``--max-batch 32 --max-delay-ms 0``, two batch workers)
and without (``--max-batch 1``: every request its own forward pass on the request thread pool), each forward
pass on ``--threads`` intra-op threads (1 by default: while other processes loaded this shared two-core
machine, one DIN pass on two OpenMP threads once took 219 ms against 6.5 ms on one, the threads waiting for
each other; on a quiet moment two threads took 4.7 ms against 6.9):

- ranking: DIN (default sizes: embedding 32, attention 64-32, MLP 200-80, Dice) trained one epoch on a synthetic
  log; each request ranks 200 random candidates for one of 500 users whose stored history holds 50 events
  (L = 50). The user-state cache is on, as in production: a user's history is encoded once per version.
- retrieval: SASRec (D = 32) trained one epoch (sampled softmax) on a synthetic log whose catalogue holds
  ``--items`` items (one million by default), exported with an IVF index (nlist 1024, nprobe 16); each
  request retrieves k = 100 items for one of 500 users with 50 stored events (their items excluded).

Per cell: ``--warmup`` requests, then ``--requests`` requests timed (each worker keeps one request in flight on
its own keep-alive connection). The client (``--client``) is raw asyncio streams by default: the load
generator runs on the same two cores as the server, and httpx's AsyncClient took 2 ms of CPU per request at
concurrency 8 and 4 ms at 32 (up to 0.8 of a core at 200 requests/s, measured 2026-12-07), against 0.1 to
0.25 ms for the raw client; ``--client httpx`` keeps the first method.
Serving protocol (PROTOCOLS.md): the numbers name the concurrency, request size and thread count; timings on a
shared machine are noisy, so compare the cells of one run. The bars: DIN at concurrency 8, p99 < 20 ms; at
concurrency 32 micro-batching at least doubles the throughput of the same server without it.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import random
import re
import socket
import subprocess
import sys
import time
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent))
from candidates import results_page, write_page  # noqa: E402  (the results pages' header: command, machine, commit)

ROOT = Path(__file__).resolve().parents[1]
LIFELONG = str(ROOT / ".venv" / "bin" / "lifelong") if (ROOT / ".venv" / "bin" / "lifelong").exists() else "lifelong"
USERS = 500
HISTORY = 50


def lifelong(*args: str) -> None:
    result = subprocess.run([LIFELONG, *args], capture_output=True, text=True)
    if result.returncode != 0:
        raise SystemExit(f"lifelong {' '.join(args)} failed:\n{result.stdout[-2000:]}\n{result.stderr[-2000:]}")


def din_artifact(work: Path, threads: int) -> Path:
    art = work / "art-din"
    if (art / "manifest.json").exists():
        return art
    rng = np.random.default_rng(0)
    n_users, n_items, events = 600, 5000, 80
    with open(work / "din.csv", "w") as handle:
        handle.write("user_id,item_id,timestamp\n")
        for u in range(n_users):
            for k, item in enumerate(rng.integers(0, n_items, events)):
                handle.write(f"u{u},i{item},{1600000000 + 60 * k}\n")
    columns = ["--column", "user_id=user_id", "--column", "item_id=item_id", "--column", "timestamp=timestamp"]
    lifelong("prepare", "--recipe", "csv", "--input", str(work / "din.csv"), "--out", str(work / "data-din"),
             "--max-train-per-user", "8", *columns)
    lifelong("train", "--data", str(work / "data-din"), "--model", "din", "--out", str(work / "run-din"), "--epochs", "1",
             "--threads", str(threads), "--no-progress")
    lifelong("export", str(work / "run-din"), "--out", str(art))
    return art


def retrieval_artifact(work: Path, n_items: int, threads: int) -> Path:
    art = work / "art-sasrec"
    if (art / "manifest.json").exists():
        return art
    rng = np.random.default_rng(1)
    per_user = 400
    n_users = max(USERS, -(-n_items // per_user))
    items = np.concatenate([rng.permutation(n_items), rng.integers(0, n_items, n_users * per_user - n_items)])
    with open(work / "seq.csv", "w") as handle:
        handle.write("user_id,item_id,timestamp\n")
        for u in range(n_users):
            block = items[u * per_user : (u + 1) * per_user]
            handle.write("".join(f"u{u},i{item},{1600000000 + 60 * k}\n" for k, item in enumerate(block)))
    columns = ["--column", "user_id=user_id", "--column", "item_id=item_id", "--column", "timestamp=timestamp"]
    lifelong("prepare", "--recipe", "csv", "--input", str(work / "seq.csv"), "--out", str(work / "data-seq"),
             "--protocol", "seq-loo", *columns)
    lifelong("train", "--data", str(work / "data-seq"), "--model", "sasrec", "--out", str(work / "run-sasrec"),
             "--epochs", "1", "--threads", str(threads), "--no-progress", "--batch-size", "256",
             "--seed", "2024",
             "--set", "embedding_dim=32", "--set", "loss=sampled", "--set", "negatives=128")
    lifelong("export", str(work / "run-sasrec"), "--out", str(art), "--index", "ivf", "--index-param", "nlist=1024",
             "--index-param", "nprobe=16", "--threads", str(threads))
    return art


def free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return probe.getsockname()[1]


class Server:
    def __init__(self, artifact: Path, store: Path, threads: int, batching: bool, index: str | None = None,
                 max_delay_ms: float = 0.0):
        self.port = free_port()
        self.base = f"http://127.0.0.1:{self.port}"
        command = [LIFELONG, "serve", str(artifact), "--store", f"sqlite:{store}", "--port", str(self.port),
                   "--threads", str(threads), "--max-batch", "32" if batching else "1", "--max-delay-ms", str(max_delay_ms)]
        if index:
            command += ["--index", index]
        self.log = open(f"{store}.log", "w")
        self.process = subprocess.Popen(command, stdout=self.log, stderr=subprocess.STDOUT)

    def __enter__(self) -> "Server":
        import httpx

        for _ in range(600):
            try:
                if httpx.get(f"{self.base}/readyz", timeout=5).status_code == 200:
                    return self
            except httpx.HTTPError:
                pass
            if self.process.poll() is not None:
                raise SystemExit(f"the server stopped: {Path(self.log.name).read_text()[-2000:]}")
            time.sleep(0.5)
        raise SystemExit("the server did not become ready in 5 minutes")

    def __exit__(self, *exc) -> None:
        self.process.terminate()
        self.process.wait(timeout=30)
        self.log.close()


def batch_stats(text: str) -> tuple[float, float]:
    """(sum, count) of the server's lifelong_batch_size histogram."""
    total = sum(float(v) for v in re.findall(r"^lifelong_batch_size_sum\{[^}]*\} (\S+)$", text, re.M))
    count = sum(float(v) for v in re.findall(r"^lifelong_batch_size_count\{[^}]*\} (\S+)$", text, re.M))
    return total, count


class Connection:
    """One keep-alive HTTP/1.1 connection on asyncio streams: a POST with a JSON body, the status and body of
    the answer (Content-Length framed, as uvicorn answers). The load generator's own cost per request is a
    few hundred microseconds, against 2 to 4 ms of CPU for httpx's client on this two-core machine, where
    the generator shares the cores with the server it measures."""

    def __init__(self, host: str, port: int) -> None:
        self.host, self.port = host, port
        self.reader = self.writer = None

    async def open(self) -> "Connection":
        self.reader, self.writer = await asyncio.open_connection(self.host, self.port)
        return self

    async def post(self, path: str, body: bytes) -> tuple[int, bytes]:
        self.writer.write(b"POST %s HTTP/1.1\r\nHost: %s:%d\r\nContent-Type: application/json\r\n"
                          b"Content-Length: %d\r\n\r\n%s" % (path.encode(), self.host.encode(), self.port,
                                                             len(body), body))
        head = await self.reader.readuntil(b"\r\n\r\n")
        length = 0
        for line in head.split(b"\r\n")[1:]:
            name, _, value = line.partition(b":")
            if name.strip().lower() == b"content-length":
                length = int(value)
        return int(head.split(b" ", 2)[1]), await self.reader.readexactly(length)

    def close(self) -> None:
        if self.writer is not None:
            self.writer.close()


@contextlib.asynccontextmanager
async def raw_senders(base: str, concurrency: int, errors: list[int]):
    """One sender per worker, each on its own keep-alive :class:`Connection`: ``(encode, [send, ...])`` with
    ``encode(body) -> bytes`` and ``await send(path, payload) -> (status, text)``."""
    import json

    host, port = base.removeprefix("http://").split(":")
    connections = [await Connection(host, int(port)).open() for _ in range(concurrency)]

    def sender(index: int):
        async def send(path: str, payload: bytes) -> tuple[int, bytes]:
            try:
                return await connections[index].post(path, payload)
            except (ConnectionError, asyncio.IncompleteReadError):  # a dropped connection: counted, sent again
                errors[0] += 1
                connections[index].close()
                connections[index] = await Connection(host, int(port)).open()
                return await connections[index].post(path, payload)
        return send

    try:
        yield (lambda body: json.dumps(body).encode()), [sender(i) for i in range(concurrency)]
    finally:
        for connection in connections:
            connection.close()


@contextlib.asynccontextmanager
async def httpx_senders(base: str, concurrency: int, errors: list[int]):
    """The first method: the workers share one httpx ``AsyncClient`` (``concurrency`` connections)."""
    import httpx

    limits = httpx.Limits(max_connections=concurrency, max_keepalive_connections=concurrency)
    async with httpx.AsyncClient(base_url=base, timeout=60, limits=limits) as client:
        async def send(path: str, body: dict) -> tuple[int, str]:
            try:
                answer = await client.post(path, json=body)
            except httpx.TransportError:  # a dropped keep-alive connection: counted, sent again
                errors[0] += 1
                answer = await client.post(path, json=body)
            return answer.status_code, answer.text

        yield (lambda body: body), [send] * concurrency


async def load(base: str, make_body, path: str, concurrency: int, requests: int, warmup: int,
               client_kind: str = "raw") -> dict:
    """p50, p99, requests/s and the server's mean batch size of ``requests`` timed requests after ``warmup``
    ones, ``concurrency`` workers each keeping one request in flight."""
    import urllib.request

    def metrics() -> tuple[float, float]:
        with urllib.request.urlopen(f"{base}/metrics", timeout=60) as answer:
            return batch_stats(answer.read().decode())

    errors = [0]
    opened = httpx_senders if client_kind == "httpx" else raw_senders
    async with opened(base, concurrency, errors) as (encode, senders):
        async def run(n: int, latencies: list | None):
            left = [n]

            async def worker(send):
                while left[0] > 0:
                    left[0] -= 1
                    payload = encode(make_body())
                    started = time.perf_counter()
                    status, text = await send(path, payload)
                    elapsed = time.perf_counter() - started
                    if status != 200:
                        raise SystemExit(f"{path} answered {status}: {text[:300]!r}")
                    if latencies is not None:
                        latencies.append(elapsed)

            await asyncio.gather(*(worker(send) for send in senders))

        await run(warmup, None)
        before = metrics()
        latencies: list[float] = []
        started = time.perf_counter()
        await run(requests, latencies)
        wall = time.perf_counter() - started
        after = metrics()
    ms = np.array(latencies) * 1000
    batches = after[1] - before[1]
    return {"p50": float(np.percentile(ms, 50)), "p99": float(np.percentile(ms, 99)), "rps": len(ms) / wall,
            "n": len(ms), "mean_batch": (after[0] - before[0]) / batches if batches else float("nan"),
            "errors": errors[0]}


def fill_store(base: str, item_ids: list[str]) -> None:
    import httpx

    rng = random.Random(7)
    with httpx.Client(base_url=base, timeout=60) as client:
        for u in range(USERS):
            events = [{"user_id": f"load{u}", "item_id": rng.choice(item_ids), "timestamp": 1700000000 + k}
                      for k in range(HISTORY)]
            answer = client.post("/v1/events", json={"events": events})
            assert answer.status_code == 200, answer.text


def item_ids_of(artifact: Path, n: int = 20000) -> list[str]:
    import json

    vocab = json.loads((artifact / "vocab.json").read_text())["item"]
    return [str(v) for v in vocab[:n]]


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--workdir", type=Path, default=Path("runs/serve_load"))
    parser.add_argument("--requests", type=int, default=1000)
    parser.add_argument("--warmup", type=int, default=100)
    parser.add_argument("--concurrency", default="1,8,32")
    parser.add_argument("--threads", type=int, default=1, help="server torch/faiss intra-op threads per forward pass "
                        "(and training threads); both cores are used by two batch workers or the request threads")
    parser.add_argument("--items", type=int, default=1_000_000, help="retrieval catalogue size")
    parser.add_argument("--candidates", type=int, default=200)
    parser.add_argument("--k", type=int, default=100)
    parser.add_argument("--max-delay-ms", type=float, default=0.0, help="the batched server's --max-delay-ms")
    parser.add_argument("--client", choices=["raw", "httpx"], default="raw",
                        help="the load generator's HTTP client: raw asyncio streams (a few hundred microseconds of "
                        "CPU per request) or httpx's AsyncClient (2 to 4 ms here, taken from the server's two cores)")
    parser.add_argument("--out", type=Path, help="also write the table (markdown) to this file")
    parser.add_argument("--skip-retrieval", action="store_true")
    parser.add_argument("--skip-ranking", action="store_true")
    args = parser.parse_args()
    work = args.workdir
    work.mkdir(parents=True, exist_ok=True)
    levels = [int(c) for c in args.concurrency.split(",")]
    setups = []
    if not args.skip_ranking:
        art = din_artifact(work, args.threads)
        items = item_ids_of(art)
        rng = random.Random(3)
        setups.append(("din", art, "/v1/rank", lambda: {"user_id": f"load{rng.randrange(USERS)}",
                                                        "candidates": rng.sample(items, args.candidates)},
                       f"{args.candidates} candidates, L={HISTORY}"))
    if not args.skip_retrieval:
        art = retrieval_artifact(work, args.items, args.threads)
        rng2 = random.Random(4)
        setups.append(("sasrec", art, "/v1/retrieve", lambda: {"user_id": f"load{rng2.randrange(USERS)}", "k": args.k},
                       f"k={args.k}, ivf over {args.items:,} items, L={HISTORY}"))
    rows = []
    for name, art, path, make_body, size in setups:
        items = item_ids_of(art)
        for batching in (True, False):
            store = work / f"store-{name}-{'batch' if batching else 'single'}.db"
            for suffix in ("", "-wal", "-shm"):
                Path(f"{store}{suffix}").unlink(missing_ok=True)
            with Server(art, store, args.threads, batching, index="ivf" if name == "sasrec" else None,
                        max_delay_ms=args.max_delay_ms) as server:
                fill_store(server.base, items)
                for concurrency in levels:
                    result = asyncio.run(load(server.base, make_body, path, concurrency, args.requests, args.warmup,
                                              args.client))
                    rows.append({"model": name, "size": size, "batching": batching, "concurrency": concurrency,
                                 **result})
                    print(f"{name} {'batched' if batching else 'single '} c={concurrency:>2}: p50 {result['p50']:.1f} ms, "
                          f"p99 {result['p99']:.1f} ms, {result['rps']:.0f} req/s, mean batch {result['mean_batch']:.1f}",
                          file=sys.stderr, flush=True)
    lines = [f"serve_load: server threads {args.threads}, batched server --max-batch 32 --max-delay-ms "
             f"{args.max_delay_ms}, {args.requests} timed requests per cell after {args.warmup} warm-up, "
             f"{args.client} client", "",
             "| model | request | micro-batching | concurrency | p50 ms | p99 ms | req/s | mean batch | resent |",
             "| --- | --- | --- | --- | --- | --- | --- | --- | --- |"]
    for r in rows:
        lines.append(f"| {r['model']} | {r['size']} | {'on' if r['batching'] else 'off'} | {r['concurrency']} | "
                     f"{r['p50']:.1f} | {r['p99']:.1f} | {r['rps']:.0f} | {r['mean_batch']:.1f} | {r['errors']} |")
    verdicts = []
    for name in sorted({r["model"] for r in rows}):
        on = {r["concurrency"]: r for r in rows if r["model"] == name and r["batching"]}
        off = {r["concurrency"]: r for r in rows if r["model"] == name and not r["batching"]}
        top = max(on)
        verdicts.append(f"- {name}: micro-batching at concurrency {top}: {on[top]['rps'] / off[top]['rps']:.2f}x the "
                        f"throughput without (bar >= 2x)")
        if name == "din" and 8 in on:
            verdicts.append(f"- din: p99 at concurrency 8 with micro-batching {on[8]['p99']:.1f} ms (bar < 20 ms), "
                            f"without {off[8]['p99']:.1f} ms")
    report = "\n".join(lines + [""] + verdicts)
    print("\n" + report)
    if args.out:
        write_page(args.out, results_page("Serving under load", report, args.threads))
    return 0


if __name__ == "__main__":
    sys.exit(main())
