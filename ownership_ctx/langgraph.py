"""LangGraph: the envelope in every node, stored with checkpoints, restored on resume.

    from ownership_ctx import langgraph as oc_langgraph
    oc_langgraph.install()        # every compiled graph in the process; undo: uninstall()

Inside one process LangGraph already carries context variables into its nodes (sync nodes run
in LangChain's context-copying thread pool, async nodes in tasks, ``Send`` branches, tool nodes
and subgraphs alike). What `install` adds, for each top-level run (``invoke``, ``stream``,
``ainvoke``, ``astream``; they all go through ``stream`` / ``astream``):

- **checkpoints carry ownership**: the run's envelope is written into the config's metadata
  under ``ownership_envelope`` (the queue encoding: hashed tenant/user only, signed when
  signing keys are configured), which LangGraph stores with every checkpoint of the run;
- **resume restores it**: a run that resumes a thread (input ``None`` or a ``Command``) from a
  checkpoint that carries an envelope, in this process or another, is admitted through a
  `Gate` (hop ``langgraph_resume``: policy, signature, trust), so its nodes see the stored
  owner. When the resumer has an envelope of its own, the stored owner wins unless
  ``override(resumer, stored)`` says the resumer may take over. A new input on an existing
  thread runs under the caller's envelope (the stored one when nothing is bound);
- **hops**: one ``hop`` event per node execution (hop ``langgraph_node``, unit
  ``graph:node``, subgraph nodes as ``graph:parent/node``) carrying the envelope the node saw,
  so ``trace`` lists the nodes and audit/coverage name the node where fields were lost.

The run's envelope is bound in a copy of the caller's context, so a streamed run never changes
what the caller's own code sees between chunks.
"""

from __future__ import annotations

import asyncio
import contextvars
import logging
import sys
import threading
from collections.abc import AsyncIterator, Callable, Iterator, Mapping
from typing import Any, Final
from uuid import UUID

try:
    from langchain_core.callbacks import BaseCallbackHandler
    from langchain_core.runnables.config import merge_configs
    from langgraph.pregel import Pregel
    from langgraph.types import Command
except ImportError as exc:  # pragma: no cover - depends on the environment
    raise ImportError(
        "ownership_ctx.langgraph needs LangGraph: pip install 'ownership-ctx[langgraph]'"
    ) from exc

from . import events
from .codec import QUEUE_HEADER, decode_header
from .context import bind, current
from .envelope import Envelope
from .gate import Entry, Gate
from .hashing import Keys
from .policy import Policy

__all__ = ["METADATA_KEY", "NODE_HOP", "RESUME_HOP", "Override", "install", "uninstall"]

#: The checkpoint metadata key holding the run's envelope.
METADATA_KEY: Final = "ownership_envelope"
NODE_HOP: Final = "langgraph_node"
RESUME_HOP: Final = "langgraph_resume"
_OWNERSHIP: Final = ("owner_team", "workflow_id", "feature", "tenant", "user")

logger = logging.getLogger("ownership_ctx")

#: ``override(resumer, stored)``: may the resumer's envelope replace the stored one?
Override = Callable[[Envelope, Envelope], bool]

_active: contextvars.ContextVar[bool] = contextvars.ContextVar(
    "ownership_ctx.langgraph.run", default=False
)


class _Settings:
    def __init__(self, gate: Gate, override: Override | None, hops: bool) -> None:
        self.gate = gate
        self.override = override
        self.hops = hops


_settings: _Settings | None = None
_lock = threading.Lock()
_ORIGINAL_STREAM: Final[Any] = Pregel.stream
_ORIGINAL_ASTREAM: Final[Any] = Pregel.astream


