"""The behavior store (lifelong.serve.store): one suite for the SQLite and the Redis backend.

The Redis half runs a real ``redis-server`` (the Debian package; ``.ci/run`` installs it) started by the
``redis_server`` fixture with ``--appendonly yes --appendfsync always``; never a mock. Under ``CI=true`` a
missing ``redis-server`` fails the Redis tests; elsewhere they are skipped with the reason.
"""

from __future__ import annotations

import os
import random
import shutil
import signal
import sqlite3
import subprocess
import sys
import threading
import time
from pathlib import Path

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from lifelong.errors import UserError
from lifelong.serve.store import Event, RedisStore, SQLiteStore, open_store

try:
    import redis
except ImportError:  # the `serve` (and `test`) extra brings it; need_redis_server says so
    redis = None

BACKENDS = ["sqlite", "redis"]


# ------------------------------------------------------------------------------------------------ fixtures


sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "benchmarks"))
from serve_durability import RedisServer, free_port  # noqa: E402  (one redis-server launcher, the benchmark's)

sys.path.pop(0)


def need_redis_server() -> None:
    reason = None
    if redis is None:
        reason = "the redis package is not installed (pip install 'lifelong[serve]')"
    elif shutil.which("redis-server") is None:
        reason = "redis-server is not on PATH (apt-get install -y redis-server; .ci/run installs it)"
    if reason:
        if os.environ.get("CI") == "true":
            pytest.fail(reason + ": under CI=true the Redis store must be tested")
        pytest.skip(reason)


@pytest.fixture(scope="session")
def redis_server(tmp_path_factory):
    need_redis_server()
    server = RedisServer(tmp_path_factory.mktemp("redis")).start()
    yield server
    server.stop()


@pytest.fixture
def store_url(request, tmp_path):
    """A fresh, empty store URL of the backend named by the test's parameter."""
    if request.param == "sqlite":
        return f"sqlite:{tmp_path / 'store.db'}"
    server = request.getfixturevalue("redis_server")
    client = redis.Redis(host="127.0.0.1", port=server.port)
    client.flushall()  # our own server: nothing of anyone else's is in it
    client.close()
    return server.url


@pytest.fixture
def store(store_url):
    s = open_store(store_url)
    yield s
    s.close()


both = pytest.mark.parametrize("store_url", BACKENDS, indirect=True)


def ev(user, item, ts, **kw) -> Event:
    return Event(user, item, ts, **kw)


# ---------------------------------------------------------------------------------------- the interface


@both
def test_newest_first_by_timestamp_then_append_order(store):
    # In timestamp order first, then late events (out of order), ties at ts=20 and ts=5.
    store.append([ev("u", "a", 10), ev("u", "b", 20), ev("u", "c", 20)])
    store.append([ev("u", "d", 5), ev("u", "e", 30)])
    store.append([ev("u", "f", 20), ev("u", "g", 5), ev("u", "h", 1)])
    expected = ["e", "f", "c", "b", "a", "g", "d", "h"]
    assert [e.item_id for e in store.history("u")] == expected
    for limit in (1, 2, 3, 5, 8, 9, 100, 2**70):
        assert [e.item_id for e in store.history("u", limit)] == expected[:limit]
    assert store.history("u", 0) == []
    got = store.history("u")
    assert all(e.user_id == "u" for e in got)
    assert [e.timestamp for e in got] == sorted((e.timestamp for e in got), reverse=True)


_example = iter(range(10**9))


