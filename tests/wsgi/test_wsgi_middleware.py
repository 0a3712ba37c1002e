"""The WSGI edge middleware with Flask, a plain WSGI callable, and a real threaded server.

Same semantics as the ASGI middleware: enforce / quarantine / stamp with problem+json bodies,
trace ids, first-party headers and hashing, rules, resolver, signed trust; the exact envelope
is bound in the view, in streamed bodies (with and without ``stream_with_context``) and while
the response is closed, and never outside the request -- also under ~200 concurrent requests
through ``werkzeug.serving`` with keep-alive connections.
"""

from __future__ import annotations

import json
import random
import threading
from collections.abc import Iterable, Iterator
from concurrent.futures import ThreadPoolExecutor
from typing import Any

import pytest
import requests
from flask import Flask, Response, jsonify, stream_with_context
from werkzeug.serving import make_server
from werkzeug.test import Client, EnvironBuilder

from ownership_ctx import (
    ConfigurationError,
    ContextThreadPoolExecutor,
    EdgeHeaders,
    Envelope,
    Inbound,
    Keys,
    Policy,
    Rule,
    current,
    hash_identifier,
    propagate,
)
from ownership_ctx.codec import encode
from ownership_ctx.wsgi import OwnershipWSGIMiddleware

HASH_KEY = b"wsgi-test-hash-key-0123456789"
SIGN_KEY = b"wsgi-test-signing-key-0123456789"
TRACE = "4bf92f3577b34da6a3ce929d0e0e4736"
OTHER_TRACE = "0af7651916cd43dd8448eb211c80319c"
TRACEPARENT = f"00-{OTHER_TRACE}-b7ad6b7169203331-01"
TENANT = "h1:" + "ab" * 16
REQUIRED = ("owner_team", "workflow_id", "feature")
PROBLEM_FIELDS = {"type", "title", "status", "detail", "missing", "invalid", "trace_id"}
FULL = Envelope(
    trace_id=TRACE, owner_team="search", workflow_id="wf.answer/v2", feature="triage", tenant=TENANT
)


pytestmark = pytest.mark.usefixtures("no_key_env")


def bag(**fields: str) -> str:
    return ",".join(["ownership.v=1", *(f"ownership.{k}={v}" for k, v in fields.items())])


def full_bag(envelope: Envelope = FULL) -> dict[str, str]:
    fields = {k: v for k, v in envelope.as_dict().items() if k != "attribution"}
    if envelope.attribution != "attributed":
        fields["attribution"] = envelope.attribution
    return {"baggage": bag(**fields)}


class Recorder:
    def __init__(self) -> None:
        self.seen: list[tuple[str, Envelope | None]] = []
        self._lock = threading.Lock()

    def add(self, label: str) -> Envelope | None:
        envelope = current()
        with self._lock:
            self.seen.append((label, envelope))
        return envelope

    def labels(self) -> list[str]:
        return [label for label, _ in self.seen]

    def only(self) -> Envelope | None:
        envelopes = {envelope for _, envelope in self.seen}
        assert len(envelopes) == 1, self.seen
        return envelopes.pop()

    def clear(self) -> None:
        self.seen.clear()


class Probe:
    """A WSGI app around the middleware: what is bound outside it, before, during, after."""

    def __init__(self, app: Any) -> None:
        self.app = app
        self.outside: list[Envelope | None] = []
        self.threads: set[int] = set()

    def __call__(self, environ: dict[str, Any], start_response: Any) -> Iterable[bytes]:
        self.threads.add(threading.get_ident())
        self.outside.append(current())
        result = self.app(environ, start_response)
        self.outside.append(current())
        return result


