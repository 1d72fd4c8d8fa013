"""Hostile input at every route: requests generated from the control plane's own OpenAPI schema (valid,
invalid, with a token and without), asserting that none answers 5xx, that every refused one (4xx)
changed nothing, and that the audit chain still verifies afterwards."""

from __future__ import annotations

import random
from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest
import schemathesis
from hypothesis import HealthCheck, given, settings
from hypothesis.errors import Unsatisfiable
from schemathesis import APIOperation, GenerationMode

from m99.control import Settings
from m99.link import ControlLink
from m99.server import EmbeddedControlPlane

STREAMS = {"/api/events"}
EXAMPLES_PER_ROUTE = 150  # × ~30 operations: a few thousand requests, about a minute here


@pytest.fixture(scope="module")
def hostile(tmp_path_factory: pytest.TempPathFactory) -> Iterator[EmbeddedControlPlane]:
    with EmbeddedControlPlane(
        tmp_path_factory.mktemp("hostile"), settings=Settings(register_rate=0, refusal_window=60)
    ) as cp:
        link = ControlLink(cp.url)
        link.register("resident", "worker")  # something for the generated requests to aim at
        cp.resident = link  # type: ignore[attr-defined]
        yield cp


def snapshot(cp: EmbeddedControlPlane) -> tuple[object, ...]:
    """What a refused request must leave as it was (the audit chain may record the refusal)."""
    control = cp.control
    with control.store.snapshot() as tx:
        return (
            tx.version(),
            tuple((a.name, a.agent_id, a.status, a.frameworks) for a in tx.list_agents()),
            tuple((a.id, a.status) for a in tx.list_authorizations()),
            tuple((t.id, t.revoked_at) for t in tx.list_tokens()),
            tuple((d.id, d.active) for d in tx.active_directives()),
        )


def operations(cp: EmbeddedControlPlane) -> list[APIOperation]:
    schema = schemathesis.openapi.from_url(f"{cp.url}/openapi.json")
    # The operators' feed answers an authorised GET with a stream that never ends by design; it takes
    # no input to be hostile with, and tests/test_operator_feed.py covers its refusals.
    return [op for op in (result.ok() for result in schema.get_all_operations()) if op.path not in STREAMS]


def check(case: schemathesis.Case, cp: EmbeddedControlPlane) -> None:
    chooser = random.Random(repr(case.path_parameters) + repr(case.body)[:200] + repr(case.query))
    headers = dict(case.headers or {})
    if chooser.random() < 0.5:
        headers["Authorization"] = f"Bearer {cp.token}"  # half of them get past authentication
    if case.path_parameters and "agent_id" in case.path_parameters and chooser.random() < 0.3:
        case.path_parameters["agent_id"] = cp.resident.agent_id  # type: ignore[attr-defined]
    before = snapshot(cp)
    response = case.call(base_url=cp.url, headers=headers, timeout=30)
    where = (case.method, case.formatted_path, response.status_code, response.text[:400])
    assert response.status_code < 500, where
    if 400 <= response.status_code < 500:
        assert snapshot(cp) == before, where
        body = response.json()
        assert set(body) == {"error"} and body["error"]["code"] and body["error"]["message"], where


@pytest.mark.slow
@pytest.mark.parametrize("mode", [GenerationMode.NEGATIVE, GenerationMode.POSITIVE])
def test_no_route_fails_or_changes_state_on_hostile_input(hostile: EmbeddedControlPlane, mode: GenerationMode) -> None:
    seen = 0
    for operation in operations(hostile):

        @given(case=operation.as_strategy(generation_mode=mode))
        @settings(
            max_examples=EXAMPLES_PER_ROUTE // 2,
            deadline=None,
            derandomize=True,
            database=None,
            suppress_health_check=list(HealthCheck),
        )
        def barrage(case: schemathesis.Case) -> None:
            nonlocal seen
            seen += 1
            check(case, hostile)

        try:
            barrage()
        except Unsatisfiable:  # no invalid request can be made for it (a route without any input)
            assert mode == GenerationMode.NEGATIVE
    assert seen >= 20 * EXAMPLES_PER_ROUTE // 4  # every route really was thrown at


def test_the_chain_still_verifies_after_the_barrage(hostile: EmbeddedControlPlane, tmp_path: Path) -> None:
    with httpx.Client(base_url=hostile.url, headers={"Authorization": f"Bearer {hostile.token}"}) as admin:
        verdict = admin.get("/api/audit/verify").json()
        assert verdict["valid"], verdict
        assert admin.get("/api/health").status_code == 200
