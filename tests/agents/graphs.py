"""LangGraph graphs for the tests: every kind of node records the owner it runs under.

Also a checkpointer that survives the process (the in-memory saver, pickled to a file), so that
a graph interrupted here can be resumed by another Python process.
"""

from __future__ import annotations

import operator
import pickle
import threading
from collections import Counter, defaultdict
from collections.abc import Iterator
from pathlib import Path
from typing import Annotated, Any, TypedDict

from langchain_core.messages import AIMessage, AnyMessage
from langchain_core.tools import tool
from langgraph.checkpoint.memory import InMemorySaver
from langgraph.graph import END, START, StateGraph
from langgraph.graph.message import add_messages
from langgraph.prebuilt import ToolNode
from langgraph.types import Send, interrupt

from ownership_ctx import current

Seen = tuple[str, str | None]  # (node, owner_team it saw)

_lock = threading.Lock()
SEEN: list[tuple[str, str, str | None]] = []  # (run label, node, owner_team)


def saw(label: str, node: str) -> None:
    envelope = current()
    with _lock:
        SEEN.append((label, node, envelope.owner_team if envelope is not None else None))


class State(TypedDict, total=False):
    label: str
    log: Annotated[list[str], operator.add]
    messages: Annotated[list[AnyMessage], add_messages]
    item: int
    answer: str


def _record(node: str) -> Any:
    def sync_node(state: State) -> dict[str, Any]:
        saw(state["label"], node)
        return {"log": [node]}

    return sync_node


def _arecord(node: str) -> Any:
    async def async_node(state: State) -> dict[str, Any]:
        saw(state["label"], node)
        return {"log": [node]}

    return async_node


@tool
def lookup(query: str) -> str:
    """Look something up (runs in LangChain's thread pool)."""
    saw(query, "tool:lookup")
    return "found"


@tool
def weather(city: str) -> str:
    """The weather in a city (runs in LangChain's thread pool)."""
    saw(city, "tool:weather")
    return "sunny"


def _call_tools(state: State) -> dict[str, Any]:
    label = state["label"]
    saw(label, "call_tools")
    calls = [
        {"name": "lookup", "args": {"query": label}, "id": f"a-{label}"},
        {"name": "weather", "args": {"city": label}, "id": f"b-{label}"},
    ]
    return {"messages": [AIMessage(content="", tool_calls=calls)]}


def _fan_out(state: State) -> list[Send]:
    return [Send("worker", {"label": state["label"], "item": i}) for i in range(3)]


def _worker(state: State) -> dict[str, Any]:
    saw(state["label"], "worker")
    return {"log": ["worker"]}


def _approve(state: State) -> dict[str, Any]:
    answer = interrupt("approve?")
    saw(state["label"], "approve")
    return {"answer": str(answer), "log": ["approve"]}


def subgraph(asynchronous: bool = False) -> Any:
    sub = StateGraph(State)
    sub.add_node("inner_sync", _record("sub/inner_sync"))
    sub.add_node("inner_async", (_arecord if asynchronous else _record)("sub/inner_async"))
    sub.add_edge(START, "inner_sync")
    sub.add_edge("inner_sync", "inner_async")
    sub.add_edge("inner_async", END)
    return sub.compile()


def everything(checkpointer: Any = None, *, asynchronous: bool = False) -> Any:
    """plan -> (research | fan-out workers | call_tools -> tools) -> sub -> approve (interrupt).

    ``asynchronous``: some nodes are async (the graph must then run with ainvoke/astream).
    """
    graph = StateGraph(State)
    graph.add_node("plan", _record("plan"))
    graph.add_node("research", (_arecord if asynchronous else _record)("research"))
    graph.add_node("dispatch", _record("dispatch"))
    graph.add_node("worker", _worker)
    graph.add_node("call_tools", _call_tools)
    graph.add_node("tools", ToolNode([lookup, weather]))
    graph.add_node("sub", subgraph(asynchronous))
    graph.add_node("approve", _approve)
    graph.add_edge(START, "plan")
    graph.add_edge("plan", "research")
    graph.add_edge("plan", "dispatch")
    graph.add_edge("plan", "call_tools")
    graph.add_conditional_edges("dispatch", _fan_out, ["worker"])
    graph.add_edge("call_tools", "tools")
    graph.add_edge(["research", "worker", "tools"], "sub")
    graph.add_edge("sub", "approve")
    graph.add_edge("approve", END)
    return graph.compile(checkpointer=checkpointer, name="everything")


#: What a run of `everything` up to its interrupt records (node -> times).
BEFORE_INTERRUPT = {
    "plan": 1,
    "research": 1,
    "dispatch": 1,
    "worker": 3,
    "call_tools": 1,
    "tool:lookup": 1,
    "tool:weather": 1,
    "sub/inner_sync": 1,
    "sub/inner_async": 1,
}


# -- a checkpointer another process can read ---------------------------------------------------


def save(saver: InMemorySaver, path: Path) -> None:
    state = {
        "storage": {t: {ns: dict(v) for ns, v in d.items()} for t, d in saver.storage.items()},
        "writes": dict(saver.writes),
        "blobs": dict(saver.blobs),
    }
    path.write_bytes(pickle.dumps(state))


def load(path: Path) -> InMemorySaver:
    state = pickle.loads(path.read_bytes())
    saver = InMemorySaver()
    for thread, namespaces in state["storage"].items():
        saver.storage[thread] = defaultdict(dict, namespaces)
    saver.writes.update(state["writes"])
    saver.blobs.update(state["blobs"])
    return saver


