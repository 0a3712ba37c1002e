"""The budget engine in one process: periods, the cached check, reservations and their bound,
soft thresholds, failing open or closed, rebuilding from the event store."""

from __future__ import annotations

import json
import logging
import random
import threading
import time
from collections.abc import Sequence
from datetime import datetime, timezone
from decimal import Decimal
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any, ClassVar

import pytest

from ownership_ctx import Envelope, events, new_trace_id
from ownership_ctx.budgets import (
    BackendUnavailable,
    Budget,
    BudgetExceeded,
    Budgets,
    MemoryCounters,
    period_bounds,
)
from ownership_ctx.budgets.counters import Held, Lease, Usage
from tests.budgets.support import LIMIT, Clock, envelope, team_budget


def utc(text: str) -> float:
    return datetime.fromisoformat(text).replace(tzinfo=timezone.utc).timestamp()


@pytest.mark.parametrize(
    ("period", "at", "start", "end"),
    [
        ("day", "2026-11-27T17:20:00", "2026-11-27T00:00:00", "2026-11-28T00:00:00"),
        ("week", "2026-11-27T17:20:00", "2026-11-23T00:00:00", "2026-11-30T00:00:00"),
        ("month", "2026-12-31T23:59:59", "2026-12-01T00:00:00", "2027-01-01T00:00:00"),
        ("month", "2028-02-10T00:00:00", "2028-02-01T00:00:00", "2028-03-01T00:00:00"),
    ],
)
def test_periods_are_utc_days_iso_weeks_and_calendar_months(
    period: Any, at: str, start: str, end: str
) -> None:
    assert period_bounds(period, utc(at)) == (utc(start), utc(end))


def test_a_budget_covers_only_the_owners_it_names() -> None:
    budget = Budget("b", LIMIT, "day", {"owner_team": "support", "feature": "summarize"})
    assert budget.owner_of(envelope()) == ""
    assert budget.owner_of(envelope(feature="reply")) is None
    per_tenant = Budget("t", LIMIT, "day", {"owner_team": "support"}, each=("tenant",))
    tenant = "h1:" + "ab" * 16
    assert per_tenant.owner_of(envelope(tenant=tenant)) == tenant
    assert per_tenant.owner_of(envelope()) is None  # no tenant: not one of its owners
    assert per_tenant.owner_fields(tenant) == {"owner_team": "support", "tenant": tenant}


def test_the_check_reads_a_cached_view_refreshed_at_a_bounded_interval() -> None:
    ticks = Clock(0.0)
    budgets = Budgets([team_budget()], refresh=1.0, monotonic=ticks)
    owner = envelope()
    assert budgets.check(owner, "edge") is None  # first sight: the owner is now watched
    held = budgets.reserve(owner, Decimal("0.4"))
    assert held is not None
    held.charge(Decimal("1.5"))
    held.close()
    assert budgets.check(owner, "edge") is None  # the view is at most 1 s old: not yet
    ticks.now = 1.0
    refusal = budgets.check(owner, "edge")
    assert refusal is not None and refusal.budget == "support-daily"
    assert refusal.owner == {"owner_team": "support"}
    assert budgets.check(envelope(owner_team="search"), "edge") is None  # other owners go on


def test_observe_only_counts_and_logs_once(caplog: pytest.LogCaptureFixture) -> None:
    budgets = Budgets([team_budget(Decimal(0))], edge="observe", refresh=0.001)
    owner = envelope()
    budgets.record(owner, Decimal("0.01"))
    budgets.refresh_now()
    before = events.stats["budget_observed_edge"]
    with caplog.at_level(logging.WARNING, "ownership_ctx.budgets"):
        assert budgets.check(owner, "edge") is None
        assert budgets.check(owner, "edge") is None
    assert events.stats["budget_observed_edge"] == before + 2
    assert len([r for r in caplog.records if "observe only" in r.getMessage()]) == 1
    assert budgets.check(owner, "queue") is not None  # the queue still enforces


def test_spend_without_an_owner_is_never_budgeted() -> None:
    budgets = Budgets([Budget("everyone", Decimal(0), "day")])
    quarantined = Envelope(trace_id=new_trace_id(), attribution="quarantined")
    assert budgets.reserve(quarantined, Decimal(1)) is None
    assert budgets.reserve(None, Decimal(1)) is None
    assert budgets.check(quarantined, "edge") is None


