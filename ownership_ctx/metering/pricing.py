"""Price a normalized `Usage` with genai-prices, fast.

A genai-prices calculation costs ~100 µs, mostly model matching and price resolution. Both
depend only on (provider, model, service tier, day), so they are done once per such key and
kept as a compiled `_Plan`: a handful of (usage key, price per token, more-specific keys)
rows. Pricing a call is then a few integer subtractions and Decimal multiplications. The plan
applies exactly genai-prices' rule (each token is priced by the most specific price that
covers it: cached input at the cache price, the rest at the input price); a property test
checks it against `genai_prices.calc_price`.

Operators override or add prices (negotiated rates, private models) with `PriceOverride`;
those calls say ``cost_source="override"``. A model the table does not know is *unpriced*:
cost ``None``, never a guessed zero.

genai-prices is imported on first use, not at import time. Without it every call is stored
with cost null and ``unpriced_reason`` "no price library"; `warn_if_no_price_library` (called
when a client is instrumented) says so once, loudly, naming the extra to install.
"""

from __future__ import annotations

import copy
import dataclasses
import logging
import threading
import warnings
from collections.abc import Mapping
from datetime import datetime, timezone
from decimal import Decimal, InvalidOperation
from typing import Any, Final

from .. import events
from .usage import Usage

__all__ = [
    "GENAI_PRICES_PROVIDER",
    "NO_PRICE_LIBRARY",
    "PriceOverride",
    "PriceResult",
    "Pricer",
    "parse_overrides",
    "price_library_installed",
    "unpriced_reason",
    "warn_if_no_price_library",
]

logger = logging.getLogger("ownership_ctx.metering")

#: Our provider names (OpenTelemetry's) -> genai-prices provider ids.
GENAI_PRICES_PROVIDER: Final[dict[str, str]] = {
    "openai": "openai",
    "anthropic": "anthropic",
    "gcp.gemini": "google",
    "gcp.vertex_ai": "google",
    "aws.bedrock": "aws",
    "azure.ai.openai": "azure",
}

# Usage fields -> genai-prices usage keys (the optional ones only when reported).
_OPTIONAL_KEYS: Final = (
    ("cache_write_5m_tokens", "cache_write_5m_tokens"),
    ("cache_write_1h_tokens", "cache_write_1h_tokens"),
    ("reasoning_tokens", "output_reasoning_tokens"),
    ("input_audio_tokens", "input_audio_tokens"),
    ("output_audio_tokens", "output_audio_tokens"),
    ("input_image_tokens", "input_image_tokens"),
    ("output_image_tokens", "output_image_tokens"),
    ("cache_audio_read_tokens", "cache_audio_read_tokens"),
)
_MAX_MODELS: Final = 4096
_DAY: Final = 86400

#: The one line that says why costs are missing, and what to do.
NO_PRICE_LIBRARY: Final = (
    "ownership_ctx: genai-prices is not installed, so every provider call is stored with"
    ' cost null (unpriced_reason "no price library"). Install it: pip install'
    ' "ownership-ctx[prices]"'
)
#: PriceResult.problem -> the event's ``unpriced_reason`` (what reports show).
_REASONS: Final = {
    "price_library_missing": "no price library",
    "price_unknown_model": "unknown model",
    "price_no_model": "no model",
    "price_error": "pricing error",
    "price_usage_inconsistent": "inconsistent usage",
}
_library: bool | None = None
_warned_library = False


def price_library_installed() -> bool:
    """Whether genai-prices can be imported (tried once; it is needed by the first call)."""
    global _library
    if _library is None:
        try:
            import genai_prices  # noqa: F401
        except ImportError:
            _library = False
        else:
            _library = True
    return _library


def warn_if_no_price_library() -> None:
    """Once per process, when genai-prices is missing: a WARNING log line and a Python warning
    naming the extra to install (otherwise the only sign would be null costs)."""
    global _warned_library
    if _warned_library or price_library_installed():
        return
    _warned_library = True
    logger.warning(NO_PRICE_LIBRARY)
    warnings.warn(NO_PRICE_LIBRARY, RuntimeWarning, stacklevel=3)


