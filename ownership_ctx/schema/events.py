"""The event contract: every kind of event as a typed structure, and every key in one place.

Events travel as plain JSON-serializable dicts (any sink can take them); these `TypedDict`
classes say what each kind holds, and the constants below are the keys everyone spells
(the gate, metering, the store, the reports). Field names follow the OpenTelemetry GenAI
conventions where one exists (``gen_ai.*``, ``error.type``); the rest are flat snake_case.
The envelope's fields come first, exactly as ``Envelope.as_dict()`` writes them; a field the
envelope lacks is absent. Costs are decimal strings (see `ownership_ctx.schema.money`).

Kinds:

- `HopEvent` (``"hop"``): a unit of work admitted somewhere, and what the policy made of it;
- `RequestEvent` (``"request"``): an edge request finished (the parent of its calls);
- `ProviderCallEvent` (``"provider_call"``): one HTTP attempt at an LLM provider;
- `BillRow` (``"bill_row"``): one line of a provider's bill, for reconciliation.
"""

from __future__ import annotations

from typing import Final, Literal, TypedDict

__all__ = [
    "ATTRIBUTION",
    "BILL_ROW",
    "CACHE_READ_TOKENS",
    "CACHE_WRITE_TOKENS",
    "ENVELOPE_KEYS",
    "ERROR_TYPE",
    "EVENT_ID",
    "FEATURE",
    "HOP",
    "INPUT_TOKENS",
    "KIND",
    "KINDS",
    "OPERATION",
    "OUTPUT_TOKENS",
    "OWNER_TEAM",
    "PROVIDER",
    "PROVIDER_CALL",
    "REASONING_TOKENS",
    "REQUEST",
    "REQUEST_MODEL",
    "RESPONSE_ID",
    "RESPONSE_MODEL",
    "TENANT",
    "TRACE_ID",
    "TS",
    "USER",
    "WORKFLOW_ID",
    "BillRow",
    "EnvelopeFields",
    "Event",
    "HopEvent",
    "Kind",
    "ProviderCallEvent",
    "RequestEvent",
    "keys_of",
]

# -- kinds -------------------------------------------------------------------------------------

HOP: Final = "hop"
REQUEST: Final = "request"
PROVIDER_CALL: Final = "provider_call"
BILL_ROW: Final = "bill_row"
Kind = Literal["hop", "request", "provider_call", "bill_row"]

# -- keys every event has ----------------------------------------------------------------------

KIND: Final = "kind"
EVENT_ID: Final = "event_id"  # unique: replays and duplicates are stored once
TS: Final = "ts"  # epoch seconds

# -- the envelope's keys -----------------------------------------------------------------------

TRACE_ID: Final = "trace_id"
OWNER_TEAM: Final = "owner_team"
WORKFLOW_ID: Final = "workflow_id"
FEATURE: Final = "feature"
TENANT: Final = "tenant"
USER: Final = "user"
ATTRIBUTION: Final = "attribution"
#: In the order ``Envelope.as_dict()`` writes them (``extra.*`` keys come between user and
#: attribution).
ENVELOPE_KEYS: Final = (TRACE_ID, OWNER_TEAM, WORKFLOW_ID, FEATURE, TENANT, USER, ATTRIBUTION)

# -- provider_call keys with an OpenTelemetry GenAI name ---------------------------------------

PROVIDER: Final = "gen_ai.provider.name"
OPERATION: Final = "gen_ai.operation.name"
REQUEST_MODEL: Final = "gen_ai.request.model"
RESPONSE_MODEL: Final = "gen_ai.response.model"
RESPONSE_ID: Final = "gen_ai.response.id"
INPUT_TOKENS: Final = "gen_ai.usage.input_tokens"
OUTPUT_TOKENS: Final = "gen_ai.usage.output_tokens"
CACHE_READ_TOKENS: Final = "gen_ai.usage.cache_read.input_tokens"
CACHE_WRITE_TOKENS: Final = "gen_ai.usage.cache_creation.input_tokens"
REASONING_TOKENS: Final = "gen_ai.usage.reasoning.output_tokens"
ERROR_TYPE: Final = "error.type"

Attribution = Literal["attributed", "stamped", "quarantined", "unattributed", "defaulted"]


class EnvelopeFields(TypedDict, total=False):
    """The envelope's fields as events carry them (``extra.*`` keys besides)."""

    trace_id: str
    owner_team: str
    workflow_id: str
    feature: str
    tenant: str  # keyed-hash form only (``h1:...``)
    user: str  # keyed-hash form only
    attribution: str


