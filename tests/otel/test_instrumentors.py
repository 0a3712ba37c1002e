"""The automatic instrumentors in-process: observe unless configured, one middleware per app,
and configuration errors that leave the app alone instead of breaking OpenTelemetry's start."""

from __future__ import annotations

import logging
from collections.abc import Iterator
from typing import Any

import pytest
from fastapi import FastAPI
from flask import Flask
from starlette.applications import Starlette
from starlette.responses import PlainTextResponse
from starlette.routing import Mount, Route
from starlette.testclient import TestClient

from ownership_ctx import Policy, Rule, events
from ownership_ctx.asgi import OwnershipMiddleware
from ownership_ctx.otel import (
    OwnershipASGIInstrumentor,
    OwnershipDramatiqInstrumentor,
    OwnershipFlaskInstrumentor,
)
from ownership_ctx.otel.config import policy_from_env
from ownership_ctx.wsgi import OwnershipWSGIMiddleware

CALLER = {"x-owner-team": "search", "x-workflow-id": "w1", "x-feature": "f1"}

#: A policy module for OWNERSHIP_CTX_POLICY tests: enforce everywhere but /health.
POLICY = Policy(mode="enforce", rules=(Rule("/health", required=()),))


class Recorded:
    def __init__(self) -> None:
        self.events: list[dict[str, Any]] = []

    def emit(self, event: Any) -> None:
        self.events.append(dict(event))

    def kinds(self) -> list[str]:
        return sorted(e["kind"] for e in self.events)


@pytest.fixture
def recorded(monkeypatch: pytest.MonkeyPatch) -> Iterator[Recorded]:
    for name in ("OWNERSHIP_CTX_MODE", "OWNERSHIP_CTX_POLICY", "OWNERSHIP_CTX_TRACE_HEADER"):
        monkeypatch.delenv(name, raising=False)
    sink = Recorded()
    previous = events.set_sink(sink)
    try:
        yield sink
    finally:
        events.set_sink(previous)


@pytest.fixture
def asgi(recorded: Recorded) -> Iterator[Recorded]:
    OwnershipASGIInstrumentor().instrument()
    try:
        yield recorded
    finally:
        OwnershipASGIInstrumentor().uninstrument()


def fastapi_app() -> FastAPI:
    app = FastAPI()

    @app.get("/health")
    def health() -> dict[str, str]:
        return {"status": "ok"}

    @app.get("/orders/{order_id}")
    def order(order_id: int) -> dict[str, int]:
        return {"order_id": order_id}

    return app


def test_policy_from_env_observes_unless_configured() -> None:
    assert policy_from_env({}).mode == "quarantine"
    assert policy_from_env({"OWNERSHIP_CTX_MODE": "enforce"}).mode == "enforce"
    spec = f"{__name__}:POLICY"
    assert policy_from_env({"OWNERSHIP_CTX_POLICY": spec}) is POLICY
    stamped = policy_from_env({"OWNERSHIP_CTX_POLICY": spec, "OWNERSHIP_CTX_MODE": "stamp"})
    assert stamped.mode == "stamp" and stamped.rules == POLICY.rules
    with pytest.raises(ValueError, match="module:attribute"):
        policy_from_env({"OWNERSHIP_CTX_POLICY": "no_colon"})
    with pytest.raises(ValueError, match="not an ownership_ctx Policy"):
        policy_from_env({"OWNERSHIP_CTX_POLICY": f"{__name__}:CALLER"})


def test_a_whole_policy_from_env_says_which_variables_it_ignores(
    caplog: pytest.LogCaptureFixture,
) -> None:
    # docs/configuration.md: REQUIRED, TRUST and ACCEPT_UNSIGNED apply only without POLICY.
    environ = {
        "OWNERSHIP_CTX_POLICY": f"{__name__}:POLICY",
        "OWNERSHIP_CTX_TRUST": "none",
        "OWNERSHIP_CTX_ACCEPT_UNSIGNED": "1",
    }
    with caplog.at_level(logging.WARNING, logger="ownership_ctx"):
        assert policy_from_env(environ) is POLICY
    (record,) = [r for r in caplog.records if "ignored" in r.getMessage()]
    assert "OWNERSHIP_CTX_TRUST, OWNERSHIP_CTX_ACCEPT_UNSIGNED ignored" in record.getMessage()


