"""Money: the one place that turns values into `Decimal` dollars and back.

Events carry costs as decimal *strings* (``"0.0012345"``: never floats, never exponent
notation). The stores keep that exact text and, for SQLite, integer nano-dollars (1e-9 USD),
which sum exactly where SQLite has no decimal type. Everything that reads or writes money
goes through these functions:

- `to_decimal`: anything an event may hold -> a finite `Decimal`, or None;
- `to_text`: a `Decimal` -> the event's exact string form;
- `nano_parts`: a cost -> (exact text, integer nano-dollars), what the stores write;
- `from_nanos` / `from_sum`: what a database summed -> `Decimal` dollars.
"""

from __future__ import annotations

import math
from decimal import ROUND_HALF_EVEN, Decimal, InvalidOperation
from typing import Final

__all__ = ["NANOS_PER_USD", "from_nanos", "from_sum", "nano_parts", "to_decimal", "to_text"]

NANOS_PER_USD: Final = 10**9
_BILLION: Final = Decimal(NANOS_PER_USD)
_NANO: Final = Decimal(1).scaleb(-9)
_INT64: Final = 1 << 63


def to_decimal(value: object) -> Decimal | None:
    """A finite `Decimal` from a cost as an event may hold it (``"0.25"``, ``Decimal``,
    an int, a float); None for None, booleans, garbage, NaN and infinities."""
    if value is None or isinstance(value, bool):
        return None
    if isinstance(value, Decimal):
        return value if value.is_finite() else None
    try:
        number = Decimal(str(value))
    except (InvalidOperation, ValueError):
        return None
    return number if number.is_finite() else None


def to_text(value: Decimal | None) -> str | None:
    """The event form of an amount: exact, plain decimal text (never exponent notation)."""
    return None if value is None else format(value, "f")


def nano_parts(value: object) -> tuple[str | None, int | None]:
    """A cost as (exact decimal text, integer nano-dollars rounded half-even); (None, None)
    when it is not a finite decimal (absent, garbage, NaN, a boolean) or beyond what 64 bits
    of nano-dollars hold (about $9.2e9)."""
    if value is None:
        return None, None
    if type(value) is str:
        # Fast path for what metering writes: plain "123.456" with at most 9 decimals.
        whole, _, frac = value.partition(".")
        digits = whole[1:] if whole[:1] == "-" else whole
        if digits.isdigit() and len(frac) <= 9 and (not frac or frac.isdigit()):
            nanos = int(whole + frac.ljust(9, "0"))
            if -_INT64 < nanos < _INT64:
                return value, nanos
            return None, None
    if isinstance(value, bool):
        return None, None
    try:
        number = Decimal(value) if isinstance(value, (str, int, Decimal)) else None
        if number is None and isinstance(value, float) and math.isfinite(value):
            number = Decimal(repr(value))
    except (InvalidOperation, ValueError):
        return None, None
    if number is None or not number.is_finite() or number.adjusted() > 9:
        return None, None  # beyond $10^10 (what int64 nano-dollars hold) is not a cost
    nanos = int(number.quantize(_NANO, rounding=ROUND_HALF_EVEN).scaleb(9))
    if not -_INT64 < nanos < _INT64:
        return None, None
    return format(number, "f"), nanos


def from_nanos(value: object) -> Decimal:
    """Integer nano-dollars (a SQLite sum; None -> 0) as exact dollars."""
    if value is None:
        return Decimal(0)
    return Decimal(int(value)) / _BILLION  # type: ignore[call-overload]  # exact below 28 digits


def from_sum(value: object) -> Decimal:
    """An exact database sum (PostgreSQL NUMERIC; None -> 0) as dollars."""
    if value is None:
        return Decimal(0)
    return value if isinstance(value, Decimal) else Decimal(str(value))
