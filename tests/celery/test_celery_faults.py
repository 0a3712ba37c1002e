"""Faults while workflows run on a Celery worker: the envelope survives all of them.

Like tests/dramatiq/test_dramatiq_faults.py: a worker subprocess on a broker of this module's
own (a private redis-server or RabbitMQ node from `tests.faults`, never the shared services),
something broken while canvases are in flight, then every execution that completed checked:
exactly its workflow's envelope, or (published with nothing bound) nobody's. What could not
complete is counted and reported (``record_property``). Results and chord state stay in the
shared Redis (database 1), which no test breaks.

- broker restarted mid-run;
- the whole worker killed with SIGKILL between receive and ack (``acks_late``): the broker
  redelivers the same message to the next worker, which sees the same envelope; the events of
  both deliveries reach the store exactly once each;
- every broker connection of the worker reset between publish and consume;
- pool processes replaced after every task (``--max-tasks-per-child 1``), random workflows.
"""

from __future__ import annotations

import collections
import contextlib
import itertools
import json
import os
import signal
import sqlite3
import tempfile
import time
import uuid
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest
from celery import chord, group
from celery.canvas import _chain
from hypothesis import HealthCheck, Phase, given, settings

from ownership_ctx import Envelope, bind
from tests.celery import app as celery_app
from tests.celery.support import (
    SESSION,
    Config,
    Worker,
    make_envelope,
    new_wf,
    records,
    wait_records,
)
from tests.support.faults import (
    RabbitNode,
    RedisServer,
    ResettingProxy,
    private_broker,
    require_binary,
)

pytestmark = pytest.mark.brokers
#: Workflows per fault: 6 x ``OC_FAULT_SCALE`` (default 1; CI keeps it small).
SCALE = int(os.environ.get("OC_FAULT_SCALE", "1"))
#: Brokers: both with ``OC_FAULTS_ALL=1`` (``make faults``); else rabbitmq only, to keep CI short
#: (the other library's fault tests cover redis in CI).
KINDS = ["redis", "rabbitmq"] if os.environ.get("OC_FAULTS_ALL") == "1" else ["rabbitmq"]
_numbers = itertools.count()
#: ``OC_HOOKS=0``: the same scenarios without ownership_ctx installed (tests.celery.app), to tell
#: Celery's behaviour from ours; only the counts are checked then.
HOOKS = os.environ.get("OC_HOOKS", "1") == "1"

_LEAF = (0, None, ())
_CANVASES: list[Any] = [
    ("task", _LEAF),
    ("task", (1, 0.1, ())),  # one retry with a countdown
    ("chain", [("task", _LEAF), ("task", (1, None, ()))]),
    ("group", [("task", _LEAF), ("task", (0, 0.1, ()))]),
    ("chord", [("task", _LEAF), ("task", (1, None, ()))], _LEAF),
    ("task", (0, None, ((0, 0.1, ()), (1, None, ())))),  # spawns two children
]


@dataclass
class Run:
    expected: dict[str, int]
    envs: dict[str, Envelope | None]
    #: Per workflow: each execution it must make, as (label, attempt).
    executions: dict[str, collections.Counter[tuple[str, int]]]


@dataclass
class Outcome:
    expected: int
    completed: int
    incomplete: int
    duplicates: int
    #: The executions that never ran, as ``workflow/label/attempt``.
    missing: list[str]


def executions(signature: Any) -> collections.Counter[tuple[str, int]]:
    """Every execution a canvas from `build` makes, as (label, attempt), counted from its
    specs (retries and spawned children included), not from the records."""
    found: collections.Counter[tuple[str, int]] = collections.Counter()

    def spec(s: dict[str, Any]) -> None:
        for attempt in range(s["retries"] + 1):
            found[(s["label"], attempt)] += 1
        for child in s["spawn"]:
            spec(child)

    def walk(sig: Any) -> None:
        if isinstance(sig, chord):
            for task in sig.tasks:
                walk(task)
            walk(sig.body)
        elif isinstance(sig, (_chain, group)):
            for task in sig.tasks:
                walk(task)
        else:
            spec(sig.args[0])

    walk(signature)
    return found


def publish(w: Worker, n: int) -> Run:
    from tests.celery.test_celery_property import build

    run = Run({}, {}, {})
    for i in range(n):
        wf = new_wf("fault")
        signature, count = build(w, wf, _CANVASES[i % len(_CANVASES)])
        run.executions[wf] = executions(signature)
        assert sum(run.executions[wf].values()) == count
        env = None if i % 3 == 0 else make_envelope(f"fault-{i}-{wf}")
        with bind(env):
            signature.apply_async()
        run.expected[wf], run.envs[wf] = count, env
    return run


