"""A stream the caller cancels is billed by the provider: its cost is estimated, never null.

The streams here are scripted chunk by chunk (an httpx2 mock transport under the official
SDKs, so the caller receives exactly the chunks the test hands out), and the expected tokens
and costs are computed here from the text the test sent and received, at 4 characters per
token, priced with the price table's published prices (`list_prices`), never by the code
under test.
"""

from __future__ import annotations

import json
import math
from collections.abc import Iterator
from decimal import Decimal
from typing import Any

import pytest

from ownership_ctx import metering
from ownership_ctx.metering import estimate
from ownership_ctx.sinks import MemorySink
from ownership_ctx.testing.fake_providers import FakeProviders

from .conftest import BEDROCK_MODEL, M, list_prices, one_call, price

httpx2 = pytest.importorskip("httpx2")

PROMPT = "Summarize the quarterly spend report for the platform team, please. " * 6
SYSTEM = "You are terse."
ANSWER = ("The ", "platform team ", "spent more ", "on retries.")


def tokens(text: str) -> int:
    return math.ceil(len(text) / 4)


def scripted(events: list[str]) -> tuple[Any, list[int]]:
    """An httpx2 client whose provider streams ``events``; ``sent[0]`` counts those taken."""
    sent = [0]

    def chunks() -> Iterator[bytes]:
        for event in events:
            sent[0] += 1
            yield (event + "\n\n").encode()

    def handler(request: Any) -> Any:
        headers = {"content-type": "text/event-stream", "x-request-id": "req_scripted"}
        return httpx2.Response(200, headers=headers, content=chunks())

    return httpx2.Client(transport=httpx2.MockTransport(handler)), sent


def chat_events() -> list[str]:
    base = {"id": "chatcmpl-1", "object": "chat.completion.chunk", "model": "gpt-4o-2024-08-06"}

    def chunk(delta: dict[str, Any]) -> str:
        choice = {"index": 0, "delta": delta, "finish_reason": None}
        return "data: " + json.dumps({**base, "choices": [choice], "usage": None})

    usage = {"prompt_tokens": 999, "completion_tokens": 999, "total_tokens": 1998}
    return [
        chunk({"role": "assistant", "content": ""}),
        *(chunk({"content": text}) for text in ANSWER),
        "data: " + json.dumps({**base, "choices": [], "usage": usage}),
        "data: [DONE]",
    ]


def openai_client(events: list[str]) -> tuple[Any, list[int]]:
    openai = pytest.importorskip("openai")
    http, sent = scripted(events)
    client = openai.OpenAI(base_url="http://provider.test/v1", api_key="sk-test", http_client=http)
    return metering.instrument(client), sent


def priced(provider: str, model: str, input_tokens: int, output_tokens: int) -> Decimal:
    p = list_prices(provider, model)
    return (input_tokens * price(p, "input_mtok") + output_tokens * price(p, "output_mtok")) / M


def test_openai_stream_cancelled_before_its_usage_is_estimated_and_priced(
    sink: MemorySink,
) -> None:
    client, sent = openai_client(chat_events())
    stream = client.chat.completions.create(
        model="gpt-4o",
        messages=[{"role": "system", "content": SYSTEM}, {"role": "user", "content": PROMPT}],
        stream=True,
        stream_options={"include_usage": True},
    )
    received = [c.choices[0].delta.content for _, c in zip(range(3), stream, strict=False)]
    stream.close()
    assert received == ["", *ANSWER[:2]] and sent[0] == 3

    event = one_call(sink)
    expected_in, expected_out = tokens(SYSTEM + PROMPT), tokens("".join(ANSWER[:2]))
    assert event["status"] == "cancelled" and event["usage_status"] == "estimated"
    assert event["gen_ai.usage.input_tokens"] == expected_in
    assert event["gen_ai.usage.output_tokens"] == expected_out
    expected = priced("openai", "gpt-4o-2024-08-06", expected_in, expected_out)
    assert Decimal(event["cost"]) == expected
    assert event["cost_source"] == "price_table" and event["unpriced_reason"] is None
    assert "usage_estimated" in event["problems"]


def test_a_stream_read_to_its_end_is_not_estimated(sink: MemorySink) -> None:
    client, _ = openai_client(chat_events())
    for _ in client.chat.completions.create(
        model="gpt-4o", messages=[{"role": "user", "content": PROMPT}], stream=True
    ):
        pass
    event = one_call(sink)
    assert (event["status"], event["usage_status"]) == ("ok", "reported")
    assert event["gen_ai.usage.input_tokens"] == 999  # the provider's count, not ours


def test_responses_stream_cancelled_is_estimated(sink: MemorySink) -> None:
    def event(kind: str, **fields: Any) -> str:
        return f"event: {kind}\ndata: " + json.dumps({"type": kind, **fields})

    created = {"id": "resp_1", "status": "in_progress", "model": "gpt-4o-mini", "usage": None}
    events = [event("response.created", response=created, sequence_number=0)]
    events += [event("response.output_text.delta", delta=t, sequence_number=1) for t in ANSWER]
    client, sent = openai_client(events)
    stream = client.responses.create(
        model="gpt-4o-mini", input=PROMPT, instructions=SYSTEM, stream=True
    )
    taken = [e for _, e in zip(range(4), stream, strict=False)]  # created + three deltas
    stream.close()
    assert len(taken) == 4 and sent[0] == 4
    found = one_call(sink)
    expected_in, expected_out = tokens(PROMPT + SYSTEM), tokens("".join(ANSWER[:3]))
    assert found["usage_status"] == "estimated"
    assert (found["gen_ai.usage.input_tokens"], found["gen_ai.usage.output_tokens"]) == (
        expected_in,
        expected_out,
    )
    assert Decimal(found["cost"]) == priced("openai", "gpt-4o-mini", expected_in, expected_out)


