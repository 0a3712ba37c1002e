"""`loss_shapes`: traces with unattributed calls, grouped by their steps in time order, on
both databases. Expected shapes and sums are written out by hand from the events below."""

from __future__ import annotations

import tempfile
import threading
from decimal import Decimal
from typing import Any

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from ownership_ctx.sinks import open_store
from ownership_ctx.sinks.config import open_backend
from ownership_ctx.store import LossShape, ShapeStep

DAY0 = 1_767_571_200  # 2026-01-05T00:00:00Z
OWNER = {"owner_team": "search", "workflow_id": "answer", "feature": "summaries"}
ALL = frozenset(OWNER)
REQUIRED = ("owner_team", "workflow_id", "feature")


def _hop(trace: str, n: int, ts: float, hop: str, unit: str, outcome: str, **fields: Any) -> dict:
    missing = [f for f in REQUIRED if f not in fields]
    return {
        "kind": "hop",
        "event_id": f"{trace}-h{n}",
        "ts": ts,
        "trace_id": trace,
        "hop": hop,
        "unit": unit,
        "outcome": outcome,
        "missing": missing,
        **fields,
    }


def _call(trace: str | None, n: int, ts: float, cost: str, **fields: Any) -> dict:
    return {
        "kind": "provider_call",
        "event_id": f"{trace}-c{n}",
        "ts": ts,
        "trace_id": trace,
        "attribution": "attributed" if fields.get("owner_team") else "quarantined",
        "status": "ok",
        "gen_ai.provider.name": "openai",
        "gen_ai.response.model": "gpt-4o",
        "gen_ai.usage.input_tokens": 10,
        "cost": cost,
        **fields,
    }


def _events() -> list[dict[str, Any]]:
    out: list[dict[str, Any]] = []
    # Two traces dropped the envelope at a Celery task after a good edge hop (same shape), in
    # different hours and with their events written in reverse time order.
    for k, trace in enumerate(("a" * 32, "b" * 32)):
        t = DAY0 + k * 7200
        out += [
            _call(trace, 1, t + 2, "0.25"),
            _hop(trace, 2, t + 1, "celery", "tasks.answer", "quarantined"),
            _hop(trace, 1, t, "http", "/ask", "attributed", **OWNER),
        ]
    # The same steps in the other order: the task first (a new trace minted there).
    c = "c" * 32
    out += [
        _hop(c, 1, DAY0 + 100, "celery", "tasks.answer", "quarantined"),
        _call(c, 1, DAY0 + 102, "0.5"),
        _hop(c, 2, DAY0 + 101, "http", "/ask", "attributed", **OWNER),
    ]
    # Attributed calls: not in any shape.
    d = "d" * 32
    out += [
        _hop(d, 1, DAY0 + 5, "http", "/ask", "attributed", **OWNER),
        _call(d, 1, DAY0 + 6, "9", **OWNER),
    ]
    # A hop three days before the call is outside the day around it.
    e = "e" * 32
    out += [
        _hop(e, 1, DAY0 - 3 * 86400, "http", "/old", "attributed", **OWNER),
        _call(e, 1, DAY0 + 50, "0.125", owner_team="search"),
    ]
    # No trace id at all (two calls).
    out += [_call(None, 1, DAY0 + 60, "1"), {**_call(None, 2, DAY0 + 61, "2"), "event_id": "x2"}]
    return out


HTTP = ShapeStep("hop", "http", "/ask", "attributed", (), ALL)
CELERY = ShapeStep("hop", "celery", "tasks.answer", "quarantined", REQUIRED, frozenset())
CALL = ShapeStep("call", "call", "openai gpt-4o", "quarantined", (), frozenset())


@pytest.fixture(params=["sqlite", "postgresql"])
def url(request: pytest.FixtureRequest) -> str:
    return str(request.getfixturevalue("db_url" if request.param == "sqlite" else "pg_url"))


