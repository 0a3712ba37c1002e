"""boto3 bedrock-runtime (botocore hooks) against the fake server: Converse and ConverseStream."""

from __future__ import annotations

from decimal import Decimal
from typing import Any

import pytest

from ownership_ctx.sinks import MemorySink
from ownership_ctx.testing.fake_providers import FakeProviders

from .conftest import BEDROCK_MODEL, calls, expected_cost, list_prices, one_call

MESSAGES = [{"role": "user", "content": [{"text": "hi"}]}]


def _assert_summed(event: dict[str, Any], fake: FakeProviders) -> None:
    u = fake.usage
    # Converse's inputTokens excludes the cache: the event's input adds reads and writes.
    assert event["gen_ai.usage.input_tokens"] == u.uncached_input + u.cache_read + u.cache_write
    assert event["gen_ai.usage.cache_read.input_tokens"] == u.cache_read
    assert event["gen_ai.usage.cache_creation.input_tokens"] == u.cache_write
    assert (event["cache_write_5m_tokens"], event["cache_write_1h_tokens"]) == (
        u.cache_write_5m,
        u.cache_write_1h,
    )
    assert event["gen_ai.usage.output_tokens"] == u.output


def test_converse(bedrock_client: Any, fake: FakeProviders, sink: MemorySink) -> None:
    response = bedrock_client.converse(modelId=BEDROCK_MODEL, messages=MESSAGES)
    assert response["usage"]["inputTokens"] == fake.usage.uncached_input  # caller's view
    event = one_call(sink)
    _assert_summed(event, fake)
    assert event["gen_ai.provider.name"] == "aws.bedrock" and event["api"] == "converse"
    assert event["gen_ai.response.model"] == BEDROCK_MODEL
    assert event["service_tier"] == "default"
    assert event["provider_request_id"] == response["ResponseMetadata"]["RequestId"]
    expected = expected_cost(list_prices("aws", BEDROCK_MODEL), fake.usage, cache_writes=True)
    assert Decimal(event["cost"]) == expected


def test_converse_stream(bedrock_client: Any, fake: FakeProviders, sink: MemorySink) -> None:
    response = bedrock_client.converse_stream(modelId=BEDROCK_MODEL, messages=MESSAGES)
    seen = [next(iter(e)) for e in response["stream"]]
    assert seen == [
        "messageStart",
        "contentBlockDelta",
        "contentBlockDelta",
        "contentBlockDelta",
        "contentBlockStop",
        "messageStop",
        "metadata",
    ]
    event = one_call(sink)
    _assert_summed(event, fake)
    assert event["streaming"] is True and event["status"] == "ok"
    expected = expected_cost(list_prices("aws", BEDROCK_MODEL), fake.usage, cache_writes=True)
    assert Decimal(event["cost"]) == expected


@pytest.mark.parametrize("operation", ["converse", "converse_stream"])
def test_retries(
    bedrock_client: Any, fake: FakeProviders, sink: MemorySink, operation: str
) -> None:
    fake.script(429, 500)
    response = getattr(bedrock_client, operation)(modelId=BEDROCK_MODEL, messages=MESSAGES)
    for _ in response.get("stream", ()):
        pass
    attempts = calls(sink)
    assert [(e["attempt"], e["status"], e["http_status"]) for e in attempts] == [
        (1, "error", 429),
        (2, "error", 500),
        (3, "ok", 200),
    ]
    assert attempts[0]["error.type"] == "ThrottlingException"
    assert attempts[1]["error.type"] == "InternalServerException"
    assert len({e["call_id"] for e in attempts}) == 1
    assert attempts[0]["cost"] is None and attempts[2]["cost"] is not None


def test_dropped_connection_is_a_failed_attempt(
    bedrock_client: Any, fake: FakeProviders, sink: MemorySink
) -> None:
    fake.script("drop")
    bedrock_client.converse(modelId=BEDROCK_MODEL, messages=MESSAGES)
    first, second = calls(sink)
    assert (first["status"], first["http_status"], second["status"]) == ("error", None, "ok")
    assert first["error.type"]


def test_abandoned_stream_is_cancelled(bedrock_client: Any, sink: MemorySink) -> None:
    response = bedrock_client.converse_stream(modelId=BEDROCK_MODEL, messages=MESSAGES)
    stream = response["stream"]
    next(iter(stream))
    stream.close()
    event = one_call(sink)
    # Cancelled before the metadata event: estimated (test_metering_cancelled_estimate.py).
    assert event["status"] == "cancelled" and event["usage_status"] == "estimated"
    assert event["cost"] is not None and event["cost_source"] == "price_table"
