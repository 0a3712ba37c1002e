"""OpenTelemetry interoperability: one trace id, ownership on every span and in baggage.

- `OwnershipSpanProcessor` copies the bound envelope onto every span started while it is bound,
  so spans from any instrumentation (HTTP, database, LLM instrumentations) are attributable.
- One trace id end to end: `OwnershipIdGenerator` gives root spans the bound envelope's trace
  id, and `OwnershipInstrumentor` makes the edge mint trace ids from the active span, whichever
  of the two middlewares runs first.
- `OwnershipPropagator` writes the envelope into the outgoing ``baggage`` header wherever
  OpenTelemetry propagates context, to allowed hosts only.
- The instrumentors (``opentelemetry_instrumentor`` entry points) let ``opentelemetry-instrument``
  enable all of it with no code change. With no ownership configuration they observe and never
  reject; see docs/opentelemetry.md.

One module per part, each importing only what it needs: OpenTelemetry loads the propagator
and the id generator from inside its own package initialisation (``opentelemetry.propagate``,
the SDK configurator), so those two modules must not import ``opentelemetry.instrumentation``.
For the same reason this package imports its modules on first attribute access only.
"""

from __future__ import annotations

import importlib
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from .asgi import OwnershipASGIInstrumentor
    from .celery import OwnershipCeleryInstrumentor
    from .dramatiq import OwnershipDramatiqInstrumentor
    from .flask import OwnershipFlaskInstrumentor
    from .id_generator import OwnershipIdGenerator
    from .instrumentor import OwnershipInstrumentor
    from .metering import OwnershipMeteringInstrumentor
    from .propagator import OwnershipPropagator
    from .sink import OwnershipSinkInstrumentor
    from .spans import (
        ATTRIBUTE_PREFIX,
        OwnershipSpanProcessor,
        active_trace_id,
        annotate_active_span,
        span_attributes,
    )

__all__ = [
    "ATTRIBUTE_PREFIX",
    "OwnershipASGIInstrumentor",
    "OwnershipCeleryInstrumentor",
    "OwnershipDramatiqInstrumentor",
    "OwnershipFlaskInstrumentor",
    "OwnershipIdGenerator",
    "OwnershipInstrumentor",
    "OwnershipMeteringInstrumentor",
    "OwnershipPropagator",
    "OwnershipSinkInstrumentor",
    "OwnershipSpanProcessor",
    "active_trace_id",
    "annotate_active_span",
    "span_attributes",
]

_MODULE_OF = {
    "ATTRIBUTE_PREFIX": "spans",
    "OwnershipASGIInstrumentor": "asgi",
    "OwnershipCeleryInstrumentor": "celery",
    "OwnershipDramatiqInstrumentor": "dramatiq",
    "OwnershipFlaskInstrumentor": "flask",
    "OwnershipIdGenerator": "id_generator",
    "OwnershipInstrumentor": "instrumentor",
    "OwnershipMeteringInstrumentor": "metering",
    "OwnershipPropagator": "propagator",
    "OwnershipSinkInstrumentor": "sink",
    "OwnershipSpanProcessor": "spans",
    "active_trace_id": "spans",
    "annotate_active_span": "spans",
    "span_attributes": "spans",
}


def __getattr__(name: str) -> Any:
    module = _MODULE_OF.get(name)
    if module is None:
        raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
    value = getattr(importlib.import_module(f"{__name__}.{module}"), name)
    globals()[name] = value
    return value


def __dir__() -> list[str]:
    return sorted({*globals(), *__all__})
