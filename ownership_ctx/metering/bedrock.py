"""Meter boto3's ``bedrock-runtime`` Converse / ConverseStream through botocore event hooks.

Hooks are registered on the one client's event system (no global patching):

- ``before-parameter-build``: once per call, in the caller's thread: open the call scope
  (``call_id``, envelope, requested ``modelId``) and keep it in the request context;
- ``request-created``: once per HTTP attempt (botocore re-creates the request per retry):
  start an `Attempt`;
- ``response-received``: once per attempt, with the parsed response or the exception:
  finish it, or for ConverseStream wrap the event stream so the attempt finishes when the
  caller has read (or abandoned) it.

Bedrock responses do not name the model; the served model is the requested ``modelId``.
"""

from __future__ import annotations

import contextlib
from collections.abc import Iterator, Mapping
from typing import Any, Final

from .billing import Billing, request_metadata
from .handoff import claim
from .normalize import Parsed, parse_json
from .recorder import Attempt, CallScope, failed, open_scope

__all__ = ["MeteredEventStream", "instrument_bedrock", "uninstrument_bedrock"]

_SCOPE: Final = "ownership_ctx.metering.scope"
_ATTEMPT: Final = "ownership_ctx.metering.attempt"
_OPS: Final = ("Converse", "ConverseStream")
_MARK: Final = "_ownership_ctx_metered"


def instrument_bedrock(client: Any, provider: str = "aws.bedrock") -> None:
    if getattr(client.meta, _MARK, False):
        return
    if client.meta.service_model.service_name != "bedrock-runtime":
        raise TypeError("ownership_ctx.metering instruments only the bedrock-runtime client")
    region = getattr(client.meta, "region_name", None)
    hooks = _Hooks(provider, Billing(region=region if isinstance(region, str) else None))
    events = client.meta.events
    for op in _OPS:
        events.register(f"before-parameter-build.bedrock-runtime.{op}", hooks.before_call)
        events.register(f"request-created.bedrock-runtime.{op}", hooks.request_created)
        events.register(f"response-received.bedrock-runtime.{op}", hooks.response_received)
    setattr(client.meta, _MARK, hooks)


def uninstrument_bedrock(client: Any) -> None:
    """Remove the hooks `instrument_bedrock` registered (no-op when there are none)."""
    hooks = getattr(client.meta, _MARK, None)
    if not isinstance(hooks, _Hooks):
        return
    events = client.meta.events
    for op in _OPS:
        events.unregister(f"before-parameter-build.bedrock-runtime.{op}", hooks.before_call)
        events.unregister(f"request-created.bedrock-runtime.{op}", hooks.request_created)
        events.unregister(f"response-received.bedrock-runtime.{op}", hooks.response_received)
    delattr(client.meta, _MARK)


class _Hooks:
    def __init__(self, provider: str, billing: Billing) -> None:
        self.provider = provider
        self.billing = billing

    def before_call(self, params: dict[str, Any], context: dict[str, Any], **_: Any) -> None:
        try:
            model = params.get("modelId")
            scope = context[_SCOPE] = open_scope(model if isinstance(model, str) else None)
            if scope.envelope is not None:
                # The owner rides in the request so that Bedrock's invocation logs carry it
                # too (the one per-request record AWS keeps): see docs/reconciliation.md.
                existing = params.get("requestMetadata")
                merged = request_metadata(
                    existing if isinstance(existing, Mapping) else None,
                    scope.envelope.as_dict(),
                )
                if merged is not None:
                    params["requestMetadata"] = merged
        except Exception:
            failed("bedrock before-parameter-build")

    def request_created(self, request: Any, operation_name: str, **_: Any) -> None:
        try:
            context = request.context
            scope: CallScope | None = context.get(_SCOPE)
            if scope is None:
                scope = context[_SCOPE] = open_scope()
            claim()  # a library callback (LiteLLM) watching this attempt leaves it to us
            attempt = Attempt(scope, scope.next_attempt(), self.provider, "converse", "botocore")
            attempt.billing = self.billing
            attempt.streaming = operation_name == "ConverseStream"
            context[_ATTEMPT] = attempt
            scope.request_body = request.body  # JSON: a cancelled stream's prompt estimate
        except Exception:
            failed("bedrock request-created")

    def response_received(
        self,
        response_dict: Mapping[str, Any] | None,
        parsed_response: dict[str, Any] | None,
        context: dict[str, Any],
        exception: BaseException | None,
        **_: Any,
    ) -> None:
        attempt: Attempt | None = context.pop(_ATTEMPT, None)
        if attempt is None:
            return
        try:
            model = attempt.scope.request_model
            if exception is not None or response_dict is None or parsed_response is None:
                name = type(exception).__name__ if exception is not None else "no_response"
                attempt.finish("error", None, error_type=name)
                return
            status = int(response_dict.get("status_code") or 0)
            headers = response_dict.get("headers") or {}
            request_id = headers.get("x-amzn-requestid")
            if status >= 300:
                error = parsed_response.get("Error")
                code = error.get("Code") if isinstance(error, Mapping) else None
                attempt.finish(
                    "error",
                    Parsed(model=model),
                    http_status=status,
                    error_type=str(code)[:64] if code else f"http_{status}",
                    provider_request_id=request_id,
                )
                return
            stream = parsed_response.get("stream")
            if attempt.streaming and stream is not None:
                parsed_response["stream"] = MeteredEventStream(stream, attempt, status, request_id)
                return
            parsed = parse_json("converse", parsed_response)
            parsed.model = model  # Converse never names the model: it served the requested one
            attempt.finish("ok", parsed, http_status=status, provider_request_id=request_id)
        except Exception:
            failed("bedrock response-received")


