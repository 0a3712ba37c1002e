"""Parse what providers publish into `BillRow`s: pure functions of a file's bytes.

Every field name, unit and shape below was checked against the provider's API reference (the
page is cited next to each parser). Whatever does not fit raises `BillError` naming the file,
the line / page / bucket / result, and what is wrong: nothing is guessed and nothing partial is
returned, so the caller stores all of an export or none of it.

JSON API exports are read as saved by ``curl`` (one page), a JSON list of pages, or JSON lines
with one page per line (what ``ownership-ctx reconcile fetch --save`` writes). Amounts are
parsed as `Decimal` straight from the JSON text (never through a float).
"""

from __future__ import annotations

import csv
import datetime as dt
import gzip
import hashlib
import io
import json
from collections.abc import Callable, Iterator, Mapping
from decimal import Decimal, InvalidOperation
from pathlib import Path
from typing import Any, Final

from .bills import SOURCES, BillBatch, BillError, BillRow

__all__ = ["PARSERS", "parse_bytes", "parse_file"]

_CENT: Final = Decimal(100)
_EPOCH: Final = dt.datetime(1970, 1, 1, tzinfo=dt.timezone.utc)


# -- reading fields -----------------------------------------------------------------------------


def _obj(value: Any, where: str, what: str) -> Mapping[str, Any]:
    if not isinstance(value, Mapping):
        raise BillError(f"{where}: {what} is not a JSON object")
    return value


def _list(obj: Mapping[str, Any], key: str, where: str) -> list[Any]:
    value = obj.get(key)
    if not isinstance(value, list):
        raise BillError(f"{where}: '{key}' is missing or not a list")
    return value


def _count(obj: Mapping[str, Any], key: str, where: str, *, required: bool = False) -> int | None:
    value = obj.get(key)
    if value is None:
        if required:
            raise BillError(f"{where}: '{key}' is missing")
        return None
    if isinstance(value, bool) or not isinstance(value, int) or value < 0:
        raise BillError(f"{where}: '{key}' is not a whole number >= 0")
    return value


def _text(obj: Mapping[str, Any], key: str, where: str) -> str:
    value = obj.get(key)
    if value is None:
        return ""
    if not isinstance(value, str):
        raise BillError(f"{where}: '{key}' is not a string")
    return value


def _decimal(value: Any, where: str, what: str) -> Decimal:
    if isinstance(value, bool):
        raise BillError(f"{where}: {what} is not a number")
    try:
        number = Decimal(value) if isinstance(value, (str, int, Decimal)) else None
    except InvalidOperation:
        number = None
    if number is None or not number.is_finite():
        raise BillError(f"{where}: {what} is not a number")
    return number


def _usd(currency: Any, where: str) -> None:
    if not isinstance(currency, str) or currency.upper() != "USD":
        raise BillError(
            f"{where}: currency {currency!r} refused: events are priced in USD and amounts"
            " in different currencies are never summed"
        )


def _day_of_unix(value: Any, where: str, key: str) -> dt.date:
    if isinstance(value, bool) or not isinstance(value, int):
        raise BillError(f"{where}: '{key}' is not unix seconds")
    return (_EPOCH + dt.timedelta(seconds=value)).date()


def _instant(value: Any, where: str, key: str) -> dt.datetime:
    if not isinstance(value, str):
        raise BillError(f"{where}: '{key}' is missing or not an RFC 3339 time")
    try:
        text = value.replace(" ", "T")
        if text.endswith(("Z", "z")):
            text = text[:-1] + "+00:00"  # Python 3.10's fromisoformat does not read "Z"
        moment = dt.datetime.fromisoformat(text)
    except ValueError:
        raise BillError(f"{where}: '{key}' {value[:40]!r} is not an RFC 3339 time") from None
    if moment.tzinfo is None:
        moment = moment.replace(tzinfo=dt.timezone.utc)  # CUR writes UTC without an offset
    return moment.astimezone(dt.timezone.utc)


def _end_day(moment: dt.datetime) -> dt.date:
    """The exclusive end day of a bucket ending at ``moment``."""
    day = moment.date()
    return day if moment.time() == dt.time(0) else day + dt.timedelta(days=1)


