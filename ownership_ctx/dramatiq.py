"""Dramatiq middleware: carry the ownership envelope through every message.

One line on the broker, wherever you build it::

    broker.add_middleware(OwnershipMiddleware(policy=Policy(mode="quarantine")))

On enqueue the current envelope is written into ``message.options["ownership_envelope"]``
(a fresh one marked ``unattributed`` when nothing is bound). An envelope the caller set in
the options is kept when nothing is bound, and otherwise only if it verifies under the policy.
In the worker the envelope is admitted through the policy, bound for the message (actor,
callbacks, retry logging, child messages) and reset when the message is done, failed or
skipped. A message the policy rejects (``enforce``) is skipped and dead-lettered.

Budgets (`ownership_ctx.budgets.install`): an enqueue for an owner over a hard limit raises
`BudgetRefused` (a `BudgetExceeded`) to the caller, and a worker skips and dead-letters such
a message instead of running it.

The middleware moves itself to the front of ``broker.middleware``: before-hooks run in list
order and after-hooks in reverse, so only there does the envelope stay bound while Retries,
Pipelines, Callbacks and GroupCallbacks log and enqueue their follow-up messages.
"""

from __future__ import annotations

import logging
import threading
from collections.abc import Callable
from typing import Any

import dramatiq
from dramatiq.broker import Broker, MessageProxy
from dramatiq.message import Message
from dramatiq.middleware import MiddlewareError, SkipMessage

from . import events
from .budgets import state as budget_state
from .budgets.model import BudgetExceeded
from .codec import QUEUE_HEADER
from .context import current
from .gate import Entry, Gate
from .hashing import Keys
from .policy import Policy

__all__ = ["HOP", "QUEUE_HEADER", "BudgetRefused", "OwnershipMiddleware"]

#: The hop name in hop events and counters.
HOP = "dramatiq"

logger = logging.getLogger("ownership_ctx.dramatiq")

_NO_CARRIER: dict[str, str] = {}


class BudgetRefused(MiddlewareError, BudgetExceeded):
    """An enqueue refused for an owner over a hard limit (Dramatiq lets only a
    ``MiddlewareError`` out of an enqueue hook; catch it as `BudgetExceeded`)."""


