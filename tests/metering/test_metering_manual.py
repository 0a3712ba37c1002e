"""The manual API, price overrides, price history, the event schema and the sinks."""

from __future__ import annotations

import json
from datetime import datetime, timezone
from decimal import Decimal
from pathlib import Path
from typing import Any

import pytest

from ownership_ctx import Envelope, bind, events, metering
from ownership_ctx.metering.schema import FIELDS
from ownership_ctx.sinks import JsonLinesSink, MemorySink

from .conftest import MESSAGES, M, calls, list_prices, one_call, price

USAGE = {"input_tokens": 1000, "cache_read_tokens": 200, "output_tokens": 300}


def _by_hand(p: Any) -> Decimal:
    return (
        800 * price(p, "input_mtok")
        + 200 * price(p, "cache_read_mtok")
        + 300 * price(p, "output_mtok")
    ) / M


def test_record_call_from_a_usage_mapping(sink: MemorySink) -> None:
    envelope = Envelope(trace_id="ab" * 16, owner_team="search")
    with bind(envelope):
        event = metering.record_call(
            provider="openai", model="gpt-4o", usage=USAGE, latency_ms=12.5
        )
    assert one_call(sink) == event
    assert event["owner_team"] == "search" and event["recorded_by"] == "manual"
    assert Decimal(event["cost"]) == _by_hand(list_prices("openai", "gpt-4o"))
    assert event["cost_source"] == "price_table" and event["price_model_id"] == "gpt-4o"


def test_event_keys_are_the_documented_schema(sink: MemorySink) -> None:
    event = metering.record_call(provider="openai", model="gpt-4o", usage=USAGE)
    assert set(event) == set(FIELDS) | {"attribution"}
    json.dumps(event)  # JSON-serializable as is: costs are decimal strings
    assert isinstance(event["cost"], str) and "E" not in event["cost"]


def test_unknown_model_is_unpriced_and_counted(sink: MemorySink) -> None:
    before = events.stats["metering_unpriced"]
    event = metering.record_call(provider="openai", model="my-private-model", usage=USAGE)
    assert event["gen_ai.usage.input_tokens"] == 1000  # tokens kept
    assert event["cost"] is None and event["cost_source"] == "unpriced"  # never a guessed zero
    assert "price_unknown_model" in event["problems"]
    assert events.stats["metering_unpriced"] == before + 1


def test_unknown_usage_is_unpriced(sink: MemorySink) -> None:
    event = metering.record_call(provider="openai", model="gpt-4o", usage=None)
    assert (event["usage_status"], event["cost"], event["cost_source"]) == (
        "missing",
        None,
        "unpriced",
    )


def test_provider_reported_cost(sink: MemorySink) -> None:
    event = metering.record_call(
        provider="openai", model="gpt-4o", usage=USAGE, cost=Decimal("0.0042")
    )
    assert (event["cost"], event["cost_source"]) == ("0.0042", "provider")


def test_fallback_marks_calls_and_each_is_priced_at_its_own_model(
    openai_client: Any, anthropic_client: Any, sink: MemorySink
) -> None:
    primary = metering.record_call(
        provider="openai", model="gpt-4o", usage=None, status="error", error_type="timeout"
    )
    with metering.fallback(of="gpt-4o", call_id=primary["call_id"]):
        anthropic_client.messages.create(model="claude-haiku-4-5", max_tokens=5, messages=MESSAGES)
        manual = metering.record_call(provider="openai", model="gpt-4o-mini", usage=USAGE)
    _, instrumented, manual = calls(sink)
    for event in (instrumented, manual):
        assert event["fallback_of"] == "gpt-4o"
        assert event["fallback_of_call_id"] == primary["call_id"]
        assert event["cost"] is not None  # a fallback never makes the cost null
    assert instrumented["price_model_id"] == "claude-haiku-4-5"
    assert Decimal(manual["cost"]) == _by_hand(list_prices("openai", "gpt-4o-mini"))
    openai_client.chat.completions.create(model="gpt-4o", messages=MESSAGES)
    assert calls(sink)[-1]["fallback_of"] is None  # the mark ends with the block


def test_app_cache_hit_costs_zero_and_says_what_it_avoided(sink: MemorySink) -> None:
    event = metering.record_cache_hit(provider="openai", model="gpt-4o", usage=USAGE)
    assert event["app_cache_hit"] is True
    assert Decimal(event["cost"]) == 0
    assert Decimal(event["cost_avoided"]) == _by_hand(list_prices("openai", "gpt-4o"))


