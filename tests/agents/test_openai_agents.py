"""OpenAI Agents SDK: tools, parallel tool calls and handoffs keep the envelope; each model
call is one provider_call event; the SDK's traces and spans carry the owner."""

from __future__ import annotations

import asyncio
import json
import threading
import time
import uuid
from collections.abc import Iterator
from typing import Any

import agents
import openai
import pytest
from agents import Agent, Runner, function_tool
from agents.models.openai_responses import OpenAIResponsesModel
from agents.tracing import TracingProcessor

from ownership_ctx import Envelope, bind, current, metering
from ownership_ctx import openai_agents as oc_agents
from ownership_ctx.sinks import MemorySink
from ownership_ctx.testing.fake_providers import FakeProviders, Raw
from tests.agents.support import calls

USAGE = {
    "input_tokens": 1000,
    "input_tokens_details": {"cached_tokens": 200},
    "output_tokens": 300,
    "output_tokens_details": {"reasoning_tokens": 50},
    "total_tokens": 1300,
}


def response(*output: dict[str, Any]) -> Raw:
    body = {
        "id": f"resp_{uuid.uuid4().hex[:12]}",
        "object": "response",
        "created_at": int(time.time()),
        "status": "completed",
        "model": "gpt-4o",
        "output": list(output),
        "parallel_tool_calls": True,
        "tool_choice": "auto",
        "tools": [],
        "usage": USAGE,
    }
    return Raw(json.dumps(body).encode())


def function_call(name: str, arguments: dict[str, Any]) -> dict[str, Any]:
    call_id = f"call_{uuid.uuid4().hex[:8]}"
    return {
        "type": "function_call",
        "id": f"fc_{call_id}",
        "call_id": call_id,
        "name": name,
        "arguments": json.dumps(arguments),
        "status": "completed",
    }


def message(text: str) -> dict[str, Any]:
    return {
        "type": "message",
        "id": f"msg_{uuid.uuid4().hex[:8]}",
        "status": "completed",
        "role": "assistant",
        "content": [{"type": "output_text", "text": text, "annotations": []}],
    }


class Collector(TracingProcessor):
    def __init__(self) -> None:
        self.traces: list[Any] = []
        self.spans: list[Any] = []

    def on_trace_start(self, trace: Any) -> None:
        self.traces.append(trace)

    def on_trace_end(self, trace: Any) -> None:
        pass

    def on_span_start(self, span: Any) -> None:
        pass

    def on_span_end(self, span: Any) -> None:
        self.spans.append(span)

    def shutdown(self) -> None:
        pass

    def force_flush(self) -> None:
        pass


SEEN: list[tuple[str, str | None, str]] = []


def _saw(tool: str) -> None:
    envelope = current()
    SEEN.append((tool, envelope.owner_team if envelope else None, threading.current_thread().name))


@function_tool
def lookup(query: str) -> str:
    """Look something up (a sync tool: the SDK runs it in a worker thread)."""
    _saw("lookup")
    return "found"


@function_tool
async def weather(city: str) -> str:
    """The weather (an async tool)."""
    _saw("weather")
    return "sunny"


@pytest.fixture
def collector(auto: None) -> Iterator[Collector]:
    collector = Collector()
    processor = oc_agents.install()
    agents.set_trace_processors([processor, collector])
    SEEN.clear()
    try:
        yield collector
    finally:
        oc_agents.uninstall()
        agents.set_trace_processors([])


def model(fake: FakeProviders) -> OpenAIResponsesModel:
    client = openai.AsyncOpenAI(base_url=fake.openai_url, api_key="sk-test", max_retries=0)
    return OpenAIResponsesModel(model="gpt-4o", openai_client=client)


def owner(team: str) -> Envelope:
    return Envelope(trace_id=uuid.uuid4().hex, owner_team=team, workflow_id="w", feature="f")


