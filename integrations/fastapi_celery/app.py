"""Gateway -> router -> Celery worker -> LLM provider, with ownership end to end.

Three processes share this module:

    uvicorn integrations.fastapi_celery.app:gateway --port 8000   # the public edge
    uvicorn integrations.fastapi_celery.app:router --port 8001    # internal, trusts signed only
    celery -A integrations.fastapi_celery.app worker -P threads   # runs the LLM calls

Configuration (environment): ``CHAIN_BROKER_URL`` (default Redis db 3), ``ROUTER_URL``,
``OPENAI_BASE_URL`` (the provider, e.g. the fake one), ``OWNERSHIP_CTX_SIGNING_KEYS`` (the
same in all three), ``OWNERSHIP_CTX_SINK_URL`` (where events go), ``CHAIN_LOG`` (worker log
file, JSON lines), ``CHAIN_SPANS`` (set: OpenTelemetry on, spans as JSON lines there).
"""

from __future__ import annotations

import inspect
import json
import logging
import os
from typing import Annotated, Any

import httpx
import structlog
from celery import Celery
from celery.signals import worker_process_shutdown, worker_shutdown
from fastapi import Depends, FastAPI

from ownership_ctx import Envelope, Keys, Policy, Rule, current
from ownership_ctx import celery as ownership_celery
from ownership_ctx.asgi import OwnershipMiddleware
from ownership_ctx.http import AsyncOwnershipTransport
from ownership_ctx.logs import OwnershipLogFilter, add_ownership
from ownership_ctx.sinks import config as sinks

KEYS = Keys.from_env()
INTERNAL_HOSTS = ["127.0.0.1", "localhost", "*.svc.internal"]
ROUTER_URL = os.environ.get("ROUTER_URL", "http://127.0.0.1:8001")
MODEL = "gpt-4o-mini"

sink = sinks.install()  # OWNERSHIP_CTX_SINK_URL, else a local SQLite file


# -- logs: every line carries the envelope -------------------------------------------------


class JsonLines(logging.Formatter):
    def format(self, record: logging.LogRecord) -> str:
        fields = ("trace_id", "owner_team", "workflow_id", "feature", "attribution")
        line = {"logger": record.name, "message": record.getMessage()}
        line.update({k: getattr(record, k) for k in fields if hasattr(record, k)})
        return json.dumps(line)


def configure_logs() -> None:
    path = os.environ.get("CHAIN_LOG")
    handler: logging.Handler = logging.FileHandler(path) if path else logging.StreamHandler()
    handler.addFilter(OwnershipLogFilter())
    handler.setFormatter(JsonLines())
    logging.getLogger().addHandler(handler)
    logging.getLogger().setLevel(logging.INFO)
    structlog.configure(
        processors=[add_ownership, structlog.stdlib.render_to_log_kwargs],
        logger_factory=structlog.stdlib.LoggerFactory(),
    )


configure_logs()


# -- OpenTelemetry (optional): one trace id, ownership on every span -------------------------


def configure_otel() -> Any:
    path = os.environ.get("CHAIN_SPANS")
    if not path:
        return None
    from opentelemetry import trace
    from opentelemetry.instrumentation.celery import CeleryInstrumentor
    from opentelemetry.instrumentation.httpx import HTTPXClientInstrumentor
    from opentelemetry.sdk.trace import TracerProvider
    from opentelemetry.sdk.trace.export import SimpleSpanProcessor, SpanExporter, SpanExportResult

    from ownership_ctx.otel import OwnershipIdGenerator, OwnershipInstrumentor

    class JsonLinesExporter(SpanExporter):
        def export(self, spans: Any) -> SpanExportResult:
            with open(path, "a") as out:
                for span in spans:
                    out.write(
                        json.dumps(
                            {
                                "name": span.name,
                                "trace_id": format(span.context.trace_id, "032x"),
                                "attributes": dict(span.attributes or {}),
                            }
                        )
                        + "\n"
                    )
            return SpanExportResult.SUCCESS

    provider = TracerProvider(id_generator=OwnershipIdGenerator())
    provider.add_span_processor(SimpleSpanProcessor(JsonLinesExporter()))
    trace.set_tracer_provider(provider)
    OwnershipInstrumentor().instrument(tracer_provider=provider)
    HTTPXClientInstrumentor().instrument(tracer_provider=provider)
    CeleryInstrumentor().instrument(tracer_provider=provider)
    return provider


