"""Budgets around provider calls: reserve the worst case before, settle to the real cost after.

The worst case of a call is priced from the same price data as its event (`metering.pricer`):
every byte of the request body counted as an input token (a token is at least one byte of
text, so this is an upper bound for text prompts) plus ``max_tokens`` (or
``max_completion_tokens`` / ``max_output_tokens``; `Budgets.default_max_tokens` when the call
sets none) at the model's output price. A model the price table does not know reserves
nothing, but a spent budget still refuses it.
"""

from __future__ import annotations

import json
import re
import time
from collections.abc import Mapping
from decimal import Decimal
from typing import Any, Final

from ..envelope import Envelope
from ..metering.recorder import CallScope, failed, pricer
from ..metering.usage import Usage
from ..schema import money
from .engine import Budgets, Reservation
from .model import BudgetExceeded

__all__ = ["MeteringHook", "gemini_body", "worst_case"]

_MAX_KEYS: Final = ("max_tokens", "max_completion_tokens", "max_output_tokens")
_GEMINI_MODEL: Final = re.compile(r"/(?:models|tunedModels)/([^/:?]+):")


def worst_case(
    provider: str, body: Mapping[str, Any], *, default_max_tokens: int, ts: float | None = None
) -> Decimal | None:
    """The most a call with request ``body`` can cost (None: its model has no price)."""
    model = body.get("model")
    if not isinstance(model, str):
        return None
    output = next(
        (v for k in _MAX_KEYS if isinstance(v := body.get(k), int) and v > 0), default_max_tokens
    )
    prompt = len(json.dumps(body, default=str))  # ASCII-escaped: at least the UTF-8 bytes
    usage = Usage(input_tokens=prompt, output_tokens=output)
    result = pricer().price(provider, model, usage, time.time() if ts is None else ts)
    return result.cost


def gemini_body(request: object) -> dict[str, Any] | None:
    """What `worst_case` needs from a google-genai ``HttpRequest``: the model (from its URL),
    ``generationConfig.maxOutputTokens`` and the request body."""
    url, data = getattr(request, "url", None), getattr(request, "data", None)
    found = _GEMINI_MODEL.search(url) if isinstance(url, str) else None
    if found is None or not isinstance(data, Mapping):
        return None
    config = data.get("generationConfig") or data.get("generation_config") or {}
    limit = config.get("maxOutputTokens") if isinstance(config, Mapping) else None
    return {"model": found.group(1), "max_output_tokens": limit, "contents": data}


class MeteringHook:
    """What `ownership_ctx.metering` calls when budgets are installed."""

    __slots__ = ("budgets",)

    def __init__(self, budgets: Budgets) -> None:
        self.budgets = budgets

    def reserve(self, scope: CallScope, provider: str, body: object) -> None:
        """Before an SDK call is sent: raises `BudgetExceeded` when its owner is spent, and
        nothing else (a failure to estimate reserves nothing and is counted)."""
        amount = None
        try:
            if not isinstance(body, Mapping):
                body = gemini_body(body)
            if body is not None:
                amount = worst_case(
                    provider, body, default_max_tokens=self.budgets.default_max_tokens
                )
        except Exception:
            failed("estimating a call's worst case")
        try:
            scope.budget = self.budgets.reserve(scope.envelope, amount or Decimal(0))
        except BudgetExceeded:
            raise
        except Exception:
            failed("reserving a budget")

    def finished(
        self, scope: CallScope | None, envelope: Envelope | None, event: Mapping[str, Any]
    ) -> None:
        """After each attempt's event: charge its cost; a final attempt closes the call."""
        cost = money.to_decimal(event.get("cost"))
        reservation: Reservation | None = scope.budget if scope is not None else None
        if reservation is None:
            self.budgets.record(envelope, cost)
            return
        reservation.charge(cost)
        if event.get("status") != "error":  # ok or cancelled: the SDK makes no more attempts
            reservation.close()

    def failed(self, scope: CallScope) -> None:
        """The SDK call raised: no more attempts; release what is left."""
        reservation: Reservation | None = scope.budget
        if reservation is not None:
            reservation.close()
