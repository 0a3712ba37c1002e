"""The WSGI edge answers 429 like the ASGI one; without budgets nothing changes."""

from __future__ import annotations

import json
from collections.abc import Iterable
from decimal import Decimal
from typing import Any

from werkzeug.test import Client

from ownership_ctx import Keys, Policy, budgets
from ownership_ctx.budgets import Budgets
from ownership_ctx.wsgi import OwnershipWSGIMiddleware
from tests.budgets.support import envelope, team_budget

CALLED: list[str] = []


def app(environ: dict[str, Any], start_response: Any) -> Iterable[bytes]:
    CALLED.append(environ["PATH_INFO"])
    start_response("200 OK", [("Content-Type", "text/plain")])
    return [b"ok"]


def client() -> Client:
    policy = Policy(mode="enforce", required=("owner_team",))
    return Client(OwnershipWSGIMiddleware(app, policy=policy, keys=Keys()))


def test_an_owner_over_its_budget_gets_429_and_the_app_is_not_called(event_sink: Any) -> None:
    live = Budgets([team_budget()], refresh=0.001)
    budgets.install(live)
    live.record(envelope(), Decimal("1.00"))
    live.refresh_now()
    CALLED.clear()
    response = client().get("/v1/x", headers={"x-owner-team": "support"})
    assert response.status_code == 429 and CALLED == []
    assert response.headers["content-type"] == "application/problem+json"
    assert int(response.headers["retry-after"]) > 0
    body = json.loads(response.get_data())
    assert body["budget"] == "support-daily" and body["trace_id"] == response.headers["x-trace-id"]
    (request,) = [e for e in event_sink.events if e["kind"] == "request"]
    assert request["status"] == 429 and request["owner_team"] == "support"
    assert client().get("/v1/x", headers={"x-owner-team": "search"}).status_code == 200


def test_without_budgets_requests_are_served() -> None:
    assert client().get("/v1/x", headers={"x-owner-team": "support"}).status_code == 200
