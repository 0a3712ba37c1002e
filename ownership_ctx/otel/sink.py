"""`OwnershipSinkInstrumentor` (entry point ``ownership_ctx_sink``): events land in the store.

Installs the sink ``OWNERSHIP_CTX_SINK_URL`` names (else the library's default store) when the
process has none, so that hop and request events are written with no code change. Queued events
are written at exit (the pipeline's exit hook) and at the shutdown hooks the adapters already
flush at: ASGI lifespan shutdown, Celery worker (and prefork child) shutdown, Dramatiq worker
shutdown. An application that installs its own sink later replaces this one.
"""

from __future__ import annotations

import logging
from collections.abc import Collection
from typing import Any

from opentelemetry.instrumentation.instrumentor import BaseInstrumentor  # type: ignore[attr-defined]

from .. import events

__all__ = ["OwnershipSinkInstrumentor"]

logger = logging.getLogger("ownership_ctx")


class OwnershipSinkInstrumentor(BaseInstrumentor):  # type: ignore[misc]
    """Installs the configured event sink (``sinks.install()``) unless one is set already."""

    _installed: Any = None

    def instrumentation_dependencies(self) -> Collection[str]:
        return ()

    def _instrument(self, **kwargs: Any) -> None:
        if events.get_sink() is not None:
            return
        from .. import sinks

        try:
            type(self)._installed = sinks.install(kwargs.get("url"))
        except Exception as exc:  # never stop the host, nor the other instrumentations
            logger.error(
                "ownership_ctx: no event sink installed (OWNERSHIP_CTX_SINK_URL): %s: %s",
                type(exc).__name__,
                exc,
            )

    def _uninstrument(self, **kwargs: Any) -> None:
        installed, type(self)._installed = type(self)._installed, None
        if installed is not None and events.get_sink() is installed:
            events.set_sink(None)
            close = getattr(installed, "close", None)
            if close is not None:
                close()
