"""Durability of ``POST /v1/events`` under SIGKILL (issue 29; PROTOCOLS.md, Serving protocol).

For each backend: start ``lifelong serve ARTIFACT --store URL`` on a free port; client threads append
events as fast as they can with ``POST /v1/events`` and record every event of a request answered 200;
at a random moment the server is killed with SIGKILL (for Redis, the redis-server is killed too, in a
random order, since that is where the events live); restart, repeat; at the end open the store and count
the acknowledged events that are missing. The bar: 0 lost.

The guarantee rests on: SQLite in WAL mode with ``synchronous=FULL`` (the WAL is fsynced at every
commit, before the answer); Redis with ``appendonly yes`` and ``appendfsync always`` (the AOF is
fsynced before Redis answers the write).

    .venv/bin/python benchmarks/serve_durability.py                  # both backends, 5 kills each
    .venv/bin/python benchmarks/serve_durability.py --kills 8 --backends sqlite --artifact ART

Without ``--artifact`` a tiny DIN artifact is built first (prepare, train 1 epoch, export; ~1 minute).
"""

from __future__ import annotations

import argparse
import http.client
import json
import random
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
from candidates import results_page, write_page  # noqa: E402  (the results pages' header: command, machine, commit)

ROOT = Path(__file__).resolve().parents[1]
BIN = Path(sys.executable).parent


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def lifelong(*args: str, cwd: Path | None = None) -> None:
    exe = BIN / "lifelong"
    cmd = [str(exe)] if exe.exists() else [sys.executable, "-m", "lifelong"]
    done = subprocess.run([*cmd, *args], cwd=cwd, capture_output=True, text=True)
    if done.returncode != 0:
        sys.exit(f"lifelong {' '.join(args)} failed:\n{done.stdout[-2000:]}{done.stderr[-2000:]}")


def build_artifact(work: Path) -> Path:
    """A tiny DIN artifact: 40 users x 12 events over 60 items (the bars' tiny log), 1 epoch."""
    rng = random.Random(1)
    (work / "in").mkdir(parents=True, exist_ok=True)
    with open(work / "in" / "log.csv", "w") as f:
        f.write("user_id,item_id,timestamp\n")
        for u in range(40):
            for k in range(12):
                f.write(f"u{u},i{rng.randrange(60)},{1600000000 + k * 100}\n")
    cols = ["--column", "user_id=user_id", "--column", "item_id=item_id", "--column", "timestamp=timestamp"]
    lifelong("prepare", "--recipe", "csv", "--input", str(work / "in" / "log.csv"), "--out", str(work / "data"), *cols)
    lifelong("train", "--data", str(work / "data"), "--model", "din", "--out", str(work / "run"), "--epochs", "1",
             "--threads", "1")
    lifelong("export", str(work / "run"), "--out", str(work / "art"))
    return work / "art"