# -- random graphs (the property test) ----------------------------------------------------------
# A spec is a list of stages run one after the other (JSON, so another process can rebuild it):
#   ["node", "sync" | "async", llm]   one node
#   ["fanout", n, llm]                a dispatcher and n `Send` branches of one worker node
#   ["tools", k, llm]                 a node asking for k tool calls, a ToolNode running them
#                                     in LangChain's thread pool
#   ["sub", [stage, ...]]             a subgraph (nested specs)
#   ["interrupt"]                     a node that interrupts (top level only)
# ``llm``: the node (each worker, each tool call) makes one chat completion.

Spec = list[list[Any]]


class RandomState(TypedDict, total=False):
    label: str
    url: str
    messages: Annotated[list[AnyMessage], add_messages]


def llm_call(url: str) -> None:
    import openai

    client = openai.OpenAI(base_url=url, api_key="sk-test", max_retries=0)
    client.chat.completions.create(model="gpt-4o", messages=[{"role": "user", "content": "hi"}])


@tool
def probe(node: str, label: str, url: str, llm: bool) -> str:
    """A tool that records who it runs for."""
    saw(label, node)
    if llm:
        llm_call(url)
    return "ok"


def is_async(spec: Spec) -> bool:
    return any(
        (stage[0] == "node" and stage[1] == "async") or (stage[0] == "sub" and is_async(stage[1]))
        for stage in spec
    )


def expected(spec: Spec, *, phase: int | None = None) -> tuple[Counter[str], int]:
    """(executions per node id, chat completions) of one run; ``phase`` 1: up to the
    interrupt, 2: from it on, None: all."""
    nodes: Counter[str] = Counter()
    llm = 0
    counter = iter(range(10_000))

    def walk(stages: Spec, top: bool, counted_outer: bool) -> None:
        nonlocal llm
        interrupted = False
        for stage in stages:
            i = next(counter)
            if top and stage[0] == "interrupt":
                interrupted = True
            counted = counted_outer if not top else (phase is None or (phase == 2) == interrupted)
            if stage[0] == "sub":
                walk(stage[1], False, counted)
            elif not counted:
                continue
            elif stage[0] == "node":
                nodes[f"n{i}"] += 1
                llm += stage[2]
            elif stage[0] == "fanout":
                nodes[f"d{i}"] += 1
                nodes[f"w{i}"] += stage[1]
                llm += stage[1] * stage[2]
            elif stage[0] == "tools":
                nodes[f"c{i}"] += 1
                nodes[f"t{i}"] += stage[1]
                llm += stage[1] * stage[2]
            else:
                nodes[f"i{i}"] += 1

    walk(spec, True, True)
    return +nodes, llm


def random_graph(spec: Spec, checkpointer: Any = None) -> Any:
    counter = iter(range(10_000))
    return _build(spec, counter, checkpointer, "random")


def _build(spec: Spec, counter: Iterator[int], checkpointer: Any, name: str) -> Any:
    builder = StateGraph(RandomState)
    previous = START
    for stage in spec:
        i = next(counter)
        kind = stage[0]
        if kind == "node":
            node = f"n{i}"
            builder.add_node(node, _node(node, stage[1] == "async", bool(stage[2])))
            entry = exit_ = node
        elif kind == "fanout":
            dispatcher, worker = f"d{i}", f"w{i}"
            builder.add_node(dispatcher, _node(dispatcher, False, False))
            builder.add_node(worker, _node(worker, False, bool(stage[2])))
            builder.add_conditional_edges(dispatcher, _sender(worker, stage[1]), [worker])
            entry, exit_ = dispatcher, worker
        elif kind == "tools":
            caller, tools = f"c{i}", f"t{i}"
            builder.add_node(caller, _tool_caller(caller, tools, stage[1], bool(stage[2])))
            builder.add_node(tools, ToolNode([probe]))
            builder.add_edge(caller, tools)
            entry, exit_ = caller, tools
        elif kind == "sub":
            node = f"s{i}"
            builder.add_node(node, _build(stage[1], counter, None, node))
            entry = exit_ = node
        else:
            node = f"i{i}"
            builder.add_node(node, _interrupting(node))
            entry = exit_ = node
        builder.add_edge(previous, entry)
        previous = exit_
    builder.add_edge(previous, END)
    return builder.compile(checkpointer=checkpointer, name=name)


def _node(node: str, asynchronous: bool, llm: bool) -> Any:
    def run(state: RandomState) -> dict[str, Any]:
        saw(state["label"], node)
        if llm:
            llm_call(state["url"])
        return {}

    async def arun(state: RandomState) -> dict[str, Any]:
        return run(state)

    return arun if asynchronous else run


def _sender(worker: str, n: int) -> Any:
    def send(state: RandomState) -> list[Send]:
        return [Send(worker, {"label": state["label"], "url": state["url"]}) for _ in range(n)]

    return send


def _tool_caller(node: str, tools: str, k: int, llm: bool) -> Any:
    def call(state: RandomState) -> dict[str, Any]:
        saw(state["label"], node)
        args = {"node": tools, "label": state["label"], "url": state["url"], "llm": llm}
        calls = [
            {"name": "probe", "args": args, "id": f"{tools}-{state['label']}-{j}"} for j in range(k)
        ]
        return {"messages": [AIMessage(content="", tool_calls=calls)]}

    return call


def _interrupting(node: str) -> Any:
    def ask(state: RandomState) -> dict[str, Any]:
        interrupt("continue?")
        saw(state["label"], node)  # after the resume only
        return {}

    return ask
