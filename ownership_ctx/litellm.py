"""LiteLLM as a client library: every attempt one owned, priced ``provider_call`` event.

    from ownership_ctx import litellm as oc_litellm
    oc_litellm.install()          # a LiteLLM callback; undo with oc_litellm.uninstall()
    litellm.completion(model="anthropic/claude-haiku-4-5", messages=[...])

LiteLLM sends some providers' calls through the official SDKs (OpenAI, Azure) and the others
through its own HTTP code (Anthropic, Bedrock, Gemini, ...). With `metering.instrument_all`
on, the SDK's attempts are metered at the transport, exactly as elsewhere; the callback records
the attempts nothing else saw. Which one records is decided per attempt through
`ownership_ctx.metering.handoff`, so an attempt both see is recorded once.

Events the callback records carry the envelope bound where ``completion`` was called (captured
in LiteLLM's pre-call hook, which runs there: its success callbacks run on a logging thread),
are priced from our price data like every other event, and carry ``litellm_response_cost``
when LiteLLM's own ``response_cost`` differs from ours. Attempts of one LiteLLM call (its
``num_retries``, ``fallbacks``) share ``call_id``; a fallback attempt names the model it fell
back from in ``fallback_of``. ``recorded_by`` is ``"litellm"``.

Calling a LiteLLM *proxy* over HTTP: `proxy_headers` gives the headers the proxy records in its
spend logs (``x-litellm-spend-logs-metadata``) and tags (``x-litellm-tags``); see docs/agents.md.
"""

from __future__ import annotations

import json
import threading
import time
from collections import OrderedDict
from collections.abc import Mapping
from decimal import Decimal, InvalidOperation
from typing import Any, Final

try:
    import litellm
    from litellm.integrations.custom_logger import CustomLogger
except ImportError as exc:  # pragma: no cover - depends on the environment
    raise ImportError(
        "ownership_ctx.litellm needs LiteLLM: pip install 'ownership-ctx[litellm]'"
    ) from exc

from . import events
from .context import current
from .envelope import Envelope
from .metering.handoff import Handoff, close, open_handoff
from .metering.normalize import Parsed
from .metering.recorder import build_event, failed, new_call_id
from .metering.usage import usage_from_mapping

__all__ = ["OwnershipLogger", "install", "installed", "proxy_headers", "uninstall"]

#: LiteLLM's provider names -> the event's ``gen_ai.provider.name`` (as our SDK wrappers say).
PROVIDERS: Final = {
    "openai": "openai",
    "text-completion-openai": "openai",
    "azure": "azure.ai.openai",
    "anthropic": "anthropic",
    "gemini": "gcp.gemini",
    "vertex_ai": "gcp.vertex_ai",
    "vertex_ai_beta": "gcp.vertex_ai",
    "bedrock": "aws.bedrock",
}
_STASH: Final = "ownership_ctx"
_MAX_CALLS: Final = 4096


class _Call:
    """One LiteLLM call (one ``litellm_call_id``): its id and owner, attempts numbered."""

    __slots__ = ("attempts", "call_id", "envelope", "models", "pending")

    def __init__(self, envelope: Envelope | None) -> None:
        self.call_id = new_call_id()
        self.envelope = envelope
        self.attempts = 0
        self.models: list[str] = []
        self.pending: _Attempt | None = None

    # LiteLLM may deep-copy the call details it hands to callbacks: stay one object.
    def __copy__(self) -> _Call:
        return self

    def __deepcopy__(self, memo: Any) -> _Call:
        return self


class _Attempt:
    """What the pre-call hook saw, for the success / failure callback of the same attempt."""

    __slots__ = ("call", "done", "handoff", "model", "started")

    def __init__(self, call: _Call, handoff: Handoff, model: str | None) -> None:
        self.call = call
        self.handoff = handoff
        self.model = model
        self.started = time.time()
        self.done = False

    def __copy__(self) -> _Attempt:
        return self

    def __deepcopy__(self, memo: Any) -> _Attempt:
        return self


