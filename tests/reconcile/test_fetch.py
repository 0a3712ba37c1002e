"""Live fetchers against the fake admin API: every page, retries, the key kept secret."""

from __future__ import annotations

import datetime as dt
import io
import json
import logging
from collections.abc import Iterator
from decimal import Decimal
from pathlib import Path

import pytest

from ownership_ctx.cli import main
from ownership_ctx.reconcile.fetch import FetchError, fetch_bills
from ownership_ctx.testing.fake_admin import Billed, FakeAdminAPI

KEY = "sk-admin-very-secret-0123"
START = dt.datetime(2026, 10, 1, tzinfo=dt.timezone.utc)
END = START + dt.timedelta(days=40)  # two pages of daily buckets for the 31-bucket limits


@pytest.fixture
def admin() -> Iterator[FakeAdminAPI]:
    with FakeAdminAPI(admin_key=KEY) as server:
        for i in range(40):
            day = START.date() + dt.timedelta(days=i)
            server.bill(
                Billed(
                    "openai",
                    day,
                    "gpt-4o",
                    Decimal("0.10"),
                    1000,
                    100,
                    scope="proj_a",
                    api_key_id="key_a",
                ),
                Billed(
                    "anthropic",
                    day,
                    "claude-haiku-4-5",
                    Decimal("0.0123"),
                    500,
                    50,
                    cache_read_tokens=100,
                    scope="wrkspc_1",
                    api_key_id="apikey_1",
                ),
            )
        yield server


def test_openai_every_page_every_day(admin: FakeAdminAPI) -> None:
    costs, usage = fetch_bills("openai", KEY, START, END, base_url=admin.url, sleep=lambda s: None)
    assert len({r.day for r in costs.rows}) == 40
    assert sum(r.cost or 0 for r in costs.rows) == Decimal("4.00")  # 40 x 0.10
    assert sum(r.input_tokens or 0 for r in usage.rows) == 40_000
    pages = [r["query"].get("page") for r in admin.requests if r["path"].endswith("completions")]
    assert pages == [None, ["31"]]  # usage: 31 daily buckets per page, then the rest
    assert (costs.period_start, costs.period_end) == ("2026-10-01", "2026-11-10")
    assert costs.fetched_at is not None and costs.origin.endswith("/v1/organization/costs")


def test_anthropic_cents_and_cache(admin: FakeAdminAPI) -> None:
    usage, cost = fetch_bills(
        "anthropic", KEY, START, END, base_url=admin.url, sleep=lambda s: None
    )
    assert sum(r.cost or 0 for r in cost.rows) == Decimal("0.0123") * 40
    assert {r.input_tokens for r in usage.rows} == {500}  # uncached 400 + cache read 100
    grouped = [r["query"]["group_by[]"] for r in admin.requests if r["path"].endswith("messages")]
    assert grouped[0] == ["model", "workspace_id", "api_key_id", "service_tier"]


def test_retries_with_backoff_then_succeeds(
    admin: FakeAdminAPI, caplog: pytest.LogCaptureFixture
) -> None:
    admin.script(429, 500, 503)
    waits: list[float] = []
    with caplog.at_level(logging.DEBUG):
        batches = fetch_bills("openai", KEY, START, END, base_url=admin.url, sleep=waits.append)
    assert len(batches) == 2 and waits == [0.0, 0.0, 0.0]  # the server said retry-after: 0
    assert "HTTP 429" in caplog.text
    assert KEY not in caplog.text


def test_gives_up_after_five_attempts_naming_the_url_not_the_key(admin: FakeAdminAPI) -> None:
    admin.script(*[500] * 5)
    with pytest.raises(FetchError) as caught:
        fetch_bills("openai", KEY, START, END, base_url=admin.url, sleep=lambda s: None)
    assert "HTTP 500" in str(caught.value) and "/v1/organization/costs" in str(caught.value)
    assert KEY not in str(caught.value)


def test_refused_key_is_not_retried(admin: FakeAdminAPI) -> None:
    with pytest.raises(FetchError, match="admin key was refused") as caught:
        fetch_bills("anthropic", "sk-wrong", START, END, base_url=admin.url, sleep=lambda s: None)
    assert "sk-wrong" not in str(caught.value)
    assert len(admin.requests) == 1


def test_cli_fetch_stores_and_saves_pages(
    admin: FakeAdminAPI, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    db = f"sqlite:///{tmp_path / 'events.db'}"
    monkeypatch.setenv("OPENAI_ADMIN_KEY", KEY)
    out = io.StringIO()
    argv = [
        "--db",
        db,
        "reconcile",
        "fetch",
        "openai",
        "--base-url",
        admin.url,
        "--since",
        "2026-10-01",
        "--until",
        "2026-11-10",
        "--save",
        str(tmp_path / "pages"),
    ]
    assert main(argv, out=out) == 0
    assert "fetched 40 openai-costs rows" in out.getvalue()
    saved = sorted(p.name.split("-2")[0] for p in (tmp_path / "pages").iterdir())
    assert saved == ["openai-costs", "openai-usage"]
    assert all(KEY not in p.read_text() for p in (tmp_path / "pages").iterdir())
    # The saved pages import again, replacing (not adding to) what the fetch stored.
    costs = next((tmp_path / "pages").glob("openai-costs-*.jsonl"))
    out = io.StringIO()
    assert main(["--db", db, "reconcile", "import", "openai-costs", str(costs)], out=out) == 0
    assert "replaced 40" in out.getvalue()
    out = io.StringIO()
    assert main(["--db", db, "reconcile", "imports", "--format", "json"], out=out) == 0
    assert len(json.loads(out.getvalue())["imports"]) == 3


def test_cli_fetch_without_key_is_a_usage_error(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    monkeypatch.delenv("ANTHROPIC_ADMIN_KEY", raising=False)
    code = main(["--db", str(tmp_path / "e.db"), "reconcile", "fetch", "anthropic"])
    assert code == 2 and "set ANTHROPIC_ADMIN_KEY" in capsys.readouterr().err


def test_connection_errors_are_retried_with_growing_backoff(admin: FakeAdminAPI) -> None:
    import urllib.error
    import urllib.request

    failures = iter([urllib.error.URLError("refused"), ConnectionResetError("reset")])

    def flaky(request: urllib.request.Request, timeout: float) -> object:
        failure = next(failures, None)
        if failure is not None:
            raise failure
        assert request.get_header("Authorization") == f"Bearer {KEY}"
        return urllib.request.urlopen(request, timeout=timeout)

    waits: list[float] = []
    batches = fetch_bills(
        "openai", KEY, START, END, base_url=admin.url, sleep=waits.append, opener=flaky
    )
    assert waits == [0.5, 1.0] and len(batches) == 2
