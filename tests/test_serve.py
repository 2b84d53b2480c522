"""Serving: export (checksums, refusals), the Scorer on raw ids, and the HTTP service (rank, retrieve, events,
history, health, metrics), its user-state cache, micro-batching and boundary validation. Tiny data, seconds."""

from __future__ import annotations

import asyncio
import json
import random
from pathlib import Path

import httpx
import pytest
from typer.testing import CliRunner

from lifelong.cli import app as cli
from lifelong.serve.app import ServeOptions, create_app  # the `serve` extra (make setup installs it)
from lifelong.serve.scorer import Scorer
from lifelong.serve.store import open_store

runner = CliRunner()


def tiny_log(path: Path, users: int = 40, events: int = 12, items: int = 60, seed: int = 1) -> Path:
    rng = random.Random(seed)
    lines = ["user_id,item_id,timestamp,behavior"]
    for u in range(users):
        for k in range(events):
            lines.append(f"u{u},i{rng.randrange(items)},{1600000000 + k * 100},{rng.choice(['pv', 'buy'])}")
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text("\n".join(lines) + "\n")
    return path


def invoke(*args: str) -> str:
    result = runner.invoke(cli, list(args))
    assert result.exit_code == 0, result.output
    return result.output


COLUMNS = ["--column", "user_id=user_id", "--column", "item_id=item_id", "--column", "timestamp=timestamp",
           "--column", "behavior=behavior"]
TINY = ["--epochs", "1", "--threads", "1", "--no-progress", "--batch-size", "64", "--set", "embedding_dim=8"]


def tiny_artifact(root: Path, model: str, prepare: tuple[str, ...] = (), export: tuple[str, ...] = ()) -> Path:
    """``root`` with a tiny log, its prepared data, a ``model`` run and its artifact (``art``)."""
    log = tiny_log(root / "log.csv")
    invoke("prepare", "--recipe", "csv", "--input", str(log), "--out", str(root / "data"), *prepare, *COLUMNS)
    invoke("train", "--data", str(root / "data"), "--model", model, "--out", str(root / "run"), *TINY)
    invoke("export", str(root / "run"), "--out", str(root / "art"), *export)
    return root


@pytest.fixture(scope="module")
def din(tmp_path_factory):
    """A tiny DIN run (with event context) and its artifact."""
    return tiny_artifact(tmp_path_factory.mktemp("din"), "din")


@pytest.fixture(scope="module")
def sasrec(tmp_path_factory):
    """A tiny SASRec run (P2) and its artifact with an exact and an HNSW index."""
    return tiny_artifact(tmp_path_factory.mktemp("sasrec"), "sasrec", ("--protocol", "seq-loo"),
                         ("--index", "hnsw", "--index-param", "M=8"))


@pytest.fixture(scope="module")
def twin(tmp_path_factory):
    """A tiny TWIN run (a lifelong model: its user states hold each history's distinct events) and its artifact."""
    return tiny_artifact(tmp_path_factory.mktemp("twin"), "twin")


class Service:
    """The app on an in-process transport, its lifespan (the micro-batcher) running."""

    def __init__(self, artifact: Path, store_path: Path, **options) -> None:
        self.scorer = Scorer.from_path(artifact)
        self.store = open_store(f"sqlite:{store_path}")
        self.app = create_app(self.scorer, self.store, ServeOptions(**options))
        self.inner = self.app.app  # the FastAPI app behind the guard middleware

    async def __aenter__(self) -> httpx.AsyncClient:
        self._lifespan = self.inner.router.lifespan_context(self.inner)
        await self._lifespan.__aenter__()
        self.client = httpx.AsyncClient(transport=httpx.ASGITransport(app=self.app), base_url="http://test")
        return self.client

    async def __aexit__(self, *exc) -> None:
        await self.client.aclose()
        await self._lifespan.__aexit__(*exc)
        self.store.close()


def run(coroutine):
    return asyncio.run(coroutine)


