"""The behavior store: each user's event history, appended by ``POST /v1/events`` and read to score a user.

Two backends behind one interface (:class:`BehaviorStore`), opened from a URL by :func:`open_store`:

- ``sqlite:PATH`` (the default, embedded): one SQLite file in WAL mode with ``synchronous=FULL``, so a
  commit has been fsynced to the write-ahead log before :meth:`~BehaviorStore.append` returns. Events live
  in a ``WITHOUT ROWID`` table keyed by ``(user_id, timestamp, seq)``: a user's history is one contiguous
  range of the B-tree, read newest-first by walking it backwards (``LIMIT`` stops the walk early). An
  append is one B-tree insert per event. Thread-safe: a pool of connections (one per concurrent caller,
  so reads run beside a write in WAL mode) and one in-process writer lock; other processes on the same
  file wait on SQLite's own lock (``busy_timeout``).
- ``redis://HOST:PORT[/DB]`` (``rediss://`` for TLS): per user a list of the events that arrived in
  timestamp order (``RPUSH``, O(1) per event), a sorted set of the late ones, and a hash with the user's
  version and largest timestamp. A batch is written by one Lua script, so it is applied whole or not at
  all, also in the append-only file. The guarantee rests on the server's ``appendonly yes`` and
  ``appendfsync always`` (Redis fsyncs the AOF before it answers); :func:`open_store` checks both with
  ``CONFIG GET`` and refuses a server that does not fsync every write, unless the URL says
  ``?durability=relaxed``. One Redis server, not a cluster. Keys: ``lifelong:*``.

Timestamps out of order. A history is read newest first by ``(timestamp, append order)``, whatever order
the events arrived in. SQLite keeps the rows sorted by its key, so late events cost one B-tree insert like
any other. Redis appends an event whose timestamp is at least the user's largest so far to the list, which
therefore stays sorted; a late event (an earlier timestamp) goes to the user's sorted set instead, scored by
timestamp, its member prefixed by its sequence number (O(log k) for k late events). A read takes the newest
``limit`` of each (``LRANGE``, ``ZREVRANGE``, in one transaction) and merges them: O(limit) plus the
decoding, whatever the arrival order. On equal timestamps a late event is the newer one: every in-order
event appended after it has a larger timestamp.

Versions. :meth:`~BehaviorStore.version` is a store-wide sequence number taken by the user's last append
(0 for a user with no events): it grows with every append touching the user and never repeats, so a
cache keyed by ``(user_id, version)`` is never stale (read the version before the history).

Validation. :meth:`~BehaviorStore.append` checks the whole batch before it writes anything and raises
:class:`~lifelong.errors.UserError` for a bad event (nothing is stored then); a backend failure (disk,
connection lost, a locked database past the timeout) is a :class:`StoreUnavailable`.
"""

from __future__ import annotations

import json
import logging
import math
import queue
import sqlite3
import threading
import urllib.parse
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Protocol, Sequence, runtime_checkable

from lifelong.errors import UserError

log = logging.getLogger(__name__)

FORMAT = "lifelong-behavior-store"
FORMAT_VERSION = 1
MAX_ID_LENGTH = 1024
MAX_CONTEXT_KEYS = 64
TIMESTAMP_LIMIT = 2**53  # |timestamp| < 2**53: exact in a double (Redis' Lua numbers) and in int64


@dataclass(frozen=True)
class Event:
    user_id: str
    item_id: str
    timestamp: int
    behavior: str | None = None
    context: dict[str, str | int | float] | None = None


@runtime_checkable
class BehaviorStore(Protocol):
    def append(self, events: Sequence[Event]) -> int:
        """Store ``events``; durable when it returns; the number appended; all or nothing per call."""
        ...

    def history(self, user_id: str, limit: int | None = None) -> list[Event]:
        """The user's events, newest first (by timestamp, ties by append order), at most ``limit``."""
        ...

    def version(self, user_id: str) -> int:
        """A number that changes whenever the user's history changes (0: no events)."""
        ...

    def ping(self) -> bool:
        ...

    def close(self) -> None:
        ...


