"""WSGI middleware with the ASGI middleware's semantics (Flask, Django, any WSGI app).

Each request runs in its own copy of the context, entered for the application call and for
every step of the response iterable, so the envelope is bound while a streamed body is produced
and the server's own context is never modified: nothing can leak into the next request that
the same worker thread serves, whatever the server does with ``close()``.

    app.wsgi_app = OwnershipWSGIMiddleware(app.wsgi_app, policy=Policy(mode="quarantine"))
"""

from __future__ import annotations

import contextvars
import logging
import time
from collections.abc import Callable, Iterable, Iterator
from types import TracebackType
from typing import Any, Protocol

from . import events
from .budgets import state as budget_state
from .gate import PROBLEM_CONTENT_TYPE, Entry, Gate
from .hashing import Keys
from .policy import Policy
from .units import redact_path, unit_name

__all__ = ["ENVIRON_KEY", "OwnershipWSGIMiddleware", "UnitOf"]

#: The environ key under which the admitted `Entry` of a request is kept: an inner
#: OwnershipWSGIMiddleware (a mounted app with its own) reuses it instead of minting again.
ENVIRON_KEY = "ownership_ctx.entry"

Environ = dict[str, Any]
#: Names a unit from its WSGI environ (the operator's choice over route templates / redaction).
UnitOf = Callable[[Environ], str]
ExcInfo = tuple[type[BaseException], BaseException, TracebackType | None]


class StartResponse(Protocol):
    def __call__(
        self, status: str, headers: list[tuple[str, str]], exc_info: ExcInfo | None = ..., /
    ) -> Callable[[bytes], object]: ...


WSGIApp = Callable[[Environ, StartResponse], Iterable[bytes]]

logger = logging.getLogger("ownership_ctx")


def _environ_key(header: str) -> str:
    return "HTTP_" + header.upper().replace("-", "_")


class OwnershipWSGIMiddleware:
    """Admit each request through the policy; bind its envelope until the response is done.

    Rejected requests get ``400`` with an ``application/problem+json`` body; with budgets
    installed (`ownership_ctx.budgets.install`), an owner over a hard limit gets ``429``
    naming the budget, with ``Retry-After`` at its period's end. ``trace_header``
    (default ``x-trace-id``; ``None`` to disable) echoes the trace id on every response.

    Units are named without the data paths carry: the hop event and admission logs use the
    path with identifier-like segments redacted (`ownership_ctx.units.redact_path`: nothing is
    routed yet), the request event the route template when the framework has one (Flask's url
    rule), else the same redacted path; ``unit_of(environ)`` replaces both. Policy
    rules match the path as received. ``keys`` default to `Keys.from_env`.
    """

    def __init__(
        self,
        app: WSGIApp,
        *,
        policy: Policy | None = None,
        keys: Keys | None = None,
        trace_header: str | None = "x-trace-id",
        unit_of: UnitOf | None = None,
    ) -> None:
        self.app = app
        self.gate = Gate(policy, keys)
        self._unit_of = unit_of
        names = self.gate.edge_carrier_names
        self._all_headers = names is None
        self._environ_keys = tuple((name, _environ_key(name)) for name in names or ())
        self._trace_header = trace_header

    def __call__(self, environ: Environ, start_response: StartResponse) -> Iterable[bytes]:
        if ENVIRON_KEY in environ:
            # An outer OwnershipWSGIMiddleware admitted this request and runs us in its
            # context: one envelope, one trace id.
            return self.app(environ, start_response)
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
        path = environ.get("PATH_INFO", "")
        unit_of = self._unit_of
        entry = context.run(
            self.gate.enter,
            carrier,
            hop="http",
            unit=path,
            edge=True,
            native=environ,
            name=redact_path(path) if unit_of is None else unit_name(unit_of, environ, path),
        )
        environ[ENVIRON_KEY] = entry
        trace = [(self._trace_header, entry.trace_id)] if self._trace_header else []
        recorder = (
            _Recorder(entry, environ, unit_of, path) if events.get_sink() is not None else None
        )
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
        # Budgets (ownership_ctx.budgets.install): a cached check; nothing when none installed.
        budgets = budget_state.active
        if budgets is not None:
            refusal = budgets.check(entry.envelope, "edge")
            if refusal is not None:
                body = refusal.problem_body(entry.trace_id)
                start_response(
                    "429 Too Many Requests",
                    [
                        ("Content-Type", PROBLEM_CONTENT_TYPE),
                        ("Content-Length", str(len(body))),
                        ("Retry-After", refusal.retry_after(time.time())),
                        *trace,
                    ],
                )
                if recorder is not None:
                    recorder.status = 429
                    recorder.finish()
                return [body]

        def start_with_trace(
            status: str, headers: list[tuple[str, str]], exc_info: ExcInfo | None = None, /
        ) -> Callable[[bytes], object]:
            if recorder is not None:
                recorder.started_response(status)
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


def route_template(environ: Environ) -> str | None:
    """The url rule that served ``environ`` (Flask, any werkzeug routing that sets
    ``request.url_rule``), or ``None``."""
    request = environ.get("werkzeug.request")
    rule = getattr(getattr(request, "url_rule", None), "rule", None)
    if not isinstance(rule, str):
        return None
    script = environ.get("SCRIPT_NAME", "")  # a mount (DispatcherMiddleware): redacted
    return redact_path(script) + rule if script else rule


class _Recorder:
    """Collects a request's status and latency for its request event (when a sink is set)."""

    __slots__ = ("entry", "environ", "method", "path", "route", "started", "status", "unit_of")

    def __init__(self, entry: Entry, environ: Environ, unit_of: UnitOf | None, path: str) -> None:
        self.entry = entry
        self.environ = environ
        self.unit_of = unit_of
        self.path = path
        self.method = str(environ.get("REQUEST_METHOD", ""))
        self.started = time.perf_counter()
        self.status: int | None = None
        self.route: str | None = None

    def started_response(self, status: str) -> None:
        self.status = int(status[:3]) if status[:3].isdigit() else None
        # Now, while the framework still holds its request: Flask drops it from the environ
        # when its request context ends, before the body is sent.
        unit_of = self.unit_of
        environ = self.environ
        self.route = (
            route_template(environ) if unit_of is None else unit_name(unit_of, environ, self.path)
        )

    def finish(self) -> None:
        latency_ms = (time.perf_counter() - self.started) * 1000
        route = self.route
        if route is None and self.unit_of is not None:
            route = unit_name(self.unit_of, self.environ, self.path)
        events.emit(self.entry.request_event(self.method, self.status, latency_ms, route=route))


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