def test_parallel_tools_and_a_handoff_keep_the_envelope_and_each_model_call_is_one_event(
    fake: FakeProviders, sink: MemorySink, collector: Collector
) -> None:
    expert = Agent(name="expert", instructions="answer", model=model(fake))
    triage = Agent(
        name="triage",
        instructions="route",
        model=model(fake),
        tools=[lookup, weather],
        handoffs=[expert],
    )
    fake.script(
        response(function_call("lookup", {"query": "q"}), function_call("weather", {"city": "x"})),
        response(function_call("transfer_to_expert", {})),
        response(message("done")),
        api="responses",
    )
    envelope = owner("search")
    with bind(envelope):
        result = Runner.run_sync(triage, "hi")
    assert result.final_output == "done"
    assert sorted((tool, team) for tool, team, _ in SEEN) == [
        ("lookup", "search"),
        ("weather", "search"),
    ]
    events = calls(sink)
    assert len(events) == 3  # three model calls, three events
    assert {(e["owner_team"], e["recorded_by"], e["status"]) for e in events} == {
        ("search", "httpx", "ok")
    }
    hops = [(h["hop"], h["unit"], h["owner_team"]) for h in sink.of_kind("hop")]
    assert ("agents_step", "agent:triage", "search") in hops
    assert ("agents_step", "agent:expert", "search") in hops
    assert ("agents_tool", "tool:lookup", "search") in hops
    assert ("agents_handoff", "triage->expert", "search") in hops
    assert {h["trace_id"] for h in sink.of_kind("hop")} == {envelope.trace_id}
    # The SDK's own trace and agent spans carry the owner.
    (trace,) = collector.traces
    assert trace.metadata["ownership.owner_team"] == "search"
    agent_spans = [s for s in collector.spans if type(s.span_data).__name__ == "AgentSpanData"]
    assert agent_spans and all(
        s.export()["metadata"]["ownership.owner_team"] == "search" for s in agent_spans
    )


def test_interleaved_runs_for_different_owners(
    fake: FakeProviders, sink: MemorySink, collector: Collector
) -> None:
    agent = Agent(name="plain", instructions="answer", model=model(fake))

    async def one(team: str, stream: bool) -> None:
        with bind(owner(team)):
            if stream:
                result = Runner.run_streamed(agent, "hi")
                async for _ in result.stream_events():
                    pass
            else:
                await Runner.run(agent, "hi")

    async def main() -> None:
        await asyncio.gather(*(one(f"team-{i}", i % 2 == 1) for i in range(6)))

    asyncio.run(main())
    events = calls(sink)
    assert sorted(e["owner_team"] for e in events) == [f"team-{i}" for i in range(6)]
    assert [e["streaming"] for e in sorted(events, key=lambda e: e["owner_team"])] == [
        False,
        True,
    ] * 3
    owners = sorted(t.metadata["ownership.owner_team"] for t in collector.traces)
    assert owners == [f"team-{i}" for i in range(6)]


def test_without_an_envelope_nothing_is_invented(
    fake: FakeProviders, sink: MemorySink, collector: Collector
) -> None:
    agent = Agent(name="plain", instructions="answer", model=model(fake))
    Runner.run_sync(agent, "hi")
    (event,) = calls(sink)
    assert event["attribution"] == "unattributed"
    (trace,) = collector.traces
    assert not any(key.startswith("ownership.") for key in (trace.metadata or {}))
    (hop,) = sink.of_kind("hop")
    assert (hop["hop"], hop["outcome"]) == ("agents_step", "unattributed")


def test_uninstall_leaves_the_sdk_tracing_as_it_was(
    fake: FakeProviders, sink: MemorySink, collector: Collector
) -> None:
    oc_agents.uninstall()
    assert not oc_agents.installed()
    agent = Agent(name="plain", instructions="answer", model=model(fake))
    with bind(owner("search")):
        Runner.run_sync(agent, "hi")
    assert sink.of_kind("hop") == []
    assert not (collector.traces[0].metadata or {})
    assert len(calls(sink)) == 1  # metering is instrument_all's, not this module's
    metering.uninstrument_all()
