"""ASGI middleware: stamp or validate the envelope on every HTTP request and WebSocket session.

Pure ASGI (no ``BaseHTTPMiddleware``), so the envelope stays bound for the whole unit of work:
the handler, streamed response bodies, Starlette background tasks, ``run_in_threadpool`` and
tasks the handler spawns. It is reset when the application returns.

    app.add_middleware(OwnershipMiddleware, policy=Policy(mode="enforce"))

Lifespan passes through, except that a configuration error (e.g. a policy that hashes raw ids
without ``OWNERSHIP_CTX_HASH_KEY``) fails the lifespan startup with its message, so the server
exits at once rather than answering every request with 500.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Awaitable, Callable, MutableMapping
from typing import Any, Final

from . import events
from .budgets import state as budget_state
from .budgets.model import Refusal
from .gate import PROBLEM_CONTENT_TYPE, Entry, Gate
from .hashing import ConfigurationError, Keys
from .policy import Policy
from .units import redact_path, unit_name

__all__ = ["SCOPE_KEY", "OwnershipMiddleware", "UnitOf"]

Scope = MutableMapping[str, Any]
Message = MutableMapping[str, Any]
Receive = Callable[[], Awaitable[Message]]
Send = Callable[[Message], Awaitable[None]]
ASGIApp = Callable[[Scope, Receive, Send], Awaitable[None]]
#: Names a unit from its ASGI scope (the operator's choice over route templates / redaction).
UnitOf = Callable[[Scope], str]

#: The scope key under which the admitted `Entry` of a request is kept: an inner
#: OwnershipMiddleware (a mounted sub-app with its own) reuses it instead of minting again.
SCOPE_KEY: Final = "ownership_ctx.entry"

logger = logging.getLogger("ownership_ctx")

# What a request event records as the status of each kind of first response message.
_STATUS_OF: Final = {
    "http.response.start": 0,
    "websocket.accept": 101,
    "websocket.close": 403,  # closed before the handshake completed: servers answer 403
    "websocket.http.response.start": 0,
}
_STARTS: Final = frozenset(
    {"http.response.start", "websocket.accept", "websocket.http.response.start"}
)
_SERVER_ERROR_BODY: Final = b"Internal Server Error"


def _flush_events_at_shutdown(send: Send) -> Send:
    async def send_flushing(message: Message) -> None:
        if message["type"] == "lifespan.shutdown.complete":
            events.flush()  # queued events are written before the server exits
        await send(message)

    return send_flushing


def route_template(scope: Scope) -> str | None:
    """The framework's template of the route that served ``scope`` (Starlette, FastAPI: their
    routes, WebSocket routes and mounts), or ``None`` when no route matched."""
    route = scope.get("route")
    template = getattr(route, "path", None)
    if not isinstance(template, str):
        return None
    if not hasattr(route, "endpoint"):
        template += "/{path}"  # a Mount that served the rest of the path itself
    # Routes inside mounts are relative to them; what the mounts matched is redacted.
    mounted = scope.get("root_path", "")[len(scope.get("app_root_path", "")) :]
    return redact_path(mounted) + template if mounted else template


class OwnershipMiddleware:
    """Admit each request through the policy and bind its envelope for the request's lifetime.

    ``trace_header`` (default ``x-trace-id``; ``None`` to disable) echoes the trace id on every
    response, rejections and server errors included. Rejected HTTP requests get ``400`` with an
    ``application/problem+json`` body; rejected WebSocket handshakes get the same response
    where the server supports the denial-response extension, else a ``1008`` close (HTTP 403).
    An application that raises before it responds gets a plain ``500`` from here (so that it
    carries the trace id), then the exception goes on to the server. (Starlette's own 500 handler
    runs but its response is not sent, and debug mode keeps its traceback page; to keep a custom
    500 page, wrap the whole app instead: ``app = OwnershipMiddleware(app, ...)``.)

    With budgets installed (`ownership_ctx.budgets.install`), a request whose owner is over a
    hard limit gets ``429`` (``application/problem+json`` naming the budget, ``Retry-After``
    at its period's end) and the application is not called.

    Units are named without the data paths carry: the hop event and admission logs use the
    path with identifier-like segments redacted (`ownership_ctx.units.redact_path`: nothing is
    routed yet), the request event the route template when the framework has one, else the
    same redacted path; ``unit_of(scope)`` replaces both. Policy rules match
    the path as received. ``keys`` default to `Keys.from_env`.
    """

    def __init__(
        self,
        app: ASGIApp,
        *,
        policy: Policy | None = None,
        keys: Keys | None = None,
        trace_header: str | None = "x-trace-id",
        unit_of: UnitOf | None = None,
    ) -> None:
        self.app = app
        self._unit_of = unit_of
        self._trace_header = trace_header.lower().encode("latin-1") if trace_header else None
        self.configuration_error: ConfigurationError | None = None
        try:
            self.gate: Gate | None = Gate(policy, keys)
        except ConfigurationError as error:
            # Raised here, the error would reach a framework that builds its middleware on
            # the first event (Starlette: at lifespan startup), and servers treat a lifespan
            # that raises as "lifespan unsupported", then answer 500 forever. Failing the
            # startup instead makes the server exit with the message.
            self.gate = None
            self.configuration_error = error
            self._wanted: dict[bytes, str] | None = {}
            return
        names = self.gate.edge_carrier_names
        # The headers the gate reads, by their raw name: nothing is decoded for the others.
        self._wanted = None if names is None else {n.encode("latin-1"): n for n in names}

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        scope_type = scope["type"]
        if scope_type != "http" and scope_type != "websocket":
            if scope_type == "lifespan":
                if self.gate is None:
                    await self._fail_startup(receive, send)
                    return
                send = _flush_events_at_shutdown(send)
            await self.app(scope, receive, send)
            return
        if SCOPE_KEY in scope:
            # An outer OwnershipMiddleware admitted this request: one envelope, one trace id.
            await self.app(scope, receive, send)
            return
        gate = self.gate
        if gate is None:
            await self._misconfigured(scope, receive, send)
            return
        carrier: dict[str, str] = {}
        wanted = self._wanted
        if wanted is None:
            for name, value in scope["headers"]:
                _add_header(carrier, name.decode("latin-1"), value)
        else:
            for name, value in scope["headers"]:
                if name in wanted:
                    key = wanted[name]
                    if key in carrier:
                        _add_header(carrier, key, value)
                    else:
                        carrier[key] = value.decode("latin-1")
        path = scope["path"]
        unit_of = self._unit_of
        entry = gate.enter(
            carrier,
            hop="http",
            unit=path,
            edge=True,
            native=scope,
            name=redact_path(path) if unit_of is None else unit_name(unit_of, scope, path),
        )
        scope[SCOPE_KEY] = entry
        started = time.perf_counter() if events.get_sink() is not None else 0.0
        responder = _Responder(send, self._trace_header, entry.trace_id)
        # Budgets (ownership_ctx.budgets.install): a cached check; nothing when none installed.
        budgets = budget_state.active
        refusal = None
        if budgets is not None and entry.envelope is not None:
            refusal = budgets.check(entry.envelope, "edge")
        try:
            if entry.envelope is None:
                await self._reject(scope, receive, responder.send, entry)
            elif refusal is not None:
                await self._over_budget(scope, receive, responder.send, entry, refusal)
            else:
                await self.app(scope, receive, responder.send)
        except Exception:
            if responder.status is None:
                await responder.server_error(scope)
            raise
        finally:
            entry.close()
            if events.get_sink() is not None:
                route = (
                    route_template(scope) if unit_of is None else unit_name(unit_of, scope, path)
                )
                elapsed = time.perf_counter() - started if started else 0.0
                events.emit(
                    entry.request_event(
                        scope.get("method", "WEBSOCKET"),
                        responder.status,
                        elapsed * 1000,
                        route=route,
                    )
                )

    async def _fail_startup(self, receive: Receive, send: Send) -> None:
        message = await receive()
        if message["type"] == "lifespan.startup":
            text = f"ownership_ctx: {self.configuration_error}"
            await send({"type": "lifespan.startup.failed", "message": text})

    async def _misconfigured(self, scope: Scope, receive: Receive, send: Send) -> None:
        # Only where the server ran no lifespan (else it has exited already).
        logger.error("ownership_ctx: %s", self.configuration_error)
        if scope["type"] == "http":
            start = {"type": "http.response.start", "status": 500}
            await send({**start, "headers": [(b"content-type", b"text/plain; charset=utf-8")]})
            await send({"type": "http.response.body", "body": _SERVER_ERROR_BODY})
        else:
            await send({"type": "websocket.close", "code": 1011})

    def _headers(self, body: bytes) -> list[tuple[bytes, bytes]]:
        return [
            (b"content-type", PROBLEM_CONTENT_TYPE.encode()),
            (b"content-length", str(len(body)).encode()),
        ]

    async def _reject(
        self,
        scope: Scope,
        receive: Receive,
        send: Send,
        entry: Entry,
        *,
        status: int = 400,
        body: bytes | None = None,
        headers: tuple[tuple[bytes, bytes], ...] = (),
        reason: str = "ownership rejected",
    ) -> None:
        body = entry.problem_body() if body is None else body
        if scope["type"] == "http":
            start = {"type": "http.response.start", "status": status}
            await send({**start, "headers": [*self._headers(body), *headers]})
            await send({"type": "http.response.body", "body": body})
            return
        await receive()  # websocket.connect
        if "websocket.http.response" in scope.get("extensions", {}):
            start = {"type": "websocket.http.response.start", "status": status}
            await send({**start, "headers": [*self._headers(body), *headers]})
            await send({"type": "websocket.http.response.body", "body": body})
        else:
            await send({"type": "websocket.close", "code": 1008, "reason": reason})

    async def _over_budget(
        self, scope: Scope, receive: Receive, send: Send, entry: Entry, refusal: Refusal
    ) -> None:
        """429 with the budget named and ``Retry-After`` at its period's end (no amounts)."""
        retry = refusal.retry_after(time.time()).encode()
        body = refusal.problem_body(entry.trace_id)
        await self._reject(
            scope,
            receive,
            send,
            entry,
            status=429,
            body=body,
            headers=((b"retry-after", retry),),
            reason="budget exceeded",
        )


def _add_header(carrier: dict[str, str], key: str, value: bytes) -> None:
    text = value.decode("latin-1")
    # Repeated headers join with commas, as HTTP defines: repeated baggage merges, a
    # repeated first-party header becomes an invalid value.
    carrier[key] = f"{carrier[key]},{text}" if key in carrier else text


class _Responder:
    """The ``send`` the application gets: records the status and echoes the trace id."""

    __slots__ = ("_send", "_trace", "status")

    def __init__(self, send: Send, header: bytes | None, trace_id: str) -> None:
        self._send = send
        self._trace = None if header is None else (header, trace_id.encode("ascii"))
        self.status: int | None = None

    def send(self, message: Message) -> Awaitable[None]:
        # Not a coroutine itself: it hands back the server's awaitable, one frame less per
        # message (ASGI asks only that send(...) be awaitable).
        if self.status is None:
            kind = message["type"]
            if kind in _STATUS_OF:
                self.status = message.get("status") or _STATUS_OF[kind]
                if kind in _STARTS and self._trace is not None:
                    # A new list: the app may reuse its own (Starlette's Response.raw_headers).
                    message["headers"] = [*message.get("headers", ()), self._trace]
        return self._send(message)

    async def server_error(self, scope: Scope) -> None:
        """Answer 500 for an application that raised before responding. Starlette's error
        middleware sits outside ours (`add_middleware`): it sees the response started and
        only re-raises, so the server still logs the exception."""
        if scope["type"] != "http" or getattr(scope.get("app"), "debug", False) is True:
            # WebSocket: the server refuses the handshake with 500. A Starlette app in debug
            # mode: its error middleware shows the traceback page, worth more there.
            self.status = 500
            return
        # The same response as Starlette's own error middleware, so that installing us never
        # changes what a client sees; the server closes the connection once the app raised.
        headers = [
            (b"content-type", b"text/plain; charset=utf-8"),
            (b"content-length", str(len(_SERVER_ERROR_BODY)).encode()),
        ]
        try:
            await self.send({"type": "http.response.start", "status": 500, "headers": headers})
            await self.send({"type": "http.response.body", "body": _SERVER_ERROR_BODY})
        except Exception:
            events.count("server_error_response_failed")  # the client went away