#: By hand from `_events`: the shapes over the day around DAY0, fields `REQUIRED`.
EXPECTED = [
    LossShape((HTTP, CELERY, CALL), 2, 2, Decimal("0.5")),
    LossShape((CELERY, HTTP, CALL), 1, 1, Decimal("0.5")),
    LossShape(
        (ShapeStep("call", "call", "openai gpt-4o", "attributed", (), frozenset({"owner_team"})),),
        1,
        1,
        Decimal("0.125"),
    ),
    LossShape((), 0, 2, Decimal("3")),
]
#: The hops kept for the breakdown: those of the traces with a call lacking a requirable field
#: (a, b, c, and d: no tenant), but not e's, three days before its call.
LOSS_STEPS = sorted([*(f"{t * 32}-h{n}" for t in "abc" for n in (1, 2)), f"{'d' * 32}-h1"])


def _sorted(shapes: list[LossShape]) -> list[LossShape]:
    return sorted(shapes, key=lambda s: (len(s.steps), [tuple(map(str, x)) for x in s.steps]))


def _written(url: str, batches: list[list[dict[str, Any]]]) -> tuple[list[LossShape], list[str]]:
    store = open_store(url)
    for batch in batches:
        store.write_batch(batch)  # type: ignore[attr-defined]
    shapes = store.loss_shapes(DAY0 - 86400, DAY0 + 86400, REQUIRED)
    steps = [str(e) for (e,) in store.fetch("SELECT event_id FROM loss_steps ORDER BY 1")]
    store.close()
    return _sorted(shapes), steps


def test_traces_are_grouped_by_their_steps_in_time_order(url: str) -> None:
    assert _written(url, [_events()]) == (_sorted(EXPECTED), LOSS_STEPS)


@pytest.mark.parametrize("order", ["forward", "reversed"])
def test_one_event_per_batch_in_either_order_gives_the_same_shapes(url: str, order: str) -> None:
    # A hop written before its trace's unattributed call is copied when the call comes; one
    # written after is copied as it comes.
    events = _events() if order == "forward" else _events()[::-1]
    assert _written(url, [[e] for e in events]) == (_sorted(EXPECTED), LOSS_STEPS)


@settings(max_examples=25, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(order=st.permutations(range(len(_events()))), cuts=st.lists(st.booleans(), min_size=16))
def test_any_order_and_batching_gives_the_same_shapes(order: list[int], cuts: list[bool]) -> None:
    events = _events()
    batches: list[list[dict[str, Any]]] = [[]]
    for i, n in enumerate(order):
        batches[-1].append(events[n])
        if cuts[i % len(cuts)]:
            batches.append([])
    with tempfile.TemporaryDirectory() as tmp:
        got = _written(f"sqlite:///{tmp}/events.db", batches)
    assert got == (_sorted(EXPECTED), LOSS_STEPS)


def test_two_hosts_writing_a_trace_at_once_keep_its_steps(pg_url: str) -> None:
    """A hop and its trace's unattributed call committed at once by two hosts: neither sees
    the other's row until it commits, so the copies into loss_steps take turns."""
    hosts = [open_backend(pg_url), open_backend(pg_url)]
    hosts[0].write_batch([])  # the schema, before the race
    traces = [f"{n:032x}" for n in range(1, 41)]
    start = threading.Barrier(2)

    def host(n: int) -> None:
        for k, trace in enumerate(traces):
            event = (
                _hop(trace, 1, DAY0 + k, "celery", "tasks.answer", "quarantined")
                if n == 0
                else _call(trace, 1, DAY0 + k + 1, "0.25")
            )
            start.wait()
            hosts[n].write_batch([event])

    threads = [threading.Thread(target=host, args=(n,)) for n in (0, 1)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    steps = [str(e) for (e,) in hosts[0].fetch("SELECT event_id FROM loss_steps ORDER BY 1")]
    for store in hosts:
        store.close()
    assert steps == [f"{trace}-h1" for trace in traces]


def test_the_required_fields_decide_which_calls_count(url: str) -> None:
    store = open_store(url)
    store.write_batch(_events())  # type: ignore[attr-defined]
    # Only the owner team required: trace e's call (owner, not the others) is attributed.
    got = store.loss_shapes(DAY0 - 86400, DAY0 + 86400, ("owner_team",))
    store.close()
    assert sorted((s.traces, s.calls, s.cost) for s in got) == [
        (0, 2, Decimal("3")),
        (1, 1, Decimal("0.5")),
        (2, 2, Decimal("0.5")),
    ]
