"""Billing scopes of a provider call: what a provider's bill groups spend by, as far as the
call itself reveals it. Reconciliation (`ownership_ctx.reconcile`) joins bills on these.

- ``billing_scope``: the OpenAI project (the ``openai-project`` response header, else the
  ``OpenAI-Project`` request header the client sent); for Bedrock the AWS account when known.
  Anthropic's workspace is not visible from a call: Anthropic bills reconcile by aggregate.
- ``billing_region``: the AWS region of a Bedrock client.
- ``api_key_fingerprint``: ``"sha256:"`` + the first 16 hex digits of the SHA-256 of the API
  key the call used. One-way and short: it tells two keys apart and names a key in a report
  without ever storing or logging the key itself.

Never raises: whatever cannot be read is left ``None``.
"""

from __future__ import annotations

import dataclasses
import hashlib
import re
from collections.abc import Mapping
from typing import Any, Final

__all__ = ["Billing", "fingerprint", "from_headers", "request_metadata", "with_scope"]

_ID: Final = re.compile(r"[A-Za-z0-9._:/-]{1,128}")
# Converse requestMetadata: at most 16 entries; keys and values match
# [a-zA-Z0-9\s:_@$#=/+,-.]{1,256} (botocore's bedrock-runtime service model,
# RequestMetadataKeyString / RequestMetadataValueString).
_METADATA_MAX: Final = 16
_METADATA_FIELDS: Final = ("trace_id", "owner_team", "workflow_id", "feature", "tenant", "user")
METADATA_PREFIX: Final = "ownership."


@dataclasses.dataclass(frozen=True, slots=True)
class Billing:
    scope: str | None = None
    region: str | None = None
    key_fingerprint: str | None = None


NONE: Final = Billing()


def fingerprint(secret: str) -> str:
    """A non-secret name for a key: ``sha256:`` + 16 hex digits. The key is never kept."""
    return "sha256:" + hashlib.sha256(secret.encode("utf-8", "replace")).hexdigest()[:16]


def _clean(value: Any) -> str | None:
    if isinstance(value, str) and _ID.fullmatch(value):
        return value
    return None


def _key(headers: Any) -> str | None:
    auth = headers.get("authorization")
    if isinstance(auth, str) and auth[:7].lower() == "bearer ":
        token = auth[7:].strip()
        return token or None
    for name in ("x-api-key", "x-goog-api-key"):
        value = headers.get(name)
        if isinstance(value, str) and value:
            return value
    return None


def from_headers(request_headers: Any) -> Billing:
    """The scopes an httpx request shows: the project header, the key's fingerprint."""
    try:
        project = _clean(request_headers.get("openai-project"))
        key = _key(request_headers)
        return Billing(scope=project, key_fingerprint=fingerprint(key) if key else None)
    except Exception:
        return NONE


def with_scope(billing: Billing, scope: Any) -> Billing:
    """``billing`` with the scope a response named (it wins over what the request said)."""
    clean = _clean(scope)
    return billing if clean is None else dataclasses.replace(billing, scope=clean)


def request_metadata(
    existing: Mapping[str, Any] | None, owner: Mapping[str, Any]
) -> dict[str, str] | None:
    """Converse ``requestMetadata`` with the envelope's fields added under ``ownership.*``.

    Only what the envelope holds goes in: tenant and user are already keyed hashes there
    (``h1:...``), never raw ids; team, workflow and feature are the same names that travel in
    baggage. The caller's own entries win and the 16-entry limit is kept; ``None`` when there
    is nothing to add.
    """
    out = {str(k): str(v) for k, v in (existing or {}).items()}
    added = False
    for field in _METADATA_FIELDS:
        value = _clean(owner.get(field))
        key = METADATA_PREFIX + field
        if key in out or len(out) >= _METADATA_MAX or value is None:
            continue
        out[key] = value
        added = True
    return out if added else None
