"""Replaying the spool one event at a time tells a poison event from a backend that is down.

A segment whose replay failed twice is replayed event by event; an event that fails there is
quarantined (``.poison``) only if the backend works right after it, which the writer checks by
writing again an event the backend already took. A backend that accepts an empty batch while
it cannot write (SQLite in a read-only directory does) used to pass the old probe, an empty
write, so a good event was quarantined and never stored. Driven step by step: no writer
thread, no timing.
"""

from __future__ import annotations

import uuid
from collections import deque
from collections.abc import Mapping
from pathlib import Path
from typing import Any

from ownership_ctx import events
from ownership_ctx.sinks.spool import Spool
from ownership_ctx.sinks.writer import Writer


class Backend:
    """Stores event ids; ``down``: every non-empty write fails (an empty one still passes);
    ``refuse``: these ids fail on their own."""

    def __init__(self) -> None:
        self.ids: set[str] = set()
        self.down = False
        self.refuse: set[str] = set()

    def write_batch(self, batch: list[Mapping[str, Any]]) -> None:
        if batch and self.down:
            raise OSError("attempt to write a readonly database")
        if any(e["event_id"] in self.refuse for e in batch):
            raise ValueError("refused")
        self.ids.update(e["event_id"] for e in batch)


def event() -> dict[str, Any]:
    return {"kind": "hop", "event_id": uuid.uuid4().hex, "ts": 1.0}


def writer(backend: Backend, directory: Path) -> Writer:
    spool = Spool(str(directory), max_bytes=1 << 20, segment_bytes=1 << 20, rescan_interval=0)
    return Writer(
        deque(),
        backend,
        spool,
        name="test",
        queue_size=100,
        batch_size=10,
        flush_interval=0.01,
        retry_initial=0.01,
        retry_max=0.01,
    )


def spooled(w: Writer, batch: list[dict[str, Any]]) -> None:
    """``batch`` in a sealed spool segment, as a failed write leaves it."""
    assert w.spool is not None
    w.spill(batch)
    w.seal_spool()


def poison_files(directory: Path) -> list[Path]:
    return sorted(directory.glob("*.poison"))


def test_a_backend_that_is_down_quarantines_nothing(tmp_path: Path) -> None:
    backend = Backend()
    w = writer(backend, tmp_path)
    assert w.write([event()])  # the backend took one: the canary
    backend.down = True
    batch = [event() for _ in range(5)]
    spooled(w, batch)
    poisoned = events.stats["sink_poison"]
    for _ in range(4):  # batches twice, then one event at a time
        assert w.replay_one()
    assert poison_files(tmp_path) == []
    assert events.stats["sink_poison"] == poisoned
    backend.down = False
    assert w.replay_one()
    assert {e["event_id"] for e in batch} <= backend.ids
    assert list(tmp_path.iterdir()) == []


def test_an_event_the_backend_refuses_alone_is_quarantined(tmp_path: Path) -> None:
    backend = Backend()
    w = writer(backend, tmp_path)
    batch = [event() for _ in range(5)]
    backend.refuse = {batch[0]["event_id"]}  # first: no canary yet when it fails
    spooled(w, batch)
    for _ in range(3):
        assert w.replay_one()
    assert {e["event_id"] for e in batch[1:]} <= backend.ids
    (poison,) = poison_files(tmp_path)
    assert batch[0]["event_id"] in poison.read_text()
    assert [p for p in tmp_path.iterdir() if p.suffix != ".poison"] == []


def test_with_nothing_written_yet_a_failing_segment_waits(tmp_path: Path) -> None:
    # Every event fails and the backend never took one: down or all poison cannot be told
    # apart, so the segment stays for a later replay.
    backend = Backend()
    w = writer(backend, tmp_path)
    backend.down = True
    spooled(w, [event() for _ in range(3)])
    for _ in range(4):
        assert w.replay_one()
    assert poison_files(tmp_path) == []
    assert [p.suffix for p in tmp_path.iterdir()] == [".jsonl"]
