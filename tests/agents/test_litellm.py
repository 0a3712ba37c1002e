"""LiteLLM as a client library: every attempt one owned, priced event, recorded once."""

from __future__ import annotations

import asyncio
import json
import time
from collections.abc import Callable, Iterator
from concurrent.futures import ThreadPoolExecutor
from decimal import Decimal
from typing import Any

import anthropic
import litellm
import pytest

from ownership_ctx import Envelope, bind, metering
from ownership_ctx import litellm as oc_litellm
from ownership_ctx.sinks import MemorySink
from ownership_ctx.testing.fake_providers import FakeProviders
from tests.agents.support import TRACE, calls

HI = [{"role": "user", "content": "hi"}]
SEARCH = Envelope(trace_id=TRACE, owner_team="search", workflow_id="answer", feature="qa")


@pytest.fixture(autouse=True)
def callback() -> Iterator[None]:
    oc_litellm.install()
    metering.instrument_all()
    try:
        yield
    finally:
        metering.uninstrument_all()
        oc_litellm.uninstall()
        metering.configure(price_overrides=None)


def wait_for(sink: MemorySink, n: int) -> list[dict[str, Any]]:
    """LiteLLM runs success callbacks on a logging thread: wait (bounded) for them."""
    deadline = time.monotonic() + 10
    while len(calls(sink)) < n and time.monotonic() < deadline:
        time.sleep(0.01)
    time.sleep(0.05)  # and make sure no extra one follows
    return calls(sink)


def claude(fake: FakeProviders, **kwargs: Any) -> Any:
    return litellm.completion(
        model="anthropic/claude-haiku-4-5",
        api_base=fake.url,
        api_key="sk-ant-test",
        messages=HI,
        max_tokens=16,
        **kwargs,
    )


def gpt(fake: FakeProviders, **kwargs: Any) -> Any:
    return litellm.completion(
        model="openai/gpt-4o", api_base=fake.openai_url, api_key="sk-test", messages=HI, **kwargs
    )


def test_litellm_own_http_calls_are_recorded_by_the_callback_owned_and_priced_like_the_sdk(
    fake: FakeProviders, sink: MemorySink
) -> None:
    with bind(SEARCH):
        claude(fake)
    (event,) = wait_for(sink, 1)
    assert event["recorded_by"] == "litellm"
    owner = (event["owner_team"], event["workflow_id"], event["feature"])
    assert owner == ("search", "answer", "qa")
    assert (event["gen_ai.provider.name"], event["status"], event["attempt"]) == (
        "anthropic",
        "ok",
        1,
    )
    # The same usage through the official SDK costs the same: one price table for both.
    anthropic.Anthropic(base_url=fake.url, api_key="k").messages.create(
        model="claude-haiku-4-5", max_tokens=16, messages=HI
    )
    _, direct = calls(sink)
    assert direct["recorded_by"] == "httpx"
    for key in ("cost", "gen_ai.usage.input_tokens", "gen_ai.usage.cache_read.input_tokens"):
        assert event[key] == direct[key], key
    assert event["cost_source"] == "price_table"
    assert "litellm_response_cost" not in event  # LiteLLM agrees with us here


def test_calls_through_an_instrumented_sdk_are_recorded_once_by_the_transport(
    fake: FakeProviders, sink: MemorySink
) -> None:
    with bind(SEARCH):
        gpt(fake)
        for _ in gpt(fake, stream=True, stream_options={"include_usage": True}):
            pass
    events = wait_for(sink, 2)
    assert [(e["recorded_by"], e["streaming"]) for e in events] == [
        ("httpx", False),
        ("httpx", True),
    ]
    assert all(e["owner_team"] == "search" for e in events)


def test_without_sdk_instrumentation_the_callback_records_sdk_calls_too(
    fake: FakeProviders, sink: MemorySink
) -> None:
    metering.uninstrument_all()
    litellm.in_memory_llm_clients_cache.flush_cache()  # clients made while it was on
    with bind(SEARCH):
        gpt(fake)
    (event,) = wait_for(sink, 1)
    assert (event["recorded_by"], event["gen_ai.provider.name"]) == ("litellm", "openai")
    assert event["cost"] == "0.00525000"


def test_a_stream_is_one_event_with_its_usage(fake: FakeProviders, sink: MemorySink) -> None:
    with bind(SEARCH):
        for _ in claude(fake, stream=True):
            pass
    (event,) = wait_for(sink, 1)
    assert event["streaming"] and event["status"] == "ok"
    assert event["gen_ai.usage.input_tokens"] == 1000 and event["cost"] is not None


def test_each_retry_attempt_is_one_event_of_the_same_call(
    fake: FakeProviders, sink: MemorySink
) -> None:
    fake.script(429, api="messages")
    with bind(SEARCH):
        claude(fake, num_retries=2)
    failed, ok = wait_for(sink, 2)
    assert (failed["status"], failed["attempt"], failed["cost"]) == ("error", 1, None)
    assert (ok["status"], ok["attempt"]) == ("ok", 2)
    assert failed["call_id"] == ok["call_id"]
    assert failed["owner_team"] == ok["owner_team"] == "search"