def flask_app(policy: Policy, rec: Recorder, keys: Keys | None = None, **kw: Any) -> Flask:
    app = Flask(__name__)
    pool = ContextThreadPoolExecutor(max_workers=4)

    @app.get("/who")
    @app.get("/public/ping")
    def who() -> Any:
        envelope = rec.add("view")
        return jsonify(envelope.as_dict() if envelope else None)

    @app.get("/unit")
    def unit() -> Any:
        rec.add("view")
        pool.submit(rec.add, "pool").result()
        thread = threading.Thread(target=propagate(rec.add), args=("thread",))
        thread.start()
        thread.join()

        @stream_with_context
        def body() -> Iterator[str]:
            for i in range(3):
                rec.add(f"ctx_chunk{i}")
                yield f"{i};"

        response = Response(body())
        response.call_on_close(lambda: rec.add("on_close"))
        return response

    @app.get("/plain-stream")
    def plain_stream() -> Any:
        def body() -> Iterator[str]:  # a plain generator: no Flask context while it runs
            try:
                for i in range(3):
                    rec.add(f"chunk{i}")
                    yield f"{i};"
            finally:
                rec.add("gen_finally")

        return Response(body())

    @app.get("/r/<int:rid>")
    def burst(rid: int) -> Any:
        # For the threaded-server test: each point records under the request's own id.
        rec.add(f"{rid}:view")
        pool.submit(rec.add, f"{rid}:pool").result()
        thread = threading.Thread(target=propagate(rec.add), args=(f"{rid}:thread",))
        thread.start()
        thread.join()

        def body() -> Iterator[str]:
            for i in range(3):
                rec.add(f"{rid}:chunk{i}")
                yield f"{rid}:{i};"

        return Response(stream_with_context(body()))

    @app.teardown_request
    def teardown(exc: BaseException | None) -> None:
        rec.add("teardown")

    app.wsgi_app = OwnershipWSGIMiddleware(  # type: ignore[method-assign]
        app.wsgi_app, policy=policy, keys=keys, **kw
    )
    return app


def problem(response: Any) -> dict[str, Any]:
    assert response.status_code == 400
    assert response.headers["Content-Type"] == "application/problem+json"
    body = json.loads(response.get_data())
    assert set(body) == PROBLEM_FIELDS
    assert body["status"] == 400
    assert body["trace_id"] == response.headers["x-trace-id"]
    assert int(response.headers["Content-Length"]) == len(response.get_data())
    return body


def views(rec: Recorder) -> list[tuple[str, Envelope | None]]:
    return [(label, envelope) for label, envelope in rec.seen if label != "teardown"]


# --- modes ------------------------------------------------------------------------------------


def test_enforce_rejects_with_problem_json() -> None:
    rec = Recorder()
    client = flask_app(Policy(mode="enforce"), rec).test_client()
    body = problem(client.get("/who"))
    assert body["missing"] == list(REQUIRED) and body["invalid"] == []
    body = problem(client.get("/who", headers={"baggage": bag(trace_id=TRACE, feature="f")}))
    assert body["missing"] == ["owner_team", "workflow_id"] and body["trace_id"] == TRACE

    secret = bag(
        trace_id=TRACE, owner_team="bad%20team", workflow_id="w", feature="f", user="bob%40x.io"
    )
    response = client.get("/who", headers={"baggage": secret})
    body = problem(response)
    assert body["missing"] == ["owner_team"]
    assert sorted(body["invalid"], key=lambda p: p["field"]) == [
        {
            "field": "owner_team",
            "code": "invalid",
            "rule": "must be 1-64 characters of [A-Za-z0-9._:/-]",
        },
        {
            "field": "user",
            "code": "raw_identifier",
            "rule": "must be a keyed hash ('h1:' and 32 hex characters), never a raw id",
        },
    ]
    assert b"bob" not in response.get_data() and b"bad team" not in response.get_data()
    assert rec.seen == []  # neither the view nor Flask's teardown ran


def test_enforce_admits_a_full_envelope() -> None:
    rec = Recorder()
    client = flask_app(Policy(mode="enforce"), rec).test_client()
    response = client.get("/who", headers=full_bag())
    assert response.status_code == 200
    assert response.headers["x-trace-id"] == TRACE
    assert response.get_json() == FULL.as_dict()
    assert rec.seen == [("view", FULL), ("teardown", FULL)]
    assert current() is None


