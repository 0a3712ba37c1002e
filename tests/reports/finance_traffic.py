"""Scripted traffic whose every figure the finance tests know without the report code.

Written through the real pipeline (two edge `Gate`s, a gateway and an internal service that
the gateway calls with the envelope in baggage; metering's manual API with operator prices)
into a real store (`open_sink`), on a scripted clock.

Prices (USD per million tokens, operator overrides, so costs are exact):
gpt-4o 2 in / 8 out: 1000 in + 250 out = 0.004; gpt-4o-mini 0.5 / 1: 1000 + 500 = 0.001;
claude-haiku-4-5 1 / 5: 2000 + 200 = 0.003, and a cancelled stream estimated at 2000 + 40 =
0.0022.

Week 2 (2026-01-05 .. 12):
  search/qa/answers     5 user actions: client -> gateway /ask -> internal /internal/answer
                        (two request events each), one gpt-4o call in the internal service
  support/tickets/triage 4 user actions at /tickets, one claude call each
Week 3 (2026-01-12 .. 19):
  search                8 user actions as above; actions 0 and 1 first get a 429 (a failed
                        attempt: no usage, free) and retry; action 2 also answers once from the
                        application cache (gpt-4o-mini's usage avoided: 1000 in, 500 out, 0.001)
  support               4 user actions as in week 2, and a fifth whose claude stream the
                        caller cancels: estimated 2000 in + 40 out = 0.0022
  growth/onboarding/welcome 3 user actions at /welcome, one gpt-4o-mini call each; the first
                        also calls "my-finetune", which has no price (1000 in, 100 out)
"""

from __future__ import annotations

import datetime as dt
from collections.abc import Iterator, Mapping
from contextlib import contextmanager
from decimal import Decimal
from typing import Any

from ownership_ctx import Gate, Policy, events, metering
from ownership_ctx.hashing import Keys
from ownership_ctx.metering.normalize import Parsed
from ownership_ctx.metering.recorder import build_event, new_call_id
from ownership_ctx.metering.usage import Usage
from ownership_ctx.policy import EdgeHeaders
from ownership_ctx.sinks.config import open_sink

PRICES = {
    "openai/gpt-4o": {"input_mtok": "2", "output_mtok": "8"},
    "openai/gpt-4o-mini": {"input_mtok": "0.5", "output_mtok": "1"},
    "anthropic/claude-haiku-4-5": {"input_mtok": "1", "output_mtok": "5"},
}
GPT4O = {"input_tokens": 1000, "output_tokens": 250}
MINI = {"input_tokens": 1000, "output_tokens": 500}
HAIKU = {"input_tokens": 2000, "output_tokens": 200}
FINETUNE = {"input_tokens": 1000, "output_tokens": 100}


def epoch(text: str) -> int:
    return int(dt.datetime.fromisoformat(text).replace(tzinfo=dt.timezone.utc).timestamp())


W02, W03, W04 = (
    epoch("2026-01-05T00:00:00"),
    epoch("2026-01-12T00:00:00"),
    epoch("2026-01-19T00:00:00"),
)
D = Decimal


class Truth:
    """What the traffic is, counted by hand (see the module doc)."""

    spend = D("0.020") + D("0.012") + D("0.032") + D("0.0142") + D("0.003")
    spend_by_team: Mapping[str, Decimal] = {
        "search": D("0.052"),
        "support": D("0.0262"),
        "growth": D("0.003"),
    }
    spend_by_model: Mapping[str, Decimal] = {
        "gpt-4o": D("0.052"),
        "claude-haiku-4-5": D("0.0262"),
        "gpt-4o-mini": D("0.003"),
    }
    user_actions: Mapping[str, int] = {"search": 13, "support": 9, "growth": 3}
    service_requests: Mapping[str, int] = {"search": 26, "support": 9, "growth": 3}
    # Provider calls that were made and billed (cache hits and free failed attempts are not).
    calls: Mapping[str, int] = {"search": 13, "support": 9, "growth": 4}
    failed_attempts: Mapping[str, int] = {"search": 2, "support": 0, "growth": 0}
    cache_hits = 1
    avoided_input_tokens = 1000
    avoided_output_tokens = 500
    cost_avoided = D("0.001")
    estimated_calls = 1
    estimated_spend = D("0.0022")
    unpriced_calls = 1  # my-finetune; failed attempts are counted apart
    # Tokens processed by a provider (no cache hit's): gpt-4o 13 calls, claude 8 + estimated,
    # mini 3 calls, finetune 1.
    input_tokens = 13 * 1000 + 8 * 2000 + 2000 + 3 * 1000 + 1000
    output_tokens = 13 * 250 + 8 * 200 + 40 + 3 * 500 + 100


TRUTH = Truth()


class _Clock:
    """Stamps hop and request events with the script's time (they take the wall clock)."""

    def __init__(self, inner: Any) -> None:
        self.inner = inner
        self.now = float(W02)

    def emit(self, event: Mapping[str, Any]) -> None:
        stamped = dict(event)
        if stamped.get("kind") in ("hop", "request"):
            stamped["ts"] = self.now
        self.inner.emit(stamped)


