"""OpenTelemetry alongside ownership_ctx: one trace id end to end, ownership on every span,
ownership in OpenTelemetry baggage downstream, and `opentelemetry-instrument` enabling us."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import textwrap
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest
from opentelemetry import baggage, propagate, trace
from opentelemetry.baggage.propagation import W3CBaggagePropagator
from opentelemetry.instrumentation.asgi import OpenTelemetryMiddleware
from opentelemetry.instrumentation.httpx import HTTPXClientInstrumentor
from opentelemetry.propagators.composite import CompositePropagator
from opentelemetry.sdk.trace import TracerProvider
from opentelemetry.sdk.trace.export import SimpleSpanProcessor
from opentelemetry.sdk.trace.export.in_memory_span_exporter import InMemorySpanExporter
from opentelemetry.trace.propagation.tracecontext import TraceContextTextMapPropagator
from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import JSONResponse
from starlette.routing import Route

from ownership_ctx import Envelope, Keys, Policy, bind, current
from ownership_ctx.asgi import OwnershipMiddleware
from ownership_ctx.otel import (
    OwnershipIdGenerator,
    OwnershipInstrumentor,
    OwnershipPropagator,
    OwnershipSpanProcessor,
)
from tests.support.servers import uvicorn_server

KEYS = Keys(signing_keys=(b"otel-test-signing-key-01",))
CALLER = {"x-owner-team": "support", "x-workflow-id": "ticket-triage", "x-feature": "summarize"}
OWNERSHIP_ATTRIBUTES = {
    "ownership.owner_team": "support",
    "ownership.workflow_id": "ticket-triage",
    "ownership.feature": "summarize",
    "ownership.attribution": "attributed",
}


@pytest.fixture
def otel() -> Iterator[tuple[TracerProvider, InMemorySpanExporter]]:
    exporter = InMemorySpanExporter()
    provider = TracerProvider(id_generator=OwnershipIdGenerator())
    provider.add_span_processor(SimpleSpanProcessor(exporter))
    OwnershipInstrumentor().instrument(tracer_provider=provider)
    previous = propagate.get_global_textmap()
    propagate.set_global_textmap(
        CompositePropagator(
            [
                TraceContextTextMapPropagator(),
                W3CBaggagePropagator(),
                OwnershipPropagator(allow_hosts=["127.0.0.1"], keys=KEYS),
            ]
        )
    )
    try:
        yield provider, exporter
    finally:
        propagate.set_global_textmap(previous)
        OwnershipInstrumentor().uninstrument()


def both(app: Any, provider: TracerProvider, ours_outside: bool, policy: Policy) -> Any:
    if ours_outside:
        return OwnershipMiddleware(
            OpenTelemetryMiddleware(app, tracer_provider=provider), policy=policy, keys=KEYS
        )
    return OpenTelemetryMiddleware(
        OwnershipMiddleware(app, policy=policy, keys=KEYS), tracer_provider=provider
    )


@pytest.mark.parametrize("ours_outside", [False, True], ids=["otel-outermost", "ours-outermost"])
def test_one_trace_id_and_ownership_on_every_span(
    otel: tuple[TracerProvider, InMemorySpanExporter], ours_outside: bool
) -> None:
    provider, exporter = otel
    seen: dict[str, Any] = {}

    async def b_handler(request: Request) -> JSONResponse:
        envelope = current()
        seen["b"] = envelope.as_dict() if envelope else None
        seen["b_otel_baggage"] = dict(baggage.get_all())
        seen["b_span_trace"] = format(trace.get_current_span().get_span_context().trace_id, "032x")
        return JSONResponse({})

    async def a_handler(request: Request) -> JSONResponse:
        envelope = current()
        seen["a"] = envelope.as_dict() if envelope else None
        tracer = provider.get_tracer("llm")
        with tracer.start_as_current_span("chat gpt-4o"):
            async with httpx.AsyncClient() as client:  # no ownership transport: OTel carries it
                HTTPXClientInstrumentor().instrument_client(client, tracer_provider=provider)
                await client.get(request.query_params["b"])
        return JSONResponse({})

    service_b = both(
        Starlette(routes=[Route("/b", b_handler)]),
        provider,
        ours_outside,
        Policy(mode="enforce", trust="signed"),
    )
    service_a = both(Starlette(routes=[Route("/a", a_handler)]), provider, ours_outside, Policy())
    with uvicorn_server(service_a) as a, uvicorn_server(service_b) as b:
        response = httpx.get(f"{a}/a", params={"b": f"{b}/b"}, headers=CALLER)
    assert response.status_code == 200

    trace_id = seen["a"]["trace_id"]
    assert seen["b"] == seen["a"] == {**CALLER_FIELDS, "trace_id": trace_id}
    assert seen["b_span_trace"] == trace_id
    assert seen["b_otel_baggage"]["ownership.owner_team"] == "support"
    assert seen["b_otel_baggage"]["ownership.trace_id"] == trace_id

    spans = exporter.get_finished_spans()
    assert len(spans) >= 6  # server + send/receive spans on both sides, LLM span, client span
    for span in spans:
        assert format(span.context.trace_id, "032x") == trace_id, span.name
        attributes = dict(span.attributes or {})
        assert {k: attributes.get(k) for k in OWNERSHIP_ATTRIBUTES} == OWNERSHIP_ATTRIBUTES, (
            span.name
        )


CALLER_FIELDS = {
    "owner_team": "support",
    "workflow_id": "ticket-triage",
    "feature": "summarize",
    "attribution": "attributed",
}


def test_propagator_sends_only_to_allowed_hosts() -> None:
    propagator = OwnershipPropagator(allow_hosts=["*.svc.internal"])
    envelope = Envelope(trace_id="ab" * 16, owner_team="search")
    with bind(envelope):
        inside = httpx.Headers({"host": "router.svc.internal:8080", "baggage": "k=v"})
        propagator.inject(inside)
        outside = httpx.Headers({"host": "api.openai.com"})
        propagator.inject(outside)
        no_host: dict[str, str] = {}
        propagator.inject(no_host)  # e.g. a message broker's headers: unknown destination
    assert (
        inside["baggage"].startswith("k=v,ownership.v=1,")
        and "owner_team=search" in inside["baggage"]
    )
    assert "baggage" not in outside and no_host == {}


def test_span_processor_annotates_only_while_bound() -> None:
    exporter = InMemorySpanExporter()
    provider = TracerProvider()
    provider.add_span_processor(OwnershipSpanProcessor())
    provider.add_span_processor(SimpleSpanProcessor(exporter))
    tracer = provider.get_tracer("t")
    with bind(Envelope(trace_id="cd" * 16, owner_team="search", extras={"cost_center": "c1"})):
        tracer.start_span("inside").end()
    tracer.start_span("outside").end()
    inside, outside = exporter.get_finished_spans()
    assert dict(inside.attributes or {}) == {
        "ownership.owner_team": "search",
        "ownership.extra.cost_center": "c1",
        "ownership.attribution": "attributed",
    }
    assert not outside.attributes


APP = """
import json
from opentelemetry import trace
from starlette.applications import Starlette
from starlette.responses import JSONResponse
from starlette.routing import Route
from starlette.testclient import TestClient

