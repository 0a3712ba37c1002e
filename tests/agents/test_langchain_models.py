"""langchain-openai / langchain-anthropic inside graph nodes: each call metered once, owned."""

from __future__ import annotations

import operator
import uuid
from collections import Counter
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from typing import Annotated, Any, TypedDict

import pytest
from langchain_anthropic import ChatAnthropic
from langchain_openai import ChatOpenAI
from langgraph.graph import END, START, StateGraph

from ownership_ctx import Envelope, bind
from ownership_ctx import langgraph as oc_langgraph
from ownership_ctx.sinks import MemorySink
from ownership_ctx.testing.fake_providers import FakeProviders
from tests.agents.support import calls


class State(TypedDict, total=False):
    answers: Annotated[list[str], operator.add]


@pytest.fixture(autouse=True)
def installed(auto: None) -> Iterator[None]:
    oc_langgraph.install()
    try:
        yield
    finally:
        oc_langgraph.uninstall()


def graph(fake: FakeProviders, *, stream: bool) -> Any:
    # stream_usage: without it a streamed chat completion reports no usage (recorded unpriced).
    gpt = ChatOpenAI(
        model="gpt-4o", base_url=fake.openai_url, api_key="sk", max_retries=0, stream_usage=True
    )
    claude = ChatAnthropic(  # type: ignore[call-arg]
        model="claude-haiku-4-5", base_url=fake.url, api_key="sk-ant-test", max_tokens=16
    )

    def ask(model: Any) -> Any:
        def node(state: State) -> dict[str, Any]:
            if stream:
                text = "".join(str(chunk.content) for chunk in model.stream("hi"))
            else:
                text = str(model.invoke("hi").content)
            return {"answers": [text]}

        return node

    builder = StateGraph(State)
    builder.add_node("gpt", ask(gpt))
    builder.add_node("claude", ask(claude))
    builder.add_edge(START, "gpt")
    builder.add_edge(START, "claude")
    builder.add_edge("gpt", END)
    builder.add_edge("claude", END)
    return builder.compile(name="models")


@pytest.mark.parametrize("stream", [False, True])
def test_each_model_call_in_a_node_is_one_owned_event(
    fake: FakeProviders, sink: MemorySink, stream: bool
) -> None:
    compiled = graph(fake, stream=stream)
    teams = [f"team-{i}" for i in range(4)]

    def run(team: str) -> None:
        envelope = Envelope(trace_id=uuid.uuid4().hex, owner_team=team)
        with bind(envelope):
            compiled.invoke({"answers": []})

    with ThreadPoolExecutor(max_workers=4) as pool:
        list(pool.map(run, teams))
    events = calls(sink)
    assert len(events) == 8
    assert Counter((e["owner_team"], e["gen_ai.provider.name"]) for e in events) == Counter(
        {(team, provider): 1 for team in teams for provider in ("openai", "anthropic")}
    )
    assert all(e["recorded_by"] == "httpx" and e["status"] == "ok" for e in events)
    assert all(e["streaming"] is stream for e in events)
    assert all(e["cost"] is not None for e in events)
