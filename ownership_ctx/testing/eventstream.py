"""The AWS event-stream binary framing (what Bedrock's ConverseStream sends), encoder side.

A message is: prelude (total length, headers length: big-endian uint32 each; CRC32 of those 8
bytes), headers, payload, CRC32 of everything before it. A header is: name length (uint8),
name, value type (7 = string), value length (uint16), value.
"""

from __future__ import annotations

import json
import struct
import zlib
from collections.abc import Mapping
from typing import Any

__all__ = ["encode_event", "encode_exception", "encode_message"]

_STRING = 7


def _header(name: str, value: str) -> bytes:
    raw_name, raw_value = name.encode(), value.encode()
    return (
        struct.pack(">B", len(raw_name))
        + raw_name
        + struct.pack(">BH", _STRING, len(raw_value))
        + raw_value
    )


def encode_message(headers: Mapping[str, str], payload: bytes) -> bytes:
    raw_headers = b"".join(_header(k, v) for k, v in headers.items())
    total = 12 + len(raw_headers) + len(payload) + 4
    prelude = struct.pack(">II", total, len(raw_headers))
    prelude += struct.pack(">I", zlib.crc32(prelude) & 0xFFFFFFFF)
    message = prelude + raw_headers + payload
    return message + struct.pack(">I", zlib.crc32(message) & 0xFFFFFFFF)


def encode_event(event_type: str, payload: Mapping[str, Any]) -> bytes:
    """One ``event`` message (e.g. ``messageStart``, ``metadata``) with a JSON payload."""
    headers = {
        ":event-type": event_type,
        ":content-type": "application/json",
        ":message-type": "event",
    }
    return encode_message(headers, json.dumps(payload).encode())


def encode_exception(exception_type: str, message: str) -> bytes:
    """A modeled error inside the stream (e.g. ``throttlingException``)."""
    headers = {
        ":exception-type": exception_type,
        ":content-type": "application/json",
        ":message-type": "exception",
    }
    return encode_message(headers, json.dumps({"message": message}).encode())
