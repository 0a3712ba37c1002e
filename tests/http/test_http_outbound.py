"""Service to service over real loopback servers: A (ASGI) calls B (ASGI or WSGI) with httpx
(sync and async) and requests; B trusts signed envelopes only; nothing goes to other hosts."""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any

import httpx
import pytest
import requests
from flask import Flask
from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import JSONResponse
from starlette.routing import Route

from ownership_ctx import Envelope, Keys, Policy, bind, current, encode_header, new_trace_id
from ownership_ctx.asgi import OwnershipMiddleware
from ownership_ctx.http import AsyncOwnershipTransport, OwnershipAdapter, OwnershipTransport
from ownership_ctx.wsgi import OwnershipWSGIMiddleware
from tests.support.servers import uvicorn_server, wsgi_server

KEYS = Keys(signing_keys=(b"internal-signing-key-0001",))
ALLOW = ["127.0.0.1"]
TRACE = "0af7651916cd43dd8448eb211c80319c"
CALLER = {
    "x-owner-team": "support",
    "x-workflow-id": "ticket-triage",
    "x-feature": "summarize",
    "traceparent": f"00-{TRACE}-b7ad6b7169203331-01",
}
EXPECTED = {
    "trace_id": TRACE,
    "owner_team": "support",
    "workflow_id": "ticket-triage",
    "feature": "summarize",
    "attribution": "attributed",
}


def seen() -> dict[str, str] | None:
    envelope = current()
    return envelope.as_dict() if envelope is not None else None


def service_b_asgi() -> Any:
    async def handler(request: Request) -> JSONResponse:
        return JSONResponse({"envelope": seen(), "baggage": request.headers.get("baggage")})

    app = Starlette(routes=[Route("/b", handler)])
    app.add_middleware(
        OwnershipMiddleware, policy=Policy(mode="quarantine", trust="signed"), keys=KEYS
    )
    return app


def service_b_wsgi() -> Any:
    app = Flask("service_b")

    @app.get("/b")
    def handler() -> dict[str, Any]:
        from flask import request

        return {"envelope": seen(), "baggage": request.headers.get("baggage")}

    app.wsgi_app = OwnershipWSGIMiddleware(  # type: ignore[method-assign]
        app.wsgi_app, policy=Policy(mode="quarantine", trust="signed"), keys=KEYS
    )
    return app


def third_party() -> Any:
    async def echo(request: Request) -> JSONResponse:
        return JSONResponse({"headers": dict(request.headers)})

    return Starlette(routes=[Route("/echo", echo)])


def service_a() -> Any:
    async def via_httpx_async(request: Request) -> JSONResponse:
        transport = AsyncOwnershipTransport(allow_hosts=ALLOW, keys=KEYS)
        async with httpx.AsyncClient(transport=transport) as client:
            response = await client.get(
                request.query_params["target"], headers={"baggage": "sentry-environment=prod"}
            )
        return JSONResponse(response.json())

    def via_httpx_sync(request: Request) -> JSONResponse:  # runs in the thread pool
        with httpx.Client(transport=OwnershipTransport(allow_hosts=ALLOW, keys=KEYS)) as client:
            response = client.get(request.query_params["target"])
        return JSONResponse(response.json())

    def via_requests(request: Request) -> JSONResponse:
        with requests.Session() as session:
            session.mount("http://", OwnershipAdapter(allow_hosts=ALLOW, keys=KEYS))
            response = session.get(request.query_params["target"], timeout=10)
        return JSONResponse(response.json())

    app = Starlette(
        routes=[
            Route("/httpx-async", via_httpx_async),
            Route("/httpx-sync", via_httpx_sync),
            Route("/requests", via_requests),
        ]
    )
    app.add_middleware(OwnershipMiddleware, policy=Policy(mode="enforce"), keys=KEYS)
    return app