class StoreUnavailable(RuntimeError):
    """The store could not be read or written (disk, connection, lock timeout): a 503, not the user's fault."""


# ---------------------------------------------------------------------------------------------- validation


def _check_id(value: Any, what: str, where: str) -> str:
    if not isinstance(value, str):
        raise UserError(f"{where}: {what} must be a string, got {type(value).__name__} {value!r:.60}")
    if not value:
        raise UserError(f"{where}: {what} is empty; give a non-empty string")
    if len(value) > MAX_ID_LENGTH:
        raise UserError(f"{where}: {what} has {len(value)} characters, at most {MAX_ID_LENGTH} are allowed")
    try:
        value.encode("utf-8")
    except UnicodeEncodeError:
        raise UserError(f"{where}: {what} is not valid Unicode text (a lone surrogate)") from None
    return value


def _check_event(event: Any, index: int) -> None:
    where = f"event {index}"
    if not isinstance(event, Event):
        raise UserError(f"{where} is a {type(event).__name__}, expected lifelong.serve.store.Event")
    _check_id(event.user_id, "user_id", where)
    _check_id(event.item_id, "item_id", where)
    ts = event.timestamp
    if isinstance(ts, bool) or not isinstance(ts, int):
        raise UserError(f"{where}: timestamp must be an integer, got {type(ts).__name__} {ts!r:.60}")
    if not -TIMESTAMP_LIMIT < ts < TIMESTAMP_LIMIT:
        raise UserError(f"{where}: timestamp {ts} is out of range; |timestamp| must be below 2**53")
    if event.behavior is not None:
        _check_id(event.behavior, "behavior", where)
    context = event.context
    if context is None:
        return
    if not isinstance(context, dict):
        raise UserError(f"{where}: context must be an object of string keys, got {type(context).__name__}")
    if len(context) > MAX_CONTEXT_KEYS:
        raise UserError(f"{where}: context has {len(context)} keys, at most {MAX_CONTEXT_KEYS} are allowed")
    for key, value in context.items():
        _check_id(key, "a context key", where)
        if isinstance(value, bool) or not isinstance(value, (str, int, float)):
            raise UserError(
                f"{where}: context[{key!r}] must be a string or a number, got {type(value).__name__}"
            )
        if isinstance(value, str) and value:
            _check_id(value, f"context[{key!r}]", where)
        elif isinstance(value, float) and not math.isfinite(value):
            raise UserError(f"{where}: context[{key!r}] is {value}; give a finite number")


def _check_events(events: Sequence[Event]) -> list[Event]:
    if isinstance(events, (str, bytes, Event)) or not isinstance(events, Sequence):
        raise UserError(f"append takes a sequence of Event, got {type(events).__name__}")
    events = list(events)
    for index, event in enumerate(events):
        _check_event(event, index)
    return events


def _check_limit(limit: int | None) -> int | None:
    if limit is None:
        return None
    if isinstance(limit, bool) or not isinstance(limit, int) or limit < 0:
        raise UserError(f"limit must be a non-negative integer or None, got {limit!r}")
    return min(limit, 2**40)  # more than any history; keeps SQLite's and Redis' 64-bit arguments in range


def _context_json(context: dict | None) -> str | None:
    if context is None:
        return None
    return json.dumps(context, separators=(",", ":"), ensure_ascii=False, allow_nan=False)


# -------------------------------------------------------------------------------------------------- SQLite

_SQLITE_SCHEMA = """
CREATE TABLE lifelong_store (key TEXT PRIMARY KEY, value TEXT NOT NULL) WITHOUT ROWID;
CREATE TABLE lifelong_events (
    user_id TEXT NOT NULL,
    timestamp INTEGER NOT NULL,
    seq INTEGER NOT NULL,
    item_id TEXT NOT NULL,
    behavior TEXT,
    context TEXT,
    PRIMARY KEY (user_id, timestamp, seq)
) WITHOUT ROWID;
CREATE TABLE lifelong_users (user_id TEXT PRIMARY KEY, version INTEGER NOT NULL) WITHOUT ROWID;
"""