from ownership_ctx import current


async def handler(request):
    with trace.get_tracer("app").start_as_current_span("llm call") as span:
        envelope = current()
        return JSONResponse({
            "envelope": envelope.as_dict() if envelope else None,
            "span_attributes": dict(span.attributes),
            "span_trace_id": format(span.get_span_context().trace_id, "032x"),
        })


app = Starlette(routes=[Route("/", handler)])  # no ownership_ctx code: instrumented from outside
response = TestClient(app).get("/", headers={"x-owner-team": "search"})
trace_header = response.headers.get("x-trace-id")
print(json.dumps({"status": response.status_code, "trace_header": trace_header, **response.json()}))
"""


def test_opentelemetry_instrument_enables_our_instrumentors(tmp_path: Path) -> None:
    script = tmp_path / "app.py"
    script.write_text(textwrap.dedent(APP))
    env = {
        **os.environ,
        "OTEL_TRACES_EXPORTER": "none",
        "OTEL_METRICS_EXPORTER": "none",
        "OTEL_LOGS_EXPORTER": "none",
        "OTEL_PYTHON_ID_GENERATOR": "ownership",
        "OWNERSHIP_CTX_MODE": "quarantine",
        "OWNERSHIP_CTX_TRACE_HEADER": "x-trace-id",
        "OWNERSHIP_CTX_SINK_URL": "memory://",
    }
    instrument = Path(sys.executable).parent / "opentelemetry-instrument"
    result = subprocess.run(
        [str(instrument), sys.executable, str(script)],
        capture_output=True,
        text=True,
        env=env,
        timeout=120,
        check=False,
        cwd=tmp_path,
    )
    assert result.returncode == 0, result.stderr
    out = json.loads(result.stdout.strip().splitlines()[-1])
    envelope = out["envelope"]
    assert out["status"] == 200
    assert envelope["owner_team"] == "search" and envelope["attribution"] == "quarantined"
    assert out["trace_header"] == envelope["trace_id"] == out["span_trace_id"]
    assert out["span_attributes"]["ownership.owner_team"] == "search"


CELERY_APP = """
import json
from celery import Celery
from ownership_ctx import Envelope, bind