# -- JSON pages ----------------------------------------------------------------------------------


def _json(text: str) -> Any:
    return json.loads(text, parse_float=Decimal)


def _why(error: ValueError) -> str:
    """What is wrong with a line that is not JSON, whole words (the line is named apart)."""
    if isinstance(error, json.JSONDecodeError):
        return f"{error.msg} at column {error.colno}"
    return " ".join(str(error).split())[:80]


def _pages(text: str, name: str) -> Iterator[tuple[str, Mapping[str, Any]]]:
    """(location, page) for each page of a saved API answer."""
    if not text.strip():
        raise BillError(f"{name}: the file is empty")
    try:
        doc = _json(text)
    except ValueError:
        doc = None
    if doc is not None:
        if isinstance(doc, list):
            for i, page in enumerate(doc, 1):
                yield f"{name}: page {i}", _obj(page, f"{name}: page {i}", "the page")
            return
        yield name, _obj(doc, name, "the file")
        return
    for lineno, line in enumerate(text.splitlines(), 1):
        if not line.strip():
            continue
        try:
            page = _json(line)
        except ValueError as e:
            raise BillError(f"{name}:{lineno}: not JSON ({_why(e)})") from None
        yield f"{name}:{lineno}", _obj(page, f"{name}:{lineno}", "the line")


def _buckets(
    text: str, name: str
) -> Iterator[tuple[str, Mapping[str, Any], list[tuple[str, Mapping[str, Any]]]]]:
    for where, page in _pages(text, name):
        for b, bucket in enumerate(_list(page, "data", where), 1):
            at = f"{where}: bucket {b}"
            bucket = _obj(bucket, at, "the bucket")
            # OpenAI's generated reference spells the list "result" for some endpoints, its
            # examples and answers "results": read either.
            key = "result" if "results" not in bucket and "result" in bucket else "results"
            results = [
                (f"{at} result {r}", _obj(result, f"{at} result {r}", "the result"))
                for r, result in enumerate(_list(bucket, key, at), 1)
            ]
            yield at, bucket, results


class _Period:
    def __init__(self) -> None:
        self.start: dt.date | None = None
        self.end: dt.date | None = None

    def add(self, start: dt.date, end: dt.date) -> None:
        self.start = start if self.start is None else min(self.start, start)
        self.end = end if self.end is None else max(self.end, end)

    def bounds(self, name: str) -> tuple[str, str]:
        if self.start is None or self.end is None:
            raise BillError(f"{name}: no buckets or records: nothing to import")
        return self.start.isoformat(), max(self.end, self.start + dt.timedelta(1)).isoformat()


# -- OpenAI --------------------------------------------------------------------------------------
# Costs: GET /v1/organization/costs -> page {data: [bucket {start_time, end_time (unix s),
# results: [{object: "organization.costs.result", amount: {value: number (dollars), currency:
# "usd"}, line_item, project_id}]}], has_more, next_page}.
# https://platform.openai.com/docs/api-reference/usage/costs
# (also https://developers.openai.com/api/reference/resources/organization/ - group_by may add
# api_key_id on newer versions: read when present)


def _openai_model(line_item: str) -> str:
    # The reference does not list line_item values. Token line items name the model first
    # ("gpt-4o-2024-08-06, input"): the model is the text before the first comma. Others
    # ("web search tool calls") keep their text, which then matches no model of ours: billed
    # spend nobody metered, reported as dark with its line item.
    return line_item.split(",", 1)[0].strip()


def parse_openai_costs(text: str, name: str) -> tuple[list[BillRow], _Period]:
    rows, period = [], _Period()
    for at, bucket, results in _buckets(text, name):
        start = _day_of_unix(bucket.get("start_time"), at, "start_time")
        end = _day_of_unix(bucket.get("end_time"), at, "end_time")
        period.add(start, end)
        for where, result in results:
            amount = _obj(result.get("amount"), where, "'amount'")
            _usd(amount.get("currency"), where)
            line_item = _text(result, "line_item", where)
            rows.append(
                BillRow(
                    source="openai-costs",
                    day=start.isoformat(),
                    model=_openai_model(line_item),
                    scope=_text(result, "project_id", where),
                    api_key_id=_text(result, "api_key_id", where),
                    line_item=line_item,
                    cost=_decimal(amount.get("value"), where, "'amount.value'"),
                )
            )
    return rows, period


