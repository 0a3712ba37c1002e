"""Units are names, never data (issue 11, item 3).

Identifier-bearing paths go through every edge adapter (ASGI HTTP and WebSocket, FastAPI, WSGI
with Flask, rejected requests, unmatched paths); then every column of a real SQLite store,
every event and every log line is scanned for the raw identifiers.
"""

from __future__ import annotations

import logging
import sqlite3
from collections.abc import Iterator, Mapping
from pathlib import Path
from typing import Any

import pytest
from fastapi import FastAPI
from flask import Flask
from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import JSONResponse
from starlette.routing import Mount, Route, WebSocketRoute
from starlette.testclient import TestClient
from starlette.websockets import WebSocket

from ownership_ctx import Policy, events, sinks
from ownership_ctx.asgi import OwnershipMiddleware
from ownership_ctx.units import redact_path
from ownership_ctx.wsgi import OwnershipWSGIMiddleware

EMAIL = "jane@acme.example"
UUID = "8f14e45f-ceea-467f-a0e6-5b7c5a0e9b2a"
NUMBER = "123456789"
HEX = "deadbeefcafebabe0123"
TOKEN = "eyJhbGciOiJIUzI1NiJ9xYz0123456789abc"
IDS = (EMAIL, UUID, NUMBER, HEX, TOKEN)
OWNED = {"x-owner-team": "search", "x-workflow-id": "triage", "x-feature": "summarize"}


@pytest.mark.parametrize(
    ("path", "expected"),
    [
        ("/users/jane@acme.example/orders", "/users/{id}/orders"),
        ("/users/42/orders/7", "/users/{id}/orders/{id}"),
        (f"/items/{UUID}", "/items/{id}"),
        (f"/items/{UUID.upper()}", "/items/{id}"),
        (f"/blobs/{HEX}", "/blobs/{id}"),
        (f"/t/{TOKEN}", "/t/{id}"),
        ("/invoices/INV-2024-00123", "/invoices/{id}"),
        ("/a/jane%40acme.example", "/a/{id}"),
        ("/s/" + "x" * 65, "/s/{id}"),
        # Names stay: versions, words, short numbers inside words.
        ("/v1/api/oauth2/callback", "/v1/api/oauth2/callback"),
        ("/docs", "/docs"),
        ("/openapi.json", "/openapi.json"),
        ("/", "/"),
        ("", ""),
        ("/getting-started-v2/", "/getting-started-v2/"),
    ],
)
def test_redact_path(path: str, expected: str) -> None:
    assert redact_path(path) == expected


def test_redacted_paths_are_bounded() -> None:
    assert len(redact_path("/abc" * 500)) == 256


class Tee:
    """Every event, kept here and handed on to the real store."""

    def __init__(self, sink: Any) -> None:
        self.sink = sink
        self.events: list[Mapping[str, Any]] = []

    def emit(self, event: Mapping[str, Any]) -> None:
        self.events.append(dict(event))
        self.sink.emit(event)


@pytest.fixture
def store(tmp_path: Path) -> Iterator[tuple[Tee, Path]]:
    path = tmp_path / "events.db"
    pipeline = sinks.open_sink(f"sqlite:///{path}")
    tee = Tee(pipeline)
    previous = events.set_sink(tee)
    try:
        yield tee, path
    finally:
        events.set_sink(previous)
        pipeline.close()  # type: ignore[attr-defined]


def starlette_app(policy: Policy, **options: Any) -> Starlette:
    async def orders(request: Request) -> JSONResponse:
        return JSONResponse({"ok": True})

    async def room(websocket: WebSocket) -> None:
        await websocket.accept()
        await websocket.send_text("hi")
        await websocket.close()

    app = Starlette(
        routes=[
            Route("/users/{user}/orders", orders),
            Mount("/tenants/{tenant}", routes=[Route("/items/{item}", orders)]),
            WebSocketRoute("/ws/{room}", room),
        ]
    )
    app.add_middleware(OwnershipMiddleware, policy=policy, **options)
    return app


def fastapi_app(policy: Policy) -> FastAPI:
    app = FastAPI()

    @app.get("/accounts/{account_id}")
    async def account(account_id: str) -> dict[str, bool]:
        return {"ok": True}

    app.add_middleware(OwnershipMiddleware, policy=policy)
    return app


def flask_app(policy: Policy) -> Flask:
    app = Flask(__name__)

    @app.route("/users/<user>/orders")
    def orders(user: str) -> dict[str, bool]:
        return {"ok": True}

    app.wsgi_app = OwnershipWSGIMiddleware(app.wsgi_app, policy=policy)  # type: ignore[method-assign]
    return app


def _scan_store(path: Path) -> int:
    connection = sqlite3.connect(path)
    cells = 0
    try:
        tables = [
            r[0] for r in connection.execute("SELECT name FROM sqlite_master WHERE type='table'")
        ]
        for table in tables:
            for row in connection.execute(f'SELECT * FROM "{table}"'):
                for cell in row:
                    text = cell.decode("latin-1") if isinstance(cell, bytes) else str(cell)
                    for raw in IDS:
                        assert raw not in text, f"table {table} stores a raw identifier"
                    cells += 1
    finally:
        connection.close()
    return cells