class OwnershipMiddleware(dramatiq.Middleware):
    """Write the envelope on enqueue; admit, bind and reset it around each message.

    ``policy`` applies in the worker (default: `Policy()`, i.e. enforce); its rules are globs
    over the *unit*, which is the actor name unless ``unit`` says otherwise (for queue-based
    rules: ``unit=lambda m: f"{m.queue_name}/{m.actor_name}"`` and ``Rule("billing/*")``).
    ``keys`` sign what is enqueued and verify what is received (default: `Keys.from_env`).
    """

    def __init__(
        self,
        *,
        policy: Policy | None = None,
        keys: Keys | None = None,
        unit: Callable[[MessageProxy], str] | None = None,
    ) -> None:
        self.gate = Gate(policy, keys)
        self._unit = unit
        # Per worker thread: the message being processed and its entry. Before- and
        # after-hooks of one message always run on the worker thread that processes it.
        self._local = threading.local()

    # -- placement -------------------------------------------------------------------------

    def _place_first(self, broker: Broker) -> None:
        middleware = broker.middleware
        if middleware and middleware[0] is self:
            return
        if any(m is self for m in middleware):
            # A new list, not an in-place move: the broker may be iterating the old one
            # right now (we are called from its emit loop), and that loop must not skip
            # anyone. Every later emit sees us first (before-hooks) and last (after-hooks).
            broker.middleware = [self, *(m for m in middleware if m is not self)]
            logger.debug("ownership_ctx: OwnershipMiddleware moved to the front of the broker")

    # add_middleware() calls the after_declare_* hooks for what is already declared; a later
    # actor declaration, worker boot or first enqueue catches every other order of setup.
    def after_declare_actor(self, broker: Broker, actor: Any) -> None:
        self._place_first(broker)

    def before_declare_actor(self, broker: Broker, actor: Any) -> None:
        self._place_first(broker)

    def after_declare_queue(self, broker: Broker, queue_name: str) -> None:
        self._place_first(broker)

    def before_worker_boot(self, broker: Broker, worker: Any) -> None:
        self._place_first(broker)

    def after_worker_shutdown(self, broker: Broker, worker: Any) -> None:
        events.flush()  # events of the last messages are written before the process exits

    # -- enqueue ---------------------------------------------------------------------------

    def before_enqueue(self, broker: Broker, message: Message[Any], delay: int | None) -> None:
        budgets = budget_state.active  # ownership_ctx.budgets.install; else None
        if budgets is not None:
            envelope = current()
            refusal = budgets.check(envelope, "queue") if envelope is not None else None
            if refusal is not None:
                raise BudgetRefused(refusal)
        options = message.options
        if getattr(self._local, "written", None) is message:
            # Our header from an enqueue that failed before after_enqueue (a broker error):
            # it is this unit's to rewrite, not an envelope someone else set.
            options.pop(QUEUE_HEADER, None)
        if QUEUE_HEADER in options and (
            current() is None
            or self.gate.keeps_callers(options[QUEUE_HEADER], hop=HOP, unit=message.actor_name)
        ):
            # Already carried: a retry, a delayed message coming due (re-enqueued from the
            # consumer thread with nothing bound), or a publisher that set it on purpose
            # (with an envelope bound, only one that verifies replaces it).
            return
        if broker.middleware[0] is not self:
            self._place_first(broker)
        self.gate.write(options, header=QUEUE_HEADER)
        self._local.written = message

    def after_enqueue(self, broker: Broker, message: Message[Any], delay: int | None) -> None:
        local = self._local
        if getattr(local, "written", None) is message:
            local.written = None
            # Some brokers enqueue the caller's own Message object. Take our header back off
            # it, so that sending that object again from another unit of work carries that
            # unit's envelope, not this one's.
            message.options.pop(QUEUE_HEADER, None)

    # -- process ---------------------------------------------------------------------------

    def before_process_message(self, broker: Broker, message: MessageProxy) -> None:
        local = self._local
        stale: Entry | None = getattr(local, "entry", None)
        if stale is not None:
            # The previous message's after-hook never ran on this thread (an interrupt in
            # another hook): unbind it before it leaks into this message.
            stale.close()
        value = message.options.get(QUEUE_HEADER)
        if value is None or isinstance(value, str):
            carrier = _NO_CARRIER if value is None else {QUEUE_HEADER: value}
        else:
            logger.warning(
                "ownership_ctx: message %s for actor %r has a non-string %s option; "
                "treated as absent",
                message.message_id,
                message.actor_name,
                QUEUE_HEADER,
            )
            carrier = _NO_CARRIER
        unit = message.actor_name if self._unit is None else self._unit(message)
        entry = self.gate.enter(carrier, hop=HOP, unit=unit, header=QUEUE_HEADER, native=message)
        local.entry = entry
        local.message_id = message.message_id
        if entry.rejected:
            logger.warning(
                "ownership_ctx: skipping message %s for actor %r: ownership envelope rejected "
                "(%s); it goes to the dead-letter queue",
                message.message_id,
                message.actor_name,
                "; ".join(entry.reasons()) or "no ownership envelope",
                extra={"ownership_outcome": entry.outcome, "ownership_hop": HOP},
            )
            message.fail()
            raise SkipMessage("ownership envelope rejected")
        budgets = budget_state.active
        refusal = budgets.check(entry.envelope, "queue") if budgets and entry.envelope else None
        if refusal is not None:
            logger.warning(
                "ownership_ctx: skipping message %s for actor %r: over budget (%s); it goes to"
                " the dead-letter queue",
                message.message_id,
                message.actor_name,
                refusal.detail(),
                extra={"ownership_budget": refusal.budget, "ownership_hop": HOP},
            )
            message.fail()
            raise SkipMessage("over budget")

    def after_process_message(
        self,
        broker: Broker,
        message: MessageProxy,
        *,
        result: Any | None = None,
        exception: BaseException | None = None,
    ) -> None:
        self._close(message)

    def after_skip_message(self, broker: Broker, message: MessageProxy) -> None:
        self._close(message)

    def _close(self, message: MessageProxy) -> None:
        local = self._local
        entry: Entry | None = getattr(local, "entry", None)
        # Only our own message's entry: a message skipped by a middleware that ran before us
        # was never entered.
        if entry is not None and local.message_id == message.message_id:
            local.entry = None
            entry.close()
