"""Estimate the usage of a stream the caller cancelled, so that its cost is not null.

A provider bills a cancelled stream for the whole prompt and for every token it generated
before it noticed the cancellation. Most streams report usage only in their last event, so
a stream abandoned halfway has none (OpenAI, Bedrock), or only the prompt and a placeholder
output count (Anthropic's ``message_start``). Recording such a call with cost null would
under-report what the provider bills; recording a guess as if it were reported would hide
that it is a guess. So it is estimated, and marked ``usage_status="estimated"``:

- the prompt from the request body: the characters of its text (messages, system prompt,
  tools; not image or file data) at `CHARS_PER_TOKEN` characters per token, when the provider
  did not report it;
- the output from the text actually streamed to the caller, the same way, when the provider's
  own count (if any) is below it.

Counts the provider did report are kept (Gemini's chunks carry cumulative usage: nothing is
estimated there). The estimate is a floor, not a bill: output generated after the caller's
last read is not seen. Reports show estimated spend apart from reported spend.

Streamed text is counted on the caller's path with one regex search per ``data:`` event
(about half a microsecond on a chat chunk, measured against the tap without it), in UTF-8
bytes with each escape as one character; the request body is only parsed when a stream is
cancelled.
"""

from __future__ import annotations

import json
import re
from collections.abc import Mapping
from typing import Any, Final

from .normalize import Parsed
from .usage import Usage

__all__ = ["CHARS_PER_TOKEN", "apply", "prompt_chars", "streamed_chars", "tokens"]

#: The usual rule of thumb for English text with the providers' BPE tokenizers.
CHARS_PER_TOKEN: Final = 4

# Which JSON string fields of an SSE event carry streamed output, per API.
# A JSON string, unrolled (no per-character alternation): a few hundred ns per event.
_STRING: Final = rb': ?"([^"\\]*(?:\\.[^"\\]*)*)"'
_STREAMED: Final = {
    "chat_completions": re.compile(rb'"(?:content|refusal|arguments|reasoning_content)"' + _STRING),
    "responses": re.compile(rb'"delta"' + _STRING),
    "messages": re.compile(rb'"(?:text|partial_json|thinking)"' + _STRING),
    "generate_content": re.compile(rb'"text"' + _STRING),
}
# Request keys that hold the prompt; under them every string counts except these keys'.
_PROMPT_KEYS: Final = frozenset(
    {
        "messages",
        "input",
        "instructions",
        "system",
        "contents",
        "systemInstruction",
        "system_instruction",
        "prompt",
        "tools",
        "toolConfig",
    }
)
_NOT_TEXT: Final = frozenset(
    {
        "role",
        "type",
        "id",
        "tool_call_id",
        "cache_control",
        "data",
        "url",
        "image_url",
        "bytes",
        "inlineData",
        "inline_data",
        "fileData",
        "file_data",
        "mimeType",
        "media_type",
    }
)


def tokens(chars: int) -> int:
    """Estimated tokens for ``chars`` characters of text (rounded up)."""
    return -(-chars // CHARS_PER_TOKEN)


def streamed_chars(api: str, payload: bytes) -> int:
    """Characters of output text in one SSE ``data:`` payload of ``api``."""
    pattern = _STREAMED.get(api)
    if pattern is None:
        return 0
    total = 0
    for raw in pattern.findall(payload):
        # An escape (\n, \", \u00e9) is one character however it is spelled: close enough.
        total += len(raw) - raw.count(b"\\") if b"\\" in raw else len(raw)
    return total


def prompt_chars(body: Any) -> int | None:
    """Characters of prompt text in a request body (JSON bytes or text, or an already decoded
    mapping); ``None`` when the body is unknown or not a JSON object."""
    if isinstance(body, (bytes, bytearray, str)):
        try:
            body = json.loads(body)
        except (ValueError, RecursionError):
            return None
    if not isinstance(body, Mapping):
        return None
    return sum(_text_chars(v) for k, v in body.items() if k in _PROMPT_KEYS)


def _text_chars(value: Any, depth: int = 0) -> int:
    if isinstance(value, str):
        return len(value)
    if depth > 32:
        return 0
    if isinstance(value, Mapping):
        return sum(_text_chars(v, depth + 1) for k, v in value.items() if k not in _NOT_TEXT)
    if isinstance(value, (list, tuple)):
        return sum(_text_chars(v, depth + 1) for v in value)
    return 0


def apply(
    parsed: Parsed, *, prompt: int | None, streamed: int, output_reported: bool = True
) -> Parsed:
    """Fill in what a cancelled stream's provider did not report (see the module doc).

    ``prompt``: characters of the request's prompt (``None``: unknown); ``streamed``:
    characters of output the caller received; ``output_reported``: whether the provider's
    output count, if any, covers what was streamed (False for Anthropic's ``message_start``
    placeholder).
    """
    usage = parsed.usage
    if usage is None:
        if parsed.usage_status == "invalid":
            return parsed  # garbage is not estimated over
        if prompt is None:
            parsed.problems.append("usage_not_estimated:request_body_unknown")
            return parsed
        parsed.usage = Usage(input_tokens=tokens(prompt), output_tokens=tokens(streamed))
        parsed.usage_status = "estimated"
        parsed.problems.append("usage_estimated")
        return parsed
    changed = False
    if usage.input_tokens == 0 and prompt:
        usage.input_tokens = tokens(prompt)
        changed = True
    estimated_output = tokens(streamed)
    if not output_reported and estimated_output > usage.output_tokens:
        usage.output_tokens = estimated_output
        changed = True
    if changed:
        parsed.usage_status = "estimated"
        parsed.problems.append("usage_estimated")
    return parsed
