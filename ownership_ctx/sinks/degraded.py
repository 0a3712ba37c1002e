"""Degraded states of the sinks, logged once each (and counted by the caller in
`ownership_ctx.events.stats`): a pipeline that logged every failed write would flood the log
of the host it is meant to stay out of."""

from __future__ import annotations

import logging
import os
import threading

__all__ = ["logger", "warn_once"]

logger = logging.getLogger("ownership_ctx.sinks")

_warned: set[str] = set()
_warned_lock = threading.Lock()


def warn_once(key: str, message: str, exc: BaseException | None = None) -> None:
    """Log ``message`` the first time ``key`` is degraded in this process."""
    with _warned_lock:
        if key in _warned:
            return
        _warned.add(key)
    logger.warning("ownership_ctx: %s", message, exc_info=exc)


def _new_lock_in_child() -> None:
    # Another thread may have held the lock at the fork; in the child it never releases it.
    global _warned_lock
    _warned_lock = threading.Lock()


os.register_at_fork(after_in_child=_new_lock_in_child)
