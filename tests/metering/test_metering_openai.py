"""OpenAI SDK (sync and async) against the fake server: chat, responses, embeddings."""

from __future__ import annotations

import asyncio
import gc
import re
from decimal import Decimal
from typing import Any

import pytest

from ownership_ctx.sinks import MemorySink
from ownership_ctx.testing.fake_providers import FakeProviders

from .conftest import MESSAGES, M, calls, expected_cost, list_prices, one_call, price


def _assert_tokens(event: dict[str, Any], fake: FakeProviders) -> None:
    u = fake.usage
    # OpenAI's prompt_tokens already includes cached tokens: not added twice.
    assert event["gen_ai.usage.input_tokens"] == u.input
    assert event["gen_ai.usage.cache_read.input_tokens"] == u.cache_read
    assert event["gen_ai.usage.output_tokens"] == u.output


def test_chat_json_tokens_and_cost(
    openai_client: Any, fake: FakeProviders, sink: MemorySink
) -> None:
    fake.served_models["gpt-4o"] = "gpt-4o-2024-08-06"
    openai_client.chat.completions.create(model="gpt-4o", messages=MESSAGES)
    event = one_call(sink)
    _assert_tokens(event, fake)
    assert event["gen_ai.usage.reasoning.output_tokens"] == fake.usage.reasoning
    assert event["gen_ai.request.model"] == "gpt-4o"
    assert event["gen_ai.response.model"] == "gpt-4o-2024-08-06"
    assert event["gen_ai.provider.name"] == "openai"
    assert event["api"] == "chat_completions"
    assert (event["status"], event["attempt"], event["streaming"]) == ("ok", 1, False)
    expected = expected_cost(list_prices("openai", "gpt-4o"), fake.usage, cache_writes=False)
    assert Decimal(event["cost"]) == expected
    assert event["cost_source"] == "price_table"
    assert event["provider_request_id"].startswith("req_")
    assert event["problems"] == []


def test_chat_stream_with_include_usage(
    openai_client: Any, fake: FakeProviders, sink: MemorySink
) -> None:
    stream = openai_client.chat.completions.create(
        model="gpt-4o", messages=MESSAGES, stream=True, stream_options={"include_usage": True}
    )
    text = "".join(c.choices[0].delta.content or "" for c in stream if c.choices)
    assert text == "Hello from the fake."  # passed through untouched
    event = one_call(sink)
    _assert_tokens(event, fake)
    assert event["streaming"] is True and event["usage_status"] == "reported"
    # Cached tokens survive streaming: priced at the cache price, not as uncached input.
    expected = expected_cost(list_prices("openai", "gpt-4o"), fake.usage, cache_writes=False)
    assert Decimal(event["cost"]) == expected


def test_chat_stream_without_include_usage_is_unknown_not_zero(
    openai_client: Any, sink: MemorySink
) -> None:
    for _ in openai_client.chat.completions.create(model="gpt-4o", messages=MESSAGES, stream=True):
        pass
    event = one_call(sink)
    assert event["status"] == "ok"
    assert event["usage_status"] == "missing"
    assert event["gen_ai.usage.input_tokens"] is None and event["cost"] is None
    assert event["cost_source"] == "unpriced"
    assert "usage_missing:stream_without_include_usage" in event["problems"]


def test_responses_json_and_stream(
    openai_client: Any, fake: FakeProviders, sink: MemorySink
) -> None:
    openai_client.responses.create(model="gpt-5", input="hi")
    for _ in openai_client.responses.create(model="gpt-5", input="hi", stream=True):
        pass
    plain, streamed = calls(sink)
    expected = expected_cost(list_prices("openai", "gpt-5"), fake.usage, cache_writes=False)
    for event in (plain, streamed):
        assert event["api"] == "responses"
        _assert_tokens(event, fake)
        assert event["gen_ai.usage.reasoning.output_tokens"] == fake.usage.reasoning
        assert Decimal(event["cost"]) == expected
    assert streamed["streaming"] is True and streamed["gen_ai.response.id"].startswith("resp_")


def test_embeddings(openai_client: Any, fake: FakeProviders, sink: MemorySink) -> None:
    openai_client.embeddings.create(model="text-embedding-3-small", input="hi")
    event = one_call(sink)
    assert event["gen_ai.operation.name"] == "embeddings"
    assert event["gen_ai.usage.input_tokens"] == fake.usage.input
    p = list_prices("openai", "text-embedding-3-small")
    assert Decimal(event["cost"]) == fake.usage.input * price(p, "input_mtok") / M


def test_service_tier_reported_by_the_response_prices_the_call(
    openai_client: Any, fake: FakeProviders, sink: MemorySink
) -> None:
    fake.tier = "flex"  # asked for priority, served (and billed) as flex
    openai_client.chat.completions.create(model="gpt-5", messages=MESSAGES, service_tier="priority")
    event = one_call(sink)
    assert event["service_tier"] == "flex"
    flex = list_prices("openai", "gpt-5", {"service_tier": "flex"})
    priority = list_prices("openai", "gpt-5", {"service_tier": "priority"})
    assert Decimal(event["cost"]) == expected_cost(flex, fake.usage, cache_writes=False)
    assert Decimal(event["cost"]) != expected_cost(priority, fake.usage, cache_writes=False)