def test_no_raw_identifier_is_stored_or_logged(
    store: tuple[Tee, Path], caplog: pytest.LogCaptureFixture
) -> None:
    tee, path = store
    caplog.set_level(logging.DEBUG)
    quarantine = Policy(mode="quarantine")
    enforce = Policy(mode="enforce")

    with TestClient(starlette_app(quarantine)) as client:
        assert client.get(f"/users/{EMAIL}/orders", headers=OWNED).status_code == 200
        assert client.get(f"/tenants/{NUMBER}/items/{UUID}").status_code == 200
        assert client.get(f"/nowhere/{HEX}/{TOKEN}").status_code == 404
        with client.websocket_connect(f"/ws/{EMAIL}") as websocket:
            assert websocket.receive_text() == "hi"
    with TestClient(starlette_app(enforce)) as client:  # rejected before routing
        assert client.get(f"/users/{EMAIL}/orders").status_code == 400
        assert client.get(f"/tenants/{NUMBER}/items/{UUID}").status_code == 400
    with TestClient(fastapi_app(quarantine)) as client:
        assert client.get(f"/accounts/{TOKEN}").status_code == 200
    for policy in (quarantine, enforce):
        flask_client = flask_app(policy).test_client()
        # buffered: the body is consumed and closed, as a server does
        response = flask_client.get(f"/users/{EMAIL}/orders", buffered=True)
        assert response.status_code == (200 if policy is quarantine else 400)
        assert flask_client.get(f"/nowhere/{NUMBER}", buffered=True).status_code == (
            404 if policy is quarantine else 400
        )

    requests = {
        (e["method"], e["route"], e["status"]) for e in tee.events if e["kind"] == "request"
    }
    assert requests == {
        ("GET", "/users/{user}/orders", 200),  # Starlette route template
        ("GET", "/tenants/{id}/items/{item}", 200),  # a mount's params redacted
        ("GET", "/nowhere/{id}/{id}", 404),  # no route: the redacted path
        ("WEBSOCKET", "/ws/{room}", 101),
        ("GET", "/users/{id}/orders", 400),  # rejected before routing: redacted
        ("GET", "/tenants/{id}/items/{id}", 400),
        ("GET", "/accounts/{account_id}", 200),  # FastAPI
        ("GET", "/users/<user>/orders", 200),  # Flask url rule
        ("GET", "/nowhere/{id}", 404),
        ("GET", "/nowhere/{id}", 400),
    }
    hop_units = {e["unit"] for e in tee.events if e["kind"] == "hop"}
    assert hop_units == {
        "/users/{id}/orders",
        "/tenants/{id}/items/{id}",
        "/nowhere/{id}/{id}",
        "/ws/{id}",
        "/accounts/{id}",
        "/nowhere/{id}",
    }
    for event in tee.events:
        for raw in IDS:
            assert raw not in repr(event), "an event carries a raw identifier"
    ours = [r for r in caplog.records if r.name.startswith("ownership_ctx")]
    assert [r for r in ours if "rejected" in r.getMessage()], "rejections are logged"
    for record in ours:
        for raw in IDS:
            assert raw not in record.getMessage(), "a log line carries a raw identifier"
            assert raw not in repr(vars(record))

    assert sinks.flush_all(10)
    assert _scan_store(path) > 0


def test_unit_of_names_the_unit_everywhere(
    store: tuple[Tee, Path], caplog: pytest.LogCaptureFixture
) -> None:
    tee, _ = store
    caplog.set_level(logging.DEBUG)

    def unit_of(scope: Any) -> str:
        return f"{scope['type']}:orders"

    with TestClient(starlette_app(Policy(mode="enforce"), unit_of=unit_of)) as client:
        assert client.get(f"/users/{EMAIL}/orders").status_code == 400
    [hop] = [e for e in tee.events if e["kind"] == "hop"]
    [request] = [e for e in tee.events if e["kind"] == "request"]
    assert hop["unit"] == request["route"] == "http:orders"
    [rejection] = [r.getMessage() for r in caplog.records if r.name == "ownership_ctx"]
    assert "http:orders" in rejection and EMAIL not in rejection


def test_a_failing_unit_of_falls_back_to_the_redacted_path(store: tuple[Tee, Path]) -> None:
    tee, _ = store

    def unit_of(environ: Any) -> str:
        raise RuntimeError("bug")

    app = Flask(__name__)
    app.route("/users/<user>/orders")(lambda user: {"ok": True})
    app.wsgi_app = OwnershipWSGIMiddleware(  # type: ignore[method-assign]
        app.wsgi_app, policy=Policy(mode="quarantine"), unit_of=unit_of
    )
    before = events.stats["unit_of_errors"]
    response = app.test_client().get(f"/users/{EMAIL}/orders", buffered=True)
    assert response.status_code == 200
    assert {e.get("route") or e["unit"] for e in tee.events} == {"/users/{id}/orders"}
    assert events.stats["unit_of_errors"] == before + 2


def test_policy_rules_match_the_path_as_received() -> None:
    from ownership_ctx import Rule

    policy = Policy(mode="enforce", rules=(Rule(f"/users/{EMAIL}/*", mode="quarantine"),))
    with TestClient(starlette_app(policy)) as client:
        assert client.get(f"/users/{EMAIL}/orders").status_code == 200
        assert client.get("/users/someone-else/orders").status_code == 400