PATHS = ("/health", "/docs", "/openapi.json", "/orders/7", "/orders/x", "/missing")


def answers(app: Any) -> list[tuple[int, bytes, list[tuple[str, str]]]]:
    client = TestClient(app)
    return [
        (r.status_code, r.content, sorted(r.headers.items()))
        for r in (client.get(path) for path in PATHS)
    ]


def test_fastapi_app_without_ownership_code_answers_as_before(recorded: Recorded) -> None:
    reference = answers(fastapi_app())
    assert recorded.events == []
    OwnershipASGIInstrumentor().instrument()
    try:
        assert answers(fastapi_app()) == reference
    finally:
        OwnershipASGIInstrumentor().uninstrument()
    assert recorded.kinds() == sorted(["hop", "request"] * len(PATHS))
    hops = [e for e in recorded.events if e["kind"] == "hop"]
    assert {h["attribution"] for h in hops} == {"quarantined"}


def test_app_with_its_own_middleware_gets_exactly_one(asgi: Recorded) -> None:
    app = fastapi_app()
    app.add_middleware(OwnershipMiddleware, policy=Policy(mode="enforce"))
    client = TestClient(app)
    assert client.get("/orders/1").status_code == 400  # the app's policy decides
    assert client.get("/orders/1", headers=CALLER).status_code == 200
    assert asgi.kinds() == ["hop", "hop", "request", "request"]
    assert sum(m.cls is OwnershipMiddleware for m in app.user_middleware) == 1
    assert len(app.user_middleware) == 1


def test_own_middleware_wrapped_around_the_app_wins(asgi: Recorded) -> None:
    app = OwnershipMiddleware(fastapi_app(), policy=Policy(mode="enforce"))
    client = TestClient(app)
    assert client.get("/orders/1").status_code == 400
    assert client.get("/orders/1", headers=CALLER).status_code == 200
    assert asgi.kinds() == ["hop", "hop", "request", "request"]


def test_mounted_apps_get_one_middleware_per_request(asgi: Recorded) -> None:
    async def hello(request: Any) -> PlainTextResponse:
        return PlainTextResponse("hi")

    inner = Starlette(routes=[Route("/hello", hello)])
    owned = Starlette(
        routes=[Route("/hello", hello)],
        middleware=[],
    )
    owned.add_middleware(OwnershipMiddleware, policy=Policy(mode="enforce"))
    outer = Starlette(
        routes=[Route("/", hello), Mount("/plain", app=inner), Mount("/owned", app=owned)]
    )
    client = TestClient(outer)
    assert client.get("/").status_code == 200
    assert client.get("/plain/hello").status_code == 200
    assert client.get("/owned/hello").status_code == 400  # the mounted app's own policy
    assert client.get("/owned/hello", headers=CALLER).status_code == 200
    assert asgi.kinds() == sorted(["hop", "request"] * 4)
    units = sorted(e["unit"] for e in asgi.events if e["kind"] == "hop")
    assert units == ["/", "/owned/hello", "/owned/hello", "/plain/hello"]


