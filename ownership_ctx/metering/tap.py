"""Watch a response body go by without changing it, keeping only what metering needs.

The caller's SDK reads the body as usual; each chunk is handed to a `BodyTap` on its way
through. For SSE streams the tap keeps a few raw ``data:`` payloads (the first, the latest one
mentioning usage, Anthropic's ``message_start``, an error) and notices terminal markers; JSON
bodies are kept whole (bounded) to be parsed once at the end. Nothing is parsed per chunk
beyond a byte split, so metering adds almost nothing while the caller iterates.

The tap finishes its `Attempt` exactly once: at end of body (``ok``), on a read error
(``error``), or when the caller closes the body early (``cancelled``, unless the stream had
already delivered its terminal event: SDKs stop reading after ``[DONE]``/``message_stop``).
A cancelled stream's missing usage is estimated (`estimate`): the provider bills it anyway.
"""

from __future__ import annotations

import zlib
from typing import Any, Final

from . import estimate
from .normalize import Parsed, merge_stream, parse_body
from .recorder import Attempt, failed

__all__ = ["BodyTap"]

_MAX_BODY: Final = 16 * 1024 * 1024
_MAX_LINE: Final = 8 * 1024 * 1024
# JSON string tokens: text that merely mentions them arrives escaped (\"message_stop\"), so it
# never matches. OpenAI's end marker is not JSON: only a whole `data: [DONE]` line ends a stream.
_DONE: Final = b"[DONE]"
_TERMINAL: Final = (
    b'"message_stop"',
    b'"response.completed"',
    b'"response.incomplete"',
    b'"response.failed"',
    b'"finishReason"',
)


class _Zlib:
    """gzip / deflate, whichever framing the server used (httpx does the same)."""

    def __init__(self) -> None:
        self._d = zlib.decompressobj(zlib.MAX_WBITS | 32)

    def decode(self, data: bytes) -> bytes:
        return self._d.decompress(data)


def _decoder(encoding: str, module: Any) -> Any:
    encoding = encoding.strip().lower()
    if encoding in ("", "identity"):
        return None
    if encoding in ("gzip", "deflate"):
        return _Zlib()
    # br / zstd: the HTTP client's own decoders, when its optional packages are installed.
    decoders = getattr(getattr(module, "_decoders", None), "SUPPORTED_DECODERS", {})
    cls = decoders.get(encoding)
    if cls is None:
        raise LookupError(encoding)
    return cls()


