"""Metered clients and budgets: the worst case is reserved before a call is sent, settled to
the real cost after (streams when they end), and a spent budget refuses before sending."""

from __future__ import annotations

from collections.abc import Iterator
from decimal import Decimal

import openai
import pytest

from ownership_ctx import bind, budgets, metering
from ownership_ctx.budgets import BudgetExceeded, Budgets
from ownership_ctx.budgets.metering import worst_case
from ownership_ctx.testing.fake_providers import FakeProviders, FakeUsage
from tests.budgets.support import envelope, team_budget

MESSAGES = [{"role": "user", "content": "hi"}]
USAGE = FakeUsage(
    input=10, cache_read=0, cache_write_5m=0, cache_write_1h=0, output=32, reasoning=0
)


@pytest.fixture
def fake() -> Iterator[FakeProviders]:
    with FakeProviders() as provider:
        provider.usage = USAGE
        yield provider


def chat_calls(fake: FakeProviders) -> int:
    return len([r for r in fake.requests if r["path"].endswith("/chat/completions")])


def test_the_worst_case_prices_request_bytes_and_max_tokens_like_metering() -> None:
    body = {"model": "gpt-4o", "max_tokens": 100, "messages": MESSAGES}
    cost = worst_case("openai", body, default_max_tokens=4096)
    size = len(
        '{"model": "gpt-4o", "max_tokens": 100, "messages": [{"role": "user", "content": "hi"}]}'
    )
    assert cost == Decimal("2.50") * size / 10**6 + Decimal("10.00") * 100 / 10**6
    no_max = worst_case("openai", {"model": "gpt-4o"}, default_max_tokens=1000)
    assert no_max is not None and no_max > Decimal("0.01")  # 1000 output tokens at $10/M
    assert worst_case("openai", {"model": "no-such-model"}, default_max_tokens=10) is None


def test_a_call_is_reserved_then_settled_to_its_real_cost(fake: FakeProviders) -> None:
    live = Budgets([team_budget()])
    budgets.install(live)
    client = metering.instrument(openai.OpenAI(base_url=fake.openai_url, api_key="sk-test"))
    seen: list[tuple[Decimal, Decimal]] = []
    original = live.counters.settle

    def spy(held, reserved, actual, lease):  # type: ignore[no-untyped-def]
        seen.append((Decimal(reserved) / 10**9, Decimal(actual) / 10**9))
        original(held, reserved, actual, lease)

    live.counters.settle = spy  # type: ignore[method-assign]
    with bind(envelope()):
        client.chat.completions.create(model="gpt-4o", max_tokens=32, messages=MESSAGES)
    ((reserved, actual),) = seen
    assert actual == Decimal("2.50") * 10 / 10**6 + Decimal("10.00") * 32 / 10**6
    assert actual < reserved
    assert live.usage(live.budgets[0]) == (actual, Decimal(0))


def test_a_stream_settles_when_it_ends(fake: FakeProviders) -> None:
    live = Budgets([team_budget()])
    budgets.install(live)
    client = metering.instrument(openai.OpenAI(base_url=fake.openai_url, api_key="sk-test"))
    with bind(envelope()):
        stream = client.chat.completions.create(
            model="gpt-4o",
            max_tokens=32,
            messages=MESSAGES,
            stream=True,
            stream_options={"include_usage": True},
        )
        spent, reserved = live.usage(live.budgets[0])
        assert spent == 0 and reserved > 0  # in flight
        for _ in stream:
            pass
    spent, reserved = live.usage(live.budgets[0])
    assert spent > 0 and reserved == 0


