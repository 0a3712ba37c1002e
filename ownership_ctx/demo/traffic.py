"""Two simulated weeks of LLM traffic through every real part, on embedded defaults.

A gateway (Starlette behind `OwnershipMiddleware`) takes requests from several teams' clients.
Support's ticket triage goes through Celery (in-memory transport, a worker thread), growth's
email drafts through Dramatiq (StubBroker, a worker), search answers in the request itself.
Every provider call goes through an official SDK client, instrumented, to the fake provider
server; every event lands in a SQLite store. Built in on purpose:

- retries (scripted 429s the SDK retries), a fallback to a cheaper model after a 500, app cache
  hits, streamed answers;
- a quarantined client (an internal report job that sends no ownership);
- one broken hop: a legacy service publishes ``support.triage`` with plain kombu, without our
  hooks, so those tasks run unattributed — coverage and audit must point at it;
- support's spend jumps in the second week: more tickets, more retries, a bigger model.
"""

from __future__ import annotations

import contextlib
import functools
import random
import time
import uuid
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from typing import Any

from .. import events

DAY = 86_400.0
TEAMS = {
    "support": ("ticket-triage", "summarize"),
    "search": ("answer-questions", "answer"),
    "growth": ("lifecycle-email", "draft-email"),
}
TENANTS = ("acme-corp", "globex", "initech", "umbrella", "hooli")


DEMO_PROJECT = "proj_demo"


@dataclass
class Simulation:
    """Where the simulated clock stands, per trace: events are re-stamped with it."""

    start: float
    offsets: dict[str, float] = field(default_factory=dict)
    offset: float = 0.0

    def stamp(self, event: dict[str, Any]) -> None:
        shift = self.offsets.get(str(event.get("trace_id")), self.offset)
        event["ts"] = float(event.get("ts") or time.time()) + shift


class ShiftedSink:
    """Moves each event to simulated time, then hands it to the real sink."""

    def __init__(self, inner: events.Sink, simulation: Simulation) -> None:
        self.inner = inner
        self.simulation = simulation

    def emit(self, event: Any) -> None:
        self.simulation.stamp(event)
        self.inner.emit(event)

    def flush(self, timeout: float = 5.0) -> bool:
        flush = getattr(self.inner, "flush", None)
        return bool(flush(timeout)) if flush is not None else True


@dataclass
class Request:
    day: int
    team: str
    tenant: str
    kind: str  # "triage" | "answer" | "email" | "legacy-triage" | "internal-report"
    model: str = "gpt-4o-mini"
    retries: int = 0
    stream: bool = False
    cached: bool = False
    fallback: bool = False


def plan(days: int, seed: int) -> list[Request]:
    """The traffic, day by day. Deterministic for a seed."""
    rng = random.Random(seed)
    requests: list[Request] = []
    for day in range(days):
        second_week = day >= days // 2
        for _ in range(rng.randint(9, 11) + (8 if second_week else 0)):
            requests.append(
                Request(
                    day,
                    "support",
                    rng.choice(TENANTS),
                    "triage",
                    model="gpt-4o" if second_week and rng.random() < 0.6 else "gpt-4o-mini",
                    retries=rng.choice((0, 1, 2)) if second_week else int(rng.random() < 0.1),
                )
            )
        for _ in range(rng.randint(7, 9)):
            requests.append(
                Request(
                    day,
                    "search",
                    rng.choice(TENANTS),
                    "answer",
                    model="claude-3-5-haiku-latest",
                    stream=rng.random() < 0.4,
                    cached=rng.random() < 0.25,
                )
            )
        for _ in range(rng.randint(4, 6)):
            requests.append(
                Request(day, "growth", rng.choice(TENANTS), "email", fallback=rng.random() < 0.15)
            )
        requests.append(Request(day, "support", rng.choice(TENANTS), "legacy-triage"))
        if day % 2 == 0:
            requests.append(Request(day, "-", "-", "internal-report"))
    return requests


