"""Chargeback as a FinOps FOCUS-shaped CSV: one row per UTC day x owner x provider / model /
tier, so that a FinOps tool can load LLM spend next to the cloud bill.

FOCUS columns used: ``BilledCost``, ``EffectiveCost`` (the same here: prices already include
cache discounts; there are no commitments to amortize), ``BillingCurrency``,
``ChargeCategory`` (``Usage``), ``ChargePeriodStart``/``End``, ``BillingPeriodStart``/``End``
(the export's range), ``ProviderName``, ``ServiceName``, ``ServiceCategory`` (``AI and
Machine Learning``), ``ConsumedQuantity`` + ``ConsumedUnit`` (tokens a provider processed,
input + output: an application cache hit's avoided tokens are not consumed),
``SkuId`` (``provider/model[@tier]``), ``ChargeDescription`` and ``Tags`` (JSON). Everything of
ours is an ``x_`` custom column.
"""

from __future__ import annotations

import csv
import io
import json
from collections.abc import Iterator
from typing import Final

from ownership_ctx.store.api import EventQueries

from .rendering import money_text
from .timerange import DAY, TimeRange, stamp

__all__ = ["COLUMNS", "focus_csv", "focus_rows"]

_DIMS: Final = (
    "day",
    "owner_team",
    "workflow_id",
    "feature",
    "tenant",
    "provider",
    "model",
    "service_tier",
)
COLUMNS: Final = (
    "BilledCost",
    "EffectiveCost",
    "BillingCurrency",
    "ChargeCategory",
    "ChargeDescription",
    "ChargePeriodStart",
    "ChargePeriodEnd",
    "BillingPeriodStart",
    "BillingPeriodEnd",
    "ProviderName",
    "ServiceName",
    "ServiceCategory",
    "ConsumedQuantity",
    "ConsumedUnit",
    "SkuId",
    "Tags",
    "x_OwnerTeam",
    "x_WorkflowId",
    "x_Feature",
    "x_Tenant",
    "x_Model",
    "x_ServiceTier",
    "x_Calls",
    "x_InputTokens",
    "x_OutputTokens",
    "x_CacheReadTokens",
    "x_CacheWriteTokens",
    "x_Retries",
    "x_Fallbacks",
    "x_UnpricedCalls",
    "x_UnattributedCost",
    "x_FailedAttempts",
    "x_EstimatedCost",
    "x_AppCacheHits",
    "x_CostAvoided",
)
_TAG_KEYS: Final = ("owner_team", "workflow_id", "feature", "tenant")


def focus_rows(source: EventQueries, time_range: TimeRange) -> Iterator[dict[str, str]]:
    """The export's rows, in day then owner order (call-less buckets are skipped)."""
    buckets = source.rollups(time_range.start, time_range.end, group_by=_DIMS)
    for b in buckets:
        if b.calls == 0:
            continue  # request events, free failed attempts or cache hits only: no charge
        g = b.group
        day = int(g["day"] or 0)
        period_start = max(day, time_range.start)
        period_end = min(day + DAY, time_range.end)
        provider = _s(g["provider"]) or "unknown"
        model = _s(g["model"]) or "unknown"
        tier = _s(g["service_tier"])
        tags = {k: g[k] for k in _TAG_KEYS if g[k] is not None}
        cost = money_text(b.cost)
        owner = _s(g["owner_team"]) or "unattributed"
        yield {
            "BilledCost": cost,
            "EffectiveCost": cost,
            "BillingCurrency": "USD",
            "ChargeCategory": "Usage",
            "ChargeDescription": f"{provider} {model}{f' ({tier})' if tier else ''} for {owner}",
            "ChargePeriodStart": stamp(period_start),
            "ChargePeriodEnd": stamp(period_end),
            "BillingPeriodStart": stamp(time_range.start),
            "BillingPeriodEnd": stamp(time_range.end),
            "ProviderName": provider,
            "ServiceName": provider,
            "ServiceCategory": "AI and Machine Learning",
            "ConsumedQuantity": str(b.input_tokens + b.output_tokens),
            "ConsumedUnit": "Tokens",
            "SkuId": f"{provider}/{model}{f'@{tier}' if tier else ''}",
            "Tags": json.dumps(tags, sort_keys=True, separators=(",", ":")),
            "x_OwnerTeam": _s(g["owner_team"]),
            "x_WorkflowId": _s(g["workflow_id"]),
            "x_Feature": _s(g["feature"]),
            "x_Tenant": _s(g["tenant"]),
            "x_Model": _s(g["model"]),
            "x_ServiceTier": tier,
            "x_Calls": str(b.calls),
            "x_InputTokens": str(b.input_tokens),
            "x_OutputTokens": str(b.output_tokens),
            "x_CacheReadTokens": str(b.cache_read_tokens),
            "x_CacheWriteTokens": str(b.cache_write_tokens),
            "x_Retries": str(b.retries),
            "x_Fallbacks": str(b.fallbacks),
            "x_UnpricedCalls": str(b.unpriced_calls),
            "x_UnattributedCost": money_text(b.unattributed_cost),
            "x_FailedAttempts": str(b.failed_attempts),
            "x_EstimatedCost": money_text(b.estimated_cost),
            "x_AppCacheHits": str(b.app_cache_hits),
            "x_CostAvoided": money_text(b.cost_avoided),
        }


def _s(value: object) -> str:
    return "" if value is None else str(value)


def focus_csv(source: EventQueries, time_range: TimeRange) -> str:
    out = io.StringIO()
    writer = csv.DictWriter(out, fieldnames=COLUMNS, lineterminator="\n")
    writer.writeheader()
    writer.writerows(focus_rows(source, time_range))
    return out.getvalue()