# Usage: GET /v1/organization/usage/completions (and /embeddings, ...) -> the same page and
# bucket shape; results "organization.usage.completions.result" with input_tokens (cached
# included), input_cached_tokens, output_tokens, num_model_requests and, per group_by,
# project_id, api_key_id, model, batch, service_tier.
# https://platform.openai.com/docs/api-reference/usage/completions


def parse_openai_usage(text: str, name: str) -> tuple[list[BillRow], _Period]:
    rows, period = [], _Period()
    for at, bucket, results in _buckets(text, name):
        start = _day_of_unix(bucket.get("start_time"), at, "start_time")
        period.add(start, _day_of_unix(bucket.get("end_time"), at, "end_time"))
        for where, result in results:
            tier = _text(result, "service_tier", where)
            if result.get("batch") is True:
                tier = "batch"
            rows.append(
                BillRow(
                    source="openai-usage",
                    day=start.isoformat(),
                    model=_text(result, "model", where),
                    scope=_text(result, "project_id", where),
                    api_key_id=_text(result, "api_key_id", where),
                    service_tier=tier,
                    input_tokens=_count(result, "input_tokens", where, required=True),
                    output_tokens=_count(result, "output_tokens", where),
                    cache_read_tokens=_count(result, "input_cached_tokens", where),
                    requests=_count(result, "num_model_requests", where, required=True),
                )
            )
    return rows, period


# -- Anthropic -----------------------------------------------------------------------------------
# Messages usage report: GET /v1/organizations/usage_report/messages -> {data: [{starting_at,
# ending_at (RFC 3339), results: [{uncached_input_tokens, cache_read_input_tokens,
# cache_creation: {ephemeral_5m_input_tokens, ephemeral_1h_input_tokens}, output_tokens,
# server_tool_use, model, workspace_id (null: default workspace), api_key_id, service_tier,
# context_window}]}], has_more, next_page}.
# https://platform.claude.com/docs/en/api/admin/usage_report/retrieve_messages


def parse_anthropic_usage(text: str, name: str) -> tuple[list[BillRow], _Period]:
    rows, period = [], _Period()
    for at, bucket, results in _buckets(text, name):
        start = _instant(bucket.get("starting_at"), at, "starting_at")
        period.add(start.date(), _end_day(_instant(bucket.get("ending_at"), at, "ending_at")))
        for where, result in results:
            uncached = _count(result, "uncached_input_tokens", where, required=True) or 0
            read = _count(result, "cache_read_input_tokens", where) or 0
            creation = result.get("cache_creation") or {}
            creation = _obj(creation, where, "'cache_creation'")
            write = (_count(creation, "ephemeral_5m_input_tokens", where) or 0) + (
                _count(creation, "ephemeral_1h_input_tokens", where) or 0
            )
            rows.append(
                BillRow(
                    source="anthropic-usage",
                    day=start.date().isoformat(),
                    model=_text(result, "model", where),
                    scope=_text(result, "workspace_id", where),
                    api_key_id=_text(result, "api_key_id", where),
                    service_tier=_text(result, "service_tier", where),
                    input_tokens=uncached + read + write,  # the usage report splits them apart
                    output_tokens=_count(result, "output_tokens", where, required=True),
                    cache_read_tokens=read,
                    cache_write_tokens=write,
                )
            )
    return rows, period


# Cost report: GET /v1/organizations/cost_report -> the same bucket shape; results: {amount:
# decimal STRING in the lowest currency unit (cents: "123.45" is 123.45 US cents), currency "USD",
# workspace_id, description, cost_type, model, service_tier, token_type, context_window}.
# Priority-tier costs are not in it (the docs say so): reconcile those from the usage report.
# https://platform.claude.com/docs/en/api/admin/cost_report