class BodyTap:
    __slots__ = (
        "_buf",
        "_buflen",
        "_decoder",
        "_parts",
        "_size",
        "api",
        "attempt",
        "error",
        "first",
        "http_status",
        "problems",
        "request_id",
        "sse",
        "start",
        "streamed",
        "terminal",
        "usage",
    )

    def __init__(
        self,
        attempt: Attempt,
        *,
        http_status: int,
        sse: bool,
        content_encoding: str,
        request_id: str | None,
        module: Any = None,
    ) -> None:
        self.attempt = attempt
        self.api = attempt.api
        self.http_status = http_status
        self.sse = sse
        self.request_id = request_id
        self.problems: list[str] = []
        self._buf: list[bytes] = []  # the pieces of an unfinished SSE line
        self._buflen = 0
        self._parts: list[bytes] | None = []
        self._size = 0
        self.first: bytes | None = None
        self.start: bytes | None = None
        self.usage: bytes | None = None
        self.error: bytes | None = None
        self.terminal = False
        self.streamed = 0  # characters of output text the caller received
        try:
            self._decoder = _decoder(content_encoding, module)
        except Exception:
            self._decoder = None
            self._parts = None
            self.problems.append("content_encoding_unsupported")

    # -- called per chunk, on the caller's path -----------------------------------------

    def feed(self, chunk: bytes) -> None:
        if self.attempt.done or self._parts is None:
            return
        try:
            if self._decoder is not None:
                chunk = self._decoder.decode(chunk)
            if not self.sse:
                self._size += len(chunk)
                if self._size > _MAX_BODY:
                    self._parts = None
                    self.problems.append("body_too_large")
                else:
                    self._parts.append(chunk)
                return
            if b"\n" not in chunk:
                # Still inside one line: keep the piece; joining now would be quadratic for
                # long events (partial images, a completed response with its whole output).
                self._buflen += len(chunk)
                if self._buflen > _MAX_LINE:
                    self._buf, self._buflen = [], 0
                    self.problems.append("stream_line_too_large")
                else:
                    self._buf.append(chunk)
                return
            if self._buf:
                chunk = b"".join(self._buf) + chunk
            lines = chunk.split(b"\n")
            rest = lines.pop()
            self._buf, self._buflen = ([rest], len(rest)) if rest else ([], 0)
            for line in lines:
                if line.startswith(b"data:"):
                    self._data(line[5:].strip())
        except Exception:
            self._parts = None
            self.problems.append("body_undecodable")

    def _data(self, payload: bytes) -> None:
        if self.first is None:
            self.first = payload
        self.streamed += estimate.streamed_chars(self.api, payload)
        if b'"usage' in payload:
            self.usage = payload
            if self.start is None and b'"message_start"' in payload:
                self.start = payload
        if payload.startswith(b'{"error"') or b'"type":"error"' in payload[:40]:
            self.error = payload
        if not self.terminal:
            if payload == _DONE:
                self.terminal = True
                return
            for marker in _TERMINAL:
                if marker in payload:
                    self.terminal = True
                    break

    # -- ends -----------------------------------------------------------------------------

    def eof(self) -> None:
        last = b"".join(self._buf)
        if self.sse and last.startswith(b"data:"):
            self._data(last[5:].strip())  # a last event without its blank line
        self._finish("ok", complete=True)

    def fail(self, exc: BaseException) -> None:
        self._finish("error", complete=False, error_type=type(exc).__name__)

    def close(self) -> None:
        if not self.attempt.done:
            if self.http_status >= 400:
                self._finish("error", complete=False)  # an error the SDK closed unread
            elif self.sse and self.terminal:
                self._finish("ok", complete=True)
            else:
                self._finish("cancelled", complete=False)

    def _finish(self, status: str, *, complete: bool, error_type: str | None = None) -> None:
        if self.attempt.done:
            return
        try:
            parsed = self._parse(complete, status_ok=self.http_status < 400)
        except Exception:
            failed("parsing a response body")
            parsed = Parsed(usage_status="invalid", problems=["metering_parse_failed"])
        parsed.problems[:0] = self.problems
        if status == "cancelled" and self.sse:
            try:
                parsed = estimate.apply(
                    parsed,
                    prompt=estimate.prompt_chars(self.attempt.scope.request_body),
                    streamed=self.streamed,
                    # Anthropic's message_start says output_tokens 1 until message_delta.
                    output_reported=not (self.api == "messages" and self.usage is self.start),
                )
            except Exception:
                failed("estimating a cancelled stream")
        if status == "ok" and self.http_status >= 400:
            status = "error"
        if status == "error" and error_type is None and self.http_status >= 400:
            error_type = parsed.error_type or f"http_{self.http_status}"
        self.attempt.finish(
            status,
            parsed,
            http_status=self.http_status,
            error_type=error_type,
            provider_request_id=self.request_id,
        )

    def _parse(self, complete: bool, *, status_ok: bool) -> Parsed:
        if self._parts is None:
            return Parsed(usage_status="invalid")
        if self.sse:
            kept = []
            for payload in (self.first, self.start, self.usage, self.error):
                if payload is not None and payload != _DONE and payload not in kept:
                    kept.append(payload)
            return merge_stream(self.api, kept, complete)
        if not complete:
            return Parsed()  # the caller stopped reading a JSON body: nothing to price
        return parse_body(self.api, b"".join(self._parts), status_ok=status_ok)
