"""OpenAI Agents SDK: ownership on the SDK's own traces and spans, and agent steps as hops.

    from ownership_ctx import metering
    from ownership_ctx import openai_agents as oc_agents
    metering.instrument_all()     # each model call: one provider_call event (the SDK's client)
    oc_agents.install()           # ownership on traces/spans; agent, tool, handoff hops

The SDK runs tools, handoffs and parallel tool calls as asyncio tasks (sync tools in worker
threads through ``asyncio.to_thread``), which copy the context: the envelope bound where
``Runner.run`` / ``run_sync`` / ``run_streamed`` is called reaches every tool and every model
call with no help. What this module adds is a `TracingProcessor`:

- the trace gets ``ownership.*`` entries in its ``metadata`` (the envelope bound when the trace
  starts); agent, task and turn spans in their ``metadata`` (the span types that have one), so
  whatever the SDK's tracing exports to (OpenAI's dashboard, your own processor) shows the owner;
- a ``hop`` event for each agent step (``agents_step``, unit ``agent:<name>``), tool call
  (``agents_tool``, ``tool:<name>``) and handoff (``agents_handoff``, ``<from>-><to>``) with the
  envelope it runs under, so ``trace`` lists them and audit/coverage name the one that lost it.
"""

from __future__ import annotations

import threading
from typing import Any, Final

try:
    import agents
    from agents.tracing import TracingProcessor
    from agents.tracing.span_data import AgentSpanData, FunctionSpanData, HandoffSpanData
except ImportError as exc:  # pragma: no cover - depends on the environment
    raise ImportError(
        "ownership_ctx.openai_agents needs the OpenAI Agents SDK:"
        " pip install 'ownership-ctx[openai-agents]'"
    ) from exc

from . import events
from .context import current
from .envelope import Envelope

__all__ = [
    "HANDOFF_HOP",
    "STEP_HOP",
    "TOOL_HOP",
    "OwnershipTracingProcessor",
    "install",
    "installed",
    "uninstall",
]

STEP_HOP: Final = "agents_step"
TOOL_HOP: Final = "agents_tool"
HANDOFF_HOP: Final = "agents_handoff"
_OWNERSHIP: Final = ("owner_team", "workflow_id", "feature", "tenant", "user")
_PREFIX: Final = "ownership."


def metadata_of(envelope: Envelope) -> dict[str, str]:
    """``ownership.*`` entries (the trace id too: the SDK's trace ids are its own)."""
    return {_PREFIX + key: value for key, value in envelope.as_dict().items()}


class OwnershipTracingProcessor(TracingProcessor):
    """Adds the bound envelope to traces and spans as they start; records agent hops."""

    def __init__(self, *, hops: bool = True) -> None:
        self.hops = hops
        self.active = True
        # The envelope each SDK trace started under: spans of a trace started elsewhere.
        self._trace_fields: dict[str, tuple[str | None, tuple[str, ...]]] = {}
        self._lock = threading.Lock()

    def on_trace_start(self, trace: Any) -> None:
        if not self.active:
            return
        envelope = current()
        if envelope is None:
            return
        try:
            trace.metadata = {**(getattr(trace, "metadata", None) or {}), **metadata_of(envelope)}
            fields = tuple(f for f in _OWNERSHIP if getattr(envelope, f))
            with self._lock:
                self._trace_fields[trace.trace_id] = (envelope.trace_id, fields)
        except Exception:
            events.count("agents_tracing_errors")

    def on_trace_end(self, trace: Any) -> None:
        with self._lock:
            self._trace_fields.pop(str(getattr(trace, "trace_id", "")), None)

    def on_span_start(self, span: Any) -> None:
        if not self.active:
            return
        try:
            envelope = current()
            data = span.span_data
            if envelope is not None and hasattr(type(data), "metadata"):
                data.metadata = {**(data.metadata or {}), **metadata_of(envelope)}
            if self.hops and events.get_sink() is not None:
                hop = _hop_of(data)
                if hop is not None:
                    events.emit(self._hop(span, envelope, *hop))
        except Exception:
            events.count("agents_tracing_errors")

    def _hop(self, span: Any, envelope: Envelope | None, hop: str, unit: str) -> dict[str, Any]:
        with self._lock:
            trace_id, fields = self._trace_fields.get(span.trace_id, (None, ()))
        present = [f for f in _OWNERSHIP if envelope is not None and getattr(envelope, f)]
        return {
            "kind": "hop",
            "hop": hop,
            "unit": unit[:200],
            "outcome": envelope.attribution if envelope is not None else "unattributed",
            "trace_id": envelope.trace_id if envelope is not None else trace_id,
            "missing": [f for f in fields if f not in present],
            "fields_present": present,
            "problems": [],
            **(envelope.as_dict() if envelope is not None else {}),
        }

    def on_span_end(self, span: Any) -> None:
        # A handoff span learns its target after it starts: its hop is recorded at the end.
        data = span.span_data
        if not (self.active and self.hops and isinstance(data, HandoffSpanData)):
            return
        if events.get_sink() is None:
            return
        try:
            unit = f"{data.from_agent}->{data.to_agent}"
            events.emit(self._hop(span, current(), HANDOFF_HOP, unit))
        except Exception:
            events.count("agents_tracing_errors")

    def shutdown(self) -> None:
        pass

    def force_flush(self) -> None:
        pass


def _hop_of(data: Any) -> tuple[str, str] | None:
    if isinstance(data, AgentSpanData):
        return STEP_HOP, f"agent:{data.name}"
    if isinstance(data, FunctionSpanData):
        return TOOL_HOP, f"tool:{data.name}"
    return None


_processor: OwnershipTracingProcessor | None = None
_lock = threading.Lock()


def install(*, hops: bool = True) -> OwnershipTracingProcessor:
    """Add the processor to the SDK's tracing (``agents.add_trace_processor``); idempotent."""
    global _processor
    with _lock:
        if _processor is None:
            _processor = OwnershipTracingProcessor(hops=hops)
            agents.add_trace_processor(_processor)
        _processor.hops = hops
        _processor.active = True
        return _processor


def installed() -> bool:
    return _processor is not None and _processor.active


def uninstall() -> None:
    """The SDK cannot remove a processor: ours stays registered and does nothing."""
    with _lock:
        if _processor is not None:
            _processor.active = False
