"""The HTTP service of ``lifelong serve``: FastAPI on uvicorn, versioned JSON endpoints with pydantic models.

Endpoints (OpenAPI page at ``/docs``, schema at ``/openapi.json``):

- ``POST /v1/events``: append events to the users' histories; answered once the store holds them durably.
- ``POST /v1/rank``: the scores of candidates for a user (ranking models), from the stored history or an
  explicit ``history`` (a user the store does not hold).
- ``POST /v1/retrieve``: the top ``k`` items for a user (retrieval models) through the faiss index.
- ``GET /v1/users/{user_id}/history``: the stored history, newest first.
- ``GET /healthz`` (the process answers), ``GET /readyz`` (artifact loaded, store reachable), ``GET /metrics``
  (Prometheus text).

Every request is validated at the boundary (types, sizes, id lengths, body size) and refused with a 4xx
whose message names the field; a refused request never reaches the store. Concurrent rank (and retrieve)
requests are coalesced into one forward pass (:mod:`lifelong.serve.batching`); each user's encoded state is
cached per history version (:mod:`lifelong.serve.cache`).
"""

from __future__ import annotations

import json
import math
import time
from contextlib import asynccontextmanager
from dataclasses import dataclass
from typing import Annotated, Optional, Union

from fastapi import FastAPI, Query, Request
from fastapi import Path as PathParam
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse, Response
from pydantic import (AfterValidator, BaseModel, ConfigDict, Field, StrictBool, StrictFloat, StrictInt, StrictStr,
                      create_model)
from starlette.concurrency import run_in_threadpool

from lifelong.errors import UserError
from lifelong.serve.batching import MicroBatcher
from lifelong.serve.cache import UserStateCache
from lifelong.serve.metrics import ServeMetrics
from lifelong.serve.scorer import History, Scorer, concat_states, split_state, state_form
from lifelong.serve.store import MAX_CONTEXT_KEYS, MAX_ID_LENGTH, TIMESTAMP_LIMIT, Event, StoreUnavailable


@dataclass
class ServeOptions:
    """Limits and tuning of the service (CLI options of ``lifelong serve``).

    Args:
        max_batch: most requests coalesced into one forward pass (1: no micro-batching, each request its own
            forward pass on the request thread pool).
        max_delay_ms: longest wait for more requests after the first of a batch (0: none; the batch takes what
            queued while the workers were busy; benchmarks/serve_load.py measured 0 against 2 ms).
        batch_workers: batches computed at the same time (one thread each).
        cache_size: users whose encoded state is cached (0: no cache).
        max_candidates, max_events, max_history, max_k: the largest lists a request may carry.
        max_body_bytes: the largest request body.
        exclude_history: retrieval: how many of the user's most recent events ``exclude_seen`` removes.
    """

    max_batch: int = 32
    max_delay_ms: float = 0.0
    batch_workers: int = 2
    cache_size: int = 4096
    max_candidates: int = 1000
    max_events: int = 1000
    max_history: int = 10000
    max_k: int = 1000
    max_body_bytes: int = 1 << 20
    exclude_history: int = 10000


# ---- request and response models ------------------------------------------------------------------


def _text(value: str) -> str:
    try:
        value.encode("utf-8")
    except UnicodeEncodeError:
        raise ValueError("must be valid Unicode text (it holds a lone surrogate)") from None
    return value


IdText = Annotated[StrictStr, Field(min_length=1, max_length=MAX_ID_LENGTH), AfterValidator(_text)]
RawId = Union[StrictInt, IdText]
Timestamp = Annotated[StrictInt, Field(gt=-TIMESTAMP_LIMIT, lt=TIMESTAMP_LIMIT)]
ContextValue = Union[StrictInt, Annotated[StrictFloat, Field(allow_inf_nan=False)],
                     Annotated[StrictStr, Field(max_length=MAX_ID_LENGTH), AfterValidator(_text)]]