def install(
    *,
    policy: Policy | None = None,
    keys: Keys | None = None,
    override: Override | None = None,
    hops: bool = True,
) -> None:
    """Instrument every LangGraph graph run in the process (idempotent: a second call only
    replaces the settings). ``policy`` / ``keys`` admit stored envelopes on resume (default:
    observe, ``Policy(mode="quarantine")``: a stored envelope missing required fields is kept
    and marked quarantined, never dropped; keys from the environment); ``hops=False`` records
    no node hops."""
    global _settings
    with _lock:
        gate = Gate(policy if policy is not None else Policy(mode="quarantine"), keys)
        _settings = _Settings(gate, override, hops)
        Pregel.stream = _stream  # type: ignore[method-assign]
        Pregel.astream = _astream  # type: ignore[method-assign]


def uninstall() -> None:
    """Put LangGraph back as it was."""
    global _settings
    with _lock:
        Pregel.stream = _ORIGINAL_STREAM  # type: ignore[method-assign]
        Pregel.astream = _ORIGINAL_ASTREAM  # type: ignore[method-assign]
        _settings = None


def installed() -> bool:
    return _settings is not None


# -- one top-level run ----------------------------------------------------------------------


class _Run:
    """Decides the run's envelope and config; lives in the run's own context."""

    def __init__(self, settings: _Settings, graph: Any, config: Any) -> None:
        self.settings = settings
        self.name = str(getattr(graph, "name", None) or "graph")
        self.config: Any = dict(config or {})
        self.entry: Entry | None = None

    def start(self, input: Any, stored: str | None) -> None:
        """Bind the run's envelope in the current (the run's) context; set up the config."""
        settings = self.settings
        resumer = current()
        resuming = input is None or isinstance(input, Command)
        takes_over = resumer is not None and (
            not resuming or (stored is not None and self._may_override(resumer, stored))
        )
        if stored and not takes_over:
            self.entry = settings.gate.enter(
                {QUEUE_HEADER: stored}, hop=RESUME_HOP, unit=self.name, header=QUEUE_HEADER
            )
        envelope = current()
        extra: dict[str, Any] = {}
        if envelope is not None:
            carrier: dict[str, str] = {}
            settings.gate.write(carrier, header=QUEUE_HEADER)
            extra["metadata"] = {METADATA_KEY: carrier[QUEUE_HEADER]}
        if settings.hops:
            extra["callbacks"] = [_NodeHops(self.name, envelope)]
        if extra:
            self.config = merge_configs(self.config, extra)  # type: ignore[arg-type]

    def _may_override(self, resumer: Envelope, stored: str) -> bool:
        override = self.settings.override
        if override is None:
            return False
        envelope, _ = decode_header(stored, self.settings.gate.keys)
        return envelope is None or bool(override(resumer, envelope))

    def end(self) -> None:
        if self.entry is not None:
            entry, self.entry = self.entry, None
            entry.close()


def _thread_config(config: Any) -> Mapping[str, Any] | None:
    configurable = (config or {}).get("configurable") or {}
    return config if configurable.get("thread_id") is not None else None


def _stored(graph: Any, config: Any) -> str | None:
    if getattr(graph, "checkpointer", None) in (None, False) or _thread_config(config) is None:
        return None
    state = graph.get_state(config)
    value = (getattr(state, "metadata", None) or {}).get(METADATA_KEY)
    return value if isinstance(value, str) else None


async def _astored(graph: Any, config: Any) -> str | None:
    if getattr(graph, "checkpointer", None) in (None, False) or _thread_config(config) is None:
        return None
    state = await graph.aget_state(config)
    value = (getattr(state, "metadata", None) or {}).get(METADATA_KEY)
    return value if isinstance(value, str) else None


def _stream(self: Any, input: Any, config: Any = None, **kwargs: Any) -> Iterator[Any]:
    settings, original = _settings, _ORIGINAL_STREAM
    if settings is None or _active.get():
        # A subgraph, or a graph run inside a node: the context is already the run's.
        yield from original(self, input, config, **kwargs)
        return
    context = contextvars.copy_context()
    context.run(_active.set, True)
    run = _Run(settings, self, config)
    try:
        context.run(run.start, input, context.run(_stored, self, config))
    except Exception:  # never fail the graph for ownership: it runs as it would without us
        _failed(run)
    chunks = context.run(original, self, input, run.config, **kwargs)
    try:
        while True:
            try:
                chunk = context.run(next, chunks)
            except StopIteration:
                return
            yield chunk
    finally:
        context.run(chunks.close)
        context.run(run.end)


