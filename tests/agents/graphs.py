"""LangGraph graphs for the tests: every kind of node records the owner it runs under.

Also a checkpointer that survives the process (the in-memory saver, pickled to a file), so that
a graph interrupted here can be resumed by another Python process.
"""

from __future__ import annotations

import operator
import pickle
import threading
from collections import defaultdict
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