def test_quarantine_and_stamp() -> None:
    rec = Recorder()
    client = flask_app(Policy(mode="quarantine"), rec).test_client()
    response = client.get("/who")
    assert response.status_code == 200
    assert rec.only() == Envelope(
        trace_id=response.headers["x-trace-id"], attribution="quarantined"
    )
    rec.clear()
    client.get("/who", headers={"baggage": bag(trace_id=TRACE, owner_team="a%20b", feature="f")})
    assert rec.only() == Envelope(trace_id=TRACE, feature="f", attribution="quarantined")

    rec = Recorder()
    defaults = {"owner_team": "platform", "workflow_id": "unknown", "feature": "unknown"}
    client = flask_app(Policy(mode="stamp", defaults=defaults), rec).test_client()
    response = client.get("/who", headers={"x-feature": "chat"})
    assert rec.only() == Envelope(
        trace_id=response.headers["x-trace-id"],
        owner_team="platform",
        workflow_id="unknown",
        feature="chat",
        attribution="stamped",
    )
    rec.clear()
    client.get("/who", headers=full_bag())
    assert rec.only() == FULL


def test_trace_ids_and_first_party_headers() -> None:
    rec = Recorder()
    client = flask_app(Policy(mode="enforce"), rec).test_client()
    headers = {"x-owner-team": "search", "x-workflow-id": "wf", "x-feature": "chat"}
    response = client.get("/who", headers={**headers, "traceparent": TRACEPARENT})
    assert response.headers["x-trace-id"] == OTHER_TRACE
    assert rec.only() == Envelope(
        trace_id=OTHER_TRACE, owner_team="search", workflow_id="wf", feature="chat"
    )
    rec.clear()
    response = client.get("/who", headers={**full_bag(), "traceparent": TRACEPARENT})
    assert response.headers["x-trace-id"] == TRACE  # the envelope's own trace id wins
    rec.clear()
    minted = {client.get("/who", headers=headers).headers["x-trace-id"] for _ in range(5)}
    assert len(minted) == 5 and all(len(t) == 32 and int(t, 16) for t in minted)
    assert {envelope.trace_id for _, envelope in rec.seen if envelope} == minted
    # Rejections carry the trace id that arrived.
    assert problem(client.get("/who", headers={"traceparent": TRACEPARENT}))["trace_id"] == (
        OTHER_TRACE
    )


def test_raw_ids_are_hashed_and_need_a_key() -> None:
    rec = Recorder()
    policy = Policy(
        mode="enforce", edge_headers=EdgeHeaders(tenant="x-tenant-id", user="x-user-id")
    )
    client = flask_app(policy, rec, keys=Keys(hash_key=HASH_KEY)).test_client()
    response = client.get(
        "/who",
        headers={
            "baggage": bag(trace_id=TRACE, owner_team="o", workflow_id="w", feature="f"),
            "x-tenant-id": "acme-corp",
            "x-user-id": "alice@example.com",
        },
    )
    assert response.status_code == 200
    assert rec.only() == Envelope(
        trace_id=TRACE,
        owner_team="o",
        workflow_id="w",
        feature="f",
        tenant=hash_identifier("acme-corp", HASH_KEY),
        user=hash_identifier("alice@example.com", HASH_KEY),
    )
    assert b"alice" not in response.get_data()

    def bare(environ: Any, start_response: Any) -> list[bytes]:
        return []

    with pytest.raises(ConfigurationError, match="hash key"):
        OwnershipWSGIMiddleware(bare, policy=policy, keys=Keys())
    with pytest.raises(ConfigurationError, match="hash key"):
        OwnershipWSGIMiddleware(bare, policy=policy)


