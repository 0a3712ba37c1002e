"""The pipeline on its own, with a scriptable in-memory backend: hand-off, batching, spool,
replay, drop accounting, shutdown and fork."""

from __future__ import annotations

import json
import os
import threading
import time
from collections import Counter
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import pytest

from ownership_ctx import events
from ownership_ctx.schema.encoding import encode_event
from ownership_ctx.sinks.pipeline import Pipeline
from tests.store.helpers import provider_call


class FakeBackend:
    """Stores event ids; ``down`` makes writes fail; ``reject`` ids fail alone (poison)."""

    def __init__(self) -> None:
        self.ids: Counter[str] = Counter()
        self.batches: list[int] = []
        self.down = False
        self.reject: set[str] = set()
        self.delay = 0.0
        self.lock = threading.Lock()

    def write_batch(self, batch: list[Mapping[str, Any]]) -> None:
        if self.delay:
            time.sleep(self.delay)
        if self.down:
            raise ConnectionError("backend down")
        if any(e["event_id"] in self.reject for e in batch):
            raise ValueError("rejected")
        with self.lock:
            self.batches.append(len(batch))
            self.ids.update(e["event_id"] for e in batch)


def pipeline(backend: FakeBackend, spool: Path | None, **options: Any) -> Pipeline:
    settings: dict[str, Any] = {
        "queue_size": 1000,
        "batch_size": 100,
        "flush_interval": 0.01,
        "retry_initial": 0.01,
        "retry_max": 0.05,
        "spool_dir": spool,
    }
    settings.update(options)
    return Pipeline(backend, **settings)


def stat(name: str) -> int:
    return events.stats[name]


def test_events_arrive_in_batches(tmp_path: Path) -> None:
    backend = FakeBackend()
    p = pipeline(backend, tmp_path / "spool")
    sent = [provider_call() for _ in range(1050)]
    for e in sent:
        p.emit(e)
    assert p.close(10)
    assert backend.ids == Counter(e["event_id"] for e in sent)
    assert max(backend.batches) <= 100


def test_emit_does_not_raise_or_block_when_the_backend_hangs(tmp_path: Path) -> None:
    backend = FakeBackend()
    backend.delay = 0.5
    p = pipeline(backend, tmp_path / "spool", queue_size=50)
    started = time.perf_counter()
    for _ in range(2000):
        p.emit(provider_call())
    # Spilling 2000 events costs milliseconds, not the 10 s the backend would take.
    assert time.perf_counter() - started < 5
    backend.delay = 0
    assert p.close(30)
    assert sum(backend.ids.values()) >= 2000
    assert len(backend.ids) == 2000


def test_failing_backend_spools_then_replays_exactly_once(tmp_path: Path) -> None:
    backend = FakeBackend()
    p = pipeline(backend, tmp_path / "spool")
    errors, spilled = stat("sink_backend_errors"), stat("sink_spilled")
    sent = [provider_call() for _ in range(300)]
    for e in sent[:100]:
        p.emit(e)
    assert p.flush(5)
    backend.down = True
    for e in sent[100:200]:
        p.emit(e)
    time.sleep(0.2)
    assert stat("sink_backend_errors") > errors
    assert stat("sink_spilled") > spilled
    assert list(tmp_path.joinpath("spool").iterdir())
    backend.down = False
    for e in sent[200:]:
        p.emit(e)
    assert p.flush(10)
    assert set(backend.ids) == {e["event_id"] for e in sent}
    # Spooled batches are written once when nothing failed mid-replay.
    assert max(backend.ids.values()) == 1
    p.close()
    assert not [f for f in tmp_path.joinpath("spool").iterdir() if f.suffix != ".poison"]


def test_without_a_spool_the_oldest_events_are_dropped_and_counted(tmp_path: Path) -> None:
    backend = FakeBackend()
    backend.down = True
    p = pipeline(backend, None, queue_size=100)
    dropped = stat("sink_dropped")
    for _ in range(500):
        p.emit(provider_call())
    assert stat("sink_dropped") - dropped >= 300
    backend.down = False
    p.close(5)
    assert 0 < len(backend.ids) <= 200


def test_flood_far_beyond_the_queue_bound_loses_nothing(tmp_path: Path) -> None:
    backend = FakeBackend()
    backend.delay = 0.002
    p = pipeline(backend, tmp_path / "spool", queue_size=200, segment_bytes=64 << 10)
    spilled = stat("sink_spilled")
    sent = [provider_call() for _ in range(20_000)]
    threads = [
        threading.Thread(target=lambda part=sent[i::4]: [p.emit(e) for e in part]) for i in range(4)
    ]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert stat("sink_spilled") > spilled
    assert p.flush(60)
    assert set(backend.ids) == {e["event_id"] for e in sent}
    assert max(backend.ids.values()) == 1
    p.close()


