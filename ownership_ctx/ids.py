"""Ids as 32 lowercase hex: random ones for traces, time-ordered ones for events.

``uuid.uuid4().hex`` costs several microseconds per id (one system call each); the random
bits here come from one ``os.urandom`` call per batch, which keeps an event's hand-off to the
sink cheap.
"""

from __future__ import annotations

import os
from time import time_ns as _time_ns
from typing import Final

__all__ = ["new_event_id", "new_id"]

_BATCH: Final = 64
_ZERO: Final = "0" * 32
_minted: list[str] = []
_tails: list[str] = []
_stamp: tuple[int, str] = (0, "")


def new_id() -> str:
    """A fresh id: 16 random bytes as 32 hex, never all zero (a valid W3C trace id)."""
    while True:
        try:
            return _minted.pop()  # atomic: threads never share an id
        except IndexError:
            hexed = os.urandom(16 * _BATCH).hex()
            _minted.extend(
                h for h in (hexed[i : i + 32] for i in range(0, 32 * _BATCH, 32)) if h != _ZERO
            )


def new_event_id() -> str:
    """A fresh event id: the time in milliseconds (12 hex) then 80 random bits (20 hex).

    Ids minted close in time sort close together, so the store's unique index on them grows
    at its end like the time index, instead of taking each insert on a random page (which,
    once the index outgrows the cache, reads a page back per event). 80 random bits per
    millisecond keep collisions out of reach (one in 10^12 at a million ids in the same ms).
    """
    global _stamp
    ms = _time_ns() // 1_000_000
    stamp = _stamp  # (ms, its hex): one tuple, so threads never pair a time with another's hex
    if stamp[0] != ms:
        stamp = _stamp = (ms, f"{ms:012x}")
    while True:
        try:
            return stamp[1] + _tails.pop()  # atomic: threads never share a tail
        except IndexError:
            hexed = os.urandom(10 * _BATCH).hex()
            _tails.extend(hexed[i : i + 20] for i in range(0, 20 * _BATCH, 20))


def _forget_inherited() -> None:
    _minted.clear()
    _tails.clear()


if hasattr(os, "register_at_fork"):
    # A forked child must never hand out the ids its parent holds: it draws its own.
    os.register_at_fork(after_in_child=_forget_inherited)
