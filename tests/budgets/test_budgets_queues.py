"""Celery and Dramatiq with real workers on Redis: an owner over a hard limit is refused at
publish (a clear exception, nothing sent) and, when a publisher did not refuse it, by the
worker (the body never runs; Celery fails it without retry, Dramatiq dead-letters it)."""

from __future__ import annotations

import os
import subprocess
import sys
import time
import uuid
from collections.abc import Iterator
from decimal import Decimal
from pathlib import Path
from typing import Any

import pytest
import redis

from ownership_ctx import bind, budgets
from ownership_ctx.budgets import BudgetExceeded
from tests.budgets import queue_workers
from tests.budgets.support import envelope

ROOT = Path(__file__).resolve().parents[2]


class Deployment:
    def __init__(self, redis_url: str, prefix: str, kind: str, tmp: Path) -> None:
        session = uuid.uuid4().hex[:10]
        self.redis_url = redis_url
        self.prefix = prefix
        self.broker = redis_url.rstrip("/") + ("/1" if kind == "celery" else "/2")
        self.queue = f"oc-budgets-{session}"
        self.namespace = f"oc-budgets-{session}"
        self.records = f"{prefix}records"
        self.env = {
            **os.environ,
            "PYTHONPATH": str(ROOT),
            "OC_KIND": kind,
            "OC_QUEUE": self.queue,
            "OC_BROKER": self.broker,
            "OC_NAMESPACE": self.namespace,
            "OC_REDIS_URL": redis_url,
            "OC_BUDGET_PREFIX": prefix,
            "OC_RECORDS": self.records,
        }
        self.log = tmp / f"{kind}-worker.log"
        self.process: subprocess.Popen[bytes] | None = None

    def start(self, command: list[str]) -> None:
        out = self.log.open("wb")
        self.process = subprocess.Popen(
            command,
            env=self.env,
            cwd=ROOT,
            stdout=out,
            stderr=subprocess.STDOUT,
            start_new_session=True,
        )

    def stop(self) -> None:
        if self.process is not None and self.process.poll() is None:
            self.process.terminate()
            try:
                self.process.wait(20)
            except subprocess.TimeoutExpired:
                self.process.kill()
                self.process.wait(5)

    def ran(self) -> list[str]:
        client = redis.Redis.from_url(self.redis_url)
        return [m.decode() for m in client.lrange(self.records, 0, -1)]

    def wait_for(self, marker: str, timeout: float = 60) -> None:
        deadline = time.monotonic() + timeout
        while marker not in self.ran():
            if time.monotonic() > deadline:
                raise AssertionError(f"{marker} did not run; log:\n{self.log.read_text()[-3000:]}")
            time.sleep(0.1)

    def over_budget(self) -> None:
        """Spend the support team's budget (as the workers see it, in the shared Redis)."""
        shared = queue_workers.make_budgets(self.redis_url, self.prefix)
        shared.record(envelope(), Decimal("1.00"))
        # A worker that already checked this owner sees it at its next refresh (0.05 s):
        # the bounded staleness of the cached view, not what this test is about.
        time.sleep(4 * shared.refresh)


@pytest.fixture
def celery_deployment(
    redis_url: str, prefix: str, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> Iterator[Deployment]:
    deployment = Deployment(redis_url, prefix, "celery", tmp_path)
    monkeypatch.setenv("OC_REDIS_URL", redis_url)  # the test process records the same way
    monkeypatch.setenv("OC_RECORDS", deployment.records)
    deployment.start(
        [
            sys.executable,
            "-m",
            "celery",
            "-A",
            "tests.budgets.queue_workers",
            "worker",
            "--pool",
            "prefork",
            "--concurrency",
            "2",
            "--queues",
            deployment.queue,
            "--loglevel",
            "INFO",
            "--without-gossip",
            "--without-mingle",
            "--without-heartbeat",
        ]
    )
    try:
        yield deployment
    finally:
        deployment.stop()
        client = redis.Redis.from_url(deployment.broker)
        client.delete(deployment.queue)


def test_celery_refuses_at_publish_and_in_the_worker(celery_deployment: Deployment) -> None:
    d = celery_deployment
    app = queue_workers.celery_app(d.broker, d.queue)
    work: Any = app.tasks["oc.budgets.work"]
    with bind(envelope()):
        work.delay("before").get(timeout=60)  # the worker is up; the budget not yet spent
    d.over_budget()

    # At publish: budgets installed here too, so nothing is sent.
    budgets.install(queue_workers.make_budgets(d.redis_url, d.prefix))
    with bind(envelope()), pytest.raises(BudgetExceeded, match="support-daily"):
        work.delay("refused-at-publish")
    assert redis.Redis.from_url(d.broker).llen(d.queue) == 0

    # In the worker: a publisher without budgets sends it; the worker refuses, no retry.
    budgets.uninstall()
    with bind(envelope()):
        result = work.delay("refused-in-worker")
    with pytest.raises(Exception) as caught:
        result.get(timeout=60)
    assert type(caught.value).__name__ == "TaskRefused"
    assert "over budget" in str(caught.value) and "support-daily" in str(caught.value)
    assert result.state == "FAILURE"

    with bind(envelope(owner_team="search")):  # another owner: runs
        work.delay("other-owner").get(timeout=60)
    time.sleep(1)
    assert d.ran() == ["before", "other-owner"]
    assert "refused, its body did not run" in d.log.read_text()


@pytest.fixture
def dramatiq_deployment(
    redis_url: str, prefix: str, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> Iterator[Deployment]:
    deployment = Deployment(redis_url, prefix, "dramatiq", tmp_path)
    monkeypatch.setenv("OC_REDIS_URL", redis_url)  # the test process records the same way
    monkeypatch.setenv("OC_RECORDS", deployment.records)
    deployment.start(
        [
            sys.executable,
            "-m",
            "dramatiq",
            "tests.budgets.queue_workers",
            "--processes",
            "2",
            "--threads",
            "2",
            "--queues",
            deployment.queue,
        ]
    )
    try:
        yield deployment
    finally:
        deployment.stop()
        client = redis.Redis.from_url(deployment.broker)
        keys = list(client.scan_iter(match=deployment.namespace + "*"))
        if keys:
            client.delete(*keys)


def test_dramatiq_refuses_at_enqueue_and_dead_letters_in_the_worker(
    dramatiq_deployment: Deployment,
) -> None:
    d = dramatiq_deployment
    work = queue_workers.dramatiq_actor(d.broker, d.namespace, d.queue)
    with bind(envelope()):
        work.send("before")
    d.wait_for("before")
    d.over_budget()

    budgets.install(queue_workers.make_budgets(d.redis_url, d.prefix))
    with bind(envelope()), pytest.raises(BudgetExceeded, match="support-daily"):
        work.send("refused-at-enqueue")

    budgets.uninstall()
    client = redis.Redis.from_url(d.broker)
    with bind(envelope()):
        work.send("refused-in-worker")
    with bind(envelope(owner_team="search")):
        work.send("other-owner")
    d.wait_for("other-owner")
    dead = f"{d.namespace}:{d.queue}.XQ"
    deadline = time.monotonic() + 30
    while client.zcard(dead) < 1 and time.monotonic() < deadline:
        time.sleep(0.1)
    assert client.zcard(dead) == 1  # dead-lettered, never retried
    time.sleep(1)
    assert sorted(d.ran()) == ["before", "other-owner"]
    assert "over budget (budget 'support-daily'" in d.log.read_text()
