"""`OwnershipASGIInstrumentor` (entry point ``ownership_ctx_asgi``): `OwnershipMiddleware` in
every Starlette / FastAPI application that does not install it itself.

The middleware joins the application's own middleware list when Starlette builds the stack
(``build_middleware_stack``, on the first request or lifespan event), so by then the app has
added whatever it adds: an app with its own `OwnershipMiddleware` is left alone, and its own
policy decides. At request time the added middleware also steps aside when an envelope is
already bound (an `OwnershipMiddleware` wrapped around the whole app, or the app mounting this
one) and when the request is routed into a mounted app that has its own `OwnershipMiddleware`.
One middleware per request, hence one hop event and one request event.
"""

from __future__ import annotations

import importlib.util
from collections.abc import Awaitable, Callable, Collection, MutableMapping, Sequence
from typing import Any

from opentelemetry.instrumentation.instrumentor import BaseInstrumentor  # type: ignore[attr-defined]

from ..asgi import OwnershipMiddleware
from ..context import current
from .config import auto_settings, left_off_on_error

__all__ = ["AutoOwnershipMiddleware", "OwnershipASGIInstrumentor"]

Scope = MutableMapping[str, Any]
Receive = Callable[[], Awaitable[MutableMapping[str, Any]]]
Send = Callable[[MutableMapping[str, Any]], Awaitable[None]]

_MAX_DEPTH = 16  # mounts within mounts; deeper trees are not searched


def _is_apps_own(candidate: Any) -> bool:
    cls = candidate if isinstance(candidate, type) else type(candidate)
    return issubclass(cls, OwnershipMiddleware) and not issubclass(cls, AutoOwnershipMiddleware)


def _owns(app: Any) -> bool:
    """``app`` enforces its own ownership: it is an `OwnershipMiddleware` the app installed, or
    a Starlette app with one in its middleware list."""
    if _is_apps_own(app):
        return True
    middleware = getattr(app, "user_middleware", None)
    return isinstance(middleware, list) and any(
        isinstance(getattr(m, "cls", None), type) and _is_apps_own(m.cls) for m in middleware
    )


def _mounted(routes: Sequence[Any]) -> list[Any]:
    from starlette.routing import Host, Mount

    return [route for route in routes if isinstance(route, (Mount, Host))]


def _owned_below(routes: Sequence[Any], depth: int = 0) -> bool:
    """Some app mounted under ``routes`` (at any depth) has its own `OwnershipMiddleware`."""
    if depth > _MAX_DEPTH:
        return False
    for route in _mounted(routes):
        if _owns(route.app) or _owned_below(getattr(route.app, "routes", ()), depth + 1):
            return True
    return False


def _routed_to_owner(routes: Sequence[Any], scope: Scope, depth: int = 0) -> bool:
    """The router would hand ``scope`` to a mounted app with its own `OwnershipMiddleware`."""
    from starlette.routing import Host, Match, Mount

    if depth > _MAX_DEPTH:
        return False
    for route in routes:
        match, child = route.matches(scope)
        if match is not Match.FULL:
            continue
        if not isinstance(route, (Mount, Host)):
            return False  # the first full match handles it, as in Starlette's router
        if _owns(route.app):
            return True
        inner = getattr(route.app, "routes", None)
        return inner is not None and _routed_to_owner(inner, {**scope, **child}, depth + 1)
    return False


class AutoOwnershipMiddleware(OwnershipMiddleware):
    """`OwnershipMiddleware` as the instrumentor adds it: steps aside for the app's own."""

    def __init__(self, app: Any, *, starlette_app: Any = None, **kwargs: Any) -> None:
        super().__init__(app, **kwargs)
        routes = getattr(starlette_app, "routes", ())
        self._routes = routes if _owned_below(routes) else None

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] in ("http", "websocket") and (
            current() is not None
            or (self._routes is not None and _routed_to_owner(self._routes, scope))
        ):
            await self.app(scope, receive, send)
            return
        await super().__call__(scope, receive, send)


def _app_classes() -> list[type[Any]]:
    """Starlette and every class above FastAPI that builds its own middleware stack.

    Through the MRO: OpenTelemetry's FastAPI instrumentation may have replaced
    ``fastapi.FastAPI`` with a subclass by now.
    """
    from starlette.applications import Starlette

    classes: list[type[Any]] = [Starlette]
    try:
        from fastapi import FastAPI
    except ImportError:
        return classes
    for cls in FastAPI.__mro__:
        if cls not in classes and issubclass(cls, Starlette):
            classes.append(cls)
    return classes


class OwnershipASGIInstrumentor(BaseInstrumentor):  # type: ignore[misc]
    """Adds `OwnershipMiddleware` to every Starlette / FastAPI app without one of its own.

    Policy from ``policy=`` or the environment (`ownership_ctx.otel.config.policy_from_env`:
    observe unless configured), keys from ``keys=`` or `Keys.from_env`, response trace header
    from ``trace_header=`` or ``OWNERSHIP_CTX_TRACE_HEADER`` (default: none added).
    """

    _originals: dict[type[Any], Any] = {}  # noqa: RUF012 - class-level: one patch per process

    def instrumentation_dependencies(self) -> Collection[str]:
        return ("starlette >= 0.37",)

    def _instrument(self, **kwargs: Any) -> None:
        if self._originals or importlib.util.find_spec("starlette") is None:
            return
        settings = auto_settings("ownership_ctx_asgi", kwargs)
        if settings is None:
            return
        from starlette.middleware import Middleware

        options = {
            "policy": settings.policy,
            "keys": settings.keys,
            "trace_header": settings.trace_header,
        }

        def wrap(original: Any) -> Any:
            def build_middleware_stack(app: Any) -> Any:
                if not any(_owns_class(m) for m in app.user_middleware):
                    # Outermost of the app's own middleware, where add_middleware puts it:
                    # the stack stays what Starlette builds (OpenTelemetry's FastAPI
                    # instrumentation rewraps it and expects Starlette's outer layer).
                    auto: Any = AutoOwnershipMiddleware
                    app.user_middleware.insert(0, Middleware(auto, starlette_app=app, **options))
                return original(app)

            build_middleware_stack.__wrapped__ = original  # type: ignore[attr-defined]
            return build_middleware_stack

        with left_off_on_error("ownership_ctx_asgi"):
            for cls in _app_classes():
                original = cls.__dict__.get("build_middleware_stack")
                if original is not None and cls not in self._originals:
                    self._originals[cls] = original
                    cls.build_middleware_stack = wrap(original)

    def _uninstrument(self, **kwargs: Any) -> None:
        for cls, original in self._originals.items():
            cls.build_middleware_stack = original
        self._originals.clear()


def _owns_class(middleware: Any) -> bool:
    cls = getattr(middleware, "cls", None)
    return isinstance(cls, type) and issubclass(cls, OwnershipMiddleware)
