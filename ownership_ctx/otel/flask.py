"""`OwnershipFlaskInstrumentor` (entry point ``ownership_ctx_flask``): `OwnershipWSGIMiddleware`
around every Flask application that does not install it itself.

Decided on each app's first request, when the app has wrapped its ``wsgi_app`` with whatever it
wraps it with: an app whose ``wsgi_app`` chain holds an `OwnershipWSGIMiddleware` is left alone,
and so is a request that arrives with an envelope already bound (a WSGI middleware around the
app, or an instrumented app dispatching to this one).
"""

from __future__ import annotations

import importlib.util
from collections.abc import Callable, Collection, Iterable
from typing import Any

from opentelemetry.instrumentation.instrumentor import BaseInstrumentor  # type: ignore[attr-defined]

from ..context import current
from ..wsgi import OwnershipWSGIMiddleware
from .config import AutoSettings, auto_settings, left_off_on_error

__all__ = ["OwnershipFlaskInstrumentor"]

_EDGE_ATTRIBUTE = "_ownership_ctx_edge"
_MAX_DEPTH = 32


def _has_own_middleware(wsgi_app: Any) -> bool:
    layer = wsgi_app
    for _ in range(_MAX_DEPTH):  # WSGI middlewares conventionally keep the next one as .app
        if isinstance(layer, OwnershipWSGIMiddleware):
            return True
        layer = getattr(layer, "app", None) or getattr(layer, "wsgi_app", None)
        if layer is None:
            return False
    return False


def _call_with_ownership(original: Callable[..., Any], settings: AutoSettings) -> Any:
    def call(app: Any, environ: dict[str, Any], start_response: Any) -> Iterable[bytes]:
        edge = app.__dict__.get(_EDGE_ATTRIBUTE)
        if edge is None:
            edge = (
                False
                if _has_own_middleware(app.wsgi_app)
                else OwnershipWSGIMiddleware(
                    app.wsgi_app,
                    policy=settings.policy,
                    keys=settings.keys,
                    trace_header=settings.trace_header,
                )
            )
            app.__dict__[_EDGE_ATTRIBUTE] = edge
        if edge is False or current() is not None:
            result: Iterable[bytes] = original(app, environ, start_response)
            return result
        return edge(environ, start_response)  # type: ignore[no-any-return]

    call.__wrapped__ = original  # type: ignore[attr-defined]
    return call


class OwnershipFlaskInstrumentor(BaseInstrumentor):  # type: ignore[misc]
    """Wraps every Flask app without its own `OwnershipWSGIMiddleware` in one.

    Settings as for `OwnershipASGIInstrumentor` (observe unless configured).
    """

    _original: Any = None

    def instrumentation_dependencies(self) -> Collection[str]:
        return ("flask >= 2.0",)

    def _instrument(self, **kwargs: Any) -> None:
        cls = type(self)
        if cls._original is not None or importlib.util.find_spec("flask") is None:
            return
        settings = auto_settings("ownership_ctx_flask", kwargs)
        if settings is None:
            return
        with left_off_on_error("ownership_ctx_flask"):
            # flask.app's class: OpenTelemetry's Flask instrumentation may have replaced
            # flask.Flask with a subclass by now.
            from flask.app import Flask

            cls._original = Flask.__dict__["__call__"]
            Flask.__call__ = _call_with_ownership(cls._original, settings)  # type: ignore[method-assign]

    def _uninstrument(self, **kwargs: Any) -> None:
        from flask.app import Flask

        cls = type(self)
        if cls._original is not None:
            Flask.__call__ = cls._original  # type: ignore[method-assign]
            cls._original = None
