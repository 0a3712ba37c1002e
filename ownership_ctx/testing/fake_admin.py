"""A loopback fake of the providers' admin (billing) APIs, for tests and the demo.

    with FakeAdminAPI(admin_key="sk-admin-test") as admin:
        admin.bill(Billed("openai", date(2026, 11, 2), "gpt-4o", cost=Decimal("1.25"), ...))
        fetch_bills("openai", "sk-admin-test", start, end, base_url=admin.url)

Serves, with the providers' shapes (see `ownership_ctx.reconcile.importers` for the cited
references), daily buckets only:

- OpenAI: ``GET /v1/organization/costs`` (grouped by project and line item; ``amount.value``
  dollars as a JSON number, currency ``"usd"``) and ``GET /v1/organization/usage/completions``
  (grouped by model, project, API key; ``input_tokens`` include cached ones); ``limit`` buckets
  per page, ``page`` / ``next_page`` / ``has_more``; ``Authorization: Bearer <admin key>``.
- Anthropic: ``GET /v1/organizations/usage_report/messages`` (uncached input, cache reads,
  cache creation 5m, output; by model, workspace, API key) and ``GET
  /v1/organizations/cost_report`` (``amount`` a decimal string in cents); ``x-api-key``.

``admin.script(429, 500)`` makes the next requests fail first (with ``retry-after: 0``).
``admin.requests`` records what was asked (paths and queries; never the key).
Standard library only.
"""

from __future__ import annotations

import dataclasses
import datetime as dt
import json
import threading
from collections import defaultdict, deque
from collections.abc import Iterable
from decimal import Decimal
from http.server import BaseHTTPRequestHandler
from typing import Any
from urllib.parse import parse_qs, urlsplit

from .loopback import LoopbackServer

__all__ = ["Billed", "FakeAdminAPI"]

_CENTS = Decimal(100)


@dataclasses.dataclass(frozen=True)
class Billed:
    """Usage the provider bills on one day (sums when several share a day and group)."""

    provider: str  # "openai" or "anthropic"
    day: dt.date
    model: str
    cost: Decimal  # USD
    input_tokens: int = 0  # cache reads and writes included
    output_tokens: int = 0
    cache_read_tokens: int = 0
    cache_write_tokens: int = 0
    requests: int = 1
    scope: str | None = None  # OpenAI project / Anthropic workspace (None: default)
    api_key_id: str | None = None


class FakeAdminAPI(LoopbackServer):
    def __init__(self, admin_key: str = "sk-admin-test", host: str = "127.0.0.1") -> None:
        self.admin_key = admin_key
        self.host = host
        self.billed: list[Billed] = []
        self.requests: list[dict[str, Any]] = []
        self._steps: deque[int] = deque()
        self._lock = threading.Lock()

    def bill(self, *items: Billed) -> None:
        self.billed.extend(items)

    def bill_all(self, items: Iterable[Billed]) -> None:
        self.billed.extend(items)

    def script(self, *statuses: int) -> None:
        with self._lock:
            self._steps.extend(statuses)

    def _next_step(self) -> int | None:
        with self._lock:
            return self._steps.popleft() if self._steps else None

    def handler(self) -> type[BaseHTTPRequestHandler]:
        return type("Handler", (_Handler,), {"admin": self})

    # -- answers -------------------------------------------------------------------------------

    def days(self, provider: str, start: dt.date, end: dt.date) -> dict[dt.date, list[Billed]]:
        out: dict[dt.date, list[Billed]] = {}
        day = start
        while day < end:
            out[day] = [b for b in self.billed if b.provider == provider and b.day == day]
            day += dt.timedelta(days=1)
        return out


def _openai_cost_results(items: list[Billed]) -> list[dict[str, Any]]:
    sums: dict[tuple[str | None, str], Decimal] = defaultdict(Decimal)
    for b in items:
        sums[(b.scope, f"{b.model}, input")] += b.cost
    return [
        {
            "object": "organization.costs.result",
            "amount": {"value": float(cost), "currency": "usd"},
            "line_item": line_item,
            "project_id": project,
        }
        for (project, line_item), cost in sorted(sums.items(), key=lambda kv: str(kv[0]))
    ]


def _openai_usage_results(items: list[Billed]) -> list[dict[str, Any]]:
    sums: dict[tuple[str, str | None, str | None], list[int]] = defaultdict(lambda: [0, 0, 0, 0])
    for b in items:
        s = sums[(b.model, b.scope, b.api_key_id)]
        s[0] += b.input_tokens
        s[1] += b.output_tokens
        s[2] += b.cache_read_tokens
        s[3] += b.requests
    return [
        {
            "object": "organization.usage.completions.result",
            "input_tokens": s[0],
            "output_tokens": s[1],
            "input_cached_tokens": s[2],
            "input_audio_tokens": 0,
            "output_audio_tokens": 0,
            "num_model_requests": s[3],
            "project_id": project,
            "user_id": None,
            "api_key_id": key,
            "model": model,
            "batch": False,
            "service_tier": "default",
        }
        for (model, project, key), s in sorted(sums.items(), key=lambda kv: str(kv[0]))
    ]