class HopEvent(EnvelopeFields, total=False):
    kind: Literal["hop"]
    event_id: str
    ts: float
    hop: str  # http, celery, dramatiq, or what an adapter passes to Gate.enter
    unit: str  # route template / redacted path, task or actor name
    outcome: str  # attributed, stamped, quarantined, unattributed or rejected
    missing: list[str]  # required fields missing on arrival
    fields_present: list[str]
    problems: list[str]  # field:code, never the received values


class RequestEvent(EnvelopeFields, total=False):
    kind: Literal["request"]
    event_id: str
    ts: float
    hop: str
    unit: str
    route: str  # the framework's route template when known
    method: str
    status: int
    latency_ms: float
    outcome: str
    missing: list[str]
    fields_present: list[str]
    problems: list[str]


# Dotted keys: the functional form. The envelope's keys are repeated (no bases here).
ProviderCallEvent = TypedDict(
    "ProviderCallEvent",
    {
        "kind": Literal["provider_call"],
        "event_id": str,
        "ts": float,
        "trace_id": str,
        "owner_team": str,
        "workflow_id": str,
        "feature": str,
        "tenant": str,
        "user": str,
        "attribution": str,
        "call_id": str,
        "attempt": int,
        "status": Literal["ok", "error", "cancelled"],
        "http_status": "int | None",
        "error.type": "str | None",
        "gen_ai.provider.name": str,
        "gen_ai.operation.name": str,
        "api": str,
        "gen_ai.request.model": "str | None",
        "gen_ai.response.model": "str | None",
        "gen_ai.response.id": "str | None",
        "provider_request_id": "str | None",
        "service_tier": "str | None",
        "streaming": bool,
        "latency_ms": "float | None",
        "gen_ai.usage.input_tokens": "int | None",
        "gen_ai.usage.output_tokens": "int | None",
        "gen_ai.usage.cache_read.input_tokens": "int | None",
        "gen_ai.usage.cache_creation.input_tokens": "int | None",
        "cache_write_5m_tokens": "int | None",
        "cache_write_1h_tokens": "int | None",
        "gen_ai.usage.reasoning.output_tokens": "int | None",
        "input_audio_tokens": "int | None",
        "output_audio_tokens": "int | None",
        "input_image_tokens": "int | None",
        "output_image_tokens": "int | None",
        "usage_status": Literal["reported", "partial", "estimated", "missing", "invalid"],
        "cost": "str | None",  # decimal string
        "currency": str,
        "cost_source": Literal["provider", "price_table", "unpriced", "override"],
        "unpriced_reason": "str | None",
        "price_model_id": "str | None",
        "cost_avoided": "str | None",  # decimal string
        "app_cache_hit": bool,
        "fallback_of": "str | None",
        "fallback_of_call_id": "str | None",
        "recorded_by": str,
        "problems": list[str],
        # Where the call is billed (reconciliation joins bills on these; billing_scope is a
        # typed column and a rollup dimension of the store).
        "billing_scope": "str | None",
        "billing_region": "str | None",
        "api_key_fingerprint": "str | None",
    },
    total=False,
)


class BillRow(TypedDict, total=False):
    """One line of a provider's bill (usage export or cost API), as reconciliation stores it
    and joins with provider_call events (``provider_request_id``, else the rollup keys)."""

    kind: Literal["bill_row"]
    event_id: str  # stable: the importer's hash of the line, so a re-import is stored once
    ts: float  # start of the billed period (epoch seconds)
    period_end: float
    provider: str  # as gen_ai.provider.name
    billing_scope: str  # project / workspace / account the line is billed to
    model: str
    service_tier: str | None
    provider_request_id: str | None
    input_tokens: int | None
    output_tokens: int | None
    cost: str  # decimal string
    currency: str
    source: str  # which importer / export produced it


#: Any event.
Event = HopEvent | RequestEvent | ProviderCallEvent | BillRow

_TYPES: Final[dict[str, type]] = {
    HOP: HopEvent,
    REQUEST: RequestEvent,
    PROVIDER_CALL: ProviderCallEvent,
    BILL_ROW: BillRow,
}
KINDS: Final = tuple(_TYPES)


def keys_of(kind: str) -> tuple[str, ...]:
    """The keys an event of ``kind`` may hold, in declaration order (envelope keys included)."""
    return tuple(_TYPES[kind].__annotations__) if kind in _TYPES else ()
