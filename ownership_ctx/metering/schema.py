"""The provider_call event: every field name in one place.

Naming rule: a field takes its OpenTelemetry GenAI semantic-convention name where one exists
(``gen_ai.*``, ``error.type``); everything else is a flat snake_case name of ours. The
envelope's fields are flat too (``trace_id``, ``owner_team``, ... ``attribution``), exactly as
`Envelope.as_dict` writes them, so provider_call, hop and request events join on the same keys.

Events are plain JSON-serializable dicts: costs are decimal *strings* (``"0.0012345"``, never
floats, never exponent notation), timestamps epoch seconds.
"""

from __future__ import annotations

from typing import Final, Literal

from ownership_ctx.schema import events as ev

KIND: Final = ev.PROVIDER_CALL

# OpenTelemetry GenAI names: defined once, with every event kind, in ownership_ctx.schema.events.
PROVIDER: Final = ev.PROVIDER
OPERATION: Final = ev.OPERATION
REQUEST_MODEL: Final = ev.REQUEST_MODEL
RESPONSE_MODEL: Final = ev.RESPONSE_MODEL
RESPONSE_ID: Final = ev.RESPONSE_ID
INPUT_TOKENS: Final = ev.INPUT_TOKENS
OUTPUT_TOKENS: Final = ev.OUTPUT_TOKENS
CACHE_READ_TOKENS: Final = ev.CACHE_READ_TOKENS
CACHE_WRITE_TOKENS: Final = ev.CACHE_WRITE_TOKENS
REASONING_TOKENS: Final = ev.REASONING_TOKENS
ERROR_TYPE: Final = ev.ERROR_TYPE

Status = Literal["ok", "error", "cancelled"]
CostSource = Literal["provider", "price_table", "unpriced", "override"]
UsageStatus = Literal["reported", "partial", "estimated", "missing", "invalid"]

#: Every key of a provider_call event besides the envelope's, with what it means. The README
#: table is generated from the same words; a test checks that events carry exactly these keys.
FIELDS: Final[dict[str, str]] = {
    "kind": 'always "provider_call"',
    "event_id": (
        "unique id of this event: 32 hex digits, the emit time in milliseconds (12)"
        " then 80 random bits (20)"
    ),
    "ts": "when the attempt started (epoch seconds); prices are looked up for this time",
    "call_id": "the logical call: every attempt of one SDK call (its retries) shares it",
    "attempt": "1 for the first HTTP attempt of the call, 2 for the first retry, ...",
    "status": '"ok", "error" (HTTP error, connection failure, error event) or "cancelled"'
    " (a stream closed by the caller before it ended)",
    "http_status": "HTTP status of the attempt, null when no response arrived",
    ERROR_TYPE: "exception class or provider error type, for failed attempts",
    PROVIDER: '"openai", "anthropic", "gcp.gemini", "aws.bedrock" or as given',
    OPERATION: '"chat", "embeddings" or "generate_content"',
    "api": '"chat_completions", "responses", "embeddings", "messages", "converse",'
    ' "generate_content" or "manual"',
    REQUEST_MODEL: "the model the caller asked for",
    RESPONSE_MODEL: "the model the provider says it served (what the call is priced by)",
    RESPONSE_ID: "the provider's id of the response (message / completion id)",
    "provider_request_id": "the provider's request id header (x-request-id, request-id,"
    " x-amzn-requestid): the join key for reconciliation with provider logs",
    "billing_scope": "what the provider's bill groups this call under, when the call shows it:"
    " the OpenAI project id (response / request header); null otherwise (see reconciliation)",
    "billing_region": "the AWS region of a Bedrock call, else null",
    "api_key_fingerprint": '"sha256:" + 16 hex digits of the API key\'s SHA-256: names the key'
    " in reconciliation reports; the key itself is never recorded",
    "service_tier": "the tier the RESPONSE reports (priority / flex / batch / default ...);"
    " null when the response does not say",
    "streaming": "whether the response was streamed",
    "latency_ms": "from sending the request to the end of the response body",
    INPUT_TOKENS: "all input tokens, cache reads and cache writes included",
    OUTPUT_TOKENS: "all output tokens, reasoning included",
    CACHE_READ_TOKENS: "input tokens read from the provider's prompt cache",
    CACHE_WRITE_TOKENS: "input tokens written to the provider's prompt cache",
    "cache_write_5m_tokens": "cache writes with a 5-minute TTL, where the provider splits them",
    "cache_write_1h_tokens": "cache writes with a 1-hour TTL, where the provider splits them",
    REASONING_TOKENS: "output tokens spent on reasoning / thinking",
    "input_audio_tokens": "audio input tokens, where reported",
    "output_audio_tokens": "audio output tokens, where reported",
    "input_image_tokens": "image input tokens, where reported",
    "output_image_tokens": "image output tokens, where reported",
    "usage_status": '"reported"; "partial" (stream ended early: counts are lower bounds);'
    ' "estimated" (a stream the caller cancelled: what the provider did not report is'
    " estimated from the request's prompt and the text streamed, and priced);"
    ' "missing" (no usage seen: tokens null, never zero); "invalid" (garbage: see problems)',
    "cost": "estimated cost as a decimal string, null when unpriced",
    "currency": '"USD"',
    "cost_source": '"price_table" (genai-prices), "override" (operator price), "provider"'
    ' (cost reported by the provider or caller) or "unpriced" (cost null)',
    "unpriced_reason": 'why cost is null: "no price library" (install ownership-ctx[prices]),'
    ' "unknown model", "failed attempt" (no usage: a failed attempt is free), "no usage'
    ' reported", "no model", "inconsistent usage" or "pricing error"; null when priced',
    "price_model_id": "the price-table model the cost was computed with",
    "cost_avoided": "for an application cache hit: what the call would have cost",
    "app_cache_hit": "true when the application answered from its own cache (cost 0)",
    "fallback_of": "the model this call stands in for after it failed, else null",
    "fallback_of_call_id": "the call_id of the failed call, when known",
    "recorded_by": '"httpx", "botocore" or "manual"',
    "problems": "what metering could not make sense of (never raw payload values)",
}
