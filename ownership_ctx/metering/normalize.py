"""Provider payloads -> one `Usage` shape, the served model, the tier the response reports.

Every function here takes untrusted data and never raises on it: whatever does not fit is
recorded in ``Parsed.problems`` (names and reasons only, never payload values) and the counts
that could not be believed make the usage ``invalid`` rather than a guessed number.

Streams reuse the JSON normalizers: `merge_stream` folds the few stream events that carry
model and usage into the body the equivalent non-streamed call would have returned.
"""

from __future__ import annotations

import dataclasses
import json
import re
from collections.abc import Callable, Iterable, Mapping
from typing import Any, Final

from .usage import Usage, count

__all__ = ["APIS", "Parsed", "merge_stream", "parse_body", "parse_json"]

#: api -> (gen_ai.operation.name)
APIS: Final[dict[str, str]] = {
    "chat_completions": "chat",
    "responses": "chat",
    "embeddings": "embeddings",
    "messages": "chat",
    "converse": "chat",
    "generate_content": "generate_content",
    "manual": "chat",
}

_SAFE = re.compile(r"[^A-Za-z0-9._:/-]")
_SAFE_ALL = re.compile(r"[A-Za-z0-9._:/-]+")
# Stream chunk keys that are not response metadata (content, and usage handled separately).
_STREAM_SKIP: Final = frozenset({"choices", "candidates", "usage", "usageMetadata"})


@dataclasses.dataclass(slots=True)
class Parsed:
    usage: Usage | None = None
    usage_status: str = "missing"
    model: str | None = None
    tier: str | None = None
    speed: str | None = None
    response_id: str | None = None
    error_type: str | None = None
    problems: list[str] = dataclasses.field(default_factory=list)


def _text(value: Any, limit: int = 128) -> str | None:
    """A short identifier from a payload: model names, ids, tiers. Anything else is dropped."""
    if isinstance(value, str) and value:
        if len(value) <= limit and _SAFE_ALL.fullmatch(value):
            return value  # the common case: already a clean identifier
        return _SAFE.sub("_", value[:limit])
    return None


def _map(value: Any) -> Mapping[str, Any]:
    return value if isinstance(value, Mapping) else _EMPTY


_EMPTY: Final[Mapping[str, Any]] = {}


class _Counts:
    """Reads counts from one usage object, remembering whether any was unbelievable."""

    __slots__ = ("bad", "problems")

    def __init__(self, problems: list[str]) -> None:
        self.problems = problems
        self.bad = False

    def __call__(self, obj: Mapping[str, Any], key: str, required: bool = False) -> int | None:
        raw = obj.get(key)
        if raw is None:
            if required:
                self.problems.append(f"usage_missing_field:{key}")
                self.bad = True
            return None
        value = count(raw, key, self.problems)
        if value is None:
            self.bad = True
        return value


def _modalities(details: Any, c: _Counts, name: str) -> dict[str, int]:
    """Gemini's ``[{"modality": "AUDIO", "tokenCount": n}, ...]`` lists."""
    out: dict[str, int] = {}
    if not isinstance(details, list):
        return out
    for item in details:
        item = _map(item)
        modality = item.get("modality")
        if not isinstance(modality, str):
            continue
        value = c(item, "tokenCount")
        if value is not None:
            out[modality] = out.get(modality, 0) + value
    return out


def _openai_chat(u: Mapping[str, Any], c: _Counts) -> Usage:
    prompt = c(u, "prompt_tokens", required=True) or 0
    completion = c(u, "completion_tokens", required=True) or 0
    pd, cd = _map(u.get("prompt_tokens_details")), _map(u.get("completion_tokens_details"))
    return Usage(
        input_tokens=prompt,  # OpenAI's prompt_tokens already includes cached tokens
        output_tokens=completion,
        cache_read_tokens=c(pd, "cached_tokens") or 0,
        cache_write_tokens=c(pd, "cache_write_tokens") or 0,
        reasoning_tokens=c(cd, "reasoning_tokens"),
        input_audio_tokens=c(pd, "audio_tokens"),
        output_audio_tokens=c(cd, "audio_tokens"),
    )


def _openai_responses(u: Mapping[str, Any], c: _Counts) -> Usage:
    inp = c(u, "input_tokens", required=True) or 0
    out = c(u, "output_tokens", required=True) or 0
    idt, odt = _map(u.get("input_tokens_details")), _map(u.get("output_tokens_details"))
    return Usage(
        input_tokens=inp,  # includes cached tokens
        output_tokens=out,
        cache_read_tokens=c(idt, "cached_tokens") or 0,
        cache_write_tokens=c(idt, "cache_write_tokens") or 0,
        reasoning_tokens=c(odt, "reasoning_tokens"),
    )


