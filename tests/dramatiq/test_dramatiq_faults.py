"""Faults while workflows run on a Dramatiq worker: the envelope survives all of them.

Each test runs a `dramatiq` worker subprocess against a broker of its own (`tests.faults`: a
private redis-server or RabbitMQ node, never the shared services), breaks something while
workflows are in flight, and checks every execution that completed: it saw exactly its
workflow's envelope (or, published with nothing bound, nobody's). What could not complete is
counted and reported (``record_property``), never passed over silently.

- broker restarted mid-run (both brokers keep queued messages on disk): what the worker held
  then completes once the worker restarts too;
- worker killed with SIGKILL between receive and ack: the redelivered message sees the same
  envelope, and the events of both deliveries reach the store exactly once each;
- every broker connection of the worker reset between publish and consume.
"""

from __future__ import annotations

import contextlib
import itertools
import json
import os
import signal
import sqlite3
import time
import uuid
from collections import Counter
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest

from ownership_ctx import Envelope, bind, new_trace_id
from tests.dramatiq.app import Recorder, declare, env_from, install, make_broker, make_rate_limiter
from tests.dramatiq.conftest import Deployment, _start_cli
from tests.dramatiq.support import SESSION, envelope, unique
from tests.support.faults import (
    RabbitNode,
    RedisServer,
    ResettingProxy,
    private_broker,
    require_binary,
)

pytestmark = pytest.mark.brokers
#: Workflows per fault: 12 x ``OC_FAULT_SCALE`` (default 1; CI keeps it small).
SCALE = int(os.environ.get("OC_FAULT_SCALE", "1"))
#: Brokers: both with ``OC_FAULTS_ALL=1`` (``make faults``); else redis only, to keep CI short
#: (the other library's fault tests cover rabbitmq in CI).
KINDS = ["redis", "rabbitmq"] if os.environ.get("OC_FAULTS_ALL") == "1" else ["redis"]
_numbers = itertools.count()

# A fixed mix of the property test's shapes: in flight at once, some delayed, some retried.
_SHAPES: list[tuple[Any, ...]] = [
    ("send",),
    ("delay", 300),
    ("retry", 1),
    ("pipeline", [0, 1, 0]),
    ("group", [0, 1], True),
    ("tree", [{"delay": None, "children": [{"delay": 150, "children": []}]}]),
]


def fault_flows(n: int) -> list[tuple[dict[str, Any] | None, tuple[Any, ...]]]:
    """``n`` workflows: a third published with nothing bound, some quarantined (missing fields)."""
    flows: list[tuple[dict[str, Any] | None, tuple[Any, ...]]] = []
    for i in range(n):
        values: dict[str, Any] | None = None
        if i % 3:
            values = {"owner_team": f"team-{i}", "workflow_id": f"wf-{i}", "feature": "faults"}
            if i % 5 == 0:
                del values["feature"]  # quarantined by the worker's policy, still carried
        flows.append((values, _SHAPES[i % len(_SHAPES)]))
    return flows


@dataclass
class Run:
    rec: str
    expected: dict[str, Envelope | None]
    counts: Counter[str]


def publish(dep: Deployment, flows: list[tuple[dict[str, Any] | None, tuple[Any, ...]]]) -> Run:
    from tests.dramatiq.test_dramatiq_property import _expected, _start

    run = Run(unique("fault"), {}, Counter())
    for i, (values, shape) in enumerate(flows):
        tag = f"w{i}"
        if values is None:
            run.expected[tag] = None
            run.counts[tag] = _start(dep, run.rec, tag, shape)
        else:
            env = run.expected[tag] = _expected(values, new_trace_id())
            with bind(Envelope(trace_id=env.trace_id, **values)):
                run.counts[tag] = _start(dep, run.rec, tag, shape)
    return run


@dataclass
class Outcome:
    expected: int
    completed: int  # executions that ran, each checked
    incomplete: int  # expected executions that never ran
    duplicates: int  # executions beyond the expected ones (redeliveries)