Context = Annotated[dict[IdText, ContextValue], Field(max_length=MAX_CONTEXT_KEYS)]


class EventIn(BaseModel):
    """One behavior event; raw ids are strings or integers (stored as strings)."""

    model_config = ConfigDict(extra="forbid")
    user_id: RawId
    item_id: RawId
    timestamp: Timestamp
    behavior: Optional[IdText] = None
    context: Optional[Context] = None


class HistoryEventIn(BaseModel):
    """One event of an explicit history (oldest first, or sorted by timestamp when every event has one)."""

    model_config = ConfigDict(extra="forbid")
    item_id: RawId
    timestamp: Optional[Timestamp] = None
    behavior: Optional[IdText] = None


class RankIn(BaseModel):
    model_config = ConfigDict(extra="forbid")
    user_id: RawId
    candidates: list[RawId] = Field(min_length=1)
    context: Optional[Context] = None
    history: Optional[list[Union[RawId, HistoryEventIn]]] = None


class RetrieveIn(BaseModel):
    model_config = ConfigDict(extra="forbid")
    user_id: RawId
    k: Annotated[StrictInt, Field(ge=1)]
    exclude_seen: Optional[StrictBool] = None
    context: Optional[Context] = None
    history: Optional[list[Union[RawId, HistoryEventIn]]] = None


class EventsIn(BaseModel):
    model_config = ConfigDict(extra="forbid")
    events: list[EventIn] = Field(min_length=1)


class RankOut(BaseModel):
    user_id: str
    scores: list[float]
    model: str
    history_length: int
    unknown_candidates: int


class RetrieveOut(BaseModel):
    user_id: str
    items: list[str]
    scores: list[float]
    model: str
    history_length: int


class EventsOut(BaseModel):
    appended: int


class EventOut(BaseModel):
    item_id: str
    timestamp: int
    behavior: Optional[str] = None
    context: Optional[dict[str, Union[int, float, str]]] = None


class HistoryOut(BaseModel):
    user_id: str
    events: list[EventOut]


class Problem(BaseModel):
    detail: str


ERRORS = {400: {"model": Problem}, 413: {"model": Problem}, 422: {"model": Problem}, 503: {"model": Problem}}


class Refused(Exception):
    """A request refused with ``status`` and a message (raised inside the endpoints)."""

    def __init__(self, status: int, message: str) -> None:
        super().__init__(message)
        self.status, self.message = status, message


def _explicit_history(events: list) -> History:
    items, stamps, behaviors = [], [], []
    for event in events:
        if isinstance(event, HistoryEventIn):
            items.append(str(event.item_id))
            stamps.append(event.timestamp)
            behaviors.append(event.behavior)
        else:
            items.append(str(event))
            stamps.append(None)
            behaviors.append(None)
    if items and all(s is not None for s in stamps):
        order = sorted(range(len(items)), key=lambda i: stamps[i])  # stable: ties keep the given order
        items, stamps, behaviors = [items[i] for i in order], [stamps[i] for i in order], [behaviors[i] for i in order]
    timestamps = [s if s is not None else 0 for s in stamps]
    return History(items, behaviors, timestamps)


def _stored_history(events: list[Event]) -> History:
    """A store history (newest first) as a model history (oldest first)."""
    events = events[::-1]
    return History([e.item_id for e in events], [e.behavior for e in events], [e.timestamp for e in events])


def bounded_models(options: ServeOptions) -> dict[str, type[BaseModel]]:
    """The request models with the server's limits in their schema (the OpenAPI page shows them and pydantic
    enforces them): at most ``max_candidates`` candidates, ``max_events`` events, ``max_history`` history
    events, ``k <= max_k``."""
    history = Optional[Annotated[list[Union[RawId, HistoryEventIn]], Field(max_length=options.max_history)]]
    return {
        "rank": create_model("RankRequest", __base__=RankIn, history=(history, None), candidates=(
            Annotated[list[RawId], Field(min_length=1, max_length=options.max_candidates)], ...)),
        "retrieve": create_model("RetrieveRequest", __base__=RetrieveIn, history=(history, None),
                                 k=(Annotated[StrictInt, Field(ge=1, le=options.max_k)], ...)),
        "events": create_model("EventsRequest", __base__=EventsIn, events=(
            Annotated[list[EventIn], Field(min_length=1, max_length=options.max_events)], ...)),
    }


