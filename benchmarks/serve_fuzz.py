"""Fuzz ``lifelong serve`` from its OpenAPI schema with schemathesis: valid and invalid requests to every
endpoint (schemathesis' positive and negative generation, plus hand-written malformed bodies: broken JSON,
wrong content types, deep nesting, oversized bodies), sent to a running server in a separate process.

Checks: no response has status 500 (or any 5xx but a 503 from the store), the server's resident memory stays
bounded (growth printed, at most --max-growth-mb), and the store holds exactly the events of the accepted
``POST /v1/events`` requests (a rejected request never changed it). Prints the counts by endpoint and status.

    python benchmarks/serve_fuzz.py [--requests 10000] [--seed 0] [--workdir DIR] [--concurrency 8]

Without ``--artifact`` it trains two tiny runs (DIN and SASRec on a synthetic 40-user log), exports them and
fuzzes both servers, half of the requests each. ``tests/test_serve_fuzz.py`` runs the same cases in-process
(about 500).
"""

from __future__ import annotations

import argparse
import asyncio
import json
import random
import socket
import sqlite3
import subprocess
import sys
import tempfile
import time
from collections import Counter
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
from candidates import results_page, write_page  # noqa: E402  (the results pages' header: command, machine, commit)

ROOT = Path(__file__).resolve().parents[1]
LIFELONG = str(ROOT / ".venv" / "bin" / "lifelong") if (ROOT / ".venv" / "bin" / "lifelong").exists() else "lifelong"


