"""Random 128-bit ids as 32 lowercase hex: trace ids and event ids.

``uuid.uuid4().hex`` costs several microseconds per id (one system call each); these come
from one ``os.urandom`` call per batch, which keeps an event's hand-off to the sink cheap.
"""

from __future__ import annotations

import os
from typing import Final

__all__ = ["new_id"]

_BATCH: Final = 64
_ZERO: Final = "0" * 32
_minted: list[str] = []


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


if hasattr(os, "register_at_fork"):
    # A forked child must never hand out the ids its parent holds: it draws its own.
    os.register_at_fork(after_in_child=_minted.clear)
