"""Reconciliation keys on every provider_call: request ids, billing scopes, key fingerprints,
and the owner in Bedrock's requestMetadata (so AWS's invocation logs carry it)."""

from __future__ import annotations

import hashlib
from typing import Any

import anthropic
import openai
import pytest

from ownership_ctx import Envelope, bind, metering
from ownership_ctx.metering.billing import request_metadata
from ownership_ctx.sinks import MemorySink
from ownership_ctx.testing.fake_providers import FakeProviders

from .conftest import BEDROCK_MODEL, one_call

TRACE = "4bf92f3577b34da6a3ce929d0e0e4736"


def _fp(key: str) -> str:
    return "sha256:" + hashlib.sha256(key.encode()).hexdigest()[:16]


def test_openai_project_and_key_fingerprint(fake: FakeProviders, sink: MemorySink) -> None:
    client = metering.instrument(
        openai.OpenAI(base_url=fake.openai_url, api_key="sk-proj-secret", project="proj_abc")
    )
    client.chat.completions.create(model="gpt-4o", messages=[{"role": "user", "content": "x"}])
    event = one_call(sink)
    assert event["billing_scope"] == "proj_abc"
    assert event["api_key_fingerprint"] == _fp("sk-proj-secret")
    assert event["provider_request_id"] == "req_" + fake.requests[-1]["request_id"]
    assert "sk-proj-secret" not in repr(event)


def test_anthropic_has_a_fingerprint_but_no_scope(fake: FakeProviders, sink: MemorySink) -> None:
    client = metering.instrument(anthropic.Anthropic(base_url=fake.url, api_key="sk-ant-xyz"))
    client.messages.create(
        model="claude-haiku-4-5", max_tokens=8, messages=[{"role": "user", "content": "x"}]
    )
    event = one_call(sink)
    assert (event["billing_scope"], event["api_key_fingerprint"]) == (None, _fp("sk-ant-xyz"))
    assert event["provider_request_id"] == "req_" + fake.requests[-1]["request_id"]


def test_gemini_request_id_is_the_response_id(gemini_client: Any, sink: MemorySink) -> None:
    gemini_client.models.generate_content(model="gemini-2.5-flash", contents="hi")
    event = one_call(sink)
    assert event["provider_request_id"] == event["gen_ai.response.id"] is not None


def test_bedrock_region_and_owner_in_request_metadata(
    bedrock_client: Any, fake: FakeProviders, sink: MemorySink
) -> None:
    envelope = Envelope(
        trace_id=TRACE, owner_team="search", feature="triage", tenant="h1:" + "ab" * 16
    )
    with bind(envelope):
        bedrock_client.converse(
            modelId=BEDROCK_MODEL,
            messages=[{"role": "user", "content": [{"text": "hi"}]}],
            requestMetadata={"app": "mine"},
        )
    event = one_call(sink)
    assert event["billing_region"] == bedrock_client.meta.region_name
    sent = fake.requests[-1]["json"]["requestMetadata"]
    assert sent == {
        "app": "mine",
        "ownership.trace_id": TRACE,
        "ownership.owner_team": "search",
        "ownership.feature": "triage",
        "ownership.tenant": "h1:" + "ab" * 16,
    }


def test_bedrock_without_envelope_sends_no_metadata(
    bedrock_client: Any, fake: FakeProviders, sink: MemorySink
) -> None:
    bedrock_client.converse(
        modelId=BEDROCK_MODEL, messages=[{"role": "user", "content": [{"text": "hi"}]}]
    )
    assert "requestMetadata" not in fake.requests[-1]["json"]
    assert one_call(sink)["attribution"] == "unattributed"


@pytest.mark.parametrize("taken", [0, 14, 16])
def test_request_metadata_keeps_the_callers_entries_and_the_limit(taken: int) -> None:
    existing = {f"k{i}": "v" for i in range(taken)}
    merged = request_metadata(existing, {"trace_id": TRACE, "owner_team": "a", "feature": "b"})
    if taken == 16:
        assert merged is None
    else:
        assert merged is not None and len(merged) == min(16, taken + 3)
        assert {k: merged[k] for k in existing} == existing