def test_spool_is_bounded(tmp_path: Path) -> None:
    backend = FakeBackend()
    backend.down = True
    p = pipeline(backend, tmp_path / "spool", queue_size=10, spool_max_bytes=200_000)
    dropped = stat("sink_dropped")
    for _ in range(3000):
        p.emit(provider_call())
    time.sleep(0.1)
    size = sum(f.stat().st_size for f in tmp_path.joinpath("spool").iterdir())
    assert size <= 200_000 + 100 * 2000  # the cap, plus at most one batch over it
    assert stat("sink_dropped") > dropped
    p.close(0.5)


def test_close_seals_the_spool_for_the_next_process(tmp_path: Path) -> None:
    spool = tmp_path / "spool"
    backend = FakeBackend()
    backend.down = True
    p = pipeline(backend, spool)
    sent = [provider_call() for _ in range(250)]
    for e in sent:
        p.emit(e)
    assert not p.close(0.3)  # the backend is down: spooled, not written
    assert [f.suffix for f in spool.iterdir()] == [".jsonl"] * len(list(spool.iterdir()))
    # Events emitted after close still go to the spool.
    late = provider_call()
    p.emit(late)

    fresh = FakeBackend()
    q = pipeline(fresh, spool)
    assert q.flush(10)
    assert set(fresh.ids) == {e["event_id"] for e in [*sent, late]}
    q.close()


class ClosedBackend(FakeBackend):
    """Counts (and fails) the writes tried once it is closed."""

    closed = False
    after_close = 0

    def write_batch(self, batch: list[Mapping[str, Any]]) -> None:
        if self.closed:
            self.after_close += 1
            raise ConnectionError("closed")
        super().write_batch(batch)

    def close(self) -> None:
        self.closed = True


def test_flush_after_close_answers_at_once_and_writes_nothing(tmp_path: Path) -> None:
    # A worker's shutdown hook flushing a pipeline some other code already closed must not
    # replay the spool into the closed backend, or wait for it.
    spool = tmp_path / "spool"
    backend = ClosedBackend()
    p = pipeline(backend, spool)
    sent = [provider_call() for _ in range(20)]
    for e in sent:
        p.emit(e)
    assert p.close(10)
    assert backend.closed and set(backend.ids) == {e["event_id"] for e in sent}
    assert p.flush(10)  # everything emitted reached the backend
    late = provider_call()
    p.emit(late)  # spilled for the next run
    assert not p.flush(10)
    assert backend.after_close == 0
    fresh = FakeBackend()
    q = pipeline(fresh, spool)
    assert q.close(10)
    assert set(fresh.ids) == {late["event_id"]}


def test_orphaned_segments_of_dead_processes_are_replayed(tmp_path: Path) -> None:
    spool = tmp_path / "spool"
    spool.mkdir()
    lost = [provider_call() for _ in range(20)]
    lines = "".join(encode_event(e) + "\n" for e in lost)
    # A writer that died mid-segment (its pid is not running) and mid-line.
    dead = 2**22 + 12345
    spool.joinpath(f"{time.time_ns():020d}-{dead}_deadbeef-spill-1.open").write_text(
        lines + '{"kind":"provider_call","event_id":"cut'
    )
    # A replayer that died mid-replay.
    again = [provider_call() for _ in range(5)]
    spool.joinpath(f"{time.time_ns():020d}-1_abc-overflow-1.{dead}_deadbeef.replay").write_text(
        "".join(encode_event(e) + "\n" for e in again)
    )
    corrupt = stat("sink_spool_corrupt_lines")
    backend = FakeBackend()
    p = pipeline(backend, spool)
    assert p.flush(10)
    assert set(backend.ids) == {e["event_id"] for e in [*lost, *again]}
    assert stat("sink_spool_corrupt_lines") == corrupt + 1
    p.close()


