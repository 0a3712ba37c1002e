"""`loss_shapes`: traces with unattributed calls, grouped by their steps in time order, on
both databases. Expected shapes and sums are written out by hand from the events below."""

from __future__ import annotations

from decimal import Decimal
from typing import Any

import pytest

from ownership_ctx.sinks import open_store
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


def test_traces_are_grouped_by_their_steps_in_time_order(url: str) -> None:
    store = open_store(url)
    store.write_batch(_events())  # type: ignore[attr-defined]
    got = store.loss_shapes(DAY0 - 86400, DAY0 + 86400, REQUIRED)
    store.close()
    expected = [
        LossShape((HTTP, CELERY, CALL), 2, 2, Decimal("0.5")),
        LossShape((CELERY, HTTP, CALL), 1, 1, Decimal("0.5")),
        LossShape(
            (
                ShapeStep(
                    "call", "call", "openai gpt-4o", "attributed", (), frozenset({"owner_team"})
                ),
            ),
            1,
            1,
            Decimal("0.125"),
        ),
        LossShape((), 0, 2, Decimal("3")),
    ]
    key = lambda s: (len(s.steps), [tuple(map(str, step)) for step in s.steps])  # noqa: E731
    assert sorted(got, key=key) == sorted(expected, key=key)


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