def test_a_reservation_is_refused_once_the_budget_is_committed() -> None:
    budgets = Budgets([team_budget()])
    owner = envelope()
    first = budgets.reserve(owner, Decimal("0.6"))
    second = budgets.reserve(owner, Decimal("0.6"))  # 0.6 < 1.00: granted, may cross it
    assert first is not None and second is not None
    with pytest.raises(BudgetExceeded) as caught:
        budgets.reserve(owner, Decimal("0.01"))  # 1.2 committed: nothing more
    assert caught.value.refusal.budget == "support-daily"
    first.charge(Decimal("0.1"))
    first.close()
    first.close()  # idempotent
    assert budgets.usage(budgets.budgets[0]) == (Decimal("0.1"), Decimal("0.6"))
    assert budgets.reserve(owner, Decimal("0.01")) is not None  # 0.7 committed: room again


def test_a_call_touching_two_budgets_reserves_on_both_or_neither() -> None:
    team = team_budget(Decimal("10"))
    feature = Budget("summaries", Decimal("0.5"), "day", {"feature": "summarize"})
    budgets = Budgets([team, feature])
    budgets.reserve(envelope(), Decimal("0.5"))
    with pytest.raises(BudgetExceeded) as caught:
        budgets.reserve(envelope(), Decimal("0.1"))
    assert caught.value.refusal.budget == "summaries"
    assert budgets.usage(team) == (Decimal(0), Decimal("0.5"))  # not held on the team's


