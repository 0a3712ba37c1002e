"""Google Gen AI SDK (sync and async) against the fake server: generateContent, JSON and SSE."""

from __future__ import annotations

import asyncio
from decimal import Decimal
from typing import Any

from ownership_ctx.sinks import MemorySink
from ownership_ctx.testing.fake_providers import FakeProviders

from .conftest import M, calls, expected_cost, list_prices, one_call, price

MODEL = "gemini-2.5-flash"


def _assert_not_double_counted(event: dict[str, Any], fake: FakeProviders) -> None:
    u = fake.usage
    # promptTokenCount already includes cached content: input is NOT prompt + cached.
    assert event["gen_ai.usage.input_tokens"] == u.input
    assert event["gen_ai.usage.cache_read.input_tokens"] == u.cache_read
    # thoughts are output: candidates + thoughts.
    assert event["gen_ai.usage.output_tokens"] == u.output
    assert event["gen_ai.usage.reasoning.output_tokens"] == u.reasoning


def test_json(gemini_client: Any, fake: FakeProviders, sink: MemorySink) -> None:
    response = gemini_client.models.generate_content(model=MODEL, contents="hi")
    assert response.text == "Hello from the fake."
    event = one_call(sink)
    _assert_not_double_counted(event, fake)
    assert event["gen_ai.provider.name"] == "gcp.gemini"
    assert event["gen_ai.operation.name"] == "generate_content"
    assert event["gen_ai.request.model"] == MODEL
    expected = expected_cost(list_prices("google", MODEL), fake.usage, cache_writes=False)
    assert Decimal(event["cost"]) == expected
    # By hand, from the published prices: 800 uncached, 200 cached, 300 output.
    p = list_prices("google", MODEL)
    by_hand = (
        800 * price(p, "input_mtok")
        + 200 * price(p, "cache_read_mtok")
        + 300 * price(p, "output_mtok")
    ) / M
    assert Decimal(event["cost"]) == by_hand


def test_stream_usage_from_the_last_chunk(
    gemini_client: Any, fake: FakeProviders, sink: MemorySink
) -> None:
    text = "".join(
        c.text for c in gemini_client.models.generate_content_stream(model=MODEL, contents="hi")
    )
    assert text == "Hello from the fake."
    event = one_call(sink)
    _assert_not_double_counted(event, fake)
    assert event["streaming"] is True and event["status"] == "ok"


def test_retries(gemini_client: Any, fake: FakeProviders, sink: MemorySink) -> None:
    fake.script(429, 500)
    gemini_client.models.generate_content(model=MODEL, contents="hi")
    attempts = calls(sink)
    assert [(e["attempt"], e["http_status"]) for e in attempts] == [(1, 429), (2, 500), (3, 200)]
    assert attempts[0]["error.type"] == "RESOURCE_EXHAUSTED"
    assert len({e["call_id"] for e in attempts}) == 1


def test_abandoned_stream_is_cancelled(gemini_client: Any, sink: MemorySink) -> None:
    stream = gemini_client.models.generate_content_stream(model=MODEL, contents="hi")
    next(stream)
    stream.close()
    event = one_call(sink)
    assert event["status"] == "cancelled"
    assert event["usage_status"] == "partial"  # cumulative usage of the chunks seen


def test_flex_tier_reported_by_the_response(
    gemini_client: Any, fake: FakeProviders, sink: MemorySink
) -> None:
    fake.tier = "flex"
    gemini_client.models.generate_content(model=MODEL, contents="hi")
    event = one_call(sink)
    assert event["service_tier"] == "flex"
    flex = list_prices("google", MODEL, {"service_tier": "flex"})
    assert Decimal(event["cost"]) == expected_cost(flex, fake.usage, cache_writes=False)


def test_async_json_and_stream(gemini_client: Any, fake: FakeProviders, sink: MemorySink) -> None:
    async def run() -> None:
        await gemini_client.aio.models.generate_content(model=MODEL, contents="hi")
        async for _ in await gemini_client.aio.models.generate_content_stream(
            model=MODEL, contents="hi"
        ):
            pass

    asyncio.run(run())
    plain, streamed = calls(sink)
    _assert_not_double_counted(plain, fake)
    _assert_not_double_counted(streamed, fake)
    assert streamed["streaming"] is True
