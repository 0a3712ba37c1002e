"""Where the current envelope lives inside a hop: one `ContextVar`.

Every bind has a reset token and is undone when the unit of work ends, so an envelope can
neither outlive its unit (leak) nor be replaced by another unit's (cross-talk). asyncio tasks
copy the context when they are created, so tasks spawned inside a unit see its envelope; thread
pools do not, which is what `propagate` and `ContextThreadPoolExecutor` are for.
"""

from __future__ import annotations

import contextvars
import functools
import inspect
from collections.abc import Callable
from concurrent.futures import Future, ThreadPoolExecutor
from contextvars import ContextVar, Token
from types import TracebackType
from typing import Any, ParamSpec, TypeVar

from .envelope import Envelope

__all__ = ["ContextThreadPoolExecutor", "bind", "current", "propagate"]

P = ParamSpec("P")
R = TypeVar("R")
F = TypeVar("F", bound=Callable[..., Any])

#: The envelope of the running unit of work. Read it with `current`; only the core binds it
#: (`bind`, and the gate's `Entry`, which keeps the reset token until the unit ends).
envelope_var: ContextVar[Envelope | None] = ContextVar("ownership_ctx.envelope", default=None)


def current() -> Envelope | None:
    """The envelope bound to the running unit of work, or ``None``.

    Also a FastAPI dependency: ``envelope: Envelope | None = Depends(current)``.
    """
    return envelope_var.get()


class bind:  # noqa: N801 - used like a function: `with bind(env):` / `@bind(env)`
    """Bind ``envelope`` (or ``None``, to make sure nothing is bound) for a block of code.

    Usable as a context manager and as a decorator of sync or async functions; nested and
    re-entrant uses restore exactly what was bound before.
    """

    __slots__ = ("_envelope", "_tokens")

    def __init__(self, envelope: Envelope | None) -> None:
        self._envelope = envelope
        self._tokens: list[Token[Envelope | None]] = []

    def __enter__(self) -> Envelope | None:
        self._tokens.append(envelope_var.set(self._envelope))
        return self._envelope

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        envelope_var.reset(self._tokens.pop())

    def __call__(self, fn: F) -> F:
        envelope = self._envelope
        if inspect.iscoroutinefunction(fn):

            @functools.wraps(fn)
            async def async_bound(*args: Any, **kwargs: Any) -> Any:
                token = envelope_var.set(envelope)
                try:
                    return await fn(*args, **kwargs)
                finally:
                    envelope_var.reset(token)

            return async_bound  # type: ignore[return-value]

        @functools.wraps(fn)
        def bound(*args: Any, **kwargs: Any) -> Any:
            token = envelope_var.set(envelope)
            try:
                return fn(*args, **kwargs)
            finally:
                envelope_var.reset(token)

        return bound  # type: ignore[return-value]


def propagate(fn: Callable[P, R]) -> Callable[P, R]:
    """Wrap ``fn`` so that it runs in the context of the caller of `propagate`.

    For ``loop.run_in_executor``, ``threading.Thread(target=...)`` and any other API that runs
    a callable somewhere else without copying the context. The whole context is carried (other
    libraries' context variables too); each call runs in its own copy, so concurrent calls of
    one wrapped function cannot disturb each other.
    """
    context = contextvars.copy_context()

    @functools.wraps(fn)
    def in_context(*args: P.args, **kwargs: P.kwargs) -> R:
        return context.copy().run(fn, *args, **kwargs)

    return in_context


class ContextThreadPoolExecutor(ThreadPoolExecutor):
    """A `ThreadPoolExecutor` whose tasks run in the context of the code that submitted them.

    Use it wherever you would use a plain one, and as the event loop's default executor
    (``loop.set_default_executor(ContextThreadPoolExecutor())``) so that
    ``loop.run_in_executor(None, fn)`` sees the envelope too.
    """

    def submit(self, fn: Callable[..., R], /, *args: Any, **kwargs: Any) -> Future[R]:
        return super().submit(contextvars.copy_context().run, fn, *args, **kwargs)
