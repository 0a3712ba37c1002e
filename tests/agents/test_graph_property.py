"""Property: random LangGraph graphs under interleaved owners lose and leak nothing.

Hypothesis builds graphs of sync and async nodes, `Send` fan-outs, tool calls run in LangChain's
thread pool, nested subgraphs and an interrupt; several runs for different owners go through
one compiled graph at once (threads, and event loops in them). Graphs that interrupt are
resumed by another Python process, every resume under an intruder's envelope. For each run:
every node execution saw its run's owner (0 lost, 0 leaked), and every chat completion made in
a node or a tool is one event of that owner (metered exactly once).

``OC_AGENTS_EXAMPLES`` sets the number of graphs (default 8).
"""

from __future__ import annotations

import asyncio
import json
import os
import subprocess
import sys
import uuid
from collections import Counter
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

import pytest
from hypothesis import HealthCheck, event, given, settings
from hypothesis import strategies as st
from langgraph.checkpoint.memory import InMemorySaver

from ownership_ctx import Envelope, bind, metering
from ownership_ctx import langgraph as oc_langgraph
from ownership_ctx.sinks import MemorySink
from ownership_ctx.testing.fake_providers import FakeProviders
from tests.agents import graphs
from tests.agents.support import calls

ROOT = Path(__file__).resolve().parents[2]
EXAMPLES = int(os.environ.get("OC_AGENTS_EXAMPLES", "8"))
RUNS = 3

llm = st.integers(0, 1)
leaf = st.one_of(
    st.tuples(st.just("node"), st.sampled_from(["sync", "async"]), llm).map(list),
    st.tuples(st.just("fanout"), st.integers(1, 3), llm).map(list),
    st.tuples(st.just("tools"), st.integers(1, 3), llm).map(list),
)
stages = st.recursive(
    st.lists(leaf, min_size=1, max_size=3),
    lambda inner: st.lists(
        st.one_of(leaf, st.tuples(st.just("sub"), inner).map(list)), min_size=1, max_size=3
    ),
    max_leaves=6,
)


@st.composite
def specs(draw: st.DrawFn) -> graphs.Spec:
    spec: graphs.Spec = draw(stages)
    if draw(st.booleans()):
        spec.insert(draw(st.integers(0, len(spec))), ["interrupt"])
    return spec


class Worker:
    """The other process, kept for the whole test (Python and LangGraph start once)."""

    def __init__(self) -> None:
        self.process = subprocess.Popen(
            [sys.executable, "-m", "tests.agents.resume_worker"],
            cwd=ROOT,
            stdin=subprocess.PIPE,
            stdout=subprocess.PIPE,
            text=True,
        )

    def resume(self, job: dict[str, Any]) -> dict[str, Any]:
        assert self.process.stdin is not None and self.process.stdout is not None
        self.process.stdin.write(json.dumps(job) + "\n")
        self.process.stdin.flush()
        line = self.process.stdout.readline()
        assert line, "the resume worker died"
        answer: dict[str, Any] = json.loads(line)
        return answer

    def close(self) -> None:
        assert self.process.stdin is not None
        self.process.stdin.close()
        self.process.wait(timeout=60)


@pytest.fixture(scope="module")
def worker() -> Iterator[Worker]:
    w = Worker()
    try:
        yield w
    finally:
        w.close()


def _seen_by_run(seen: list[Any]) -> dict[str, list[tuple[str, str | None]]]:
    runs: dict[str, list[tuple[str, str | None]]] = {}
    for label, node, team in seen:
        runs.setdefault(label, []).append((node, team))
    return runs


def _check_phase(
    spec: graphs.Spec,
    phase: int | None,
    labels: list[str],
    seen: list[Any],
    owners_of_calls: list[str | None],
) -> None:
    nodes, completions = graphs.expected(spec, phase=phase)
    by_run = _seen_by_run(seen)
    for label in labels:
        executed = by_run.get(label, [])
        assert Counter(node for node, _ in executed) == nodes, (label, spec)
        lost = [node for node, team in executed if team is None]
        leaked = [(node, team) for node, team in executed if team not in (None, label)]
        assert lost == [] and leaked == [], (label, lost, leaked, spec)
    assert Counter(owners_of_calls) == Counter(
        {label: completions for label in labels if completions}
    ), spec


@settings(
    max_examples=EXAMPLES,
    deadline=None,
    suppress_health_check=[HealthCheck.function_scoped_fixture, HealthCheck.too_slow],
)
@given(spec=specs())
def test_random_graphs_under_interleaved_owners(
    spec: graphs.Spec,
    fake_server: FakeProviders,
    worker: Worker,
    tmp_path_factory: pytest.TempPathFactory,
) -> None:
    from ownership_ctx import events

    sink = MemorySink()
    previous = events.set_sink(sink)
    metering.instrument_all()
    oc_langgraph.install()
    graphs.SEEN.clear()
    try:
        saver = InMemorySaver()
        graph = graphs.random_graph(spec, saver)
        labels = [f"owner-{uuid.uuid4().hex[:8]}" for _ in range(RUNS)]
        asynchronous = graphs.is_async(spec)

        def run(label: str) -> None:
            config: Any = {"configurable": {"thread_id": label}}
            state = {"label": label, "url": fake_server.openai_url, "messages": []}
            envelope = Envelope(trace_id=uuid.uuid4().hex, owner_team=label)
            with bind(envelope):
                if asynchronous:
                    asyncio.run(graph.ainvoke(state, config))
                else:
                    graph.invoke(state, config)

        with ThreadPoolExecutor(max_workers=RUNS) as pool:
            list(pool.map(run, labels))
        interrupts = ["interrupt"] in spec
        event("resumed in another process" if interrupts else "ran to the end")
        owners = [e.get("owner_team") for e in calls(sink)]
        _check_phase(spec, 1 if interrupts else None, labels, graphs.SEEN, owners)
        if not interrupts:
            return
        path = tmp_path_factory.mktemp("checkpoints") / "saver.pickle"
        graphs.save(saver, path)
        answer = worker.resume(
            {
                "path": str(path),
                "spec": spec,
                "runs": [[label, label] for label in labels],
                "url": fake_server.openai_url,
                "resumer": "intruder",
            }
        )
        assert sorted(answer["resumes"]) == sorted(labels)  # each admitted its stored owner
        assert all(recorded_by == "httpx" for _, recorded_by in answer["calls"])
        owners = [team for team, _ in answer["calls"]]
        _check_phase(spec, 2, labels, answer["seen"], owners)
    finally:
        oc_langgraph.uninstall()
        metering.uninstrument_all()
        events.set_sink(previous)
