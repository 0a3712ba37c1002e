"""The ASGI edge middleware with Starlette and FastAPI, called in-process.

Covers the modes (enforce / quarantine / stamp) and their problem+json bodies, trace ids, the
first-party headers and raw-id hashing, per-route rules, the resolver, signed-only trust,
lifespan, FastAPI dependencies, WebSockets, and -- the point of the middleware -- that the
exact envelope is bound for the whole unit of work (handler, streamed chunks, background
tasks, thread pools, spawned tasks, threads) and reset afterwards.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import threading
from collections.abc import AsyncIterator, Iterator
from typing import Annotated, Any

import httpx
import pytest
from fastapi import Depends, FastAPI, WebSocket
from starlette.applications import Starlette
from starlette.background import BackgroundTask, BackgroundTasks
from starlette.concurrency import run_in_threadpool
from starlette.requests import Request
from starlette.responses import JSONResponse, Response, StreamingResponse
from starlette.routing import Route, WebSocketRoute
from starlette.testclient import TestClient, WebSocketDenialResponse
from starlette.websockets import WebSocketDisconnect

import ownership_ctx
from ownership_ctx import (
    ConfigurationError,
    ContextThreadPoolExecutor,
    EdgeHeaders,
    Envelope,
    Keys,
    Policy,
    Rule,
    current,
    hash_identifier,
    propagate,
)
from ownership_ctx.asgi import OwnershipMiddleware
from ownership_ctx.codec import encode

HASH_KEY = b"asgi-test-hash-key-0123456789"
SIGN_KEY = b"asgi-test-signing-key-0123456789"
TRACE = "4bf92f3577b34da6a3ce929d0e0e4736"
OTHER_TRACE = "0af7651916cd43dd8448eb211c80319c"
TRACEPARENT = f"00-{OTHER_TRACE}-b7ad6b7169203331-01"
TENANT = "h1:" + "ab" * 16
USER = "h1:" + "cd" * 16
REQUIRED = ("owner_team", "workflow_id", "feature")
PROBLEM_FIELDS = {"type", "title", "status", "detail", "missing", "invalid", "trace_id"}

#: How a FastAPI handler asks for the envelope.
CurrentEnvelope = Annotated[Envelope | None, Depends(current)]

FULL = Envelope(
    trace_id=TRACE,
    owner_team="search",
    workflow_id="wf.answer/v2",
    feature="ticket-triage",
    tenant=TENANT,
    user=USER,
)


@pytest.fixture
def anyio_backend() -> str:
    return "asyncio"


pytestmark = pytest.mark.usefixtures("no_key_env")


def bag(*entries: tuple[str, str], **fields: str) -> str:
    """A baggage value with ``ownership.*`` entries (plus any raw ``(key, value)`` entries)."""
    out = ["ownership.v=1", *(f"ownership.{k}={v}" for k, v in fields.items())]
    out.extend(f"{k}={v}" for k, v in entries)
    return ",".join(out)


def full_bag(envelope: Envelope = FULL) -> dict[str, str]:
    fields = {k: v for k, v in envelope.as_dict().items() if k != "attribution"}
    return {"baggage": bag(**fields)}


class Recorder:
    """What `current()` was at each labelled point of a unit of work (thread-safe appends)."""

    def __init__(self) -> None:
        self.seen: list[tuple[str, Envelope | None]] = []

    def add(self, label: str) -> Envelope | None:
        envelope = current()
        self.seen.append((label, envelope))
        return envelope

    def labels(self) -> list[str]:
        return [label for label, _ in self.seen]

    def only(self) -> Envelope | None:
        """The one envelope every point saw (fails if they differ)."""
        envelopes = {envelope for _, envelope in self.seen}
        assert len(envelopes) == 1, self.seen
        return envelopes.pop()

    def clear(self) -> None:
        self.seen.clear()


UNIT_LABELS = {
    "handler",
    "run_in_threadpool",
    "to_thread",
    "run_in_executor",
    "thread",
    "chunk0",
    "chunk1",
    "chunk2",
    "spawned",
    "bg_async",
    "bg_sync",
}


def starlette_app(policy: Policy, rec: Recorder, keys: Keys | None = None, **kw: Any) -> Starlette:
    """A Starlette app whose routes record what they observe into ``rec``."""
    detached: list[asyncio.Task[None]] = []

    async def who(request: Request) -> Response:
        envelope = rec.add("handler")
        return JSONResponse(envelope.as_dict() if envelope else None)

    def who_sync(request: Request) -> Response:
        envelope = rec.add("handler")
        return JSONResponse(envelope.as_dict() if envelope else None)

    async def unit(request: Request) -> Response:
        rec.add("handler")
        release = asyncio.Event()

        async def spawned() -> None:
            await release.wait()  # runs after the handler returned and the body was sent
            rec.add("spawned")

        task = asyncio.create_task(spawned())
        await run_in_threadpool(rec.add, "run_in_threadpool")
        await asyncio.to_thread(rec.add, "to_thread")
        await asyncio.get_running_loop().run_in_executor(None, rec.add, "run_in_executor")
        thread = threading.Thread(target=propagate(rec.add), args=("thread",))
        thread.start()
        thread.join()

        async def body() -> AsyncIterator[bytes]:
            for i in range(3):
                await asyncio.sleep(0)
                rec.add(f"chunk{i}")
                yield f"chunk{i};".encode()

        async def bg_async() -> None:
            rec.add("bg_async")
            release.set()
            await task

        tasks = BackgroundTasks()
        tasks.add_task(bg_async)
        tasks.add_task(rec.add, "bg_sync")  # a sync task: Starlette runs it in a thread
        return StreamingResponse(body(), background=tasks)

    async def stream_sync(request: Request) -> Response:
        def body() -> Iterator[bytes]:  # a sync generator: iterated in Starlette's thread pool
            for i in range(3):
                rec.add(f"sync_chunk{i}")
                yield b"x"

        return StreamingResponse(body(), background=BackgroundTask(rec.add, "bg"))

    async def spawn_detached(request: Request) -> Response:
        async def later() -> None:
            await asyncio.sleep(0.01)
            rec.add("detached")

        detached.append(asyncio.create_task(later()))
        return Response("ok")

    async def boom(request: Request) -> Response:
        rec.add("handler")
        raise RuntimeError("handler failed")

    async def ws_denied(websocket: Any) -> None:
        rec.add("ws_denied")
        await websocket.send_denial_response(Response("go away", status_code=401))

    async def ws(websocket: Any) -> None:
        await websocket.accept()
        try:
            while True:
                text = await websocket.receive_text()
                envelope = rec.add(f"ws:{text}")
                await websocket.send_text(envelope.trace_id if envelope else "none")
        except WebSocketDisconnect:
            rec.add("ws:disconnect")

    @contextlib.asynccontextmanager
    async def lifespan(app: Starlette) -> AsyncIterator[None]:
        asyncio.get_running_loop().set_default_executor(ContextThreadPoolExecutor())
        rec.add("startup")
        yield
        rec.add("shutdown")

    app = Starlette(
        routes=[
            Route("/who", who),
            Route("/who-sync", who_sync),
            Route("/public/ping", who),
            Route("/unit", unit),
            Route("/stream-sync", stream_sync),
            Route("/detached", spawn_detached),
            Route("/boom", boom),
            WebSocketRoute("/ws", ws),
            WebSocketRoute("/ws-denied", ws_denied),
        ],
        lifespan=lifespan,
    )
    app.state.detached = detached
    app.add_middleware(OwnershipMiddleware, policy=policy, keys=keys, **kw)
    return app


@contextlib.asynccontextmanager
async def client_for(app: Any) -> AsyncIterator[httpx.AsyncClient]:
    transport = httpx.ASGITransport(app=app)
    async with httpx.AsyncClient(transport=transport, base_url="http://edge.test") as client:
        yield client


def problem(response: httpx.Response) -> dict[str, Any]:
    assert response.status_code == 400
    assert response.headers["content-type"] == "application/problem+json"
    body = json.loads(response.content)
    assert set(body) == PROBLEM_FIELDS
    assert body["status"] == 400
    assert body["trace_id"] == response.headers["x-trace-id"]
    return body


# --- modes ------------------------------------------------------------------------------------


@pytest.mark.anyio
async def test_enforce_rejects_missing_fields_with_problem_json() -> None:
    rec = Recorder()
    async with client_for(starlette_app(Policy(mode="enforce"), rec)) as client:
        response = await client.get("/who")
        body = problem(response)
        assert body["missing"] == list(REQUIRED)
        assert body["invalid"] == []
        assert len(body["trace_id"]) == 32
        # Partly there: only the absent ones are named; the trace id is the envelope's.
        response = await client.get(
            "/who", headers={"baggage": bag(trace_id=TRACE, owner_team="search")}
        )
        body = problem(response)
        assert body["missing"] == ["workflow_id", "feature"]
        assert body["invalid"] == []
        assert body["trace_id"] == TRACE
    assert rec.seen == []  # the handler never ran


@pytest.mark.anyio
async def test_enforce_names_invalid_fields_without_echoing_values() -> None:
    rec = Recorder()
    secret = "alice@example.com"
    baggage = bag(
        trace_id=TRACE,
        owner_team="bad%20team%21",
        workflow_id="wf",
        feature="f",
        tenant=secret.replace("@", "%40"),
    )
    async with client_for(starlette_app(Policy(mode="enforce"), rec)) as client:
        response = await client.get("/who", headers={"baggage": baggage})
    body = problem(response)
    assert body["trace_id"] == TRACE
    assert body["missing"] == ["owner_team"]
    assert sorted(body["invalid"], key=lambda p: p["field"]) == [
        {
            "field": "owner_team",
            "code": "invalid",
            "rule": "must be 1-64 characters of [A-Za-z0-9._:/-]",
        },
        {
            "field": "tenant",
            "code": "raw_identifier",
            "rule": "must be a keyed hash ('h1:' and 32 hex characters), never a raw id",
        },
    ]
    assert b"alice" not in response.content and b"bad team" not in response.content
    assert rec.seen == []


@pytest.mark.anyio
async def test_enforce_admits_a_full_envelope_exactly() -> None:
    rec = Recorder()
    async with client_for(starlette_app(Policy(mode="enforce"), rec)) as client:
        response = await client.get("/who", headers=full_bag())
    assert response.status_code == 200
    assert response.headers["x-trace-id"] == TRACE
    assert rec.only() == FULL
    assert response.json() == FULL.as_dict()


@pytest.mark.anyio
async def test_quarantine_lets_requests_through_marked() -> None:
    rec = Recorder()
    async with client_for(starlette_app(Policy(mode="quarantine"), rec)) as client:
        response = await client.get("/who")
        assert response.status_code == 200
        minted = response.headers["x-trace-id"]
        assert rec.only() == Envelope(trace_id=minted, attribution="quarantined")
        rec.clear()
        # What did arrive is kept; the envelope is marked quarantined.
        partial = {"baggage": bag(trace_id=TRACE, owner_team="search", feature="chat")}
        response = await client.get("/who", headers=partial)
        assert response.status_code == 200
        assert response.headers["x-trace-id"] == TRACE
        assert rec.only() == Envelope(
            trace_id=TRACE, owner_team="search", feature="chat", attribution="quarantined"
        )
        rec.clear()
        # Invalid values are dropped, never forwarded.
        bad = {"baggage": bag(trace_id=TRACE, owner_team="a%20b", workflow_id="w", feature="f")}
        response = await client.get("/who", headers=bad)
        assert response.status_code == 200
        assert rec.only() == Envelope(
            trace_id=TRACE, workflow_id="w", feature="f", attribution="quarantined"
        )
        rec.clear()
        response = await client.get("/who", headers=full_bag())
        assert rec.only() == FULL  # a complete envelope is simply attributed


@pytest.mark.anyio
async def test_stamp_fills_defaults() -> None:
    rec = Recorder()
    defaults = {"owner_team": "platform", "workflow_id": "unknown", "feature": "unknown"}
    policy = Policy(mode="stamp", defaults=defaults)
    async with client_for(starlette_app(policy, rec)) as client:
        response = await client.get("/who")
        assert response.status_code == 200
        assert rec.only() == Envelope(
            trace_id=response.headers["x-trace-id"], **defaults, attribution="stamped"
        )
        rec.clear()
        response = await client.get("/who", headers={"x-owner-team": "search"})
        assert rec.only() == Envelope(
            trace_id=response.headers["x-trace-id"],
            owner_team="search",
            workflow_id="unknown",
            feature="unknown",
            attribution="stamped",
        )
        rec.clear()
        await client.get("/who", headers=full_bag())
        assert rec.only() == FULL  # nothing to fill: attributed as sent

    # A required field with no default is still missing: quarantined, not rejected.
    rec = Recorder()
    policy = Policy(mode="stamp", defaults={"owner_team": "platform"})
    async with client_for(starlette_app(policy, rec)) as client:
        response = await client.get("/who")
    assert response.status_code == 200
    assert rec.only() == Envelope(
        trace_id=response.headers["x-trace-id"], owner_team="platform", attribution="quarantined"
    )


# --- trace ids --------------------------------------------------------------------------------


@pytest.mark.anyio
async def test_trace_id_from_baggage_then_traceparent_else_minted() -> None:
    rec = Recorder()
    async with client_for(starlette_app(Policy(mode="quarantine"), rec)) as client:
        both = {"baggage": bag(trace_id=TRACE), "traceparent": TRACEPARENT}
        response = await client.get("/who", headers=both)
        assert response.headers["x-trace-id"] == TRACE
        assert rec.only().trace_id == TRACE
        rec.clear()

        only_parent = {"baggage": bag(owner_team="search"), "traceparent": TRACEPARENT}
        response = await client.get("/who", headers=only_parent)
        assert response.headers["x-trace-id"] == OTHER_TRACE
        assert rec.only() == Envelope(
            trace_id=OTHER_TRACE, owner_team="search", attribution="quarantined"
        )
        rec.clear()

        minted = set()
        for headers in ({}, {"traceparent": "00-" + "0" * 32 + "-b7ad6b7169203331-01"}):
            for _ in range(3):
                response = await client.get("/who", headers=headers)
                trace_id = response.headers["x-trace-id"]
                assert len(trace_id) == 32 and int(trace_id, 16) != 0
                assert trace_id == trace_id.lower()
                assert rec.only().trace_id == trace_id
                rec.clear()
                minted.add(trace_id)
        assert len(minted) == 6

    # Rejections echo the trace id too, and it is the one that arrived.
    async with client_for(starlette_app(Policy(mode="enforce"), rec)) as client:
        response = await client.get("/who", headers={"traceparent": TRACEPARENT})
        assert problem(response)["trace_id"] == OTHER_TRACE


@pytest.mark.anyio
async def test_trace_header_name_is_configurable_and_can_be_disabled() -> None:
    rec = Recorder()
    app = starlette_app(Policy(mode="quarantine"), rec, trace_header="X-Request-Trace")
    async with client_for(app) as client:
        response = await client.get("/who", headers=full_bag())
    assert response.headers["x-request-trace"] == TRACE
    assert "x-trace-id" not in response.headers

    app = starlette_app(Policy(mode="quarantine"), rec, trace_header=None)
    async with client_for(app) as client:
        response = await client.get("/who", headers=full_bag())
    assert "x-trace-id" not in response.headers


# --- first-party headers, hashing -------------------------------------------------------------


@pytest.mark.anyio
async def test_first_party_headers_are_accepted() -> None:
    rec = Recorder()
    headers = {
        "x-owner-team": "search",
        "x-workflow-id": "wf.answer/v2",
        "x-feature": "ticket-triage",
        "traceparent": TRACEPARENT,
    }
    async with client_for(starlette_app(Policy(mode="enforce"), rec)) as client:
        response = await client.get("/who", headers=headers)
    assert response.status_code == 200
    assert rec.only() == Envelope(
        trace_id=OTHER_TRACE,
        owner_team="search",
        workflow_id="wf.answer/v2",
        feature="ticket-triage",
    )


@pytest.mark.anyio
async def test_raw_tenant_and_user_headers_are_hashed_at_the_edge() -> None:
    rec = Recorder()
    policy = Policy(
        mode="enforce",
        required=(*REQUIRED, "tenant", "user"),
        edge_headers=EdgeHeaders(tenant="x-tenant-id", user="x-user-id"),
    )
    app = starlette_app(policy, rec, keys=Keys(hash_key=HASH_KEY))
    headers = {
        "baggage": bag(trace_id=TRACE, owner_team="search", workflow_id="wf", feature="chat"),
        "x-tenant-id": "acme-corp",
        "x-user-id": "alice@example.com",
    }
    async with client_for(app) as client:
        response = await client.get("/who", headers=headers)
        assert response.status_code == 200
        expected = Envelope(
            trace_id=TRACE,
            owner_team="search",
            workflow_id="wf",
            feature="chat",
            tenant=hash_identifier("acme-corp", HASH_KEY),
            user=hash_identifier("alice@example.com", HASH_KEY),
        )
        assert rec.only() == expected
        assert b"alice" not in response.content and b"acme" not in response.content
        rec.clear()
        # An id already in hashed form passes unchanged.
        response = await client.get("/who", headers={**headers, "x-tenant-id": TENANT})
        assert rec.only() == expected._replace(tenant=TENANT)


def test_raw_id_headers_without_a_hash_key_fail_the_lifespan_startup() -> None:
    policy = Policy(edge_headers=EdgeHeaders(tenant="x-tenant-id", user="x-user-id"))
    for keys in (Keys(), None):  # None: from the environment, which has no hash key here
        middleware = OwnershipMiddleware(JSONResponse({}), policy=policy, keys=keys)
        assert isinstance(middleware.configuration_error, ConfigurationError)
        assert "hash key" in str(middleware.configuration_error)

    sent: list[dict[str, Any]] = []

    async def receive() -> dict[str, Any]:
        return {"type": "lifespan.startup"}

    async def send(message: dict[str, Any]) -> None:
        sent.append(message)

    asyncio.run(middleware({"type": "lifespan"}, receive, send))
    assert [m["type"] for m in sent] == ["lifespan.startup.failed"]
    assert "OWNERSHIP_CTX_HASH_KEY" in sent[0]["message"]
    assert "\n" not in sent[0]["message"]


# --- policy: rules, resolver, trust -----------------------------------------------------------


@pytest.mark.anyio
async def test_per_route_rules() -> None:
    rec = Recorder()
    policy = Policy(mode="enforce", rules=(Rule("/public/*", required=()),))
    async with client_for(starlette_app(policy, rec)) as client:
        response = await client.get("/public/ping")
        assert response.status_code == 200
        assert rec.only() == Envelope(trace_id=response.headers["x-trace-id"])
        rec.clear()
        response = await client.get("/public/ping", headers={"x-owner-team": "search"})
        assert rec.only() == Envelope(trace_id=response.headers["x-trace-id"], owner_team="search")
        rec.clear()
        assert problem(await client.get("/who"))["missing"] == list(REQUIRED)
    assert rec.seen == []


def _api_key_resolver(inbound: ownership_ctx.Inbound) -> dict[str, str] | None:
    # The resolver reads the principal from the framework's own object (the ASGI scope).
    headers = dict(inbound.native["headers"])  # type: ignore[index]
    team = {b"key-billing": "billing", b"key-search": "search"}.get(headers.get(b"x-api-key"))
    return {"owner_team": team} if team else None


@pytest.mark.anyio
async def test_resolver_wins_over_headers_and_baggage() -> None:
    rec = Recorder()
    policy = Policy(mode="enforce", resolver=_api_key_resolver)
    async with client_for(starlette_app(policy, rec)) as client:
        spoof = {"x-owner-team": "spoofed", "x-workflow-id": "wf", "x-feature": "chat"}
        response = await client.get("/who", headers={**spoof, "x-api-key": "key-billing"})
        assert response.status_code == 200
        assert rec.only() == Envelope(
            trace_id=response.headers["x-trace-id"],
            owner_team="billing",
            workflow_id="wf",
            feature="chat",
        )
        rec.clear()
        response = await client.get("/who", headers={**full_bag(), "x-api-key": "key-billing"})
        assert rec.only() == FULL._replace(owner_team="billing")
        rec.clear()
        # No principal: the header is used as usual.
        response = await client.get("/who", headers=spoof)
        assert rec.only().owner_team == "spoofed"
        rec.clear()
        # Without a principal and without a header, enforce still rejects.
        response = await client.get("/who", headers={"x-api-key": "unknown"})
        assert problem(response)["missing"] == list(REQUIRED)


@pytest.mark.anyio
async def test_signed_trust_ignores_unsigned_input_and_accepts_signed_envelopes() -> None:
    rec = Recorder()
    keys = Keys(signing_keys=(SIGN_KEY,))
    app = starlette_app(Policy(mode="enforce", trust="signed"), rec, keys=keys)
    async with client_for(app) as client:
        # Unsigned baggage and first-party headers are ignored: nothing required arrived.
        response = await client.get("/who", headers=full_bag())
        assert problem(response)["missing"] == list(REQUIRED)
        first_party = {"x-owner-team": "search", "x-workflow-id": "wf", "x-feature": "chat"}
        response = await client.get("/who", headers=first_party)
        assert problem(response)["missing"] == list(REQUIRED)
        assert rec.seen == []

        signed: dict[str, str] = {"baggage": "sentry-env=prod"}
        assert encode(FULL, signed, keys) == ()
        response = await client.get("/who", headers={**signed, "x-owner-team": "spoofed"})
        assert response.status_code == 200
        assert response.headers["x-trace-id"] == TRACE
        assert rec.only() == FULL
        rec.clear()

        # Signed with another key, or altered after signing: refused as invalid.
        other: dict[str, str] = {}
        encode(FULL, other, Keys(signing_keys=(b"another-signing-key-0123456789",)))
        altered = {"baggage": signed["baggage"].replace("team=search", "team=billing")}
        for headers in (other, altered):
            body = problem(await client.get("/who", headers=headers))
            assert {"field": "sig", "code": "bad_signature"}.items() <= body["invalid"][0].items()
    assert rec.seen == []


@pytest.mark.anyio
async def test_signed_trust_quarantine_keeps_none_of_the_unsigned_fields() -> None:
    rec = Recorder()
    keys = Keys(signing_keys=(SIGN_KEY,))
    app = starlette_app(Policy(mode="quarantine", trust="signed"), rec, keys=keys)
    async with client_for(app) as client:
        response = await client.get("/who", headers={**full_bag(), "x-feature": "chat"})
    envelope = rec.only()
    assert envelope is not None
    assert envelope.trace_id == response.headers["x-trace-id"]
    assert envelope.trace_id != TRACE  # an unsigned envelope's trace id is not believed either
    assert envelope == Envelope(trace_id=envelope.trace_id, attribution="quarantined")


# --- lifespan, FastAPI ------------------------------------------------------------------------


def test_lifespan_passes_through() -> None:
    rec = Recorder()
    app = starlette_app(Policy(mode="enforce"), rec)
    with TestClient(app) as client:
        assert rec.seen == [("startup", None)]
        assert client.get("/who", headers=full_bag()).status_code == 200
    assert rec.seen == [("startup", None), ("handler", FULL), ("shutdown", None)]


def fastapi_app(policy: Policy, rec: Recorder) -> FastAPI:
    events: list[str] = []

    @contextlib.asynccontextmanager
    async def lifespan(app: FastAPI) -> AsyncIterator[None]:
        events.append("startup")
        yield
        events.append("shutdown")

    app = FastAPI(lifespan=lifespan)
    app.state.events = events

    @app.get("/async")
    async def async_handler(envelope: CurrentEnvelope) -> dict[str, Any]:
        rec.seen.append(("dep", envelope))
        rec.add("handler")
        return {"trace_id": envelope.trace_id if envelope else None}

    @app.get("/sync")
    def sync_handler(envelope: CurrentEnvelope) -> dict[str, Any]:
        rec.seen.append(("dep", envelope))
        rec.add("handler")
        return {"trace_id": envelope.trace_id if envelope else None}

    def team(envelope: CurrentEnvelope) -> str | None:
        return envelope.owner_team if envelope else None

    @app.get("/team")
    async def team_handler(owner: str | None = Depends(team)) -> dict[str, Any]:
        return {"team": owner}

    @app.websocket("/ws")
    async def ws(websocket: WebSocket, envelope: CurrentEnvelope) -> None:
        await websocket.accept()
        rec.seen.append(("ws_dep", envelope))
        async for text in websocket.iter_text():
            seen = rec.add(f"ws:{text}")
            await websocket.send_text(seen.trace_id if seen else "none")

    app.add_middleware(OwnershipMiddleware, policy=policy)
    return app


def test_fastapi_handlers_receive_the_envelope_through_a_dependency() -> None:
    rec = Recorder()
    app = fastapi_app(Policy(mode="enforce"), rec)
    with TestClient(app) as client:
        assert app.state.events == ["startup"]
        for path in ("/async", "/sync"):
            response = client.get(path, headers=full_bag())
            assert response.status_code == 200
            assert response.json() == {"trace_id": TRACE}
            assert rec.seen == [("dep", FULL), ("handler", FULL)]
            rec.clear()
        assert client.get("/team", headers=full_bag()).json() == {"team": "search"}
        response = client.get("/sync")
        assert response.status_code == 400
        assert response.headers["content-type"] == "application/problem+json"
        assert response.json()["missing"] == list(REQUIRED)
        assert rec.seen == []
        with client.websocket_connect("/ws", headers=full_bag()) as session:
            for text in ("a", "b"):
                session.send_text(text)
                assert session.receive_text() == TRACE
        assert rec.seen == [("ws_dep", FULL), ("ws:a", FULL), ("ws:b", FULL)]
    assert app.state.events == ["startup", "shutdown"]


@pytest.mark.anyio
async def test_fastapi_quarantine_in_process() -> None:
    rec = Recorder()
    app = fastapi_app(Policy(mode="quarantine"), rec)
    async with client_for(app) as client:
        first = await client.get("/sync", headers=full_bag())
        second = await client.get("/async")
    assert first.json() == {"trace_id": TRACE}
    minted = second.headers["x-trace-id"]
    assert minted != TRACE and second.json() == {"trace_id": minted}
    assert rec.seen == [
        ("dep", FULL),
        ("handler", FULL),
        ("dep", Envelope(trace_id=minted, attribution="quarantined")),
        ("handler", Envelope(trace_id=minted, attribution="quarantined")),
    ]


# --- the whole unit of work, and the reset after it -------------------------------------------


class Probe:
    """An ASGI app around the middleware: what is bound before and after it runs."""

    def __init__(self, app: Any) -> None:
        self.app = app
        self.outside: list[Envelope | None] = []

    async def __call__(self, scope: Any, receive: Any, send: Any) -> None:
        self.outside.append(current())
        await self.app(scope, receive, send)
        self.outside.append(current())


@pytest.mark.anyio
@pytest.mark.parametrize("mode", ["enforce", "quarantine", "stamp"])
async def test_envelope_is_bound_for_the_whole_unit_and_reset_after(
    mode: str, maybe_sink: Any
) -> None:
    asyncio.get_running_loop().set_default_executor(ContextThreadPoolExecutor())
    rec = Recorder()
    app = starlette_app(Policy(mode=mode, defaults={"owner_team": "x"}), rec)  # type: ignore[arg-type]
    probe = Probe(app)
    async with client_for(probe) as client:
        response = await client.get("/unit", headers=full_bag())
        assert response.status_code == 200
        assert response.text == "chunk0;chunk1;chunk2;"
        assert response.headers["x-trace-id"] == TRACE
        assert set(rec.labels()) == UNIT_LABELS and len(rec.seen) == len(UNIT_LABELS)
        assert rec.only() == FULL
        # ASGITransport runs the app in this very task: the binding must be undone here.
        assert current() is None
        rec.clear()

        response = await client.get("/stream-sync", headers=full_bag())
        assert rec.labels() == ["sync_chunk0", "sync_chunk1", "sync_chunk2", "bg"]
        assert rec.only() == FULL
        rec.clear()

        response = await client.get("/who-sync", headers=full_bag())
        assert rec.seen == [("handler", FULL)]
        rec.clear()

        if mode != "enforce":
            # The next request brings no envelope: it sees none of the previous one.
            response = await client.get("/unit")
            assert response.status_code == 200
            fresh = rec.only()
            assert fresh is not None and fresh.trace_id == response.headers["x-trace-id"]
            assert fresh.trace_id != TRACE
            if mode == "quarantine":
                assert fresh == Envelope(trace_id=fresh.trace_id, attribution="quarantined")
            else:
                assert fresh == Envelope(
                    trace_id=fresh.trace_id, owner_team="x", attribution="quarantined"
                )
            assert len(rec.seen) == len(UNIT_LABELS)
        else:
            assert (await client.get("/unit")).status_code == 400
            assert rec.seen == []
    assert probe.outside == [None] * len(probe.outside)
    assert current() is None


@pytest.mark.anyio
async def test_spawned_task_awaited_after_the_response_keeps_its_envelope() -> None:
    rec = Recorder()
    app = starlette_app(Policy(mode="quarantine"), rec)
    async with client_for(app) as client:
        await client.get("/detached", headers=full_bag())
        second = await client.get("/detached")
        assert current() is None
        await asyncio.gather(*app.state.detached)
    assert rec.seen == [
        ("detached", FULL),
        ("detached", Envelope(trace_id=second.headers["x-trace-id"], attribution="quarantined")),
    ]


def test_unit_of_work_through_the_test_client() -> None:
    rec = Recorder()
    app = starlette_app(Policy(mode="quarantine"), rec)
    with TestClient(app) as client:  # lifespan installs the context-carrying executor
        rec.clear()
        response = client.get("/unit", headers=full_bag())
        assert response.text == "chunk0;chunk1;chunk2;"
        assert set(rec.labels()) == UNIT_LABELS
        assert rec.only() == FULL
        rec.clear()
        response = client.get("/unit")
        fresh = rec.only()
        assert fresh == Envelope(trace_id=response.headers["x-trace-id"], attribution="quarantined")
        assert fresh.trace_id != TRACE
    assert current() is None


@pytest.mark.anyio
async def test_handler_failure_still_resets(maybe_sink: Any) -> None:
    rec = Recorder()
    probe = Probe(starlette_app(Policy(mode="quarantine"), rec))
    transport = httpx.ASGITransport(app=probe, raise_app_exceptions=False)
    async with httpx.AsyncClient(transport=transport, base_url="http://edge.test") as client:
        response = await client.get("/boom", headers=full_bag())
        assert response.status_code == 500
        assert current() is None
        response = await client.get("/who")
    assert rec.seen == [
        ("handler", FULL),
        ("handler", Envelope(trace_id=response.headers["x-trace-id"], attribution="quarantined")),
    ]
    assert probe.outside[-1] is None


@pytest.mark.anyio
async def test_concurrent_in_process_requests_do_not_cross(maybe_sink: Any) -> None:
    asyncio.get_running_loop().set_default_executor(ContextThreadPoolExecutor())
    rec = Recorder()
    app = starlette_app(Policy(mode="quarantine"), rec)
    envelopes = [FULL._replace(trace_id=f"{i + 1:032x}", owner_team=f"team-{i}") for i in range(40)]

    async with client_for(app) as client:
        responses = await asyncio.gather(
            *(client.get("/unit", headers=full_bag(envelope)) for envelope in envelopes)
        )
    assert [r.headers["x-trace-id"] for r in responses] == [e.trace_id for e in envelopes]
    by_trace: dict[str, set[Envelope | None]] = {}
    for _, envelope in rec.seen:
        assert envelope is not None
        by_trace.setdefault(envelope.trace_id, set()).add(envelope)
    assert by_trace == {e.trace_id: {e} for e in envelopes}
    assert len(rec.seen) == len(envelopes) * len(UNIT_LABELS)


# --- WebSocket --------------------------------------------------------------------------------


def test_websocket_sessions_see_their_envelope_in_every_message() -> None:
    rec = Recorder()
    app = starlette_app(Policy(mode="quarantine"), rec)
    with TestClient(app) as client:
        rec.clear()
        with client.websocket_connect("/ws", headers=full_bag()) as session:
            for text in ("one", "two", "three"):
                session.send_text(text)
                assert session.receive_text() == TRACE
        assert rec.seen == [(label, FULL) for label in ("ws:one", "ws:two", "ws:three")] + [
            ("ws:disconnect", FULL)
        ]
        rec.clear()
        with client.websocket_connect("/ws") as session:
            session.send_text("one")
            minted = session.receive_text()
        assert minted != TRACE
        assert rec.only() == Envelope(trace_id=minted, attribution="quarantined")


def test_websocket_accept_echoes_the_trace_id() -> None:
    rec = Recorder()
    app = starlette_app(Policy(mode="enforce"), rec)
    with TestClient(app) as client, client.websocket_connect("/ws", headers=full_bag()) as session:
        assert (b"x-trace-id", TRACE.encode()) in (session.extra_headers or [])


def test_rejected_websocket_handshake_gets_the_denial_response() -> None:
    rec = Recorder()
    app = starlette_app(Policy(mode="enforce"), rec)
    with TestClient(app) as client:
        with (
            pytest.raises(WebSocketDenialResponse) as denied,
            client.websocket_connect("/ws", headers={"baggage": bag(trace_id=TRACE)}),
        ):
            pass
        response = denied.value
        assert response.status_code == 400
        assert response.headers["content-type"] == "application/problem+json"
        assert response.headers["x-trace-id"] == TRACE
        body = response.json()
        assert body["missing"] == list(REQUIRED) and body["trace_id"] == TRACE
    assert rec.labels() == ["startup", "shutdown"]


@pytest.mark.anyio
async def test_rejected_websocket_without_denial_extension_is_closed() -> None:
    rec = Recorder()
    app = starlette_app(Policy(mode="enforce"), rec)
    sent: list[dict[str, Any]] = []
    incoming = [{"type": "websocket.connect"}]

    async def receive() -> dict[str, Any]:
        return incoming.pop(0)

    async def send(message: dict[str, Any]) -> None:
        sent.append(message)

    scope = {
        "type": "websocket",
        "asgi": {"version": "3.0"},
        "path": "/ws",
        "raw_path": b"/ws",
        "root_path": "",
        "query_string": b"",
        "headers": [],
        "scheme": "ws",
        "server": ("edge.test", 80),
        "client": ("127.0.0.1", 1234),
        "subprotocols": [],
        "state": {},
    }
    await app(scope, receive, send)
    assert sent == [{"type": "websocket.close", "code": 1008, "reason": "ownership rejected"}]
    assert rec.seen == [] and current() is None


def test_websocket_denial_sent_by_the_app_echoes_the_trace_id() -> None:
    rec = Recorder()
    app = starlette_app(Policy(mode="enforce"), rec)
    with TestClient(app) as client:
        rec.clear()
        with (
            pytest.raises(WebSocketDenialResponse) as denied,
            client.websocket_connect("/ws-denied", headers=full_bag()),
        ):
            pass
        assert rec.seen == [("ws_denied", FULL)]
    assert denied.value.status_code == 401
    assert denied.value.headers.get_list("x-trace-id") == [TRACE]


@pytest.mark.anyio
async def test_repeated_headers() -> None:
    rec = Recorder()
    async with client_for(starlette_app(Policy(mode="quarantine"), rec)) as client:
        # Two baggage headers merge, as HTTP defines for repeated headers.
        split = [
            ("baggage", bag(trace_id=TRACE, owner_team="search")),
            ("baggage", "sentry-env=prod,ownership.workflow_id=wf,ownership.feature=f"),
        ]
        response = await client.get("/who", headers=split)
        assert rec.only() == Envelope(
            trace_id=TRACE, owner_team="search", workflow_id="wf", feature="f"
        )
        rec.clear()
        # A repeated first-party header is one invalid value, never either of them.
        twice = [("x-owner-team", "search"), ("x-owner-team", "billing")]
        response = await client.get("/who", headers=twice)
        assert rec.only() == Envelope(
            trace_id=response.headers["x-trace-id"], attribution="quarantined"
        )


@pytest.mark.anyio
async def test_with_an_event_sink_responses_and_events_carry_the_trace_id(
    event_sink: Any,
) -> None:
    rec = Recorder()
    async with client_for(starlette_app(Policy(mode="enforce"), rec)) as client:
        rejected = await client.get("/who", headers={"traceparent": TRACEPARENT})
        admitted = await client.get("/who", headers=full_bag())
    assert rejected.headers.get_list("x-trace-id") == [OTHER_TRACE]
    assert problem(rejected)["trace_id"] == OTHER_TRACE
    assert admitted.headers.get_list("x-trace-id") == [TRACE]
    requests = [e for e in event_sink.events if e["kind"] == "request"]
    assert [(e["trace_id"], e["status"], e["outcome"]) for e in requests] == [
        (OTHER_TRACE, 400, "rejected"),
        (TRACE, 200, "attributed"),
    ]
    assert rec.seen == [("handler", FULL)]
