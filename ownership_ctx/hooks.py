"""Process-wide hooks into admission, for a tracer (`ownership_ctx.otel` installs them).

Two hooks, both off by default: where a minted trace id comes from first (the active span's),
and a call each time a unit of work is admitted (to annotate that span). The gate reads them
on every admission, so they live on one object (`installed`) that can be imported by name and
still sees every `set_*` call. Standard library only.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import TYPE_CHECKING, Final

from . import events
from .codec import new_trace_id
from .envelope import check_field

if TYPE_CHECKING:
    from .entry import Entry

__all__ = [
    "EnterHook",
    "Hooks",
    "TraceIdSource",
    "installed",
    "mint_trace_id",
    "run_enter_hook",
    "set_enter_hook",
    "set_trace_id_source",
]

TraceIdSource = Callable[[], "str | None"]
EnterHook = Callable[["Entry"], None]


class Hooks:
    """The hooks in force. Set them with `set_trace_id_source` and `set_enter_hook`."""

    __slots__ = ("enter", "trace_id_source")

    def __init__(self) -> None:
        self.trace_id_source: TraceIdSource | None = None
        self.enter: EnterHook | None = None


installed: Final = Hooks()


def set_trace_id_source(source: TraceIdSource | None) -> TraceIdSource | None:
    """Where a minted trace id comes from first: e.g. the active OpenTelemetry span, so that a
    unit of work that arrives with no trace id joins the trace a tracer already started.
    ``source`` returns 32 lowercase hex or ``None``; anything invalid is ignored. Returns the
    previous source.
    """
    previous, installed.trace_id_source = installed.trace_id_source, source
    return previous


def set_enter_hook(hook: EnterHook | None) -> EnterHook | None:
    """Call ``hook(entry)`` each time a unit of work is admitted, after its envelope is bound
    (e.g. to annotate the span a tracer already started for it). Errors in the hook are counted
    and never reach the host. Returns the previous hook.
    """
    previous, installed.enter = installed.enter, hook
    return previous


def run_enter_hook(entry: Entry) -> None:
    """Run the enter hook (if any) on ``entry``; an error in it is counted, never raised."""
    hook = installed.enter
    if hook is None:
        return
    try:
        hook(entry)
    except Exception:
        events.count("enter_hook_errors")


def mint_trace_id() -> str:
    """A new trace id: the trace id source's when it answers a valid one, else a random one."""
    source = installed.trace_id_source
    if source is None:
        return new_trace_id()
    try:
        from_source = source()
    except Exception:
        events.count("trace_id_source_errors")
        from_source = None
    if from_source is not None and check_field("trace_id", from_source) is None:
        return from_source
    return new_trace_id()
