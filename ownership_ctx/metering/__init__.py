"""Metering: every provider call becomes a priced ``provider_call`` event carrying its owner.

    from ownership_ctx import metering
    client = metering.instrument(openai.OpenAI())     # or Anthropic, genai.Client, boto3
    metering.instrument_all()                         # or every SDK client, whoever makes it
    metering.record_call(provider="openai", model="gpt-4o", usage={...})   # anything else
    metering.record_cache_hit(provider="openai", model="gpt-4o", usage={...})
    with metering.fallback(of="gpt-4o"): ...

Events go to the process-wide sink (`ownership_ctx.events.set_sink`); their fields are listed
in `ownership_ctx.metering.schema.FIELDS`. No provider SDK and no genai-prices is imported
until it is used.
"""

from __future__ import annotations

from .auto import instrument_all, instrumented_all, uninstrument_all
from .clients import instrument, instrument_httpx, instrumented, uninstrument
from .pricing import PriceOverride, Pricer, PriceResult, parse_overrides
from .recorder import configure, fallback, pricer, record_cache_hit, record_call
from .schema import FIELDS
from .usage import Usage

__all__ = [
    "FIELDS",
    "PriceOverride",
    "PriceResult",
    "Pricer",
    "Usage",
    "configure",
    "fallback",
    "instrument",
    "instrument_all",
    "instrument_httpx",
    "instrumented",
    "instrumented_all",
    "parse_overrides",
    "pricer",
    "record_cache_hit",
    "record_call",
    "uninstrument",
    "uninstrument_all",
]
