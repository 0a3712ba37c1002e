"""Dramatiq test deployments: a real broker, our middleware, the test actors, and a worker.

``deployment`` runs each test against Redis and RabbitMQ, with the worker in this process
(`dramatiq.Worker`) and as the ``dramatiq`` command in a subprocess. Queue names and recorder
keys are unique per session; workers are always stopped and queues removed at the end.
"""

from __future__ import annotations

import logging
import os
import signal
import subprocess
import sys
import tempfile
import time
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import dramatiq
import pytest
from dramatiq.broker import Broker

from tests.dramatiq.app import (
    Actors,
    LogToRecorder,
    Recorder,
    declare,
    install,
    make_broker,
    make_rate_limiter,
)
from tests.dramatiq.support import SESSION, unique
from tests.support import proof

ROOT = Path(__file__).resolve().parents[2]
DEPLOYMENTS = ("redis-inproc", "redis-cli", "rabbitmq-inproc", "rabbitmq-cli")
_LOGGERS = ("dramatiq", "tests.dramatiq", "ownership_ctx")


@dataclass
class Deployment:
    name: str
    kind: str
    actors: Actors  # declared on the sending broker (which is the worker's, in-process)
    plain: Actors  # the same actors on a broker without OwnershipMiddleware
    recorder: Recorder
    log_key: str
    worker: dramatiq.Worker | None = None
    process: subprocess.Popen[bytes] | None = None
    worker_log: Path | None = None
    _stops: list[Any] = field(default_factory=list)

    @property
    def broker(self) -> Broker:
        return self.actors.broker

    def stop(self) -> None:
        for stop in reversed(self._stops):
            stop()
        self._stops.clear()


def _start_inprocess(dep: Deployment, threads: int = 2) -> None:
    broker = dep.broker
    broker.emit_after("process_boot")  # what the CLI does: starts TimeLimit's watchdog
    handler = LogToRecorder(dep.recorder, dep.log_key)
    root = logging.getLogger()
    root.addHandler(handler)
    levels = {name: logging.getLogger(name).level for name in _LOGGERS}
    for name in _LOGGERS:
        logging.getLogger(name).setLevel(logging.INFO)
    worker = dramatiq.Worker(broker, worker_threads=threads, worker_timeout=100)
    worker.start()
    dep.worker = worker

    def stop() -> None:
        worker.stop(timeout=10_000)
        root.removeHandler(handler)
        for name, level in levels.items():
            logging.getLogger(name).setLevel(level)

    dep._stops.append(stop)


def _start_cli(
    dep: Deployment, broker_url: str, record_url: str, extra_env: dict[str, str] | None = None
) -> None:
    log = Path(tempfile.gettempdir()) / f"oc-dramatiq-{SESSION}-{dep.name}.log"
    env = {
        **os.environ,
        **(extra_env or {}),
        "OC_BROKER": dep.kind,
        "OC_BROKER_URL": broker_url,
        "OC_QUEUE": dep.actors.queue,
        "OC_RECORD_URL": record_url,
        "OC_LOG_KEY": dep.log_key,
        "PYTHONPATH": str(ROOT),
    }
    command = [sys.executable, "-m", "dramatiq", "tests.dramatiq.cli_app"]
    command += ["--processes", "1", "--threads", "2", "--path", str(ROOT)]
    with log.open("ab") as out:
        process = subprocess.Popen(
            command, cwd=ROOT, env=env, stdout=out, stderr=subprocess.STDOUT, start_new_session=True
        )
    dep.process, dep.worker_log = process, log

    def stop() -> None:
        if process.poll() is None:
            process.send_signal(signal.SIGTERM)
            try:
                process.wait(timeout=20)
            except subprocess.TimeoutExpired:
                os.killpg(process.pid, signal.SIGKILL)  # the session we started, nothing else
                process.wait(timeout=10)

    dep._stops.append(stop)
    # Ready when it has run a message.
    rec = unique("ready")
    dep.actors.record.send(rec, "ready", "ready")
    try:
        dep.recorder.wait(rec, 1, timeout=60)
    except AssertionError:
        message = f"dramatiq worker did not start; see {log}:\n{log.read_text()}"
        raise AssertionError(message) from None