def _limit(value: int, what: str, limit: int, option: str) -> None:
    if value > limit:
        raise Refused(422, f"body.{what}: {value} items, at most {limit} are allowed (the server's {option})")


# ---- the application --------------------------------------------------------------------------------


INLINE_HISTORY = 1_000  # longest history a store with inline reads reads on the event loop (a lifelong one: a thread)


def create_app(scorer: Scorer, store, options: ServeOptions | None = None) -> FastAPI:
    """The FastAPI application serving ``scorer`` with the behavior ``store`` (opened by the caller, who also
    closes it)."""
    options = options or ServeOptions()
    cache = UserStateCache(options.cache_size)
    metrics = ServeMetrics(scorer, cache)
    batching = options.max_batch > 1
    kind = "rank" if scorer.task == "ctr" else "retrieve"

    def run_batch(jobs: list[dict]) -> list:
        """One forward pass for ``jobs`` (each: ``history``, ``cached`` state or None, ``key`` (user, version)
        or None, plus ``candidates`` (rank) or ``k`` and ``seen`` (retrieve))."""
        started = time.perf_counter()
        states = [None if job["cached"] is None else job["cached"]["state"] for job in jobs]
        missing = [i for i, state in enumerate(states) if state is None]
        if missing:
            encoded = split_state(scorer.encode([jobs[i]["history"] for i in missing]), len(missing))
            for i, state in zip(missing, encoded):
                states[i] = state
                if jobs[i]["key"] is not None:
                    cache.put(*jobs[i]["key"], {"state": state, **jobs[i]["entry"]})
        forms: dict = {}  # one pass per form of state (users whose states hold different parts do not stack)
        for i, state in enumerate(states):
            forms.setdefault(state_form(state), []).append(i)
        out: list = [None] * len(jobs)
        for rows in forms.values():
            part, state = [jobs[i] for i in rows], concat_states([states[i] for i in rows])
            histories = [job["history"] for job in part]
            if scorer.task == "ctr":
                found = scorer.score_states(state, [job["candidates"] for job in part], histories)
            else:
                deepest = max(job["k"] for job in part)
                found = [(items[: job["k"]], scores[: job["k"]]) for job, (items, scores)
                         in zip(part, scorer.search(state, deepest, [job["seen"] for job in part]))]
            for i, answer in zip(rows, found):
                out[i] = answer
        metrics.forward.labels(kind).observe(time.perf_counter() - started)
        return out

    batcher = MicroBatcher(run_batch, options.max_batch, options.max_delay_ms / 1000.0,
                           on_batch=lambda n: metrics.batch_size.labels(kind).observe(n), workers=options.batch_workers)

    async def forward(job: dict):
        if batching:
            return await batcher.submit(job)
        metrics.batch_size.labels(kind).observe(1)
        return (await run_in_threadpool(run_batch, [job]))[0]

    inline_reads = bool(getattr(store, "inline_reads", False))

    def read_inline(events: int = 0) -> bool:
        """A read of at most ``events`` events runs on the event loop (see ``inline_reads`` of the store)."""
        return inline_reads and events <= INLINE_HISTORY

    async def store_call(op: str, fn, *args, inline: bool = False):
        started = time.perf_counter()
        try:
            result = fn(*args) if inline else await run_in_threadpool(fn, *args)
        except StoreUnavailable as error:
            metrics.store_ops.labels(op, "unavailable").inc()
            raise Refused(503, f"the behavior store is unavailable ({error}); retry later") from None
        except UserError as error:
            metrics.store_ops.labels(op, "refused").inc()
            raise Refused(422, str(error)) from None
        metrics.store_ops.labels(op, "ok").inc()
        metrics.store_latency.labels(op).observe(time.perf_counter() - started)
        return result

    @asynccontextmanager
    async def lifespan(app: FastAPI):
        if batching:
            batcher.start()
        yield
        if batching:
            await batcher.stop()

    app = FastAPI(title="lifelong", version="1", lifespan=lifespan,
                  description=f"Serving {scorer.model_type} ({'ranking' if scorer.task == 'ctr' else 'retrieval'}) "
                              f"from {scorer.source}")
    app.state.scorer, app.state.store, app.state.cache, app.state.metrics = scorer, store, cache, metrics
    app.state.batcher, app.state.options = batcher, options

    @app.exception_handler(RequestValidationError)
    async def invalid(request: Request, error: RequestValidationError):
        problems = []
        status = 422
        for item in error.errors()[:10]:
            where = ".".join(str(p) for p in item.get("loc", ()))
            if item.get("type") == "json_invalid":
                status = 400
                ctx = item.get("ctx") or {}
                problems.append(f"the request body is not valid JSON ({ctx.get('error', item.get('msg'))}); send a "
                                f"JSON object with content-type application/json")
            else:
                problems.append(f"{where}: {item.get('msg')}")
        return JSONResponse({"detail": "; ".join(problems) or "invalid request"}, status_code=status)

    @app.exception_handler(Refused)
    async def refused(request: Request, error: Refused):
        return JSONResponse({"detail": error.message}, status_code=error.status)

    @app.exception_handler(UserError)
    async def user_error(request: Request, error: UserError):
        return JSONResponse({"detail": str(error)}, status_code=422)

    def need(task: str, endpoint: str) -> None:
        if scorer.task != task:
            have = "a ranking" if scorer.task == "ctr" else "a retrieval"
            other = "/v1/rank" if scorer.task == "ctr" else "/v1/retrieve"
            raise Refused(400, f"{endpoint}: this server's artifact holds {have} model ({scorer.model_type}); "
                               f"use {other}, or serve an artifact of the other kind")

    async def user_state(user_id: str, explicit: list | None, context: dict | None, history_limit: int) -> dict:
        """A request's job: ``history``, the ``cached`` entry (``state``, ``length``, ``seen``) or None, the
        cache ``key`` (user, version) or None (an explicit history, or a context that changes the user's state:
        never cached) and the ``entry`` to cache beside the state."""
        if explicit is not None:
            _limit(len(explicit), "history", options.max_history, "--max-history")
            history = _explicit_history(explicit)
            history.user_id, history.context = user_id, context
            return {"history": history, "cached": None, "key": None, "entry": {}}
        version = await store_call("version", app.state.store.version, user_id, inline=read_inline())
        cacheable = not scorer.changes_state(context)
        cached = cache.get(user_id, version) if cacheable else None
        if cached is not None:
            return {"history": History([], user_id=user_id, context=context), "cached": cached, "key": None,
                    "entry": {}}
        events = await store_call("history", app.state.store.history, user_id, history_limit,
                                  inline=read_inline(history_limit))
        history = _stored_history(events)
        history.user_id, history.context = user_id, context
        entry = {"length": len(history.items)}
        if scorer.task == "retrieval":
            entry["seen"] = scorer.seen_indices(history.items)
        return {"history": history, "cached": None, "key": (user_id, version) if cacheable else None, "entry": entry}

    async def post_events(body: EventsIn) -> EventsOut:
        """Append events to the users' histories; answered once they are durable in the store."""
        _limit(len(body.events), "events", options.max_events, "--max-events")
        events = [Event(str(e.user_id), str(e.item_id), e.timestamp, e.behavior, e.context) for e in body.events]
        appended = await store_call("append", app.state.store.append, events)
        for user in {e.user_id for e in events}:
            cache.invalidate(user)
        return EventsOut(appended=appended)

    async def rank(body: RankIn) -> RankOut:
        """Score candidates for a user: one score (logit) per candidate, in order."""
        need("ctr", "/v1/rank")
        _limit(len(body.candidates), "candidates", options.max_candidates, "--max-candidates")
        user = str(body.user_id)
        job = await user_state(user, body.history, body.context, scorer.max_length)
        candidates = [str(c) for c in body.candidates]
        scores = await forward({**job, "candidates": candidates})
        length = len(job["history"].items) if job["cached"] is None else job["cached"]["length"]
        return RankOut(user_id=user, scores=[_finite(s) for s in scores], model=scorer.model_type,
                       history_length=length, unknown_candidates=sum(not scorer.knows(c) for c in candidates))

    async def retrieve(body: RetrieveIn) -> RetrieveOut:
        """The top ``k`` items for a user through the faiss index (several interests merged by score)."""
        need("retrieval", "/v1/retrieve")
        if body.k > options.max_k:
            raise Refused(422, f"body.k: {body.k} is above the server's --max-k {options.max_k}")
        user = str(body.user_id)
        exclude = scorer.exclude_seen_default if body.exclude_seen is None else body.exclude_seen
        job = await user_state(user, body.history, body.context, options.exclude_history)
        cached = job["cached"]
        if not exclude:
            seen = set()
        else:
            seen = cached["seen"] if cached is not None else scorer.seen_indices(job["history"].items)
        items, scores = await forward({**job, "k": body.k, "seen": seen})
        length = len(job["history"].items) if cached is None else cached["length"]
        return RetrieveOut(user_id=user, items=items, scores=[_finite(s) for s in scores], model=scorer.model_type,
                           history_length=length)

    models = bounded_models(options)
    for path, endpoint, key, out in (("/v1/events", post_events, "events", EventsOut),
                                     ("/v1/rank", rank, "rank", RankOut),
                                     ("/v1/retrieve", retrieve, "retrieve", RetrieveOut)):
        endpoint.__annotations__["body"] = models[key]  # the limits of this server, in the schema
        app.post(path, response_model=out, responses=ERRORS, tags=["v1"])(endpoint)

    @app.get("/v1/users/{user_id}/history", response_model=HistoryOut, responses=ERRORS, tags=["v1"])
    async def user_history(user_id: Annotated[str, PathParam(min_length=1, max_length=MAX_ID_LENGTH)],
                           limit: Annotated[int, Query(ge=1, le=100_000)] = 100) -> HistoryOut:
        """The user's stored events, newest first (at most ``limit``)."""
        if not 1 <= len(user_id) <= MAX_ID_LENGTH:
            raise Refused(422, f"path.user_id: must have 1 to {MAX_ID_LENGTH} characters")
        events = await store_call("history", app.state.store.history, _text_or_refuse(user_id), limit,
                                  inline=read_inline(limit))
        return HistoryOut(user_id=user_id, events=[EventOut(item_id=e.item_id, timestamp=e.timestamp,
                                                            behavior=e.behavior, context=e.context) for e in events])

    @app.get("/healthz", tags=["operations"])
    async def healthz() -> dict:
        """The process answers."""
        return {"status": "ok"}

    @app.get("/readyz", tags=["operations"], responses={503: {"model": Problem}})
    async def readyz():
        """Ready: the artifact is loaded and the behavior store answers."""
        try:
            reachable = bool(await run_in_threadpool(app.state.store.ping))
        except Exception:  # any failure to reach the store means "not ready", never a 500
            reachable = False
        metrics.store_ops.labels("ping", "ok" if reachable else "unavailable").inc()
        body = {"ready": reachable, "model": scorer.model_type, "task": scorer.task, "store": reachable}
        return JSONResponse(body, status_code=200 if reachable else 503)

    @app.get("/metrics", tags=["operations"])
    async def prometheus() -> Response:
        """Prometheus text: requests, latency, batch sizes, cache, store operations, unknown ids."""
        from prometheus_client import CONTENT_TYPE_LATEST, generate_latest

        return Response(generate_latest(metrics.registry), media_type=CONTENT_TYPE_LATEST)

    return GuardMiddleware(app, metrics, options.max_body_bytes)


