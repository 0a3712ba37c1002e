"""The budgets at run time: a cheap cached check where work enters, reservations around calls.

`Budgets.check` is the hot path (the edge, publishes, workers): a dictionary lookup in a view
of which owners are over, refreshed from the counters at most every ``refresh`` seconds, so it
costs well under a microsecond between refreshes and a staleness of at most ``refresh``.
`Budgets.reserve` is authoritative: atomic in the counter backend, before each provider call.

Standard library only. Nothing here raises into the host except `BudgetExceeded`, where a
place is set to enforce.
"""

from __future__ import annotations

import json
import logging
import threading
import time
import urllib.request
import uuid
from collections.abc import Callable, Mapping, Sequence
from decimal import Decimal
from typing import Any, Final, Literal, Protocol

from .. import events
from ..envelope import Envelope
from ..schema import money
from .counters import BackendUnavailable, Counters, Held, Lease, MemoryCounters, Usage
from .model import (
    Budget,
    BudgetExceeded,
    Refusal,
    from_nanos,
    period_bounds,
    period_label,
    to_nanos,
)

__all__ = ["PLACES", "Budgets", "Enforcement", "Place", "Reservation", "SpendSource"]

logger = logging.getLogger("ownership_ctx.budgets")

Place = Literal["edge", "queue", "metering"]
PLACES: Final = ("edge", "queue", "metering")
Enforcement = Literal["enforce", "observe"]
FailMode = Literal["open", "closed"]

#: Counters outlive their period by this much, so that a late settle still lands.
GRACE: Final = 86400.0
#: How long a refusal for an unreachable backend (fail closed) asks clients to wait.
UNAVAILABLE_RETRY: Final = 5.0
_MAX_WATCHED: Final = 100_000
_UNSEEN: Final = object()
_WHERE: Final = {
    "edge": "at the edge",
    "queue": "on a queue",
    "metering": "before a provider call",
}


class SpendSource(Protocol):
    """Spend already recorded in the event store (to rebuild counters after a restart)."""

    def spend(
        self, match: Mapping[str, str], each: Sequence[str], start: float, end: float
    ) -> Mapping[tuple[str | None, ...], Decimal]:
        """Cost of calls in ``[start, end)`` whose envelope fields equal ``match``, grouped by
        the ``each`` fields (one key ``()`` without them)."""
        ...


class Reservation:
    """A call's worst-case cost held against its budgets; `charge` real costs, then `close`."""

    __slots__ = ("_budgets", "amount", "charged", "closed", "held", "lease")

    def __init__(
        self, budgets: Budgets, held: tuple[Held, ...], amount: int, lease: Lease | None = None
    ) -> None:
        self._budgets = budgets
        self.held = held
        self.amount = amount  # nano-dollars reserved (0 when observing or failing open)
        self.lease = lease
        self.charged = 0
        self.closed = False

    def charge(self, cost: Decimal | None) -> None:
        """Add the real cost of one attempt (``None``: unknown, counted as zero)."""
        if cost is not None and cost > 0:
            self.charged += to_nanos(cost)

    def close(self) -> None:
        """Release the reservation and record what was charged. Idempotent."""
        if self.closed:
            return
        self.closed = True
        self._budgets._settle(self.held, self.amount, self.charged, self.lease)


class _Period:
    __slots__ = ("end", "expires_at", "label", "start")

    def __init__(self, budget: Budget, now: float) -> None:
        self.start, self.end = period_bounds(budget.period, now)
        self.label = period_label(budget.period, self.start)
        self.expires_at = self.end + GRACE


