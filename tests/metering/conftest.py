"""Fixtures: one fake provider server per session, official SDK clients pointed at it, a sink.

Expected costs are computed by hand in the tests from the price table's published prices
(`list_prices`), never by calling the code under test.
"""

from __future__ import annotations

import gc
import warnings
from collections.abc import Iterator
from datetime import datetime, timezone
from decimal import Decimal
from typing import Any

import pytest

from ownership_ctx import events, metering
from ownership_ctx.sinks import MemorySink
from ownership_ctx.testing.fake_providers import FakeProviders, FakeUsage

M = Decimal(1_000_000)
BEDROCK_MODEL = "global.anthropic.claude-haiku-4-5-20251001-v1:0"


@pytest.fixture(scope="session")
def fake_server() -> Iterator[FakeProviders]:
    with FakeProviders() as fake:
        yield fake


@pytest.fixture
def fake(fake_server: FakeProviders) -> Iterator[FakeProviders]:
    fake_server.reset()
    yield fake_server
    fake_server.reset()


@pytest.fixture
def sink() -> Iterator[MemorySink]:
    """Collects events; metering's price overrides are reset around each test."""
    sink = MemorySink()
    previous = events.set_sink(sink)
    metering.configure(price_overrides=None)
    try:
        yield sink
    finally:
        gc.collect()  # let abandoned streams of this test report before the sink goes
        events.set_sink(previous)
        metering.configure(price_overrides=None)


def calls(sink: MemorySink) -> list[dict[str, Any]]:
    return sink.of_kind("provider_call")


def one_call(sink: MemorySink) -> dict[str, Any]:
    found = calls(sink)
    assert len(found) == 1, found
    return found[0]


def list_prices(
    provider_id: str,
    model: str,
    context: dict[str, str] | None = None,
    when: datetime | None = None,
) -> Any:
    """The price table's published prices for ``model`` (a genai-prices ModelPrice)."""
    from genai_prices import data_snapshot

    _, info = data_snapshot.get_snapshot().find_provider_model(model, None, provider_id, None)
    return info.get_prices(when or datetime.now(timezone.utc), context)


def price(p: Any, key: str) -> Decimal:
    value = getattr(p, key)
    assert isinstance(value, Decimal), f"{key} is not a flat price: {value!r}"
    return value


def expected_cost(p: Any, u: FakeUsage, *, cache_writes: bool) -> Decimal:
    """By hand: uncached input, cache reads, 5m and 1h cache writes, output (reasoning incl.)."""
    cost = (u.input - u.cache_read - (u.cache_write if cache_writes else 0)) * price(
        p, "input_mtok"
    )
    cost += u.cache_read * price(p, "cache_read_mtok")
    if cache_writes:
        cost += u.cache_write_5m * price(p, "cache_write_mtok")
        cost += u.cache_write_1h * price(p, "cache_write_1h_mtok")
    cost += u.output * price(p, "output_mtok")
    return cost / M


@pytest.fixture
def openai_client(fake: FakeProviders) -> Any:
    openai = pytest.importorskip("openai")
    return metering.instrument(openai.OpenAI(base_url=fake.openai_url, api_key="sk-test"))


@pytest.fixture
def async_openai_client(fake: FakeProviders) -> Any:
    openai = pytest.importorskip("openai")
    return metering.instrument(openai.AsyncOpenAI(base_url=fake.openai_url, api_key="sk-test"))


@pytest.fixture
def anthropic_client(fake: FakeProviders) -> Any:
    anthropic = pytest.importorskip("anthropic")
    return metering.instrument(anthropic.Anthropic(base_url=fake.url, api_key="sk-ant-test"))


@pytest.fixture
def async_anthropic_client(fake: FakeProviders) -> Any:
    anthropic = pytest.importorskip("anthropic")
    return metering.instrument(anthropic.AsyncAnthropic(base_url=fake.url, api_key="sk-ant-test"))


@pytest.fixture
def gemini_client(fake: FakeProviders) -> Any:
    pytest.importorskip("google.genai")
    from google import genai
    from google.genai import types

    retry = types.HttpRetryOptions(attempts=3, initial_delay=0.01, max_delay=0.02, jitter=0)
    options = types.HttpOptions(base_url=fake.url, retry_options=retry)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        client = genai.Client(api_key="test-key", http_options=options)
    return metering.instrument(client)


@pytest.fixture
def bedrock_client(fake: FakeProviders, monkeypatch: pytest.MonkeyPatch) -> Any:
    boto3 = pytest.importorskip("boto3")
    from botocore.config import Config
    from botocore.retries import standard

    # Keep botocore's retry decisions, skip its (up to seconds long) backoff sleeps.
    monkeypatch.setattr(standard.ExponentialBackoff, "delay_amount", lambda self, ctx: 0.0)
    client = boto3.client(
        "bedrock-runtime",
        endpoint_url=fake.url,
        region_name="us-east-1",
        aws_access_key_id="AKIDTEST",
        aws_secret_access_key="secret",
        config=Config(retries={"mode": "standard", "max_attempts": 3}),
    )
    return metering.instrument(client)


MESSAGES = [{"role": "user", "content": "hi"}]
