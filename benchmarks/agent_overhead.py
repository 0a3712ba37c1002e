"""What the agent-runtime adapters cost, next to the same run without them (same process).

Cases (best of several rounds, ours and bare interleaved; an envelope is bound in every case):

- ``graph_node_bare`` / ``graph_node_ours``: a LangGraph graph of 20 trivial sync nodes with an
  in-memory checkpointer, ``invoke`` per run, divided by the number of nodes; ours =
  ``ownership_ctx.langgraph.install()`` (envelope into checkpoint metadata, the stored-envelope
  lookup at the start of the run, one hop event per node into a `MemorySink`).
- ``graph_run_bare`` / ``graph_run_ours``: the same runs, per run; ``graph_run_ours_no_hops``
  with ``install(hops=False)`` (checkpoint metadata and resume only) next to its own
  ``graph_run_bare_2``.
- ``agent_step_bare`` / ``agent_step_ours``: an OpenAI Agents SDK run of one agent step against
  a local model object (no HTTP, so the SDK's own work is what is compared), per step; bare =
  the SDK's tracing on with a do-nothing processor (standing for its default exporter), ours =
  that plus the ``ownership_ctx.openai_agents`` processor (ownership on the trace and agent
  span, one hop event).
- ``litellm_call_bare`` / ``litellm_call_ours``: ``litellm.completion(mock_response=...)`` (no
  HTTP) without and with the ownership callback, per call, on the caller's path (LiteLLM runs
  success callbacks on its logging thread).
- ``*_callback``: the graph and LiteLLM cases again with a do-nothing callback of the library's
  own kind installed in both (any tracer or logger): what our handler adds on top of the
  library's callback machinery, which the first callback of any kind switches on.

    python benchmarks/agent_overhead.py [--quick] [--json PATH]
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import sys
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any, TypedDict

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))
os.environ.setdefault("LITELLM_LOCAL_MODEL_COST_MAP", "True")

from ownership_ctx import Envelope, bind, events
from ownership_ctx.sinks import MemorySink

NODES = 20


def bench(fn: Callable[[], Any], n: int) -> float:
    """Per-call time in µs of ``n`` calls."""
    start = time.perf_counter()
    for _ in range(n):
        fn()
    return (time.perf_counter() - start) / n * 1e6


def side_by_side(
    fn: Callable[[], Any], on: Callable[[], Any], off: Callable[[], Any], n: int, rounds: int
) -> dict[str, float]:
    """Best per-call µs without (``off``) and with (``on``) us, rounds interleaved so that
    the machine's load hits both alike."""
    best = {"bare": float("inf"), "ours": float("inf")}
    for _ in range(rounds):
        for case, switch in (("bare", off), ("ours", on)):
            switch()
            fn()  # warm
            best[case] = min(best[case], bench(fn, n))
    off()
    return best


class State(TypedDict):
    count: int


def _graph() -> Any:
    from langgraph.checkpoint.memory import InMemorySaver
    from langgraph.graph import END, START, StateGraph

    def step(state: State) -> dict[str, int]:
        return {"count": state["count"] + 1}

    builder = StateGraph(State)
    previous = START
    for i in range(NODES):
        builder.add_node(f"n{i}", step)
        builder.add_edge(previous, f"n{i}")
        previous = f"n{i}"
    builder.add_edge(previous, END)
    return builder.compile(checkpointer=InMemorySaver(), name="bench")


def graph_cases(n: int, rounds: int) -> dict[str, float]:
    from langchain_core.callbacks import BaseCallbackHandler

    from ownership_ctx import langgraph as oc_langgraph

    graph = _graph()
    counter = iter(range(10**9))

    def run() -> None:
        graph.invoke({"count": 0}, {"configurable": {"thread_id": f"t{next(counter)}"}})

    out = side_by_side(run, oc_langgraph.install, oc_langgraph.uninstall, n, rounds)

    class Noop(BaseCallbackHandler):  # type: ignore[misc]
        """Any LangChain callback (a tracer, a logger): it switches on LangChain's callback
        machinery for every node, which is most of what our node hops cost."""

    def run_with_callback() -> None:
        config: Any = {"configurable": {"thread_id": f"t{next(counter)}"}, "callbacks": [Noop()]}
        graph.invoke({"count": 0}, config)

    with_callback = side_by_side(
        run_with_callback, oc_langgraph.install, oc_langgraph.uninstall, n, rounds
    )
    out["bare_callback"], out["ours_callback"] = with_callback["bare"], with_callback["ours"]
    without_hops = side_by_side(
        run, lambda: oc_langgraph.install(hops=False), oc_langgraph.uninstall, n, rounds
    )
    out["ours_no_hops"], out["bare_again"] = without_hops["ours"], without_hops["bare"]
    return out


