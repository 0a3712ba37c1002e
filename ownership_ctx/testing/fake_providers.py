"""A loopback server that speaks enough of four provider APIs for their official SDKs.

    with FakeProviders() as fake:
        client = openai.OpenAI(base_url=fake.openai_url, api_key="sk-test")
        fake.script(429, 500)          # the next two requests fail, then answers resume
        client.chat.completions.create(model="gpt-4o", messages=[...])

Endpoints (JSON and streamed):

- OpenAI (``fake.openai_url``): ``/v1/chat/completions``, ``/v1/responses``, ``/v1/embeddings``
- Anthropic (``fake.url``): ``/v1/messages``
- Gemini (``fake.url``): ``/v1beta/models/{model}:generateContent`` and
  ``:streamGenerateContent?alt=sse``
- Bedrock (``fake.url`` as ``endpoint_url``): ``/model/{id}/converse`` and
  ``/converse-stream`` (AWS event-stream framing)

Every answer carries a realistic usage block derived from one `FakeUsage` profile (cached and
reasoning tokens, cache writes split 5m/1h) in each provider's own convention, the tier the
*server* chose (``fake.tier``; by default the requested one), and a served model name
(``fake.served_models``, e.g. a dated snapshot). ``fake.script(...)`` queues failures: an HTTP
status, ``"drop"`` (close the connection without answering), ``"cut"`` (start a stream and
drop it midway) or a `Raw` body (garbage payloads). Standard library only.
"""

from __future__ import annotations

import dataclasses
import gzip
import json
import re
import socket
import threading
import time
import uuid
from collections import deque
from collections.abc import Iterator, Mapping
from http.server import BaseHTTPRequestHandler
from typing import Any
from urllib.parse import unquote, urlsplit

from .eventstream import encode_event
from .loopback import LoopbackServer

__all__ = ["FakeProviders", "FakeUsage", "Raw", "Step", "serve"]


@dataclasses.dataclass
class FakeUsage:
    """One call's usage in OUR convention; each API reports it in its own."""

    input: int = 1000  # all input, cache reads and writes included
    cache_read: int = 200
    cache_write_5m: int = 60
    cache_write_1h: int = 40
    output: int = 300  # reasoning included
    reasoning: int = 50

    @property
    def cache_write(self) -> int:
        return self.cache_write_5m + self.cache_write_1h

    @property
    def uncached_input(self) -> int:
        return self.input - self.cache_read - self.cache_write


@dataclasses.dataclass
class Raw:
    """Answer the next request with exactly this body."""

    body: bytes
    status: int = 200
    content_type: str = "application/json"


Step = int | str | Raw

_GEMINI = re.compile(r"^/v1[a-z0-9]*/models/([^/:]+):(generateContent|streamGenerateContent)$")
_BEDROCK = re.compile(r"^/model/([^/]+)/(converse|converse-stream)$")
_TEXT = ("Hello", " from", " the fake.")


def api_of(path: str) -> str | None:
    if path.endswith("/chat/completions"):
        return "chat_completions"
    if path.endswith("/responses"):
        return "responses"
    if path.endswith("/embeddings"):
        return "embeddings"
    if path.endswith("/messages"):
        return "messages"
    if _GEMINI.match(path):
        return "generate_content"
    if _BEDROCK.match(path):
        return "converse"
    return None


class FakeProviders(LoopbackServer):
    """The server. Thread-safe; use as a context manager or `start`/`stop`."""

    def __init__(self, port: int = 0, host: str = "127.0.0.1") -> None:
        #: Where `start` listens (port 0: any free port); ``ownership-ctx fake-provider --port``.
        self.host = host
        self.port = port
        self.usage = FakeUsage()
        #: The tier responses report; ``None``: the requested one (OpenAI "auto" -> "default").
        self.tier: str | None = None
        #: requested model -> the model the response says it served.
        self.served_models: dict[str, str] = {}
        self.gzip = False
        self.requests: list[dict[str, Any]] = []
        self._steps: deque[tuple[str | None, Step]] = deque()
        self._lock = threading.Lock()

    # -- lifecycle ---------------------------------------------------------------------

    def handler(self) -> type[BaseHTTPRequestHandler]:
        return type("Handler", (_Handler,), {"fake": self})

    @property
    def openai_url(self) -> str:
        return self.url + "/v1"

    # -- scripting ----------------------------------------------------------------------

    def script(self, *steps: Step, api: str | None = None) -> None:
        """Queue what the next requests (of ``api``, or any) get instead of a normal answer."""
        with self._lock:
            self._steps.extend((api, step) for step in steps)

    def reset(self) -> None:
        with self._lock:
            self._steps.clear()
            self.requests.clear()
        self.usage = FakeUsage()
        self.tier = None
        self.served_models = {}
        self.gzip = False

    def _next_step(self, api: str) -> Step | None:
        with self._lock:
            for i, (only, step) in enumerate(self._steps):
                if only is None or only == api:
                    del self._steps[i]
                    return step
        return None

    def served(self, model: str) -> str:
        return self.served_models.get(model, model)


