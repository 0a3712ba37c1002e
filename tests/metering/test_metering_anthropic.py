"""Anthropic SDK (sync and async) against the fake server: Messages, JSON and streamed."""

from __future__ import annotations

import asyncio
from decimal import Decimal
from typing import Any

import pytest

from ownership_ctx.sinks import MemorySink
from ownership_ctx.testing.fake_providers import FakeProviders

from .conftest import MESSAGES, calls, expected_cost, list_prices, one_call

MODEL = "claude-haiku-4-5"


def _create(client: Any, **kwargs: Any) -> Any:
    return client.messages.create(model=MODEL, max_tokens=64, messages=MESSAGES, **kwargs)


def _assert_summed(event: dict[str, Any], fake: FakeProviders) -> None:
    u = fake.usage
    # Anthropic's input_tokens excludes the cache: the event's input adds reads and writes.
    assert event["gen_ai.usage.input_tokens"] == u.uncached_input + u.cache_read + u.cache_write
    assert event["gen_ai.usage.input_tokens"] == u.input
    assert event["gen_ai.usage.cache_read.input_tokens"] == u.cache_read
    assert event["gen_ai.usage.cache_creation.input_tokens"] == u.cache_write
    assert event["cache_write_5m_tokens"] == u.cache_write_5m
    assert event["cache_write_1h_tokens"] == u.cache_write_1h
    assert event["gen_ai.usage.output_tokens"] == u.output


def test_json(anthropic_client: Any, fake: FakeProviders, sink: MemorySink) -> None:
    message = _create(anthropic_client)
    assert message.usage.input_tokens == fake.usage.uncached_input  # the caller's view intact
    event = one_call(sink)
    _assert_summed(event, fake)
    assert event["gen_ai.provider.name"] == "anthropic" and event["api"] == "messages"
    assert event["service_tier"] == "standard"
    expected = expected_cost(list_prices("anthropic", MODEL), fake.usage, cache_writes=True)
    assert Decimal(event["cost"]) == expected
    assert event["provider_request_id"].startswith("req_")


def test_stream_usage_from_message_start_and_delta(
    anthropic_client: Any, fake: FakeProviders, sink: MemorySink
) -> None:
    kinds = [e.type for e in _create(anthropic_client, stream=True)]
    assert kinds[0] == "message_start" and kinds[-1] == "message_stop"
    event = one_call(sink)
    _assert_summed(event, fake)  # output from message_delta, cache from message_start
    assert event["streaming"] is True and event["status"] == "ok"
    expected = expected_cost(list_prices("anthropic", MODEL), fake.usage, cache_writes=True)
    assert Decimal(event["cost"]) == expected


def test_batch_tier_reported_by_the_response(
    anthropic_client: Any, fake: FakeProviders, sink: MemorySink
) -> None:
    fake.tier = "batch"
    _create(anthropic_client)
    event = one_call(sink)
    batch = list_prices("anthropic", MODEL, {"processing": "batch"})
    assert event["service_tier"] == "batch"
    assert Decimal(event["cost"]) == expected_cost(batch, fake.usage, cache_writes=True)


def test_retries_429_500_and_dropped_connection(
    anthropic_client: Any, fake: FakeProviders, sink: MemorySink
) -> None:
    fake.script(429, 500, "drop")
    _create(anthropic_client.with_options(max_retries=3))
    attempts = calls(sink)
    assert [(e["attempt"], e["status"], e["http_status"]) for e in attempts] == [
        (1, "error", 429),
        (2, "error", 500),
        (3, "error", None),
        (4, "ok", 200),
    ]
    assert attempts[0]["error.type"] == "rate_limit_error"
    assert attempts[1]["error.type"] == "server_error_error"
    assert len({e["call_id"] for e in attempts}) == 1


def test_abandoned_stream_keeps_the_usage_seen(anthropic_client: Any, sink: MemorySink) -> None:
    stream = _create(anthropic_client, stream=True)
    iterator = iter(stream)
    next(iterator)  # message_start: input and cache usage are known already
    stream.close()
    event = one_call(sink)
    assert event["status"] == "cancelled"
    assert event["usage_status"] == "partial"
    assert event["gen_ai.usage.input_tokens"] == 1000
    assert event["gen_ai.usage.output_tokens"] == 1  # a lower bound, priced as such
    assert event["cost"] is not None


def test_async_stream(async_anthropic_client: Any, fake: FakeProviders, sink: MemorySink) -> None:
    async def run() -> None:
        stream = await _create(async_anthropic_client, stream=True)
        async for _ in stream:
            pass

    asyncio.run(run())
    _assert_summed(one_call(sink), fake)


@pytest.mark.parametrize("tier", [None, "priority"])
def test_priority_tier_has_no_separate_token_price(
    anthropic_client: Any, fake: FakeProviders, sink: MemorySink, tier: str | None
) -> None:
    fake.tier = tier
    _create(anthropic_client)
    event = one_call(sink)
    expected = expected_cost(list_prices("anthropic", MODEL), fake.usage, cache_writes=True)
    assert Decimal(event["cost"]) == expected
