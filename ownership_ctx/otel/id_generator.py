"""`OwnershipIdGenerator`: root spans started while an envelope is bound take its trace id.

Loaded by the SDK configurator for ``OTEL_PYTHON_ID_GENERATOR=ownership``: imports nothing from
``opentelemetry.instrumentation``.
"""

from __future__ import annotations

from opentelemetry.sdk.trace.id_generator import IdGenerator, RandomIdGenerator

from ..context import current

__all__ = ["OwnershipIdGenerator"]


class OwnershipIdGenerator(IdGenerator):
    """Root spans started while an envelope is bound take its trace id.

    Pass it to ``TracerProvider(id_generator=...)``, or set
    ``OTEL_PYTHON_ID_GENERATOR=ownership`` for ``opentelemetry-instrument``.
    """

    def __init__(self) -> None:
        self._random = RandomIdGenerator()

    def generate_span_id(self) -> int:
        return self._random.generate_span_id()

    def generate_trace_id(self) -> int:
        envelope = current()
        if envelope is not None:
            return int(envelope.trace_id, 16)
        return self._random.generate_trace_id()