def _error_body(api: str, status: int) -> tuple[bytes, dict[str, str]]:
    kind = {429: "rate_limit", 500: "server_error", 503: "overloaded"}.get(status, "error")
    headers = {"retry-after-ms": "1", "retry-after": "0"}
    if api == "messages":
        body: dict[str, Any] = {
            "type": "error",
            "error": {"type": f"{kind}_error", "message": "scripted"},
        }
    elif api == "generate_content":
        names = {429: "RESOURCE_EXHAUSTED", 500: "INTERNAL", 503: "UNAVAILABLE"}
        body = {"error": {"code": status, "message": "scripted", "status": names.get(status)}}
    elif api == "converse":
        names = {429: "ThrottlingException", 500: "InternalServerException"}
        name = names.get(status, "ServiceUnavailableException")
        headers["x-amzn-ErrorType"] = f"{name}:http://internal.amazon.com/coral/"
        body = {"message": "scripted"}
    else:
        body = {"error": {"message": "scripted", "type": kind, "code": kind, "param": None}}
    return json.dumps(body).encode(), headers


class _Handler(BaseHTTPRequestHandler):
    fake: FakeProviders
    protocol_version = "HTTP/1.1"
    _rid: str | None = None

    def setup(self) -> None:
        super().setup()
        # Headers and body go out in separate writes: without this, Nagle + delayed ACK add
        # ~40 ms to every keep-alive exchange.
        self.connection.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)

    def log_message(self, format: str, *args: Any) -> None:
        pass  # quiet

    def do_GET(self) -> None:
        self._send(404, b'{"error": {"message": "not found"}}')

    def do_POST(self) -> None:
        parts = urlsplit(self.path)
        path = unquote(parts.path)
        length = int(self.headers.get("content-length") or 0)
        raw = self.rfile.read(length) if length else b""
        try:
            body = json.loads(raw) if raw else {}
        except ValueError:
            body = {}
        api = api_of(path)
        self._rid = uuid.uuid4().hex
        self.fake.requests.append(
            {
                "path": path,
                "query": parts.query,
                "headers": dict(self.headers),
                "json": body,
                "request_id": self._rid,  # the ids below are all made from it
                "time": time.time(),
            }
        )
        if api is None:
            self._send(404, b'{"error": {"message": "not found"}}')
            return
        step = self.fake._next_step(api)
        if step == "drop":
            self.close_connection = True
            self.connection.shutdown(socket.SHUT_RDWR)
            return
        if isinstance(step, int):
            payload, headers = _error_body(api, step)
            self._send(step, payload, headers=headers)
            return
        if isinstance(step, Raw):
            self._send(step.status, step.body, content_type=step.content_type)
            return
        cut = step == "cut"
        if api == "generate_content":
            match = _GEMINI.match(path)
            assert match is not None
            model, method = match.groups()
            if method == "streamGenerateContent":
                self._stream_sse(_gemini_stream(self.fake, model), cut, crlf=True)
            else:
                self._send_json(_gemini_body(self.fake, model, final=True))
        elif api == "converse":
            match = _BEDROCK.match(path)
            assert match is not None
            model, op = match.groups()
            if op == "converse-stream":
                self._stream_frames(_bedrock_frames(self.fake), cut)
            else:
                self._send_json(_bedrock_body(self.fake))
        else:
            streaming = bool(body.get("stream"))
            producer = {
                "chat_completions": (_chat_body, _chat_stream),
                "responses": (_responses_body, _responses_stream),
                "embeddings": (_embeddings_body, None),
                "messages": (_messages_body, _messages_stream),
            }[api]
            if streaming and producer[1] is not None:
                self._stream_sse(producer[1](self.fake, body), cut)
            else:
                self._send_json(producer[0](self.fake, body))

    # -- writing ------------------------------------------------------------------------

    def _common_headers(self) -> None:
        rid = getattr(self, "_rid", None) or uuid.uuid4().hex
        self._rid = None
        self.send_header("x-request-id", f"req_{rid}")
        self.send_header("request-id", f"req_{rid}")
        self.send_header("x-amzn-RequestId", str(uuid.UUID(rid)))
        project = self.headers.get("openai-project")
        if project:  # OpenAI names the project a call was billed to
            self.send_header("openai-project", project)

    def _send(
        self,
        status: int,
        payload: bytes,
        *,
        content_type: str = "application/json",
        headers: Mapping[str, str] | None = None,
    ) -> None:
        encoding = None
        if self.fake.gzip and "gzip" in self.headers.get("accept-encoding", ""):
            payload, encoding = gzip.compress(payload), "gzip"
        self.send_response(status)
        self.send_header("content-type", content_type)
        self.send_header("content-length", str(len(payload)))
        if encoding:
            self.send_header("content-encoding", encoding)
        for key, value in (headers or {}).items():
            self.send_header(key, value)
        self._common_headers()
        self.end_headers()
        self.wfile.write(payload)

    def _send_json(self, body: Mapping[str, Any]) -> None:
        self._send(200, json.dumps(body).encode())

    def _start_chunked(self, content_type: str) -> None:
        self.send_response(200)
        self.send_header("content-type", content_type)
        self.send_header("transfer-encoding", "chunked")
        self._common_headers()
        self.end_headers()

    def _chunk(self, data: bytes) -> None:
        self.wfile.write(f"{len(data):x}\r\n".encode() + data + b"\r\n")
        self.wfile.flush()

    def _stream(self, chunks: Iterator[bytes], content_type: str, cut: bool) -> None:
        self._start_chunked(content_type)
        try:
            items = list(chunks)
            for i, data in enumerate(items):
                if cut and i == len(items) // 2:
                    self.close_connection = True
                    self.connection.shutdown(socket.SHUT_RDWR)
                    return
                self._chunk(data)
                time.sleep(0.001)  # separate TCP segments, as real streams arrive
            self.wfile.write(b"0\r\n\r\n")
            self.wfile.flush()
        except (BrokenPipeError, ConnectionResetError):
            self.close_connection = True  # the client went away: that is its right

    def _stream_sse(self, events: Iterator[str], cut: bool, crlf: bool = False) -> None:
        end = "\r\n\r\n" if crlf else "\n\n"
        self._stream((e.encode() + end.encode() for e in events), "text/event-stream", cut)

    def _stream_frames(self, frames: Iterator[bytes], cut: bool) -> None:
        self._stream(frames, "application/vnd.amazon.eventstream", cut)


