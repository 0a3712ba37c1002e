"""Real Celery workers on real brokers for the tests: configurations, subprocesses, records.

Each `Config` is one worker subprocess (``celery -A tests.celery.app worker``) with its own
queue name (unique per session, so stale messages cannot interfere) and the test process's
twin app to publish with. Workers start in parallel on first use and are stopped at the end
of the session (SIGTERM, then SIGKILL of the process group we started).
"""

from __future__ import annotations

import collections
import dataclasses
import json
import os
import signal
import socket
import subprocess
import sys
import time
import uuid
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

import redis

from ownership_ctx import Envelope, hash_identifier, new_trace_id
from tests.celery import app as celery_app

HERE = Path(__file__).resolve().parent
ROOT = HERE.parents[1]
SESSION = uuid.uuid4().hex[:8]
REDIS_BASE = os.environ.get("OWNERSHIP_CTX_REDIS_URL", "redis://127.0.0.1:6379")
RABBIT = os.environ.get("OWNERSHIP_CTX_RABBITMQ_URL", "amqp://guest:guest@127.0.0.1:5672//")
REDIS_DB = REDIS_BASE.rstrip("/") + "/1"  # Celery's database (Dramatiq uses /2)
RECORDS_KEY = f"oc:celery-tests:{SESSION}:records"
WAIT = float(os.environ.get("OC_CELERY_WAIT", "45"))


@dataclasses.dataclass(frozen=True)
class Config:
    name: str
    broker: str  # "redis" | "rabbitmq"
    backend: str  # "redis" | "rpc" | "file" (no native chords: chord_unlock)
    pool: str
    concurrency: int = 1
    policy: str = "main"
    otel: bool = False

    @property
    def queue(self) -> str:
        return f"oc-{SESSION}-{self.name}"

    @property
    def chords(self) -> bool:
        # rpc:// results live on the caller's reply queue: chord_unlock cannot read them.
        return self.backend != "rpc"


CONFIGS = {
    c.name: c
    for c in (
        Config("redis-prefork", "redis", "redis", "prefork", 2, otel=True),
        Config("rabbit-threads", "rabbitmq", "redis", "threads", 2),
        Config("rabbit-rpc-prefork", "rabbitmq", "rpc", "prefork", 1),
        Config("redis-unlock-threads", "redis", "file", "threads", 2),
        Config("redis-rpc-solo", "redis", "rpc", "solo"),
        Config("signed-solo", "redis", "redis", "solo", policy="signed"),
    )
}


def _answers(url: str) -> bool:
    parts = urlsplit(url)
    try:
        with socket.create_connection((parts.hostname or "127.0.0.1", parts.port or 0), 1.0):
            return True
    except OSError:
        return False


class Worker:
    """One worker subprocess and the test process's app for the same queue."""

    def __init__(
        self,
        config: Config,
        workdir: Path,
        *,
        broker_url: str | None = None,
        worker_broker_url: str | None = None,
        worker_args: tuple[str, ...] = (),
        env: dict[str, str] | None = None,
    ) -> None:
        """``broker_url``: another broker than the shared one (the fault tests' own);
        ``worker_broker_url``: the worker's way to it (through a proxy); ``worker_args`` and
        ``env``: more for the worker's command line and environment."""
        self.config = config
        self.log_path = workdir / f"{config.name}.log"
        self.out_path = workdir / f"{config.name}.out"
        self.ready_path = workdir / f"{config.name}.ready"
        broker = broker_url or (REDIS_DB if config.broker == "redis" else RABBIT)
        self.worker_args, self.env = worker_args, dict(env or {})
        backend = {
            "redis": REDIS_DB,
            "rpc": "rpc://",
            "file": f"file://{workdir / 'results'}",
        }[config.backend]
        (workdir / "results").mkdir(exist_ok=True)
        self.settings = {
            "OC_BROKER": broker,
            "OC_BACKEND": backend,
            "OC_QUEUE": config.queue,
            "OC_RECORDS_URL": REDIS_DB,
            "OC_RECORDS_KEY": RECORDS_KEY,
            "OC_POLICY": config.policy,
            "OC_LOG": str(self.log_path),
            "OC_READY": str(self.ready_path),
            "OC_OTEL": "1" if config.otel else "0",
            **self.env,
        }
        if worker_broker_url:
            self.settings["OC_BROKER"] = worker_broker_url
        self.app = celery_app.make_app(
            broker=broker,
            backend=backend,
            queue=config.queue,
            records_url=REDIS_DB,
            records_key=RECORDS_KEY,
            policy=config.policy,
        )
        self.proc: subprocess.Popen[bytes] | None = None
        self.results: dict[str, Any] = {}  # scenario outcomes by test module, filled once

    def start(self) -> None:
        self.ready_path.unlink(missing_ok=True)
        env = {
            **os.environ,
            **self.settings,
            "PYTHONPATH": str(ROOT),
            "OWNERSHIP_CTX_SIGNING_KEYS": "",
        }
        command = [
            sys.executable,
            "-m",
            "celery",
            "-A",
            "tests.celery.app",
            "worker",
            "-P",
            self.config.pool,
            "-c",
            str(self.config.concurrency),
            "-Q",
            self.config.queue,
            "-n",
            f"{self.config.queue}@%h",
            "-l",
            "INFO",
            "--without-gossip",
            "--without-mingle",
            "--without-heartbeat",
            *self.worker_args,
        ]
        with open(self.out_path, "ab") as out:
            self.proc = subprocess.Popen(
                command,
                cwd=HERE,
                env=env,
                stdout=out,
                stderr=subprocess.STDOUT,
                start_new_session=True,
            )

    def wait_ready(self, timeout: float = 60) -> None:
        deadline = time.monotonic() + timeout
        while not self.ready_path.exists():
            assert self.proc is not None
            if self.proc.poll() is not None or time.monotonic() > deadline:
                raise RuntimeError(f"worker {self.config.name} did not start:\n{self.output()}")
            time.sleep(0.1)

    def alive(self) -> bool:
        return self.proc is not None and self.proc.poll() is None

    def output(self) -> str:
        try:
            return self.out_path.read_text(errors="replace")[-6000:]
        except OSError:
            return ""

    def log_lines(self) -> list[dict[str, Any]]:
        lines = []
        for raw in self.log_path.read_text(errors="replace").splitlines():
            try:
                lines.append(json.loads(raw))
            except ValueError:
                continue
        return lines

    def stop(self) -> None:
        if self.proc is None or self.proc.poll() is not None:
            return
        os.killpg(self.proc.pid, signal.SIGTERM)  # warm shutdown of the group we started
        try:
            self.proc.wait(15)
        except subprocess.TimeoutExpired:
            os.killpg(self.proc.pid, signal.SIGKILL)
            self.proc.wait(5)

    def cleanup_broker(self) -> None:
        try:
            with self.app.connection_for_write() as conn:
                conn.default_channel.queue_delete(self.config.queue)
        except Exception:
            pass