@both
@settings(max_examples=40, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(batches=st.lists(st.lists(st.integers(0, 6), min_size=1, max_size=6), min_size=1, max_size=6),
       limit=st.one_of(st.none(), st.integers(0, 40)))
def test_matches_a_sort_by_timestamp_then_append_order(store, batches, limit):
    """Any arrival order, many ties: the history is the events sorted by (timestamp, append order), newest first."""
    user = f"user{next(_example)}"
    appended = []
    for b, stamps in enumerate(batches):
        batch = [ev(user, f"b{b}e{k}", ts) for k, ts in enumerate(stamps)]
        batch.append(ev("bystander", f"b{b}", 3))
        store.append(batch)
        appended += batch[:-1]
    expected = [e for _, e in sorted(enumerate(appended), key=lambda p: (p[1].timestamp, p[0]), reverse=True)]
    assert store.history(user, limit) == (expected if limit is None else expected[:limit])


@both
def test_in_order_histories_and_limit(store):
    store.append([ev("u", f"i{k}", 1000 + k) for k in range(50)])
    store.append([ev("v", "x", 7)])
    assert [e.item_id for e in store.history("u", 3)] == ["i49", "i48", "i47"]
    assert len(store.history("u")) == 50
    assert [e.item_id for e in store.history("v")] == ["x"]
    assert store.history("nobody") == [] and store.history("nobody", 5) == []
    for bad in (-1, 1.5, "3", True):
        with pytest.raises(UserError):
            store.history("u", bad)


@both
def test_round_trips_behavior_context_and_odd_ids(store):
    events = [
        ev("ü s/er:1", "item:1\t☃", 1, behavior="click", context={"page": "home", "pos": 3, "score": 0.25}),
        ev("ü s/er:1", "{json}", 2, behavior=None, context={"k": ""}),
        ev("ü s/er:1", "x", -5),
    ]
    assert store.append(events) == 3
    got = store.history("ü s/er:1")
    assert got == [events[1], events[0], events[2]]
    assert isinstance(got[1].context["pos"], int) and isinstance(got[1].context["score"], float)


@both
def test_version_changes_with_every_append_of_that_user(store):
    assert store.version("u") == 0
    store.append([ev("u", "a", 1)])
    v1 = store.version("u")
    assert v1 != 0
    store.append([ev("w", "a", 1)])
    assert store.version("u") == v1  # another user's append leaves u's version alone
    store.append([ev("u", "b", 0)])  # an out-of-order event changes the history too
    v2 = store.version("u")
    assert v2 != v1 and v2 > v1
    store.append([ev("u", "c", 5), ev("w", "b", 2)])
    assert store.version("u") not in (v1, v2)
    assert store.append([]) == 0
    assert store.version("u") == store.version("u")


BAD_EVENTS = [
    ev("", "a", 1),
    ev("u", "", 1),
    ev("u", "a", 1.5),
    ev("u", "a", True),
    ev("u", "a", 2**60),
    ev(7, "a", 1),
    ev("u", "a", 1, behavior=3),
    ev("u", "a", 1, context={"x": float("nan")}),
    ev("u", "a", 1, context={"x": [1, 2]}),
    ev("u", "a", 1, context={"x": None}),
    ev("u", "a", 1, context=["x"]),
    ev("u", "x" * 5000, 1),
    ev("u", "\ud800", 1),
    {"user_id": "u", "item_id": "a", "timestamp": 1},
]


@both
@pytest.mark.parametrize("bad", range(len(BAD_EVENTS)))
def test_a_bad_batch_stores_nothing(store, bad):
    store.append([ev("u", "before", 1), ev("w", "before", 1)])
    before = (store.history("u"), store.history("w"), store.version("u"), store.version("w"))
    batch = [ev("u", "new1", 5), ev("w", "new2", 6), BAD_EVENTS[bad], ev("u", "new3", 7)]
    with pytest.raises(UserError) as info:
        store.append(batch)
    assert "event 2" in str(info.value)
    assert (store.history("u"), store.history("w"), store.version("u"), store.version("w")) == before
    for not_a_batch in ("abc", ev("u", "a", 1), None, 5):
        with pytest.raises(UserError):
            store.append(not_a_batch)
    assert store.history("u") == before[0]


@both
def test_concurrent_appends_from_threads(store):
    threads, rounds, per = 8, 30, 4
    errors: list[BaseException] = []
    barrier = threading.Barrier(threads)

    def work(t: int) -> None:
        try:
            barrier.wait()
            for r in range(rounds):
                batch = [ev("shared", f"t{t}-r{r}-{k}", r) for k in range(per)]
                batch.append(ev(f"own{t}", f"r{r}", r))
                assert store.append(batch) == per + 1
                assert store.history(f"own{t}", 1)[0].item_id == f"r{r}"
                store.version("shared")
        except BaseException as error:  # noqa: BLE001 - reported below
            errors.append(error)

    pool = [threading.Thread(target=work, args=(t,)) for t in range(threads)]
    for th in pool:
        th.start()
    for th in pool:
        th.join()
    assert not errors, errors
    shared = store.history("shared")
    assert len(shared) == threads * rounds * per
    assert len({e.item_id for e in shared}) == len(shared)
    assert [e.timestamp for e in shared] == sorted((e.timestamp for e in shared), reverse=True)
    for t in range(threads):
        # within a thread, equal timestamps never happen across rounds; the batch order within a round is kept
        own = store.history(f"own{t}")
        assert [e.item_id for e in own] == [f"r{r}" for r in reversed(range(rounds))]
        mine = [e.item_id for e in shared if e.item_id.startswith(f"t{t}-")]
        for r in range(rounds):
            in_round = [i for i in mine if i.startswith(f"t{t}-r{r}-")]
            assert in_round == [f"t{t}-r{r}-{k}" for k in reversed(range(per))]
    versions = {store.version(f"own{t}") for t in range(threads)}
    assert len(versions) == threads  # every user's last append got its own sequence number


@both
def test_reopen_keeps_everything(store_url):
    s = open_store(store_url)
    s.append([ev("u", "a", 2, behavior="buy", context={"n": 1}), ev("u", "b", 1)])
    history, version = s.history("u"), s.version("u")
    assert s.ping()
    s.close()
    assert not s.ping()
    s.close()  # twice is fine
    again = open_store(store_url)
    try:
        assert again.history("u") == history and again.version("u") == version
        again.append([ev("u", "c", 3)])
        assert again.version("u") > version
        assert [e.item_id for e in again.history("u")] == ["c", "a", "b"]
    finally:
        again.close()


@both
def test_reads_a_lifelong_history(store):
    n = 20_000
    events = [ev("long", f"i{k % 997}", 1_600_000_000 + k) for k in range(n)]
    for start in range(0, n, 5000):
        store.append(events[start:start + 5000])
    got = store.history("long")
    assert len(got) == n and got[0] == events[-1] and got[-1] == events[0]
    assert store.history("long", 200) == got[:200]


# ------------------------------------------------------------------------------------------------- SQLite


def test_sqlite_runs_in_wal_with_synchronous_full_on_every_connection(tmp_path):
    path = tmp_path / "s.db"
    store = open_store(f"sqlite:{path}")
    try:
        assert isinstance(store, SQLiteStore)
        assert store.durability() == {"journal_mode": "wal", "synchronous": "FULL"}
        # Connections opened for other threads carry the same per-connection setting.
        seen = []
        barrier = threading.Barrier(4)

        def grab():
            conn = store._acquire()
            barrier.wait()
            seen.append((conn.execute("PRAGMA journal_mode").fetchone()[0], conn.execute("PRAGMA synchronous").fetchone()[0]))
            store._release(conn)

        pool = [threading.Thread(target=grab) for _ in range(4)]
        [th.start() for th in pool]
        [th.join() for th in pool]
        assert seen == [("wal", 2)] * 4
        store.append([ev("u", "a", 1)])
    finally:
        store.close()
    other = sqlite3.connect(path)
    assert other.execute("PRAGMA journal_mode").fetchone()[0] == "wal"  # persistent in the file
    assert dict(other.execute("SELECT key, value FROM lifelong_store"))["format"] == "lifelong-behavior-store"
    other.close()


def test_sqlite_refuses_files_it_did_not_create(tmp_path):
    foreign = tmp_path / "app.db"
    conn = sqlite3.connect(foreign)
    conn.execute("CREATE TABLE orders (id INTEGER)")
    conn.execute("INSERT INTO orders VALUES (1)")
    conn.commit()
    conn.close()
    before = foreign.read_bytes()
    with pytest.raises(UserError, match="did not create"):
        open_store(f"sqlite:{foreign}")
    assert foreign.read_bytes() == before
    conn = sqlite3.connect(foreign)
    assert [r[0] for r in conn.execute("SELECT name FROM sqlite_master WHERE type='table'")] == ["orders"]
    conn.close()

    text = tmp_path / "notes.txt"
    text.write_text("my notes, not a database\n" * 10)
    with pytest.raises(UserError, match="not a SQLite database"):
        open_store(f"sqlite:{text}")
    assert text.read_text() == "my notes, not a database\n" * 10

    with pytest.raises(UserError, match="folder"):
        open_store(f"sqlite:{tmp_path}")


def test_sqlite_creates_folders_and_accepts_url_forms(tmp_path):
    for url in (f"sqlite:{tmp_path}/a/b/s.db", f"sqlite://{tmp_path}/c.db"):
        s = open_store(url)
        s.append([ev("u", "a", 1)])
        s.close()
    assert (tmp_path / "a" / "b" / "s.db").exists() and (tmp_path / "c.db").exists()


@pytest.mark.parametrize("url", ["", "   ", "sqlite:", "sqlite::memory:", "postgres://x/y", "store.db", "redis://", "redis://:6379",
                                 "redis://127.0.0.1:notaport", "redis://127.0.0.1:6379/abc", "redis://127.0.0.1:1/0?durability=maybe"])
def test_bad_urls_are_user_errors(url):
    with pytest.raises(UserError) as info:
        open_store(url)
    message = str(info.value)
    assert "sqlite:" in message or "redis" in message or "durab" in message


def test_unreachable_redis_is_a_user_error_saying_how_to_fix():
    need_redis_server()
    port = free_port()  # nothing listens there
    t = time.monotonic()
    with pytest.raises(UserError, match=f"cannot reach Redis at 127.0.0.1:{port}.*redis-server"):
        open_store(f"redis://127.0.0.1:{port}/0")
    assert time.monotonic() - t < 10


# -------------------------------------------------------------------------------------------------- Redis


def test_redis_checks_the_fsync_setting(redis_server):
    client = redis.Redis(host="127.0.0.1", port=redis_server.port)
    store = open_store(redis_server.url)
    try:
        assert isinstance(store, RedisStore)
        assert store.durability() == {"appendonly": "yes", "appendfsync": "always"}
    finally:
        store.close()
    client.config_set("appendfsync", "everysec")
    try:
        with pytest.raises(UserError, match="appendfsync always"):
            open_store(redis_server.url)
        relaxed = open_store(redis_server.url + "?durability=relaxed")
        relaxed.append([ev("u", "a", 1)])
        assert relaxed.history("u")[0].item_id == "a"
        relaxed.close()
    finally:
        client.config_set("appendfsync", "always")
        client.flushall()
        client.close()


def test_redis_refuses_a_database_whose_marker_is_not_ours(redis_server):
    client = redis.Redis(host="127.0.0.1", port=redis_server.port)
    client.flushall()
    client.set("lifelong:store", "someone else's value")
    try:
        with pytest.raises(UserError, match="will not write"):
            open_store(redis_server.url)
        assert client.get("lifelong:store") == b"someone else's value"
        assert client.dbsize() == 1
    finally:
        client.flushall()
        client.close()


def test_redis_server_restart_keeps_acknowledged_events(tmp_path):
    need_redis_server()
    server = RedisServer(tmp_path / "r").start()
    try:
        store = open_store(server.url)
        store.append([ev("u", f"i{k}", k) for k in range(100)])
        store.append([ev("u", "late", -1)])
        version = store.version("u")
        server.kill()  # SIGKILL: only what was fsynced to the AOF survives
        assert not store.ping()
        with pytest.raises(Exception):
            store.append([ev("u", "lost?", 1000)])  # not acknowledged, so free to be lost or kept
        server.start()
        got = [e.item_id for e in store.history("u")]
        assert got[:100] == [f"i{k}" for k in reversed(range(100))] and got[-1] == "late"
        assert store.version("u") == version
        store.close()
    finally:
        server.stop()


# --------------------------------------------------------------------------------------------- durability

WRITER = r"""
import sys
from lifelong.serve.store import Event, open_store
url, tag = sys.argv[1], sys.argv[2]
store = open_store(url)
n = 0
while True:
    batch = [Event(f"user{(n + k) % 7}", f"{tag}-{n + k}", n + k) for k in range(3)]
    try:
        store.append(batch)
    except Exception as error:
        print("error", type(error).__name__, flush=True)
        continue
    sys.stdout.write(f"ack {n}\n")
    sys.stdout.flush()
    n += 3
"""


def _kill_round(url: str, tag: str, kill_redis: RedisServer | None, rng: random.Random) -> set[str]:
    """Start a writer appending as fast as it can, SIGKILL it (or the redis-server) at a random moment;
    the events of the batches it acknowledged before."""
    proc = subprocess.Popen([sys.executable, "-c", WRITER, url, tag], stdout=subprocess.PIPE, text=True)
    acked: set[str] = set()
    first = proc.stdout.readline()  # wait until it is writing
    assert first.startswith(("ack", "error")), first
    lines = [first]
    time.sleep(rng.uniform(0.2, 0.8))
    if kill_redis is not None:
        kill_redis.kill()
        time.sleep(0.1)
    proc.send_signal(signal.SIGKILL)
    out, _ = proc.communicate()
    # An acknowledgement counts only when its whole line came out (a kill can cut the last one short).
    lines += out.split("\n")[:-1]
    for line in lines:
        if line.startswith("ack "):
            n = int(line.split()[1])
            acked.update(f"{tag}-{n + k}" for k in range(3))
    return acked


@pytest.mark.slow
@pytest.mark.parametrize("backend", BACKENDS)
def test_sigkill_loses_no_acknowledged_event(backend, tmp_path):
    """Two SIGKILLs at random moments while a process appends as fast as it can: the SQLite writer
    (the store lives in it) or the redis-server (and the writer); every acknowledged event survives."""
    rng = random.Random(29)
    server = None
    if backend == "redis":
        need_redis_server()
        server = RedisServer(tmp_path / "r").start()
        url = server.url
    else:
        url = f"sqlite:{tmp_path / 'store.db'}"
    try:
        acked: set[str] = set()
        for round_ in range(2):
            acked |= _kill_round(url, f"k{round_}", server, rng)
            if server is not None:
                server.start()
        store = open_store(url)
        stored = {e.item_id for u in range(7) for e in store.history(f"user{u}")}
        store.close()
        assert len(acked) > 30, f"the writer acknowledged only {len(acked)} events"
        missing = acked - stored
        assert not missing, f"{len(missing)} of {len(acked)} acknowledged events lost: {sorted(missing)[:5]}"
    finally:
        if server is not None:
            server.stop()
