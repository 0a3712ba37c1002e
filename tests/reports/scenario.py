"""Stores with known content, written through the real pipeline (Gate hop and request events,
metering's manual API with operator prices, `open_sink`), on a scenario clock.

Prices (USD per million tokens, operator overrides, so costs are exact):
gpt-4o 2 in / 8 out -> 1000 in + 250 out = 0.004; gpt-4o-mini 0.5 / 1 -> 1000 + 500 = 0.001;
claude-haiku-4-5 1 / 5 -> 2000 + 200 = 0.003.

MAIN (every figure the tests assert follows from this):

W02 (baseline, 2026-01-05..12)
  search/answer/summaries  10 requests at /answer, one gpt-4o call each        0.040
  support/tickets/triage    4 requests at /tickets -> celery tasks.triage,
                            one claude call in the worker each                  0.012
W03 (current, 2026-01-12..19)
  search                   20 requests at /answer:
                             i=0..3  gpt-4o 429 (no usage) then retry ok        0.016
                             i=4,5   gpt-4o error, fallback to gpt-4o-mini      0.002
                             i=6..19 gpt-4o ok                                  0.056
                             i=19    also an application cache hit (mini)       0
  support                   4 requests as in W02                                0.012
                            2 requests at /tickets/legacy whose task
                            (tasks.legacy_summarize) is published without
                            hooks: the worker starts a new, quarantined trace,
                            one gpt-4o-mini call each                           0.002 (no owner)
  growth/onboarding         1 request at /welcome (feature not required there,
                            never sent): one gpt-4o call                        0.004 (no feature)
  (no envelope)             1 gpt-4o-mini call made outside any unit of work    0.001 (no owner)

Totals: 0.145 USD; unattributed 0.007 (no owner 0.003, missing feature 0.004).
CLEAN: W02 alone (all attributed; audit ready).
"""

from __future__ import annotations

import datetime as dt
import hashlib
from collections.abc import Iterator, Mapping
from contextlib import contextmanager
from decimal import Decimal
from typing import Any

from ownership_ctx import Envelope, Gate, Policy, Rule, bind, events, metering
from ownership_ctx.codec import QUEUE_HEADER
from ownership_ctx.sinks.config import open_sink

PRICES = {
    "openai/gpt-4o": {"input_mtok": "2", "output_mtok": "8"},
    "openai/gpt-4o-mini": {"input_mtok": "0.5", "output_mtok": "1"},
    "anthropic/claude-haiku-4-5": {"input_mtok": "1", "output_mtok": "5"},
}
GPT4O = {"input_tokens": 1000, "output_tokens": 250}
MINI = {"input_tokens": 1000, "output_tokens": 500}
HAIKU = {"input_tokens": 2000, "output_tokens": 200}


def epoch(text: str) -> float:
    return dt.datetime.fromisoformat(text).replace(tzinfo=dt.timezone.utc).timestamp()


W02 = epoch("2026-01-05T00:00:00")
W03 = epoch("2026-01-12T00:00:00")
W04 = epoch("2026-01-19T00:00:00")
TENANT_SEARCH = "h1:" + "a1" * 16
TENANT_SUPPORT = "h1:" + "b2" * 16
TENANT_GROWTH = "h1:" + "c3" * 16
USER = "h1:" + "d4" * 16


def trace_id(label: str) -> str:
    return hashlib.sha256(label.encode()).hexdigest()[:32]


class ClockSink:
    """Stamps hop and request events with the scenario's time (they take the wall clock)."""

    def __init__(self, inner: Any) -> None:
        self.inner = inner
        self.now = W02
        self.emitted: list[dict[str, Any]] = []

    def emit(self, event: Mapping[str, Any]) -> None:
        stamped = dict(event)
        if stamped.get("kind") in ("hop", "request"):
            stamped["ts"] = self.now
        self.emitted.append(stamped)
        self.inner.emit(stamped)