async def _astream(self: Any, input: Any, config: Any = None, **kwargs: Any) -> AsyncIterator[Any]:
    settings, original = _settings, _ORIGINAL_ASTREAM
    if settings is None or _active.get():
        async for chunk in original(self, input, config, **kwargs):
            yield chunk
        return
    run = _Run(settings, self, config)
    if sys.version_info >= (3, 11):
        # Each step runs as a task in the run's own context (bound there, never here).
        context = contextvars.copy_context()
        context.run(_active.set, True)
        try:
            stored = await asyncio.create_task(_astored(self, config), context=context)
            context.run(run.start, input, stored)
        except Exception:
            _failed(run)
        chunks = context.run(original, self, input, run.config, **kwargs)
        try:
            while True:
                try:
                    chunk = await asyncio.create_task(_anext(chunks), context=context)
                except StopAsyncIteration:
                    return
                yield chunk
        finally:
            await asyncio.create_task(chunks.aclose(), context=context)
            context.run(run.end)
    else:  # pragma: no cover - Python 3.10: bound in the caller's context for the run
        with bind(current()):
            token = _active.set(True)
            try:
                run.start(input, await _astored(self, config))
            except Exception:
                _failed(run)
            try:
                async for chunk in original(self, input, run.config, **kwargs):
                    yield chunk
            finally:
                _active.reset(token)
                run.end()


def _failed(run: _Run) -> None:
    events.count("langgraph_errors")
    logger.warning("ownership_ctx: LangGraph run %r not instrumented", run.name, exc_info=True)


async def _anext(chunks: Any) -> Any:
    return await chunks.__anext__()


# -- node hops --------------------------------------------------------------------------------


class _NodeHops(BaseCallbackHandler):
    """One ``hop`` event per node execution, with the envelope the node runs under."""

    run_inline = True  # called in the node's own context, not in a thread of LangChain's

    def __init__(self, graph: str, envelope: Envelope | None) -> None:
        super().__init__()
        self.graph = graph
        self.trace_id = envelope.trace_id if envelope is not None else None
        self.fields = tuple(f for f in _OWNERSHIP if envelope is not None and getattr(envelope, f))

    def on_chain_start(
        self,
        serialized: Any,
        inputs: Any,
        *,
        run_id: UUID,
        parent_run_id: UUID | None = None,
        tags: list[str] | None = None,
        metadata: dict[str, Any] | None = None,
        **kwargs: Any,
    ) -> None:
        node = (metadata or {}).get("langgraph_node")
        if node is None or kwargs.get("name") != node or events.get_sink() is None:
            return
        try:
            events.emit(self._hop(str(node), str((metadata or {}).get("langgraph_checkpoint_ns"))))
        except Exception:
            events.count("langgraph_hop_errors")

    def _hop(self, node: str, namespace: str) -> dict[str, Any]:
        # "parent:<task id>|node:<task id>" -> "parent/node"
        path = [part.split(":", 1)[0] for part in namespace.split("|") if part]
        unit = f"{self.graph}:{'/'.join(path) or node}"
        envelope = current()
        present = [f for f in _OWNERSHIP if envelope is not None and getattr(envelope, f)]
        return {
            "kind": "hop",
            "hop": NODE_HOP,
            "unit": unit[:200],
            "outcome": envelope.attribution if envelope is not None else "unattributed",
            "trace_id": envelope.trace_id if envelope is not None else self.trace_id,
            "missing": [f for f in self.fields if f not in present],
            "fields_present": present,
            "problems": [],
            **(envelope.as_dict() if envelope is not None else {}),
        }
