"""Event sinks: where `ownership_ctx.events.emit` hands events.

A sink is anything with ``emit(event: Mapping) -> None`` (`ownership_ctx.events.Sink`). Here:
`MemorySink` (tests, demos) and `JsonLinesSink` (one JSON object per line). Durable SQLite /
PostgreSQL sinks build on the same interface.
"""

from __future__ import annotations

from .jsonl import JsonLinesSink, to_json
from .memory import MemorySink

__all__ = ["JsonLinesSink", "MemorySink", "to_json"]
