"""Faults: each test hands events to the pipeline while something breaks, then asserts that
every one of them is stored exactly once and that the host never saw an exception.

- read-only directory: ``chattr +i`` on the database directory and its files. Root ignores
  permission bits, and a read-only remount is refused while the database files are open for
  writing, so the immutable flag is the real failure available to root: writes to the open
  connection fail with "disk I/O error", reopening gives a read-only connection.
- locked: another process holds ``BEGIN EXCLUSIVE`` for several seconds.
- PostgreSQL stopped (``pg_ctlcluster ... stop -m fast``) and started again mid-stream.
- flooded far beyond the queue bound; normal exit with events still queued; SIGKILL (the
  measured loss window); several processes on one SQLite file, and a prefork parent.
"""

from __future__ import annotations

import json
import os
import shutil
import signal
import struct
import subprocess
import sys
import textwrap
import threading
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from ownership_ctx import events
from ownership_ctx.sinks.config import open_backend
from ownership_ctx.sinks.pipeline import Pipeline
from ownership_ctx.store import SQLiteStore
from tests.store.helpers import assert_stored_exactly_once, mixed

ROOT = Path(__file__).resolve().parents[2]

FAST_RETRY: dict[str, Any] = {
    "flush_interval": 0.02,
    "retry_initial": 0.05,
    "retry_max": 0.5,
    "batch_size": 200,
    "queue_size": 2000,
}


def python(code: str, *args: str, **kwargs: Any) -> subprocess.Popen[str]:
    env = {**os.environ, "PYTHONPATH": str(ROOT)}
    return subprocess.Popen(
        [sys.executable, "-c", textwrap.dedent(code), *args],
        cwd=ROOT,
        env=env,
        text=True,
        stdout=subprocess.PIPE,
        **kwargs,
    )