def check(dep: Deployment, run: Run, timeout: float) -> Outcome:
    """Wait (up to ``timeout``) for the run, then check every execution that happened."""
    total = sum(run.counts.values())
    with contextlib.suppress(AssertionError):
        dep.recorder.wait(run.rec, total, timeout=timeout)
    time.sleep(0.3)
    records = dep.recorder.read(run.rec)
    enveloped = {e.trace_id for e in run.expected.values() if e is not None}
    for record in records:
        seen, want = env_from(record["env"]), run.expected[record["tag"]]
        assert seen is not None, record  # nothing completes unowned
        if want is not None:
            assert seen == want, record
        else:
            assert seen == Envelope(trace_id=seen.trace_id, attribution="unattributed"), record
            assert seen.trace_id not in enveloped, record
    got = Counter(r["tag"] for r in records)
    return Outcome(
        expected=total,
        completed=len(records),
        incomplete=sum((run.counts - got).values()),
        duplicates=sum((got - run.counts).values()),
    )


def _report(record_property: Any, name: str, outcome: Outcome) -> None:
    record_property(name, json.dumps(outcome.__dict__))
    print(f"{name}: {outcome}")  # shown with -s / -rA: what could not complete is counted


# -- deployments on a private broker ------------------------------------------------------


@pytest.fixture(scope="module", params=KINDS)
def server(request: pytest.FixtureRequest, redis_url: str) -> Iterator[RedisServer | RabbitNode]:
    """A broker of this module's own, on its own port (restarted by the tests at will)."""
    require_binary("redis-server" if request.param == "redis" else "rabbitmq-server")
    with private_broker(request.param) as broker_server:
        yield broker_server


def _kind(server: RedisServer | RabbitNode) -> str:
    return "redis" if isinstance(server, RedisServer) else "rabbitmq"


# Redis: a worker that died leaves its unacked messages to whoever does maintenance once the
# dead worker's heartbeat is this old; these workers check on every fetch. A command that lost
# its connection is retried on a new one (redis-py's Retry; what a deployment should set too).
_REDIS_OPTIONS = {
    "heartbeat_timeout": 3000,
    "maintenance_chance": 1_000_000,
    "reconnect_attempts": 5,
}


@contextlib.contextmanager
def deployment_on(
    server: RedisServer | RabbitNode,
    redis_url: str,
    *,
    worker_url: str | None = None,
    sink_url: str | None = None,
) -> Iterator[Deployment]:
    """A `dramatiq` worker subprocess on ``server`` (through ``worker_url`` if given) and a
    publisher in this process connected to ``server`` directly."""
    kind = _kind(server)
    record_url = f"{redis_url}/2"
    options = _REDIS_OPTIONS if kind == "redis" else {}
    broker = make_broker(kind, server.url, **dict(options))
    recorder = Recorder(record_url)
    install(broker, recorder=recorder, rate_limiter=make_rate_limiter(record_url))
    queue = f"oc-dq-{SESSION}-fault-{kind}-{next(_numbers)}"
    log_key = unique("fault-logs")
    actors = declare(broker, queue, recorder, log_key)
    dep = Deployment(f"fault-{kind}", kind, actors, actors, recorder, log_key)
    env = {"OC_BROKER_OPTIONS": json.dumps(options)}
    if sink_url:
        env["OC_SINK_URL"] = sink_url
    dep_env = env

    def start() -> None:
        _start_cli(dep, worker_url or server.url, record_url, dep_env)

    dep.start_worker = start  # type: ignore[attr-defined]
    start()
    try:
        yield dep
    finally:
        dep.stop()
        broker.close()
        recorder.delete(f"oc-dramatiq:{SESSION}:*")


# -- the faults ---------------------------------------------------------------------------


def test_broker_restarted_mid_run(
    server: RedisServer | RabbitNode, redis_url: str, record_property: Any
) -> None:
    with deployment_on(server, redis_url) as dep:
        before = publish(dep, fault_flows(12 * SCALE))
        dep.recorder.wait(before.rec, 3, timeout=30)  # in flight now: restart under it
        server.restart(down_for=1.0)
        assert dep.process is not None and dep.process.poll() is None, "worker died"
        after = publish(dep, fault_flows(6 * SCALE))  # the publisher reconnects on its own

        during = check(dep, before, timeout=5)
        _report(record_property, "published before the restart", during)
        recovered = check(dep, after, timeout=5)
        _report(record_property, "published after the restart", recovered)
        assert during.completed > 0 and recovered.completed > 0
        # What a live worker holds when its broker restarts (prefetched, delayed, acks that
        # failed) waits for that worker's restart: then everything completes, each execution
        # still with its envelope (a redelivery may run a unit twice; checked like the rest).
        dep.stop()
        dep.start_worker()  # type: ignore[attr-defined]
        for name, run in (("before", before), ("after", after)):
            final = check(dep, run, timeout=30)
            _report(record_property, f"published {name} the restart, after a worker restart", final)
            assert final.incomplete == 0, final