class OwnershipLogger(CustomLogger):
    """The LiteLLM callback (`install` registers one)."""

    def __init__(self) -> None:
        super().__init__()
        self._calls: OrderedDict[str, _Call] = OrderedDict()
        self._lock = threading.Lock()

    # -- before each attempt, in the caller's context ------------------------------------

    def log_pre_api_call(self, model: Any, messages: Any, kwargs: Any) -> None:
        try:
            call_key = str(kwargs.get("litellm_call_id") or id(kwargs))
            with self._lock:
                call = self._calls.get(call_key)
                if call is None:
                    call = self._calls[call_key] = _Call(current())
                    while len(self._calls) > _MAX_CALLS:
                        self._calls.popitem(last=False)
                previous = call.pending
                attempt = call.pending = _Attempt(
                    call, open_handoff(), model if isinstance(model, str) else None
                )
            if previous is not None and not previous.done:
                # LiteLLM retries some failures without calling a failure callback: a new
                # attempt of the same call means the previous one failed.
                _finish(previous, kwargs, None, None, "retried", previous.started, time.time())
            kwargs[_STASH] = attempt
        except Exception:
            failed("litellm pre-call")

    async def async_log_pre_api_call(self, model: Any, messages: Any, kwargs: Any) -> None:
        return None  # the sync hook runs for async calls too

    def log_post_api_call(
        self, kwargs: Any, response_obj: Any, start_time: Any, end_time: Any
    ) -> None:
        attempt = _stashed(kwargs)
        if attempt is not None:
            close(attempt.handoff)

    # -- after each attempt (a logging thread or task) -----------------------------------

    def log_success_event(
        self, kwargs: Any, response_obj: Any, start_time: Any, end_time: Any
    ) -> None:
        self._record(kwargs, response_obj, None, start_time, end_time)

    def log_failure_event(
        self, kwargs: Any, response_obj: Any, start_time: Any, end_time: Any
    ) -> None:
        self._record(kwargs, None, kwargs.get("exception"), start_time, end_time)

    async def async_log_success_event(
        self, kwargs: Any, response_obj: Any, start_time: Any, end_time: Any
    ) -> None:
        self._record(kwargs, response_obj, None, start_time, end_time)

    async def async_log_failure_event(
        self, kwargs: Any, response_obj: Any, start_time: Any, end_time: Any
    ) -> None:
        self._record(kwargs, None, kwargs.get("exception"), start_time, end_time)

    def _record(
        self,
        kwargs: Any,
        response: Any,
        error: BaseException | None,
        start_time: Any,
        end_time: Any,
    ) -> None:
        try:
            attempt = _stashed(kwargs)
            if attempt is None:
                # No pre-call hook ran (a cache hit, a call LiteLLM short-circuited): the
                # owner is whatever this callback's context has.
                attempt = _Attempt(_Call(current()), Handoff(), kwargs.get("model"))
            error_type = None if error is None else type(error).__name__
            _finish(attempt, kwargs, response, error, error_type, start_time, end_time)
        except Exception:
            failed("litellm callback")


def _finish(
    attempt: _Attempt,
    kwargs: Mapping[str, Any],
    response: Any,
    error: BaseException | None,
    error_type: str | None,
    start_time: Any,
    end_time: Any,
) -> None:
    """Record ``attempt`` once, unless an instrumented SDK client did."""
    if attempt.done:
        return
    attempt.done = True
    close(attempt.handoff)
    if attempt.handoff.claimed:
        return  # an instrumented SDK client recorded this attempt
    events.emit(_event(kwargs, response, error, error_type, attempt, start_time, end_time))


def _stashed(kwargs: Any) -> _Attempt | None:
    value = kwargs.get(_STASH) if isinstance(kwargs, Mapping) else None
    return value if isinstance(value, _Attempt) else None


def _get(obj: Any, name: str) -> Any:
    if isinstance(obj, Mapping):
        return obj.get(name)
    return getattr(obj, name, None)


def _usage(response: Any) -> Mapping[str, Any] | None:
    usage = _get(response, "usage")
    if usage is None:
        return None
    prompt = _get(usage, "prompt_tokens")
    completion = _get(usage, "completion_tokens")
    if not isinstance(prompt, int) or not isinstance(completion, int):
        return None
    prompt_details = _get(usage, "prompt_tokens_details")
    completion_details = _get(usage, "completion_tokens_details")
    cache_read = _get(prompt_details, "cached_tokens") or _get(usage, "cache_read_input_tokens")
    cache_write = _get(usage, "cache_creation_input_tokens") or _get(
        prompt_details, "cache_creation_tokens"
    )
    split = _get(prompt_details, "cache_creation_token_details")
    # LiteLLM's prompt_tokens include cache reads and writes (it adds Anthropic's back in),
    # which is our convention too.
    return {
        "input_tokens": prompt,
        "output_tokens": completion,
        "cache_read_tokens": cache_read if isinstance(cache_read, int) else 0,
        "cache_write_tokens": cache_write if isinstance(cache_write, int) else 0,
        "cache_write_5m_tokens": _get(split, "ephemeral_5m_input_tokens"),
        "cache_write_1h_tokens": _get(split, "ephemeral_1h_input_tokens"),
        "reasoning_tokens": _get(completion_details, "reasoning_tokens") or None,
    }


def _decimal(value: Any) -> Decimal | None:
    if value is None or isinstance(value, bool):
        return None
    try:
        number = Decimal(str(value))
    except (InvalidOperation, ValueError):
        return None
    return number if number.is_finite() else None


def _seconds(value: Any, default: float) -> float:
    timestamp = getattr(value, "timestamp", None)
    return float(timestamp()) if callable(timestamp) else default