tracer_provider = configure_otel()


def fastapi_app() -> FastAPI:
    # Recent FastAPI versions trace requests themselves; with OpenTelemetry's ASGI middleware
    # around the app that would be a second server span, so theirs is turned off here.
    if tracer_provider is not None and "telemetry" in inspect.signature(FastAPI).parameters:
        return FastAPI(telemetry={"tracing": False})
    return FastAPI()


def with_otel(app: Any) -> Any:
    if tracer_provider is None:
        return app
    from opentelemetry.instrumentation.asgi import OpenTelemetryMiddleware

    return OpenTelemetryMiddleware(app, tracer_provider=tracer_provider)


# -- the worker ---------------------------------------------------------------------------

celery_app = Celery("chain", broker=os.environ.get("CHAIN_BROKER_URL", "redis://127.0.0.1:6379/3"))
celery_app.conf.update(
    task_default_queue=os.environ.get("CHAIN_QUEUE", "chain"),
    worker_hijack_root_logger=False,  # keep our handler (and its ownership filter)
)
ownership_celery.install(celery_app, policy=Policy(mode="quarantine"), keys=KEYS)
log = structlog.get_logger("chain.worker")


@celery_app.task(name="chain.summarize")
def summarize(ticket: str) -> dict[str, Any]:
    from openai import OpenAI

    from ownership_ctx import metering

    log.info("summarizing ticket", ticket=ticket)
    logging.getLogger("chain.worker").info("calling the model")
    client = metering.instrument(OpenAI(api_key="sk-test", max_retries=0))
    reply = client.chat.completions.create(
        model=MODEL, messages=[{"role": "user", "content": f"Summarize ticket {ticket}"}]
    )
    envelope = current()
    return {"envelope": envelope.as_dict() if envelope else None, "id": reply.id}


@worker_shutdown.connect
@worker_process_shutdown.connect
def flush_events(**_: Any) -> None:
    close = getattr(sink, "close", None)
    if close is not None:
        close()


# -- the router: internal, trusts signed envelopes only ------------------------------------

router_api = fastapi_app()


@router_api.get("/health")
def router_health() -> dict[str, str]:
    return {"status": "ok"}


@router_api.post("/route/{ticket}")
def route(ticket: str, envelope: Annotated[Envelope | None, Depends(current)]) -> dict[str, Any]:
    logging.getLogger("chain.router").info("routing ticket %s", ticket)
    result = summarize.delay(ticket)
    return {"envelope": envelope.as_dict() if envelope else None, "task_id": result.id}


router_api.add_middleware(
    OwnershipMiddleware,
    policy=Policy(mode="quarantine", trust="signed", rules=(Rule("/health", required=()),)),
    keys=KEYS,
)
router = with_otel(router_api)


# -- the gateway: the public edge --------------------------------------------------------

gateway_api = fastapi_app()


@gateway_api.get("/health")
def gateway_health() -> dict[str, str]:
    return {"status": "ok"}


@gateway_api.post("/tickets/{ticket}/summarize")
async def summarize_ticket(ticket: str) -> dict[str, Any]:
    transport = AsyncOwnershipTransport(allow_hosts=INTERNAL_HOSTS, keys=KEYS)
    async with httpx.AsyncClient(transport=transport, timeout=10) as client:
        if tracer_provider is not None:
            from opentelemetry.instrumentation.httpx import HTTPXClientInstrumentor

            HTTPXClientInstrumentor().instrument_client(client, tracer_provider=tracer_provider)
        response = await client.post(f"{ROUTER_URL}/route/{ticket}")
    return {"router": response.json()}


gateway_api.add_middleware(
    OwnershipMiddleware,
    policy=Policy(mode="enforce", rules=(Rule("/health", required=()),)),
    keys=KEYS,
)
gateway = with_otel(gateway_api)