def test_price_overrides_from_configuration(openai_client: Any, sink: MemorySink) -> None:
    metering.configure(
        price_overrides={
            "openai/gpt-4o": {"input_mtok": "2.00", "cache_read_mtok": "1.00"},
            "openai/my-finetune": {"input_mtok": 1, "output_mtok": "4"},
            "openai/*@flex": {"multiplier": "0.5"},
        }
    )
    openai_client.chat.completions.create(model="gpt-4o", messages=MESSAGES)
    instrumented = one_call(sink)
    p = list_prices("openai", "gpt-4o")
    expected = (800 * Decimal("2.00") + 200 * Decimal("1.00") + 300 * price(p, "output_mtok")) / M
    assert Decimal(instrumented["cost"]) == expected
    assert instrumented["cost_source"] == "override"
    added = metering.record_call(provider="openai", model="my-finetune", usage=USAGE)
    assert Decimal(added["cost"]) == (1000 * 1 + 300 * 4) / M
    flex = metering.record_call(provider="openai", model="gpt-5", usage=USAGE, service_tier="flex")
    p5 = list_prices("openai", "gpt-5", {"service_tier": "flex"})
    assert Decimal(flex["cost"]) == _by_hand(p5) * Decimal("0.5")


def test_bad_override_configuration_fails_at_startup() -> None:
    with pytest.raises(ValueError):
        metering.parse_overrides({"gpt-4o": {"input_mtok": "1"}})
    with pytest.raises(ValueError):
        metering.parse_overrides({"openai/gpt-4o": {"input_mtok": "-1"}})


def test_prices_by_request_time(sink: MemorySink) -> None:
    # gpt-5's priority price exists from 2026-10-12: earlier requests pay the standard price.
    before = datetime(2026, 9, 1, tzinfo=timezone.utc)
    after = datetime(2026, 11, 1, tzinfo=timezone.utc)
    old, new = (
        metering.record_call(
            provider="openai", model="gpt-5", usage=USAGE, service_tier="priority", ts=t.timestamp()
        )
        for t in (before, after)
    )
    assert Decimal(old["cost"]) == _by_hand(list_prices("openai", "gpt-5", when=before))
    priority = list_prices("openai", "gpt-5", {"service_tier": "priority"}, when=after)
    assert Decimal(new["cost"]) == _by_hand(priority)
    assert old["cost"] != new["cost"]


def test_invalid_manual_usage_is_noted_not_raised(sink: MemorySink) -> None:
    event = metering.record_call(
        provider="openai", model="gpt-4o", usage={"input_tokens": -1, "bogus": 3}
    )
    assert event["usage_status"] == "invalid" and event["cost"] is None
    assert "usage_unknown_key:bogus" in event["problems"]


def test_jsonl_sink_writes_json_lines(tmp_path: Path) -> None:
    sink = JsonLinesSink(tmp_path / "sub" / "events.jsonl")
    previous = events.set_sink(sink)
    try:
        metering.record_call(provider="openai", model="gpt-4o", usage=USAGE)
        events.emit({"kind": "other", "amount": Decimal("1.50")})
    finally:
        events.set_sink(previous)
        sink.close()
    lines = (tmp_path / "sub" / "events.jsonl").read_text().splitlines()
    first, second = (json.loads(line) for line in lines)
    assert first["kind"] == "provider_call" and Decimal(first["cost"]) > 0
    assert second["amount"] == "1.50"


def test_jsonl_sink_never_raises(tmp_path: Path) -> None:
    blocker = tmp_path / "file"
    blocker.write_text("")
    sink = JsonLinesSink(blocker / "cannot" / "exist.jsonl")
    before = events.stats["jsonl_sink_errors"]
    sink.emit({"kind": "x"})
    assert events.stats["jsonl_sink_errors"] == before + 1


def test_memory_sink_is_bounded() -> None:
    sink = MemorySink(maxlen=2)
    for i in range(3):
        sink.emit({"i": i})
    assert [e["i"] for e in sink.events] == [1, 2] and sink.dropped == 1


def test_metering_imports_no_sdk() -> None:
    import subprocess
    import sys

    code = (
        "import sys, ownership_ctx.metering, ownership_ctx.sinks;"
        "bad = [m for m in ('openai', 'anthropic', 'google.genai', 'boto3', 'botocore',"
        " 'genai_prices', 'httpx', 'httpx2') if m in sys.modules]; print(bad)"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert out.stdout.strip() == "[]"