@pytest.mark.parametrize("seed", range(5))
def test_overshoot_is_at_most_the_largest_reservation_in_flight(seed: int) -> None:
    """Threads reserve, "call" and settle at random until refused; the real cost of a call is
    at most its reservation. Whatever the interleaving: spend - limit <= max reservation."""
    rng = random.Random(seed)
    budgets = Budgets([team_budget()])
    owner = envelope()
    largest = Decimal(0)
    lock = threading.Lock()
    start = threading.Barrier(8)

    def spender(seed: int) -> None:
        nonlocal largest
        local = random.Random(seed)
        start.wait()
        while True:
            amount = Decimal(local.randint(1, 300)) / 1000
            try:
                held = budgets.reserve(owner, amount)
            except BudgetExceeded:
                return
            assert held is not None
            with lock:
                largest = max(largest, amount)
            held.charge(amount * Decimal(local.randint(50, 100)) / 100)
            held.close()

    threads = [threading.Thread(target=spender, args=(rng.random(),)) for _ in range(8)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    spent, reserved = budgets.usage(budgets.budgets[0])
    assert reserved == 0
    assert spent - LIMIT <= largest
    assert spent >= LIMIT - largest  # and the budget was used, not refused early


class Broken:
    """Counters whose backend is down."""

    def reserve(self, held: Sequence[Held], amount: int, lease: Lease, now: float) -> int | None:
        raise BackendUnavailable("down")

    def settle(self, held: Sequence[Held], reserved: int, actual: int, lease: Lease | None) -> None:
        raise BackendUnavailable("down")

    def read(self, keys: Sequence[str]) -> list[Usage | None]:
        raise BackendUnavailable("down")

    def raise_to(self, key: str, spent: int, expires_at: float) -> None:
        raise BackendUnavailable("down")

    def epoch(self) -> str:
        raise BackendUnavailable("down")

    def first(self, key: str, expires_at: float) -> bool:
        raise BackendUnavailable("down")


def test_an_unreachable_backend_fails_open_counted_and_logged_once(
    caplog: pytest.LogCaptureFixture,
) -> None:
    budgets = Budgets([team_budget(Decimal(0))], Broken(), refresh=0.001)
    before = events.stats["budget_backend_errors"]
    with caplog.at_level(logging.ERROR, "ownership_ctx.budgets"):
        for _ in range(3):
            budgets.refresh_now()
            assert budgets.check(envelope(), "edge") is None
            held = budgets.reserve(envelope(), Decimal(1))
            assert held is not None and held.amount == 0
            held.charge(Decimal(1))
            held.close()
    assert events.stats["budget_backend_errors"] >= before + 9
    assert len([r for r in caplog.records if "unavailable" in r.getMessage()]) == 1


def test_failing_closed_refuses_covered_work_only() -> None:
    budgets = Budgets([team_budget()], Broken(), fail="closed", refresh=0.001)
    budgets.refresh_now()
    refusal = budgets.check(envelope(), "edge")
    assert refusal is not None and refusal.reason == "unavailable"
    assert "cannot be checked" in refusal.detail()
    with pytest.raises(BudgetExceeded):
        budgets.reserve(envelope(), Decimal("0.01"))
    assert budgets.check(envelope(owner_team="search"), "edge") is None  # no budget: served


class Hook(BaseHTTPRequestHandler):
    received: ClassVar[list[dict[str, Any]]] = []

    def do_POST(self) -> None:
        body = self.rfile.read(int(self.headers["content-length"]))
        Hook.received.append(json.loads(body))
        self.send_response(204)
        self.end_headers()

    def log_message(self, format: str, *args: Any) -> None:
        pass


def test_the_soft_threshold_warns_once_per_owner_and_period(
    caplog: pytest.LogCaptureFixture, event_sink: Any
) -> None:
    server = ThreadingHTTPServer(("127.0.0.1", 0), Hook)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    Hook.received = []
    try:
        url = f"http://127.0.0.1:{server.server_port}/hook"
        budgets = Budgets([team_budget(soft=Decimal("0.5"), webhook=url)], refresh=0.001)
        owner = envelope()
        budgets.check(owner, "edge")
        with caplog.at_level(logging.WARNING, "ownership_ctx.budgets"):
            for _ in range(3):
                budgets.record(owner, Decimal("0.3"))
                budgets.refresh_now()
        warnings = [e for e in event_sink.events if e["kind"] == "budget_warning"]
        assert len(warnings) == 1
        (warning,) = warnings
        assert warning["budget"] == "support-daily" and warning["owner_team"] == "support"
        assert warning["spent"] == "0.6" and warning["soft"] == "0.5"
        assert len([r for r in caplog.records if "soft threshold" in r.getMessage()]) == 1
        for _ in range(100):
            if Hook.received:
                break
            threading.Event().wait(0.05)
        assert [h["budget"] for h in Hook.received] == ["support-daily"]
    finally:
        server.shutdown()


class StoredSpend:
    def __init__(self, spend: dict[tuple[str | None, ...], Decimal]) -> None:
        self.spend_by_owner = spend
        self.asked: list[tuple[Any, ...]] = []

    def spend(
        self, match: Any, each: Sequence[str], start: float, end: float
    ) -> dict[tuple[str | None, ...], Decimal]:
        self.asked.append((dict(match), tuple(each), start, end))
        return self.spend_by_owner


def test_a_new_process_rebuilds_its_counters_from_the_store() -> None:
    source = StoredSpend({(): Decimal("0.99")})
    budgets = Budgets([team_budget()], source=source, refresh=0.001)
    budgets.refresh_now()  # a new backend epoch: rebuilt before the first read
    assert budgets.usage(budgets.budgets[0]) == (Decimal("0.99"), Decimal(0))
    budgets.record(envelope(), Decimal("0.02"))
    budgets.refresh_now()
    assert budgets.check(envelope(), "edge") is not None
    assert len(source.asked) == 1  # once per epoch, not per refresh
    assert source.asked[0][0] == {"owner_team": "support"}


def test_installed_budgets_reach_the_manual_metering_api() -> None:
    from ownership_ctx import bind, budgets, metering

    live = Budgets([team_budget()])
    budgets.install(live)
    with bind(envelope()):
        metering.record_call(
            provider="openai",
            model="gpt-4o",
            usage={"input_tokens": 1000, "output_tokens": 0},
            cost=Decimal("0.25"),
        )
    assert live.usage(live.budgets[0]) == (Decimal("0.25"), Decimal(0))
    assert isinstance(live.counters, MemoryCounters)


def test_a_reservation_whose_process_died_is_released_when_its_lease_expires() -> None:
    clock = Clock(time.time())
    budgets = Budgets([team_budget()], MemoryCounters(clock=clock), clock=clock, reservation_ttl=60)
    owner = envelope()
    crashed = budgets.reserve(owner, Decimal("1.00"))  # never settled: its process died
    assert crashed is not None
    with pytest.raises(BudgetExceeded):
        budgets.reserve(owner, Decimal("0.10"))
    clock.now += 61
    late = budgets.reserve(owner, Decimal("0.10"))  # the dead lease is released first
    assert late is not None
    assert budgets.usage(budgets.budgets[0]) == (Decimal(0), Decimal("0.1"))
    crashed.charge(Decimal("0.30"))  # it was alive after all, only slow
    crashed.close()
    assert budgets.usage(budgets.budgets[0]) == (Decimal("0.3"), Decimal("0.1"))
