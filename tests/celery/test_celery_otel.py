"""OpenTelemetry's Celery instrumentation on at the same time as ours, on both sides.

The worker enables it in ``worker_process_init`` (prefork children), as OpenTelemetry asks.
Both our envelope and OpenTelemetry's trace context and baggage must arrive intact.
"""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any

import pytest
from opentelemetry import baggage, context
from opentelemetry.instrumentation.celery import CeleryInstrumentor
from opentelemetry.sdk.trace import TracerProvider

from ownership_ctx import bind
from tests.celery.support import make_envelope, new_wf, wait_records


@pytest.fixture
def instrumented() -> Iterator[TracerProvider]:
    provider = TracerProvider()
    CeleryInstrumentor().instrument(tracer_provider=provider)
    try:
        yield provider
    finally:
        CeleryInstrumentor().uninstrument()


@pytest.mark.brokers
def test_envelope_and_otel_context_both_arrive(
    worker_for: Any, instrumented: TracerProvider
) -> None:
    w = worker_for("redis-prefork")
    assert w.config.otel
    node = w.app.tasks["oc.q.node"]
    wf, env = new_wf("otel"), make_envelope("otel")
    tracer = instrumented.get_tracer("tests")
    token = context.attach(baggage.set_baggage("segment", "gold"))
    try:
        with tracer.start_as_current_span("caller") as span, bind(env):
            node.delay({"wf": wf, "label": "a", "spawn": [{"wf": wf, "label": "child"}]})
            caller_trace = format(span.get_span_context().trace_id, "032x")
    finally:
        context.detach(token)

    recs = {r["label"]: r for r in wait_records({wf: 2})[wf]}
    for label in ("a", "child"):
        assert recs[label]["env"] == env.as_dict()
        assert recs[label]["otel_trace_id"] == caller_trace
        assert recs[label]["otel_baggage"] == {"segment": "gold"}