# -- OpenAI ----------------------------------------------------------------------------------


def _tier(fake: FakeProviders, body: Mapping[str, Any], default: str | None) -> str | None:
    if fake.tier is not None:
        return fake.tier
    requested = body.get("service_tier")
    return default if requested in (None, "auto") else str(requested)


def _chat_usage(u: FakeUsage) -> dict[str, Any]:
    return {
        "prompt_tokens": u.input,
        "completion_tokens": u.output,
        "total_tokens": u.input + u.output,
        "prompt_tokens_details": {"cached_tokens": u.cache_read, "audio_tokens": 0},
        "completion_tokens_details": {
            "reasoning_tokens": u.reasoning,
            "audio_tokens": 0,
            "accepted_prediction_tokens": 0,
            "rejected_prediction_tokens": 0,
        },
    }


def _chat_body(fake: FakeProviders, body: Mapping[str, Any]) -> dict[str, Any]:
    return {
        "id": f"chatcmpl-{uuid.uuid4().hex[:12]}",
        "object": "chat.completion",
        "created": int(time.time()),
        "model": fake.served(str(body.get("model"))),
        "service_tier": _tier(fake, body, "default"),
        "system_fingerprint": "fp_fake",
        "choices": [
            {
                "index": 0,
                "message": {"role": "assistant", "content": "".join(_TEXT), "refusal": None},
                "finish_reason": "stop",
                "logprobs": None,
            }
        ],
        "usage": _chat_usage(fake.usage),
    }


def _chat_stream(fake: FakeProviders, body: Mapping[str, Any]) -> Iterator[str]:
    include = bool((body.get("stream_options") or {}).get("include_usage"))
    base = {
        "id": f"chatcmpl-{uuid.uuid4().hex[:12]}",
        "object": "chat.completion.chunk",
        "created": int(time.time()),
        "model": fake.served(str(body.get("model"))),
        "service_tier": _tier(fake, body, "default"),
        "system_fingerprint": "fp_fake",
    }
    extra = {"usage": None} if include else {}
    deltas: list[dict[str, Any]] = [{"role": "assistant", "content": ""}]
    deltas += [{"content": text} for text in _TEXT]
    for i, delta in enumerate(deltas):
        finish = "stop" if i == len(deltas) - 1 else None
        choice = {"index": 0, "delta": delta, "finish_reason": finish, "logprobs": None}
        yield "data: " + json.dumps({**base, "choices": [choice], **extra})
    if include:
        yield "data: " + json.dumps({**base, "choices": [], "usage": _chat_usage(fake.usage)})
    yield "data: [DONE]"