def parse_anthropic_cost(text: str, name: str) -> tuple[list[BillRow], _Period]:
    rows, period = [], _Period()
    for at, bucket, results in _buckets(text, name):
        start = _instant(bucket.get("starting_at"), at, "starting_at")
        period.add(start.date(), _end_day(_instant(bucket.get("ending_at"), at, "ending_at")))
        for where, result in results:
            _usd(result.get("currency", "USD"), where)
            amount = result.get("amount")
            if not isinstance(amount, str):
                raise BillError(f"{where}: 'amount' is not a decimal string (cents)")
            description = _text(result, "description", where) or _text(result, "cost_type", where)
            rows.append(
                BillRow(
                    source="anthropic-cost",
                    day=start.date().isoformat(),
                    model=_text(result, "model", where),
                    scope=_text(result, "workspace_id", where),
                    service_tier=_text(result, "service_tier", where),
                    line_item=description,
                    cost=_decimal(amount, where, "'amount'") / _CENT,
                )
            )
    return rows, period


# -- AWS -----------------------------------------------------------------------------------------
# Bedrock model invocation logs (S3 objects, often gzipped, or a CloudWatch Logs export): one
# JSON record per line: {schemaType: "ModelInvocationLog", schemaVersion, timestamp (RFC 3339),
# accountId, region, requestId (the x-amzn-RequestId), operation, modelId, identity: {arn},
# input: {inputTokenCount, cacheReadInputTokenCount, cacheWriteInputTokenCount},
# output: {outputTokenCount}, requestMetadata: {...}, errorCode}. inputTokenCount excludes the
# cache (as Converse's usage does): the row's input adds reads and writes back.
# https://docs.aws.amazon.com/bedrock/latest/userguide/model-invocation-logging.html


def _log_records(text: str, name: str) -> Iterator[tuple[str, Mapping[str, Any]]]:
    for lineno, line in enumerate(text.splitlines(), 1):
        if not line.strip():
            continue
        where = f"{name}:{lineno}"
        try:
            record = _obj(_json(line), where, "the line")
        except ValueError as e:
            if isinstance(e, BillError):
                raise
            raise BillError(f"{where}: not JSON ({_why(e)})") from None
        events = record.get("events")
        if isinstance(events, list):  # `aws logs filter-log-events` output: records in messages
            for i, event in enumerate(events, 1):
                message = _obj(event, f"{where}: event {i}", "the event").get("message")
                try:
                    inner = _json(message) if isinstance(message, str) else None
                except ValueError:
                    inner = None
                yield f"{where}: event {i}", _obj(inner, f"{where}: event {i}", "the message")
        else:
            yield where, record


def parse_bedrock_logs(text: str, name: str) -> tuple[list[BillRow], _Period]:
    rows, period = [], _Period()
    for where, record in _log_records(text, name):
        if record.get("schemaType") != "ModelInvocationLog":
            raise BillError(f"{where}: schemaType is not 'ModelInvocationLog'")
        day = _instant(record.get("timestamp"), where, "timestamp").date()
        request_id = _text(record, "requestId", where)
        model = _text(record, "modelId", where)
        if not request_id or not model:
            raise BillError(f"{where}: 'requestId' and 'modelId' are required")
        inp = _obj(record.get("input") or {}, where, "'input'")
        out = _obj(record.get("output") or {}, where, "'output'")
        failed = record.get("errorCode") is not None
        tokens = _count(inp, "inputTokenCount", where, required=not failed)
        if tokens is None:
            continue  # a failed invocation with no usage: nothing billed
        read = _count(inp, "cacheReadInputTokenCount", where) or 0
        write = _count(inp, "cacheWriteInputTokenCount", where) or 0
        metadata = record.get("requestMetadata") or {}
        metadata = _obj(metadata, where, "'requestMetadata'")
        identity = _obj(record.get("identity") or {}, where, "'identity'")
        owner = metadata.get("ownership.owner_team")
        period.add(day, day + dt.timedelta(days=1))
        rows.append(
            BillRow(
                source="bedrock-logs",
                day=day.isoformat(),
                model=model,
                scope=_text(record, "accountId", where),
                region=_text(record, "region", where),
                input_tokens=tokens + read + write,
                output_tokens=_count(out, "outputTokenCount", where) or 0,
                cache_read_tokens=read,
                cache_write_tokens=write,
                requests=1,
                request_id=request_id,
                identity=_text(identity, "arn", where),
                owner_team=owner if isinstance(owner, str) else "",
            )
        )
    return rows, period