@pytest.fixture(scope="module")
def urls() -> Iterator[dict[str, str]]:
    with (
        uvicorn_server(service_a()) as a,
        uvicorn_server(service_b_asgi()) as b_asgi,
        wsgi_server(service_b_wsgi()) as b_wsgi,
        uvicorn_server(third_party(), host="127.0.0.2") as outside,
    ):
        yield {"a": a, "b_asgi": b_asgi, "b_wsgi": b_wsgi, "outside": outside}


@pytest.mark.parametrize("client", ["httpx-async", "httpx-sync", "requests"])
@pytest.mark.parametrize("service_b", ["b_asgi", "b_wsgi"])
def test_b_sees_the_envelope_and_trace_id_of_a(
    urls: dict[str, str], client: str, service_b: str
) -> None:
    target = urls[service_b] + "/b"
    response = httpx.get(f"{urls['a']}/{client}", params={"target": target}, headers=CALLER)
    assert response.status_code == 200, response.text
    assert response.json()["envelope"] == EXPECTED
    baggage = response.json()["baggage"]
    assert ",ownership.sig=s2:" in baggage  # signed: B trusts signed envelopes only
    if client == "httpx-async":  # the caller's own baggage survives next to ours
        assert baggage.startswith("sentry-environment=prod,ownership.v=1,")


@pytest.mark.parametrize("service_b", ["b_asgi", "b_wsgi"])
def test_b_does_not_trust_ownership_from_outside(urls: dict[str, str], service_b: str) -> None:
    claimed = Envelope(trace_id=new_trace_id(), owner_team="finance", workflow_id="w", feature="f")
    forged_keys = Keys(signing_keys=(b"not-the-internal-key-01",))
    for headers in (
        {"baggage": encode_header(claimed)},  # unsigned
        {"baggage": encode_header(claimed, forged_keys)},  # signed with the wrong key
        {"x-owner-team": "finance", "x-workflow-id": "w", "x-feature": "f"},  # first-party
    ):
        body = httpx.get(urls[service_b] + "/b", headers=headers).json()
        envelope = body["envelope"]
        assert envelope["attribution"] == "quarantined"
        assert "owner_team" not in envelope and envelope["trace_id"] != claimed.trace_id


@pytest.mark.parametrize("client", ["httpx-async", "httpx-sync", "requests"])
def test_no_ownership_headers_to_hosts_outside_the_allow_list(
    urls: dict[str, str], client: str
) -> None:
    target = urls["outside"] + "/echo"
    response = httpx.get(f"{urls['a']}/{client}", params={"target": target}, headers=CALLER)
    headers = response.json()["headers"]
    assert "ownership." not in headers.get("baggage", "")
    if client == "httpx-async":
        assert headers["baggage"] == "sentry-environment=prod"  # left exactly as the caller set it


def test_a_call_with_nothing_bound_is_marked_unattributed(urls: dict[str, str]) -> None:
    assert current() is None
    with httpx.Client(transport=OwnershipTransport(allow_hosts=ALLOW, keys=KEYS)) as client:
        envelope = client.get(urls["b_asgi"] + "/b").json()["envelope"]
    assert envelope["attribution"] == "unattributed" and "owner_team" not in envelope


def test_glob_allow_list_and_existing_stale_entries() -> None:
    from ownership_ctx.http import AllowList

    allow = AllowList(["*.svc.internal", "billing.example.com"])
    assert allow.allows("router.svc.internal") and allow.allows("BILLING.example.com.")
    assert not allow.allows("api.openai.com") and not allow.allows(None)
    assert not allow.allows("svc.internal.evil.com")

    captured: list[httpx.Request] = []
    inner = httpx.MockTransport(lambda request: captured.append(request) or httpx.Response(204))
    transport = OwnershipTransport(inner, allow_hosts=["router.svc.internal"])
    envelope = Envelope(trace_id=TRACE, owner_team="search")
    with bind(envelope), httpx.Client(transport=transport) as client:
        client.get(
            "http://router.svc.internal/", headers={"baggage": "ownership.owner_team=old,k=v"}
        )
        client.get("https://api.openai.com/v1/chat/completions")
    assert captured[0].headers["baggage"] == "k=v," + encode_header(envelope)
    assert "baggage" not in captured[1].headers
