"""The edge emits one request event per unit of work (the parent of its provider calls)."""

from __future__ import annotations

from typing import Any

import pytest
from flask import Flask
from starlette.applications import Starlette
from starlette.responses import PlainTextResponse, StreamingResponse
from starlette.routing import Route
from starlette.testclient import TestClient

from ownership_ctx import Keys, Policy
from ownership_ctx.asgi import OwnershipMiddleware
from ownership_ctx.wsgi import OwnershipWSGIMiddleware

HEADERS = {"x-owner-team": "search", "x-workflow-id": "wf", "x-feature": "chat"}


def kinds(sink: Any) -> list[tuple[Any, ...]]:
    return [
        (e["kind"], e.get("route", e.get("unit")), e["outcome"], e.get("status"))
        for e in sink.events
    ]


def test_asgi_request_events(event_sink: Any) -> None:
    async def stream(request: Any) -> StreamingResponse:
        async def body() -> Any:
            yield b"a"
            yield b"b"

        return StreamingResponse(body())

    async def ok(request: Any) -> PlainTextResponse:
        return PlainTextResponse("ok", status_code=201)

    app = Starlette(routes=[Route("/ok", ok), Route("/stream", stream)])
    app.add_middleware(OwnershipMiddleware, policy=Policy(), keys=Keys())
    client = TestClient(app)
    assert client.get("/ok", headers=HEADERS).status_code == 201
    assert client.get("/stream", headers=HEADERS).text == "ab"
    assert client.get("/ok").status_code == 400
    assert kinds(event_sink) == [
        ("hop", "/ok", "attributed", None),
        ("request", "/ok", "attributed", 201),
        ("hop", "/stream", "attributed", None),
        ("request", "/stream", "attributed", 200),
        ("hop", "/ok", "rejected", None),
        ("request", "/ok", "rejected", 400),
    ]
    request = event_sink.events[1]
    assert request["owner_team"] == "search" and request["method"] == "GET"
    assert request["trace_id"] == event_sink.events[0]["trace_id"]
    assert request["latency_ms"] >= 0 and len({e["event_id"] for e in event_sink.events}) == 6
    assert event_sink.events[5]["missing"] == ["owner_team", "workflow_id", "feature"]


def test_wsgi_request_events(event_sink: Any) -> None:
    app = Flask("events")

    @app.get("/ok")
    def ok() -> tuple[str, int]:
        return "ok", 202

    app.wsgi_app = OwnershipWSGIMiddleware(  # type: ignore[method-assign]
        app.wsgi_app, policy=Policy(mode="quarantine"), keys=Keys()
    )
    client = app.test_client()
    for headers in (HEADERS, {}):
        response = client.get("/ok", headers=headers)  # the test client streams lazily
        assert (response.status_code, response.get_data()) == (202, b"ok")
        response.close()
    assert kinds(event_sink) == [
        ("hop", "/ok", "attributed", None),
        ("request", "/ok", "attributed", 202),
        ("hop", "/ok", "quarantined", None),
        ("request", "/ok", "quarantined", 202),
    ]
    assert event_sink.events[0]["fields_present"] == ["owner_team", "workflow_id", "feature"]


def test_lifespan_shutdown_flushes_the_sink() -> None:
    from ownership_ctx import events

    class FlushingSink:
        def __init__(self) -> None:
            self.flushed: list[float] = []

        def emit(self, event: Any) -> None:
            pass

        def flush(self, timeout: float) -> bool:
            self.flushed.append(timeout)
            return True

    sink = FlushingSink()
    previous = events.set_sink(sink)
    try:
        app = Starlette(routes=[])
        app.add_middleware(OwnershipMiddleware, policy=Policy(), keys=Keys())
        with TestClient(app):
            assert sink.flushed == []
        assert sink.flushed == [5.0]
    finally:
        events.set_sink(previous)


def test_wsgi_request_event_when_the_app_raises(event_sink: Any) -> None:
    def broken(environ: Any, start_response: Any) -> Any:
        raise RuntimeError("boom")

    app = OwnershipWSGIMiddleware(broken, policy=Policy(mode="quarantine"), keys=Keys())
    environ = {"REQUEST_METHOD": "GET", "PATH_INFO": "/x"}
    with pytest.raises(RuntimeError, match=r"^boom$"):  # the host's own exception, untouched
        app(environ, lambda status, headers, exc_info=None: None)
    assert kinds(event_sink) == [
        ("hop", "/x", "quarantined", None),
        ("request", "/x", "quarantined", 500),
    ]
