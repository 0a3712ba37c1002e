"""A resolver sees every request header through the edge middleware (API keys, tokens)."""

from __future__ import annotations

from typing import Any

from flask import Flask
from starlette.applications import Starlette
from starlette.responses import JSONResponse
from starlette.routing import Route
from starlette.testclient import TestClient

from ownership_ctx import Inbound, Keys, Policy, current
from ownership_ctx.asgi import OwnershipMiddleware
from ownership_ctx.wsgi import OwnershipWSGIMiddleware

TEAMS = {"k-live-1": "billing"}


def resolver(inbound: Inbound) -> dict[str, str] | None:
    team = TEAMS.get(inbound.carrier.get("x-api-key", ""))
    return {"owner_team": team, "workflow_id": "api", "feature": "invoices"} if team else None


POLICY = Policy(mode="enforce", resolver=resolver)


def owner() -> dict[str, Any]:
    envelope = current()
    return {"team": envelope.owner_team if envelope else None}


def test_asgi_resolver_reads_the_api_key() -> None:
    async def handler(request: Any) -> JSONResponse:
        return JSONResponse(owner())

    app = Starlette(routes=[Route("/", handler)])
    app.add_middleware(OwnershipMiddleware, policy=POLICY, keys=Keys())
    client = TestClient(app)
    assert client.get("/", headers={"x-api-key": "k-live-1"}).json() == {"team": "billing"}
    assert client.get("/", headers={"x-api-key": "unknown"}).status_code == 400


def test_wsgi_resolver_reads_the_api_key() -> None:
    app = Flask("resolver")
    app.get("/")(owner)
    app.wsgi_app = OwnershipWSGIMiddleware(app.wsgi_app, policy=POLICY, keys=Keys())  # type: ignore[method-assign]
    client = app.test_client()
    assert client.get("/", headers={"X-Api-Key": "k-live-1"}).json == {"team": "billing"}
    assert client.get("/").status_code == 400