def test_rules_resolver_and_signed_trust() -> None:
    rec = Recorder()
    client = flask_app(Policy(rules=(Rule("/public/*", required=()),)), rec).test_client()
    response = client.get("/public/ping")
    assert rec.seen[0] == ("view", Envelope(trace_id=response.headers["x-trace-id"]))
    assert problem(client.get("/who"))["missing"] == list(REQUIRED)

    def resolver(inbound: Inbound) -> dict[str, str] | None:
        key = inbound.native.get("HTTP_X_API_KEY")  # type: ignore[attr-defined]
        return {"owner_team": "billing"} if key == "key-billing" else None

    rec = Recorder()
    client = flask_app(Policy(resolver=resolver), rec).test_client()
    response = client.get("/who", headers={**full_bag(), "x-api-key": "key-billing"})
    assert rec.only() == FULL._replace(owner_team="billing")

    rec = Recorder()
    keys = Keys(signing_keys=(SIGN_KEY,))
    client = flask_app(Policy(trust="signed"), rec, keys=keys).test_client()
    assert problem(client.get("/who", headers=full_bag()))["missing"] == list(REQUIRED)
    first_party = {"x-owner-team": "o", "x-workflow-id": "w", "x-feature": "f"}
    assert problem(client.get("/who", headers=first_party))["missing"] == list(REQUIRED)
    signed: dict[str, str] = {}
    encode(FULL, signed, keys)
    response = client.get("/who", headers={**signed, "x-owner-team": "spoofed"})
    assert response.status_code == 200 and rec.only() == FULL
    forged = {"baggage": signed["baggage"].replace("search", "billing")}
    body = problem(client.get("/who", headers=forged))
    assert [(p["field"], p["code"]) for p in body["invalid"]] == [("sig", "bad_signature")]


# --- the unit of work: view, streaming, close -------------------------------------------------


def test_bound_in_the_view_the_streamed_body_and_the_close(maybe_sink: Any) -> None:
    rec = Recorder()
    app = flask_app(Policy(mode="quarantine"), rec)
    probe = Probe(app.wsgi_app)
    app.wsgi_app = probe  # type: ignore[method-assign]
    client = app.test_client()

    response = client.get("/unit", headers=full_bag())
    assert response.get_data() == b"0;1;2;"
    response.close()
    assert [label for label, _ in views(rec)] == [
        "view",
        "pool",
        "thread",
        "ctx_chunk0",
        "ctx_chunk1",
        "ctx_chunk2",
        "on_close",
    ]
    assert "teardown" in rec.labels()  # when Flask runs it is Flask's business; bound anyway
    assert rec.only() == FULL
    assert current() is None
    rec.clear()

    response = client.get("/plain-stream", headers=full_bag())
    assert response.get_data() == b"0;1;2;"
    response.close()
    assert sorted(rec.labels()) == sorted(["chunk0", "chunk1", "chunk2", "gen_finally", "teardown"])
    assert rec.only() == FULL
    rec.clear()

    # The next request brings no envelope: a fresh quarantined one, nothing of the last.
    response = client.get("/unit")
    response.close()
    fresh = rec.only()
    assert fresh == Envelope(trace_id=response.headers["x-trace-id"], attribution="quarantined")
    assert fresh.trace_id != TRACE
    assert probe.outside == [None] * 6
    assert current() is None
    if maybe_sink is not None:
        requests = [e for e in maybe_sink.events if e["kind"] == "request"]
        assert [(e["trace_id"], e["status"]) for e in requests] == [
            (TRACE, 200),
            (TRACE, 200),
            (fresh.trace_id, 200),
        ]


def test_not_bound_after_the_response_is_closed(maybe_sink: Any) -> None:
    """Driving the middleware by hand: bound while the body is produced, never outside."""
    rec = Recorder()
    app = flask_app(Policy(mode="quarantine"), rec)
    environ_headers = {"HTTP_BAGGAGE": full_bag()["baggage"]}
    environ = EnvironBuilder(path="/plain-stream", environ_base=environ_headers).get_environ()
    started: list[tuple[str, list[tuple[str, str]]]] = []

    def start_response(status: str, headers: list[tuple[str, str]], exc_info: Any = None) -> Any:
        started.append((status, headers))
        return lambda data: None

    result = app.wsgi_app(environ, start_response)
    assert current() is None  # the server's own context is never touched
    iterator = iter(result)
    assert next(iterator) == b"0;"
    assert current() is None  # not even between chunks
    close = getattr(result, "close")  # noqa: B009
    close()  # the generator is abandoned: its `finally` runs bound, then nothing is
    assert current() is None
    assert started[0][0] == "200 OK" and ("x-trace-id", TRACE) in started[0][1]
    # Flask tore the request down when the view returned; the body still ran bound.
    assert rec.seen == [("teardown", FULL), ("chunk0", FULL), ("gen_finally", FULL)]