def test_a_fallback_to_another_model_records_both_attempts_owned(
    fake: FakeProviders, sink: MemorySink
) -> None:
    fake.script(500, api="messages")
    backup = {"model": "openai/gpt-4o", "api_base": fake.openai_url, "api_key": "sk-test"}
    with bind(SEARCH):
        response = claude(fake, fallbacks=[backup])
    assert response.model == "gpt-4o"
    failed, ok = wait_for(sink, 2)
    assert (failed["gen_ai.provider.name"], failed["status"]) == ("anthropic", "error")
    assert (ok["gen_ai.provider.name"], ok["status"], ok["cost"]) == ("openai", "ok", "0.00525000")
    assert failed["owner_team"] == ok["owner_team"] == "search"


def test_litellm_response_cost_is_reported_beside_ours_when_they_differ(
    fake: FakeProviders, sink: MemorySink
) -> None:
    metering.configure(price_overrides={"anthropic/*": {"multiplier": "0.5"}})
    claude(fake)
    (event,) = wait_for(sink, 1)
    assert Decimal(event["litellm_response_cost"]) == 2 * Decimal(event["cost"])
    assert event["cost_source"] == "override"


def test_interleaved_owners_in_threads_and_tasks_are_never_mixed(
    fake: FakeProviders, sink: MemorySink
) -> None:
    teams = [f"team-{i}" for i in range(6)]

    def one(team: str, call: Callable[..., Any]) -> None:
        with bind(Envelope(trace_id=TRACE, owner_team=team)):
            call(fake)

    with ThreadPoolExecutor(max_workers=6) as pool:
        list(pool.map(one, teams, [claude, gpt] * 3))

    async def owned(team: str, model: str, base: str) -> None:
        with bind(Envelope(trace_id=TRACE, owner_team=team)):
            await litellm.acompletion(
                model=model, api_base=base, api_key="k", messages=HI, max_tokens=16
            )

    async def main() -> None:
        await asyncio.gather(
            *(
                owned(f"async-{i}", *pair)
                for i, pair in enumerate(
                    [("anthropic/claude-haiku-4-5", fake.url), ("openai/gpt-4o", fake.openai_url)]
                    * 3
                )
            )
        )
        await asyncio.sleep(0)

    asyncio.run(main())
    events = wait_for(sink, 12)
    assert len(events) == 12
    owners = sorted(e["owner_team"] for e in events)
    assert owners == sorted([*teams, *(f"async-{i}" for i in range(6))])
    by_team = {e["owner_team"]: e["gen_ai.provider.name"] for e in events}
    assert [by_team[t] for t in teams] == ["anthropic", "openai"] * 3


def test_uninstall_removes_the_callback(fake: FakeProviders, sink: MemorySink) -> None:
    oc_litellm.uninstall()
    assert not oc_litellm.installed()
    claude(fake)
    assert wait_for(sink, 1) == []
    assert oc_litellm.install() is oc_litellm.install()  # idempotent
    assert litellm.callbacks.count(oc_litellm.install()) == 1


def test_proxy_headers_are_what_the_litellm_proxy_records() -> None:
    from litellm.proxy.litellm_pre_call_utils import LiteLLMProxyRequestSetup

    assert oc_litellm.proxy_headers() == {}  # nothing bound: nothing sent
    envelope = SEARCH.replace(tenant="h1:" + "a" * 32)
    headers = oc_litellm.proxy_headers(envelope)
    metadata = LiteLLMProxyRequestSetup._get_spend_logs_metadata_from_request_headers(headers)
    assert metadata == {f"ownership.{k}": v for k, v in envelope.as_dict().items()}
    assert json.loads(headers["x-litellm-spend-logs-metadata"]) == metadata
    tags = headers["x-litellm-tags"].split(",")
    assert tags[:3] == ["owner_team:search", "workflow_id:answer", "feature:qa"]
    assert tags[3:] == [f"tenant:{envelope.tenant}"]


def test_a_router_fallback_group_is_one_owned_event_per_attempt(
    fake: FakeProviders, sink: MemorySink
) -> None:
    router = litellm.Router(
        model_list=[
            {
                "model_name": "claude",
                "litellm_params": {
                    "model": "anthropic/claude-haiku-4-5",
                    "api_base": fake.url,
                    "api_key": "sk-ant-test",
                },
            },
            {
                "model_name": "gpt",
                "litellm_params": {
                    "model": "openai/gpt-4o",
                    "api_base": fake.openai_url,
                    "api_key": "sk-test",
                },
            },
        ],
        fallbacks=[{"claude": ["gpt"]}],
        num_retries=0,
    )
    fake.script(500, api="messages")
    with bind(SEARCH):
        response = router.completion(model="claude", messages=HI, max_tokens=16)
        router.completion(model="claude", messages=HI, max_tokens=16)
    assert response.model == "gpt-4o"
    events = wait_for(sink, 3)
    assert [(e["gen_ai.provider.name"], e["status"]) for e in events] == [
        ("anthropic", "error"),
        ("openai", "ok"),
        ("anthropic", "ok"),
    ]
    assert {e["owner_team"] for e in events} == {"search"}
