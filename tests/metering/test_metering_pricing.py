"""The cached pricing plan agrees with genai-prices; the normalizers with its extractors."""

from __future__ import annotations

import json
import time
from datetime import datetime, timezone
from decimal import Decimal
from typing import Any

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from ownership_ctx.metering.normalize import parse_json
from ownership_ctx.metering.pricing import Pricer, price_context
from ownership_ctx.metering.usage import Usage
from ownership_ctx.testing import fake_providers as fp

genai_prices = pytest.importorskip("genai_prices")

MODELS = [
    ("openai", "openai", "gpt-4o", None),
    ("openai", "openai", "gpt-5", "flex"),
    ("openai", "openai", "gpt-5-mini", "priority"),
    ("anthropic", "anthropic", "claude-haiku-4-5", None),
    ("anthropic", "anthropic", "claude-sonnet-4-5", "batch"),  # tiered by input size
    ("gcp.gemini", "google", "gemini-2.5-pro", None),  # tiered
    ("gcp.gemini", "google", "gemini-2.5-flash", "flex"),
    ("aws.bedrock", "aws", "global.anthropic.claude-haiku-4-5-20251001-v1:0", None),
]
PRICER = Pricer()
NOW = time.time()


@st.composite
def usages(draw: Any) -> Usage:
    read = draw(st.integers(0, 150_000))
    w5 = draw(st.integers(0, 50_000))
    w1 = draw(st.integers(0, 50_000))
    uncached = draw(st.integers(0, 200_000))
    output = draw(st.integers(0, 100_000))
    return Usage(
        input_tokens=uncached + read + w5 + w1,
        output_tokens=output,
        cache_read_tokens=read,
        cache_write_tokens=w5 + w1,
        cache_write_1h_tokens=w1 or None,
        reasoning_tokens=draw(st.integers(0, output)) or None,
    )


@settings(max_examples=60, deadline=None)
@given(usage=usages(), which=st.sampled_from(MODELS))
def test_plan_matches_genai_prices(usage: Usage, which: tuple[str, str, str, str | None]) -> None:
    ours, theirs, model, tier = which
    result = PRICER.price(ours, model, usage, NOW, tier)
    reference = genai_prices.calc_price(
        genai_prices.Usage(
            input_tokens=usage.input_tokens,
            output_tokens=usage.output_tokens,
            cache_read_tokens=usage.cache_read_tokens,
            cache_write_tokens=usage.cache_write_tokens,
            cache_write_1h_tokens=usage.cache_write_1h_tokens,
            output_reasoning_tokens=usage.reasoning_tokens,
        ),
        model,
        provider_id=theirs,
        genai_request_timestamp=datetime.fromtimestamp(NOW, timezone.utc),
        price_context=price_context(tier, None) or None,
    )
    assert result.cost == reference.total_price
    assert isinstance(result.cost, Decimal)


PAYLOADS = {
    ("openai", "chat"): ("chat_completions", fp._chat_body, "gpt-4o"),
    ("openai", "responses"): ("responses", fp._responses_body, "gpt-4o"),
    ("anthropic", "default"): ("messages", fp._messages_body, "claude-haiku-4-5"),
}


@pytest.mark.parametrize("key", sorted(PAYLOADS))
def test_normalizers_agree_with_genai_prices_extractors(key: tuple[str, str]) -> None:
    provider_id, flavor = key
    api, make, model = PAYLOADS[key]
    fake = fp.FakeProviders()
    body = json.loads(json.dumps(make(fake, {"model": model})))
    ours = parse_json(api, body).usage
    assert ours is not None
    theirs = genai_prices.extract_usage(body, provider_id=provider_id, api_flavor=flavor).usage
    assert ours.input_tokens == theirs.input_tokens
    assert ours.output_tokens == theirs.output_tokens
    assert ours.cache_read_tokens == theirs.cache_read_tokens


def test_gemini_and_bedrock_agree_with_genai_prices_extractors() -> None:
    fake = fp.FakeProviders()
    gemini = fp._gemini_body(fake, "gemini-2.5-flash", final=True)
    ours = parse_json("generate_content", gemini).usage
    theirs = genai_prices.extract_usage(gemini, provider_id="google").usage
    assert ours is not None
    assert (ours.input_tokens, ours.output_tokens, ours.cache_read_tokens) == (
        theirs.input_tokens,
        theirs.output_tokens,
        theirs.cache_read_tokens,
    )
    bedrock = {**fp._bedrock_body(fake), "model": "global.anthropic.claude-haiku-4-5-20251001-v1:0"}
    ours = parse_json("converse", bedrock).usage
    theirs = genai_prices.extract_usage(bedrock, provider_id="aws").usage
    assert ours is not None
    assert (ours.input_tokens, ours.cache_write_tokens, ours.cache_write_1h_tokens) == (
        theirs.input_tokens,
        theirs.cache_write_tokens,
        theirs.cache_write_1h_tokens,
    )
