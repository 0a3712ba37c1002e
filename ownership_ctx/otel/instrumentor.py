"""`OwnershipInstrumentor` (entry point ``ownership_ctx``): ownership on every span, and edge
trace ids minted from the active span."""

from __future__ import annotations

from collections.abc import Collection
from typing import Any

from opentelemetry import trace
from opentelemetry.instrumentation.instrumentor import BaseInstrumentor  # type: ignore[attr-defined]

from ..hooks import set_enter_hook, set_trace_id_source
from .spans import OwnershipSpanProcessor, active_trace_id, annotate_active_span

__all__ = ["OwnershipInstrumentor"]


class OwnershipInstrumentor(BaseInstrumentor):  # type: ignore[misc]
    """Ownership on every span, and edge trace ids minted from the active span.

    Adds `OwnershipSpanProcessor` to the global SDK tracer provider (or ``tracer_provider=``),
    annotates spans that were already active when an envelope was bound, and makes the gate
    mint trace ids from the active span.
    """

    _processor: OwnershipSpanProcessor | None = None

    def instrumentation_dependencies(self) -> Collection[str]:
        return ()

    def _instrument(self, **kwargs: Any) -> None:
        provider = kwargs.get("tracer_provider") or trace.get_tracer_provider()
        add = getattr(provider, "add_span_processor", None)
        if add is not None:
            self._processor = OwnershipSpanProcessor()
            add(self._processor)
        set_trace_id_source(active_trace_id)
        set_enter_hook(annotate_active_span)

    def _uninstrument(self, **kwargs: Any) -> None:
        set_trace_id_source(None)
        set_enter_hook(None)
        # SDK providers cannot remove a processor; ours becomes a no-op instead.
        if self._processor is not None:
            self._processor.on_start = lambda span, parent_context=None: None  # type: ignore[method-assign]
            self._processor = None