def _rows(db: Path, table: str, trace_id: str) -> list[str]:
    """The event ids stored in ``table`` for ``trace_id``."""
    with contextlib.closing(sqlite3.connect(db)) as conn:
        try:
            query = f"SELECT event_id FROM {table} WHERE trace_id = ?"
            return [event_id for (event_id,) in conn.execute(query, (trace_id,))]
        except sqlite3.OperationalError:  # the table does not exist yet
            return []


def _wait_rows(db: Path, table: str, trace_id: str, n: int, timeout: float = 15) -> None:
    deadline = time.monotonic() + timeout
    while len(_rows(db, table, trace_id)) < n:
        assert time.monotonic() < deadline, f"{table}: fewer than {n} rows for {trace_id}"
        time.sleep(0.1)


def test_worker_killed_between_receive_and_ack(
    server: RedisServer | RabbitNode, redis_url: str, tmp_path: Path
) -> None:
    db = tmp_path / "events.db"
    with deployment_on(server, redis_url, sink_url=f"sqlite:///{db}") as dep:
        env, rec, flag = envelope(), unique("killed"), f"oc-dramatiq:{SESSION}:flag:{uuid.uuid4()}"
        with bind(env):
            message = dep.actors.hang_once.send(rec, "killed", "a", flag)
        first = dep.recorder.wait(rec, 1, timeout=30)
        assert first[0]["actor"] == "oc_hang_once"  # received, running, not acked
        # Its events are written within the pipeline's interval: wait for them, so that what
        # follows is about redelivery and not about the crash window (docs/proof-at-scale.md).
        _wait_rows(db, "hops", env.trace_id, 1)
        _wait_rows(db, "provider_calls", env.trace_id, 1)
        assert dep.process is not None
        os.killpg(dep.process.pid, signal.SIGKILL)  # the worker's session: nothing else
        dep.process.wait(10)

        dep.start_worker()  # type: ignore[attr-defined]
        records = dep.recorder.wait(rec, 2, timeout=60)
        assert [r["actor"] for r in records] == ["oc_hang_once", "oc_hang_once-again"]
        assert [env_from(r["env"]) for r in records] == [env, env]  # same envelope, redelivered
        assert message.message_id  # one message: redelivered, not published again
        _wait_rows(db, "hops", env.trace_id, 2)
        _wait_rows(db, "provider_calls", env.trace_id, 2)
        dep.stop()  # flushes the worker's pipeline
    time.sleep(0.5)
    for table in ("hops", "provider_calls"):
        rows = _rows(db, table, env.trace_id)
        # One event per delivery, each stored once: nothing lost, nothing duplicated.
        assert len(rows) == 2, (table, rows)
        assert len(set(rows)) == 2, rows


def test_connection_reset_between_publish_and_consume(
    server: RedisServer | RabbitNode, redis_url: str, record_property: Any
) -> None:
    proxy = ResettingProxy(server.port)
    worker_url = server.url.replace(f":{server.port}", f":{proxy.port}")
    try:
        with deployment_on(server, redis_url, worker_url=worker_url) as dep:
            run = publish(dep, fault_flows(12 * SCALE))
            # Published, mostly not consumed yet: cut every connection the worker has, twice.
            assert proxy.reset() > 0
            time.sleep(1.0)
            proxy.reset()
            outcome = check(dep, run, timeout=5)
            _report(record_property, "reset between publish and consume", outcome)
            assert dep.process is not None and dep.process.poll() is None, "worker died"
            # Redis: a message fetched when the connection broke stays in this worker's
            # unacked set until the worker restarts (Dramatiq's design); then it completes.
            dep.stop()
            dep.start_worker()  # type: ignore[attr-defined]
            final = check(dep, run, timeout=10)
            _report(record_property, "reset between publish and consume, worker restarted", final)
            # Dramatiq gives up a message whose retry it cannot enqueue (the Retries middleware
            # logs it and the message is acked): the only way work may not complete here, and
            # never unlogged.
            assert dep.worker_log is not None
            given_up = dep.worker_log.read_text().count("Unexpected failure in after_process")
            record_property("retries Dramatiq could not enqueue", given_up)
            assert final.incomplete == 0 or given_up > 0, final
    finally:
        proxy.close()
