"""Acceptance: under concurrency, every part of every unit of work sees exactly its own envelope.

Hundreds of concurrent requests with random envelopes (valid, absent, malformed), in quarantine
mode, through a real uvicorn server on loopback and through the in-process transport; plus
concurrent WebSocket sessions (the ``websockets`` client against uvicorn, a direct ASGI driver
in-process). Every handler, streamed chunk, background task, thread-pool call, spawned task,
thread and WebSocket message records what `current()` it observed, keyed by the request's own
id; each must have observed exactly its own envelope, and a request that follows the burst
without an envelope must observe none of the burst's.
"""

from __future__ import annotations

import asyncio
import contextlib
import dataclasses
import itertools
import json
import random
import socket
import threading
import time
from collections.abc import AsyncIterator, Iterable, Iterator
from typing import Any

import httpx
import pytest
import uvicorn
from hypothesis import HealthCheck, Phase, given, settings
from hypothesis import strategies as st
from starlette.applications import Starlette
from starlette.background import BackgroundTasks
from starlette.concurrency import run_in_threadpool
from starlette.requests import Request
from starlette.responses import Response, StreamingResponse
from starlette.routing import Route, WebSocketRoute
from starlette.websockets import WebSocket, WebSocketDisconnect
from websockets.asyncio.client import connect as ws_connect
from websockets.exceptions import InvalidStatus

from ownership_ctx import (
    ContextThreadPoolExecutor,
    EdgeHeaders,
    Envelope,
    Keys,
    Policy,
    Rule,
    current,
    events,
    hash_identifier,
    propagate,
)
from ownership_ctx.asgi import OwnershipMiddleware
from ownership_ctx.envelope import ATTRIBUTIONS
from tests.support.sinks import ListSink, collecting_events