def unpriced_reason(result: PriceResult | None, *, usage_known: bool, status: str) -> str | None:
    """Why a call has no cost, in words for reports: "no price library", "unknown model",
    "failed attempt", "no usage reported", ...; None when it has one."""
    if result is not None and result.cost is not None:
        return None
    if not usage_known:
        return "failed attempt" if status != "ok" else "no usage reported"
    problem = result.problem if result is not None else None
    return _REASONS.get(problem or "", "unpriced")


@dataclasses.dataclass(frozen=True, slots=True)
class PriceResult:
    cost: Decimal | None
    source: str
    model_id: str | None = None
    problem: str | None = None


@dataclasses.dataclass(frozen=True, slots=True)
class PriceOverride:
    """An operator's price for ``provider``/``model`` (USD per million tokens, price-table keys).

    ``model`` matches the served model name or the price table's model id, case-insensitively;
    ``"*"`` matches every model of the provider. ``prices`` replace the table's prices key by
    key (``input_mtok``, ``output_mtok``, ``cache_read_mtok``, ``cache_write_mtok``,
    ``cache_write_1h_mtok``, ...); ``multiplier`` then scales them all (a negotiated discount).
    ``service_tier`` limits the override to responses that report that tier.
    """

    provider: str
    model: str
    prices: Mapping[str, Decimal] = dataclasses.field(default_factory=dict)
    multiplier: Decimal | None = None
    service_tier: str | None = None


def parse_overrides(config: Mapping[str, Mapping[str, Any]]) -> list[PriceOverride]:
    """Overrides from configuration: ``{"openai/gpt-4o": {"input_mtok": "2.0"}, ...}``.

    Keys are ``provider/model`` with an optional ``@tier``; ``provider`` is ours
    (``openai``, ``anthropic``, ``gcp.gemini``, ``aws.bedrock``). Values are decimal strings or
    numbers (floats go through ``str`` so ``0.1`` stays ``0.1``). Raises ``ValueError`` on bad
    configuration: that is an operator error, reported at startup rather than per call.
    """
    out = []
    for key, spec in config.items():
        target, _, tier = key.partition("@")
        provider, sep, model = target.partition("/")
        if not sep or not provider or not model:
            raise ValueError(f"price override key {key!r} is not 'provider/model[@tier]'")
        prices: dict[str, Decimal] = {}
        multiplier = None
        for name, value in spec.items():
            try:
                amount = Decimal(str(value))
            except InvalidOperation:
                raise ValueError(f"price override {key}.{name} is not a number") from None
            if not amount.is_finite() or amount < 0:
                raise ValueError(f"price override {key}.{name} must be finite and >= 0")
            if name == "multiplier":
                multiplier = amount
            elif name.endswith("_mtok"):
                prices[name] = amount
            else:
                raise ValueError(f"price override {key}.{name}: expected *_mtok or multiplier")
        out.append(PriceOverride(provider, model.lower(), prices, multiplier, tier or None))
    return out


class _Plan:
    """Compiled prices of one model for one (tier, day): rows most-specific first."""

    __slots__ = ("model_id", "rows", "source")

    def __init__(self, rows: tuple[Any, ...], model_id: str, source: str) -> None:
        # row: (usage key, flat price per token or None, tiers ((start, per token), ...)
        #       highest first, indexes of more-specific rows)
        self.rows = rows
        self.model_id = model_id
        self.source = source

    def cost(self, counts: Mapping[str, int]) -> Decimal | None:
        leaves: list[int] = []
        total = Decimal(0)
        total_input = counts.get("input_tokens", 0)
        for key, flat, tiers, more_specific in self.rows:
            leaf = counts.get(key, 0)
            for index in more_specific:
                leaf -= leaves[index]
            if leaf < 0:
                return None
            leaves.append(leaf)
            if not leaf:
                continue
            price = flat
            if tiers:
                for start, tier_price in tiers:
                    if total_input > start:
                        price = tier_price
                        break
            total += price * leaf
        return total


