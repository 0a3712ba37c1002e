"""Where events go: one process-wide sink, and counters of what was degraded.

Events are plain dicts so that any sink (a list in a test, a JSON-lines file, a database
writer) can take them. Emitting never raises into the host application: a failing sink is
counted and logged once, and the event is dropped.
"""

from __future__ import annotations

import logging
import os
import threading
import time
from collections import Counter
from collections.abc import Mapping
from typing import Any, Protocol

from .ids import new_event_id

__all__ = ["Sink", "count", "emit", "flush", "get_sink", "set_sink", "stats"]

logger = logging.getLogger("ownership_ctx")

#: What ownership_ctx degraded instead of failing the host: sink errors, resolver errors,
#: rejected and quarantined units, ... Read it in health checks; it never raises.
stats: Counter[str] = Counter()
_stats_lock = threading.Lock()


def _new_lock_in_child() -> None:
    # A fork while another thread held the lock would leave the child's copy locked forever.
    global _stats_lock
    _stats_lock = threading.Lock()


if hasattr(os, "register_at_fork"):
    os.register_at_fork(after_in_child=_new_lock_in_child)


class Sink(Protocol):
    def emit(self, event: Mapping[str, Any]) -> None: ...


_sink: Sink | None = None
_warned_sink_error = False


def set_sink(sink: Sink | None) -> Sink | None:
    """Send events to ``sink`` (``None``: drop them). Returns the previous sink."""
    global _sink
    previous, _sink = _sink, sink
    return previous


def get_sink() -> Sink | None:
    return _sink


def count(name: str, n: int = 1) -> None:
    with _stats_lock:
        stats[name] += n


def emit(event: dict[str, Any]) -> None:
    """Hand ``event`` to the sink, stamped with a unique ``event_id`` and ``ts`` (epoch
    seconds) when it has none: ids make replays idempotent downstream."""
    global _warned_sink_error
    sink = _sink
    if sink is None:
        return
    if "event_id" not in event:
        event["event_id"] = new_event_id()
    event.setdefault("ts", time.time())
    try:
        sink.emit(event)
    except Exception:
        count("sink_errors")
        if not _warned_sink_error:
            _warned_sink_error = True
            logger.exception("ownership_ctx: event sink failed; events are being dropped")


def flush(timeout: float = 5.0) -> bool:
    """Ask the sink to write what it holds, waiting up to ``timeout`` seconds; for shutdown
    hooks (worker shutdown, ASGI lifespan shutdown) of processes that may not run ``atexit``.
    True when everything was written (or the sink holds nothing). Never raises."""
    flush_sink = getattr(_sink, "flush", None)
    if flush_sink is None:
        return True
    try:
        return bool(flush_sink(timeout))
    except Exception:
        count("sink_errors")
        logger.exception("ownership_ctx: flushing the event sink failed")
        return False