HASH_KEY = b"concurrency-hash-key-0123456789"
REQUIRED = ("owner_team", "workflow_id", "feature")
POLICY = Policy(
    mode="quarantine",
    extra_keys=("cost_center",),
    edge_headers=EdgeHeaders(tenant="x-tenant-id", user="x-user-id"),
    rules=(Rule("/strict/*", mode="enforce"),),
)
N_REQUESTS = 300
N_SPECS = 100  # distinct random ownerships; each is sent by three requests with their own ids
N_SESSIONS = 50
N_MESSAGES = 4
HTTP_LABELS = frozenset(
    {
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
)
WS_LABELS = frozenset(
    {"ws_accept", "ws_end"}
    | {f"ws{i}" for i in range(N_MESSAGES)}
    | {f"ws{i}:threadpool" for i in range(N_MESSAGES)}
)
_rids = itertools.count(1)  # request ids, unique in the whole test session


@pytest.fixture
def anyio_backend() -> str:
    return "asyncio"


# --- the application ------------------------------------------------------------------------


class Observed:
    """What each request observed, by request id. Appends come from many threads."""

    def __init__(self) -> None:
        self.by_rid: dict[int, list[tuple[str, Envelope | None]]] = {}
        self._lock = threading.Lock()

    def add(self, rid: int, label: str) -> Envelope | None:
        envelope = current()
        with self._lock:
            self.by_rid.setdefault(rid, []).append((label, envelope))
        return envelope

    def complete(self, rids: dict[int, frozenset[str]]) -> bool:
        with self._lock:
            return all(len(self.by_rid.get(rid, ())) >= len(labels) for rid, labels in rids.items())

    async def wait_for(self, rids: dict[int, frozenset[str]], timeout: float = 20.0) -> None:
        # Background tasks and WebSocket endings may finish just after the client is answered.
        deadline = time.monotonic() + timeout
        while not self.complete(rids) and time.monotonic() < deadline:
            await asyncio.sleep(0.01)


def make_app(observed: Observed) -> Starlette:
    async def unit(request: Request) -> Response:
        rid = request.path_params["rid"]
        add = observed.add
        add(rid, "handler")
        release = asyncio.Event()

        async def spawned() -> None:
            await release.wait()  # after the handler returned and the body was sent
            add(rid, "spawned")

        task = asyncio.create_task(spawned())
        await asyncio.sleep(0)  # let the other requests interleave
        await run_in_threadpool(add, rid, "run_in_threadpool")
        await asyncio.to_thread(add, rid, "to_thread")
        await asyncio.get_running_loop().run_in_executor(None, add, rid, "run_in_executor")
        thread = threading.Thread(target=propagate(add), args=(rid, "thread"))
        thread.start()
        await asyncio.to_thread(thread.join)

        async def body() -> AsyncIterator[bytes]:
            for i in range(3):
                await asyncio.sleep(0)
                add(rid, f"chunk{i}")
                yield f"{rid}:{i};".encode()

        async def bg_async() -> None:
            add(rid, "bg_async")
            release.set()
            await task

        background = BackgroundTasks()
        background.add_task(bg_async)
        background.add_task(add, rid, "bg_sync")
        return StreamingResponse(body(), background=background)

    async def session(websocket: WebSocket) -> None:
        rid = websocket.path_params["rid"]
        add = observed.add
        await websocket.accept()
        add(rid, "ws_accept")
        try:
            while True:
                text = await websocket.receive_text()
                envelope = add(rid, f"ws{text}")
                await asyncio.sleep(0)
                await run_in_threadpool(add, rid, f"ws{text}:threadpool")
                await websocket.send_text(envelope.trace_id if envelope else "none")
        except WebSocketDisconnect:
            add(rid, "ws_end")

    @contextlib.asynccontextmanager
    async def lifespan(app: Starlette) -> AsyncIterator[None]:
        asyncio.get_running_loop().set_default_executor(ContextThreadPoolExecutor(max_workers=32))
        yield

    app = Starlette(
        routes=[
            Route("/r/{rid:int}", unit),
            WebSocketRoute("/ws/{rid:int}", session),
            Route("/strict/r/{rid:int}", unit),
            WebSocketRoute("/strict/ws/{rid:int}", session),
        ],
        lifespan=lifespan,
    )
    app.add_middleware(OwnershipMiddleware, policy=POLICY, keys=Keys(hash_key=HASH_KEY))
    return app


# --- random envelopes -----------------------------------------------------------------------

TOKEN_ALPHABET = "abcdefghijklmnopqrstuvwxyzABCDEFGHIJKLMNOPQRSTUVWXYZ0123456789._:/-"
FOREIGN = ("sentry-environment=prod", "sentry-trace_id=abc123", "otel.k=v%20w", "k2=v2;prop=1")
FIELD_CORRUPTIONS = ("chars", "long", "badpct", "dup", "noeq")
WHOLE_CORRUPTIONS = ("version", "oversized")
LIMITS = {"owner_team": 64, "workflow_id": 128, "feature": 64}


@dataclasses.dataclass(frozen=True)
class Spec:
    """A random request, short of its request id (which makes its trace id unique)."""

    kind: str  # "valid" | "absent" | "malformed"
    fields: dict[str, str]  # valid values, as they should end up in the envelope
    raw_ids: dict[str, str]  # tenant / user sent raw in first-party headers (hashed at the edge)
    via_headers: frozenset[str]  # fields sent as first-party headers instead of baggage
    extras: dict[str, str]
    undeclared: bool  # an undeclared extra rides along (ignored, not invalid)
    wire_attribution: str
    trace_mode: str  # "baggage" | "traceparent" | "both" | "none"
    trace_corrupt: bool
    corruptions: dict[str, str]  # field -> how it is broken (malformed only)
    whole: str | None  # the whole envelope is broken (malformed only)
    foreign: tuple[str, ...]
    separator: str
    order_seed: int


tokens = st.text(TOKEN_ALPHABET, min_size=1, max_size=10)
hashed = st.binary(min_size=16, max_size=16).map(lambda b: "h1:" + b.hex())


@st.composite
def specs(draw: st.DrawFn) -> Spec:
    kind = draw(st.sampled_from(["valid", "valid", "absent", "malformed", "malformed"]))
    fields: dict[str, str] = {}
    raw_ids: dict[str, str] = {}
    via_headers: set[str] = set()
    extras: dict[str, str] = {}
    if kind != "absent":
        for name in ("owner_team", "workflow_id", "feature"):
            if draw(st.integers(0, 9)) < 8:  # mostly present; missing ones quarantine
                fields[name] = draw(tokens)
                if draw(st.booleans()) and draw(st.booleans()):
                    via_headers.add(name)
        for name in ("tenant", "user"):
            how = draw(st.sampled_from(["none", "hashed", "raw"]))
            if how == "hashed":
                fields[name] = draw(hashed)
            elif how == "raw":
                raw_ids[name] = draw(tokens)
                via_headers.add(name)
        if draw(st.booleans()):
            extras["cost_center"] = draw(tokens)
    corruptions: dict[str, str] = {}
    whole = None
    if kind == "malformed":
        if draw(st.integers(0, 5)) == 0:
            whole = draw(st.sampled_from(WHOLE_CORRUPTIONS))
        else:
            names = sorted(fields.keys() | raw_ids.keys()) or ["owner_team"]
            for name in draw(st.lists(st.sampled_from(names), min_size=1, max_size=3)):
                corruptions[name] = draw(st.sampled_from(FIELD_CORRUPTIONS))
    return Spec(
        kind=kind,
        fields=fields,
        raw_ids=raw_ids,
        via_headers=frozenset(via_headers),
        extras=extras,
        undeclared=draw(st.booleans()) and draw(st.booleans()),
        wire_attribution=draw(st.sampled_from(["attributed"] * 5 + list(ATTRIBUTIONS[1:]))),
        trace_mode=draw(st.sampled_from(["baggage", "baggage", "traceparent", "both", "none"])),
        trace_corrupt=kind == "malformed" and draw(st.integers(0, 3)) == 0,
        corruptions=corruptions,
        whole=whole,
        foreign=tuple(draw(st.lists(st.sampled_from(FOREIGN), max_size=2, unique=True))),
        separator=draw(st.sampled_from([",", ",", ", "])),
        order_seed=draw(st.integers(0, 2**16)),
    )


def _worse(a: str, b: str) -> str:
    return a if ATTRIBUTIONS.index(a) >= ATTRIBUTIONS.index(b) else b


def _broken(name: str, how: str, value: str) -> list[str]:
    """Baggage entries that deliver ``name`` broken in the way ``how``."""
    key = f"ownership.{name}"
    if how == "chars":
        return [f"{key}={value}%20%C3%BC"]  # decodes to a space and a non-ASCII letter
    if how == "long":
        return [f"{key}={(value * 200)[: LIMITS.get(name, 40) + 1]}"]
    if how == "badpct":
        return [f"{key}={value}%FF%FE"]  # invalid UTF-8 once decoded
    if how == "dup":
        return [f"{key}={value}", f"{key}={value}x"]
    return [key]  # "noeq": an entry without '='


@dataclasses.dataclass
class Sent:
    rid: int
    headers: dict[str, str]
    expected: Envelope  # its trace id is a placeholder when `trace_known` is false
    trace_known: bool


PLACEHOLDER = "f" * 32


def realize(spec: Spec, rid: int) -> Sent:
    """The headers a client sends for ``spec``, and the envelope the app must observe."""
    order = random.Random(spec.order_seed)
    trace_id = f"{rid:08x}{spec.order_seed:06x}" + "0" * 17 + "1"
    parent_trace = f"{rid:08x}" + "e" * 23 + "1"  # a different id: only used when baggage has none
    headers: dict[str, str] = {}
    entries: list[str] = []
    expected_fields: dict[str, str] = {}
    broken = spec.kind == "malformed"

    if spec.kind != "absent":
        entries.append("ownership.v=1" if spec.whole != "version" else "ownership.v=7")
        if spec.trace_mode in ("baggage", "both"):
            value = "Z" + trace_id[1:] if spec.trace_corrupt else trace_id
            entries.append(f"ownership.trace_id={value}")
        if spec.wire_attribution != "attributed":
            entries.append(f"ownership.attribution={spec.wire_attribution}")
        for name, value in spec.fields.items():
            how = spec.corruptions.get(name)
            if name in spec.via_headers:
                header = "x-" + name.replace("_", "-")
                headers[header] = "bad value!" if how else value
            elif how:
                entries.extend(_broken(name, how, value))
            else:
                entries.append(f"ownership.{name}={value}")
            if how is None:
                expected_fields[name] = value
        for name, raw in spec.raw_ids.items():
            how = spec.corruptions.get(name)
            headers[f"x-{name}-id"] = "r" * 300 if how else raw  # too long to be an id
            if how is None:
                expected_fields[name] = hash_identifier(raw, HASH_KEY)
        for name, how in spec.corruptions.items():
            if name not in spec.fields and name not in spec.raw_ids:
                entries.extend(_broken(name, how, "v"))
        for key, value in spec.extras.items():
            entries.append(f"ownership.x.{key}={value}")
        if spec.undeclared:
            entries.append("ownership.x.secret_thing=zzz")
        if spec.whole == "oversized":
            entries.append("pad=" + "p" * 8300)
    entries.extend(spec.foreign)
    order.shuffle(entries)
    if entries:
        headers["baggage"] = spec.separator.join(entries)
    if spec.trace_mode in ("traceparent", "both"):
        headers["traceparent"] = f"00-{parent_trace}-b7ad6b7169203331-01"

    # What the edge must make of it.
    extras = dict(spec.extras)
    attribution = spec.wire_attribution
    if spec.whole is not None or spec.kind == "absent":
        # Nothing of the baggage is usable; first-party headers still are.
        expected_fields = {k: v for k, v in expected_fields.items() if k in spec.via_headers}
        extras = {}
        attribution = "attributed"
    missing = any(name not in expected_fields for name in REQUIRED)
    attribution = _worse(attribution, "quarantined" if missing or broken else "attributed")
    baggage_trace = (
        spec.kind != "absent"
        and spec.whole is None
        and spec.trace_mode in ("baggage", "both")
        and not spec.trace_corrupt
    )
    if baggage_trace:
        known: str | None = trace_id
    elif spec.trace_mode in ("traceparent", "both"):
        known = parent_trace
    else:
        known = None
    expected = Envelope(
        trace_id=known or PLACEHOLDER,
        **expected_fields,
        extras=extras,
        attribution=attribution,  # type: ignore[arg-type]
    )
    return Sent(rid, headers, expected, known is not None)


def make_requests(spec_list: list[Spec], n: int) -> list[Sent]:
    return [realize(spec_list[i % len(spec_list)], next(_rids)) for i in range(n)]


def make_sessions(spec_list: list[Spec], n: int) -> list[Sent]:
    # A WebSocket handshake cannot carry a header line over 8 KiB (the `websockets` server
    # answers 431 before the application is called), so oversized baggage stays on HTTP.
    return make_requests([s for s in spec_list if s.whole != "oversized"], n)


def check(
    observed: Observed,
    requests: list[Sent],
    traces: dict[int, str],
    labels: frozenset[str],
) -> None:
    """Each request observed exactly its own envelope at every labelled point, nothing else."""
    for request in requests:
        seen = observed.by_rid.get(request.rid, [])
        assert sorted(label for label, _ in seen) == sorted(labels), (request, seen)
        trace_id = traces[request.rid]
        expected = request.expected
        if request.trace_known:
            assert trace_id == expected.trace_id, request
        else:
            expected = expected._replace(trace_id=trace_id)
        for label, envelope in seen:
            assert envelope == expected, (label, request, envelope)
    # Minted trace ids are unique: nobody was handed another request's envelope.
    assert len(set(traces.values())) == len(traces)


# --- drivers --------------------------------------------------------------------------------


async def http_burst(client: httpx.AsyncClient, requests: list[Sent]) -> dict[int, str]:
    async def one(request: Sent) -> tuple[int, str]:
        response = await client.get(f"/r/{request.rid}", headers=request.headers)
        assert response.status_code == 200, response.text
        assert response.text == "".join(f"{request.rid}:{i};" for i in range(3))
        return request.rid, response.headers["x-trace-id"]

    return dict(await asyncio.gather(*(one(r) for r in requests)))


async def in_process_session(app: Any, request: Sent) -> tuple[int, str]:
    """One WebSocket session driven straight through the ASGI interface."""
    inbox: asyncio.Queue[dict[str, Any]] = asyncio.Queue()
    outbox: asyncio.Queue[dict[str, Any]] = asyncio.Queue()
    path = f"/ws/{request.rid}"
    scope = {
        "type": "websocket",
        "asgi": {"version": "3.0", "spec_version": "2.4"},
        "http_version": "1.1",
        "scheme": "ws",
        "server": ("127.0.0.1", 80),
        "client": ("127.0.0.1", 50000),
        "root_path": "",
        "path": path,
        "raw_path": path.encode(),
        "query_string": b"",
        "headers": [(k.encode("latin-1"), v.encode("latin-1")) for k, v in request.headers.items()],
        "subprotocols": [],
        "extensions": {"websocket.http.response": {}},
        "state": {},
    }
    await inbox.put({"type": "websocket.connect"})
    runner = asyncio.create_task(app(scope, inbox.get, outbox.put))
    accept = await outbox.get()
    assert accept["type"] == "websocket.accept", accept
    trace_id = dict(accept["headers"])[b"x-trace-id"].decode()
    for i in range(N_MESSAGES):
        await inbox.put({"type": "websocket.receive", "text": str(i)})
        reply = await outbox.get()
        assert reply == {"type": "websocket.send", "text": trace_id}, reply
    await inbox.put({"type": "websocket.disconnect", "code": 1000})
    await runner
    return request.rid, trace_id


async def network_session(base: str, request: Sent) -> tuple[int, str]:
    """One WebSocket session with the `websockets` client, over loopback."""
    async with ws_connect(f"{base}/ws/{request.rid}", additional_headers=request.headers) as ws:
        assert ws.response is not None
        trace_id = ws.response.headers["x-trace-id"]
        for i in range(N_MESSAGES):
            await ws.send(str(i))
            assert await ws.recv() == trace_id
    return request.rid, trace_id


async def after_the_burst(
    client: httpx.AsyncClient, observed: Observed, previous: dict[int, str]
) -> None:
    """A request without an envelope observes a fresh quarantined one, nobody else's.

    Sent from this very task (in-process, ASGITransport runs the app in the caller's task),
    right after one with an envelope: whatever the middleware bound must be undone here.
    """
    full = Envelope(
        trace_id=f"{next(_rids):08x}" + "a" * 24,
        owner_team="t",
        workflow_id="w",
        feature="f",
        tenant="h1:" + "0" * 32,
    )
    baggage = ",".join(f"ownership.{k}={v}" for k, v in full.as_dict().items())
    with_one = Sent(next(_rids), {"baggage": baggage}, full, True)
    without = Sent(next(_rids), {}, Envelope(PLACEHOLDER, attribution="quarantined"), False)
    traces = {}
    for request in (with_one, without):
        response = await client.get(f"/r/{request.rid}", headers=request.headers)
        assert response.status_code == 200
        assert current() is None
        traces[request.rid] = response.headers["x-trace-id"]
    await observed.wait_for({with_one.rid: HTTP_LABELS, without.rid: HTTP_LABELS})
    check(observed, [with_one, without], traces, HTTP_LABELS)
    assert traces[without.rid] not in {*previous.values(), full.trace_id}


async def wait_for_request_events(
    sink: ListSink, trace_ids: Iterable[str], timeout: float = 20.0
) -> None:
    # The middleware records a request after the app has returned (background tasks included):
    # on a server thread that can be just after everything the handlers observed.
    wanted = set(trace_ids)
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if wanted <= {e["trace_id"] for e in list(sink.events) if e["kind"] == "request"}:
            return
        await asyncio.sleep(0.01)


def check_events(sink: ListSink, traces: dict[int, str], ws_traces: dict[int, str]) -> None:
    """One request event per unit, with the trace id its client was given; routes are the
    templates (no per-request ids in the store)."""
    by_trace = {e["trace_id"]: e for e in sink.events if e["kind"] == "request"}
    for trace_id in traces.values():
        event = by_trace[trace_id]
        assert (event["route"], event["status"]) == ("/r/{rid:int}", 200)
    for trace_id in ws_traces.values():
        assert by_trace[trace_id]["route"].startswith("/ws/{")


SETTINGS = settings(
    max_examples=2,
    deadline=None,
    derandomize=False,
    database=None,
    phases=(Phase.explicit, Phase.generate),  # no shrinking: a failure prints its request
    suppress_health_check=list(HealthCheck),
)
SPEC_LISTS = st.lists(specs(), min_size=N_SPECS, max_size=N_SPECS)


# --- in-process -----------------------------------------------------------------------------


@pytest.mark.anyio
@SETTINGS
@given(spec_list=SPEC_LISTS)
async def test_in_process_burst(anyio_backend: str, spec_list: list[Spec]) -> None:
    observed = Observed()
    app = make_app(observed)
    asyncio.get_running_loop().set_default_executor(ContextThreadPoolExecutor(max_workers=32))
    requests = make_requests(spec_list, N_REQUESTS)
    sessions = make_sessions(spec_list, N_SESSIONS)
    transport = httpx.ASGITransport(app=app)
    async with httpx.AsyncClient(transport=transport, base_url="http://edge.test") as client:
        with collecting_events() as sink:
            traces, ws_traces = await asyncio.gather(
                http_burst(client, requests),
                asyncio.gather(*(in_process_session(app, r) for r in sessions)),
            )
            await observed.wait_for({r.rid: HTTP_LABELS for r in requests})
        check_events(sink, traces, dict(ws_traces))
        assert current() is None
        await observed.wait_for({r.rid: HTTP_LABELS for r in requests})
        check(observed, requests, traces, HTTP_LABELS)
        await observed.wait_for({r.rid: WS_LABELS for r in sessions})
        check(observed, sessions, dict(ws_traces), WS_LABELS)
        await after_the_burst(client, observed, {**traces, **dict(ws_traces)})
    assert current() is None


# --- a real server on loopback --------------------------------------------------------------


@dataclasses.dataclass
class Server:
    http: str
    ws: str
    observed: Observed
    loop: str


@pytest.fixture(scope="module", params=["uvloop", "asyncio"])
def server(request: pytest.FixtureRequest) -> Iterator[Server]:
    observed = Observed()
    sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    sock.bind(("127.0.0.1", 0))
    port = sock.getsockname()[1]
    config = uvicorn.Config(
        make_app(observed),
        loop=request.param,
        lifespan="on",
        log_level="warning",
        backlog=2048,
        timeout_keep_alive=30,
    )
    server = uvicorn.Server(config)
    thread = threading.Thread(target=server.run, kwargs={"sockets": [sock]}, daemon=True)
    thread.start()
    deadline = time.monotonic() + 10
    while not server.started and thread.is_alive() and time.monotonic() < deadline:
        time.sleep(0.01)
    assert server.started, "uvicorn did not start"
    try:
        yield Server(f"http://127.0.0.1:{port}", f"ws://127.0.0.1:{port}", observed, request.param)
    finally:
        server.should_exit = True
        thread.join(timeout=10)
        sock.close()
        assert not thread.is_alive(), "uvicorn did not shut down"


@pytest.mark.anyio
@SETTINGS
@given(spec_list=SPEC_LISTS)
async def test_uvicorn_burst(anyio_backend: str, server: Server, spec_list: list[Spec]) -> None:
    observed = server.observed
    requests = make_requests(spec_list, N_REQUESTS)
    sessions = make_sessions(spec_list, N_SESSIONS)
    limits = httpx.Limits(max_connections=100, max_keepalive_connections=100)
    async with httpx.AsyncClient(base_url=server.http, limits=limits, timeout=30) as client:
        with collecting_events() as sink:  # on one server: the recording path under real load too
            if server.loop != "asyncio":
                events.set_sink(None)
            traces, ws_traces = await asyncio.gather(
                http_burst(client, requests),
                asyncio.gather(*(network_session(server.ws, r) for r in sessions)),
            )
            await observed.wait_for({r.rid: HTTP_LABELS for r in requests})
            await observed.wait_for({r.rid: WS_LABELS for r in sessions})
            if server.loop == "asyncio":
                await wait_for_request_events(sink, [*traces.values(), *(t for _, t in ws_traces)])
        if server.loop == "asyncio":
            check_events(sink, traces, dict(ws_traces))
        await observed.wait_for({r.rid: HTTP_LABELS for r in requests})
        check(observed, requests, traces, HTTP_LABELS)
        await observed.wait_for({r.rid: WS_LABELS for r in sessions})
        check(observed, sessions, dict(ws_traces), WS_LABELS)
        # The same keep-alive connections now carry requests without an envelope.
        await after_the_burst(client, observed, {**traces, **dict(ws_traces)})
    late = Sent(next(_rids), {}, Envelope(PLACEHOLDER, attribution="quarantined"), False)
    _, trace_id = await network_session(server.ws, late)
    await observed.wait_for({late.rid: WS_LABELS})
    check(observed, [late], {late.rid: trace_id}, WS_LABELS)
    assert trace_id not in set(traces.values()) | {t for _, t in ws_traces}


@pytest.mark.anyio
async def test_uvicorn_enforce_rejections(anyio_backend: str, server: Server) -> None:
    """Over the network, enforce answers 400 problem+json, on HTTP and on the WS handshake."""
    async with httpx.AsyncClient(base_url=server.http, timeout=30) as client:
        response = await client.get("/strict/r/1", headers={"x-owner-team": "search"})
    assert response.status_code == 400
    assert response.headers["content-type"] == "application/problem+json"
    body = response.json()
    assert body["missing"] == ["workflow_id", "feature"]
    assert body["trace_id"] == response.headers["x-trace-id"]

    refused_rid = next(_rids)
    nobody = Envelope(PLACEHOLDER)
    with pytest.raises(InvalidStatus) as refused:
        await network_session(server.ws + "/strict", Sent(refused_rid, {}, nobody, False))
    denial = refused.value.response
    assert denial.status_code == 400
    assert denial.headers["content-type"] == "application/problem+json"
    body = json.loads(denial.body)
    assert body["missing"] == list(REQUIRED)
    assert body["trace_id"] == denial.headers["x-trace-id"]

    # An envelope that satisfies the rule gets through, and is the one observed.
    full = Envelope(
        trace_id=f"{next(_rids):08x}" + "b" * 24, owner_team="o", workflow_id="w", feature="f"
    )
    baggage = ",".join(f"ownership.{k}={v}" for k, v in full.as_dict().items())
    sent = Sent(next(_rids), {"baggage": baggage}, full, True)
    _, trace_id = await network_session(server.ws + "/strict", sent)
    await server.observed.wait_for({sent.rid: WS_LABELS})
    check(server.observed, [sent], {sent.rid: trace_id}, WS_LABELS)
    assert refused_rid not in server.observed.by_rid  # the application never ran