def _responses_usage(u: FakeUsage) -> dict[str, Any]:
    return {
        "input_tokens": u.input,
        "input_tokens_details": {"cached_tokens": u.cache_read},
        "output_tokens": u.output,
        "output_tokens_details": {"reasoning_tokens": u.reasoning},
        "total_tokens": u.input + u.output,
    }


def _response_object(
    fake: FakeProviders, body: Mapping[str, Any], rid: str, done: bool
) -> dict[str, Any]:
    text = "".join(_TEXT)
    output = [
        {
            "type": "message",
            "id": "msg_fake",
            "status": "completed",
            "role": "assistant",
            "content": [{"type": "output_text", "text": text, "annotations": []}],
        }
    ]
    return {
        "id": rid,
        "object": "response",
        "created_at": int(time.time()),
        "status": "completed" if done else "in_progress",
        "model": fake.served(str(body.get("model"))),
        "service_tier": _tier(fake, body, "default"),
        "output": output if done else [],
        "parallel_tool_calls": True,
        "tool_choice": "auto",
        "tools": [],
        "usage": _responses_usage(fake.usage) if done else None,
    }


def _responses_body(fake: FakeProviders, body: Mapping[str, Any]) -> dict[str, Any]:
    return _response_object(fake, body, f"resp_{uuid.uuid4().hex[:12]}", True)


def _responses_stream(fake: FakeProviders, body: Mapping[str, Any]) -> Iterator[str]:
    rid = f"resp_{uuid.uuid4().hex[:12]}"

    def event(kind: str, **fields: Any) -> str:
        return f"event: {kind}\ndata: " + json.dumps({"type": kind, **fields})

    created = _response_object(fake, body, rid, False)
    yield event("response.created", response=created, sequence_number=0)
    for i, text in enumerate(_TEXT):
        yield event(
            "response.output_text.delta",
            item_id="msg_fake",
            output_index=0,
            content_index=0,
            delta=text,
            sequence_number=i + 1,
        )
    done = _response_object(fake, body, rid, True)
    yield event("response.completed", response=done, sequence_number=len(_TEXT) + 1)


def _embeddings_body(fake: FakeProviders, body: Mapping[str, Any]) -> dict[str, Any]:
    return {
        "object": "list",
        "data": [{"object": "embedding", "index": 0, "embedding": [0.1, 0.2, 0.3]}],
        "model": fake.served(str(body.get("model"))),
        "usage": {"prompt_tokens": fake.usage.input, "total_tokens": fake.usage.input},
    }


# -- Anthropic -------------------------------------------------------------------------------


def _anthropic_usage(fake: FakeProviders, output: int | None = None) -> dict[str, Any]:
    u = fake.usage
    return {
        "input_tokens": u.uncached_input,  # Anthropic: input EXCLUDES cache reads and writes
        "cache_creation_input_tokens": u.cache_write,
        "cache_read_input_tokens": u.cache_read,
        "cache_creation": {
            "ephemeral_5m_input_tokens": u.cache_write_5m,
            "ephemeral_1h_input_tokens": u.cache_write_1h,
        },
        "output_tokens": u.output if output is None else output,
        "service_tier": fake.tier or "standard",
    }


def _messages_body(fake: FakeProviders, body: Mapping[str, Any]) -> dict[str, Any]:
    return {
        "id": f"msg_{uuid.uuid4().hex[:12]}",
        "type": "message",
        "role": "assistant",
        "model": fake.served(str(body.get("model"))),
        "content": [{"type": "text", "text": "".join(_TEXT)}],
        "stop_reason": "end_turn",
        "stop_sequence": None,
        "usage": _anthropic_usage(fake),
    }


def _messages_stream(fake: FakeProviders, body: Mapping[str, Any]) -> Iterator[str]:
    def event(kind: str, **fields: Any) -> str:
        return f"event: {kind}\ndata: " + json.dumps({"type": kind, **fields})

    message = _messages_body(fake, body)
    message.update(content=[], stop_reason=None, usage=_anthropic_usage(fake, output=1))
    yield event("message_start", message=message)
    yield event("content_block_start", index=0, content_block={"type": "text", "text": ""})
    yield event("ping")
    for text in _TEXT:
        yield event("content_block_delta", index=0, delta={"type": "text_delta", "text": text})
    yield event("content_block_stop", index=0)
    yield event(
        "message_delta",
        delta={"stop_reason": "end_turn", "stop_sequence": None},
        usage={"output_tokens": fake.usage.output},
    )
    yield event("message_stop")