class _World:
    def __init__(self, clock: _Clock) -> None:
        self.clock = clock
        keys = Keys(hash_key=b"finance-tests-hash-key-0123456789")
        edge = EdgeHeaders(tenant="x-tenant-id")
        self.gateway = Gate(Policy(mode="quarantine", edge_headers=edge), keys)
        self.internal = Gate(Policy(mode="quarantine"), keys)

    def tick(self, seconds: float = 0.5) -> float:
        self.clock.now += seconds
        return self.clock.now

    @contextmanager
    def edge(self, gate: Gate, carrier: dict[str, str], route: str) -> Iterator[None]:
        entry = gate.enter(carrier, hop="http", unit=route, edge=True)
        try:
            yield
        finally:
            entry.close()
            self.tick()
            events.emit(entry.request_event("POST", 200, 100.0, route=route))

    def client(self, team: str, workflow: str, feature: str, tenant: str) -> dict[str, str]:
        return {
            "x-owner-team": team,
            "x-workflow-id": workflow,
            "x-feature": feature,
            "x-tenant-id": tenant,
        }

    def call(self, model: str, usage: Mapping[str, int] | None, **kw: Any) -> dict[str, Any]:
        provider = "anthropic" if model.startswith("claude") else "openai"
        return metering.record_call(
            provider=provider,
            model=model,
            response_model=model if usage is not None else None,
            service_tier="default" if usage is not None else None,
            usage=usage,
            ts=self.tick(0.1),
            **kw,
        )

    def cancelled_stream(self, model: str, usage: Usage) -> None:
        """What metering records for a stream the caller cancelled (test_metering_cancelled_
        estimate.py shows the estimate itself): usage_status "estimated", priced."""
        from ownership_ctx.context import current

        event = build_event(
            envelope=current(),
            call_id=new_call_id(),
            attempt=1,
            provider="anthropic",
            api="messages",
            request_model=model,
            parsed=Parsed(usage=usage, usage_status="estimated", model=model, tier="default"),
            status="cancelled",
            http_status=200,
            error_type=None,
            ts=self.tick(0.1),
            latency_ms=50.0,
            streaming=True,
            provider_request_id=None,
            fallback_of=None,
            fallback_of_call_id=None,
            recorded_by="httpx",
        )
        events.emit(event)


def _search(world: _World, i: int, week3: bool) -> None:
    with world.edge(world.gateway, world.client("search", "qa", "answers", "acme"), "/ask"):
        outbound: dict[str, str] = {}
        world.gateway.inject(outbound)
        with world.edge(world.internal, outbound, "/internal/answer"):
            if week3 and i < 2:
                failed = world.call("gpt-4o", None, status="error", error_type="RateLimitError")
                world.call("gpt-4o", GPT4O, attempt=2, call_id=failed["call_id"])
            else:
                world.call("gpt-4o", GPT4O)
            if week3 and i == 2:
                metering.record_cache_hit(
                    provider="openai", model="gpt-4o-mini", usage=MINI, ts=world.tick(0.1)
                )


#: The trace of the cancelled stream: its client sent a W3C traceparent (the edge keeps it).
CANCELLED_TRACE = "c0ffee" + "0" * 25 + "1"


def _support(world: _World, cancelled: bool = False) -> None:
    carrier = world.client("support", "tickets", "triage", "globex")
    if cancelled:
        carrier["traceparent"] = f"00-{CANCELLED_TRACE}-00f067aa0ba902b7-01"
    with world.edge(world.gateway, carrier, "/tickets"):
        if cancelled:
            world.cancelled_stream("claude-haiku-4-5", Usage(2000, 40))
        else:
            world.call("claude-haiku-4-5", HAIKU)


def _growth(world: _World, i: int) -> None:
    carrier = world.client("growth", "onboarding", "welcome", "initech")
    with world.edge(world.gateway, carrier, "/welcome"):
        world.call("gpt-4o-mini", MINI)
        if i == 0:
            world.call("my-finetune", FINETUNE)


def write(url: str) -> None:
    """Write the whole script into the store at ``url``."""
    sink = open_sink(url)
    clock = _Clock(sink)
    previous = events.set_sink(clock)  # type: ignore[arg-type]
    metering.configure(price_overrides=PRICES)
    try:
        world = _World(clock)
        clock.now = W02 + 10 * 3600
        for i in range(5):
            _search(world, i, week3=False)
        for _ in range(4):
            _support(world)
        clock.now = W03 + 10 * 3600
        for i in range(8):
            _search(world, i, week3=True)
        for _ in range(4):
            _support(world)
        _support(world, cancelled=True)
        for i in range(3):
            _growth(world, i)
    finally:
        metering.configure(price_overrides=None)
        events.set_sink(previous)
        sink.close()


RANGE = (W02, W04)
