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

__all__ = ["BackendUnavailable", "Counters", "Held", "Lease", "MemoryCounters", "Usage"]


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


class Lease(NamedTuple):
    """A reservation's identity and the time after which its process is presumed gone: an
    expired lease is released by the next reservation on the same counter, so a process that
    died between reserve and settle does not hold budget until the period ends."""

    id: str
    until: float  # epoch seconds


class Counters(Protocol):
    def reserve(self, held: Sequence[Held], amount: int, lease: Lease, now: float) -> int | None:
        """Release expired leases; then add ``amount`` to ``reserved`` of every counter, held
        under ``lease``, atomically, if each has ``spent + reserved < limit``; else change
        nothing more. Returns None when granted, else the index in ``held`` of a counter
        that refused."""
        ...

    def settle(self, held: Sequence[Held], reserved: int, actual: int, lease: Lease | None) -> None:
        """Move a reservation to real spend: ``reserved -= reserved`` (only while ``lease``
        is still held: an expired one was released already), ``spent += actual``."""
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


class _Counter:
    __slots__ = ("expires_at", "leases", "reserved", "spent")

    def __init__(self, expires_at: float) -> None:
        self.spent = 0
        self.reserved = 0
        self.expires_at = expires_at
        self.leases: dict[str, tuple[int, float]] = {}  # lease id -> (amount, until)

    def release_expired(self, now: float) -> None:
        for lease_id, (amount, until) in list(self.leases.items()):
            if until <= now:
                del self.leases[lease_id]
                self.reserved = max(0, self.reserved - amount)


class MemoryCounters:
    """Counters in this process, behind a lock: for a single process (tests, a script, one
    worker). Expired counters are dropped lazily."""

    def __init__(self, clock: object = None) -> None:
        self._lock = threading.Lock()
        self._counters: dict[str, _Counter] = {}
        self._flags: dict[str, float] = {}
        self._now = time.time if clock is None else clock
        self._epoch = uuid.uuid4().hex

    def _get(self, key: str, now: float) -> _Counter | None:
        counter = self._counters.get(key)
        if counter is not None and counter.expires_at <= now:
            del self._counters[key]
            return None
        return counter

    def reserve(self, held: Sequence[Held], amount: int, lease: Lease, now: float) -> int | None:
        with self._lock:
            counters = []
            for index, item in enumerate(held):
                counter = self._get(item.key, now)
                if counter is None:
                    counter = _Counter(item.expires_at)
                counter.release_expired(now)
                if counter.spent + counter.reserved >= item.limit:
                    return index
                counters.append((item.key, counter))
            for key, counter in counters:
                if amount:
                    counter.reserved += amount
                    counter.leases[lease.id] = (amount, lease.until)
                self._counters[key] = counter
        return None

    def settle(self, held: Sequence[Held], reserved: int, actual: int, lease: Lease | None) -> None:
        now = self._now()  # type: ignore[operator]
        with self._lock:
            for item in held:
                counter = self._get(item.key, now)
                if counter is None:
                    counter = self._counters[item.key] = _Counter(item.expires_at)
                counter.spent += actual
                if lease is None or counter.leases.pop(lease.id, None) is not None:
                    counter.reserved = max(0, counter.reserved - reserved)

    def read(self, keys: Sequence[str]) -> list[Usage | None]:
        now = self._now()  # type: ignore[operator]
        with self._lock:
            out: list[Usage | None] = []
            for key in keys:
                counter = self._get(key, now)
                if counter is not None:
                    counter.release_expired(now)
                out.append(None if counter is None else Usage(counter.spent, counter.reserved))
            return out

    def raise_to(self, key: str, spent: int, expires_at: float) -> None:
        now = self._now()  # type: ignore[operator]
        with self._lock:
            counter = self._get(key, now)
            if counter is None:
                counter = self._counters[key] = _Counter(expires_at)
            counter.spent = max(counter.spent, spent)

    def epoch(self) -> str:
        return self._epoch

    def first(self, key: str, expires_at: float) -> bool:
        now = self._now()  # type: ignore[operator]
        with self._lock:
            if self._flags.get(key, 0.0) > now:
                return False
            self._flags[key] = expires_at
            return True