# -- Gemini ----------------------------------------------------------------------------------


def _gemini_body(
    fake: FakeProviders, model: str, final: bool, text: str | None = None, output: int = 0
) -> dict[str, Any]:
    u = fake.usage
    candidates = (u.output - u.reasoning) if final else output
    usage: dict[str, Any] = {
        "promptTokenCount": u.input,  # Gemini: prompt INCLUDES cached content
        "candidatesTokenCount": candidates,
        "totalTokenCount": u.input + candidates + (u.reasoning if final else 0),
        "cachedContentTokenCount": u.cache_read,
        "promptTokensDetails": [{"modality": "TEXT", "tokenCount": u.input}],
        "cacheTokensDetails": [{"modality": "TEXT", "tokenCount": u.cache_read}],
    }
    if final:
        usage["thoughtsTokenCount"] = u.reasoning
    if fake.tier is not None:
        usage["serviceTier"] = fake.tier
    candidate: dict[str, Any] = {
        "content": {"role": "model", "parts": [{"text": text or "".join(_TEXT)}]},
        "index": 0,
    }
    if final:
        candidate["finishReason"] = "STOP"
    return {
        "candidates": [candidate],
        "usageMetadata": usage,
        "modelVersion": fake.served(model),
        "responseId": "gemini-fake-response",
    }


def _gemini_stream(fake: FakeProviders, model: str) -> Iterator[str]:
    for i, text in enumerate(_TEXT):
        final = i == len(_TEXT) - 1
        yield "data: " + json.dumps(_gemini_body(fake, model, final, text, output=i + 1))


# -- Bedrock ---------------------------------------------------------------------------------


def _bedrock_usage(u: FakeUsage) -> dict[str, Any]:
    return {
        "inputTokens": u.uncached_input,  # Bedrock: input EXCLUDES cache reads and writes
        "outputTokens": u.output,
        "totalTokens": u.input + u.output,
        "cacheReadInputTokens": u.cache_read,
        "cacheWriteInputTokens": u.cache_write,
        "cacheDetails": [
            {"ttl": "5m", "inputTokens": u.cache_write_5m},
            {"ttl": "1h", "inputTokens": u.cache_write_1h},
        ],
    }


def _bedrock_body(fake: FakeProviders) -> dict[str, Any]:
    return {
        "output": {"message": {"role": "assistant", "content": [{"text": "".join(_TEXT)}]}},
        "stopReason": "end_turn",
        "usage": _bedrock_usage(fake.usage),
        "metrics": {"latencyMs": 12},
        "serviceTier": {"type": fake.tier or "default"},
    }


def _bedrock_frames(fake: FakeProviders) -> Iterator[bytes]:
    yield encode_event("messageStart", {"role": "assistant"})
    for text in _TEXT:
        yield encode_event("contentBlockDelta", {"contentBlockIndex": 0, "delta": {"text": text}})
    yield encode_event("contentBlockStop", {"contentBlockIndex": 0})
    yield encode_event("messageStop", {"stopReason": "end_turn"})
    yield encode_event(
        "metadata",
        {
            "usage": _bedrock_usage(fake.usage),
            "metrics": {"latencyMs": 12},
            "serviceTier": {"type": fake.tier or "default"},
        },
    )


def serve(port: int, host: str = "127.0.0.1", out: Any = None) -> None:
    """Run the fake providers on ``host:port`` until interrupted (SIGINT / SIGTERM): what
    ``ownership-ctx fake-provider`` runs. Raises `OSError` when the port is taken."""
    import signal
    import sys

    stream = out or sys.stdout
    stop = threading.Event()
    fake = FakeProviders(port, host).start()
    previous = signal.signal(signal.SIGTERM, lambda *_: stop.set())
    try:
        stream.write(
            f"fake LLM providers on {fake.url} (Ctrl-C stops):\n"
            f"  OPENAI_BASE_URL={fake.openai_url}\n"
            f"  ANTHROPIC_BASE_URL={fake.url}\n"
            f"  Gemini: http_options base_url={fake.url}; Bedrock: endpoint_url={fake.url}\n"
        )
        stream.flush()
        while not stop.wait(0.5):
            pass
    except KeyboardInterrupt:
        pass
    finally:
        signal.signal(signal.SIGTERM, previous)
        fake.stop()
