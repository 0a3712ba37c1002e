"""WSGI middleware with the ASGI middleware's semantics (Flask, Django, any WSGI app).

Each request runs in its own copy of the context, entered for the application call and for
every step of the response iterable, so the envelope is bound while a streamed body is produced
and the server's own context is never modified: nothing can leak into the next request that
the same worker thread serves, whatever the server does with ``close()``.

    app.wsgi_app = OwnershipWSGIMiddleware(app.wsgi_app, policy=Policy(mode="quarantine"))
"""

from __future__ import annotations

import contextvars
from collections.abc import Callable, Iterable, Iterator
from types import TracebackType
from typing import Any, Protocol

from .codec import BAGGAGE_HEADER, TRACEPARENT_HEADER
from .gate import PROBLEM_CONTENT_TYPE, Gate
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
        names = (BAGGAGE_HEADER, TRACEPARENT_HEADER, *self.gate.edge_header_names)
        self._environ_keys = tuple((name, _environ_key(name)) for name in names)
        self._trace_header = trace_header

    def __call__(self, environ: Environ, start_response: StartResponse) -> Iterable[bytes]:
        # PEP 3333: header values are latin-1 native strings, as in ASGI after decoding.
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
            return [body]

        def start_with_trace(
            status: str, headers: list[tuple[str, str]], exc_info: ExcInfo | None = None, /
        ) -> Callable[[bytes], object]:
            return start_response(status, [*headers, *trace], exc_info)

        result = context.run(self.app, environ, start_with_trace if trace else start_response)
        return _InContext(result, context)


class _InContext:
    """A response iterable whose every step runs in the request's context."""

    __slots__ = ("_context", "_iterator", "_result")

    def __init__(self, result: Iterable[bytes], context: contextvars.Context) -> None:
        self._result = result
        self._context = context
        self._iterator: Iterator[bytes] | None = None

    def __iter__(self) -> Iterator[bytes]:
        return self

    def __next__(self) -> bytes:
        if self._iterator is None:
            self._iterator = self._context.run(iter, self._result)
        return self._context.run(next, self._iterator)

    def close(self) -> None:
        close = getattr(self._result, "close", None)
        if close is not None:
            self._context.run(close)