def test_retries_yield_one_event_per_attempt(
    openai_client: Any, fake: FakeProviders, sink: MemorySink
) -> None:
    fake.script(429, 500, "drop")
    # An instrumented client's with_options() copy is instrumented too.
    openai_client.with_options(max_retries=3).chat.completions.create(
        model="gpt-4o", messages=MESSAGES
    )
    attempts = calls(sink)
    assert [e["attempt"] for e in attempts] == [1, 2, 3, 4]
    assert len({e["call_id"] for e in attempts}) == 1
    # One event id per attempt, 32 hex led by the attempt's time in ms: later attempts sort
    # after earlier ones.
    ids = [e["event_id"] for e in attempts]
    assert all(re.fullmatch(r"[0-9a-f]{32}", i) for i in ids) and len(set(ids)) == 4
    assert [int(i[:12], 16) for i in ids] == sorted(int(i[:12], 16) for i in ids)
    assert all(abs(int(e["event_id"][:12], 16) / 1000 - e["ts"]) < 1 for e in attempts)
    assert [e["status"] for e in attempts] == ["error", "error", "error", "ok"]
    assert [e["http_status"] for e in attempts] == [429, 500, None, 200]
    assert attempts[2]["error.type"] == "RemoteProtocolError"
    for failed in attempts[:3]:
        assert failed["gen_ai.usage.input_tokens"] is None and failed["cost"] is None
    assert attempts[3]["cost"] is not None
    # Requests the SDK made: four attempts of one call, numbered by the SDK too.
    retry_counts = [r["headers"].get("x-stainless-retry-count") for r in fake.requests]
    assert retry_counts == ["0", "1", "2", "3"]


def test_failed_call_after_last_retry_still_recorded(
    openai_client: Any, fake: FakeProviders, sink: MemorySink
) -> None:
    import openai

    fake.script(500, 500)
    with pytest.raises(openai.InternalServerError):
        openai_client.with_options(max_retries=1).chat.completions.create(
            model="gpt-4o", messages=MESSAGES
        )
    attempts = calls(sink)
    assert [(e["attempt"], e["status"]) for e in attempts] == [(1, "error"), (2, "error")]
    assert attempts[0]["call_id"] == attempts[1]["call_id"]


def test_abandoned_stream_is_cancelled(openai_client: Any, sink: MemorySink) -> None:
    stream = openai_client.chat.completions.create(
        model="gpt-4o", messages=MESSAGES, stream=True, stream_options={"include_usage": True}
    )
    next(iter(stream))
    stream.close()
    event = one_call(sink)
    assert event["status"] == "cancelled"
    assert event["gen_ai.response.model"] == "gpt-4o"  # what was seen is kept
    # No usage seen: estimated and priced (test_metering_cancelled_estimate.py).
    assert event["cost"] is not None and event["usage_status"] == "estimated"


def test_an_answer_that_mentions_done_is_not_the_end_of_the_stream(
    openai_client: Any, sink: MemorySink, monkeypatch: pytest.MonkeyPatch
) -> None:
    # Only a whole `data: [DONE]` line ends an OpenAI stream; the text may say anything.
    from ownership_ctx.testing import fake_providers

    monkeypatch.setattr(fake_providers, "_TEXT", ("print('[DONE]')", " and", " more"))
    stream = openai_client.chat.completions.create(
        model="gpt-4o", messages=MESSAGES, stream=True, stream_options={"include_usage": True}
    )
    chunks = iter(stream)
    next(chunks)  # the role
    assert next(chunks).choices[0].delta.content == "print('[DONE]')"
    stream.close()
    assert one_call(sink)["status"] == "cancelled"


def test_stream_dropped_by_gc_is_cancelled(openai_client: Any, sink: MemorySink) -> None:
    stream = openai_client.chat.completions.create(
        model="gpt-4o", messages=MESSAGES, stream=True, stream_options={"include_usage": True}
    )
    next(iter(stream))
    del stream
    gc.collect()
    assert one_call(sink)["status"] == "cancelled"


def test_stream_cut_by_the_server_is_an_error_with_partial_usage(
    openai_client: Any, fake: FakeProviders, sink: MemorySink
) -> None:
    import openai

    fake.script("cut")
    with pytest.raises(openai.APIError):
        for _ in openai_client.chat.completions.create(
            model="gpt-4o", messages=MESSAGES, stream=True, stream_options={"include_usage": True}
        ):
            pass
    event = one_call(sink)
    assert event["status"] == "error" and event["error.type"]


def test_gzip_bodies_are_metered_and_passed_through(
    openai_client: Any, fake: FakeProviders, sink: MemorySink
) -> None:
    fake.gzip = True
    response = openai_client.chat.completions.create(model="gpt-4o", messages=MESSAGES)
    assert response.usage.prompt_tokens == fake.usage.input
    assert one_call(sink)["gen_ai.usage.input_tokens"] == fake.usage.input


def test_async_client_json_stream_and_retries(
    async_openai_client: Any, fake: FakeProviders, sink: MemorySink
) -> None:
    async def run() -> None:
        await async_openai_client.chat.completions.create(model="gpt-4o", messages=MESSAGES)
        stream = await async_openai_client.chat.completions.create(
            model="gpt-4o", messages=MESSAGES, stream=True, stream_options={"include_usage": True}
        )
        async for _ in stream:
            pass
        fake.script(429)
        await async_openai_client.responses.create(model="gpt-4o", input="hi")

    asyncio.run(run())
    plain, streamed, failed, retried = calls(sink)
    expected = expected_cost(list_prices("openai", "gpt-4o"), fake.usage, cache_writes=False)
    for event in (plain, streamed, retried):
        assert Decimal(event["cost"]) == expected
    assert (failed["attempt"], failed["http_status"], retried["attempt"]) == (1, 429, 2)
    assert failed["call_id"] == retried["call_id"] != plain["call_id"]


def test_non_metered_endpoints_pass_through(openai_client: Any, sink: MemorySink) -> None:
    import openai

    with pytest.raises(openai.NotFoundError):
        openai_client.models.list()
    assert calls(sink) == []