_SQLITE_MAGIC = b"SQLite format 3\x00"


class SQLiteStore:
    """The embedded store: SQLite in WAL mode, ``synchronous=FULL``. See the module docstring."""

    backend = "sqlite"
    # reads are local indexed lookups (tens of microseconds; WAL readers never wait for the writer): the
    # server runs them on its event loop rather than hopping to a worker thread, which under load waited
    # milliseconds for the GIL (measured: 6 ms per version lookup at 32 concurrent rank requests)
    inline_reads = True

    def __init__(self, path: str | Path, *, busy_timeout_s: float = 30.0):
        self.path = Path(path)
        self._busy_timeout_s = busy_timeout_s
        self._write_lock = threading.Lock()
        self._idle: queue.SimpleQueue[sqlite3.Connection] = queue.SimpleQueue()
        self._all: list[sqlite3.Connection] = []
        self._all_lock = threading.Lock()
        self._closed = False
        self._check_file()
        conn = self._connect()
        try:
            self._init_schema(conn)
        except BaseException:
            conn.close()
            raise
        self._release(conn)

    # connections ---------------------------------------------------------------------------------------

    def _check_file(self) -> None:
        path = self.path
        where = f"sqlite:{path}"
        if path.is_dir():
            raise UserError(f"{where} is a folder; give a file path for the behavior store, e.g. sqlite:{path}/store.db")
        if path.exists():
            try:
                with open(path, "rb") as f:
                    head = f.read(16)
            except OSError as error:
                raise UserError(f"cannot read {where}: {error.strerror or error}") from None
            if head and head != _SQLITE_MAGIC:
                raise UserError(
                    f"{path} is not a SQLite database; lifelong will not write into it. "
                    f"Give a new path for the behavior store (--store sqlite:NEW_PATH)"
                )
        else:
            try:
                path.parent.mkdir(parents=True, exist_ok=True)
            except OSError as error:
                raise UserError(
                    f"cannot create the folder {path.parent} for {where}: {error.strerror or error}"
                ) from None

    def _connect(self) -> sqlite3.Connection:
        try:
            conn = sqlite3.connect(
                str(self.path), timeout=self._busy_timeout_s, isolation_level=None, check_same_thread=False
            )
        except sqlite3.Error as error:
            raise UserError(f"cannot open sqlite:{self.path}: {error}; check the path and its permissions") from None
        try:
            # Per connection: fsync the WAL at every commit (the durability of an acknowledged append).
            conn.execute("PRAGMA synchronous=FULL")
            conn.execute(f"PRAGMA busy_timeout={int(self._busy_timeout_s * 1000)}")
        except sqlite3.Error as error:
            conn.close()
            raise UserError(f"cannot open sqlite:{self.path}: {error}") from None
        with self._all_lock:
            self._all.append(conn)
        return conn

    def _acquire(self) -> sqlite3.Connection:
        if self._closed:
            raise StoreUnavailable(f"the behavior store sqlite:{self.path} is closed")
        try:
            return self._idle.get_nowait()
        except queue.Empty:
            return self._connect()

    def _release(self, conn: sqlite3.Connection) -> None:
        if self._closed:
            conn.close()
        else:
            self._idle.put(conn)

    def _init_schema(self, conn: sqlite3.Connection) -> None:
        where = f"sqlite:{self.path}"
        try:
            tables = {row[0] for row in conn.execute("SELECT name FROM sqlite_master WHERE type = 'table'")}
        except sqlite3.DatabaseError as error:
            raise UserError(f"{self.path} is not a usable SQLite database ({error}); give a new path for the store") from None
        if tables and "lifelong_store" not in tables:
            shown = ", ".join(sorted(tables)[:5]) + (", ..." if len(tables) > 5 else "")
            raise UserError(
                f"{self.path} is a SQLite database that lifelong did not create (tables: {shown}); "
                f"lifelong will not write into it. Give a new path for the behavior store (--store sqlite:NEW_PATH)"
            )
        try:
            mode = conn.execute("PRAGMA journal_mode=WAL").fetchone()[0]
        except sqlite3.Error as error:
            raise UserError(f"cannot switch {where} to WAL mode: {error}") from None
        if str(mode).lower() != "wal":
            raise UserError(
                f"{where}: SQLite refused WAL mode (journal_mode is {mode}); put the store on a local file system"
            )
        if not tables:
            try:
                conn.execute("BEGIN IMMEDIATE")
                # Another process may have created it between our look and the lock.
                if not conn.execute("SELECT 1 FROM sqlite_master WHERE name = 'lifelong_store'").fetchone():
                    for statement in _SQLITE_SCHEMA.split(";"):
                        if statement.strip():
                            conn.execute(statement)
                    conn.executemany(
                        "INSERT INTO lifelong_store VALUES (?, ?)",
                        [("format", FORMAT), ("format_version", str(FORMAT_VERSION)), ("last_seq", "0")],
                    )
                conn.execute("COMMIT")
            except sqlite3.Error as error:
                if conn.in_transaction:
                    conn.execute("ROLLBACK")
                raise UserError(f"cannot create the behavior store in {where}: {error}") from None
        meta = dict(conn.execute("SELECT key, value FROM lifelong_store"))
        if meta.get("format") != FORMAT:
            raise UserError(f"{self.path} is not a lifelong behavior store; give a new path (--store sqlite:NEW_PATH)")
        if meta.get("format_version") != str(FORMAT_VERSION):
            raise UserError(
                f"{where} is a behavior store of format version {meta.get('format_version')}; this lifelong reads "
                f"version {FORMAT_VERSION}. Use the lifelong that wrote it, or a new path"
            )

    # the interface ---------------------------------------------------------------------------------------

    def append(self, events: Sequence[Event]) -> int:
        events = _check_events(events)
        if not events:
            return 0
        rows = [
            (e.user_id, e.timestamp, e.item_id, e.behavior, _context_json(e.context)) for e in events
        ]
        conn = self._acquire()
        try:
            with self._write_lock:
                try:
                    conn.execute("BEGIN IMMEDIATE")
                    last = int(conn.execute("SELECT value FROM lifelong_store WHERE key = 'last_seq'").fetchone()[0])
                    versions: dict[str, int] = {}
                    numbered = []
                    for offset, (user, ts, item, behavior, context) in enumerate(rows, start=1):
                        versions[user] = last + offset
                        numbered.append((user, ts, last + offset, item, behavior, context))
                    conn.executemany("INSERT INTO lifelong_events VALUES (?, ?, ?, ?, ?, ?)", numbered)
                    conn.executemany(
                        "INSERT INTO lifelong_users VALUES (?, ?) "
                        "ON CONFLICT (user_id) DO UPDATE SET version = excluded.version",
                        list(versions.items()),
                    )
                    conn.execute(
                        "UPDATE lifelong_store SET value = ? WHERE key = 'last_seq'", (str(last + len(rows)),)
                    )
                    conn.execute("COMMIT")  # synchronous=FULL: the WAL is fsynced before COMMIT returns
                except sqlite3.Error as error:
                    if conn.in_transaction:
                        try:
                            conn.execute("ROLLBACK")
                        except sqlite3.Error:
                            pass
                    raise StoreUnavailable(f"cannot append to sqlite:{self.path}: {error}") from error
        finally:
            self._release(conn)
        return len(rows)

    def history(self, user_id: str, limit: int | None = None) -> list[Event]:
        _check_id(user_id, "user_id", "history")
        limit = _check_limit(limit)
        if limit == 0:
            return []
        conn = self._acquire()
        try:
            rows = conn.execute(
                "SELECT item_id, timestamp, behavior, context FROM lifelong_events "
                "WHERE user_id = ? ORDER BY timestamp DESC, seq DESC LIMIT ?",
                (user_id, -1 if limit is None else limit),
            ).fetchall()
        except sqlite3.Error as error:
            raise StoreUnavailable(f"cannot read sqlite:{self.path}: {error}") from error
        finally:
            self._release(conn)
        loads = json.loads
        return [
            Event(user_id, item, ts, behavior, None if context is None else loads(context))
            for item, ts, behavior, context in rows
        ]

    def version(self, user_id: str) -> int:
        _check_id(user_id, "user_id", "version")
        conn = self._acquire()
        try:
            row = conn.execute("SELECT version FROM lifelong_users WHERE user_id = ?", (user_id,)).fetchone()
        except sqlite3.Error as error:
            raise StoreUnavailable(f"cannot read sqlite:{self.path}: {error}") from error
        finally:
            self._release(conn)
        return 0 if row is None else int(row[0])

    def ping(self) -> bool:
        if self._closed:
            return False
        try:
            conn = self._acquire()
        except Exception:
            return False
        try:
            conn.execute("SELECT 1 FROM lifelong_store LIMIT 1").fetchone()
            return True
        except sqlite3.Error:
            return False
        finally:
            self._release(conn)

    def durability(self) -> dict[str, str]:
        """The settings the durability of an acknowledged append rests on, read from a live connection."""
        conn = self._acquire()
        try:
            mode = conn.execute("PRAGMA journal_mode").fetchone()[0]
            sync = conn.execute("PRAGMA synchronous").fetchone()[0]
        finally:
            self._release(conn)
        names = {0: "OFF", 1: "NORMAL", 2: "FULL", 3: "EXTRA"}
        return {"journal_mode": str(mode).lower(), "synchronous": names.get(int(sync), str(sync))}

    def close(self) -> None:
        if self._closed:
            return
        self._closed = True
        with self._write_lock, self._all_lock:
            for conn in self._all:
                try:
                    conn.close()
                except sqlite3.Error:
                    pass
            self._all.clear()

    def __enter__(self) -> "SQLiteStore":
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def __repr__(self) -> str:
        return f"SQLiteStore('sqlite:{self.path}')"