class World:
    def __init__(self, sink: ClockSink) -> None:
        self.sink = sink
        policy = Policy(
            mode="quarantine", rules=(Rule("/welcome", required=("owner_team", "workflow_id")),)
        )
        self.edge = Gate(policy)
        self.worker = Gate(Policy(mode="quarantine"))

    def at(self, when: float) -> None:
        self.sink.now = when

    def tick(self, seconds: float = 0.5) -> float:
        self.sink.now += seconds
        return self.sink.now

    @contextmanager
    def request(
        self, route: str, label: str, team: str, workflow: str, feature: str | None, tenant: str
    ) -> Iterator[None]:
        """A client's request at the edge: baggage from the client's envelope, a hop event,
        the handler's body, then the request event."""
        client = Envelope(
            trace_id=trace_id(label),
            owner_team=team,
            workflow_id=workflow,
            feature=feature,
            tenant=tenant,
            user=USER,
        )
        carrier: dict[str, str] = {}
        with bind(client):
            self.edge.inject(carrier)
        entry = self.edge.enter(carrier, hop="http", unit=route, edge=True)
        try:
            yield
        finally:
            entry.close()
            events.emit(entry.request_event("POST", 200, 120.0))
        self.tick()

    def publish(self, hooks: bool = True) -> dict[str, str]:
        headers: dict[str, str] = {}
        if hooks:
            self.worker.inject(headers, header=QUEUE_HEADER)
        return headers

    @contextmanager
    def task(self, name: str, headers: dict[str, str]) -> Iterator[None]:
        self.tick()
        with self.worker.enter(headers, hop="celery", unit=name, header=QUEUE_HEADER):
            yield

    def call(
        self, provider: str, model: str, usage: Mapping[str, int] | None, **kw: Any
    ) -> dict[str, Any]:
        return metering.record_call(
            provider=provider,
            model=model,
            response_model=model if usage is not None else None,
            usage=usage,
            ts=self.tick(0.1),
            **kw,
        )


def _search(world: World, week: str, i: int, current: bool) -> None:
    with world.request(
        "/answer", f"search-{week}-{i}", "search", "answer", "summaries", TENANT_SEARCH
    ):
        if not current or i >= 6:
            world.call("openai", "gpt-4o", GPT4O)
        elif i < 4:
            first = world.call(
                "openai", "gpt-4o", None, status="error", error_type="RateLimitError"
            )
            world.call("openai", "gpt-4o", GPT4O, attempt=2, call_id=first["call_id"])
        else:
            failed = world.call("openai", "gpt-4o", None, status="error", error_type="APIError")
            world.call(
                "openai",
                "gpt-4o-mini",
                MINI,
                fallback_of="gpt-4o",
                fallback_of_call_id=failed["call_id"],
            )
        if current and i == 19:
            metering.record_cache_hit(
                provider="openai", model="gpt-4o-mini", usage=MINI, ts=world.tick(0.1)
            )


def _support(world: World, label: str) -> None:
    with world.request("/tickets", label, "support", "tickets", "triage", TENANT_SUPPORT):
        headers = world.publish()
    with world.task("tasks.triage", headers):
        world.call("anthropic", "claude-haiku-4-5", HAIKU)


def _legacy(world: World, label: str) -> None:
    with world.request(
        "/tickets/legacy", label, "support", "tickets", "legacy-summary", TENANT_SUPPORT
    ):
        headers = world.publish(hooks=False)  # published by code without our hooks
    with world.task("tasks.legacy_summarize", headers):
        world.call("openai", "gpt-4o-mini", MINI)


def baseline_week(world: World) -> None:
    world.at(epoch("2026-01-06T10:00:00"))
    for i in range(10):
        _search(world, "w02", i, current=False)
    world.at(epoch("2026-01-07T09:00:00"))
    for i in range(4):
        _support(world, f"support-w02-{i}")


def current_week(world: World) -> None:
    world.at(epoch("2026-01-13T10:00:00"))
    for i in range(20):
        _search(world, "w03", i, current=True)
    world.at(epoch("2026-01-14T09:00:00"))
    for i in range(4):
        _support(world, f"support-w03-{i}")
    world.at(epoch("2026-01-14T15:00:00"))
    for i in range(2):
        _legacy(world, f"legacy-w03-{i}")
    world.at(epoch("2026-01-15T08:00:00"))
    with world.request("/welcome", "growth-w03-0", "growth", "onboarding", None, TENANT_GROWTH):
        world.call("openai", "gpt-4o", GPT4O)
    world.at(epoch("2026-01-15T09:00:00"))
    world.call("openai", "gpt-4o-mini", MINI)  # no envelope bound anywhere


def write(url: str, *scenes: Any) -> list[dict[str, Any]]:
    """Play ``scenes`` into the store at ``url`` through `open_sink`; returns the events."""
    separator = "&" if "?" in url else "?"
    pipeline = open_sink(f"{url}{separator}spool=off")
    sink = ClockSink(pipeline)
    previous = events.set_sink(sink)
    metering.configure(price_overrides=PRICES)
    try:
        world = World(sink)
        for scene in scenes:
            scene(world)
    finally:
        events.set_sink(previous)
        metering.configure()
        assert pipeline.close(timeout=30)  # type: ignore[attr-defined]
    return sink.emitted


EXPECTED_TOTAL = Decimal("0.145")
EXPECTED_UNATTRIBUTED = Decimal("0.007")
