"""Turn attempts into provider_call events, and the manual API for what is not instrumented.

A *call* is one SDK call (``client.chat.completions.create(...)``); an *attempt* is one HTTP
exchange of it. SDKs retry inside the call, so a call has one or more attempts, each its own
event, all sharing ``call_id``. Instrumented clients open a `CallScope` around the SDK's request
method; the transport takes an attempt number from it. The envelope is captured when the scope
opens (where the call was made), so a stream that is consumed later, elsewhere, is still
charged to the right owner.

Nothing here raises into the host: failures are counted in `ownership_ctx.events.stats`
(``metering_errors``) and logged once.
"""

from __future__ import annotations

import contextlib
import dataclasses
import logging
import os
import time
from collections.abc import Iterator, Mapping
from contextvars import ContextVar
from decimal import Decimal
from typing import Any, Protocol

from .. import events
from ..context import current
from ..envelope import Envelope
from ..ids import new_event_id
from ..schema import money
from .billing import NONE as NO_BILLING
from .billing import Billing
from .normalize import APIS, Parsed
from .pricing import PriceOverride, Pricer, PriceResult, parse_overrides, unpriced_reason
from .usage import Usage, usage_from_mapping

__all__ = [
    "Attempt",
    "CallScope",
    "configure",
    "fallback",
    "open_scope",
    "record_cache_hit",
    "record_call",
    "set_budget_hook",
]

logger = logging.getLogger("ownership_ctx.metering")

_pricer = Pricer()
_scope: ContextVar[CallScope | None] = ContextVar("ownership_ctx.metering.scope", default=None)
_fallback: ContextVar[tuple[str, str | None] | None] = ContextVar(
    "ownership_ctx.metering.fallback", default=None
)
_warned = False


def new_call_id() -> str:
    """A random (version 4) UUID string, ~3x cheaper than ``str(uuid.uuid4())``."""
    h = os.urandom(16).hex()
    return f"{h[:8]}-{h[8:12]}-4{h[13:16]}-{'89ab'[int(h[16], 16) & 3]}{h[17:20]}-{h[20:]}"


def configure(
    *, price_overrides: Mapping[str, Mapping[str, Any]] | list[PriceOverride] | None = None
) -> None:
    """Set operator prices (see `PriceOverride` / `parse_overrides`). Replaces earlier ones."""
    global _pricer
    if isinstance(price_overrides, Mapping):
        overrides = parse_overrides(price_overrides)
    else:
        overrides = list(price_overrides or ())
    _pricer = Pricer(overrides)


def pricer() -> Pricer:
    return _pricer


def failed(what: str) -> None:
    """Count (and log once) a metering failure; the host carries on."""
    global _warned
    events.count("metering_errors")
    if not _warned:
        _warned = True
        logger.exception("ownership_ctx: metering failed (%s); the call was not affected", what)


@dataclasses.dataclass(slots=True)
class CallScope:
    """One logical call: its id, owner and what the caller asked for."""

    call_id: str
    envelope: Envelope | None
    request_model: str | None = None
    fallback_of: str | None = None
    fallback_of_call_id: str | None = None
    budget: Any = None  # the call's budget reservation, when budgets are installed
    #: The request body (JSON bytes): read only to estimate the prompt of a cancelled
    #: stream (`estimate`).
    request_body: Any = None
    attempts: int = 0

    def next_attempt(self) -> int:
        self.attempts += 1
        return self.attempts


def open_scope(request_model: str | None = None) -> CallScope:
    mark = _fallback.get()
    return CallScope(
        call_id=new_call_id(),
        envelope=current(),
        request_model=request_model,
        fallback_of=mark[0] if mark else None,
        fallback_of_call_id=mark[1] if mark else None,
    )


@contextlib.contextmanager
def scoped(scope: CallScope) -> Iterator[CallScope]:
    token = _scope.set(scope)
    try:
        yield scope
    finally:
        _scope.reset(token)


def current_scope() -> CallScope | None:
    return _scope.get()


