"""Where spend is counted: a protocol, and the in-process backend (one process only).

A counter is keyed by budget, owner and period. It holds ``spent`` (settled, real cost) and
``reserved`` (worst-case cost of calls in flight), in integer nano-dollars. The rule that
bounds overshoot lives in `Counters.reserve`: a reservation is granted only while
``spent + reserved`` is *below* the limit of every counter it touches, atomically. Whatever
passes has seen every earlier reservation, so at most the last one granted crosses the limit:
spend past it is at most the largest reservation in flight (when a reservation really is the
worst case of its call). See docs/budgets.md, "The overshoot bound".

Backends raise `BackendUnavailable` for anything they cannot do; the engine then fails open
or closed as configured.
"""

from __future__ import annotations

import threading
import time
import uuid
from collections.abc import Sequence
from typing import NamedTuple, Protocol

__all__ = ["BackendUnavailable", "Counters", "Held", "MemoryCounters", "Usage"]


class BackendUnavailable(Exception):
    """The counter backend could not answer (connection refused, timeout, ...)."""


class Held(NamedTuple):
    """One counter a reservation touches: its key, the limit, and when it may expire."""

    key: str
    limit: int
    expires_at: float  # epoch seconds (period end plus a grace for late settles)


class Usage(NamedTuple):
    spent: int
    reserved: int


class Counters(Protocol):
    def reserve(self, held: Sequence[Held], amount: int) -> int | None:
        """Add ``amount`` to ``reserved`` of every counter, atomically, if each has
        ``spent + reserved < limit``; else change nothing. Returns None when granted, else
        the index in ``held`` of a counter that refused."""
        ...

    def settle(self, held: Sequence[Held], reserved: int, actual: int) -> None:
        """Move a reservation to real spend: ``reserved -= reserved``, ``spent += actual``."""
        ...

    def read(self, keys: Sequence[str]) -> list[Usage | None]:
        """Each counter's usage, or None for one that does not exist (never written, expired,
        or lost with a restarted backend)."""
        ...

    def raise_to(self, key: str, spent: int, expires_at: float) -> None:
        """``spent = max(spent, <spent>)``: rebuild a counter from the event store after the
        backend lost it. Taking the larger never counts twice what both saw."""
        ...

    def epoch(self) -> str:
        """A token that changes when the backend loses its counters (a Redis restarted
        without persistence, a new process): then counters are rebuilt from the store."""
        ...

    def first(self, key: str, expires_at: float) -> bool:
        """True exactly once per key until it expires, across every process sharing the
        backend: one warning per owner and period."""
        ...


class MemoryCounters:
    """Counters in this process, behind a lock: for a single process (tests, a script, one
    worker). Expired counters are dropped lazily."""

    def __init__(self, clock: object = None) -> None:
        self._lock = threading.Lock()
        self._counters: dict[str, list[float]] = {}  # key -> [spent, reserved, expires_at]
        self._flags: dict[str, float] = {}
        self._now = time.time if clock is None else clock
        self._epoch = uuid.uuid4().hex

    def _get(self, key: str, now: float) -> list[float] | None:
        counter = self._counters.get(key)
        if counter is not None and counter[2] <= now:
            del self._counters[key]
            return None
        return counter

    def reserve(self, held: Sequence[Held], amount: int) -> int | None:
        now = self._now()  # type: ignore[operator]
        with self._lock:
            counters = []
            for index, item in enumerate(held):
                counter = self._get(item.key, now)
                if counter is None:
                    counter = [0, 0, item.expires_at]
                if counter[0] + counter[1] >= item.limit:
                    return index
                counters.append((item.key, counter))
            for key, counter in counters:
                counter[1] += amount
                self._counters[key] = counter
        return None

    def settle(self, held: Sequence[Held], reserved: int, actual: int) -> None:
        now = self._now()  # type: ignore[operator]
        with self._lock:
            for item in held:
                counter = self._get(item.key, now)
                if counter is None:
                    counter = self._counters[item.key] = [0, 0, item.expires_at]
                counter[0] += actual
                counter[1] = max(0, counter[1] - reserved)

    def read(self, keys: Sequence[str]) -> list[Usage | None]:
        now = self._now()  # type: ignore[operator]
        with self._lock:
            out: list[Usage | None] = []
            for key in keys:
                counter = self._get(key, now)
                out.append(None if counter is None else Usage(int(counter[0]), int(counter[1])))
            return out

    def raise_to(self, key: str, spent: int, expires_at: float) -> None:
        now = self._now()  # type: ignore[operator]
        with self._lock:
            counter = self._get(key, now)
            if counter is None:
                self._counters[key] = [spent, 0, expires_at]
            else:
                counter[0] = max(counter[0], spent)

    def epoch(self) -> str:
        return self._epoch

    def first(self, key: str, expires_at: float) -> bool:
        now = self._now()  # type: ignore[operator]
        with self._lock:
            if self._flags.get(key, 0.0) > now:
                return False
            self._flags[key] = expires_at
            return True