def test_a_poison_event_is_quarantined_not_replayed_forever(tmp_path: Path) -> None:
    spool = tmp_path / "spool"
    backend = FakeBackend()
    p = pipeline(backend, spool, batch_size=10)
    good = [provider_call() for _ in range(30)]
    bad = provider_call()
    backend.reject.add(bad["event_id"])
    for e in [*good[:15], bad, *good[15:]]:
        p.emit(e)
    deadline = time.monotonic() + 10
    while set(backend.ids) != {e["event_id"] for e in good} and time.monotonic() < deadline:
        p.flush(1)
    assert set(backend.ids) == {e["event_id"] for e in good}
    p.close(5)
    poison = list(spool.glob("*.poison"))
    assert len(poison) == 1
    assert json.loads(poison[0].read_text())["event_id"] == bad["event_id"]


def test_flush_from_the_writer_thread_does_not_deadlock(tmp_path: Path) -> None:
    results: list[bool] = []

    class Reentrant(FakeBackend):
        def write_batch(self, batch: list[Mapping[str, Any]]) -> None:
            results.append(p.flush(1))
            super().write_batch(batch)

    backend = Reentrant()
    p = pipeline(backend, tmp_path / "spool")
    p.emit(provider_call())
    assert p.close(5)
    assert results == [False]


def test_events_sink_integration_stamps_ids(tmp_path: Path) -> None:
    backend = FakeBackend()
    p = pipeline(backend, tmp_path / "spool")
    events.set_sink(p)
    events.emit({"kind": "hop", "hop": "edge"})
    p.emit({"kind": "hop", "hop": "direct, no id"})  # the pipeline stamps one
    assert p.close(5)
    assert len(backend.ids) == 2


@pytest.mark.skipif(not hasattr(os, "fork"), reason="needs os.fork")
def test_fork_child_gets_its_own_writer_and_none_of_the_parents_events(tmp_path: Path) -> None:
    """A prefork worker child: fresh queue and writer; the parent's pending events are
    written by the parent only."""
    out = tmp_path / "written"
    out.mkdir()

    class FileBackend:
        def write_batch(self, batch: list[Mapping[str, Any]]) -> None:
            with open(out / f"{os.getpid()}.ids", "a") as f:
                f.writelines(e["event_id"] + "\n" for e in batch)

    # A long interval keeps the parent's events pending at the fork.
    p = Pipeline(FileBackend(), flush_interval=30, spool_dir=tmp_path / "spool")
    pending = [provider_call() for _ in range(500)]
    for e in pending:
        p.emit(e)
    children: dict[int, list[str]] = {}
    for n in range(3):
        mine = [provider_call(event_id=f"child{n}-{i}") for i in range(200)]
        pid = os.fork()
        if pid == 0:  # pragma: no cover - runs in the child
            code = 1
            try:
                for e in mine:
                    p.emit(e)
                code = 0 if p.close(10) else 2
            finally:
                os._exit(code)
        children[pid] = [e["event_id"] for e in mine]
    for pid in children:
        _, status = os.waitpid(pid, 0)
        assert os.waitstatus_to_exitcode(status) == 0
    assert p.close(10)
    written = {f.stem: f.read_text().split() for f in out.iterdir()}
    assert sorted(written[str(os.getpid())]) == sorted(e["event_id"] for e in pending)
    for pid, ids in children.items():
        assert sorted(written[str(pid)]) == sorted(ids)


def test_close_does_not_wait_out_a_long_backoff(tmp_path: Path) -> None:
    spool = tmp_path / "spool"
    backend = FakeBackend()
    backend.down = True
    p = pipeline(backend, spool, retry_initial=5, retry_max=5)
    sent = [provider_call() for _ in range(300)]
    for e in sent:
        p.emit(e)
    started = time.monotonic()
    assert not p.close(10)
    assert time.monotonic() - started < 3  # spooled and gone, not 10 s of waiting
    fresh = FakeBackend()
    q = pipeline(fresh, spool)
    assert q.close(10)
    assert set(fresh.ids) == {e["event_id"] for e in sent}


def test_close_spools_the_queue_when_the_backend_hangs(tmp_path: Path) -> None:
    spool = tmp_path / "spool"
    backend = FakeBackend()
    backend.delay = 1.5
    p = pipeline(backend, spool, queue_size=5000)
    sent = [provider_call() for _ in range(1000)]
    for e in sent:
        p.emit(e)
    time.sleep(0.1)  # the writer is inside its first (slow) batch
    assert not p.close(0.3)
    backend.delay = 0
    fresh = FakeBackend()
    q = pipeline(fresh, spool)
    assert q.close(10)
    time.sleep(1.6)  # the hung batch finishes in the old writer, which then exits
    assert set(backend.ids) | set(fresh.ids) == {e["event_id"] for e in sent}
    assert p._thread is not None and not p._thread.is_alive()