# ---- export -----------------------------------------------------------------------------------------


def test_artifact_is_self_describing_and_scores_as_the_run(din):
    manifest = json.loads((din / "art" / "manifest.json").read_text())
    assert manifest["format"] == "lifelong-artifact/1" and manifest["library_version"]
    assert {"model.safetensors", "config.json", "serving.json", "vocab.json", "items.parquet"} <= set(manifest["files"])
    assert all(len(f["sha256"]) == 64 for f in manifest["files"].values())
    from_run, from_artifact = Scorer.from_path(din / "run"), Scorer.from_path(din / "art")
    history, candidates = ["i1", "i5", "i9", "i2"], ["i3", "i4", "i50", "not-an-item"]
    assert from_run.rank(history, candidates) == pytest.approx(from_artifact.rank(history, candidates), abs=1e-6)
    assert from_artifact.unknown["item"] == 1  # the unknown candidate, counted


@pytest.mark.parametrize("damage", ["append", "flip", "truncate", "delete"])
def test_a_tampered_artifact_is_refused_naming_the_file(din, tmp_path, damage):
    import shutil

    art = tmp_path / "art"
    shutil.copytree(din / "art", art)
    weights = art / "model.safetensors"
    data = weights.read_bytes()
    if damage == "append":
        weights.write_bytes(data + b"x")
    elif damage == "flip":
        weights.write_bytes(data[:-1] + bytes([data[-1] ^ 1]))
    elif damage == "truncate":
        weights.write_bytes(data[: len(data) // 2])
    else:
        weights.unlink()
    result = runner.invoke(cli, ["serve", str(art), "--store", f"sqlite:{tmp_path / 's.db'}", "--port", "1"])
    assert result.exit_code == 2
    assert "model.safetensors" in result.output and "export it again" in result.output
    assert "Traceback" not in result.output


def test_export_refuses_a_folder_it_did_not_write(din, tmp_path):
    out = tmp_path / "mine"
    out.mkdir()
    (out / "notes.txt").write_text("mine")
    result = runner.invoke(cli, ["export", str(din / "run"), "--out", str(out), "--overwrite"])
    assert result.exit_code == 2 and "not a serving artifact lifelong wrote" in result.output
    assert (out / "notes.txt").read_text() == "mine"
    result = runner.invoke(cli, ["export", str(din / "run"), "--out", str(din / "art")])
    assert result.exit_code == 2 and "--overwrite" in result.output


# ---- ranking service ---------------------------------------------------------------------------------


def test_rank_scores_the_stored_history_explicit_history_and_users_without_history(din, tmp_path):
    async def scenario():
        service = Service(din / "art", tmp_path / "store.db")
        async with service as client:
            events = [{"user_id": "u1", "item_id": f"i{n}", "timestamp": 1600000000 + n, "behavior": "pv"}
                      for n in (4, 8, 15)]
            assert (await client.post("/v1/events", json={"events": events})).json() == {"appended": 3}
            stored = (await client.post("/v1/rank", json={"user_id": "u1", "candidates": ["i1", "i2", 7]})).json()
            explicit = (await client.post("/v1/rank", json={
                "user_id": "nobody", "candidates": ["i1", "i2", 7],
                "history": [{"item_id": "i15", "timestamp": 1600000015, "behavior": "pv"},
                            {"item_id": "i4", "timestamp": 1600000004, "behavior": "pv"},
                            {"item_id": "i8", "timestamp": 1600000008, "behavior": "pv"}]})).json()
            empty = await client.post("/v1/rank", json={"user_id": 12345, "candidates": ["i1"]})
            history = (await client.get("/v1/users/u1/history")).json()
            metrics = (await client.get("/metrics")).text
            return service.scorer, stored, explicit, empty, history, metrics

    scorer, stored, explicit, empty, history, metrics = run(scenario())
    expected = scorer.rank(["i4", "i8", "i15"], ["i1", "i2", "7"], history_behaviors=["pv"] * 3)
    assert stored["scores"] == pytest.approx(expected, abs=1e-6)
    assert explicit["scores"] == pytest.approx(expected, abs=1e-6)  # sorted by timestamp like the store
    assert stored["unknown_candidates"] == 1  # "7" is no item of the catalogue
    assert empty.status_code == 200 and len(empty.json()["scores"]) == 1
    assert [e["item_id"] for e in history["events"]] == ["i15", "i8", "i4"]  # newest first
    assert 'lifelong_unknown_ids_total{field="item"}' in metrics
    assert 'lifelong_requests_total{endpoint="/v1/rank",status="200"}' in metrics


def test_the_user_state_cache_is_hit_and_dropped_when_the_history_changes(din, tmp_path):
    async def scenario():
        service = Service(din / "art", tmp_path / "store.db", max_batch=1)
        async with service as client:
            body = {"user_id": "u7", "candidates": ["i1", "i2", "i3"]}
            await client.post("/v1/events", json={"events": [{"user_id": "u7", "item_id": "i5", "timestamp": 1}]})
            first = (await client.post("/v1/rank", json=body)).json()["scores"]
            hits = service.app.state.cache.hits
            again = (await client.post("/v1/rank", json=body)).json()["scores"]
            assert service.app.state.cache.hits == hits + 1 and again == first
            await client.post("/v1/events", json={"events": [{"user_id": "u7", "item_id": "i40", "timestamp": 2}]})
            assert "u7" not in service.app.state.cache
            after = (await client.post("/v1/rank", json=body)).json()["scores"]
            return service.scorer, first, after

    scorer, first, after = run(scenario())
    assert after != first
    assert after == pytest.approx(scorer.rank(["i5", "i40"], ["i1", "i2", "i3"]), abs=1e-6)


def test_a_stale_cached_state_is_never_served_when_another_writer_appends(din, tmp_path):
    """Events appended to the store by another process (not through this server) change the version."""
    async def scenario():
        service = Service(din / "art", tmp_path / "store.db", max_batch=1)
        async with service as client:
            body = {"user_id": "u8", "candidates": ["i1", "i2"]}
            first = (await client.post("/v1/rank", json=body)).json()["scores"]
            from lifelong.serve.store import Event

            other = open_store(f"sqlite:{tmp_path / 'store.db'}")
            other.append([Event("u8", "i30", 5)])
            other.close()
            after = (await client.post("/v1/rank", json=body)).json()["scores"]
            return service.scorer, first, after

    scorer, first, after = run(scenario())
    assert after == pytest.approx(scorer.rank(["i30"], ["i1", "i2"]), abs=1e-6) and after != first


@pytest.mark.parametrize("model", ["din", "twin"])
def test_concurrent_rank_requests_are_coalesced_into_one_forward_pass(model, request, tmp_path):
    """Users of different histories in one pass score as one at a time; for TWIN their states hold different
    numbers of distinct events, and a history of many distinct events (searched event by event) joins them."""
    root = request.getfixturevalue(model)

    async def scenario():
        service = Service(root / "art", tmp_path / "store.db", max_batch=64, max_delay_ms=200)
        async with service as client:
            bodies = [{"user_id": f"x{n}", "candidates": [f"i{(n + j) % 60}" for j in range(1 + n % 5)],
                       "history": [f"i{(3 * n + j) % 60}" for j in range(n % 7)]} for n in range(16)]
            bodies.append({"user_id": "many", "candidates": ["i1", "i2"], "history": [f"i{j}" for j in range(40)]})
            answers = await asyncio.gather(*(client.post("/v1/rank", json=b) for b in bodies))
            assert all(a.status_code == 200 for a in answers), [a.text for a in answers if a.status_code != 200]
            return service, bodies, [a.json()["scores"] for a in answers]

    service, bodies, scores = run(scenario())
    assert max(service.app.state.batcher.batches) > 1, service.app.state.batcher.batches
    assert len(service.app.state.batcher.batches) < len(bodies)
    for body, got in zip(bodies, scores):  # batched scores equal one request at a time
        assert got == pytest.approx(service.scorer.rank(body["history"], body["candidates"]), abs=1e-5)


def test_cached_lifelong_states_of_different_sizes_are_batched_as_each_user_alone(twin, tmp_path):
    """TWIN's state holds its history's distinct events, so users' cached states differ in size, and a history of
    many distinct events is searched event by event (a state of another form): one batch of them scores as each
    user alone, with no error."""
    async def scenario():
        service = Service(twin / "art", tmp_path / "store.db", max_batch=64, max_delay_ms=200)
        async with service as client:
            events = [{"user_id": f"x{n}", "item_id": f"i{(3 * n + j) % 60}", "timestamp": 1600000000 + 100 * j}
                      for n in range(12) for j in range(1 + n % 7)]
            events += [{"user_id": "many", "item_id": f"i{j}", "timestamp": 1600000000 + 100 * j} for j in range(40)]
            await client.post("/v1/events", json={"events": events})
            bodies = [{"user_id": user, "candidates": [f"i{(7 * n + j) % 60}" for j in range(5)],
                       "context": {"timestamp": 1600050000}} for n, user in enumerate([f"x{n}" for n in range(12)] +
                                                                                      ["many"])]
            alone = [(await client.post("/v1/rank", json=body)).json()["scores"] for body in bodies]  # cached alone
            answers = await asyncio.gather(*(client.post("/v1/rank", json=body) for body in bodies))
            return service, alone, answers

    service, alone, answers = run(scenario())
    assert [a.status_code for a in answers] == [200] * len(answers), [a.text for a in answers if a.status_code != 200]
    assert max(service.app.state.batcher.batches) > 1, service.app.state.batcher.batches
    assert service.app.state.cache.hits >= len(answers)
    for answer, expected in zip(answers, alone):
        assert answer.json()["scores"] == pytest.approx(expected, abs=1e-5)


@pytest.mark.parametrize("body, status, field", [
    ('{"user_id":', 400, "not valid JSON"),
    ({"user_id": "u", "candidates": []}, 422, "candidates"),
    ({"user_id": "u", "candidates": "i1"}, 422, "candidates"),
    ({"user_id": "u", "candidates": [1.5]}, 422, "candidates"),
    ({"user_id": True, "candidates": ["i1"]}, 422, "user_id"),
    ({"user_id": "", "candidates": ["i1"]}, 422, "user_id"),
    ({"candidates": ["i1"]}, 422, "user_id"),
    ({"user_id": "u", "candidates": ["i1"], "extra": 1}, 422, "extra"),
    ({"user_id": "u", "candidates": [f"i{n}" for n in range(11)]}, 422, "candidates"),
    ({"user_id": "u", "candidates": ["i1"], "history": [{"item_id": "i1", "timestamp": "x"}]}, 422, "history"),
])
def test_bad_rank_requests_get_a_4xx_naming_the_field(din, tmp_path, body, status, field):
    async def scenario():
        async with Service(din / "art", tmp_path / "store.db", max_candidates=10) as client:
            if isinstance(body, str):
                return await client.post("/v1/rank", content=body, headers={"content-type": "application/json"})
            return await client.post("/v1/rank", json=body)

    answer = run(scenario())
    assert answer.status_code == status, answer.text
    assert field in answer.json()["detail"]


def test_rejected_requests_never_change_the_store(din, tmp_path):
    good = {"user_id": "u1", "item_id": "i1", "timestamp": 10}
    bad_batches = [
        [good, {"user_id": "u1", "item_id": "i2"}],  # a missing timestamp in the second event
        [good, {"user_id": "u1", "item_id": "i2", "timestamp": 2 ** 60}],
        [good, {"user_id": "u1", "item_id": "", "timestamp": 3}],
        [good, {**good, "context": {"k": float("inf")}}],
        [good] * 6,  # over --max-events
    ]

    async def scenario():
        service = Service(din / "art", tmp_path / "store.db", max_events=5, max_body_bytes=4096)
        async with service as client:
            codes = []
            for events in bad_batches:
                text = json.dumps({"events": events})  # allows the infinity through to the server
                codes.append((await client.post("/v1/events", content=text,
                                                 headers={"content-type": "application/json"})).status_code)
            big = {"events": [{**good, "item_id": "x" * 1000}] * 5}
            codes.append((await client.post("/v1/events", json=big)).status_code)
            history = (await client.get("/v1/users/u1/history")).json()["events"]
            wrong_kind = await client.post("/v1/retrieve", json={"user_id": "u1", "k": 5})
            return codes, history, wrong_kind

    codes, history, wrong_kind = run(scenario())
    assert all(400 <= c < 500 for c in codes[:-1]) and codes[-1] == 413, codes
    assert history == []
    assert wrong_kind.status_code == 400 and "ranking model" in wrong_kind.json()["detail"]


def test_health_readiness_and_openapi(din, tmp_path):
    async def scenario():
        async with Service(din / "art", tmp_path / "store.db") as client:
            return [await client.get(p) for p in ("/healthz", "/readyz", "/openapi.json", "/metrics")]

    health, ready, schema, metrics = run(scenario())
    assert health.status_code == 200 and ready.json()["ready"] is True
    assert {"/v1/rank", "/v1/retrieve", "/v1/events", "/v1/users/{user_id}/history"} <= set(schema.json()["paths"])
    assert metrics.text.startswith("# HELP") and "lifelong_batch_size" in metrics.text


# ---- retrieval service -------------------------------------------------------------------------------


def test_retrieve_matches_the_scorer_and_excludes_seen_items(sasrec, tmp_path):
    async def scenario():
        service = Service(sasrec / "art", tmp_path / "store.db")
        async with service as client:
            events = [{"user_id": "r1", "item_id": f"i{n}", "timestamp": n} for n in (3, 9, 27)]
            await client.post("/v1/events", json={"events": events})
            seen = (await client.post("/v1/retrieve", json={"user_id": "r1", "k": 10})).json()
            unseen = (await client.post("/v1/retrieve", json={"user_id": "r1", "k": 10, "exclude_seen": False})).json()
            nobody = await client.post("/v1/retrieve", json={"user_id": "new", "k": 5})
            rank = await client.post("/v1/rank", json={"user_id": "r1", "candidates": ["i1"]})
            return service.scorer, seen, unseen, nobody, rank

    scorer, seen, unseen, nobody, rank = run(scenario())
    items, scores = scorer.retrieve(["i3", "i9", "i27"], 10, exclude_seen=True)
    assert seen["items"] == items and seen["scores"] == pytest.approx(scores, abs=1e-5)
    assert not {"i3", "i9", "i27"} & set(seen["items"]) and len(seen["items"]) == 10
    assert unseen["items"] == scorer.retrieve(["i3", "i9", "i27"], 10, exclude_seen=False)[0]
    assert nobody.status_code == 200 and len(nobody.json()["items"]) == 5
    assert rank.status_code == 400 and "retrieval model" in rank.json()["detail"]


def test_the_hnsw_index_of_the_artifact_serves_too(sasrec):
    exact = Scorer.from_path(sasrec / "art")
    hnsw = Scorer.from_path(sasrec / "art", index="hnsw")
    history = ["i3", "i9", "i27"]
    assert len(set(exact.retrieve(history, 10)[0]) & set(hnsw.retrieve(history, 10)[0])) >= 8
    result = runner.invoke(cli, ["serve", str(sasrec / "art"), "--index", "ivf", "--port", "1"])
    assert result.exit_code == 2 and "--index ivf" in result.output and "Traceback" not in result.output
