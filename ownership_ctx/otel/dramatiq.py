"""`OwnershipDramatiqInstrumentor` (entry point ``ownership_ctx_dramatiq``): the Dramatiq
`OwnershipMiddleware` on every broker created afterwards.

When the application adds its own `ownership_ctx.dramatiq.OwnershipMiddleware` to a broker, the
one the instrumentor added leaves that broker first: one middleware per broker, and the
application's policy decides.
"""

from __future__ import annotations

import importlib.util
from collections.abc import Collection
from typing import Any

from opentelemetry.instrumentation.instrumentor import BaseInstrumentor  # type: ignore[attr-defined]

from .config import auto_settings, left_off_on_error

__all__ = ["OwnershipDramatiqInstrumentor"]

_AUTO_ATTRIBUTE = "_ownership_ctx_auto"


class OwnershipDramatiqInstrumentor(BaseInstrumentor):  # type: ignore[misc]
    """Adds `ownership_ctx.dramatiq.OwnershipMiddleware` to every Dramatiq broker created
    afterwards (it places itself first, where it must be), unless the broker has one.

    Settings as for `OwnershipASGIInstrumentor` (observe unless configured).
    """

    _originals: dict[str, Any] = {}  # noqa: RUF012 - class-level: one patch per process

    def instrumentation_dependencies(self) -> Collection[str]:
        return ("dramatiq >= 1.17",)

    def _instrument(self, **kwargs: Any) -> None:
        if self._originals or importlib.util.find_spec("dramatiq") is None:
            return
        settings = auto_settings("ownership_ctx_dramatiq", kwargs)
        if settings is None:
            return
        with left_off_on_error("ownership_ctx_dramatiq"):
            from dramatiq.broker import Broker

            from ..dramatiq import OwnershipMiddleware

            original_init = Broker.__init__
            original_add = Broker.add_middleware

            def is_ours(middleware: Any) -> bool:
                return isinstance(middleware, OwnershipMiddleware)

            def init_with_ownership(broker: Any, *args: Any, **init_kwargs: Any) -> None:
                original_init(broker, *args, **init_kwargs)
                if not any(is_ours(m) for m in broker.middleware):
                    middleware = OwnershipMiddleware(policy=settings.policy, keys=settings.keys)
                    setattr(middleware, _AUTO_ATTRIBUTE, True)
                    original_add(broker, middleware)

            def add_middleware(broker: Any, middleware: Any, **add_kwargs: Any) -> None:
                if is_ours(middleware) and not getattr(middleware, _AUTO_ATTRIBUTE, False):
                    broker.middleware = [
                        m for m in broker.middleware if not getattr(m, _AUTO_ATTRIBUTE, False)
                    ]
                original_add(broker, middleware, **add_kwargs)

            self._originals.update(init=original_init, add=original_add)
            Broker.__init__ = init_with_ownership  # type: ignore[method-assign, assignment]
            Broker.add_middleware = add_middleware  # type: ignore[method-assign, assignment]

    def _uninstrument(self, **kwargs: Any) -> None:
        from dramatiq.broker import Broker

        if self._originals:
            Broker.__init__ = self._originals["init"]  # type: ignore[method-assign]
            Broker.add_middleware = self._originals["add"]  # type: ignore[method-assign]
            self._originals.clear()