class Parts:
    """The running system: fake provider, gateway, Celery worker, Dramatiq worker."""

    def __init__(self, keys: Any) -> None:
        self.keys = keys
        self.stack = contextlib.ExitStack()

    def start(self) -> Parts:
        from ..testing.fake_providers import FakeProviders

        self.fake = self.stack.enter_context(FakeProviders())
        self.fake.served_models = {"claude-3-5-haiku-latest": "claude-3-5-haiku-20241022"}
        self._start_celery()
        self._start_dramatiq()
        self.gateway = self._gateway()
        return self

    def stop(self) -> None:
        self.stack.close()

    # -- clients -------------------------------------------------------------------------

    @functools.cached_property
    def openai_client(self) -> Any:
        from openai import OpenAI

        from .. import metering

        # The SDK's own retries (3, with its backoff) meet the fake server's scripted 429s.
        # The project is what OpenAI's bill groups by (the demo's bill: reconcile/demo_bill.py).
        return metering.instrument(
            OpenAI(
                api_key="sk-demo",
                base_url=self.fake.openai_url,
                max_retries=3,
                project=DEMO_PROJECT,
            )
        )

    @functools.cached_property
    def anthropic_client(self) -> Any:
        from anthropic import Anthropic

        from .. import metering

        return metering.instrument(
            Anthropic(api_key="sk-demo", base_url=self.fake.url, max_retries=3)
        )

    def openai(self) -> Any:
        return self.openai_client

    def anthropic(self) -> Any:
        return self.anthropic_client

    # -- Celery: in-memory transport, a worker thread ------------------------------------

    def _start_celery(self) -> None:
        from celery import Celery

        from ..celery import install
        from ..policy import Policy

        app = Celery("demo", broker="memory://", backend="cache+memory://")
        app.conf.update(
            task_default_queue="demo",
            worker_hijack_root_logger=False,
            worker_redirect_stdouts=False,
            broker_connection_retry_on_startup=True,
            broker_transport_options={"polling_interval": 0.005},
        )
        install(app, policy=Policy(mode="quarantine"), keys=self.keys)
        parts = self

        @app.task(name="support.triage")  # type: ignore[untyped-decorator]
        def triage(model: str, retries: int) -> None:
            parts.fake.script(*([429] * retries), api="chat_completions")
            parts.openai().chat.completions.create(
                model=model, messages=[{"role": "user", "content": "Triage this ticket"}]
            )

        self.celery_app = app
        self.triage = triage
        from celery.contrib.testing.worker import start_worker

        # Celery's own in-process worker (a thread), the one its test tools use.
        self.stack.enter_context(
            start_worker(app, pool="solo", perform_ping_check=False, loglevel="ERROR")
        )

    def publish_without_hooks(self, model: str) -> str:
        """What a legacy service does: plain kombu, no ownership header at all."""
        app = self.celery_app
        task_id = str(uuid.uuid4())
        message = app.amqp.as_task_v2(task_id, "support.triage", args=(model, 0), kwargs={})
        with app.producer_or_acquire() as producer:
            producer.publish(
                message.body,
                routing_key="demo",
                exchange="",
                headers=message.headers,
                serializer="json",
                **message.properties,
            )
        return task_id

    # -- Dramatiq: StubBroker and a worker -----------------------------------------------

    def _start_dramatiq(self) -> None:
        import dramatiq
        from dramatiq.brokers.stub import StubBroker

        from ..dramatiq import OwnershipMiddleware as DramatiqOwnership
        from ..policy import Policy

        broker = StubBroker()
        broker.add_middleware(DramatiqOwnership(policy=Policy(mode="quarantine"), keys=self.keys))
        parts = self

        @dramatiq.actor(broker=broker, queue_name="demo", max_retries=0)
        def draft_email(fallback: bool) -> None:
            from .. import metering

            client = parts.openai()
            if fallback:
                parts.fake.script(500, 500, 500, 500, api="responses")
                try:
                    client.responses.create(model="gpt-4o", input="Draft the email")
                    return
                except Exception:
                    pass
                with metering.fallback(of="gpt-4o"):
                    client.responses.create(model="gpt-4o-mini", input="Draft the email")
                return
            client.responses.create(model="gpt-4o", input="Draft the email")

        self.broker = broker
        self.draft_email = draft_email
        worker = dramatiq.Worker(broker, worker_threads=1, worker_timeout=50)
        worker.start()
        self.stack.callback(worker.stop)

    # -- the gateway ---------------------------------------------------------------------

    def _gateway(self) -> Callable[..., Any]:
        from starlette.applications import Starlette
        from starlette.requests import Request as HttpRequest
        from starlette.responses import JSONResponse
        from starlette.routing import Route

        from .. import metering
        from ..asgi import OwnershipMiddleware
        from ..policy import EdgeHeaders, Policy, Rule

        parts = self

        async def triage(request: HttpRequest) -> JSONResponse:
            body = await request.json()
            result = parts.triage.delay(body["model"], body["retries"])
            return JSONResponse({"task": result.id})

        def answer(request: HttpRequest) -> JSONResponse:
            params = request.query_params
            model = params["model"]
            if params.get("cached") == "1":
                metering.record_cache_hit(
                    provider="anthropic",
                    model=model,
                    usage={"input_tokens": 900, "output_tokens": 250},
                )
                return JSONResponse({"cached": True})
            client = parts.anthropic()
            question = [{"role": "user", "content": "Where is my order?"}]
            if params.get("stream") == "1":
                with client.messages.stream(model=model, max_tokens=300, messages=question) as s:
                    for _ in s.text_stream:
                        pass
            else:
                client.messages.create(model=model, max_tokens=300, messages=question)
            return JSONResponse({"cached": False})

        async def email(request: HttpRequest) -> JSONResponse:
            body = await request.json()
            message = parts.draft_email.send(body["fallback"])
            return JSONResponse({"message": message.message_id})

        def internal_report(request: HttpRequest) -> JSONResponse:
            parts.openai().chat.completions.create(
                model="gpt-4o-mini", messages=[{"role": "user", "content": "Weekly numbers"}]
            )
            return JSONResponse({})

        app = Starlette(
            routes=[
                Route("/support/triage", triage, methods=["POST"]),
                Route("/search/answer", answer, methods=["POST"]),
                Route("/growth/email", email, methods=["POST"]),
                Route("/internal/report", internal_report, methods=["POST"]),
            ]
        )
        app.add_middleware(
            OwnershipMiddleware,
            policy=Policy(
                mode="enforce",
                required=("owner_team", "workflow_id", "feature", "tenant"),
                rules=(Rule("/internal/*", mode="quarantine"),),
                edge_headers=EdgeHeaders(tenant="x-tenant-id"),
            ),
            keys=self.keys,
        )
        return app