# --------------------------------------------------------------------------------------------------- Redis

# KEYS[1]: the store-wide sequence; then per user KEYS[3u-1]: the list of in-order events,
# KEYS[3u]: the sorted set of late events, KEYS[3u+1]: the user's hash (version, largest timestamp).
# ARGV[1]: events in the batch; then per user: its count, then per event its timestamp and its encoding.
# An event whose timestamp is at least the user's largest so far goes to the end of the list (which thus
# stays sorted by timestamp); an earlier one is late: it goes to the sorted set, scored by its timestamp,
# its member prefixed with its zero-padded sequence number (equal timestamps: later appends sort higher).
# Everything was validated before the call, so no command below fails half-way (a Lua error after a
# write would leave the batch half-applied). Effects go to the AOF as one MULTI/EXEC.
_APPEND_LUA = """
local total = tonumber(ARGV[1])
local seq = tonumber(redis.call('GET', KEYS[1]) or '0')
local last = seq + total
local lasts = string.format('%d', last)
local a = 2
local plans = {}
-- Reads and decisions first, writes after: an error here leaves the store untouched.
for u = 1, (#KEYS - 1) / 3 do
  local count = tonumber(ARGV[a])
  a = a + 1
  local mxs = redis.call('HGET', KEYS[3 * u + 1], 'max_ts')
  local mx = nil
  if mxs then mx = tonumber(mxs) end
  local push, zadd = {}, {}
  for i = 1, count do
    local tss, payload = ARGV[a], ARGV[a + 1]
    local ts = tonumber(tss)
    a = a + 2
    seq = seq + 1
    if mx == nil or ts >= mx then
      push[#push + 1] = payload
      mx, mxs = ts, tss
    else
      zadd[#zadd + 1] = tss
      zadd[#zadd + 1] = string.format('%016d', seq) .. payload
    end
  end
  plans[u] = {push, zadd, mxs}
end
for u, plan in ipairs(plans) do
  local push, zadd = plan[1], plan[2]
  for i = 1, #push, 1000 do
    redis.call('RPUSH', KEYS[3 * u - 1], unpack(push, i, math.min(i + 999, #push)))
  end
  for i = 1, #zadd, 1000 do
    redis.call('ZADD', KEYS[3 * u], unpack(zadd, i, math.min(i + 999, #zadd)))
  end
  redis.call('HSET', KEYS[3 * u + 1], 'max_ts', plan[3], 'version', lasts)
end
redis.call('SET', KEYS[1], lasts)
return last
"""