def check(run: Run, timeout: float) -> Outcome:
    """Wait (up to ``timeout``) for the run, then check every execution that happened."""
    try:
        got = wait_records(run.expected, timeout=timeout)
    except AssertionError:
        got = collections.defaultdict(list)
        for r in records(set(run.expected)):
            got[r["wf"]].append(r)
    traces = {env.trace_id for env in run.envs.values() if env is not None}
    completed = incomplete = duplicates = 0
    missing: list[str] = []
    for wf, env in run.envs.items():
        recs = got.get(wf, [])
        for r in recs if HOOKS else ():
            assert r["env"] is not None, r  # nothing completes unowned
            if env is not None:
                assert r["env"] == env.as_dict(), r
            else:
                assert set(r["env"]) == {"trace_id", "attribution"}, r
                assert r["env"]["attribution"] == "unattributed", r
                assert r["env"]["trace_id"] not in traces, r
        # By execution, not by workflow: a duplicate must not hide a lost execution.
        seen = collections.Counter((r["label"], r["try"]) for r in recs)
        lost, extra = run.executions[wf] - seen, seen - run.executions[wf]
        completed += len(recs)
        incomplete += sum(lost.values())
        duplicates += sum(extra.values())
        missing += [f"{wf}/{label}/{attempt}" for label, attempt in sorted(lost.elements())]
    expected = sum(run.expected.values())
    return Outcome(expected, completed, incomplete, duplicates, missing)


def given_up(w: Worker) -> int:
    """Log lines about work the worker could not publish (a retry, a child, the next link, a
    chord callback) while the broker was unreachable. Each names the task's owner."""
    lines = [
        line
        for line in w.log_lines()
        if line.get("level") in ("WARNING", "ERROR")
        # Lines about a task (not about the worker's own connection or event loop).
        and line.get("logger") in ("celery.app.trace", "celery.app.amqp", "celery.backends.redis")
        and any(
            word in line.get("msg", "")
            for word in ("OperationalError", "Connection refused", "ConnectionError", "Giving up")
        )
    ]
    for line in lines:
        assert line["trace_id"] is not None, line  # the operator sees whose work it was
    return len(lines)


def _report(record_property: Any, name: str, outcome: Outcome) -> None:
    record_property(name, json.dumps(outcome.__dict__))
    print(f"{name}: {outcome}")


@pytest.fixture(scope="module", params=KINDS)
def server(request: pytest.FixtureRequest, redis_url: str) -> Iterator[RedisServer | RabbitNode]:
    """A broker of this module's own, on its own port (restarted by the tests at will)."""
    require_binary("redis-server" if request.param == "redis" else "rabbitmq-server")
    with private_broker(request.param) as broker_server:
        yield broker_server


@contextlib.contextmanager
def worker_on(
    server: RedisServer | RabbitNode,
    *,
    pool: str = "threads",
    worker_url: str | None = None,
    env: dict[str, str] | None = None,
) -> Iterator[Worker]:
    kind = "redis" if isinstance(server, RedisServer) else "rabbitmq"
    config = Config(f"fault-{kind}-{next(_numbers)}", kind, "redis", pool, 2)
    workdir = Path(tempfile.mkdtemp(prefix=f"oc-celery-fault-{SESSION}-"))
    # Redis: a message a dead worker had not acked is delivered again after this long.
    # RabbitMQ: publisher confirms (without them a reset can drop a publish unnoticed).
    base = {"OC_CONFIRM_PUBLISH": "1"} if kind == "rabbitmq" else {"OC_VISIBILITY_TIMEOUT": "3"}
    w = Worker(
        config,
        workdir,
        broker_url=server.url,
        worker_broker_url=worker_url,
        env={**base, **(env or {})},
    )
    w.app.conf.broker_transport_options = (
        {"confirm_publish": True} if kind == "rabbitmq" else celery_app.fast_restore(3)
    )
    w.start()
    w.wait_ready()
    try:
        yield w
    finally:
        w.stop()
        with contextlib.suppress(Exception):
            w.app.close()


def _restart(w: Worker) -> None:
    w.stop()
    w.start()
    w.wait_ready()


def test_broker_restarted_mid_run(server: RedisServer | RabbitNode, record_property: Any) -> None:
    with worker_on(server) as w:
        before = publish(w, 6 * SCALE)
        deadline = time.monotonic() + 30
        while not records(set(before.expected)):  # in flight now: restart under it
            assert time.monotonic() < deadline, "nothing ran"
            time.sleep(0.05)
        server.restart(down_for=1.0)
        after = publish(w, 3 * SCALE)  # the publisher reconnects (kombu's retry policy)

        during = check(before, timeout=5)
        _report(record_property, "published before the restart", during)
        recovered = check(after, timeout=5)
        _report(record_property, "published after the restart", recovered)
        assert during.completed > 0
        # Celery's Redis consumer may die on the reconnect ("Unrecoverable error:
        # AttributeError ... 'hostname'", kombu; docs/proof-at-scale.md): a supervisor would
        # start it again, so does the test. Counted, and no envelope is lost on the way.
        survived = w.alive()
        record_property("worker survived the broker restart", survived)
        print(f"worker survived the broker restart: {survived}")
        if not survived or during.incomplete or recovered.incomplete:
            # What the worker held when the broker went away comes back to the next worker.
            _restart(w)
            failed = given_up(w)
            record_property("tasks given up for a failed publish", failed)
            for name, run in (("before", before), ("after", after)):
                final = check(run, timeout=10)
                _report(record_property, f"published {name} the restart, worker restarted", final)
                assert final.incomplete == 0 or failed > 0, final


