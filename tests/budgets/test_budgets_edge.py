"""The edge under concurrent requests from several uvicorn worker processes sharing Redis:
provider spend past the limit stays within one reservation, then every request of the owner
gets 429 (problem+json naming the budget, Retry-After at the period's end), others go on."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import threading
import time
from collections import Counter
from collections.abc import Iterator
from datetime import datetime, timedelta, timezone
from decimal import Decimal
from pathlib import Path

import httpx
import pytest

from ownership_ctx.budgets.metering import worst_case
from ownership_ctx.metering.recorder import pricer
from ownership_ctx.metering.usage import Usage
from ownership_ctx.testing.fake_providers import FakeProviders, FakeUsage
from tests.budgets import edge_app
from tests.support.faults import free_port, wait_port

ROOT = Path(__file__).resolve().parents[2]
LIMIT = Decimal("0.001")
SUPPORT = {"x-owner-team": "support"}
#: What each call really uses: input within the request's bytes, output within max_tokens.
USAGE = FakeUsage(
    input=20, cache_read=0, cache_write_5m=0, cache_write_1h=0, output=64, reasoning=0
)


@pytest.fixture
def fake() -> Iterator[FakeProviders]:
    with FakeProviders() as provider:
        provider.usage = USAGE
        yield provider


@pytest.fixture
def server(redis_url: str, prefix: str, fake: FakeProviders, tmp_path: Path) -> Iterator[str]:
    port = free_port()
    env = {
        **os.environ,
        "OC_REDIS_URL": redis_url,
        "OC_BUDGET_PREFIX": prefix,
        "OC_FAKE_URL": fake.openai_url,
        "OC_BUDGET_LIMIT": str(LIMIT),
        "PYTHONPATH": str(ROOT),
    }
    env.pop("OWNERSHIP_CTX_SINK_URL", None)
    log = (tmp_path / "uvicorn.log").open("wb")
    command = [
        sys.executable,
        "-m",
        "uvicorn",
        "tests.budgets.edge_app:app",
        "--port",
        str(port),
        "--workers",
        "2",
        "--log-level",
        "warning",
    ]
    process = subprocess.Popen(command, env=env, cwd=tmp_path, stdout=log, stderr=log)
    try:
        wait_port(port, 30)
        yield f"http://127.0.0.1:{port}"
    finally:
        process.terminate()
        process.wait(20)


def test_concurrent_requests_stop_within_one_reservation_then_get_429(
    server: str, fake: FakeProviders
) -> None:
    statuses: Counter[tuple[int, str]] = Counter()
    lock = threading.Lock()

    def client(n: int) -> None:
        with httpx.Client(base_url=server, timeout=30) as http:
            for _ in range(n):
                response = http.post("/v1/summarize", headers=SUPPORT)
                with lock:
                    statuses[
                        response.status_code, response.headers.get("x-refused-by", "edge")
                    ] += 1

    threads = [threading.Thread(target=client, args=(15,)) for _ in range(12)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()

    real = pricer().price("openai", edge_app.MODEL, Usage(20, 64), time.time()).cost
    reservation = worst_case("openai", edge_app.BODY, default_max_tokens=4096)
    assert real is not None and reservation is not None and real <= reservation
    calls = len([r for r in fake.requests if r["path"].endswith("/chat/completions")])
    spent = real * calls
    assert spent <= LIMIT + reservation, (calls, spent, statuses)  # the bound
    assert spent > LIMIT / 2  # and the budget was used, not refused early
    assert statuses[200, "edge"] == calls  # a refused call never reached the provider
    assert sum(n for (status, _), n in statuses.items() if status == 429) == 180 - calls

    # Once the cached view has caught up, the edge itself refuses: the app is not called.
    time.sleep(0.2)
    with httpx.Client(base_url=server, timeout=30) as http:
        for _ in range(4):  # every worker process has refreshed its view by now
            refused = http.post("/v1/summarize", headers=SUPPORT)
        other = http.post("/v1/summarize", headers={"x-owner-team": "search"})
    assert other.status_code == 200  # another owner is not affected
    assert refused.status_code == 429 and "x-refused-by" not in refused.headers
    assert refused.headers["content-type"] == "application/problem+json"
    body = json.loads(refused.content)
    assert set(body) == {
        "type",
        "title",
        "status",
        "detail",
        "budget",
        "period",
        "resets_at",
        "trace_id",
    }
    assert body["status"] == 429 and body["budget"] == "support-daily"
    assert body["trace_id"] == refused.headers["x-trace-id"]
    assert str(LIMIT) not in refused.text and "spent" in body["detail"]  # no amounts at all
    midnight = (datetime.now(timezone.utc) + timedelta(days=1)).replace(
        hour=0, minute=0, second=0, microsecond=0
    )
    assert body["resets_at"] == midnight.strftime("%Y-%m-%dT%H:%M:%SZ")
    retry_after = int(refused.headers["retry-after"])
    assert abs(retry_after - (midnight.timestamp() - time.time())) < 30