class Budgets:
    """Budgets, their counters and where they are enforced.

    ``counters``: `MemoryCounters` (default, one process) or `RedisCounters` (shared).
    ``edge`` / ``queue`` / ``metering``: ``"enforce"`` refuses work of an owner over a hard
    limit there; ``"observe"`` only counts and logs. ``fail``: what happens while the counter
    backend cannot be reached, ``"open"`` (serve; the failure is counted and logged once) or
    ``"closed"`` (refuse work that a budget covers). ``refresh``: the longest time the cached
    view used by `check` may be stale. ``source``: the event store, to rebuild counters when
    the backend lost them (see `rebuild`). ``reservation_ttl``: how long a call may hold its
    reservation; after that it is presumed dead (its process crashed) and released.
    """

    def __init__(
        self,
        budgets: Sequence[Budget],
        counters: Counters | None = None,
        *,
        edge: Enforcement = "enforce",
        queue: Enforcement = "enforce",
        metering: Enforcement = "enforce",
        fail: FailMode = "open",
        refresh: float = 1.0,
        source: SpendSource | None = None,
        default_max_tokens: int = 4096,
        reservation_ttl: float = 900.0,
        clock: Callable[[], float] = time.time,
        monotonic: Callable[[], float] = time.monotonic,
    ) -> None:
        names = [b.name for b in budgets]
        duplicates = sorted({n for n in names if names.count(n) > 1})
        if duplicates:
            raise ValueError(f"budget names must be unique: {', '.join(duplicates)}")
        for name, value in (("edge", edge), ("queue", queue), ("metering", metering)):
            if value not in ("enforce", "observe"):
                raise ValueError(f"{name} must be 'enforce' or 'observe', not {value!r}")
        if fail not in ("open", "closed"):
            raise ValueError(f"fail must be 'open' or 'closed', not {fail!r}")
        if not refresh > 0:
            raise ValueError("refresh must be > 0 seconds")
        if not reservation_ttl > 0:
            raise ValueError("reservation_ttl must be > 0 seconds")
        self.budgets = tuple(budgets)
        self.counters: Counters = counters if counters is not None else MemoryCounters()
        self.enforcement: dict[str, Enforcement] = {
            "edge": edge,
            "queue": queue,
            "metering": metering,
        }
        self.fail = fail
        self.refresh = refresh
        self.source = source
        self.default_max_tokens = default_max_tokens
        self.reservation_ttl = reservation_ttl
        self._clock = clock
        self._monotonic = monotonic
        self._lock = threading.Lock()
        self._periods: dict[str, _Period] = {}
        # The cached view: owner key -> refusal (None: not over). Cleared on each refresh.
        self._verdicts: dict[tuple[str | None, ...], Refusal | None] = {}
        self._watched: dict[str, tuple[Budget, str]] = {}  # counter key -> (budget, owner)
        self._over: dict[str, Refusal] = {}  # counter key -> refusal, from the last refresh
        self._next_refresh = 0.0
        self._unavailable = False
        self._logged: set[str] = set()
        self._warned: set[str] = set()  # counters whose soft threshold was handled
        self._epoch: str | None = None
        self._no_budgets = not self.budgets

    # -- the hot path -----------------------------------------------------------------------

    def check(self, envelope: Envelope, place: Place) -> Refusal | None:
        """The refusal for work of ``envelope``'s owner entering at ``place``, or None.

        Reads the cached view (refreshed here at most every ``refresh`` seconds). Observing
        places count and log what they would refuse, and return None.
        """
        if self._monotonic() >= self._next_refresh:
            self._refresh_view()
        key = (
            envelope.owner_team,
            envelope.workflow_id,
            envelope.feature,
            envelope.tenant,
            envelope.attribution,
        )
        refusal = self._verdicts.get(key, _UNSEEN)
        if refusal is _UNSEEN:
            refusal = self._judge(envelope, key)
        if refusal is None:
            return None
        return self._refused(refusal, place)  # type: ignore[arg-type]

    def _refused(self, refusal: Refusal, place: Place) -> Refusal | None:
        enforced = self.enforcement[place] == "enforce"
        events.count(f"budget_{'refused' if enforced else 'observed'}_{place}")
        self._log_once(
            f"{place}:{refusal.budget}",
            logging.WARNING,
            "ownership_ctx: %s work of budget %r %s (%s; logged once per budget and place)",
            "refusing" if enforced else "would refuse (observe only)",
            refusal.budget,
            _WHERE[place],
            refusal.detail(),
        )
        return refusal if enforced else None

    def _judge(self, envelope: Envelope, key: tuple[str | None, ...]) -> Refusal | None:
        refusal: Refusal | None = None
        if envelope.attribution in ("attributed", "stamped"):
            now = self._clock()
            matching = self._matching(envelope, now)
            unseen = [m for m in matching if m[2] not in self._watched]
            if unseen and not self._unavailable:  # down: no network on the request path
                self._first_sight(unseen)
            for budget, owner, counter_key, _ in matching:
                found = self._over.get(counter_key)
                if found is None and self._unavailable and self.fail == "closed":
                    found = self._unavailable_refusal(budget, owner, now)
                if found is not None and refusal is None:
                    refusal = found
        if len(self._verdicts) >= _MAX_WATCHED:
            self._verdicts.clear()
        self._verdicts[key] = refusal
        return refusal

    def _first_sight(self, unseen: list[tuple[Budget, str, str, _Period]]) -> None:
        """Read counters this process has not watched yet, now: a new owner (or a new
        process) must not wait a refresh to be refused. Once per owner and period."""
        if len(self._watched) + len(unseen) >= _MAX_WATCHED:
            self._watched.clear()
        for budget, owner, key, _ in unseen:
            self._watched[key] = (budget, owner)
        try:
            usages = self.counters.read([key for _, _, key, _ in unseen])
        except BackendUnavailable as error:
            self._backend_failed(error)
            return
        except Exception:
            events.count("budget_errors")
            return
        for (budget, owner, key, period), usage in zip(unseen, usages, strict=True):
            if usage is not None and usage.spent >= to_nanos(budget.limit):
                over = Refusal(budget.name, budget.period, period.end, budget.owner_fields(owner))
                self._over = {**self._over, key: over}

    def _matching(self, envelope: Envelope, now: float) -> list[tuple[Budget, str, str, _Period]]:
        out = []
        for budget in self.budgets:
            owner = budget.owner_of(envelope)
            if owner is None:
                continue
            period = self._period(budget, now)
            out.append((budget, owner, f"{budget.name}:{period.label}:{owner}", period))
        return out

    def _period(self, budget: Budget, now: float) -> _Period:
        period = self._periods.get(budget.name)
        if period is None or not period.start <= now < period.end:
            period = self._periods[budget.name] = _Period(budget, now)
        return period

    def _unavailable_refusal(self, budget: Budget, owner: str, now: float) -> Refusal:
        return Refusal(
            budget.name,
            budget.period,
            now + UNAVAILABLE_RETRY,
            budget.owner_fields(owner),
            reason="unavailable",
        )

    # -- the cached view --------------------------------------------------------------------

    def refresh_now(self) -> None:
        """Refresh the cached view at once (tests; after changing counters by hand)."""
        self._next_refresh = 0.0
        self._refresh_view()

    def _refresh_view(self) -> None:
        if not self._lock.acquire(blocking=False):
            return  # another thread is refreshing; the current view serves meanwhile
        try:
            if self._monotonic() < self._next_refresh:
                return
            self._next_refresh = self._monotonic() + self.refresh
            if self._no_budgets:
                return
            now = self._clock()
            try:
                self._maybe_rebuild()  # first: it may add counters to watch
                watched = list(self._watched.items())
                current = [(k, b, o) for k, (b, o) in watched if k == self._key(b, o, now)]
                usages = self.counters.read([k for k, _, _ in current])
            except BackendUnavailable as error:
                self._backend_failed(error)
                self._verdicts = {}
                return
            except Exception:  # never into the host: the last view keeps serving
                events.count("budget_errors")
                if "refresh" not in self._logged:
                    self._logged.add("refresh")
                    logger.exception("ownership_ctx: refreshing the budget view failed")
                return
            if self._unavailable:
                self._unavailable = False
                self._logged.discard("backend")  # the next outage is logged again
                logger.warning("ownership_ctx: budget counters are reachable again")
            over: dict[str, Refusal] = {}
            for (key, budget, owner), usage in zip(current, usages, strict=True):
                if usage is None:
                    continue
                period = self._period(budget, now)
                if usage.spent >= to_nanos(budget.limit):
                    over[key] = Refusal(
                        budget.name, budget.period, period.end, budget.owner_fields(owner)
                    )
                if (
                    budget.soft is not None
                    and key not in self._warned
                    and usage.spent >= to_nanos(budget.soft)
                ):
                    self._soft_crossed(budget, owner, key, usage, period)
            self._watched = {k: (b, o) for k, b, o in current}
            self._over = over
            self._verdicts = {}
        finally:
            self._lock.release()

    def _key(self, budget: Budget, owner: str, now: float) -> str:
        return f"{budget.name}:{self._period(budget, now).label}:{owner}"

    def _backend_failed(self, error: BackendUnavailable) -> None:
        self._unavailable = True
        events.count("budget_backend_errors")
        self._log_once(
            "backend",
            logging.ERROR,
            "ownership_ctx: budget counters unavailable (%s); failing %s: %s (logged once per"
            " outage; counted in events.stats['budget_backend_errors'])",
            error,
            self.fail,
            "work is served without budget checks"
            if self.fail == "open"
            else "work that a budget covers is refused",
        )

    def _log_once(self, key: str, level: int, message: str, *args: Any) -> None:
        if key in self._logged:
            return
        self._logged.add(key)
        logger.log(level, message, *args)

    # -- soft thresholds --------------------------------------------------------------------

    def _soft_crossed(
        self, budget: Budget, owner: str, key: str, usage: Usage, period: _Period
    ) -> None:
        try:
            first = self.counters.first("warn:" + key, period.expires_at)
        except BackendUnavailable as error:
            self._backend_failed(error)
            return
        if len(self._warned) >= _MAX_WATCHED:
            self._warned.clear()
        self._warned.add(key)  # here or in another process: asked once per key
        if not first:
            return
        fields = budget.owner_fields(owner)
        event: dict[str, Any] = {
            "kind": "budget_warning",
            "ts": self._clock(),
            "budget": budget.name,
            "period": period.label,
            "spent": money.to_text(from_nanos(usage.spent)),
            "soft": money.to_text(budget.soft),
            "limit": money.to_text(budget.limit),
            **fields,
        }
        events.count("budget_warnings")
        events.emit(event)
        logger.warning(
            "ownership_ctx: budget %r (%s) passed its soft threshold for %s: %s of %s USD"
            " (limit %s)",
            budget.name,
            period.label,
            ", ".join(f"{k}={v}" for k, v in fields.items()) or "everyone",
            event["spent"],
            event["soft"],
            event["limit"],
        )
        if budget.webhook is not None:
            threading.Thread(
                target=self._post, args=(budget.webhook, event), daemon=True, name="oc-webhook"
            ).start()

    def _post(self, url: str, event: Mapping[str, Any]) -> None:
        try:
            request = urllib.request.Request(
                url,
                data=json.dumps(event).encode(),
                headers={"content-type": "application/json"},
                method="POST",
            )
            with urllib.request.urlopen(request, timeout=5):
                pass
        except Exception as error:
            events.count("budget_webhook_errors")
            self._log_once(
                "webhook:" + url, logging.ERROR, "ownership_ctx: budget webhook failed: %s", error
            )

    # -- reservations -----------------------------------------------------------------------

    def reserve(self, envelope: Envelope | None, amount: Decimal) -> Reservation | None:
        """Hold ``amount`` (a call's worst-case cost) against every budget of ``envelope``.

        Raises `BudgetExceeded` when a budget is spent and metering enforces (or, failing
        closed, when the backend cannot be reached). None when no budget applies.
        """
        if envelope is None or self._no_budgets:
            return None
        if envelope.attribution not in ("attributed", "stamped"):
            return None
        now = self._clock()
        matching = self._matching(envelope, now)
        if not matching:
            return None
        held = tuple(Held(k, to_nanos(b.limit), p.expires_at) for b, _, k, p in matching)
        for budget, owner, key, _ in matching:
            self._watched.setdefault(key, (budget, owner))
        nanos = to_nanos(amount) if amount > 0 else 0
        lease = Lease(uuid.uuid4().hex, now + self.reservation_ttl)
        try:
            refused = self.counters.reserve(held, nanos, lease, now)
        except BackendUnavailable as error:
            self._backend_failed(error)
            if self.fail == "closed" and self.enforcement["metering"] == "enforce":
                budget, owner, _, _ = matching[0]
                raise BudgetExceeded(self._unavailable_refusal(budget, owner, now)) from None
            return Reservation(self, held, 0)
        if refused is None:
            return Reservation(self, held, nanos, lease)
        budget, owner, _, period = matching[refused]
        refusal = Refusal(budget.name, budget.period, period.end, budget.owner_fields(owner))
        if self._refused(refusal, "metering") is not None:
            raise BudgetExceeded(refusal)
        return Reservation(self, held, 0)  # observing: the call goes on and its cost counts

    def record(self, envelope: Envelope | None, cost: Decimal | None) -> None:
        """Count spend made without a reservation (the manual metering API)."""
        if envelope is None or cost is None or cost <= 0 or self._no_budgets:
            return
        if envelope.attribution not in ("attributed", "stamped"):
            return
        now = self._clock()
        matching = self._matching(envelope, now)
        if matching:
            held = tuple(Held(k, to_nanos(b.limit), p.expires_at) for b, _, k, p in matching)
            for budget, owner, key, _ in matching:
                self._watched.setdefault(key, (budget, owner))
            self._settle(held, 0, to_nanos(cost))

    def _settle(
        self, held: tuple[Held, ...], reserved: int, actual: int, lease: Lease | None = None
    ) -> None:
        if not held or (reserved == 0 and actual == 0):
            return
        try:
            self.counters.settle(held, reserved, actual, lease)
        except BackendUnavailable as error:
            self._backend_failed(error)

    # -- rebuilding after a restart ---------------------------------------------------------

    def _maybe_rebuild(self) -> None:
        if self.source is None:
            return
        epoch = self.counters.epoch()
        if epoch != self._epoch:
            try:
                self.rebuild()
            except BackendUnavailable:
                raise
            except Exception as error:  # the store (not written yet?): retried next refresh
                events.count("budget_rebuild_errors")
                self._log_once(
                    "rebuild",
                    logging.WARNING,
                    "ownership_ctx: rebuilding budget counters from the event store failed (%s);"
                    " tried again at each refresh (logged once)",
                    error,
                )
                return
            self._epoch = epoch

    def rebuild(self) -> int:
        """Raise every counter of the current periods to the spend the event store holds
        (``source``): after a restart of the process (in-process counters) or of a Redis
        that lost its data. Runs by itself when the backend's epoch changes; returns the
        number of counters written."""
        if self.source is None:
            return 0
        now = self._clock()
        written = 0
        for budget in self.budgets:
            period = self._period(budget, now)
            spend = self.source.spend(budget.match, budget.each, period.start, period.end)
            for values, cost in spend.items():
                if any(v is None for v in values) or cost <= 0:
                    continue
                owner = "|".join(str(v) for v in values)
                key = f"{budget.name}:{period.label}:{owner}"
                self.counters.raise_to(key, to_nanos(cost), period.expires_at)
                self._watched.setdefault(key, (budget, owner))
                written += 1
        return written

    # -- reading ----------------------------------------------------------------------------

    def usage(self, budget: Budget, owner: str = "") -> tuple[Decimal, Decimal]:
        """(spent, reserved) in USD of one owner of ``budget`` in the current period."""
        (found,) = self.counters.read([self._key(budget, owner, self._clock())])
        if found is None:
            return Decimal(0), Decimal(0)
        return from_nanos(found.spent), from_nanos(found.reserved)