def _event(
    kwargs: Mapping[str, Any],
    response: Any,
    error: BaseException | None,
    error_type: str | None,
    attempt: _Attempt,
    start_time: Any,
    end_time: Any,
) -> dict[str, Any]:
    params = kwargs.get("litellm_params") or {}
    provider_name = str(kwargs.get("custom_llm_provider") or params.get("custom_llm_provider"))
    provider = PROVIDERS.get(provider_name, provider_name or "litellm")
    requested = str(attempt.model or kwargs.get("model") or "")
    call = attempt.call
    call.attempts += 1
    fallback_of = next((m for m in reversed(call.models) if m != requested), None)
    call.models.append(requested)
    parsed = Parsed()
    problems = parsed.problems
    if response is not None:
        complete = kwargs.get("complete_streaming_response")
        body = complete if complete is not None else response
        parsed.model = _served(_get(body, "model"), requested)
        parsed.response_id = _get(body, "id")
        usage = _usage(body)
        if usage is not None:
            parsed.usage = usage_from_mapping(usage, problems)
            parsed.usage_status = "reported" if parsed.usage is not None else "invalid"
        else:
            problems.append("usage_missing")
        tier = _get(_get(body, "usage"), "service_tier") or _get(body, "service_tier")
        parsed.tier = tier if isinstance(tier, str) else None
    ts = _seconds(start_time, attempt.started)
    latency = (_seconds(end_time, ts) - ts) * 1000.0
    status_code = getattr(error, "status_code", None)
    event = build_event(
        envelope=call.envelope,
        call_id=call.call_id,
        attempt=call.attempts,
        provider=provider,
        api="chat_completions",
        request_model=requested or None,
        parsed=parsed,
        status="ok" if error_type is None else "error",
        http_status=status_code if isinstance(status_code, int) else None,
        error_type=error_type,
        ts=ts,
        latency_ms=max(latency, 0.0),
        streaming=bool(kwargs.get("stream")),
        provider_request_id=None,
        fallback_of=fallback_of,
        fallback_of_call_id=call.call_id if fallback_of is not None else None,
        recorded_by="litellm",
    )
    theirs = _decimal(kwargs.get("response_cost"))
    ours = _decimal(event.get("cost"))
    if theirs is not None and error_type is None and theirs != ours:
        event["litellm_response_cost"] = format(theirs, "f")
    return event


def _served(model: Any, requested: str) -> str | None:
    if not isinstance(model, str) or not model:
        return None
    # LiteLLM reports "provider/model" for some providers: the model is after the slash.
    return model.split("/", 1)[1] if "/" in model and "/" not in requested else model


# -- installing -------------------------------------------------------------------------------

_logger: OwnershipLogger | None = None
_install_lock = threading.Lock()


def install() -> OwnershipLogger:
    """Register the callback with LiteLLM (``litellm.callbacks``); idempotent."""
    global _logger
    with _install_lock:
        if _logger is None:
            _logger = OwnershipLogger()
        if _logger not in litellm.callbacks:
            litellm.callbacks.append(_logger)
        return _logger


def installed() -> bool:
    return _logger is not None and _logger in litellm.callbacks


def uninstall() -> None:
    """Remove the callback from every LiteLLM callback list it was copied into."""
    global _logger
    with _install_lock:
        logger, _logger = _logger, None
        if logger is None:
            return
        for name in (
            "callbacks",
            "input_callback",
            "success_callback",
            "failure_callback",
            "_async_input_callback",
            "_async_success_callback",
            "_async_failure_callback",
        ):
            registered = getattr(litellm, name, None)
            while isinstance(registered, list) and logger in registered:
                registered.remove(logger)


# -- a LiteLLM proxy --------------------------------------------------------------------------

#: Headers the LiteLLM proxy stores with a request's spend log.
SPEND_LOGS_METADATA_HEADER: Final = "x-litellm-spend-logs-metadata"
TAGS_HEADER: Final = "x-litellm-tags"


def proxy_headers(envelope: Envelope | None = None) -> dict[str, str]:
    """Headers that make a LiteLLM proxy record the envelope with the request's spend log:
    ``x-litellm-spend-logs-metadata`` (JSON: ``{"ownership.owner_team": ..., ...}``, stored in
    the spend log's metadata) and ``x-litellm-tags`` (``owner_team:search,...``, the proxy's
    tags: spend per tag, tag budgets). ``envelope`` defaults to the bound one; none: ``{}``.
    Tenant and user are the envelope's keyed hashes, never raw ids."""
    envelope = current() if envelope is None else envelope
    if envelope is None:
        return {}
    fields = envelope.as_dict()
    metadata = {f"ownership.{key}": value for key, value in fields.items()}
    tags = [
        f"{key}:{fields[key]}"
        for key in ("owner_team", "workflow_id", "feature", "tenant")
        if fields.get(key)
    ]
    headers = {SPEND_LOGS_METADATA_HEADER: json.dumps(metadata, separators=(",", ":"))}
    if tags:
        headers[TAGS_HEADER] = ",".join(tags)
    return headers