_SEQ_DIGITS = 16  # the prefix of a late event's member

class RedisStore:
    """The Redis store (``appendonly yes`` + ``appendfsync always``). See the module docstring."""

    backend = "redis"
    inline_reads = False  # a network round trip: on a worker thread, never blocking the event loop

    def __init__(
        self,
        url: str,
        *,
        prefix: str = "lifelong",
        durability: str = "strict",
        connect_timeout_s: float = 5.0,
        timeout_s: float = 30.0,
    ):
        try:
            import redis
            from redis.backoff import NoBackoff
            from redis.retry import Retry
        except ImportError:
            raise UserError(
                "a redis:// store needs the redis package: pip install 'lifelong[serve]' (or pip install redis)"
            ) from None
        self._redis = redis
        self.url = url
        self.prefix = prefix
        self._closed = False
        parsed = urllib.parse.urlsplit(url)
        self._where = f"Redis at {parsed.hostname or 'localhost'}:{parsed.port or 6379}"
        try:
            # No automatic retries: a retried append whose first try did land would store the batch twice.
            self._client = redis.Redis.from_url(
                url,
                socket_connect_timeout=connect_timeout_s,
                socket_timeout=timeout_s,
                retry=Retry(NoBackoff(), 0),
                retry_on_timeout=False,
                health_check_interval=30,
            )
        except ValueError as error:
            raise UserError(f"bad Redis URL {url!r}: {error}; use redis://HOST:PORT[/DB]") from None
        try:
            self._client.ping()
        except redis.AuthenticationError as error:
            self._client.close()
            raise UserError(f"{self._where} refused the login ({error}); put the password in the URL: redis://:PASSWORD@HOST:PORT") from None
        except (redis.ConnectionError, redis.TimeoutError, OSError) as error:
            self._client.close()
            raise UserError(
                f"cannot reach {self._where} ({error}); start redis-server "
                f"(redis-server --appendonly yes --appendfsync always) or fix --store {url}"
            ) from None
        except redis.ResponseError as error:
            self._client.close()
            raise UserError(f"{self._where} answered PING with an error ({error}); check the URL {url}") from None
        self.fsync = self._check_durability(durability)
        marker = self._key("store")
        expected = f"{FORMAT} {FORMAT_VERSION}"
        try:
            found = self._client.get(marker)
            if found is None:
                self._client.set(marker, expected, nx=True)
                found = self._client.get(marker)
        except (redis.ResponseError, redis.ConnectionError, redis.TimeoutError) as error:
            self._client.close()
            raise UserError(
                f"{self._where} does not take writes ({error}); point --store at a writable primary"
            ) from None
        if found is not None and found.decode("utf-8", "replace") != expected:
            self._client.close()
            raise UserError(
                f"{self._where}: key {marker} holds {found!r:.80}, not {expected!r}; this lifelong will not write "
                f"there. Use another database (redis://HOST:PORT/DB) or the lifelong that wrote it"
            )
        self._append_script = self._client.register_script(_APPEND_LUA)

    def _key(self, *parts: str) -> str:
        return ":".join((self.prefix, *parts))

    def _user_keys(self, user_id: str) -> tuple[str, str, str]:
        """The user's in-order list, late sorted set and hash."""
        return self._key("u", user_id, "events"), self._key("u", user_id, "late"), self._key("u", user_id, "meta")

    def _check_durability(self, durability: str) -> dict[str, str]:
        redis = self._redis
        try:
            config = {
                **{k if isinstance(k, str) else k.decode(): v for k, v in self._client.config_get("appendonly").items()},
                **{k if isinstance(k, str) else k.decode(): v for k, v in self._client.config_get("appendfsync").items()},
            }
            config = {k: v if isinstance(v, str) else v.decode() for k, v in config.items()}
        except redis.ResponseError as error:  # CONFIG disabled (managed Redis): cannot check
            log.warning("%s: cannot read its fsync settings (%s); durability rests on its configuration", self._where, error)
            return {"appendonly": "unknown", "appendfsync": "unknown"}
        durable = config.get("appendonly") == "yes" and config.get("appendfsync") == "always"
        if not durable:
            message = (
                f"{self._where} does not fsync every write (appendonly {config.get('appendonly')}, appendfsync "
                f"{config.get('appendfsync')}): an acknowledged event could be lost in a crash"
            )
            if durability == "strict":
                self._client.close()
                raise UserError(
                    f"{message}. Start it with --appendonly yes --appendfsync always (or run "
                    f"redis-cli CONFIG SET appendonly yes; redis-cli CONFIG SET appendfsync always), "
                    f"or accept the risk with ?durability=relaxed in the store URL"
                )
            log.warning("%s (accepted: durability=relaxed)", message)
        return config

    def durability(self) -> dict[str, str]:
        """The server's fsync settings, read now (``appendonly``, ``appendfsync``)."""
        try:
            self.fsync = self._check_durability("relaxed")
        except (self._redis.ConnectionError, self._redis.TimeoutError) as error:
            raise self._unavailable("read the settings of", error) from error
        return dict(self.fsync)

    def _unavailable(self, what: str, error: Exception) -> StoreUnavailable:
        return StoreUnavailable(f"cannot {what} {self._where}: {error}")

    def _guard(self) -> None:
        if self._closed:
            raise StoreUnavailable(f"the behavior store {self.url} is closed")

    def append(self, events: Sequence[Event]) -> int:
        events = _check_events(events)
        self._guard()
        if not events:
            return 0
        groups: dict[str, list[Event]] = {}
        for event in events:
            groups.setdefault(event.user_id, []).append(event)
        keys = [self._key("seq")]
        args: list[Any] = [len(events)]
        dumps = json.dumps
        for user, group in groups.items():
            keys.extend(self._user_keys(user))
            args.append(len(group))
            for e in group:
                args.append(str(e.timestamp))
                args.append(dumps([e.timestamp, e.item_id, e.behavior, e.context], separators=(",", ":"),
                                  ensure_ascii=False))
        try:
            self._append_script(keys=keys, args=args)
        except (self._redis.ConnectionError, self._redis.TimeoutError) as error:
            raise self._unavailable("append to", error) from error
        except self._redis.ResponseError as error:
            raise self._unavailable("append to", error) from error
        return len(events)

    def _read(self, pipe_fn):
        redis = self._redis
        for attempt in (0, 1):  # reads are safe to retry once (e.g. a connection dropped by a restart)
            try:
                pipe = self._client.pipeline(transaction=True)
                pipe_fn(pipe)
                return pipe.execute()
            except (redis.ConnectionError, redis.TimeoutError) as error:
                if attempt:
                    raise self._unavailable("read from", error) from error
            except redis.ResponseError as error:
                raise self._unavailable("read from", error) from error

    def history(self, user_id: str, limit: int | None = None) -> list[Event]:
        _check_id(user_id, "user_id", "history")
        limit = _check_limit(limit)
        self._guard()
        if limit == 0:
            return []
        listed, late, _ = self._user_keys(user_id)
        start, stop = (0, -1) if limit is None else (-limit, limit - 1)
        # One transaction: the newest `limit` of the in-order list and of the late events, a consistent pair.
        raw, raw_late = self._read(lambda p: (p.lrange(listed, start, -1), p.zrevrange(late, 0, stop)))
        if not raw and not raw_late:
            return []
        raw.reverse()  # newest first: the list is sorted by timestamp, ties in append order
        if raw_late:
            # Late events sorted by (timestamp, sequence), newest first. A late event is newer than an in-order
            # one of the same timestamp (every in-order event appended after it has a larger timestamp), so
            # late events go first and the stable sort keeps them ahead on ties.
            cut = _SEQ_DIGITS
            raw = [member[cut:] for member in raw_late] + raw
        rows = json.loads(b"[" + b",".join(raw) + b"]")
        if raw_late:
            rows.sort(key=lambda row: row[0], reverse=True)
            if limit is not None:
                del rows[limit:]
        return [Event(user_id, item, ts, behavior, context) for ts, item, behavior, context in rows]

    def version(self, user_id: str) -> int:
        _check_id(user_id, "user_id", "version")
        self._guard()
        meta = self._user_keys(user_id)[2]
        (value,) = self._read(lambda p: p.hget(meta, "version"))
        return 0 if value is None else int(value)

    def ping(self) -> bool:
        if self._closed:
            return False
        try:
            return bool(self._client.ping())
        except Exception:
            return False

    def close(self) -> None:
        if self._closed:
            return
        self._closed = True
        self._client.close()
        try:
            self._client.connection_pool.disconnect()
        except Exception:
            pass

    def __enter__(self) -> "RedisStore":
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def __repr__(self) -> str:
        return f"RedisStore({self._where})"