def _anthropic_usage_results(items: list[Billed]) -> list[dict[str, Any]]:
    sums: dict[tuple[str, str | None, str | None], list[int]] = defaultdict(lambda: [0, 0, 0, 0])
    for b in items:
        s = sums[(b.model, b.scope, b.api_key_id)]
        s[0] += b.input_tokens - b.cache_read_tokens - b.cache_write_tokens
        s[1] += b.cache_read_tokens
        s[2] += b.cache_write_tokens
        s[3] += b.output_tokens
    return [
        {
            "uncached_input_tokens": s[0],
            "cache_read_input_tokens": s[1],
            "cache_creation": {"ephemeral_5m_input_tokens": s[2], "ephemeral_1h_input_tokens": 0},
            "output_tokens": s[3],
            "server_tool_use": {"web_search_requests": 0},
            "api_key_id": key,
            "workspace_id": workspace,
            "model": model,
            "service_tier": "standard",
            "context_window": "0-200k",
        }
        for (model, workspace, key), s in sorted(sums.items(), key=lambda kv: str(kv[0]))
    ]


def _anthropic_cost_results(items: list[Billed]) -> list[dict[str, Any]]:
    sums: dict[tuple[str, str | None], Decimal] = defaultdict(Decimal)
    for b in items:
        sums[(b.model, b.scope)] += b.cost
    return [
        {
            "currency": "USD",
            "amount": format(cost * _CENTS, "f"),
            "workspace_id": workspace,
            "description": f"{model} usage",
            "cost_type": "tokens",
            "context_window": "0-200k",
            "model": model,
            "service_tier": "standard",
            "token_type": "uncached_input_tokens",
        }
        for (model, workspace), cost in sorted(sums.items(), key=lambda kv: str(kv[0]))
    ]


_ROUTES = {
    "/v1/organization/costs": ("openai", _openai_cost_results, 7, 180),
    "/v1/organization/usage/completions": ("openai", _openai_usage_results, 7, 31),
    "/v1/organizations/usage_report/messages": ("anthropic", _anthropic_usage_results, 7, 31),
    "/v1/organizations/cost_report": ("anthropic", _anthropic_cost_results, 7, 31),
}


def _date(value: str) -> dt.date:
    if value.isdigit():
        return dt.datetime.fromtimestamp(int(value), dt.timezone.utc).date()
    return dt.datetime.fromisoformat(value.replace("Z", "+00:00")).date()


class _Handler(BaseHTTPRequestHandler):
    admin: FakeAdminAPI
    protocol_version = "HTTP/1.1"

    def log_message(self, format: str, *args: Any) -> None:
        pass

    def _send(self, status: int, body: Any, headers: dict[str, str] | None = None) -> None:
        payload = json.dumps(body).encode()
        self.send_response(status)
        self.send_header("content-type", "application/json")
        self.send_header("content-length", str(len(payload)))
        for k, v in (headers or {}).items():
            self.send_header(k, v)
        self.end_headers()
        self.wfile.write(payload)

    def do_GET(self) -> None:
        parts = urlsplit(self.path)
        query = parse_qs(parts.query)
        self.admin.requests.append({"path": parts.path, "query": query})
        route = _ROUTES.get(parts.path)
        if route is None:
            self._send(404, {"error": {"message": "not found"}})
            return
        provider, results, default_limit, max_limit = route
        key = self.headers.get("x-api-key") if provider == "anthropic" else None
        auth = self.headers.get("authorization", "")
        if provider == "openai":
            key = auth[7:] if auth.lower().startswith("bearer ") else None
        if key != self.admin.admin_key:
            self._send(401, {"error": {"type": "authentication_error", "message": "bad key"}})
            return
        step = self.admin._next_step()
        if step is not None:
            self._send(step, {"error": {"message": "scripted"}}, {"retry-after": "0"})
            return
        try:
            if provider == "openai":
                start = _date(query["start_time"][0])
                end = _date(query["end_time"][0]) if "end_time" in query else start
            else:
                start = _date(query["starting_at"][0])
                end = _date(query["ending_at"][0]) if "ending_at" in query else start
            limit = int(query.get("limit", [str(default_limit)])[0])
            offset = int(query.get("page", ["0"])[0])
        except (KeyError, ValueError):
            self._send(400, {"error": {"message": "bad query"}})
            return
        if not 1 <= limit <= max_limit:
            self._send(400, {"error": {"message": f"limit must be 1..{max_limit}"}})
            return
        days = sorted(self.admin.days(provider, start, end).items())
        page = days[offset : offset + limit]
        more = offset + limit < len(days)
        buckets = []
        for day, items in page:
            start_at = dt.datetime(day.year, day.month, day.day, tzinfo=dt.timezone.utc)
            end_at = start_at + dt.timedelta(days=1)
            if provider == "openai":
                bucket: dict[str, Any] = {
                    "object": "bucket",
                    "start_time": int(start_at.timestamp()),
                    "end_time": int(end_at.timestamp()),
                }
            else:
                bucket = {
                    "starting_at": start_at.strftime("%Y-%m-%dT%H:%M:%SZ"),
                    "ending_at": end_at.strftime("%Y-%m-%dT%H:%M:%SZ"),
                }
            bucket["results"] = results(items)
            buckets.append(bucket)
        body: dict[str, Any] = {
            "data": buckets,
            "has_more": more,
            "next_page": str(offset + limit) if more else None,
        }
        if provider == "openai":
            body["object"] = "page"
        self._send(200, body)