def test_enforcement_is_opt_in(recorded: Recorded, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("OWNERSHIP_CTX_POLICY", f"{__name__}:POLICY")
    monkeypatch.setenv("OWNERSHIP_CTX_TRACE_HEADER", "x-trace-id")
    OwnershipASGIInstrumentor().instrument()
    try:
        client = TestClient(fastapi_app())
        assert client.get("/health").status_code == 200
        rejected = client.get("/orders/1")
        assert rejected.status_code == 400 and "x-trace-id" in rejected.headers
        assert client.get("/orders/1", headers=CALLER).status_code == 200
    finally:
        OwnershipASGIInstrumentor().uninstrument()


def test_configuration_error_leaves_the_app_alone(
    recorded: Recorded, monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture
) -> None:
    monkeypatch.setenv("OWNERSHIP_CTX_MODE", "block")
    with caplog.at_level(logging.ERROR, logger="ownership_ctx"):
        OwnershipASGIInstrumentor().instrument()  # must not raise: OpenTelemetry would stop
    try:
        assert TestClient(fastapi_app()).get("/orders/1").status_code == 200
        assert recorded.events == []
        assert "ownership_ctx_asgi is not enabled" in caplog.text
    finally:
        OwnershipASGIInstrumentor().uninstrument()


@pytest.fixture
def flask_instrumented(recorded: Recorded) -> Iterator[Recorded]:
    OwnershipFlaskInstrumentor().instrument()
    try:
        yield recorded
    finally:
        OwnershipFlaskInstrumentor().uninstrument()


def flask_app() -> Flask:
    app = Flask("shop")

    @app.get("/orders/<int:order_id>")
    def order(order_id: int) -> dict[str, int]:
        return {"order_id": order_id}

    return app


def test_flask_app_observed_or_left_to_its_own(flask_instrumented: Recorded) -> None:
    plain = flask_app().test_client()
    with plain.get("/orders/3") as response:
        assert response.status_code == 200
    assert flask_instrumented.kinds() == ["hop", "request"]
    flask_instrumented.events.clear()

    own = flask_app()
    own.wsgi_app = OwnershipWSGIMiddleware(  # type: ignore[method-assign]
        own.wsgi_app, policy=Policy(mode="enforce")
    )
    client = own.test_client()
    for headers, status in (({}, 400), (CALLER, 200)):
        with client.get("/orders/3", headers=headers) as response:
            assert response.status_code == status
    assert flask_instrumented.kinds() == ["hop", "hop", "request", "request"]


def test_dramatiq_broker_keeps_one_ownership_middleware(recorded: Recorded) -> None:
    from dramatiq.brokers.stub import StubBroker

    from ownership_ctx.dramatiq import OwnershipMiddleware as DramatiqOwnership

    OwnershipDramatiqInstrumentor().instrument()
    try:
        observed = StubBroker()
        own = StubBroker()
        mine = DramatiqOwnership(policy=Policy(mode="enforce"))
        own.add_middleware(mine)
    finally:
        OwnershipDramatiqInstrumentor().uninstrument()
    assert sum(isinstance(m, DramatiqOwnership) for m in observed.middleware) == 1
    assert [m for m in own.middleware if isinstance(m, DramatiqOwnership)] == [mine]


def test_celery_app_that_installs_the_hooks_itself_keeps_its_policy(recorded: Recorded) -> None:
    from celery import Celery

    from ownership_ctx import celery as celery_hooks
    from ownership_ctx.otel import OwnershipCeleryInstrumentor

    OwnershipCeleryInstrumentor().instrument()
    try:
        observed = Celery("observed", broker="memory://")
        own = Celery("own", broker="memory://")
        own_policy = Policy(mode="enforce")
        celery_hooks.install(own, policy=own_policy)
    finally:
        OwnershipCeleryInstrumentor().uninstrument()
    try:
        assert celery_hooks._hooks[observed].gate.policy.mode == "quarantine"
        assert celery_hooks._hooks[own].gate.policy is own_policy  # one set of hooks, its own
    finally:
        for app in (observed, own):
            celery_hooks._hooks[app].uninstall()


@pytest.mark.parametrize("ours_first", [True, False], ids=["ours-first", "theirs-first"])
def test_alongside_opentelemetrys_fastapi_instrumentation(
    recorded: Recorded, ours_first: bool
) -> None:
    import fastapi
    from opentelemetry.instrumentation.fastapi import FastAPIInstrumentor

    steps = [OwnershipASGIInstrumentor().instrument, FastAPIInstrumentor().instrument]
    for instrument in steps if ours_first else reversed(steps):
        instrument()
    try:
        app = fastapi.FastAPI()  # theirs replaces the class: look it up now

        @app.get("/orders/{order_id}")
        def order(order_id: int) -> dict[str, int]:
            return {"order_id": order_id}

        response = TestClient(app).get("/orders/5")
    finally:
        FastAPIInstrumentor().uninstrument()
        OwnershipASGIInstrumentor().uninstrument()
    assert (response.status_code, response.json()) == (200, {"order_id": 5})
    assert recorded.kinds() == ["hop", "request"]
