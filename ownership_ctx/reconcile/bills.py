"""What a provider bills, as typed rows: one shape for every export we read.

A `BillRow` is one line of a provider's own accounting, at the grain the provider publishes:
a day x model x scope aggregate (OpenAI Costs / Usage API, Anthropic usage and cost reports,
AWS CUR 2.0) or one request (Bedrock model invocation logs). ``cost`` is in US dollars as a
`Decimal` (each importer converts the provider's unit: OpenAI dollars as JSON numbers,
Anthropic cents as decimal strings, CUR dollars as CSV text) or ``None`` when the export
carries tokens only. Tokens follow the event convention: ``input_tokens`` INCLUDES cache reads
and writes.

A `BillBatch` is one import: its rows, the period it covers (rows of the same source in that
period are replaced when it is stored) and where it came from.
"""

from __future__ import annotations

import dataclasses
from decimal import Decimal
from typing import Final

__all__ = [
    "SOURCES",
    "BillBatch",
    "BillError",
    "BillRow",
]

#: source -> provider. A source is one kind of export.
SOURCES: Final[dict[str, str]] = {
    "openai-costs": "openai",
    "openai-usage": "openai",
    "anthropic-usage": "anthropic",
    "anthropic-cost": "anthropic",
    "bedrock-logs": "aws.bedrock",
    "aws-cur": "aws.bedrock",
}
#: Sources that say what was billed in money; the others carry tokens (and request ids).
COST_SOURCES: Final = frozenset({"openai-costs", "anthropic-cost", "aws-cur"})


class BillError(ValueError):
    """A malformed export: the message names the file, the line or bucket, and what is wrong."""


@dataclasses.dataclass(frozen=True, slots=True)
class BillRow:
    source: str
    day: str  # YYYY-MM-DD, UTC: the bucket's (or request's) day
    model: str = ""  # "" when the export does not say
    scope: str = ""  # OpenAI project / Anthropic workspace / AWS account; "" default/unknown
    api_key_id: str = ""
    service_tier: str = ""
    line_item: str = ""  # OpenAI line_item / Anthropic description / CUR usage type
    region: str = ""
    cost: Decimal | None = None  # USD
    input_tokens: int | None = None  # cache reads and writes included
    output_tokens: int | None = None
    cache_read_tokens: int | None = None
    cache_write_tokens: int | None = None
    requests: int | None = None
    request_id: str | None = None  # Bedrock invocation logs: the x-amzn-RequestId
    identity: str = ""  # Bedrock: the caller's IAM ARN
    owner_team: str = ""  # Bedrock: from requestMetadata ownership.owner_team

    @property
    def provider(self) -> str:
        return SOURCES[self.source]


@dataclasses.dataclass(frozen=True, slots=True)
class BillBatch:
    source: str
    rows: tuple[BillRow, ...]
    period_start: str  # YYYY-MM-DD, inclusive
    period_end: str  # YYYY-MM-DD, exclusive
    origin: str  # the file path, or the API URL fetched (never a key)
    sha256: str = ""  # of the file's bytes, for audit
    fetched_at: float | None = None  # epoch seconds, for live fetches
