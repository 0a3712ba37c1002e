"""The ASGI edge in process: 429 for HTTP, a refused WebSocket handshake, the request event
records the 429, observe mode serves, and without budgets nothing changes."""

from __future__ import annotations

import asyncio
import json
from decimal import Decimal
from typing import Any

from ownership_ctx import Keys, Policy, budgets
from ownership_ctx.asgi import OwnershipMiddleware
from ownership_ctx.budgets import Budgets
from tests.budgets.support import envelope, team_budget

CALLED: list[str] = []


async def app(scope: Any, receive: Any, send: Any) -> None:
    CALLED.append(scope["type"])
    if scope["type"] == "websocket":
        await receive()
        await send({"type": "websocket.accept"})
        await send({"type": "websocket.close", "code": 1000})
        return
    await send({"type": "http.response.start", "status": 200, "headers": []})
    await send({"type": "http.response.body", "body": b"ok"})


def call(kind: str, team: str, extensions: dict[str, Any] | None = None) -> list[dict[str, Any]]:
    middleware = OwnershipMiddleware(
        app, policy=Policy(mode="enforce", required=("owner_team",)), keys=Keys()
    )
    scope = {
        "type": kind,
        "path": "/v1/x",
        "method": "GET",
        "headers": [(b"x-owner-team", team.encode())],
        "extensions": extensions or {},
    }
    sent: list[dict[str, Any]] = []
    incoming = [{"type": "websocket.connect"} if kind == "websocket" else {"type": "http.request"}]

    async def receive() -> dict[str, Any]:
        return incoming.pop(0) if incoming else {"type": "http.disconnect"}

    async def send(message: dict[str, Any]) -> None:
        sent.append(message)

    asyncio.run(middleware(scope, receive, send))
    return sent


def spent_budgets(**kwargs: Any) -> Budgets:
    live = Budgets([team_budget()], refresh=0.001, **kwargs)
    live.record(envelope(), Decimal("1.00"))
    live.refresh_now()
    budgets.install(live)
    return live


def test_http_gets_429_naming_the_budget(event_sink: Any) -> None:
    spent_budgets()
    CALLED.clear()
    start, body = call("http", "support")
    assert CALLED == [] and start["status"] == 429
    headers = dict(start["headers"])
    assert headers[b"content-type"] == b"application/problem+json"
    assert int(headers[b"retry-after"]) > 0
    document = json.loads(body["body"])
    assert document["budget"] == "support-daily" and document["status"] == 429
    (request,) = [e for e in event_sink.events if e["kind"] == "request"]
    assert request["status"] == 429 and request["owner_team"] == "support"


def test_a_websocket_handshake_is_refused() -> None:
    spent_budgets()
    CALLED.clear()
    (close,) = call("websocket", "support")
    assert close == {"type": "websocket.close", "code": 1008, "reason": "budget exceeded"}
    start, _ = call("websocket", "support", {"websocket.http.response": {}})
    assert start["type"] == "websocket.http.response.start" and start["status"] == 429
    assert CALLED == []


def test_observing_the_edge_serves_and_counts() -> None:
    spent_budgets(edge="observe")
    start, _ = call("http", "support")
    assert start["status"] == 200


def test_other_owners_and_no_budgets_are_served() -> None:
    spent_budgets()
    assert call("http", "search")[0]["status"] == 200
    budgets.uninstall()
    assert call("http", "support")[0]["status"] == 200