def generate_cases(spec: dict, n: int, seed: int = 0) -> list[dict]:
    """About ``n`` request descriptions (``method``, ``url`` path, ``headers``, ``params``, ``json`` or ``data``)
    from the OpenAPI ``spec``: schemathesis' positive and negative cases of every operation (the POST endpoints
    weighted 4x), then the hand-written malformed ones."""
    import warnings

    import schemathesis
    from hypothesis import HealthCheck, Phase, given, settings
    from hypothesis import seed as hypothesis_seed

    schema = schemathesis.openapi.from_dict(spec)
    operations = [result.ok() for result in schema.get_all_operations()]
    weights = {op.label: (4 if op.method.upper() == "POST" else 1) for op in operations}
    total = sum(weights.values()) * 2
    cases: list[dict] = []
    rounds = 0
    while len(cases) < n - len(MALFORMED) and rounds < 20:
        for op in operations:
            for mode in schemathesis.GenerationMode:
                share = max(1, (n - len(MALFORMED)) * weights[op.label] // total)
                found: list = []

                @hypothesis_seed(seed * 1000 + rounds)
                @settings(max_examples=share, database=None, deadline=None, phases=[Phase.generate],
                          suppress_health_check=list(HealthCheck))
                @given(op.as_strategy(generation_mode=mode))
                def collect(case):
                    found.append(case)

                with warnings.catch_warnings():
                    warnings.simplefilter("ignore")
                    try:
                        collect()
                    except Exception:  # Unsatisfiable: no invalid request exists (a GET without parameters)
                        pass
                for case in found:
                    kwargs = case.as_transport_kwargs(base_url="")
                    kwargs.pop("cookies", None)
                    cases.append(kwargs)
        rounds += 1
    random.Random(seed).shuffle(cases)
    return cases[: n - len(MALFORMED)] + [dict(c) for c in MALFORMED]


_JSON = {"Content-Type": "application/json"}
MALFORMED = [
    {"method": "POST", "url": "/v1/rank", "headers": _JSON, "data": b'{"user_id":'},
    {"method": "POST", "url": "/v1/rank", "headers": _JSON, "data": b"\xff\xfe\x00garbage"},
    {"method": "POST", "url": "/v1/rank", "headers": {"Content-Type": "text/plain"}, "data": b"user_id=1"},
    {"method": "POST", "url": "/v1/rank", "headers": _JSON, "data": b"[" * 5000 + b"]" * 5000},
    {"method": "POST", "url": "/v1/rank", "headers": _JSON, "data": json.dumps({"user_id": "u", "candidates": ["i"] * 5000}).encode()},
    {"method": "POST", "url": "/v1/events", "headers": _JSON, "data": b'{"events":[{"user_id":"u","item_id":"i","timestamp":NaN}]}'},
    {"method": "POST", "url": "/v1/events", "headers": _JSON, "data": b'{"events":[{"user_id":"\\ud800","item_id":"i","timestamp":1}]}'},
    {"method": "POST", "url": "/v1/events", "headers": _JSON, "data": b'{"events":[{"user_id":"u","item_id":"i","timestamp":1e400}]}'},
    {"method": "POST", "url": "/v1/events", "headers": _JSON, "data": b"x" * (2 << 20)},
    {"method": "POST", "url": "/v1/retrieve", "headers": _JSON, "data": b'{"user_id":"u","k":1e9}'},
    {"method": "POST", "url": "/v1/retrieve", "headers": _JSON, "data": b'{"user_id":"u","k":100000000000000000000000}'},
    {"method": "GET", "url": "/v1/users/" + "u" * 5000 + "/history"},
    {"method": "GET", "url": "/v1/users/%ED%A0%80/history"},
    {"method": "GET", "url": "/v1/users/u/history", "params": {"limit": "-1"}},
    {"method": "DELETE", "url": "/v1/rank"},
]


async def send_all(client, cases: list[dict], concurrency: int = 8) -> tuple[Counter, list, int]:
    """Send ``cases`` with ``client`` (an ``httpx.AsyncClient``); return the counts by (endpoint, status), the
    first requests answered with a 5xx, and the number of events the server acknowledged."""
    counts: Counter = Counter()
    failures: list = []
    acknowledged = 0
    queue = list(enumerate(cases))

    async def worker():
        nonlocal acknowledged
        while queue:
            _, case = queue.pop()
            kwargs = {"headers": case.get("headers") or {}, "params": case.get("params") or {}}
            if "json" in case:
                kwargs["content"] = json.dumps(case["json"]).encode()  # NaN / Infinity reach the server as sent
                kwargs["headers"] = {**kwargs["headers"], "Content-Type": "application/json"}
            elif "data" in case:
                kwargs["content"] = case["data"] if isinstance(case["data"], bytes) else str(case["data"]).encode()
            answer = await client.request(case["method"], case["url"], **kwargs)
            path = case["url"].split("?")[0]
            endpoint = "/v1/users/{id}/history" if path.startswith("/v1/users/") else path
            counts[endpoint, answer.status_code] += 1
            if answer.status_code >= 500 and answer.status_code != 503 or answer.status_code == 500:
                failures.append((case, answer.status_code, answer.text[:300]))
            if path == "/v1/events" and answer.status_code == 200:
                acknowledged += answer.json()["appended"]

    await asyncio.gather(*(worker() for _ in range(concurrency)))
    return counts, failures, acknowledged


def stored_events(path: Path) -> int:
    with sqlite3.connect(path) as connection:
        return connection.execute("SELECT count(*) FROM lifelong_events").fetchone()[0]


def rss_mb(pid: int) -> float:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1]) / 1024
    return float("nan")


def tiny_artifacts(work: Path) -> dict[str, Path]:
    """Two tiny runs on a synthetic log (DIN, P1; SASRec, P2), exported."""
    rng = random.Random(1)
    log = work / "log.csv"
    lines = ["user_id,item_id,timestamp,behavior"]
    for u in range(40):
        for k in range(12):
            lines.append(f"u{u},i{rng.randrange(60)},{1600000000 + k * 100},{rng.choice(['pv', 'buy'])}")
    log.write_text("\n".join(lines) + "\n")
    columns = ["--column", "user_id=user_id", "--column", "item_id=item_id", "--column", "timestamp=timestamp",
               "--column", "behavior=behavior"]
    out = {}
    for model, protocol in (("din", "ctr-din"), ("sasrec", "seq-loo")):
        data, run, art = work / f"data-{model}", work / f"run-{model}", work / f"art-{model}"
        for command in (["prepare", "--recipe", "csv", "--input", str(log), "--out", str(data), "--protocol", protocol,
                         *columns],
                        ["train", "--data", str(data), "--model", model, "--out", str(run), "--epochs", "1",
                         "--threads", "1", "--no-progress", "--set", "embedding_dim=8"],
                        ["export", str(run), "--out", str(art)]):
            subprocess.run([LIFELONG, *command], check=True, capture_output=True)
        out[model] = art
    return out


