"""Meter at the HTTP transport of an httpx (or httpx2) client: every attempt is seen.

The OpenAI, Anthropic and Google Gen AI SDKs send each HTTP attempt, retries included,
through their client's transport. `MeteredTransport` wraps that transport: it recognizes the
metered endpoints by path, opens an `Attempt`, and hands the response body to a `BodyTap` as
the SDK reads it. Bodies pass through byte for byte and are never read ahead, except error
responses (4xx/5xx), which are small and read at once so the failed attempt is recorded even
when the SDK drops the response without reading it.

httpx and httpx2 (a drop-in fork under another name, used by recent SDKs) have the same
transport API but distinct classes, and the client asserts the stream's base class, so the
wrappers are built per module on first use.
"""

from __future__ import annotations

import contextlib
import re
from collections.abc import AsyncIterator, Iterator
from typing import Any, Final

from .billing import from_headers, with_scope
from .handoff import claim
from .recorder import Attempt, current_scope, failed, open_scope
from .tap import BodyTap

__all__ = ["classes_for", "endpoint", "wrapper_classes"]

_REQUEST_IDS: Final = ("x-request-id", "request-id", "x-amzn-requestid", "x-goog-request-id")
_MODEL_IN_BODY = re.compile(rb'"model"\s*:\s*"([^"\\]{1,128})"')
_GEMINI_MODEL = re.compile(r"/(?:models|tunedModels)/([^/:]+):")
_classes: dict[str, tuple[type[Any], type[Any]]] = {}


def endpoint(method: str, path: str) -> str | None:
    """The metered API an HTTP request is for, or ``None`` (list models, files, ...)."""
    if method != "POST":
        return None
    if path.endswith("/chat/completions"):
        return "chat_completions"
    if path.endswith("/responses"):
        return "responses"
    if path.endswith("/embeddings"):
        return "embeddings"
    if path.endswith("/messages"):
        return "messages"
    if path.endswith(":generateContent") or path.endswith(":streamGenerateContent"):
        return "generate_content"
    return None


def _request_model(request: Any, api: str, path: str) -> str | None:
    if api == "generate_content":
        found = _GEMINI_MODEL.search(path)
        return found.group(1) if found else None
    try:
        body = request.content
    except Exception:  # a streamed request body: not read here
        return None
    match = _MODEL_IN_BODY.search(body) if isinstance(body, bytes) else None
    return match.group(1).decode("utf-8", "replace") if match else None


def _request_body(request: Any) -> bytes | None:
    """The request's JSON body, kept by reference to estimate the prompt of a stream that is
    cancelled (`estimate`); ``None`` for a streamed body, which is never read here."""
    try:
        body = request.content
    except Exception:
        return None
    return body if isinstance(body, bytes) else None


def _start(request: Any, provider: str) -> Attempt | None:
    try:
        path = request.url.path
        api = endpoint(request.method, path)
        if api is None:
            return None
        scope = current_scope()
        if scope is None:
            # Not inside an instrumented SDK call (a bare httpx client): one scope per attempt,
            # numbered from the Stainless SDKs' retry header when present.
            scope = open_scope()
            retries = request.headers.get("x-stainless-retry-count", "0")
            scope.attempts = int(retries) if retries.isdigit() else 0
        scope.request_body = _request_body(request)
        if scope.request_model is None:
            scope.request_model = _request_model(request, api, path)
        claim()  # a library callback (LiteLLM) watching this attempt leaves it to us
        attempt = Attempt(scope, scope.next_attempt(), provider, api, "httpx")
        attempt.billing = from_headers(request.headers)
        return attempt
    except Exception:
        failed("starting an attempt")
        return None


def _tap(attempt: Attempt, response: Any, module: Any) -> BodyTap:
    headers = response.headers
    content_type = headers.get("content-type", "")
    sse = content_type.startswith("text/event-stream")
    attempt.streaming = sse
    project = headers.get("openai-project")
    if project:
        attempt.billing = with_scope(attempt.billing, project)
    request_id = None
    for name in _REQUEST_IDS:
        request_id = headers.get(name)
        if request_id:
            break
    return BodyTap(
        attempt,
        http_status=response.status_code,
        sse=sse,
        content_encoding=headers.get("content-encoding", ""),
        request_id=request_id[:128] if request_id else None,
        module=module,
    )


