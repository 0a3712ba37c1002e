"""Graph nodes and agent steps are hops: `trace` lists them, `audit` and `coverage` name the
one where the fields were lost."""

from __future__ import annotations

import json
import subprocess
import sys
import time
import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import Any, TypedDict

import openai
import pytest
from langgraph.graph import END, START, StateGraph

from ownership_ctx import Envelope, bind, events, metering, sinks
from ownership_ctx import langgraph as oc_langgraph
from ownership_ctx.testing.fake_providers import FakeProviders


class State(TypedDict):
    step: int


@pytest.fixture
def store(tmp_path: Path) -> Iterator[str]:
    url = f"sqlite:///{tmp_path / 'ownership.db'}"
    previous = events.get_sink()
    installed = sinks.install(url)  # sets it as the sink
    metering.instrument_all()
    oc_langgraph.install()
    try:
        yield url
    finally:
        oc_langgraph.uninstall()
        metering.uninstrument_all()
        events.set_sink(previous)
        close = getattr(installed, "close", None)
        if close is not None:
            close()


def cli(*args: str) -> Any:
    out = subprocess.run(
        [sys.executable, "-m", "ownership_ctx.cli", *args, "--format", "json"],
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert out.returncode in (0, 1), out.stderr
    return json.loads(out.stdout)


def test_trace_lists_the_graph_nodes_and_the_call(fake: FakeProviders, store: str) -> None:
    def plan(state: State) -> dict[str, int]:
        return {"step": 1}

    def ask(state: State) -> dict[str, int]:
        client = openai.OpenAI(base_url=fake.openai_url, api_key="sk-test")
        client.chat.completions.create(model="gpt-4o", messages=[{"role": "user", "content": "x"}])
        return {"step": 2}

    builder = StateGraph(State)
    builder.add_node("plan", plan)
    builder.add_node("ask", ask)
    builder.add_edge(START, "plan")
    builder.add_edge("plan", "ask")
    builder.add_edge("ask", END)
    envelope = Envelope(
        trace_id=uuid.uuid4().hex, owner_team="search", workflow_id="w", feature="f"
    )
    with bind(envelope):
        builder.compile(name="support").invoke({"step": 0})
    assert events.flush()
    text = json.dumps(cli("trace", envelope.trace_id, "--db", store))
    assert text.index("support:plan") < text.index("support:ask")
    assert "langgraph_node" in text and "gpt-4o" in text


def test_audit_and_coverage_name_the_node_that_lost_the_fields(store: str) -> None:
    trace_id = uuid.uuid4().hex
    owned = {"owner_team": "search", "workflow_id": "w", "feature": "f"}
    events.emit(
        {
            "kind": "hop", "hop": "http", "unit": "/chat", "outcome": "attributed",
            "trace_id": trace_id, "missing": [], "fields_present": list(owned),
            "problems": [], "attribution": "attributed", **owned,
        }
    )  # fmt: skip
    time.sleep(0.01)
    # What `ownership_ctx.langgraph` records for a node that runs without the run's envelope.
    events.emit(
        {
            "kind": "hop", "hop": oc_langgraph.NODE_HOP, "unit": "support:ask",
            "outcome": "unattributed", "trace_id": trace_id, "missing": list(owned),
            "fields_present": [], "problems": [],
        }
    )  # fmt: skip
    time.sleep(0.01)
    with bind(Envelope(trace_id=trace_id)):
        metering.record_call(
            provider="openai", model="gpt-4o", usage={"input_tokens": 10, "output_tokens": 5}
        )
    assert events.flush()
    text = json.dumps(cli("audit", "--db", store)) + json.dumps(cli("coverage", "--db", store))
    assert text.count("support:ask") >= 2 and "langgraph_node" in text