def drive(
    parts: Parts, requests: list[Request], simulation: Simulation, progress: Callable[[int], None]
) -> None:
    """Send every request, in simulated time, waiting for the workers after each."""
    import httpx
    from dramatiq.brokers.stub import StubBroker

    from ..codec import new_trace_id

    rng = random.Random(len(requests))
    transport = httpx.ASGITransport(app=parts.gateway)

    async def run() -> None:
        async with httpx.AsyncClient(transport=transport, base_url="http://gateway") as client:
            for index, request in enumerate(requests):
                at = simulation.start + request.day * DAY + rng.uniform(8, 18) * 3600
                trace_id = new_trace_id()
                simulation.offset = at - time.time()
                simulation.offsets[trace_id] = simulation.offset
                headers = {"traceparent": f"00-{trace_id}-{uuid.uuid4().hex[:16]}-01"}
                if request.kind != "internal-report":
                    workflow, feature = TEAMS[request.team]
                    headers.update(
                        {
                            "x-owner-team": request.team,
                            "x-workflow-id": workflow,
                            "x-feature": feature,
                            "x-tenant-id": request.tenant,
                        }
                    )
                await send(client, parts, request, headers)
                progress(index + 1)

    async def send(client: Any, parts: Parts, request: Request, headers: dict[str, str]) -> None:
        if request.kind == "triage":
            body = {"model": request.model, "retries": request.retries}
            response = await client.post("/support/triage", json=body, headers=headers)
            parts.celery_app.AsyncResult(response.json()["task"]).get(
                timeout=30, interval=0.005, propagate=False, disable_sync_subtasks=False
            )
        elif request.kind == "legacy-triage":
            task_id = parts.publish_without_hooks(request.model)
            parts.celery_app.AsyncResult(task_id).get(
                timeout=30, interval=0.005, propagate=False, disable_sync_subtasks=False
            )
        elif request.kind == "answer":
            params = {
                "model": request.model,
                "stream": int(request.stream),
                "cached": int(request.cached),
            }
            await client.post("/search/answer", params=params, headers=headers)
        elif request.kind == "email":
            await client.post("/growth/email", json={"fallback": request.fallback}, headers=headers)
            broker: StubBroker = parts.broker
            broker.join("demo", fail_fast=False)
        else:
            await client.post("/internal/report", headers=headers)

    import asyncio

    asyncio.run(run())


@contextlib.contextmanager
def simulated(sink: events.Sink, start: float) -> Iterator[Simulation]:
    """Route events through the simulated clock while the block runs."""
    simulation = Simulation(start)
    previous = events.set_sink(ShiftedSink(sink, simulation))
    try:
        yield simulation
    finally:
        events.set_sink(previous)
