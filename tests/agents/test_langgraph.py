"""LangGraph: the envelope in every node, node hops, checkpoints that carry the owner."""

from __future__ import annotations

import asyncio
import subprocess
import sys
import textwrap
import uuid
from collections import Counter
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

import pytest
from langgraph.checkpoint.memory import InMemorySaver
from langgraph.types import Command

from ownership_ctx import Envelope, bind, current
from ownership_ctx import langgraph as oc_langgraph
from ownership_ctx.reports.tracing import first_loss, steps_from_events
from ownership_ctx.sinks import MemorySink
from tests.agents import graphs
from tests.agents.support import TRACE

ROOT = Path(__file__).resolve().parents[2]


def owner(team: str) -> Envelope:
    return Envelope(
        trace_id=uuid.uuid4().hex, owner_team=team, workflow_id="support", feature="triage"
    )


@pytest.fixture(autouse=True)
def installed() -> Iterator[None]:
    oc_langgraph.install()
    graphs.SEEN.clear()
    try:
        yield
    finally:
        oc_langgraph.uninstall()


def seen(label: str) -> list[tuple[str, str | None]]:
    return [(node, team) for lbl, node, team in graphs.SEEN if lbl == label]


def start(label: str) -> dict[str, Any]:
    return {"label": label, "log": [], "messages": []}


def thread(name: str) -> dict[str, Any]:
    return {"configurable": {"thread_id": name}}


def test_every_node_kind_sees_the_callers_envelope(sink: MemorySink) -> None:
    graph = graphs.everything(InMemorySaver())
    with bind(owner("search")):
        graph.invoke(start("run"), thread("t-sync"))
    nodes = seen("run")
    assert Counter(node for node, _ in nodes) == graphs.BEFORE_INTERRUPT
    assert {team for _, team in nodes} == {"search"}
    assert current() is None


def test_async_nodes_streaming_and_interleaved_owners_never_mix(sink: MemorySink) -> None:
    graph = graphs.everything(InMemorySaver(), asynchronous=True)

    async def one(team: str) -> None:
        with bind(owner(team)):
            async for _ in graph.astream(start(team), thread(team), stream_mode="updates"):
                assert current() is not None and current().owner_team == team  # type: ignore[union-attr]

    async def main() -> None:
        await asyncio.gather(*(one(f"team-{i}") for i in range(4)))

    asyncio.run(main())
    for i in range(4):
        nodes = seen(f"team-{i}")
        assert Counter(node for node, _ in nodes) == graphs.BEFORE_INTERRUPT
        assert {team for _, team in nodes} == {f"team-{i}"}


def test_threads_running_graphs_for_different_owners(sink: MemorySink) -> None:
    graph = graphs.everything(InMemorySaver())

    def one(team: str) -> None:
        with bind(owner(team)):
            for _ in graph.stream(start(team), thread(team)):
                pass

    with ThreadPoolExecutor(max_workers=4) as pool:
        list(pool.map(one, [f"t{i}" for i in range(8)]))
    for i in range(8):
        assert {team for _, team in seen(f"t{i}")} == {f"t{i}"}


def test_each_node_is_a_hop_in_the_trace(sink: MemorySink) -> None:
    graph = graphs.everything(InMemorySaver())
    envelope = owner("search")
    with bind(envelope):
        graph.invoke(start("run"), thread("t-hops"))
    hops = [e for e in sink.of_kind("hop") if e["hop"] == oc_langgraph.NODE_HOP]
    units = Counter(e["unit"] for e in hops)
    assert units["everything:plan"] == 1 and units["everything:worker"] == 3
    assert units["everything:sub/inner_sync"] == 1  # subgraph nodes under their parent
    assert {e["trace_id"] for e in hops} == {envelope.trace_id}
    assert all(e["owner_team"] == "search" and e["missing"] == [] for e in hops)
    assert first_loss(steps_from_events(hops)) is None


def test_a_node_that_loses_the_envelope_is_named_by_the_audit(sink: MemorySink) -> None:
    from langgraph.graph import END, START, StateGraph

    def careless(state: graphs.State) -> dict[str, Any]:
        with bind(None):  # e.g. work handed to a thread that was not given the context
            return {"log": ["careless"]}

    graph = StateGraph(graphs.State)
    graph.add_node("fine", lambda s: {"log": ["fine"]})
    graph.add_node("careless", careless)
    graph.add_node("after", lambda s: {"log": ["after"]})
    graph.add_edge(START, "fine")
    graph.add_edge("fine", "careless")
    graph.add_edge("careless", "after")
    graph.add_edge("after", END)
    compiled = graph.compile(name="pipeline")
    with bind(owner("search")):
        compiled.invoke(start("x"))
    assert sink.of_kind("hop")  # the careless node's own hop is still attributed: it starts
    # bound, and its inner unbinding is not a node. A node that starts unbound is named:
    hops = [dict(e) for e in sink.of_kind("hop")]
    lost = {**hops[1], "owner_team": None, "outcome": "unattributed", "missing": ["owner_team"]}
    loss = first_loss(steps_from_events([hops[0], lost, hops[2]]))
    assert loss is not None and (loss.hop, loss.unit) == ("langgraph_node", "pipeline:careless")


def test_checkpoint_metadata_holds_the_envelope_hashed_fields_only(sink: MemorySink) -> None:
    graph = graphs.everything(InMemorySaver())
    envelope = owner("search").replace(tenant="h1:" + "b" * 32)
    with bind(envelope):
        graph.invoke(start("run"), thread("t-meta"))
    stored = graph.get_state(thread("t-meta")).metadata[oc_langgraph.METADATA_KEY]
    assert "ownership.owner_team=search" in stored
    assert "ownership.tenant=h1%3A" in stored or "ownership.tenant=h1:" in stored