def agent_cases(n: int, rounds: int) -> dict[str, float]:
    import agents
    from agents import Agent, Model, ModelResponse, Runner, Usage
    from agents.tracing import TracingProcessor
    from openai.types.responses import ResponseOutputMessage, ResponseOutputText

    from ownership_ctx import openai_agents as oc_agents

    class LocalModel(Model):  # type: ignore[misc]
        async def get_response(self, *args: Any, **kwargs: Any) -> ModelResponse:
            text = ResponseOutputText(type="output_text", text="done", annotations=[])
            message = ResponseOutputMessage(
                id="msg_1", type="message", role="assistant", status="completed", content=[text]
            )
            return ModelResponse(output=[message], usage=Usage(), response_id=None)

        def stream_response(self, *args: Any, **kwargs: Any) -> Any:
            raise NotImplementedError

    agent = Agent(name="bench", instructions="answer", model=LocalModel())
    loop = asyncio.new_event_loop()

    def run() -> None:
        loop.run_until_complete(Runner.run(agent, "hi"))

    class Exporter(TracingProcessor):  # type: ignore[misc]
        """Stands for the SDK's default exporter: tracing is on in both cases."""

        def on_trace_start(self, trace: Any) -> None: ...
        def on_trace_end(self, trace: Any) -> None: ...
        def on_span_start(self, span: Any) -> None: ...
        def on_span_end(self, span: Any) -> None: ...
        def shutdown(self) -> None: ...
        def force_flush(self) -> None: ...

    exporter = Exporter()

    def on() -> None:
        agents.set_trace_processors([exporter, oc_agents.install()])

    def off() -> None:
        oc_agents.uninstall()
        agents.set_trace_processors([exporter])

    try:
        return side_by_side(run, on, off, n, rounds)
    finally:
        agents.set_trace_processors([])
        loop.close()


def litellm_cases(n: int, rounds: int) -> dict[str, float]:
    import litellm
    from litellm.integrations.custom_logger import CustomLogger

    from ownership_ctx import litellm as oc_litellm

    def run() -> None:
        litellm.completion(
            model="openai/gpt-4o",
            messages=[{"role": "user", "content": "hi"}],
            mock_response="done",
            api_key="sk-bench",
        )

    out = side_by_side(run, oc_litellm.install, oc_litellm.uninstall, n, rounds)
    noop = CustomLogger()  # any LiteLLM callback switches on its logging for every call

    def other_on() -> None:
        litellm.callbacks.append(noop)
        oc_litellm.install()

    def other_off() -> None:
        oc_litellm.uninstall()
        if noop not in litellm.callbacks:
            litellm.callbacks.append(noop)

    with_callback = side_by_side(run, other_on, other_off, n, rounds)
    litellm.callbacks.remove(noop)
    out["bare_callback"], out["ours_callback"] = with_callback["bare"], with_callback["ours"]
    time.sleep(0.5)  # let LiteLLM's logging thread finish before the sink goes
    return out


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--quick", action="store_true", help="a few seconds")
    parser.add_argument("--json", type=Path, help="write results here")
    args = parser.parse_args()
    graph_n, agent_n, litellm_n, rounds = (20, 50, 50, 3) if args.quick else (200, 500, 300, 5)

    sink = MemorySink(maxlen=10_000)
    events.set_sink(sink)
    envelope = Envelope(
        trace_id="ab" * 16, owner_team="search", workflow_id="answer", feature="triage"
    )
    results: list[dict[str, Any]] = []

    def add(case: str, metric: str, value: float) -> None:
        results.append({"case": case, "metric": metric, "value": round(value, 3), "unit": "us"})

    with bind(envelope):
        graph = graph_cases(graph_n, rounds)
        agent = agent_cases(agent_n, rounds)
        lite = litellm_cases(litellm_n, rounds)
    events.set_sink(None)

    add("graph_node_bare", "per_node", graph["bare"] / NODES)
    add("graph_node_ours", "per_node", graph["ours"] / NODES)
    add("graph_run_bare", "per_run", graph["bare"])
    add("graph_run_ours", "per_run", graph["ours"])
    add("graph_run_bare_callback", "per_run", graph["bare_callback"])
    add("graph_run_ours_callback", "per_run", graph["ours_callback"])
    add("graph_run_bare_2", "per_run", graph["bare_again"])
    add("graph_run_ours_no_hops", "per_run", graph["ours_no_hops"])
    add("agent_step_bare", "per_step", agent["bare"])
    add("agent_step_ours", "per_step", agent["ours"])
    add("litellm_call_bare", "per_call", lite["bare"])
    add("litellm_call_ours", "per_call", lite["ours"])
    add("litellm_call_bare_callback", "per_call", lite["bare_callback"])
    add("litellm_call_ours_callback", "per_call", lite["ours_callback"])

    value = {r["case"]: r["value"] for r in results}
    print(f"{'case':<20} {'metric':<9} {'µs':>10}  vs bare")
    for r in results:
        bare = value.get(r["case"].replace("_ours", "_bare").replace("_bare_no_hops", "_bare_2"))
        note = ""
        if "_ours" in r["case"] and bare:
            note = f"{r['value'] - bare:+.1f} µs ({100 * (r['value'] / bare - 1):+.1f}%)"
        print(f"{r['case']:<20} {r['metric']:<9} {r['value']:>10.1f}  {note}")
    if args.json:
        args.json.parent.mkdir(parents=True, exist_ok=True)
        args.json.write_text(json.dumps({"results": results}, indent=2) + "\n")


if __name__ == "__main__":
    main()
