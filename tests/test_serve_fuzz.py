"""Fuzzing the HTTP API from its OpenAPI schema (schemathesis, about 500 requests in-process; the 10,000-request
run against a server process is benchmarks/serve_fuzz.py): no 500, and the store holds exactly the events of
the accepted requests."""

from __future__ import annotations

import asyncio

import pytest

from helpers import benchmark_module
from test_serve import Service, din, sasrec  # noqa: F401  (the tiny runs, module fixtures)

@pytest.fixture(scope="module")
def fuzz():
    return benchmark_module("serve_fuzz")


@pytest.mark.slow  # ~10 s per artifact: schemathesis' generation dominates
@pytest.mark.parametrize("which", ["din", "sasrec"])
def test_fuzzed_requests_never_get_a_500_nor_change_the_store_when_rejected(fuzz, request, tmp_path, which):
    root = request.getfixturevalue(which)
    store = tmp_path / "store.db"

    async def scenario():
        service = Service(root / "art", store, max_candidates=1000)
        cases = fuzz.generate_cases(service.inner.openapi(), 250, seed=3)
        async with service as client:
            return cases, await fuzz.send_all(client, cases, concurrency=4)

    cases, (counts, failures, acknowledged) = asyncio.run(scenario())
    assert sum(counts.values()) == len(cases) >= 240
    assert not failures, failures[:3]
    assert acknowledged == fuzz.stored_events(store)
    statuses = {status for _, status in counts}
    assert 200 in statuses and 422 in statuses and 400 in statuses and 413 in statuses