def _interrupt_here(tmp_path: Path, team: str) -> Path:
    saver = InMemorySaver()
    graph = graphs.everything(saver)
    with bind(owner(team)):
        result = graph.invoke(start("run"), thread("t-x"))
    assert "__interrupt__" in result
    path = tmp_path / "checkpoints.pickle"
    graphs.save(saver, path)
    return path


RESUME = """
import json, sys
from ownership_ctx import Envelope, bind, events
from ownership_ctx import langgraph as oc_langgraph
from ownership_ctx.sinks import MemorySink
from langgraph.types import Command
from tests.agents import graphs

sink = MemorySink(); events.set_sink(sink)
oc_langgraph.install({install})
graph = graphs.everything(graphs.load(__import__("pathlib").Path(sys.argv[1])))
{bind}
graph.invoke(Command(resume="yes"), {{"configurable": {{"thread_id": "t-x"}}}})
print(json.dumps({{"seen": graphs.SEEN, "hops": sink.of_kind("hop")}}))
"""


def _resume_elsewhere(path: Path, *, resumer: str | None = None, install: str = "") -> Any:
    import json

    bound = (
        ""
        if resumer is None
        else (f"bind(Envelope(trace_id='{TRACE}', owner_team='{resumer}')).__enter__()")
    )
    script = textwrap.dedent(RESUME).format(install=install, bind=bound)
    out = subprocess.run(
        [sys.executable, "-c", script, str(path)],
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert out.returncode == 0, out.stderr[-3000:]
    return json.loads(out.stdout.strip().splitlines()[-1])


def test_resume_in_another_process_carries_the_stored_owner(
    tmp_path: Path, sink: MemorySink
) -> None:
    path = _interrupt_here(tmp_path, "search")
    result = _resume_elsewhere(path)
    assert ["run", "approve", "search"] in result["seen"]
    resume = [h for h in result["hops"] if h["hop"] == oc_langgraph.RESUME_HOP]
    assert [(h["unit"], h["owner_team"], h["outcome"]) for h in resume] == [
        ("everything", "search", "attributed")
    ]
    nodes = [h for h in result["hops"] if h["hop"] == oc_langgraph.NODE_HOP]
    assert [(h["unit"], h["owner_team"]) for h in nodes] == [("everything:approve", "search")]


def test_resume_under_another_envelope_keeps_the_stored_owner_unless_overridden(
    tmp_path: Path, sink: MemorySink
) -> None:
    path = _interrupt_here(tmp_path, "search")
    assert ["run", "approve", "search"] in _resume_elsewhere(path, resumer="intruder")["seen"]
    admins = "override=lambda resumer, stored: resumer.owner_team == 'admin'"
    assert ["run", "approve", "admin"] in _resume_elsewhere(path, resumer="admin", install=admins)[
        "seen"
    ]
    assert ["run", "approve", "search"] in _resume_elsewhere(path, resumer="other", install=admins)[
        "seen"
    ]


def test_a_new_turn_on_a_thread_runs_under_the_callers_envelope(sink: MemorySink) -> None:
    graph = graphs.everything(InMemorySaver())
    with bind(owner("first")):
        graph.invoke(start("one"), thread("t-turns"))
    with bind(owner("second")):
        graph.invoke(Command(resume="ok"), thread("t-turns"))  # a resume: the stored owner
        graph.invoke(start("two"), thread("t-turns"))  # new input: the caller's owner
    assert ("approve", "first") in seen("one")
    assert {team for _, team in seen("two")} == {"second"}


def test_uninstall_puts_langgraph_back(sink: MemorySink) -> None:
    oc_langgraph.uninstall()
    graph = graphs.everything(InMemorySaver())
    with bind(owner("search")):
        graph.invoke(start("run"), thread("t-off"))
    assert sink.of_kind("hop") == []
    assert graph.get_state(thread("t-off")).metadata.get(oc_langgraph.METADATA_KEY) is None


def test_with_signing_keys_an_altered_checkpoint_owner_is_not_believed(sink: MemorySink) -> None:
    from ownership_ctx import Keys, Policy

    keys = Keys(signing_keys=(b"a-signing-key-of-enough-length-32b",))
    oc_langgraph.install(policy=Policy(mode="quarantine", trust="signed"), keys=keys)
    saver = InMemorySaver()
    graph = graphs.everything(saver)
    with bind(owner("search")):
        graph.invoke(start("run"), thread("t-signed"))
    stored = graph.get_state(thread("t-signed")).metadata[oc_langgraph.METADATA_KEY]
    assert "ownership.sig=" in stored
    # Somebody with write access to the checkpoint store changes the owner.
    forged_count = 0
    for checkpoints in saver.storage["t-signed"].values():
        for cid, (checkpoint, metadata, parent) in list(checkpoints.items()):
            meta = saver.serde.loads_typed(metadata)
            if oc_langgraph.METADATA_KEY in meta:
                forged = meta[oc_langgraph.METADATA_KEY].replace("=search", "=finance")
                meta[oc_langgraph.METADATA_KEY] = forged
                checkpoints[cid] = (checkpoint, saver.serde.dumps_typed(meta), parent)
                forged_count += 1
    assert (
        forged_count
        and "=finance" in graph.get_state(thread("t-signed")).metadata[oc_langgraph.METADATA_KEY]
    )
    graph.invoke(Command(resume="yes"), thread("t-signed"))
    assert ("approve", "finance") not in seen("run")
    (resume,) = [e for e in sink.of_kind("hop") if e["hop"] == oc_langgraph.RESUME_HOP]
    assert resume.get("owner_team") is None and resume["outcome"] == "quarantined"
    assert ("approve", None) in seen("run")  # not believed: nobody's, never the forger's
