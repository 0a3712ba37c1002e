"""Who records an attempt when two recorders could: our SDK instrumentation or a library's own
callback (LiteLLM's). One event per attempt either way.

A library adapter opens a `Handoff` in the calling context just before the library sends an
attempt (LiteLLM's pre-call hook runs there); if that attempt then goes through an instrumented
SDK client, the HTTP transport calls `claim`, and the adapter's callback, seeing the handoff
claimed, records nothing: the transport's event, with its exact usage, is the one. Attempts that
no instrumented client sends (LiteLLM's own HTTP code for Anthropic, Bedrock, Gemini, ...) stay
unclaimed and the callback records them.
"""

from __future__ import annotations

from contextvars import ContextVar

__all__ = ["Handoff", "claim", "close", "open_handoff"]


class Handoff:
    __slots__ = ("claimed", "open")

    def __init__(self) -> None:
        self.claimed = False
        self.open = True


_current: ContextVar[Handoff | None] = ContextVar("ownership_ctx.metering.handoff", default=None)


def open_handoff() -> Handoff:
    """Open a handoff for the next attempt sent from this context (replacing any earlier one)."""
    handoff = Handoff()
    _current.set(handoff)
    return handoff


def close(handoff: Handoff) -> None:
    """The attempt was sent: later SDK calls from this context are not part of it."""
    handoff.open = False
    if _current.get() is handoff:
        _current.set(None)


def claim() -> None:
    """Called by the SDK instrumentation for each attempt it records."""
    handoff = _current.get()
    if handoff is not None and handoff.open:
        handoff.claimed = True
