"""Garbage payloads: the call is recorded with the problem noted, the caller gets the response
exactly as the provider sent it, and nothing is priced from numbers that cannot be believed."""

from __future__ import annotations

import json
from typing import Any

import pytest

from ownership_ctx import events
from ownership_ctx.sinks import MemorySink
from ownership_ctx.testing.fake_providers import FakeProviders, Raw

from .conftest import MESSAGES, one_call


def _chat(usage: Any) -> bytes:
    body = {
        "id": "chatcmpl-x",
        "object": "chat.completion",
        "created": 0,
        "model": "gpt-4o",
        "choices": [
            {"index": 0, "message": {"role": "assistant", "content": "ok"}, "finish_reason": "stop"}
        ],
        "usage": usage,
    }
    return json.dumps(body).encode()


GARBAGE = {
    "not_json": (b"<html>oops</html>", "body_not_json"),
    "array": (b"[1, 2, 3]", "body_not_an_object"),
    "usage_string": (_chat("lots"), "usage_not_an_object"),
    "negative": (
        _chat({"prompt_tokens": -5, "completion_tokens": 3}),
        "usage_invalid:prompt_tokens:negative",
    ),
    "huge": (
        _chat({"prompt_tokens": 10**30, "completion_tokens": 3}),
        "usage_invalid:prompt_tokens:too_large",
    ),
    "float_nan_ish": (
        _chat({"prompt_tokens": 1.5, "completion_tokens": 3}),
        "usage_invalid:prompt_tokens:not_a_count",
    ),
    "missing_field": (_chat({"completion_tokens": 3}), "usage_missing_field:prompt_tokens"),
    "cached_exceeds_prompt": (
        _chat(
            {
                "prompt_tokens": 10,
                "completion_tokens": 3,
                "prompt_tokens_details": {"cached_tokens": 50},
            }
        ),
        "usage_inconsistent:cache_exceeds_input",
    ),
}


@pytest.mark.parametrize("case", sorted(GARBAGE))
def test_garbage_is_recorded_and_passed_through(
    openai_client: Any, fake: FakeProviders, sink: MemorySink, case: str
) -> None:
    body, problem = GARBAGE[case]
    fake.script(Raw(body))
    raw = openai_client.chat.completions.with_raw_response.create(model="gpt-4o", messages=MESSAGES)
    assert raw.http_response.content == body  # byte for byte
    event = one_call(sink)
    assert event["status"] == "ok"
    assert problem in event["problems"]
    assert event["usage_status"] == "invalid"
    assert event["cost"] is None and event["cost_source"] == "unpriced"
    assert event["gen_ai.usage.input_tokens"] is None


def test_garbage_sse_stream(anthropic_client: Any, fake: FakeProviders, sink: MemorySink) -> None:
    stream = b"event: message_start\ndata: {not json\n\ndata: [1]\n\nevent: message_stop\n" + (
        b'data: {"type": "message_stop"}\n\n'
    )
    fake.script(Raw(stream, content_type="text/event-stream"))
    events_ = anthropic_client.messages.create(
        model="claude-haiku-4-5", max_tokens=5, messages=MESSAGES, stream=True
    )
    # The SDK meets the garbage itself and raises as it would without metering.
    with pytest.raises(ValueError):
        list(events_)
    events_.close()
    event = one_call(sink)
    assert "stream_event_not_json" in event["problems"]
    assert event["cost"] is None


def test_a_failing_sink_never_reaches_the_caller(openai_client: Any) -> None:
    class Broken:
        def emit(self, event: Any) -> None:
            raise RuntimeError("disk full")

    previous = events.set_sink(Broken())
    before = events.stats["sink_errors"]
    try:
        reply = openai_client.chat.completions.create(model="gpt-4o", messages=MESSAGES)
    finally:
        events.set_sink(previous)
    assert reply.choices[0].message.content == "Hello from the fake."
    assert events.stats["sink_errors"] == before + 1


def test_a_metering_bug_never_reaches_the_caller(
    openai_client: Any, sink: MemorySink, monkeypatch: pytest.MonkeyPatch
) -> None:
    from ownership_ctx.metering import recorder

    def boom(**kwargs: Any) -> Any:
        raise ZeroDivisionError

    monkeypatch.setattr(recorder, "build_event", boom)
    before = events.stats["metering_errors"]
    reply = openai_client.chat.completions.create(model="gpt-4o", messages=MESSAGES)
    assert reply.usage.prompt_tokens == 1000
    assert events.stats["metering_errors"] == before + 1