def free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return probe.getsockname()[1]


def fuzz_server(artifact: Path, store: Path, n: int, seed: int, concurrency: int) -> dict:
    """Start ``lifelong serve`` in its own process, fuzz it with ``n`` requests, stop it; the findings."""
    import httpx

    port = free_port()
    server = subprocess.Popen([LIFELONG, "serve", str(artifact), "--store", f"sqlite:{store}", "--port", str(port),
                               "--max-candidates", "1000"], stdout=subprocess.PIPE, stderr=subprocess.STDOUT)
    base = f"http://127.0.0.1:{port}"
    try:
        for _ in range(120):
            try:
                if httpx.get(f"{base}/readyz").status_code == 200:
                    break
            except httpx.HTTPError:
                time.sleep(0.5)
        spec = httpx.get(f"{base}/openapi.json").json()
        started = time.perf_counter()
        cases = generate_cases(spec, n, seed)
        generated = time.perf_counter() - started
        rss_before = rss_mb(server.pid)

        async def run():
            async with httpx.AsyncClient(base_url=base, timeout=60) as client:
                return await send_all(client, cases, concurrency)

        started = time.perf_counter()
        counts, failures, acknowledged = asyncio.run(run())
        sent = time.perf_counter() - started
        rss_after = rss_mb(server.pid)
    finally:
        server.terminate()
        output = server.communicate(timeout=30)[0].decode(errors="replace")
    return {"counts": counts, "failures": failures, "acknowledged": acknowledged, "stored": stored_events(store),
            "rss_before": rss_before, "rss_after": rss_after, "generate_s": generated, "send_s": sent,
            "log": output}


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--requests", type=int, default=10_000)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--concurrency", type=int, default=8)
    parser.add_argument("--workdir", type=Path, default=None)
    parser.add_argument("--max-growth-mb", type=float, default=200.0)
    parser.add_argument("--out", type=Path, help="also write the tables (markdown) to this file")
    args = parser.parse_args()
    work = args.workdir or Path(tempfile.mkdtemp(prefix="serve-fuzz-"))
    work.mkdir(parents=True, exist_ok=True)
    artifacts = tiny_artifacts(work)
    ok = True
    totals: Counter = Counter()
    lines: list[str] = [f"schemathesis-generated requests against the OpenAPI schema, seed {args.seed}, "
                        f"concurrency {args.concurrency}"]
    for name, artifact in artifacts.items():
        store = work / f"store-{name}.db"
        if store.exists():
            store.unlink()
        found = fuzz_server(artifact, store, args.requests // len(artifacts), args.seed, args.concurrency)
        totals.update(found["counts"])
        growth = found["rss_after"] - found["rss_before"]
        lines += ["", f"{name} server: {sum(found['counts'].values()):,} requests (generated in "
                  f"{found['generate_s']:.0f} s, sent in {found['send_s']:.0f} s); RSS {found['rss_before']:.0f} -> "
                  f"{found['rss_after']:.0f} MB (+{growth:.0f}); events acknowledged {found['acknowledged']:,}, "
                  f"stored {found['stored']:,}", "", "| endpoint | status | requests |", "| --- | --- | --- |"]
        lines += [f"| {endpoint} | {status} | {count:,} |" for (endpoint, status), count in sorted(found["counts"].items())]
        for case, status, text in found["failures"][:5]:
            print(f"FAIL {status}: {case} -> {text}")
        if found["failures"] and "Traceback" in found["log"]:
            print(found["log"][-3000:])
        ok &= not found["failures"] and found["acknowledged"] == found["stored"] and growth < args.max_growth_mb
    by_status = Counter()
    for (_, status), count in totals.items():
        by_status[status] += count
    lines += ["", f"all: {sum(totals.values()):,} requests; by status: "
              + ", ".join(f"{status}: {count:,}" for status, count in sorted(by_status.items())),
              "", "PASS: no 500, memory bounded, store holds exactly the acknowledged events" if ok else "FAIL"]
    print("\n".join(lines))
    if args.out:
        write_page(args.out, results_page("Fuzzing the HTTP service", "\n".join(lines), 1))
    return 0 if ok else 1


if __name__ == "__main__":
    sys.exit(main())