@contextlib.contextmanager
def fallback(of: str, *, call_id: str | None = None) -> Iterator[None]:
    """Mark every call made inside the block as a fallback of model ``of`` (and its call id).

    with metering.fallback(of="gpt-4o", call_id=failed_event["call_id"]):
        client.messages.create(model="claude-haiku-4-5", ...)
    """
    token = _fallback.set((of, call_id))
    try:
        yield
    finally:
        _fallback.reset(token)


# -- budgets (ownership_ctx.budgets installs this hook; None: budgets off) -----------------


class BudgetHook(Protocol):
    def reserve(self, scope: CallScope, provider: str, body: object) -> None: ...

    def finished(
        self, scope: CallScope | None, envelope: Envelope | None, event: Mapping[str, Any]
    ) -> None: ...

    def failed(self, scope: CallScope) -> None: ...


budget_hook: BudgetHook | None = None


def set_budget_hook(hook: BudgetHook | None) -> BudgetHook | None:
    """Called by `ownership_ctx.budgets.install`. Returns the previous hook."""
    global budget_hook
    previous, budget_hook = budget_hook, hook
    return previous


def _budget_finished(scope: CallScope | None, envelope: Envelope | None, event: Any) -> None:
    try:
        budget_hook.finished(scope, envelope, event)  # type: ignore[union-attr]
    except Exception:
        failed("settling a budget")


class Attempt:
    """One HTTP attempt of a call, finished exactly once into an event."""

    __slots__ = (
        "api",
        "billing",
        "done",
        "number",
        "provider",
        "recorded_by",
        "scope",
        "started",
        "streaming",
        "t0",
    )

    def __init__(
        self, scope: CallScope, number: int, provider: str, api: str, recorded_by: str
    ) -> None:
        self.scope = scope
        self.number = number
        self.provider = provider
        self.api = api
        self.recorded_by = recorded_by
        self.streaming = False
        self.started = time.time()
        self.t0 = time.perf_counter()
        self.done = False
        self.billing: Billing = NO_BILLING  # set by the transport / botocore hooks

    def finish(
        self,
        status: str,
        parsed: Parsed | None,
        *,
        http_status: int | None = None,
        error_type: str | None = None,
        provider_request_id: str | None = None,
        request_model: str | None = None,
    ) -> None:
        if self.done:
            return
        self.done = True
        try:
            latency_ms = (time.perf_counter() - self.t0) * 1000.0
            scope = self.scope
            parsed = parsed if parsed is not None else Parsed()
            if status == "ok" and parsed.error_type is not None:
                status = "error"  # an error event inside a 200 stream
            if self.api == "generate_content" and parsed.response_id is not None:
                # Gemini's usage exports know its responseId, not any HTTP header.
                provider_request_id = parsed.response_id
            events.emit(
                event := build_event(
                    envelope=scope.envelope,
                    call_id=scope.call_id,
                    attempt=self.number,
                    provider=self.provider,
                    api=self.api,
                    request_model=request_model or scope.request_model,
                    parsed=parsed,
                    status=status,
                    http_status=http_status,
                    error_type=error_type or parsed.error_type,
                    ts=self.started,
                    latency_ms=latency_ms,
                    streaming=self.streaming,
                    provider_request_id=provider_request_id,
                    fallback_of=scope.fallback_of,
                    fallback_of_call_id=scope.fallback_of_call_id,
                    recorded_by=self.recorded_by,
                    billing=self.billing,
                )
            )
            if budget_hook is not None:
                _budget_finished(scope, scope.envelope, event)
        except Exception:
            failed("finishing an attempt")