app = Celery("instrumented", broker="memory://")  # no ownership_ctx code: instrumented from outside


@app.task(name="who")
def who():
    return None


with bind(Envelope(trace_id="ab" * 16, owner_team="search", workflow_id="w", feature="f")):
    who.delay()
with app.connection() as connection:
    message = connection.SimpleQueue("celery").get(timeout=5)
    print(json.dumps({"header": message.headers.get("ownership_envelope")}))
"""

DRAMATIQ_APP = """
import json
import dramatiq
from dramatiq.brokers.stub import StubBroker
from ownership_ctx import Envelope, bind

broker = StubBroker()  # no ownership_ctx code: instrumented from outside
dramatiq.set_broker(broker)


@dramatiq.actor
def who():
    pass


with bind(Envelope(trace_id="ab" * 16, owner_team="search", workflow_id="w", feature="f")):
    who.send()
queued = dramatiq.Message.decode(broker.queues["default"].get(timeout=5))
print(json.dumps({"header": queued.options.get("ownership_envelope"),
                  "first": type(broker.middleware[0]).__module__}))
"""


@pytest.mark.parametrize("app", [CELERY_APP, DRAMATIQ_APP], ids=["celery", "dramatiq"])
def test_opentelemetry_instrument_enables_queue_hooks(tmp_path: Path, app: str) -> None:
    script = tmp_path / "app.py"
    script.write_text(textwrap.dedent(app))
    env = {
        **os.environ,
        "OTEL_TRACES_EXPORTER": "none",
        "OTEL_METRICS_EXPORTER": "none",
        "OTEL_LOGS_EXPORTER": "none",
        "OWNERSHIP_CTX_SINK_URL": "memory://",
    }
    instrument = Path(sys.executable).parent / "opentelemetry-instrument"
    result = subprocess.run(
        [str(instrument), sys.executable, str(script)],
        capture_output=True,
        text=True,
        env=env,
        timeout=120,
        check=False,
        cwd=tmp_path,
    )
    assert result.returncode == 0, result.stderr
    out = json.loads(result.stdout.strip().splitlines()[-1])
    assert out["header"].startswith("ownership.v=1,ownership.trace_id=" + "ab" * 16)
    assert "ownership.owner_team=search" in out["header"]
    if "first" in out:
        assert out["first"] == "ownership_ctx.dramatiq"
