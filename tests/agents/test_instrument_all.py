"""`metering.instrument_all()`: every official SDK client is metered, whoever makes it, once."""

from __future__ import annotations

import asyncio
import subprocess
import sys
import textwrap
from typing import Any

import anthropic
import boto3
import openai
from google import genai
from google.genai import types

from ownership_ctx import Envelope, bind, metering
from ownership_ctx.sinks import MemorySink
from ownership_ctx.testing.fake_providers import FakeProviders
from tests.agents.support import TRACE, calls

BEDROCK_MODEL = "global.anthropic.claude-haiku-4-5-20251001-v1:0"
HI = [{"role": "user", "content": "hi"}]


def _library_makes_a_client(fake: FakeProviders) -> Any:
    """Stands for LangChain, LiteLLM, ...: a client the application never sees."""
    return openai.OpenAI(base_url=fake.openai_url, api_key="sk-test", max_retries=0)


def test_a_client_made_by_someone_else_is_metered_and_owned(
    fake: FakeProviders, sink: MemorySink, auto: None
) -> None:
    client = _library_makes_a_client(fake)
    with bind(Envelope(trace_id=TRACE, owner_team="search")):
        client.chat.completions.create(model="gpt-4o", messages=HI)
    (event,) = calls(sink)
    assert (event["owner_team"], event["status"], event["cost_source"]) == (
        "search",
        "ok",
        "price_table",
    )


def test_every_sdk_sync_and_async_is_covered(
    fake: FakeProviders, sink: MemorySink, auto: None
) -> None:
    openai.OpenAI(base_url=fake.openai_url, api_key="k").responses.create(
        model="gpt-4o", input="hi"
    )
    anthropic.Anthropic(base_url=fake.url, api_key="k").messages.create(
        model="claude-haiku-4-5", max_tokens=8, messages=HI
    )
    gemini = genai.Client(api_key="k", http_options=types.HttpOptions(base_url=fake.url))
    gemini.models.generate_content(model="gemini-2.5-flash", contents="hi")
    boto3.client(
        "bedrock-runtime",
        endpoint_url=fake.url,
        region_name="us-east-1",
        aws_access_key_id="test",
        aws_secret_access_key="test",
    ).converse(modelId=BEDROCK_MODEL, messages=[{"role": "user", "content": [{"text": "hi"}]}])

    async def in_loop() -> None:
        await openai.AsyncOpenAI(base_url=fake.openai_url, api_key="k").chat.completions.create(
            model="gpt-4o", messages=HI
        )
        await anthropic.AsyncAnthropic(base_url=fake.url, api_key="k").messages.create(
            model="claude-haiku-4-5", max_tokens=8, messages=HI
        )
        await gemini.aio.models.generate_content(model="gemini-2.5-flash", contents="hi")

    asyncio.run(in_loop())
    providers = [e["gen_ai.provider.name"] for e in calls(sink)]
    assert providers == [
        "openai",
        "anthropic",
        "gcp.gemini",
        "aws.bedrock",
        "openai",
        "anthropic",
        "gcp.gemini",
    ]
    assert all(e["status"] == "ok" for e in calls(sink))


def test_idempotent_and_composes_with_instrument_without_double_counting(
    fake: FakeProviders, sink: MemorySink, auto: None
) -> None:
    metering.instrument_all()  # twice: still one wrapper
    client = metering.instrument(_library_makes_a_client(fake))  # and explicitly too
    copy = client.with_options(timeout=5)
    client.chat.completions.create(model="gpt-4o", messages=HI)
    copy.chat.completions.create(model="gpt-4o", messages=HI)
    assert len(calls(sink)) == 2


def test_retries_are_attempts_of_one_call(
    fake: FakeProviders, sink: MemorySink, auto: None
) -> None:
    client = openai.OpenAI(base_url=fake.openai_url, api_key="sk-test", max_retries=2)
    fake.script(429)
    client.chat.completions.create(model="gpt-4o", messages=HI)
    failed, ok = calls(sink)
    assert (failed["attempt"], ok["attempt"]) == (1, 2)
    assert failed["call_id"] == ok["call_id"]


def test_undo_stops_auto_clients_and_keeps_the_applications_own(
    fake: FakeProviders, sink: MemorySink
) -> None:
    metering.instrument_all()
    auto_client = _library_makes_a_client(fake)
    own = metering.instrument(_library_makes_a_client(fake))
    gemini = genai.Client(api_key="k", http_options=types.HttpOptions(base_url=fake.url))
    bedrock = boto3.client(
        "bedrock-runtime",
        endpoint_url=fake.url,
        region_name="us-east-1",
        aws_access_key_id="test",
        aws_secret_access_key="test",
    )
    metering.uninstrument_all()
    assert not metering.instrumented_all()
    assert not metering.instrumented(auto_client)
    assert not metering.instrumented(gemini) and not metering.instrumented(bedrock)
    later = _library_makes_a_client(fake)
    for client in (auto_client, later, own):
        client.chat.completions.create(model="gpt-4o", messages=HI)
    gemini.models.generate_content(model="gemini-2.5-flash", contents="hi")
    bedrock.converse(modelId=BEDROCK_MODEL, messages=[{"role": "user", "content": [{"text": "x"}]}])
    assert len(calls(sink)) == 1  # only the application's own client


def test_sdks_imported_after_the_call_are_wrapped_on_import(fake: FakeProviders) -> None:
    script = textwrap.dedent(
        f"""
        import sys
        from ownership_ctx import events, metering
        from ownership_ctx.sinks import MemorySink
        sink = MemorySink(); events.set_sink(sink)
        metering.instrument_all()
        assert "openai" not in sys.modules
        import openai
        openai.OpenAI(base_url="{fake.openai_url}", api_key="k").chat.completions.create(
            model="gpt-4o", messages=[{{"role": "user", "content": "hi"}}])
        print(len(sink.of_kind("provider_call")))
        """
    )
    out = subprocess.run(
        [sys.executable, "-c", script], capture_output=True, text=True, timeout=120, check=True
    )
    assert out.stdout.strip() == "1"