def _openai_embeddings(u: Mapping[str, Any], c: _Counts) -> Usage:
    return Usage(input_tokens=c(u, "prompt_tokens", required=True) or 0)


def _anthropic(u: Mapping[str, Any], c: _Counts) -> Usage:
    # Anthropic's input_tokens EXCLUDES cache reads and writes: add them back.
    inp = c(u, "input_tokens", required=True) or 0
    read = c(u, "cache_read_input_tokens") or 0
    split = _map(u.get("cache_creation"))
    w5m, w1h = c(split, "ephemeral_5m_input_tokens"), c(split, "ephemeral_1h_input_tokens")
    write = c(u, "cache_creation_input_tokens")
    if write is None:
        write = (w5m or 0) + (w1h or 0)
    thinking = c(_map(u.get("output_tokens_details")), "thinking_tokens")
    return Usage(
        input_tokens=inp + read + write,
        output_tokens=c(u, "output_tokens", required=True) or 0,
        cache_read_tokens=read,
        cache_write_tokens=write,
        cache_write_5m_tokens=w5m,
        cache_write_1h_tokens=w1h,
        reasoning_tokens=thinking,
    )


def _bedrock(u: Mapping[str, Any], c: _Counts) -> Usage:
    # Converse's inputTokens EXCLUDES cache reads and writes, like Anthropic's.
    inp = c(u, "inputTokens", required=True) or 0
    read = c(u, "cacheReadInputTokens") or 0
    write = c(u, "cacheWriteInputTokens") or 0
    ttl: dict[str, int] = {}
    details = u.get("cacheDetails")
    if isinstance(details, list):
        for item in details:
            item = _map(item)
            value = c(item, "inputTokens")
            if isinstance(item.get("ttl"), str) and value is not None:
                ttl[item["ttl"]] = ttl.get(item["ttl"], 0) + value
    return Usage(
        input_tokens=inp + read + write,
        output_tokens=c(u, "outputTokens", required=True) or 0,
        cache_read_tokens=read,
        cache_write_tokens=write,
        cache_write_5m_tokens=ttl.get("5m"),
        cache_write_1h_tokens=ttl.get("1h"),
    )


def _gemini(u: Mapping[str, Any], c: _Counts) -> Usage:
    # promptTokenCount already includes cached content; thoughts are billed as output.
    prompt = c(u, "promptTokenCount") or 0
    tool = c(u, "toolUsePromptTokenCount") or 0
    candidates = c(u, "candidatesTokenCount") or 0
    thoughts = c(u, "thoughtsTokenCount")
    pin = _modalities(u.get("promptTokensDetails"), c, "prompt")
    tin = _modalities(u.get("toolUsePromptTokensDetails"), c, "tool")
    out = _modalities(u.get("candidatesTokensDetails"), c, "candidates")
    cached = _modalities(u.get("cacheTokensDetails"), c, "cache")

    def both(kind: str, *maps: dict[str, int]) -> int | None:
        # Documents are priced as images by the price table; keep the same split.
        found = [
            m[k] for m in maps for k in (kind, "DOCUMENT" if kind == "IMAGE" else "") if k in m
        ]
        return sum(found) if found else None

    return Usage(
        input_tokens=prompt + tool,
        output_tokens=candidates + (thoughts or 0),
        cache_read_tokens=c(u, "cachedContentTokenCount") or 0,
        reasoning_tokens=thoughts,
        input_audio_tokens=both("AUDIO", pin, tin),
        output_audio_tokens=both("AUDIO", out),
        input_image_tokens=both("IMAGE", pin, tin),
        output_image_tokens=both("IMAGE", out),
        cache_audio_read_tokens=both("AUDIO", cached),
    )


_Normalizer = Callable[[Mapping[str, Any], _Counts], Usage]


def _error_type(body: Mapping[str, Any]) -> str | None:
    err = body.get("error")
    if err is None:
        return None
    if isinstance(err, Mapping):
        for key in ("type", "status", "code"):
            value = err.get(key)
            if isinstance(value, (str, int)) and not isinstance(value, bool):
                return _text(str(value), 64)
    return "error"


def _tier(value: Any) -> str | None:
    tier = _text(value, 32)
    if tier is None:
        return None
    tier = tier.lower()
    return tier.removeprefix("service_tier_")


