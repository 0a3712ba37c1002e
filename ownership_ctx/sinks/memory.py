"""`MemorySink`: keep events in a bounded list (tests, demos, health pages)."""

from __future__ import annotations

import threading
from collections import deque
from collections.abc import Mapping
from typing import Any

__all__ = ["MemorySink"]


class MemorySink:
    """Collects events in memory; the oldest are dropped past ``maxlen`` (counted in
    ``dropped``). Thread-safe. Each event is copied, so later changes by the emitter do not
    show."""

    def __init__(self, maxlen: int | None = 100_000) -> None:
        self._events: deque[dict[str, Any]] = deque(maxlen=maxlen)
        self._lock = threading.Lock()
        self.dropped = 0

    def emit(self, event: Mapping[str, Any]) -> None:
        with self._lock:
            if self._events.maxlen is not None and len(self._events) == self._events.maxlen:
                self.dropped += 1
            self._events.append(dict(event))

    @property
    def events(self) -> list[dict[str, Any]]:
        with self._lock:
            return list(self._events)

    def of_kind(self, kind: str) -> list[dict[str, Any]]:
        return [e for e in self.events if e.get("kind") == kind]

    def clear(self) -> None:
        with self._lock:
            self._events.clear()

    def __len__(self) -> int:
        return len(self._events)
