"""Event sinks: where `ownership_ctx.events.emit` hands events.

A sink is anything with ``emit(event: Mapping) -> None`` (`ownership_ctx.events.Sink`).
`install` builds one from a URL (``sqlite:///events.db``, ``postgresql://...``,
``jsonl:///events.jsonl``, ``memory://``, ``otel://``; default ``OWNERSHIP_CTX_SINK_URL``):
a `Pipeline` in front of a store, which never blocks or fails the host. `open_store` reads
what was stored (the store itself: `ownership_ctx.store`). `MemorySink` and `JsonLinesSink`
serve tests and small scripts.
"""

from __future__ import annotations

from ownership_ctx.store.api import DIMENSIONS, MEASURES, EventQueries, RollupRow

from .config import from_env, install, open_backend, open_reader, open_sink, open_store
from .jsonl import JsonLinesSink, to_json
from .memory import MemorySink
from .pipeline import Pipeline, close_all, flush_all

__all__ = [
    "DIMENSIONS",
    "MEASURES",
    "EventQueries",
    "JsonLinesSink",
    "MemorySink",
    "Pipeline",
    "RollupRow",
    "close_all",
    "flush_all",
    "from_env",
    "install",
    "open_backend",
    "open_reader",
    "open_sink",
    "open_store",
    "to_json",
]