def build_event(
    *,
    envelope: Envelope | None,
    call_id: str,
    attempt: int,
    provider: str,
    api: str,
    request_model: str | None,
    parsed: Parsed,
    status: str,
    http_status: int | None,
    error_type: str | None,
    ts: float,
    latency_ms: float | None,
    streaming: bool,
    provider_request_id: str | None,
    fallback_of: str | None,
    fallback_of_call_id: str | None,
    recorded_by: str,
    provider_cost: Decimal | None = None,
    app_cache_hit: bool = False,
    billing: Billing = NO_BILLING,
) -> dict[str, Any]:
    """The provider_call event (see `schema.FIELDS`); prices the usage on the way."""
    problems = parsed.problems
    usage = parsed.usage
    served = parsed.model or request_model
    if parsed.model is None and request_model is not None and usage is not None:
        problems.append("priced_by_request_model")
    price: PriceResult
    if provider_cost is not None and not app_cache_hit:
        price = PriceResult(provider_cost, "provider")
    elif usage is None:
        price = PriceResult(None, "unpriced")
    else:
        price = _pricer.price(provider, served, usage, ts, parsed.tier, parsed.speed)
        if price.problem is not None:
            problems.append(price.problem)
    cost, avoided = price.cost, None
    if app_cache_hit:
        cost, avoided = Decimal(0), price.cost
    owner = envelope.as_dict() if envelope is not None else _UNATTRIBUTED
    u = usage if usage is not None else _NO_USAGE
    known = usage is not None
    return {
        **owner,
        "kind": "provider_call",
        "event_id": new_event_id(),
        "ts": ts,
        "call_id": call_id,
        "attempt": attempt,
        "status": status,
        "http_status": http_status,
        "error.type": error_type,
        "gen_ai.provider.name": provider,
        "gen_ai.operation.name": APIS.get(api, "chat"),
        "api": api,
        "gen_ai.request.model": request_model,
        "gen_ai.response.model": parsed.model,
        "gen_ai.response.id": parsed.response_id,
        "provider_request_id": provider_request_id,
        "billing_scope": billing.scope,
        "billing_region": billing.region,
        "api_key_fingerprint": billing.key_fingerprint,
        "service_tier": parsed.tier,
        "streaming": streaming,
        "latency_ms": None if latency_ms is None else round(latency_ms, 3),
        "gen_ai.usage.input_tokens": u.input_tokens if known else None,
        "gen_ai.usage.output_tokens": u.output_tokens if known else None,
        "gen_ai.usage.cache_read.input_tokens": u.cache_read_tokens if known else None,
        "gen_ai.usage.cache_creation.input_tokens": u.cache_write_tokens if known else None,
        "cache_write_5m_tokens": u.cache_write_5m_tokens,
        "cache_write_1h_tokens": u.cache_write_1h_tokens,
        "gen_ai.usage.reasoning.output_tokens": u.reasoning_tokens,
        "input_audio_tokens": u.input_audio_tokens,
        "output_audio_tokens": u.output_audio_tokens,
        "input_image_tokens": u.input_image_tokens,
        "output_image_tokens": u.output_image_tokens,
        "usage_status": parsed.usage_status,
        "cost": money.to_text(cost),
        "currency": "USD",
        "cost_source": price.source,
        "unpriced_reason": None
        if cost is not None
        else unpriced_reason(price, usage_known=known, status=status),
        "price_model_id": price.model_id,
        "cost_avoided": money.to_text(avoided),
        "app_cache_hit": app_cache_hit,
        "fallback_of": fallback_of,
        "fallback_of_call_id": fallback_of_call_id,
        "recorded_by": recorded_by,
        "problems": problems,
    }


_NO_USAGE = Usage(0, 0, 0, 0)
_UNATTRIBUTED: dict[str, Any] = {"attribution": "unattributed"}