def test_plain_wsgi_callables(maybe_sink: Any) -> None:
    rec = Recorder()

    def simple(environ: dict[str, Any], start_response: Any) -> list[bytes]:
        envelope = rec.add("app")
        start_response("200 OK", [("Content-Type", "text/plain")])
        return [envelope.trace_id.encode() if envelope else b"none"]

    def lazy(environ: dict[str, Any], start_response: Any) -> Iterator[bytes]:
        # A generator app: start_response is only called when iteration begins.
        rec.add("lazy:start")
        start_response("201 Created", [("Content-Type", "text/plain")])
        yield b"a"
        rec.add("lazy:end")
        yield b"b"

    class WithClose:
        def __init__(self) -> None:
            rec.add("iterable")

        def __iter__(self) -> Iterator[bytes]:
            rec.add("iter")
            yield b"x"

        def close(self) -> None:
            rec.add("close")

    def closing(environ: dict[str, Any], start_response: Any) -> WithClose:
        start_response("200 OK", [])
        return WithClose()

    policy = Policy(mode="quarantine")
    for app, labels, status in (
        (simple, ["app"], 200),
        (lazy, ["lazy:start", "lazy:end"], 201),
        (closing, ["iterable", "iter", "close"], 200),
    ):
        rec.clear()
        client = Client(OwnershipWSGIMiddleware(app, policy=policy))
        response = client.get("/", headers=full_bag())
        response.get_data()
        response.close()
        assert response.status_code == status
        assert response.headers["x-trace-id"] == TRACE
        assert rec.labels() == labels
        assert rec.only() == FULL
        assert current() is None
        rec.clear()
        response = client.get("/")
        response.get_data()
        response.close()
        assert rec.only() == Envelope(
            trace_id=response.headers["x-trace-id"], attribution="quarantined"
        )

    rec.clear()
    rejected = Client(
        OwnershipWSGIMiddleware(simple, policy=Policy(mode="enforce"), trace_header=None)
    )
    response = rejected.get("/", headers={"baggage": bag(trace_id=TRACE)})
    assert response.status_code == 400 and "x-trace-id" not in response.headers
    assert json.loads(response.get_data())["trace_id"] == TRACE
    assert rec.seen == []


# --- a real threaded server on loopback -------------------------------------------------------


@pytest.fixture
def served() -> Iterator[tuple[str, Recorder, Probe]]:
    rec = Recorder()
    probe = Probe(flask_app(Policy(mode="quarantine"), rec))
    server = make_server("127.0.0.1", 0, probe, threaded=True)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    try:
        yield f"http://127.0.0.1:{server.server_port}", rec, probe
    finally:
        server.shutdown()
        server.server_close()
        thread.join(timeout=10)


def _random_request(rng: random.Random, rid: int) -> tuple[dict[str, str], Envelope, bool]:
    """Headers, the expected envelope (placeholder trace id when minted), whether it's known."""
    trace_id = f"{rid:08x}{rng.getrandbits(96):024x}"
    kind = rng.choice(["valid", "valid", "absent", "malformed"])
    token = "".join(rng.choices("abcdefghijklmnopqrstuvwxyzABCDEFGHIJ0123456789._:/-", k=8))
    if kind == "absent":
        if rng.random() < 0.5:
            return {}, Envelope("f" * 32, attribution="quarantined"), False
        parent = {"traceparent": f"00-{trace_id}-b7ad6b7169203331-01"}
        return parent, Envelope(trace_id, attribution="quarantined"), True
    fields = {"owner_team": f"team-{rid}", "workflow_id": token, "feature": f"f{rng.randrange(9)}"}
    if rng.random() < 0.5:
        fields["tenant"] = "h1:" + f"{rng.getrandbits(128):032x}"
    if rng.random() < 0.2:
        del fields["feature"]
    attribution = "attributed" if set(REQUIRED) <= fields.keys() else "quarantined"
    sent = dict(fields)
    if kind == "malformed":
        broken = rng.choice(sorted(fields))
        sent[broken] = rng.choice(["bad%20value", "%FF", "x" * 200, "über"])
        del fields[broken]
        attribution = "quarantined"
    baggage = bag(trace_id=trace_id, **sent)
    if rng.random() < 0.3:
        baggage = "sentry-environment=prod, " + baggage.replace(",", ", ")
    # Header values travel as latin-1 (PEP 3333): send the non-ASCII case percent-encoded.
    baggage = baggage.replace("über", "%C3%BCber")
    return {"baggage": baggage}, Envelope(trace_id, **fields, attribution=attribution), True


