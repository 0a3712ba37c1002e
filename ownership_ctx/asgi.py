"""ASGI middleware: stamp or validate the envelope on every HTTP request and WebSocket session.

Pure ASGI (no ``BaseHTTPMiddleware``), so the envelope stays bound for the whole unit of work:
the handler, streamed response bodies, Starlette background tasks, ``run_in_threadpool`` and
tasks the handler spawns. It is reset when the application returns. Lifespan passes through.

    app.add_middleware(OwnershipMiddleware, policy=Policy(mode="enforce"))
"""

from __future__ import annotations

import time
from collections.abc import Awaitable, Callable, MutableMapping
from typing import Any

from . import events
from .gate import PROBLEM_CONTENT_TYPE, Entry, Gate
from .hashing import Keys
from .policy import Policy

__all__ = ["OwnershipMiddleware"]

Scope = MutableMapping[str, Any]
Message = MutableMapping[str, Any]
Receive = Callable[[], Awaitable[Message]]
Send = Callable[[Message], Awaitable[None]]
ASGIApp = Callable[[Scope, Receive, Send], Awaitable[None]]

# What a request event records as the status of each kind of first response message.
_STATUS_OF = {
    "http.response.start": 0,
    "websocket.accept": 101,
    "websocket.close": 403,  # closed before the handshake completed: servers answer 403
    "websocket.http.response.start": 0,
}
_STARTS = frozenset({"http.response.start", "websocket.accept", "websocket.http.response.start"})


def _flush_events_at_shutdown(send: Send) -> Send:
    async def send_flushing(message: Message) -> None:
        if message["type"] == "lifespan.shutdown.complete":
            events.flush()  # queued events are written before the server exits
        await send(message)

    return send_flushing


class OwnershipMiddleware:
    """Admit each request through the policy and bind its envelope for the request's lifetime.

    ``trace_header`` (default ``x-trace-id``; ``None`` to disable) echoes the trace id on every
    response, rejections included. Rejected HTTP requests get ``400`` with an
    ``application/problem+json`` body; rejected WebSocket handshakes get the same response
    where the server supports the denial-response extension, else a ``1008`` close (HTTP 403).
    """

    def __init__(
        self,
        app: ASGIApp,
        *,
        policy: Policy | None = None,
        keys: Keys | None = None,
        trace_header: str | None = "x-trace-id",
    ) -> None:
        self.app = app
        self.gate = Gate(policy, keys)
        names = self.gate.edge_carrier_names
        self._wanted = None if names is None else frozenset(n.encode("latin-1") for n in names)
        self._trace_header = trace_header.lower().encode("latin-1") if trace_header else None

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        scope_type = scope["type"]
        if scope_type != "http" and scope_type != "websocket":
            if scope_type == "lifespan":
                send = _flush_events_at_shutdown(send)
            await self.app(scope, receive, send)
            return
        carrier: dict[str, str] = {}
        wanted = self._wanted
        for name, value in scope["headers"]:
            if wanted is None or name in wanted:
                key = name.decode("latin-1")
                text = value.decode("latin-1")
                # Repeated headers join with commas, as HTTP defines: repeated baggage
                # merges, a repeated first-party header becomes an invalid value.
                carrier[key] = f"{carrier[key]},{text}" if key in carrier else text
        entry = self.gate.enter(carrier, hop="http", unit=scope["path"], edge=True, native=scope)
        if events.get_sink() is not None:
            await self._call_recorded(scope, receive, send, entry)
            return
        try:
            if entry.envelope is None:
                await self._reject(scope, receive, send, entry)
            elif self._trace_header is None:
                await self.app(scope, receive, send)
            else:
                await self.app(scope, receive, self._echo_trace(send, entry.trace_id))
        finally:
            entry.close()

    async def _call_recorded(
        self, scope: Scope, receive: Receive, send: Send, entry: Entry
    ) -> None:
        """The same, and a request event (status, latency) when the unit ends."""
        started = time.perf_counter()
        status: list[int] = []
        echo = self._echo_trace(send, entry.trace_id) if self._trace_header else send

        def recording(inner: Send) -> Send:
            async def send_recording(message: Message) -> None:
                kind = message["type"]
                if kind in _STATUS_OF:
                    status.append(message.get("status") or _STATUS_OF[kind])
                await inner(message)

            return send_recording

        try:
            if entry.envelope is None:
                # Not through `echo`: the rejection carries its trace header already.
                await self._reject(scope, receive, recording(send), entry)
            else:
                await self.app(scope, receive, recording(echo))
        finally:
            entry.close()
            events.emit(
                entry.request_event(
                    scope.get("method", "WEBSOCKET"),
                    status[0] if status else None,
                    (time.perf_counter() - started) * 1000,
                    route=getattr(scope.get("route"), "path", None),  # Starlette's template
                )
            )

    def _echo_trace(self, send: Send, trace_id: str) -> Send:
        trace = (self._trace_header, trace_id.encode("ascii"))

        async def send_with_trace(message: Message) -> None:
            if message["type"] in _STARTS:
                # A new list: the app may reuse its own (Starlette's Response.raw_headers).
                message["headers"] = [*message.get("headers", ()), trace]
            await send(message)

        return send_with_trace

    def _headers(self, entry: Entry, body: bytes) -> list[tuple[bytes, bytes]]:
        headers = [
            (b"content-type", PROBLEM_CONTENT_TYPE.encode()),
            (b"content-length", str(len(body)).encode()),
        ]
        if self._trace_header is not None:
            headers.append((self._trace_header, entry.trace_id.encode("ascii")))
        return headers

    async def _reject(self, scope: Scope, receive: Receive, send: Send, entry: Entry) -> None:
        body = entry.problem_body()
        if scope["type"] == "http":
            start = {"type": "http.response.start", "status": 400}
            headers = self._headers(entry, body)
            await send({**start, "headers": headers})
            await send({"type": "http.response.body", "body": body})
            return
        await receive()  # websocket.connect
        if "websocket.http.response" in scope.get("extensions", {}):
            start = {"type": "websocket.http.response.start", "status": 400}
            await send({**start, "headers": self._headers(entry, body)})
            await send({"type": "websocket.http.response.body", "body": body})
        else:
            await send({"type": "websocket.close", "code": 1008, "reason": "ownership rejected"})
