"""WSGI middleware with the ASGI middleware's semantics (Flask, Django, any WSGI app).

Each request runs in its own copy of the context, entered for the application call and for
every step of the response iterable, so the envelope is bound while a streamed body is produced
and the server's own context is never modified: nothing can leak into the next request that
the same worker thread serves, whatever the server does with ``close()``.

    app.wsgi_app = OwnershipWSGIMiddleware(app.wsgi_app, policy=Policy(mode="quarantine"))
"""

from __future__ import annotations

import contextvars
import time
from collections.abc import Callable, Iterable, Iterator
from types import TracebackType
from typing import Any, Protocol

from . import events
from .gate import PROBLEM_CONTENT_TYPE, Entry, Gate
from .hashing import Keys
from .policy import Policy

__all__ = ["OwnershipWSGIMiddleware"]

Environ = dict[str, Any]
ExcInfo = tuple[type[BaseException], BaseException, TracebackType | None]


class StartResponse(Protocol):
    def __call__(
        self, status: str, headers: list[tuple[str, str]], exc_info: ExcInfo | None = ..., /
    ) -> Callable[[bytes], object]: ...


WSGIApp = Callable[[Environ, StartResponse], Iterable[bytes]]


def _environ_key(header: str) -> str:
    return "HTTP_" + header.upper().replace("-", "_")


class OwnershipWSGIMiddleware:
    """Admit each request through the policy; bind its envelope until the response is done.

    Rejected requests get ``400`` with an ``application/problem+json`` body. ``trace_header``
    (default ``x-trace-id``; ``None`` to disable) echoes the trace id on every response.
    """

    def __init__(
        self,
        app: WSGIApp,
        *,
        policy: Policy | None = None,
        keys: Keys | None = None,
        trace_header: str | None = "x-trace-id",
    ) -> None:
        self.app = app
        self.gate = Gate(policy, keys)
        names = self.gate.edge_carrier_names
        self._all_headers = names is None
        self._environ_keys = tuple((name, _environ_key(name)) for name in names or ())
        self._trace_header = trace_header

    def __call__(self, environ: Environ, start_response: StartResponse) -> Iterable[bytes]:
        # PEP 3333: header values are latin-1 native strings, as in ASGI after decoding.
        if self._all_headers:  # a resolver may look at any header (an API key, a JWT)
            carrier = {
                key[5:].lower().replace("_", "-"): value
                for key, value in environ.items()
                if key.startswith("HTTP_") and isinstance(value, str)
            }
        else:
            carrier = {name: environ[key] for name, key in self._environ_keys if key in environ}
        context = contextvars.copy_context()
        entry = context.run(
            self.gate.enter,
            carrier,
            hop="http",
            unit=environ.get("PATH_INFO", ""),
            edge=True,
            native=environ,
        )
        trace = [(self._trace_header, entry.trace_id)] if self._trace_header else []
        recorder = _Recorder(entry, environ) if events.get_sink() is not None else None
        if entry.envelope is None:
            body = entry.problem_body()
            start_response(
                "400 Bad Request",
                [
                    ("Content-Type", PROBLEM_CONTENT_TYPE),
                    ("Content-Length", str(len(body))),
                    *trace,
                ],
            )
            if recorder is not None:
                recorder.status = 400
                recorder.finish()
            return [body]

        def start_with_trace(
            status: str, headers: list[tuple[str, str]], exc_info: ExcInfo | None = None, /
        ) -> Callable[[bytes], object]:
            if recorder is not None:
                recorder.status = int(status[:3]) if status[:3].isdigit() else None
            return start_response(status, [*headers, *trace], exc_info)

        if not trace and recorder is None:
            return _InContext(context.run(self.app, environ, start_response), context, None)
        try:
            result = context.run(self.app, environ, start_with_trace)
        except BaseException:
            if recorder is not None:  # the server answers 500: record the request anyway
                recorder.status = 500
                recorder.finish()
            raise
        return _InContext(result, context, recorder)


class _Recorder:
    """Collects a request's status and latency for its request event (when a sink is set)."""

    __slots__ = ("entry", "method", "started", "status")

    def __init__(self, entry: Entry, environ: Environ) -> None:
        self.entry = entry
        self.method = str(environ.get("REQUEST_METHOD", ""))
        self.started = time.perf_counter()
        self.status: int | None = None

    def finish(self) -> None:
        latency_ms = (time.perf_counter() - self.started) * 1000
        events.emit(self.entry.request_event(self.method, self.status, latency_ms))


class _InContext:
    """A response iterable whose every step runs in the request's context."""

    __slots__ = ("_context", "_iterator", "_recorder", "_result")

    def __init__(
        self, result: Iterable[bytes], context: contextvars.Context, recorder: _Recorder | None
    ) -> None:
        self._result = result
        self._context = context
        self._recorder = recorder
        self._iterator: Iterator[bytes] | None = None

    def __iter__(self) -> Iterator[bytes]:
        return self

    def __next__(self) -> bytes:
        if self._iterator is None:
            self._iterator = self._context.run(iter, self._result)
        try:
            return self._context.run(next, self._iterator)
        except StopIteration:
            self._finish()  # the body is complete; some servers never call close()
            raise

    def _finish(self) -> None:
        recorder, self._recorder = self._recorder, None
        if recorder is not None:
            recorder.finish()

    def close(self) -> None:
        close = getattr(self._result, "close", None)
        try:
            if close is not None:
                self._context.run(close)
        finally:
            self._finish()
