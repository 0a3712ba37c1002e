"""`OwnershipCeleryInstrumentor` (entry point ``ownership_ctx_celery``): the Celery hooks on every
Celery app created afterwards.

`ownership_ctx.celery.install` is idempotent per app and the last call wins, so an app that
installs the hooks itself (or a worker using ``install_on_worker``) replaces the instrumentor's
policy with its own: still one set of hooks.
"""

from __future__ import annotations

import importlib.util
from collections.abc import Collection
from typing import Any

from opentelemetry.instrumentation.instrumentor import BaseInstrumentor  # type: ignore[attr-defined]

from .config import auto_settings, left_off_on_error

__all__ = ["OwnershipCeleryInstrumentor"]


class OwnershipCeleryInstrumentor(BaseInstrumentor):  # type: ignore[misc]
    """Installs the Celery hooks (`ownership_ctx.celery.install`) on every Celery app created
    afterwards: publishers carry the envelope, workers (prefork children included) bind it.

    Settings as for `OwnershipASGIInstrumentor` (observe unless configured).
    """

    _original_init: Any = None

    def instrumentation_dependencies(self) -> Collection[str]:
        return ("celery >= 5.3",)

    def _instrument(self, **kwargs: Any) -> None:
        cls = type(self)
        if cls._original_init is not None or importlib.util.find_spec("celery") is None:
            return
        settings = auto_settings("ownership_ctx_celery", kwargs)
        if settings is None:
            return
        with left_off_on_error("ownership_ctx_celery"):
            from celery import Celery

            from ..celery import install

            original = Celery.__init__
            cls._original_init = original

            def init_with_ownership(app: Any, *args: Any, **init_kwargs: Any) -> None:
                original(app, *args, **init_kwargs)
                install(app, policy=settings.policy, keys=settings.keys)

            Celery.__init__ = init_with_ownership

    def _uninstrument(self, **kwargs: Any) -> None:
        from celery import Celery

        cls = type(self)
        if cls._original_init is not None:
            Celery.__init__ = cls._original_init
            cls._original_init = None
