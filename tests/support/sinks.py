"""Event sinks for tests: collect what ownership_ctx emits."""

from __future__ import annotations

import contextlib
from collections.abc import Iterator
from typing import Any

from ownership_ctx import events


class ListSink:
    """Keeps a copy of every event emitted."""

    def __init__(self) -> None:
        self.events: list[dict[str, Any]] = []

    def emit(self, event: Any) -> None:
        self.events.append(dict(event))


@contextlib.contextmanager
def collecting_events() -> Iterator[ListSink]:
    """A `ListSink` as the process-wide sink for a block (the previous one restored after);
    the `event_sink` fixture of tests/conftest.py, for code that cannot take a fixture (a
    hypothesis example, a helper)."""
    sink = ListSink()
    previous = events.set_sink(sink)
    try:
        yield sink
    finally:
        events.set_sink(previous)
