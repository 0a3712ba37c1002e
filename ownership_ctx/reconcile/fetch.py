"""Fetch bills live from the providers' admin APIs: paginated, retried, the key kept secret.

- OpenAI (an admin key): ``/v1/organization/costs`` grouped by ``project_id`` and
  ``line_item`` and ``/v1/organization/usage/completions`` grouped by ``model``,
  ``project_id`` and ``api_key_id``; ``start_time`` (unix s, inclusive), ``end_time``
  (exclusive), ``bucket_width=1d``, ``limit`` (costs 1..180, usage 1..31 for daily
  buckets), then ``page=<next_page>`` while ``has_more``.
  https://platform.openai.com/docs/api-reference/usage
- Anthropic (an ``sk-ant-admin...`` key in ``x-api-key``, ``anthropic-version: 2023-06-01``):
  ``/v1/organizations/usage_report/messages`` with ``group_by[]`` model, workspace_id,
  api_key_id, service_tier and ``/v1/organizations/cost_report`` with ``group_by[]``
  workspace_id, description; ``starting_at`` / ``ending_at`` RFC 3339, ``bucket_width=1d``,
  ``limit`` up to 31, then ``page=<next_page>`` while ``has_more``.
  https://platform.claude.com/docs/en/api/admin/usage_report/retrieve_messages
  https://platform.claude.com/docs/en/api/admin/cost_report

Retries: connection errors, 429 and 5xx, up to 5 attempts, exponential backoff from 0.5 s
(capped at 30 s) or the server's ``retry-after``. The key goes in a header only: it is never
logged, never in an error message and never in a saved page (errors name the URL, whose query
holds no secret).
"""

from __future__ import annotations

import contextlib
import dataclasses
import datetime as dt
import json
import logging
import time
import urllib.error
import urllib.request
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any, Final
from urllib.parse import urlencode

from .bills import BillBatch
from .importers import parse_bytes

__all__ = ["FetchError", "fetch_bills", "pages"]

logger = logging.getLogger("ownership_ctx.reconcile")

BASE_URLS: Final = {"openai": "https://api.openai.com", "anthropic": "https://api.anthropic.com"}
_ATTEMPTS: Final = 5
_TIMEOUT: Final = 60.0
_RETRY: Final = frozenset({408, 409, 425, 429, 500, 502, 503, 504, 529})


class FetchError(RuntimeError):
    """A fetch that failed for good: the message names the URL and the status, never the key."""


@dataclasses.dataclass(frozen=True)
class _Endpoint:
    source: str
    path: str
    params: list[tuple[str, str]]
    limit: int


def _endpoints(provider: str, start: dt.datetime, end: dt.datetime) -> list[_Endpoint]:
    if provider == "openai":
        span = [
            ("start_time", str(int(start.timestamp()))),
            ("end_time", str(int(end.timestamp()))),
            ("bucket_width", "1d"),
        ]
        return [
            _Endpoint(
                "openai-costs",
                "/v1/organization/costs",
                [*span, ("group_by", "project_id"), ("group_by", "line_item")],
                180,
            ),
            _Endpoint(
                "openai-usage",
                "/v1/organization/usage/completions",
                [*span, *[("group_by", g) for g in ("model", "project_id", "api_key_id")]],
                31,
            ),
        ]
    if provider == "anthropic":
        fmt = "%Y-%m-%dT%H:%M:%SZ"
        span = [
            ("starting_at", start.strftime(fmt)),
            ("ending_at", end.strftime(fmt)),
            ("bucket_width", "1d"),
        ]
        usage = ("model", "workspace_id", "api_key_id", "service_tier")
        return [
            _Endpoint(
                "anthropic-usage",
                "/v1/organizations/usage_report/messages",
                [*span, *[("group_by[]", g) for g in usage]],
                31,
            ),
            _Endpoint(
                "anthropic-cost",
                "/v1/organizations/cost_report",
                [*span, ("group_by[]", "workspace_id"), ("group_by[]", "description")],
                31,
            ),
        ]
    raise FetchError(f"no admin API fetcher for {provider!r}: openai or anthropic")


def _headers(provider: str, key: str) -> dict[str, str]:
    if provider == "openai":
        return {"Authorization": f"Bearer {key}", "Accept": "application/json"}
    return {"x-api-key": key, "anthropic-version": "2023-06-01", "Accept": "application/json"}