def test_a_spent_budget_refuses_before_anything_is_sent(fake: FakeProviders) -> None:
    live = Budgets([team_budget(Decimal("0.0001"))])
    budgets.install(live)
    client = metering.instrument(openai.OpenAI(base_url=fake.openai_url, api_key="sk-test"))
    with bind(envelope()):
        client.chat.completions.create(model="gpt-4o", max_tokens=32, messages=MESSAGES)
        assert chat_calls(fake) == 1
        with pytest.raises(BudgetExceeded) as caught:
            client.chat.completions.create(model="gpt-4o", max_tokens=32, messages=MESSAGES)
    assert chat_calls(fake) == 1  # refused before sending, and not retried by the SDK
    assert caught.value.refusal.budget == "support-daily"
    with bind(envelope(owner_team="search")):  # another owner: no budget, served
        client.chat.completions.create(model="gpt-4o", max_tokens=32, messages=MESSAGES)
    assert chat_calls(fake) == 2


@pytest.fixture
def anyio_backend() -> str:
    return "asyncio"


@pytest.mark.anyio
async def test_async_clients_are_refused_too(fake: FakeProviders) -> None:
    live = Budgets([team_budget(Decimal(0))])
    budgets.install(live)
    client = metering.instrument(openai.AsyncOpenAI(base_url=fake.openai_url, api_key="sk-t"))
    with bind(envelope()), pytest.raises(BudgetExceeded):
        await client.chat.completions.create(model="gpt-4o", max_tokens=8, messages=MESSAGES)
    assert chat_calls(fake) == 0


def test_observing_metering_lets_the_call_go_and_counts_it(fake: FakeProviders) -> None:
    live = Budgets([team_budget(Decimal(0))], metering="observe")
    budgets.install(live)
    client = metering.instrument(openai.OpenAI(base_url=fake.openai_url, api_key="sk-test"))
    with bind(envelope()):
        client.chat.completions.create(model="gpt-4o", max_tokens=32, messages=MESSAGES)
    assert chat_calls(fake) == 1
    assert live.usage(live.budgets[0])[0] > 0


def test_a_failed_call_releases_its_reservation(fake: FakeProviders) -> None:
    live = Budgets([team_budget()])
    budgets.install(live)
    client = metering.instrument(
        openai.OpenAI(base_url=fake.openai_url, api_key="sk-test", max_retries=1)
    )
    fake.script(500, 500)
    with bind(envelope()), pytest.raises(openai.InternalServerError):
        client.chat.completions.create(model="gpt-4o", max_tokens=32, messages=MESSAGES)
    assert live.usage(live.budgets[0]) == (Decimal(0), Decimal(0))


def test_budgets_off_changes_nothing(fake: FakeProviders) -> None:
    client = metering.instrument(openai.OpenAI(base_url=fake.openai_url, api_key="sk-test"))
    with bind(envelope()):
        client.chat.completions.create(model="gpt-4o", max_tokens=32, messages=MESSAGES)
    assert chat_calls(fake) == 1


def test_gemini_calls_are_reserved_and_refused_too(fake: FakeProviders) -> None:
    from google import genai
    from google.genai import types

    live = Budgets([team_budget(Decimal("0.000001"))])
    budgets.install(live)
    reserved: list[int] = []
    original = live.counters.reserve

    def spy(held, amount, lease, now):  # type: ignore[no-untyped-def]
        reserved.append(amount)
        return original(held, amount, lease, now)

    live.counters.reserve = spy  # type: ignore[method-assign]
    client = metering.instrument(
        genai.Client(api_key="test", http_options=types.HttpOptions(base_url=fake.url))
    )
    config = types.GenerateContentConfig(max_output_tokens=100)
    with bind(envelope()):
        client.models.generate_content(model="gemini-2.5-flash", contents="hi", config=config)
        with pytest.raises(BudgetExceeded):
            client.models.generate_content(model="gemini-2.5-flash", contents="hi", config=config)
    generate = [r for r in fake.requests if "generateContent" in r["path"]]
    assert len(generate) == 1  # the second was refused before it was sent
    assert reserved[0] > 100 * 2500  # 100 output tokens at $2.50/M: at least 250,000 nanos
    spent, held = live.usage(live.budgets[0])
    assert spent > 0 and held == 0