def _finite(value: float) -> float:
    """JSON has no infinities or NaN: clamp to the float32 range (NaN: 0, never expected from a model)."""
    if math.isfinite(value):
        return value
    return 0.0 if math.isnan(value) else math.copysign(3.4e38, value)


def _text_or_refuse(value: str) -> str:
    try:
        return _text(value)
    except ValueError as error:
        raise Refused(422, f"path.user_id: {error}") from None


class GuardMiddleware:
    """ASGI middleware in front of the app: refuses request bodies over ``max_body_bytes`` (413, before the
    app reads anything) and records every request's endpoint, status and latency."""

    def __init__(self, app: FastAPI, metrics: ServeMetrics, max_body_bytes: int) -> None:
        self.app, self.metrics, self.max_body_bytes = app, metrics, max_body_bytes
        self.state = app.state  # tests and the CLI reach the app's state through the wrapper

    async def __call__(self, scope, receive, send):
        if scope["type"] != "http":
            return await self.app(scope, receive, send)
        started = time.perf_counter()
        status = {"code": 500}

        async def sending(message):
            if message["type"] == "http.response.start":
                status["code"] = message["status"]
            await send(message)

        endpoint = _endpoint(scope.get("path", ""))
        try:
            declared = dict(scope.get("headers") or []).get(b"content-length")
            too_big = declared is not None and declared.isdigit() and int(declared) > self.max_body_bytes
            if too_big:
                return await self._refuse(sending)
            body, more = [], True
            size = 0
            while more:
                message = await receive()
                if message["type"] == "http.disconnect":
                    return
                chunk = message.get("body", b"")
                size += len(chunk)
                if size > self.max_body_bytes:
                    return await self._refuse(sending)
                body.append(chunk)
                more = message.get("more_body", False)
            replay = [{"type": "http.request", "body": b"".join(body), "more_body": False}]

            async def replayed():
                return replay.pop() if replay else await receive()

            await self.app(scope, replayed, sending)
        finally:
            code = status["code"]
            self.metrics.requests.labels(endpoint, str(code)).inc()
            self.metrics.latency.labels(endpoint).observe(time.perf_counter() - started)
            if 400 <= code < 500:
                self.metrics.rejected.labels(endpoint).inc()

    async def _refuse(self, send) -> None:
        body = json.dumps({"detail": f"the request body is larger than {self.max_body_bytes:,} bytes (the server's "
                                     f"--max-body-bytes)"}).encode()
        await send({"type": "http.response.start", "status": 413,
                    "headers": [(b"content-type", b"application/json"), (b"content-length", str(len(body)).encode())]})
        await send({"type": "http.response.body", "body": body})


ENDPOINTS = ("/v1/events", "/v1/rank", "/v1/retrieve", "/healthz", "/readyz", "/metrics", "/docs", "/openapi.json")


def _endpoint(path: str) -> str:
    """A bounded label for a path (never a user id)."""
    if path in ENDPOINTS:
        return path
    if path.startswith("/v1/users/") and path.endswith("/history"):
        return "/v1/users/{user_id}/history"
    return "other"


def run_server(scorer: Scorer, store, options: ServeOptions, host: str, port: int) -> None:
    """Serve until interrupted (uvicorn, one process), freed memory kept for the next requests
    (:func:`lifelong.allocator.keep_freed_memory`)."""
    import uvicorn

    from lifelong.allocator import keep_freed_memory

    keep_freed_memory()

    uvicorn.run(create_app(scorer, store, options), host=host, port=port, log_level="warning", access_log=False)