def _get(
    url: str,
    headers: dict[str, str],
    *,
    sleep: Callable[[float], None],
    opener: Callable[..., Any],
) -> bytes:
    delay = 0.5
    for attempt in range(1, _ATTEMPTS + 1):
        wait = delay
        try:
            with opener(urllib.request.Request(url, headers=headers), timeout=_TIMEOUT) as r:
                data: bytes = r.read()
                return data
        except urllib.error.HTTPError as e:
            status = e.code
            if status not in _RETRY or attempt == _ATTEMPTS:
                hint = " (the admin key was refused)" if status in (401, 403) else ""
                raise FetchError(f"GET {url}: HTTP {status}{hint}") from None
            after = e.headers.get("retry-after") if e.headers else None
            if after is not None:
                with contextlib.suppress(ValueError):
                    wait = min(float(after), 60.0)
            logger.warning("GET %s: HTTP %s, retrying in %.1f s", url, status, wait)
        except (urllib.error.URLError, TimeoutError, ConnectionError) as e:
            reason = getattr(e, "reason", e)
            if attempt == _ATTEMPTS:
                raise FetchError(f"GET {url}: {reason}") from None
            logger.warning("GET %s: %s, retrying in %.1f s", url, reason, wait)
        sleep(wait)
        delay = min(delay * 2, 30.0)
    raise AssertionError("unreachable")


def pages(
    provider: str,
    key: str,
    endpoint: _Endpoint,
    base_url: str,
    *,
    sleep: Callable[[float], None] = time.sleep,
    opener: Callable[..., Any] = urllib.request.urlopen,
) -> Iterator[bytes]:
    """Each page's raw JSON, following ``next_page`` while ``has_more``."""
    headers = _headers(provider, key)
    page: str | None = None
    seen: set[str] = set()
    while True:
        params = [*endpoint.params, ("limit", str(endpoint.limit))]
        if page is not None:
            params.append(("page", page))
        url = f"{base_url.rstrip('/')}{endpoint.path}?{urlencode(params)}"
        raw = _get(url, headers, sleep=sleep, opener=opener)
        yield raw
        try:
            body = json.loads(raw)
        except ValueError:
            raise FetchError(f"GET {url}: the answer is not JSON") from None
        if not isinstance(body, dict) or not body.get("has_more"):
            return
        page = body.get("next_page")
        if not isinstance(page, str) or not page or page in seen:
            raise FetchError(f"GET {url}: has_more without a new next_page")
        seen.add(page)


def fetch_bills(
    provider: str,
    key: str,
    start: dt.datetime,
    end: dt.datetime,
    *,
    base_url: str | None = None,
    save: Path | None = None,
    progress: Callable[[str], None] = lambda message: None,
    sleep: Callable[[float], None] = time.sleep,
    opener: Callable[..., Any] = urllib.request.urlopen,
) -> list[BillBatch]:
    """Every page of ``provider``'s cost and usage reports for whole days ``[start, end)``.

    Returns one `BillBatch` per report, covering the asked period (so days with no spend
    replace older rows too). ``save``: also write each report's pages there as JSON lines,
    re-importable with ``reconcile import``.
    """
    base = base_url or BASE_URLS.get(provider, "")
    fetched_at = time.time()
    batches = []
    for endpoint in _endpoints(provider, start, end):
        progress(f"fetching {endpoint.source}")
        raw_pages = list(pages(provider, key, endpoint, base, sleep=sleep, opener=opener))
        data = b"\n".join(p.strip() for p in raw_pages) + b"\n"
        origin = f"{base.rstrip('/')}{endpoint.path}"
        if save is not None:
            save.mkdir(parents=True, exist_ok=True)
            stamp = dt.datetime.fromtimestamp(fetched_at, dt.timezone.utc)
            target = save / f"{endpoint.source}-{stamp:%Y%m%dT%H%M%SZ}.jsonl"
            target.write_bytes(data)
            origin = str(target)
        batch = parse_bytes(endpoint.source, data, origin, fetched_at=fetched_at)
        batches.append(
            dataclasses.replace(
                batch,
                period_start=start.date().isoformat(),
                period_end=end.date().isoformat(),
            )
        )
    return batches