def test_anthropic_keeps_the_reported_prompt_and_estimates_the_output(sink: MemorySink) -> None:
    anthropic = pytest.importorskip("anthropic")

    def event(kind: str, **fields: Any) -> str:
        return f"event: {kind}\ndata: " + json.dumps({"type": kind, **fields})

    usage = {"input_tokens": 700, "cache_read_input_tokens": 300, "output_tokens": 1}
    message = {
        "id": "msg_1",
        "type": "message",
        "role": "assistant",
        "content": [],
        "model": "claude-haiku-4-5",
        "usage": usage,
    }
    events = [
        event("message_start", message=message),
        event("content_block_start", index=0, content_block={"type": "text", "text": ""}),
        *(
            event("content_block_delta", index=0, delta={"type": "text_delta", "text": t})
            for t in ANSWER
        ),
        event("message_delta", delta={"stop_reason": "end_turn"}, usage={"output_tokens": 9}),
        event("message_stop"),
    ]
    http, sent = scripted(events)
    client = metering.instrument(
        anthropic.Anthropic(base_url="http://provider.test", api_key="sk-ant", http_client=http)
    )
    stream = client.messages.create(
        model="claude-haiku-4-5", max_tokens=64, stream=True, system=SYSTEM,
        messages=[{"role": "user", "content": PROMPT}],
    )  # fmt: skip
    taken = [e for _, e in zip(range(6), stream, strict=False)]  # start, block, four deltas
    stream.close()
    assert len(taken) == 6 and sent[0] == 6

    found = one_call(sink)
    out = tokens("".join(ANSWER))  # more than message_start's placeholder 1
    assert found["usage_status"] == "estimated"
    assert found["gen_ai.usage.input_tokens"] == 1000  # reported: 700 + 300 cache reads
    assert found["gen_ai.usage.output_tokens"] == out
    p = list_prices("anthropic", "claude-haiku-4-5")
    expected = 700 * price(p, "input_mtok") + 300 * price(p, "cache_read_mtok")
    expected = (expected + out * price(p, "output_mtok")) / M
    assert Decimal(found["cost"]) == expected


def test_bedrock_stream_cancelled_before_its_metadata_is_estimated(
    bedrock_client: Any, fake: FakeProviders, sink: MemorySink, monkeypatch: pytest.MonkeyPatch
) -> None:
    from ownership_ctx.testing import fake_providers

    monkeypatch.setattr(fake_providers, "_TEXT", ANSWER)
    response = bedrock_client.converse_stream(
        modelId=BEDROCK_MODEL,
        system=[{"text": SYSTEM}],
        messages=[{"role": "user", "content": [{"text": PROMPT}]}],
    )
    events = iter(response["stream"])
    seen = [next(events) for _ in range(3)]  # messageStart and two deltas
    response["stream"].close()
    assert [next(iter(e)) for e in seen] == ["messageStart", *["contentBlockDelta"] * 2]
    found = one_call(sink)
    expected_in, expected_out = tokens(SYSTEM + PROMPT), tokens("".join(ANSWER[:2]))
    assert found["usage_status"] == "estimated" and found["status"] == "cancelled"
    assert (found["gen_ai.usage.input_tokens"], found["gen_ai.usage.output_tokens"]) == (
        expected_in,
        expected_out,
    )
    assert found["cost"] is not None and Decimal(found["cost"]) > 0


def test_gemini_cumulative_usage_is_the_providers_not_an_estimate(
    gemini_client: Any, sink: MemorySink
) -> None:
    stream = gemini_client.models.generate_content_stream(model="gemini-2.5-flash", contents="hi")
    next(stream)
    stream.close()
    found = one_call(sink)
    assert found["usage_status"] == "partial"  # every chunk reports its usage so far


def test_prompt_text_is_counted_without_image_data() -> None:
    body = {
        "model": "gpt-4o",
        "messages": [
            {"role": "user", "content": [
                {"type": "text", "text": "abcd" * 3},
                {"type": "image_url", "image_url": {"url": "data:image/png;base64," + "A" * 999}},
            ]},
        ],
    }  # fmt: skip
    assert estimate.prompt_chars(json.dumps(body).encode()) == 12
    assert estimate.prompt_chars(b"not json") is None
    assert estimate.streamed_chars("chat_completions", b'{"delta":{"content":"a\\"b\\n"}}') == 4


def test_unknown_request_body_leaves_the_cost_unknown(sink: MemorySink) -> None:
    # A streamed request body is never read: no prompt to estimate from, so no guess.
    from ownership_ctx.metering.normalize import Parsed

    parsed = estimate.apply(Parsed(), prompt=None, streamed=40)
    assert parsed.usage is None and "usage_not_estimated:request_body_unknown" in parsed.problems