def parse_json(api: str, body: Any, *, status_ok: bool = True) -> Parsed:
    """Normalize one decoded response body of ``api``."""
    out = Parsed()
    if not isinstance(body, Mapping):
        out.problems.append("body_not_an_object")
        out.usage_status = "invalid"
        return out
    usage_obj: Any
    normalizer: _Normalizer
    if api == "chat_completions" or api == "embeddings":
        usage_obj = body.get("usage")
        normalizer = _openai_chat if api == "chat_completions" else _openai_embeddings
        out.model, out.response_id = _text(body.get("model")), _text(body.get("id"))
        out.tier = _tier(body.get("service_tier"))
    elif api == "responses":
        usage_obj = body.get("usage")
        normalizer = _openai_responses
        out.model, out.response_id = _text(body.get("model")), _text(body.get("id"))
        out.tier = _tier(body.get("service_tier"))
        if body.get("status") == "failed":
            out.error_type = _error_type(body) or "response_failed"
    elif api == "messages":
        usage_obj = body.get("usage")
        normalizer = _anthropic
        out.model, out.response_id = _text(body.get("model")), _text(body.get("id"))
        u = _map(usage_obj)
        out.tier, out.speed = _tier(u.get("service_tier")), _tier(u.get("speed"))
    elif api == "generate_content":
        usage_obj = body.get("usageMetadata")
        normalizer = _gemini
        out.model, out.response_id = _text(body.get("modelVersion")), _text(body.get("responseId"))
        out.tier = _tier(_map(usage_obj).get("serviceTier"))
    elif api == "converse":
        usage_obj = body.get("usage")
        normalizer = _bedrock
        out.tier = _tier(_map(body.get("serviceTier")).get("type"))
    else:
        out.problems.append("api_unknown")
        return out
    if out.error_type is None:
        out.error_type = _error_type(body) if "error" in body else None
    if usage_obj is None:
        if status_ok and out.error_type is None:
            out.problems.append("usage_missing")
        return out
    if not isinstance(usage_obj, Mapping):
        out.problems.append("usage_not_an_object")
        out.usage_status = "invalid"
        return out
    c = _Counts(out.problems)
    usage = normalizer(usage_obj, c)
    if c.bad or not usage.check(out.problems):
        out.usage_status = "invalid"
        return out
    out.usage, out.usage_status = usage, "reported"
    return out


def parse_body(api: str, raw: bytes, *, status_ok: bool = True) -> Parsed:
    """Normalize a raw (already decompressed) JSON response body."""
    try:
        body = json.loads(raw)
    except (ValueError, RecursionError):
        out = Parsed(usage_status="invalid" if status_ok else "missing")
        out.problems.append("body_not_json")
        return out
    return parse_json(api, body, status_ok=status_ok)


def merge_stream(api: str, events: Iterable[bytes], complete: bool) -> Parsed:
    """Fold the retained ``data:`` payloads of an SSE stream into one `Parsed`.

    ``events`` are the few payloads a `StreamTap` kept (the first one, the ones carrying
    usage or a terminal/error marker), in order. ``complete`` says whether the stream reached
    its end; usage from an unfinished stream is ``partial``.
    """
    problems: list[str] = []
    body: dict[str, Any] = {}
    usage: dict[str, Any] | None = None
    error: Any = None
    for raw in events:
        try:
            obj = json.loads(raw)
        except (ValueError, RecursionError):
            problems.append("stream_event_not_json")
            continue
        if not isinstance(obj, Mapping):
            problems.append("stream_event_not_an_object")
            continue
        if "error" in obj and (api != "messages" or obj.get("type") == "error"):
            error = obj["error"]
        kind = obj.get("type")
        if api == "chat_completions" or api == "generate_content":
            for key, value in obj.items():
                if value is not None and key not in _STREAM_SKIP:
                    body.setdefault(key, value)
            key = "usage" if api == "chat_completions" else "usageMetadata"
            if obj.get(key) is not None:
                usage = obj[key]
        elif api == "responses":
            response = obj.get("response")
            if isinstance(response, Mapping):
                body.update({k: v for k, v in response.items() if v is not None})
        elif api == "messages":
            if kind == "message_start":
                body.update(_map(obj.get("message")))
                usage = dict(_map(body.get("usage")))
            elif kind == "message_delta":
                delta = obj.get("usage")
                if isinstance(delta, Mapping):
                    # message_delta usage is cumulative: later values replace earlier ones.
                    usage = {**(usage or {}), **{k: v for k, v in delta.items() if v is not None}}
    if api == "chat_completions":
        body["usage"] = usage
    elif api == "generate_content":
        body["usageMetadata"] = usage
    elif api == "messages" and usage is not None:
        body["usage"] = usage
    if error is not None:
        body["error"] = error
    parsed = parse_json(api, body)
    parsed.problems[:0] = problems
    if api == "chat_completions" and parsed.usage is None and "usage_missing" in parsed.problems:
        # The caller did not ask for usage (stream_options.include_usage): say so, price nothing.
        parsed.problems.append("usage_missing:stream_without_include_usage")
    if parsed.usage is not None and not complete:
        parsed.usage_status = "partial"
    return parsed