def wrapper_classes() -> list[type[Any]]:
    """Every transport wrapper class built so far (to recognize and unwrap them)."""
    return [cls for pair in _classes.values() for cls in pair]


def classes_for(module: Any) -> tuple[type[Any], type[Any]]:
    """(sync transport, async transport) wrapper classes for ``module`` (httpx or httpx2)."""
    name = module.__name__
    if name in _classes:
        return _classes[name]

    class MeteredStream(module.SyncByteStream):  # type: ignore[misc]
        def __init__(self, inner: Any, tap: BodyTap) -> None:
            self._inner, self._tap = inner, tap

        def __iter__(self) -> Iterator[bytes]:
            tap = self._tap
            try:
                for chunk in self._inner:
                    tap.feed(chunk)
                    yield chunk
            except GeneratorExit:
                tap.close()
                raise
            except BaseException as exc:
                tap.fail(exc)
                raise
            tap.eof()

        def close(self) -> None:
            try:
                self._tap.close()
            finally:
                self._inner.close()

        def __del__(self) -> None:
            # Dropped without being read to the end or closed: still recorded (cancelled).
            with contextlib.suppress(Exception):
                self._tap.close()

    class AsyncMeteredStream(module.AsyncByteStream):  # type: ignore[misc]
        def __init__(self, inner: Any, tap: BodyTap) -> None:
            self._inner, self._tap = inner, tap

        async def __aiter__(self) -> AsyncIterator[bytes]:
            tap = self._tap
            try:
                async for chunk in self._inner:
                    tap.feed(chunk)
                    yield chunk
            except GeneratorExit:
                tap.close()
                raise
            except BaseException as exc:
                tap.fail(exc)
                raise
            tap.eof()

        async def aclose(self) -> None:
            try:
                self._tap.close()
            finally:
                await self._inner.aclose()

        def __del__(self) -> None:
            with contextlib.suppress(Exception):
                self._tap.close()

    class MeteredTransport(module.BaseTransport):  # type: ignore[misc]
        """Wraps a transport; meters the provider endpoints, passes everything through."""

        def __init__(self, inner: Any, provider: str) -> None:
            self.inner, self.provider = inner, provider

        def handle_request(self, request: Any) -> Any:
            attempt = _start(request, self.provider)
            if attempt is None:
                return self.inner.handle_request(request)
            try:
                response = self.inner.handle_request(request)
            except BaseException as exc:
                attempt.finish("error", None, error_type=type(exc).__name__)
                raise
            try:
                tap = _tap(attempt, response, module)
            except Exception:
                failed("tapping a response")
                return response
            # Error bodies too are only watched, never read ahead: an SDK that closes a
            # retryable error unread must be able to retry at once (the tap then records the
            # attempt as an error when the body is closed or dropped).
            response.stream = MeteredStream(response.stream, tap)
            return response

        def close(self) -> None:
            self.inner.close()

    class AsyncMeteredTransport(module.AsyncBaseTransport):  # type: ignore[misc]
        def __init__(self, inner: Any, provider: str) -> None:
            self.inner, self.provider = inner, provider

        async def handle_async_request(self, request: Any) -> Any:
            attempt = _start(request, self.provider)
            if attempt is None:
                return await self.inner.handle_async_request(request)
            try:
                response = await self.inner.handle_async_request(request)
            except BaseException as exc:
                attempt.finish("error", None, error_type=type(exc).__name__)
                raise
            try:
                tap = _tap(attempt, response, module)
            except Exception:
                failed("tapping a response")
                return response
            response.stream = AsyncMeteredStream(response.stream, tap)
            return response

        async def aclose(self) -> None:
            await self.inner.aclose()

    _classes[name] = (MeteredTransport, AsyncMeteredTransport)
    return _classes[name]