def test_threaded_server_concurrent_requests(
    served: tuple[str, Recorder, Probe], maybe_sink: Any
) -> None:
    base, rec, probe = served
    rng = random.Random(20261126)
    cases = [(rid, *_random_request(rng, rid)) for rid in range(1, 201)]
    local = threading.local()

    def call(rid: int, headers: dict[str, str]) -> tuple[int, str]:
        session = getattr(local, "session", None)
        if session is None:  # one keep-alive connection per client thread
            session = local.session = requests.Session()
        response = session.get(f"{base}/r/{rid}", headers=headers, timeout=30)
        assert response.status_code == 200, response.text
        assert response.text == f"{rid}:0;{rid}:1;{rid}:2;"
        return rid, response.headers["x-trace-id"]

    with ThreadPoolExecutor(max_workers=32) as pool:
        traces = dict(pool.map(lambda case: call(case[0], case[1]), cases))
        # After the burst, on the same keep-alive connections: requests without an envelope.
        after = dict(pool.map(lambda rid: call(rid, {}), range(1001, 1033)))

    by_rid: dict[int, list[tuple[str, Envelope | None]]] = {}
    for label, envelope in rec.seen:
        if label != "teardown":
            rid, _, point = label.partition(":")
            by_rid.setdefault(int(rid), []).append((point, envelope))
    # Flask's teardown (once or twice a request, depending on stream_with_context) runs bound.
    teardowns = {envelope for label, envelope in rec.seen if label == "teardown"}

    points = sorted(["view", "pool", "thread", "chunk0", "chunk1", "chunk2"])
    for rid, _, expected, known in cases:
        seen = by_rid.pop(rid)
        assert sorted(point for point, _ in seen) == points
        if known:
            assert traces[rid] == expected.trace_id
        else:
            expected = expected._replace(trace_id=traces[rid])
        assert {envelope for _, envelope in seen} == {expected}, (rid, seen)
        teardowns.remove(expected)
    assert len(set(traces.values())) == len(traces)
    for rid, trace_id in after.items():
        seen = by_rid.pop(rid)
        assert len(seen) == len(points)
        assert {envelope for _, envelope in seen} == {Envelope(trace_id, attribution="quarantined")}
        assert trace_id not in traces.values()
        teardowns.remove(Envelope(trace_id, attribution="quarantined"))
    assert by_rid == {} and teardowns == set()
    # Server threads served many requests each (keep-alive), and outside the middleware
    # none of them ever had an envelope bound.
    assert len(probe.threads) < len(cases) // 2
    assert probe.outside == [None] * 2 * (len(cases) + len(after))
    assert current() is None


def test_a_mounted_app_with_its_own_middleware_reuses_the_outer_envelope(
    event_sink: Any,
) -> None:
    from werkzeug.middleware.dispatcher import DispatcherMiddleware

    inner = Flask("inner")

    @inner.route("/who")
    def who() -> Any:
        envelope = current()
        return jsonify(trace_id=envelope.trace_id if envelope else None)

    inner.wsgi_app = OwnershipWSGIMiddleware(  # type: ignore[method-assign]
        inner.wsgi_app,
        policy=Policy(mode="enforce"),  # would reject on its own
    )
    outer = Flask("outer")
    outer.wsgi_app = OwnershipWSGIMiddleware(  # type: ignore[method-assign]
        DispatcherMiddleware(outer.wsgi_app, {"/sub": inner}), policy=Policy(mode="quarantine")
    )
    response = outer.test_client().get("/sub/who", buffered=True)
    assert response.status_code == 200
    [trace_id] = response.headers.getlist("x-trace-id")
    assert response.get_json() == {"trace_id": trace_id}
    [hop] = [e for e in event_sink.events if e["kind"] == "hop"]
    [request] = [e for e in event_sink.events if e["kind"] == "request"]
    assert hop["trace_id"] == request["trace_id"] == trace_id
    assert request["route"] == "/sub/who"  # the mount's prefix, then the inner url rule