# AWS Data Exports, CUR 2.0 (CSV): one row per line item; the columns read here are
# line_item_usage_start_date, line_item_product_code, line_item_line_item_type,
# line_item_usage_type, line_item_usage_account_id, line_item_unblended_cost (dollars, text),
# line_item_currency_code, line_item_usage_amount and product_region_code. Only Usage line
# items of Amazon Bedrock count (credits, taxes and refunds are not usage to reconcile).
# https://docs.aws.amazon.com/cur/latest/userguide/table-dictionary-cur2.html

_CUR_REQUIRED: Final = (
    "line_item_usage_start_date",
    "line_item_product_code",
    "line_item_unblended_cost",
    "line_item_currency_code",
)
_CUR_PRODUCTS: Final = frozenset({"AmazonBedrock"})
_CUR_USAGE: Final = frozenset({"Usage", "DiscountedUsage", "SavingsPlanCoveredUsage"})


def parse_aws_cur(text: str, name: str) -> tuple[list[BillRow], _Period]:
    reader = csv.DictReader(io.StringIO(text))
    header = reader.fieldnames or []
    missing = [c for c in _CUR_REQUIRED if c not in header]
    if missing:
        raise BillError(f"{name}:1: not a CUR 2.0 CSV: column {missing[0]} is missing")
    rows, period = [], _Period()
    for record in reader:
        where = f"{name}:{reader.line_num}"
        if None in record:
            raise BillError(f"{where}: more fields than the header has")
        if record["line_item_product_code"] not in _CUR_PRODUCTS:
            continue
        if record.get("line_item_line_item_type", "Usage") not in _CUR_USAGE:
            continue
        _usd(record["line_item_currency_code"], where)
        day = _instant(record["line_item_usage_start_date"], where, "line_item_usage_start_date")
        period.add(day.date(), day.date() + dt.timedelta(days=1))
        rows.append(
            BillRow(
                source="aws-cur",
                day=day.date().isoformat(),
                scope=record.get("line_item_usage_account_id") or "",
                region=record.get("product_region_code") or "",
                line_item=record.get("line_item_usage_type") or "",
                cost=_decimal(
                    record["line_item_unblended_cost"], where, "line_item_unblended_cost"
                ),
            )
        )
    return rows, period


# -- entry points --------------------------------------------------------------------------------

Parser = Callable[[str, str], tuple[list[BillRow], _Period]]
PARSERS: Final[dict[str, Parser]] = {
    "openai-costs": parse_openai_costs,
    "openai-usage": parse_openai_usage,
    "anthropic-usage": parse_anthropic_usage,
    "anthropic-cost": parse_anthropic_cost,
    "bedrock-logs": parse_bedrock_logs,
    "aws-cur": parse_aws_cur,
}
assert set(PARSERS) == set(SOURCES)


def parse_bytes(
    source: str, data: bytes, origin: str, *, fetched_at: float | None = None
) -> BillBatch:
    """One export's bytes (gzip is undone) -> a `BillBatch`, or `BillError`."""
    parser = PARSERS.get(source)
    if parser is None:
        raise BillError(f"unknown export kind {source!r}: one of {', '.join(PARSERS)}")
    digest = hashlib.sha256(data).hexdigest()
    if data[:2] == b"\x1f\x8b":
        try:
            data = gzip.decompress(data)
        except (OSError, EOFError):
            raise BillError(f"{origin}: a damaged gzip file") from None
    try:
        text = data.decode("utf-8-sig")
    except UnicodeDecodeError as e:
        raise BillError(f"{origin}: not UTF-8 text (byte {e.start})") from None
    rows, period = parser(text, origin)
    start, end = period.bounds(origin)
    return BillBatch(source, tuple(rows), start, end, origin, digest, fetched_at)


def parse_file(source: str, path: str | Path) -> BillBatch:
    """Read and parse one exported file (``OSError`` when it cannot be read)."""
    return parse_bytes(source, Path(path).read_bytes(), str(path))