def _event_ids(db: Path, table: str, trace_id: str) -> list[str]:
    with contextlib.closing(sqlite3.connect(db)) as conn:
        try:
            query = f"SELECT event_id FROM {table} WHERE trace_id = ?"
            return [event_id for (event_id,) in conn.execute(query, (trace_id,))]
        except sqlite3.OperationalError:  # no such table yet
            return []


def _wait_events(db: Path, table: str, trace_id: str, n: int, timeout: float = 15) -> None:
    deadline = time.monotonic() + timeout
    while len(_event_ids(db, table, trace_id)) < n:
        assert time.monotonic() < deadline, f"{table}: fewer than {n} events for {trace_id}"
        time.sleep(0.1)


def test_worker_killed_between_receive_and_ack(
    server: RedisServer | RabbitNode, tmp_path: Path
) -> None:
    db = tmp_path / "events.db"
    with worker_on(server, pool="prefork", env={"OC_SINK_URL": f"sqlite:///{db}"}) as w:
        wf, env = new_wf("killed"), make_envelope("killed")
        flag = f"oc:celery-tests:flag:{uuid.uuid4().hex}"
        spec = {"wf": wf, "label": "a", "flag": flag, "metered": True}
        with bind(env):
            w.app.tasks["oc.q.requeued"].apply_async((spec,))
        deadline = time.monotonic() + 30
        while not records({wf}):
            assert time.monotonic() < deadline, "the task never started"
            time.sleep(0.05)
        # Its events are written within the pipeline's interval: wait for them, so that what
        # follows is about redelivery and not about the crash window (docs/proof-at-scale.md).
        _wait_events(db, "hops", env.trace_id, 1)
        _wait_events(db, "provider_calls", env.trace_id, 1)
        assert w.proc is not None
        os.killpg(w.proc.pid, signal.SIGKILL)  # the whole worker: nobody acks, nobody rejects
        w.proc.wait(10)

        w.start()  # the next worker gets the unacked message again
        w.wait_ready()
        recs = wait_records({wf: 2}, timeout=60)[wf]
        assert [r["first"] for r in recs] == [True, False]
        assert [r["env"] for r in recs] == [env.as_dict(), env.as_dict()]
        assert recs[0]["id"] == recs[1]["id"]  # the same message, delivered again
        _wait_events(db, "hops", env.trace_id, 2)
        _wait_events(db, "provider_calls", env.trace_id, 2)
    time.sleep(0.5)
    for table in ("hops", "provider_calls"):
        ids = _event_ids(db, table, env.trace_id)
        assert len(ids) == 2 and len(set(ids)) == 2, (table, ids)  # once per delivery


def test_connection_reset_between_publish_and_consume(
    server: RedisServer | RabbitNode, record_property: Any
) -> None:
    proxy = ResettingProxy(server.port)
    worker_url = server.url.replace(f":{server.port}", f":{proxy.port}")
    try:
        with worker_on(server, worker_url=worker_url) as w:
            run = publish(w, 6 * SCALE)
            assert proxy.reset() > 0  # published, mostly not consumed yet
            time.sleep(1.0)
            proxy.reset()
            outcome = check(run, timeout=5)
            _report(record_property, "reset between publish and consume", outcome)
            survived = w.alive()  # see test_broker_restarted_mid_run: restarted if not
            record_property("worker survived the resets", survived)
            if outcome.incomplete or not survived:
                failed = given_up(w)
                _restart(w)  # unacked work comes back to the next worker
                outcome = check(run, timeout=10)
                _report(record_property, "reset, worker restarted", outcome)
                assert outcome.incomplete == 0 or failed > 0, outcome
    finally:
        proxy.close()


def test_pool_processes_replaced_after_every_task(worker_for: Any, record_property: Any) -> None:
    """Random workflows on a prefork worker whose pool processes each run one task only."""
    from tests.celery.test_celery_property import run_workflows, workflows

    worker_for("redis-prefork")  # the shared Redis answers (skips / fails like the others)
    config = Config(f"maxtasks-{next(_numbers)}", "redis", "redis", "prefork", 2)
    workdir = Path(tempfile.mkdtemp(prefix=f"oc-celery-maxtasks-{SESSION}-"))
    w = Worker(config, workdir, worker_args=("--max-tasks-per-child", "1"))
    w.start()
    try:
        w.wait_ready()

        @settings(
            max_examples=2 * SCALE,
            deadline=None,
            phases=[Phase.explicit, Phase.generate],
            suppress_health_check=list(HealthCheck),
            database=None,
        )
        @given(workflows)
        def check_batch(batch: list[tuple[Any, bool]]) -> None:
            run_workflows(w, batch)

        check_batch()
        pids = {r["pid"] for r in records() if r["task"] == "oc.q.node"}
        record_property("pool processes seen", len(pids))
        assert w.alive()
    finally:
        w.stop()
        w.cleanup_broker()