class MeteredEventStream:
    """botocore's `EventStream`, passed through event by event; meters the ``metadata`` event.

    Everything else (``close``, ``get_initial_response``, ...) goes to the wrapped stream.
    """

    def __init__(self, inner: Any, attempt: Attempt, status: int, request_id: str | None) -> None:
        self._inner = inner
        self._attempt = attempt
        self._status = status
        self._request_id = request_id
        self._metadata: Any = None
        self._stopped = False
        self._streamed = 0  # characters of output text the caller received

    def __iter__(self) -> Iterator[Any]:
        try:
            for event in self._inner:
                if isinstance(event, Mapping):
                    if "metadata" in event:
                        self._metadata = event["metadata"]
                    elif "messageStop" in event:
                        self._stopped = True
                    elif "contentBlockDelta" in event:
                        self._streamed += _delta_chars(event["contentBlockDelta"])
                yield event
        except GeneratorExit:
            self._finish("cancelled")
            raise
        except BaseException as exc:
            self._finish("error", type(exc).__name__)
            raise
        self._finish("ok")

    def close(self) -> None:
        try:
            self._finish("cancelled")
        finally:
            self._inner.close()

    def __getattr__(self, name: str) -> Any:
        return getattr(self._inner, name)

    def __del__(self) -> None:
        # Abandoned without being read to the end or closed: still recorded.
        with contextlib.suppress(Exception):
            self._finish("cancelled")

    def _finish(self, status: str, error_type: str | None = None) -> None:
        attempt = self._attempt
        if attempt.done:
            return
        if status == "cancelled" and self._metadata is not None:
            status = "ok"  # the caller stopped after the last event
        try:
            md = self._metadata
            if isinstance(md, Mapping):
                parsed = parse_json("converse", {"usage": md.get("usage"), **_tier(md)})
                if status != "ok" and parsed.usage is not None:
                    parsed.usage_status = "partial"
            else:
                parsed = Parsed()
                if status == "ok":
                    parsed.problems.append("usage_missing")
            parsed.model = attempt.scope.request_model
            if status == "cancelled":
                from . import estimate  # here: only a cancelled stream needs it

                parsed = estimate.apply(
                    parsed,
                    prompt=estimate.prompt_chars(attempt.scope.request_body),
                    streamed=self._streamed,
                )
        except Exception:
            failed("bedrock stream")
            parsed = Parsed(usage_status="invalid")
        attempt.finish(
            status,
            parsed,
            http_status=self._status,
            error_type=error_type,
            provider_request_id=self._request_id,
        )


def _tier(md: Mapping[str, Any]) -> dict[str, Any]:
    tier = md.get("serviceTier")
    return {"serviceTier": tier} if tier is not None else {}


def _delta_chars(block: Any) -> int:
    """Characters of output in a ``contentBlockDelta`` (text, tool input, reasoning)."""
    delta = block.get("delta") if isinstance(block, Mapping) else None
    if not isinstance(delta, Mapping):
        return 0
    total = 0
    for key in ("text", "toolUse", "reasoningContent"):
        value = delta.get(key)
        if isinstance(value, Mapping):
            value = value.get("input", value.get("text"))
        if isinstance(value, str):
            total += len(value)
    return total