class RedisServer:
    """Our own redis-server: AOF on, fsync at every write, no RDB snapshots (also tests/test_store.py's)."""

    def __init__(self, folder: Path):
        self.folder, self.port, self.proc = folder, free_port(), None
        folder.mkdir(parents=True, exist_ok=True)

    @property
    def url(self) -> str:
        return f"redis://127.0.0.1:{self.port}/0"

    def start(self) -> "RedisServer":
        import redis

        self.proc = subprocess.Popen(
            ["redis-server", "--port", str(self.port), "--bind", "127.0.0.1", "--save", "", "--appendonly", "yes",
             "--appendfsync", "always", "--dir", str(self.folder)],
            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        client = redis.Redis(host="127.0.0.1", port=self.port, socket_connect_timeout=1)
        deadline = time.monotonic() + 30
        while True:
            try:
                if client.ping():
                    break
            except (redis.ConnectionError, redis.BusyLoadingError):
                pass
            if self.proc.poll() is not None or time.monotonic() > deadline:
                raise RuntimeError(f"redis-server on port {self.port} did not start")
            time.sleep(0.05)
        client.close()
        return self

    def kill(self) -> None:
        if self.proc and self.proc.poll() is None:
            self.proc.send_signal(signal.SIGKILL)
            self.proc.wait()

    def stop(self) -> None:
        if self.proc and self.proc.poll() is None:
            self.proc.terminate()
            try:
                self.proc.wait(10)
            except subprocess.TimeoutExpired:
                self.kill()


class Server:
    """``lifelong serve ARTIFACT --store URL`` on a free port."""

    def __init__(self, artifact: Path, store: str, log: Path):
        self.artifact, self.store, self.log = artifact, store, log
        self.port = free_port()
        self.proc: subprocess.Popen | None = None

    def start(self) -> None:
        exe = BIN / "lifelong"
        cmd = [str(exe)] if exe.exists() else [sys.executable, "-m", "lifelong"]
        with open(self.log, "a") as log:
            self.proc = subprocess.Popen(
                [*cmd, "serve", str(self.artifact), "--store", self.store, "--host", "127.0.0.1",
                 "--port", str(self.port)], stdout=log, stderr=subprocess.STDOUT)
        deadline = time.monotonic() + 120
        while time.monotonic() < deadline:
            if self.proc.poll() is not None:
                sys.exit(f"lifelong serve exited with {self.proc.returncode}; see {self.log}:\n{self.log.read_text()[-2000:]}")
            try:
                conn = http.client.HTTPConnection("127.0.0.1", self.port, timeout=2)
                conn.request("GET", "/readyz")
                if conn.getresponse().status == 200:
                    conn.close()
                    return
                conn.close()
            except OSError:
                pass
            time.sleep(0.1)
        sys.exit(f"lifelong serve did not get ready in 120 s; see {self.log}")

    def kill(self) -> None:
        if self.proc and self.proc.poll() is None:
            self.proc.send_signal(signal.SIGKILL)
            self.proc.wait()


class Client(threading.Thread):
    """Appends batches as fast as it can; an event counts only once its request was answered 200."""

    def __init__(self, port: int, tag: str, users: int, batch: int, seed: int):
        super().__init__(daemon=True)
        self.port, self.tag, self.users, self.batch = port, tag, users, batch
        self.rng = random.Random(seed)
        self.acked: list[tuple[str, str]] = []
        self.refused = 0  # answered, but not 200 (e.g. 503 while redis-server was down)
        self.stop = threading.Event()

    def run(self) -> None:
        n = 0
        conn = None
        while not self.stop.is_set():
            batch = [{"user_id": f"user{self.rng.randrange(self.users)}", "item_id": f"{self.tag}-{n + k}",
                      "timestamp": 1_700_000_000 + n + k} for k in range(self.batch)]
            n += self.batch
            try:
                if conn is None:
                    conn = http.client.HTTPConnection("127.0.0.1", self.port, timeout=30)
                conn.request("POST", "/v1/events", body=json.dumps({"events": batch}),
                             headers={"content-type": "application/json"})
                response = conn.getresponse()
                response.read()
            except (OSError, http.client.HTTPException):  # the server is gone: nothing of this batch was acknowledged
                if conn is not None:
                    conn.close()
                conn = None
                time.sleep(0.01)
                continue
            if response.status == 200:
                self.acked.extend((e["user_id"], e["item_id"]) for e in batch)
            else:
                self.refused += 1


def run_backend(backend: str, artifact: Path, work: Path, kills: int, clients: int, rng: random.Random,
                min_s: float, max_s: float) -> dict:
    from lifelong.serve.store import open_store

    work.mkdir(parents=True, exist_ok=True)
    redis = None
    if backend == "redis":
        if shutil.which("redis-server") is None:
            sys.exit("redis-server is not on PATH: apt-get install -y redis-server")
        redis = RedisServer(work / "redis")
        redis.start()
        url = redis.url
    else:
        url = f"sqlite:{work / 'store.db'}"
    acked: set[tuple[str, str]] = set()
    refused = 0
    killed: list[str] = []
    try:
        for round_ in range(kills):
            server = Server(artifact, url, work / f"serve-{backend}.log")
            server.start()
            pool = [Client(server.port, f"r{round_}c{c}", 50, 5, rng.randrange(1 << 30)) for c in range(clients)]
            for client in pool:
                client.start()
            while not any(c.acked for c in pool):  # appends are flowing
                time.sleep(0.01)
            time.sleep(rng.uniform(min_s, max_s))
            if redis is not None:
                victims = [("serve", server.kill), ("redis-server", redis.kill)]
                rng.shuffle(victims)
                for name, kill in victims:
                    kill()
                    killed.append(name)
                    time.sleep(rng.uniform(0.0, 0.2))
            else:
                server.kill()
                killed.append("serve")
            for client in pool:
                client.stop.set()
            for client in pool:
                client.join()
                acked.update(client.acked)
                refused += client.refused
            if redis is not None:
                redis.start()  # replays its AOF
        # Restart once more as a service would, then count from the store the restarted server uses.
        server = Server(artifact, url, work / f"serve-{backend}.log")
        server.start()
        conn = http.client.HTTPConnection("127.0.0.1", server.port, timeout=30)
        conn.request("GET", "/readyz")
        ready = conn.getresponse().status == 200
        conn.close()
        server.kill()
        store = open_store(url)
        try:
            fsync = store.durability()
            stored: set[tuple[str, str]] = set()
            for u in range(50):
                stored.update((e.user_id, e.item_id) for e in store.history(f"user{u}"))
        finally:
            store.close()
    finally:
        if redis is not None:
            redis.stop()
    missing = acked - stored
    return {"backend": backend, "store": url, "rounds": kills, "killed": killed, "acknowledged": len(acked),
            "stored": len(stored), "lost": len(missing), "unacknowledged_but_stored": len(stored - acked),
            "refused_requests": refused, "ready_after_restart": ready, "fsync": fsync,
            "lost_examples": sorted(missing)[:5]}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--backends", nargs="+", default=["sqlite", "redis"], choices=["sqlite", "redis"])
    parser.add_argument("--kills", type=int, default=5, help="SIGKILL rounds per backend (at least 5 for the bar)")
    parser.add_argument("--clients", type=int, default=4, help="client threads appending concurrently")
    parser.add_argument("--artifact", type=Path, help="an exported artifact (default: build a tiny DIN one)")
    parser.add_argument("--min-s", type=float, default=0.5, help="earliest kill, seconds after the first ack")
    parser.add_argument("--max-s", type=float, default=3.0, help="latest kill, seconds after the first ack")
    parser.add_argument("--seed", type=int, default=29)
    parser.add_argument("--json", type=Path, help="also write the results here")
    parser.add_argument("--out", type=Path, help="also write the table (markdown) to this file")
    parser.add_argument("--keep", action="store_true", help="keep the work folder (logs, stores)")
    args = parser.parse_args()
    work = Path(tempfile.mkdtemp(prefix="lifelong-durability-"))
    rng = random.Random(args.seed)
    try:
        artifact = args.artifact or build_artifact(work / "tiny")
        results = [run_backend(b, artifact, work / b, args.kills, args.clients, rng, args.min_s, args.max_s)
                   for b in args.backends]
    finally:
        if args.keep:
            print(f"work folder: {work}")
        else:
            shutil.rmtree(work, ignore_errors=True)
    lines = [f"SIGKILL durability: lifelong serve, POST /v1/events, {args.clients} client threads x 5 events per "
             f"request, kill {args.min_s}-{args.max_s} s after the first ack, seed {args.seed}", "",
             "| backend | kills (SIGKILL) | acknowledged | lost | stored, never acked | refused (503) | fsync setting |",
             "|---|---|---|---:|---:|---:|---|"]
    for r in results:
        kinds = {k: r["killed"].count(k) for k in dict.fromkeys(r["killed"])}
        kills = f"{r['rounds']} rounds: " + ", ".join(f"{n} {k}" for k, n in kinds.items())
        fsync = ", ".join(f"{k}={v}" for k, v in r["fsync"].items())
        lines.append(f"| {r['backend']} | {kills} | {r['acknowledged']:,} | {r['lost']} | "
                     f"{r['unacknowledged_but_stored']} | {r['refused_requests']} | {fsync} |")
    print("\n" + "\n".join(lines))
    if args.out:
        write_page(args.out, results_page("Durability of acknowledged events under SIGKILL", "\n".join(lines),
                                          threads=1))
    if args.json:
        args.json.write_text(json.dumps(results, indent=2))
    bad = [r for r in results if r["lost"] or not r["ready_after_restart"]]
    if bad:
        for r in bad:
            print(f"{r['backend']}: {r['lost']} acknowledged events lost, e.g. {r['lost_examples']}", file=sys.stderr)
        sys.exit(1)


if __name__ == "__main__":
    main()