def emit_over(pipeline: Pipeline, batch: list[dict[str, Any]], seconds: float) -> None:
    """Emit ``batch`` spread over ``seconds`` (a host serving requests); emit never raises."""
    pause = seconds / max(1, len(batch) // 20)
    for i, event in enumerate(batch):
        pipeline.emit(event)
        if i % 20 == 19:
            time.sleep(pause)


# -- SQLite: read-only directory ----------------------------------------------------------


def _chattr(flag: str, *paths: Path) -> None:
    existing = [str(p) for p in paths if p.exists()]
    subprocess.run(["chattr", flag, *existing], check=True, capture_output=True)


@pytest.fixture
def immutable_capable(tmp_path: Path) -> Iterator[None]:
    probe = tmp_path / "probe"
    probe.mkdir()
    if shutil.which("chattr") is None:
        pytest.skip("chattr not available: cannot make a directory read-only for root")
    try:
        _chattr("+i", probe)
    except subprocess.CalledProcessError:
        pytest.skip("this filesystem does not support chattr +i")
    _chattr("-i", probe)
    yield


def test_sqlite_directory_read_only_then_writable(tmp_path: Path, immutable_capable: None) -> None:
    directory = tmp_path / "db"
    directory.mkdir()
    path = directory / "events.db"
    store = SQLiteStore(path)
    pipeline = Pipeline(store, spool_dir=tmp_path / "spool", **FAST_RETRY)
    sent = mixed(3000)
    for e in sent[:500]:
        pipeline.emit(e)
    assert pipeline.flush(10)
    errors = events.stats["sink_backend_errors"]
    # Not the -shm file: SQLite maps it into memory, and a mapping that cannot grow is a
    # SIGBUS, not an error (a read-only remount is refused while it is mapped, so this is
    # not a state a real system reaches).
    frozen = [directory, path, Path(f"{path}-wal")]
    _chattr("+i", *frozen)
    try:
        emit_over(pipeline, sent[500:2500], 2.0)
        time.sleep(0.3)
        assert events.stats["sink_backend_errors"] > errors, "the failure was not real"
    finally:
        _chattr("-i", *frozen)
    for e in sent[2500:]:
        pipeline.emit(e)
    assert pipeline.flush(30)
    pipeline.close()
    assert_stored_exactly_once(SQLiteStore(path), sent)


# -- SQLite: locked by another process ------------------------------------------------------

LOCKER = """
import sqlite3, sys, time
conn = sqlite3.connect(sys.argv[1], isolation_level=None)
conn.execute("BEGIN EXCLUSIVE")
print("locked", flush=True)
time.sleep(float(sys.argv[2]))
conn.execute("COMMIT")
print("released", flush=True)
"""


def test_sqlite_locked_by_another_process_for_seconds(tmp_path: Path) -> None:
    path = tmp_path / "events.db"
    store = SQLiteStore(path, busy_timeout=0.5)
    pipeline = Pipeline(store, spool_dir=tmp_path / "spool", **FAST_RETRY)
    sent = mixed(3000)
    for e in sent[:500]:
        pipeline.emit(e)
    assert pipeline.flush(10)
    errors = events.stats["sink_backend_errors"]
    locker = python(LOCKER, str(path), "3")
    assert locker.stdout is not None
    assert locker.stdout.readline().strip() == "locked"
    emit_over(pipeline, sent[500:2500], 2.5)
    assert locker.stdout.readline().strip() == "released"
    assert locker.wait(10) == 0
    assert events.stats["sink_backend_errors"] > errors, "the lock never got in the way"
    for e in sent[2500:]:
        pipeline.emit(e)
    assert pipeline.flush(30)
    pipeline.close()
    assert_stored_exactly_once(SQLiteStore(path), sent)


# -- PostgreSQL stopped and restarted ----------------------------------------------------------


def _cluster() -> list[str]:
    if shutil.which("pg_ctlcluster") is None or not Path("/etc/postgresql").is_dir():
        pytest.skip("no pg_ctlcluster: cannot stop and restart the local PostgreSQL")
    versions = sorted(os.listdir("/etc/postgresql"))
    return ["pg_ctlcluster", "--skip-systemctl-redirect", versions[-1], "main"]


def _wait_accepting(url: str, timeout: float = 60) -> None:
    import psycopg

    deadline = time.monotonic() + timeout
    while True:
        try:
            with psycopg.connect(url, connect_timeout=2) as conn:
                conn.execute("SELECT 1")
            return
        except psycopg.OperationalError:
            if time.monotonic() > deadline:
                raise
            time.sleep(0.2)


def test_postgres_stopped_mid_stream_and_restarted(
    tmp_path: Path, pg_server: str, pg_url: str
) -> None:
    cluster = _cluster()
    pipeline = Pipeline(open_backend(pg_url), spool_dir=tmp_path / "spool", **FAST_RETRY)
    sent = mixed(3000)
    for e in sent[:500]:
        pipeline.emit(e)
    assert pipeline.flush(10)
    errors = events.stats["sink_backend_errors"]
    stopped = False
    try:
        subprocess.run([*cluster, "stop", "-m", "fast"], check=True, capture_output=True)
        stopped = True
        emit_over(pipeline, sent[500:2500], 2.0)
        assert events.stats["sink_backend_errors"] > errors, "the outage was not noticed"
    finally:
        if (
            stopped
            or subprocess.run(["pg_lsclusters", "-h"], capture_output=True).stdout.find(b"down")
            >= 0
        ):
            subprocess.run([*cluster, "start"], check=True, capture_output=True)
        _wait_accepting(pg_server)
    for e in sent[2500:]:
        pipeline.emit(e)
    assert pipeline.flush(30)
    pipeline.close()
    assert_stored_exactly_once(open_backend(pg_url), sent)


# -- Flood ---------------------------------------------------------------------------------------


def test_flood_far_beyond_the_queue_bound(tmp_path: Path) -> None:
    path = tmp_path / "events.db"
    pipeline = Pipeline(
        SQLiteStore(path), spool_dir=tmp_path / "spool", queue_size=500, batch_size=500
    )
    spilled = events.stats["sink_spilled"]
    sent = mixed(40_000)
    threads = [
        threading.Thread(target=lambda part=sent[i::4]: [pipeline.emit(e) for e in part])
        for i in range(4)
    ]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert events.stats["sink_spilled"] - spilled > 10_000  # 80 times the queue bound
    assert pipeline.flush(60)
    pipeline.close()
    assert_stored_exactly_once(SQLiteStore(path), sent)


# -- Process exit with events queued ----------------------------------------------------------

EXITER = """
import sys
from ownership_ctx import events
from ownership_ctx.sinks.config import install
# A long interval and a small queue: at exit most events are queued or spilled, none written.
install(sys.argv[1] + "?interval=30&queue=1000")
for i in range(5000):
    events.emit({"kind": "provider_call", "event_id": f"exit-{i}", "owner_team": "t"})
print(events.stats["sink_written"], events.stats["sink_spilled"], flush=True)
"""


def test_normal_exit_with_events_still_queued(tmp_path: Path, db_url: str) -> None:
    child = python(EXITER, db_url)
    out, _ = child.communicate(timeout=60)
    assert child.returncode == 0
    written, spilled = map(int, out.split())
    assert written == 0 and spilled > 0  # nothing was written before the exit hook ran
    store = open_backend(db_url)
    assert sorted(store.event_ids()) == sorted(f"exit-{i}" for i in range(5000))
    assert store.rollups(0, 2**40)[0].calls == 5000


# -- SIGKILL: the loss window --------------------------------------------------------------------

CRASHER = """
import mmap, struct, sys, time
from ownership_ctx import events
from ownership_ctx.sinks.config import install
install(sys.argv[1])
rate = float(sys.argv[2])  # events per second; 0: as fast as possible
# The count of events emitted so far, in a shared mapping that outlives a SIGKILL.
with open(sys.argv[3], "r+b") as f:
    emitted = mmap.mmap(f.fileno(), 8)
start = time.perf_counter()
i = 0
while True:
    events.emit({"kind": "provider_call", "event_id": f"crash-{i}", "owner_team": "t"})
    i += 1
    struct.pack_into("q", emitted, 0, i)
    if i % 100 == 0:
        if i == 100:
            print("running", flush=True)
        if rate:
            ahead = i / rate - (time.perf_counter() - start)
            if ahead > 0:
                time.sleep(ahead)
"""


def _crash(db_url: str, options: str, rate: float, seconds: float, bound: int) -> tuple[int, int]:
    """Run an emitter, SIGKILL it after ``seconds``, return (events it emitted, lost)."""
    counter = Path(db_url[len("sqlite:///") :] + ".emitted")
    counter.write_bytes(bytes(8))
    child = python(CRASHER, db_url + options, str(rate), str(counter))
    assert child.stdout is not None
    assert child.stdout.readline().strip() == "running"
    time.sleep(seconds)
    child.send_signal(signal.SIGKILL)
    child.wait(10)
    (emitted,) = struct.unpack("q", counter.read_bytes())
    # The next process recovers the dead one's spool segments.
    pipeline = Pipeline(open_backend(db_url), spool_dir=db_url[len("sqlite:///") :] + ".spool")
    pipeline.flush(30)
    pipeline.close()
    stored = set(open_backend(db_url).event_ids())
    if rate:
        # At a steady rate losses are recent: everything before the last `bound` is stored.
        # (In a flood the newest events spill to the spool and survive; what is lost is the
        # in-memory queue, which holds older ones: only the count is bounded.)
        assert all(f"crash-{i}" in stored for i in range(max(0, emitted - bound)))
    return emitted, sum(1 for i in range(emitted) if f"crash-{i}" not in stored)


@pytest.mark.parametrize(
    ("rate", "options", "bound"),
    [
        (5000.0, "", 2_000),  # about interval x rate + the batch being written
        (5000.0, "?interval=0.02&batch=200", 1_000),
        (0.0, "", 22_100),  # flood: the queue bound + one batch (+ a few racing emits)
        (0.0, "?queue=1000&batch=200", 1_300),
    ],
    ids=["steady-5k/s-defaults", "steady-5k/s-interval0.02", "flood-defaults", "flood-queue1000"],
)
def test_sigkill_loss_window(tmp_path: Path, rate: float, options: str, bound: int) -> None:
    db_url = f"sqlite:///{tmp_path / 'events.db'}"
    emitted, lost = _crash(db_url, options, rate, 1.5, bound)
    assert emitted > 0
    assert lost <= bound
    result = {"rate": rate or "flood", "options": options or "defaults", "emitted": emitted}
    result["lost"] = lost
    print(f"\nSIGKILL loss window: {json.dumps(result)}")
    out = os.environ.get("OWNERSHIP_CTX_CRASH_REPORT")
    if out:
        with open(out, "a") as f:
            f.write(json.dumps(result) + "\n")


# -- Several processes on one SQLite file ---------------------------------------------------

WRITER = """
import json, sys
from ownership_ctx import events
from ownership_ctx.sinks.config import install
sink = install(sys.argv[1])
name = sys.argv[2]
for i in range(int(sys.argv[3])):
    kind = "request" if i % 10 == 0 else "provider_call"
    events.emit({"kind": kind, "event_id": f"{name}-{i}", "owner_team": name})
ok = sink.close(60)
print(json.dumps({"ok": ok, **{k: v for k, v in events.stats.items() if k.startswith("sink_")}}))
"""


def test_several_processes_write_one_sqlite_file(db_url: str) -> None:
    n = 4000
    children = [python(WRITER, db_url, f"proc{k}", str(n)) for k in range(4)]
    # The test process writes too, at the same time, through its own pipeline.
    from ownership_ctx.sinks.config import open_sink

    mine = open_sink(db_url)
    mine_events = [
        {"kind": "provider_call", "event_id": f"main-{i}", "owner_team": "main"} for i in range(n)
    ]
    for e in mine_events:
        mine.emit(e)
    assert isinstance(mine, Pipeline)
    assert mine.close(60)
    for child in children:
        out, _ = child.communicate(timeout=120)
        assert child.returncode == 0
        report = json.loads(out)
        assert report["ok"]
        assert report.get("sink_backend_errors", 0) == 0
        assert report.get("sink_dropped", 0) == 0
    store = open_backend(db_url)
    ids = store.event_ids()
    expected = {f"proc{k}-{i}" for k in range(4) for i in range(n)} | {
        f"main-{i}" for i in range(n)
    }
    assert len(ids) == len(expected) and set(ids) == expected
    teams = {
        r.group["owner_team"]: (r.calls, r.requests)
        for r in store.rollups(0, 2**40, ["owner_team"])
    }
    assert teams == {**{f"proc{k}": (n - n // 10, n // 10) for k in range(4)}, "main": (n, 0)}


def test_prefork_parent_and_children_share_one_sqlite_file(tmp_path: Path) -> None:
    """Like a prefork Celery worker: the parent installs the sink, forks children that emit;
    the parent's pending events are written once (by the parent)."""
    import multiprocessing

    path = tmp_path / "events.db"
    pipeline = Pipeline(SQLiteStore(path), spool_dir=tmp_path / "spool", flush_interval=30)
    events.set_sink(pipeline)
    parent_events = mixed(1000, "parent-")
    for e in parent_events:
        events.emit(e)
    ctx = multiprocessing.get_context("fork")
    queue = ctx.Queue()
    workers = [ctx.Process(target=_prefork_child, args=(k, queue)) for k in range(4)]
    for w in workers:
        w.start()
    reports = [queue.get(timeout=60) for _ in workers]
    for w in workers:
        w.join(30)
        assert w.exitcode == 0
    assert pipeline.close(30)
    child_events = [e for r in reports for e in r["events"]]
    for r in reports:
        # Each child wrote its own events and none of the parent's pending ones.
        assert r["written"] == len(r["events"])
    assert_stored_exactly_once(SQLiteStore(path), [*parent_events, *child_events])


def _prefork_child(k: int, queue: Any) -> None:
    sink = events.get_sink()
    assert isinstance(sink, Pipeline)
    written = events.stats["sink_written"]
    mine = mixed(1500, f"child{k}-")
    for e in mine:
        events.emit(e)
    sink.close(30)
    queue.put({"events": mine, "written": events.stats["sink_written"] - written})
