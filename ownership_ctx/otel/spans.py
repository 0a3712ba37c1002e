"""Ownership on spans: attributes from the bound envelope, and the active span's trace id."""

from __future__ import annotations

from typing import Any

from opentelemetry import trace
from opentelemetry.context import Context
from opentelemetry.sdk.trace import ReadableSpan, Span, SpanProcessor

from ..context import current
from ..gate import Entry

__all__ = [
    "ATTRIBUTE_PREFIX",
    "OwnershipSpanProcessor",
    "active_trace_id",
    "annotate_active_span",
    "span_attributes",
]

ATTRIBUTE_PREFIX = "ownership."


def span_attributes(envelope: Any) -> dict[str, str]:
    """``ownership.*`` span attributes for an envelope (trace id excluded: the span has it)."""
    return {
        ATTRIBUTE_PREFIX + key: value
        for key, value in envelope.as_dict().items()
        if key != "trace_id"
    }


def active_trace_id() -> str | None:
    """The trace id of the active OpenTelemetry span, as 32 hex, or ``None``."""
    context = trace.get_current_span().get_span_context()
    return format(context.trace_id, "032x") if context.is_valid else None


def annotate_active_span(entry: Entry) -> None:
    """Put the admitted envelope on the span that was already active when it was bound (the
    server span of an OpenTelemetry middleware running outside ours)."""
    span = trace.get_current_span()
    if entry.envelope is not None and span.is_recording():
        span.set_attributes(span_attributes(entry.envelope))


class OwnershipSpanProcessor(SpanProcessor):
    """Adds the bound envelope's fields to every span when it starts."""

    def on_start(self, span: Span, parent_context: Context | None = None) -> None:
        envelope = current()
        if envelope is not None:
            span.set_attributes(span_attributes(envelope))

    def on_end(self, span: ReadableSpan) -> None:
        pass

    def shutdown(self) -> None:
        pass

    def force_flush(self, timeout_millis: int = 30000) -> bool:
        return True