class Farm:
    def __init__(self, workdir: Path) -> None:
        self.workdir = workdir
        self.workers: dict[str, Worker] = {}

    def get(self, name: str) -> Worker:
        if name not in self.workers:
            # Start every worker whose broker answers at once: they boot in parallel.
            wanted = [name] + [n for n in CONFIGS if n not in self.workers and n != name]
            started = []
            for n in wanted:
                config = CONFIGS[n]
                if n != name and not _answers(RABBIT if config.broker == "rabbitmq" else REDIS_DB):
                    continue
                worker = self.workers[n] = Worker(config, self.workdir)
                worker.start()
                started.append(worker)
            for worker in started:
                worker.wait_ready()
        worker = self.workers[name]
        assert worker.alive(), f"worker {name} died:\n{worker.output()}"
        return worker

    def close(self) -> None:
        for worker in self.workers.values():
            worker.stop()
        for worker in self.workers.values():
            worker.cleanup_broker()


# -- records -----------------------------------------------------------------------------


def records(workflows: set[str] | None = None) -> list[dict[str, Any]]:
    raw = redis.Redis.from_url(REDIS_DB).lrange(RECORDS_KEY, 0, -1)
    out = [json.loads(r) for r in raw]
    return [r for r in out if workflows is None or r["wf"] in workflows]


def wait_records(
    expected: dict[str, int], timeout: float = WAIT, settle: float = 0.4
) -> dict[str, list[dict[str, Any]]]:
    """Wait until each workflow has its expected number of executions, then a little longer
    (so that an extra, leaked or duplicated execution would show), and return them by workflow."""
    deadline = time.monotonic() + timeout
    while True:
        got = collections.defaultdict(list)
        for r in records(set(expected)):
            got[r["wf"]].append(r)
        if all(len(got[wf]) >= n for wf, n in expected.items()):
            break
        if time.monotonic() > deadline:
            short = {wf: (len(got[wf]), n) for wf, n in expected.items() if len(got[wf]) < n}
            raise AssertionError(f"executions missing after {timeout}s (got, expected): {short}")
        time.sleep(0.1)
    time.sleep(settle)
    got = collections.defaultdict(list)
    for r in records(set(expected)):
        got[r["wf"]].append(r)
    return dict(got)


def make_envelope(n: int | str, *, extras: bool = True) -> Envelope:
    return Envelope(
        new_trace_id(),
        owner_team=f"team-{n}",
        workflow_id=f"workflow-{n}",
        feature=f"feature-{n}",
        tenant=hash_identifier(f"tenant-{n}", celery_app.HASH_KEY),
        user=hash_identifier(f"user-{n}", celery_app.HASH_KEY),
        extras={"cost_center": f"cc-{n}"} if extras else {},
    )


def new_wf(prefix: str) -> str:
    return f"{prefix}-{uuid.uuid4().hex[:10]}"


def raw_publish(app: Any, name: str, args: tuple[Any, ...], headers: dict[str, Any]) -> str:
    """Publish a task message with plain kombu, as a service without our hooks would."""
    task_id = str(uuid.uuid4())
    message = app.amqp.as_task_v2(task_id, name, args=args, kwargs={})
    message.headers.update(headers)
    with app.producer_or_acquire() as producer:
        producer.publish(
            message.body,
            routing_key=app.conf.task_default_queue,
            exchange="",
            headers=message.headers,
            serializer="json",
            retry=True,
            **message.properties,
        )
    return task_id