def _manual(
    *,
    provider: str,
    model: str,
    usage: Mapping[str, Any] | Usage | None,
    response_model: str | None,
    api: str,
    service_tier: str | None,
    status: str,
    latency_ms: float | None,
    streaming: bool,
    fallback_of: str | None,
    fallback_of_call_id: str | None,
    cost: Decimal | None,
    call_id: str | None,
    attempt: int,
    ts: float | None,
    provider_request_id: str | None,
    response_id: str | None,
    error_type: str | None,
    app_cache_hit: bool,
) -> dict[str, Any]:
    parsed = Parsed(model=response_model, tier=service_tier, response_id=response_id)
    if isinstance(usage, Usage):
        parsed.usage = usage if usage.check(parsed.problems) else None
        parsed.usage_status = "reported" if parsed.usage is not None else "invalid"
    elif usage is not None:
        parsed.usage = usage_from_mapping(usage, parsed.problems)
        parsed.usage_status = "reported" if parsed.usage is not None else "invalid"
    if cost is not None and (not isinstance(cost, Decimal) or not cost.is_finite() or cost < 0):
        parsed.problems.append("cost_invalid")
        cost = None
    mark = _fallback.get()
    scope = _scope.get()
    if fallback_of is None and mark is not None:
        fallback_of, fallback_of_call_id = mark
    envelope = current()
    event = build_event(
        envelope=envelope,
        call_id=call_id or (scope.call_id if scope is not None else new_call_id()),
        attempt=attempt,
        provider=provider,
        api=api,
        request_model=model,
        parsed=parsed,
        status=status,
        http_status=None,
        error_type=error_type,
        ts=time.time() if ts is None else ts,
        latency_ms=latency_ms,
        streaming=streaming,
        provider_request_id=provider_request_id,
        fallback_of=fallback_of,
        fallback_of_call_id=fallback_of_call_id,
        recorded_by="manual",
        provider_cost=cost,
        app_cache_hit=app_cache_hit,
    )
    events.emit(event)
    if budget_hook is not None and not app_cache_hit:
        _budget_finished(None, envelope, event)
    return dict(event)  # a copy: the sink's writer thread may still be encoding the original


def record_call(
    *,
    provider: str,
    model: str,
    usage: Mapping[str, Any] | Usage | None,
    response_model: str | None = None,
    api: str = "manual",
    service_tier: str | None = None,
    status: str = "ok",
    latency_ms: float | None = None,
    streaming: bool = False,
    fallback_of: str | None = None,
    fallback_of_call_id: str | None = None,
    cost: Decimal | None = None,
    call_id: str | None = None,
    attempt: int = 1,
    ts: float | None = None,
    provider_request_id: str | None = None,
    response_id: str | None = None,
    error_type: str | None = None,
) -> dict[str, Any]:
    """Record a provider call made without an instrumented client; returns the event.

    ``usage`` uses our field names (`Usage`): ``input_tokens`` INCLUDING cache reads and
    writes, ``output_tokens``, ``cache_read_tokens``, ``cache_write_tokens``, ... ``None``
    when unknown (recorded unpriced, never as zero). ``cost`` is a cost the provider reported
    (``cost_source="provider"``); without it the call is priced from the price table by
    ``response_model or model`` at ``ts`` (default: now). Never raises; returns ``{}`` if the
    event could not be built.
    """
    try:
        return _manual(
            provider=provider,
            model=model,
            usage=usage,
            response_model=response_model,
            api=api,
            service_tier=service_tier,
            status=status,
            latency_ms=latency_ms,
            streaming=streaming,
            fallback_of=fallback_of,
            fallback_of_call_id=fallback_of_call_id,
            cost=cost,
            call_id=call_id,
            attempt=attempt,
            ts=ts,
            provider_request_id=provider_request_id,
            response_id=response_id,
            error_type=error_type,
            app_cache_hit=False,
        )
    except Exception:
        failed("record_call")
        return {}


def record_cache_hit(
    *,
    provider: str,
    model: str,
    usage: Mapping[str, Any] | Usage | None,
    service_tier: str | None = None,
    latency_ms: float | None = None,
    ts: float | None = None,
) -> dict[str, Any]:
    """Record that the application answered from its own cache instead of calling ``model``.

    The event costs ``"0"`` and carries ``cost_avoided``: what ``usage`` would have cost
    (``cost_source`` says where that price came from). Never raises.
    """
    try:
        return _manual(
            provider=provider,
            model=model,
            usage=usage,
            response_model=None,
            api="manual",
            service_tier=service_tier,
            status="ok",
            latency_ms=latency_ms,
            streaming=False,
            fallback_of=None,
            fallback_of_call_id=None,
            cost=None,
            call_id=None,
            attempt=1,
            ts=ts,
            provider_request_id=None,
            response_id=None,
            error_type=None,
            app_cache_hit=True,
        )
    except Exception:
        failed("record_cache_hit")
        return {}