@dataclasses.dataclass(slots=True)
class _Model:
    provider: Any  # genai_prices Provider
    info: Any  # genai_prices ModelInfo, None for a model only overrides know
    own: bool  # the model belongs to the provider (price variants apply)
    time_of_day: bool  # some price depends on the time of day: cache per minute, not per day
    overrides: tuple[PriceOverride, ...]


class Pricer:
    """Prices calls; thread-safe, with bounded caches."""

    def __init__(self, overrides: list[PriceOverride] | None = None) -> None:
        self._overrides = tuple(overrides or ())
        self._lock = threading.Lock()
        self._snapshot: object = None
        self._models: dict[tuple[str, str], _Model | None] = {}
        self._plans: dict[tuple[int, str | None, str | None, int], _Plan | None] = {}

    @property
    def overrides(self) -> tuple[PriceOverride, ...]:
        return self._overrides

    def price(
        self,
        provider: str,
        model: str | None,
        usage: Usage,
        ts: float,
        tier: str | None = None,
        speed: str | None = None,
    ) -> PriceResult:
        if model is None:
            return PriceResult(None, "unpriced", None, "price_no_model")
        if not price_library_installed() and not self._overrides:
            events.count("metering_unpriced")
            return PriceResult(None, "unpriced", None, "price_library_missing")
        try:
            entry = self._model(provider, model)
            if entry is None:
                events.count("metering_unpriced")
                return PriceResult(None, "unpriced", None, "price_unknown_model")
            bucket = int(ts // 60) if entry.time_of_day else int(ts // _DAY)
            key = (id(entry), tier, speed, bucket)
            plan = self._plans.get(key)
            if plan is None:
                plan = self._compile(entry, ts, tier, speed)
                with self._lock:
                    if len(self._plans) >= _MAX_MODELS:
                        self._plans.clear()
                    self._plans[key] = plan
            cost = plan.cost(_counts(usage)) if plan is not None else None
        except ImportError:
            events.count("metering_unpriced")
            return PriceResult(None, "unpriced", None, "price_library_missing")
        except Exception:
            events.count("metering_price_errors")
            logger.debug("ownership_ctx: pricing failed", exc_info=True)
            return PriceResult(None, "unpriced", None, "price_error")
        if plan is None:
            events.count("metering_unpriced")
            return PriceResult(None, "unpriced", None, "price_unknown_model")
        if cost is None:
            return PriceResult(None, "unpriced", plan.model_id, "price_usage_inconsistent")
        return PriceResult(cost, plan.source, plan.model_id)

    # -- cache misses -------------------------------------------------------------------

    def _model(self, provider: str, model: str) -> _Model | None:
        snapshot = _get_snapshot()
        if snapshot is not self._snapshot:
            # Prices were updated (genai_prices.UpdatePrices): start over.
            with self._lock:
                self._snapshot = snapshot
                self._models = {}
                self._plans = {}
        key = (provider, model)
        try:
            return self._models[key]
        except KeyError:
            pass
        entry = self._find(snapshot, provider, model)
        with self._lock:
            if len(self._models) >= _MAX_MODELS:
                self._models.clear()
                self._plans.clear()
            self._models[key] = entry
        return entry

    def _find(self, snapshot: Any, provider: str, model: str) -> _Model | None:
        from genai_prices.types import TimeOfDateConstraint

        lower = model.lower()
        provider_id = GENAI_PRICES_PROVIDER.get(provider, provider)
        try:
            prov, info = snapshot.find_provider_model(lower, None, provider_id, None)
        except LookupError:
            prov = info = None
        names = {lower} | ({info.id.lower()} if info is not None else set())
        overrides = tuple(
            o
            for o in self._overrides
            if o.provider in (provider, "*") and (o.model in names or o.model == "*")
        )
        if info is None and not any(o.prices for o in overrides):
            return None
        constraints = []
        if info is not None:
            if isinstance(info.prices, list):
                constraints = [p.constraint for p in info.prices]
            constraints += [v.constraint for v in info.price_variants or ()]
        return _Model(
            provider=prov,
            info=info,
            own=info is not None and any(info is m for m in prov.models),
            time_of_day=any(isinstance(c, TimeOfDateConstraint) for c in constraints),
            overrides=overrides,
        )

    def _compile(
        self, entry: _Model, ts: float, tier: str | None, speed: str | None
    ) -> _Plan | None:
        from genai_prices.types import ModelPrice

        when = datetime.fromtimestamp(ts, timezone.utc)
        model_price: Any
        if entry.info is not None:
            context = price_context(tier, speed) if entry.own else None
            model_price = entry.info.get_prices(when, context or None)
            model_id = entry.info.id
        else:
            model_price = ModelPrice()
            model_id = None
        source = "price_table"
        chosen = [o for o in entry.overrides if o.service_tier in (None, tier)]
        # Tier-specific overrides win over general ones: apply them last.
        chosen.sort(key=lambda o: (o.service_tier is not None, o.model != "*"))
        if chosen:
            model_price = copy.copy(model_price)
            for override in chosen:
                model_price.__dict__.update(override.prices)
                if override.multiplier is not None:
                    _scale(model_price, override.multiplier)
            source = "override"
            model_id = model_id or chosen[-1].model
        return _compile_rows(model_price, model_id or "", source)


_snapshot_getter: Any = None


def _get_snapshot() -> Any:
    """genai-prices' current data snapshot (imported on first use, then a plain call)."""
    global _snapshot_getter
    if _snapshot_getter is None:
        from genai_prices.data_snapshot import get_snapshot

        _snapshot_getter = get_snapshot
    return _snapshot_getter()


def price_context(tier: str | None, speed: str | None) -> dict[str, str]:
    """The genai-prices price context for the tier (and speed) a response reports."""
    context: dict[str, str] = {}
    if tier == "batch":
        context["processing"] = "batch"
    elif tier is not None:
        context["service_tier"] = tier
    if speed is not None:
        context["speed"] = speed
    return context


def _scale(model_price: Any, factor: Decimal) -> None:
    from genai_prices.types import Tier, TieredPrices

    for key, value in list(model_price.__dict__.items()):
        if isinstance(value, Decimal):
            model_price.__dict__[key] = value * factor
        elif isinstance(value, TieredPrices):
            tiers = [Tier(t.start, t.price * factor) for t in value.tiers]
            model_price.__dict__[key] = TieredPrices(value.base * factor, tiers)


def _compile_rows(model_price: Any, model_id: str, source: str) -> _Plan | None:
    from genai_prices.decompose import is_descendant_or_self
    from genai_prices.types import TieredPrices
    from genai_prices.units import _get_registry

    registry = _get_registry()
    priced = []
    for key, value in model_price.__dict__.items():
        if value is None or key.startswith("_"):
            continue
        try:
            unit = registry.unit_for_price_key(key)
        except KeyError:
            continue
        priced.append((unit, value))
    if not priced:
        return None
    # Most specific first, as genai-prices decomposes usage into leaves.
    priced.sort(key=lambda item: (-len(item[0].dimensions), item[0].usage_key))
    rows = []
    for i, (unit, value) in enumerate(priced):
        more_specific = tuple(
            j
            for j in range(i)
            if priced[j][0] is not unit and is_descendant_or_self(unit, priced[j][0])
        )
        per = Decimal(unit.per)
        if isinstance(value, TieredPrices):
            flat = value.base / per
            tiers = tuple((t.start, t.price / per) for t in reversed(value.tiers))
        else:
            flat, tiers = value / per, ()
        rows.append((unit.usage_key, flat, tiers, more_specific))
    return _Plan(tuple(rows), model_id, source)


def _counts(usage: Usage) -> dict[str, int]:
    counts = {
        "input_tokens": usage.input_tokens,
        "output_tokens": usage.output_tokens,
        "cache_read_tokens": usage.cache_read_tokens,
        "cache_write_tokens": usage.cache_write_tokens,
        "requests": 1,
    }
    for field, key in _OPTIONAL_KEYS:
        value = getattr(usage, field)
        if value:
            counts[key] = value
    return counts
