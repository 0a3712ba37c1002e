"""The data contract: event kinds and their keys, money in and out of Decimal, the one JSON
encoder (NaN and infinities as null, wherever events are written)."""

from __future__ import annotations

import json
import math
import sqlite3
from decimal import Decimal
from pathlib import Path

import pytest

from ownership_ctx.metering.schema import FIELDS
from ownership_ctx.schema import encode_event, encode_json, events, money
from ownership_ctx.sinks import JsonLinesSink, Pipeline
from ownership_ctx.store import SQLiteStore


def test_provider_call_kind_holds_the_envelope_and_every_metering_field() -> None:
    keys = events.keys_of("provider_call")
    assert set(events.ENVELOPE_KEYS) | set(FIELDS) <= set(keys)
    # The billing keys reconciliation's metering adds to FIELDS (merged separately).
    assert set(keys) - set(events.ENVELOPE_KEYS) - set(FIELDS) <= {
        "billing_scope",
        "billing_region",
        "api_key_fingerprint",
    }
    assert len(keys) == len(set(keys))


def test_every_kind_has_its_keys() -> None:
    assert events.KINDS == ("hop", "request", "provider_call", "bill_row")
    for kind in events.KINDS:
        keys = events.keys_of(kind)
        assert {"kind", "event_id", "ts"} <= set(keys), kind
    assert {"hop", "unit", "outcome", "missing"} <= set(events.keys_of("hop"))
    assert {"route", "method", "status", "latency_ms"} <= set(events.keys_of("request"))
    assert {"provider", "billing_scope", "cost", "currency"} <= set(events.keys_of("bill_row"))
    assert events.keys_of("no such kind") == ()


@pytest.mark.parametrize(
    ("value", "expected"),
    [
        ("0.0042500", Decimal("0.0042500")),
        ("1E-7", Decimal("0.0000001")),
        (Decimal("2.5"), Decimal("2.5")),
        (3, Decimal(3)),
        (0.1, Decimal("0.1")),  # the float's shortest text, not its binary expansion
        (None, None),
        (True, None),
        ("n/a", None),
        ("NaN", None),
        (float("inf"), None),
        (Decimal("sNaN"), None),
    ],
)
def test_to_decimal(value: object, expected: Decimal | None) -> None:
    assert money.to_decimal(value) == expected


def test_money_text_and_sums() -> None:
    assert money.to_text(Decimal("1E-7")) == "0.0000001"
    assert money.to_text(None) is None
    assert money.from_nanos(1500) == Decimal("0.0000015")
    assert money.from_nanos(None) == Decimal(0)
    # 10^18 nano-dollars: a billion dollars, exact.
    assert money.from_nanos(10**18) == Decimal(1_000_000_000)
    assert money.from_sum(Decimal("0.25")) == Decimal("0.25")
    assert money.from_sum(None) == Decimal(0)


def test_encoder_rules() -> None:
    assert encode_json({"a": 1, "b": [1, 2]}) == '{"a":1,"b":[1,2]}'
    assert encode_json({"cost": Decimal("1E-7")}) == '{"cost":"0.0000001"}'
    assert encode_json({"x": (1, 2)}) == '{"x":[1,2]}'
    assert encode_json({"name": "café"}) == '{"name":"café"}'
    nan = {"latency_ms": float("nan"), "n": [1.5, float("inf"), -math.inf], "d": Decimal("NaN")}
    assert encode_json(nan) == '{"latency_ms":null,"n":[1.5,null,null],"d":null}'
    loop: dict[str, object] = {}
    loop["self"] = loop
    with pytest.raises(ValueError):
        encode_json(loop)
    loop["event_id"] = "e1"
    assert json.loads(encode_event(loop))["event_id"] == "e1"  # never raises


def _nan_event(event_id: str) -> dict[str, object]:
    return {
        "kind": "provider_call",
        "event_id": event_id,
        "ts": 1_767_571_200.0,
        "trace_id": "ab" * 16,
        "latency_ms": float("nan"),
        "gen_ai.usage.input_tokens": 10,
        "score": float("inf"),
        "cost": "0.001",
    }


def test_nan_is_null_in_json_lines_files(tmp_path: Path) -> None:
    sink = JsonLinesSink(tmp_path / "events.jsonl")
    sink.emit(_nan_event("e1"))
    sink.close()
    (line,) = (tmp_path / "events.jsonl").read_text().splitlines()
    decoded = json.loads(line)
    assert decoded["score"] is None and decoded["latency_ms"] is None


def test_nan_is_null_in_the_store_and_its_json_views(tmp_path: Path) -> None:
    store = SQLiteStore(tmp_path / "events.db")
    pipeline = Pipeline(store, spool_dir=tmp_path / "spool")
    pipeline.emit(_nan_event("e1"))
    assert pipeline.flush(10)
    pipeline.close()
    reader = SQLiteStore(tmp_path / "events.db", readonly=True)
    (event,) = reader.events_by_trace("ab" * 16)
    reader.close()
    assert event["score"] is None
    assert event.get("latency_ms") is None
    conn = sqlite3.connect(tmp_path / "events.db")
    (text,) = conn.execute("SELECT event FROM provider_calls_json").fetchone()
    conn.close()
    assert json.loads(text).get("score") is None  # valid JSON (a null key is left out)