# ---------------------------------------------------------------------------------------------------- open


_URL_HELP = "use sqlite:PATH (e.g. sqlite:store.db) or redis://HOST:PORT[/DB]"


def open_store(url: str) -> BehaviorStore:
    """Open the behavior store at ``url``: ``sqlite:PATH`` or ``redis://HOST:PORT[/DB]``.

    A bad URL, a file that is not a lifelong store, or a store that cannot be reached is a
    :class:`~lifelong.errors.UserError` saying what, where and how to fix it. Redis URLs take
    ``?durability=relaxed`` to accept a server that does not fsync every write.
    """
    if not isinstance(url, str) or not url.strip():
        raise UserError(f"the behavior store URL is empty; {_URL_HELP}")
    url = url.strip()
    scheme, sep, rest = url.partition(":")
    scheme = scheme.lower()
    if scheme == "sqlite" and sep:
        path = rest
        if path.startswith("//"):  # sqlite:///abs/path or sqlite://rel/path, as SQLAlchemy writes them
            path = path[2:]
        if not path or path in (":memory:", "memory"):
            raise UserError(
                f"store URL {url!r} names no file; the behavior store must be durable, give a file: sqlite:PATH"
            )
        return SQLiteStore(Path(path).expanduser())
    if scheme in ("redis", "rediss") and sep:
        parsed = urllib.parse.urlsplit(url)
        if not rest.startswith("//") or not parsed.hostname:
            raise UserError(f"store URL {url!r} names no host; {_URL_HELP}")
        try:
            parsed.port
        except ValueError:
            raise UserError(f"store URL {url!r}: the port is not a number in 1..65535; {_URL_HELP}") from None
        db = parsed.path.strip("/")
        if db and not db.isdigit():
            raise UserError(f"store URL {url!r}: the database {db!r} is not a number; {_URL_HELP}")
        query = urllib.parse.parse_qs(parsed.query)
        durability = query.pop("durability", ["strict"])[-1]
        if durability not in ("strict", "relaxed"):
            raise UserError(f"store URL {url!r}: durability must be strict or relaxed, got {durability!r}")
        clean = urllib.parse.urlunsplit(
            (parsed.scheme, parsed.netloc, parsed.path, urllib.parse.urlencode(query, doseq=True), "")
        )
        return RedisStore(clean, durability=durability)
    raise UserError(f"unknown behavior store URL {url!r}; {_URL_HELP}")


__all__ = ["BehaviorStore", "Event", "RedisStore", "SQLiteStore", "StoreUnavailable", "open_store"]