def _delete_rabbitmq_queues(broker: Broker, names: tuple[str, ...], attempts: int = 3) -> None:
    """Delete ``names`` through a connection of their own, opened now and closed right after.

    The broker's own per-thread connection may have sat idle for minutes (other tests ran)
    and been reset by RabbitMQ for missed heartbeats; a fresh one does not inherit that.
    """
    import pika
    import pika.exceptions

    parameters = broker.parameters  # type: ignore[attr-defined]
    for attempt in range(1, attempts + 1):
        try:
            connection = pika.BlockingConnection(parameters)
        except pika.exceptions.AMQPConnectionError:
            if attempt == attempts:
                raise
            time.sleep(0.5 * attempt)
            continue
        try:
            channel = connection.channel()
            for name in names:
                channel.queue_delete(name)
            return
        except pika.exceptions.AMQPError:
            if attempt == attempts:
                raise
        finally:
            if connection.is_open:
                connection.close()


def release_connections(broker: Broker) -> None:
    """Close this thread's connection of ``broker``: the next send opens a fresh one.

    Connections are opened when needed and closed when a test is done with them, so none sits
    idle past its heartbeat timeout between tests (RabbitMQ resets those).
    """
    if hasattr(broker, "state"):  # RabbitmqBroker: one connection per thread
        del broker.connection  # type: ignore[attr-defined]


def _cleanup_broker(kind: str, broker: Broker, queue: str, recorder: Recorder) -> None:
    try:
        if kind == "rabbitmq":
            _delete_rabbitmq_queues(broker, (queue, f"{queue}.DQ", f"{queue}.XQ"))
        elif kind == "redis":
            recorder.delete(f"dramatiq:{queue}*")
    finally:
        broker.close()


_LIVE_BROKERS: list[Broker] = []


@pytest.fixture(autouse=True)
def _release_publisher_connections() -> Iterator[None]:
    """After each test, the test thread's broker connections are closed (see
    `release_connections`)."""
    yield
    for broker in _LIVE_BROKERS:
        release_connections(broker)


@pytest.fixture(scope="session", params=DEPLOYMENTS)
def deployment(request: pytest.FixtureRequest) -> Iterator[Deployment]:
    """A worker running the test actors against a real broker (see module docstring)."""
    kind, mode = request.param.split("-")
    base = request.getfixturevalue("redis_url")  # actors record into Redis in every deployment
    record_url = f"{base}/2"
    broker_url = record_url if kind == "redis" else request.getfixturevalue("rabbitmq_url")
    queue = f"oc-dq-{SESSION}-{kind}-{mode}"
    recorder = Recorder(record_url)
    log_key = unique(f"logs-{request.param}")

    broker = make_broker(kind, broker_url)
    install(broker, recorder=recorder, rate_limiter=make_rate_limiter(record_url))
    plain_broker = make_broker(kind, broker_url)
    install(
        plain_broker, recorder=recorder, rate_limiter=make_rate_limiter(record_url), ownership=False
    )
    dep = Deployment(
        name=request.param,
        kind=kind,
        actors=declare(broker, queue, recorder, log_key),
        plain=declare(plain_broker, queue, recorder, log_key),
        recorder=recorder,
        log_key=log_key,
    )
    _LIVE_BROKERS.extend((broker, plain_broker))
    try:
        if mode == "inproc":
            _start_inprocess(dep)
        else:
            _start_cli(dep, broker_url, record_url)
        yield dep
    finally:
        _LIVE_BROKERS.remove(broker)
        _LIVE_BROKERS.remove(plain_broker)
        dep.stop()
        plain_broker.close()
        _cleanup_broker(kind, broker, queue, recorder)
        recorder.delete(f"oc-dramatiq:{SESSION}:*")


@pytest.fixture
def stub() -> Iterator[Deployment]:
    """The embedded default: StubBroker, in-memory recorder, in-process worker (no services)."""
    recorder = Recorder(None)
    broker = make_broker("stub", "")
    install(broker, recorder=recorder, rate_limiter=make_rate_limiter(None))
    log_key = unique("logs-stub")
    actors = declare(broker, f"oc-dq-{SESSION}-stub", recorder, log_key)
    # One StubBroker cannot have a second publisher: `plain` is the same broker here.
    dep = Deployment("stub", "stub", actors, actors, recorder, log_key)
    _start_inprocess(dep, threads=1)
    try:
        yield dep
    finally:
        dep.stop()
        broker.close()


def pytest_terminal_summary(terminalreporter: Any) -> None:
    proof.summary(terminalreporter)  # what the property tests checked (printed once)
