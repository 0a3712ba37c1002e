"""The writer: the background side of a pipeline. It takes batches off the queue, writes them
to the backend, backs off and spools while the backend fails, and replays the spool.

`Writer.step` is one pass of the writer thread; the pipeline also runs the writer's parts on
the calling thread when no writer thread runs (`Pipeline.flush` / `Pipeline.close`).
"""

from __future__ import annotations

import threading
import time
from collections import deque
from typing import Any, Final, Protocol

from ownership_ctx import events
from ownership_ctx.ids import new_event_id

from .degraded import logger, warn_once
from .encoding import Event, encode_event
from .spool import Spool

__all__ = ["Backend", "Backoff", "FlushMarker", "Writer", "stamp"]

#: Replay batches of one segment one event at a time after this many failed replays of it.
_REPLAY_SINGLY_AFTER: Final = 2


class Backend(Protocol):
    """What the writer thread writes to. ``write_batch`` may raise: the batch is then spooled."""

    def write_batch(self, events: list[Event]) -> None: ...


class FlushMarker:
    """Put in the queue by `Pipeline.flush`: the writer signals it once everything queued
    before it is written (or spooled) and the spool is replayed as far as the deadline allows."""

    __slots__ = ("complete", "deadline", "done", "stop")

    def __init__(self, deadline: float, stop: bool) -> None:
        self.deadline = deadline
        self.stop = stop
        self.done = threading.Event()
        self.complete = False


def stamp(event: dict[str, Any]) -> None:
    """Give ``event`` an ``event_id`` and a ``ts`` when it has none."""
    # Without an id a replay could not be recognised as one; without a time, no hour bucket.
    if event.get("event_id") is None:
        event["event_id"] = new_event_id()
    event.setdefault("ts", time.time())


class Backoff:
    """When the backend may be tried again: exponential from ``initial`` to ``maximum``
    seconds while it fails, reset by the first write that succeeds."""

    __slots__ = ("delay", "initial", "maximum", "retry_at")

    def __init__(self, initial: float, maximum: float) -> None:
        self.initial = initial
        self.maximum = maximum
        self.retry_at = 0.0  # 0.0: healthy
        self.delay = initial

    @property
    def healthy(self) -> bool:
        return self.retry_at == 0.0

    def can_try(self) -> bool:
        return self.retry_at == 0.0 or time.monotonic() >= self.retry_at

    def failed(self) -> None:
        self.retry_at = time.monotonic() + self.delay
        self.delay = min(self.delay * 2, self.maximum)

    def recovered(self) -> None:
        self.retry_at = 0.0
        self.delay = self.initial


class Writer:
    """Drains one pipeline's queue into its backend (spooling what it cannot write).

    ``closed``: set by the pipeline when it gave up waiting for the writer at close and
    spooled the queue itself; the thread then exits.
    """

    def __init__(
        self,
        queue: deque[Any],
        backend: Backend,
        spool: Spool | None,
        *,
        name: str,
        queue_size: int,
        batch_size: int,
        flush_interval: float,
        retry_initial: float,
        retry_max: float,
    ) -> None:
        self.queue = queue
        self.backend = backend
        self.spool = spool
        self.name = name
        self.queue_size = queue_size
        self.batch_size = batch_size
        self.flush_interval = flush_interval
        self.backoff = Backoff(retry_initial, retry_max)
        self.wakeup = threading.Event()
        self.closed = False
        #: The last event the backend took: writing it again stores nothing (backends insert
        #: by ``event_id``) but needs a working backend, which tells a poison event from a
        #: backend that is down.
        self.canary: Event | None = None

    # -- the thread --------------------------------------------------------------------------

    def run(self) -> None:
        while True:
            try:
                if self.step():
                    return
            except Exception as exc:  # pragma: no cover - a writer must outlive its bugs
                events.count("sink_errors")
                warn_once("writer", "writer thread error", exc)
                time.sleep(self.flush_interval)

    def step(self) -> bool:
        """One pass of the writer; True when it must exit."""
        batch, markers = self.take()
        if batch:
            self.deliver(batch)
        for marker in markers:
            self.seal_spool()
            marker.complete = self.replay_until(marker.deadline, closing=marker.stop)
            marker.done.set()
            if marker.stop:
                return True
        if batch or markers:
            return False
        if self.closed:
            return True  # close() gave up waiting for us and spooled the queue: done
        # Idle: make spooled events durable, replay a segment when the backend is up.
        self.sync_spool()
        spool = self.spool
        if spool is not None and self.backoff.can_try():
            if spool.pending:
                self.seal_spool()
                spool.next_scan = 0.0
            if time.monotonic() >= spool.next_scan and self.replay_one():
                return False  # more may be waiting: come straight back (live events first)
        self.wakeup.wait(self.flush_interval)
        self.wakeup.clear()
        return False

    def take(self) -> tuple[list[Any], list[FlushMarker]]:
        queue = self.queue
        batch: list[Any] = []
        markers: list[FlushMarker] = []
        popleft = queue.popleft
        for _ in range(min(len(queue), self.batch_size)):
            item = popleft()
            if type(item) is FlushMarker:
                markers.append(item)
                break  # write what precedes the marker before signalling it
            batch.append(item)
        return batch, markers

    # -- writing -----------------------------------------------------------------------------

    def deliver(self, batch: list[Event]) -> None:
        for event in batch:
            if isinstance(event, dict) and (event.get("event_id") is None or "ts" not in event):
                stamp(event)
        if self.backoff.can_try() and self.write(batch):
            return
        self.spill(batch)

    def write(self, batch: list[Event]) -> bool:
        backoff = self.backoff
        try:
            self.backend.write_batch(batch)
        except Exception as exc:
            events.count("sink_backend_errors")
            was_healthy = backoff.healthy
            backoff.failed()
            if was_healthy:
                logger.warning(
                    "ownership_ctx: %s backend failed (%s: %s); spooling and retrying",
                    self.name,
                    type(exc).__name__,
                    exc,
                )
            return False
        if batch:
            self.canary = batch[-1]
        if not backoff.healthy:
            logger.info("ownership_ctx: %s backend recovered; replaying the spool", self.name)
            backoff.recovered()
            if self.spool is not None:
                self.spool.next_scan = 0.0
        events.count("sink_written", len(batch))
        return True

    def spill(self, batch: list[Event]) -> None:
        spool = self.spool
        if spool is None:
            # No spool: keep the batch at the head of the queue for the next try; the queue
            # bound (drop-oldest) then limits memory.
            queue = self.queue
            queue.extendleft(reversed(batch))
            excess = len(queue) - self.queue_size
            for _ in range(max(0, excess)):
                item = queue.pop()
                if isinstance(item, FlushMarker):
                    queue.appendleft(item)
                    continue
                events.count("sink_dropped")
            # Sleep out the backoff instead of spinning on a backend that is down.
            retry_at = self.backoff.retry_at
            self.wakeup.wait(max(0.0, min(retry_at - time.monotonic(), self.backoff.maximum)))
            self.wakeup.clear()
            return
        data = "".join([encode_event(e) + "\n" for e in batch]).encode()
        if not spool.fits(len(data)):
            events.count("sink_dropped", len(batch))
            warn_once("spool_full", f"spool over {spool.max_bytes} bytes; dropping")
            return
        try:
            spool.spill.append(data)
            spool.spill.sync()  # fsync per batch: a spooled batch survives a power cut
        except OSError as exc:
            events.count("sink_spool_errors")
            events.count("sink_dropped", len(batch))
            warn_once("spool_write", f"cannot write the spool: {exc}", exc)
            return
        spool.bytes += len(data)
        events.count("sink_spilled", len(batch))

    def spool_queue(self) -> None:
        """Everything queued to the spool at once (a close that cannot wait for the backend)."""
        spool = self.spool
        if spool is None:
            return
        lines = []
        while True:
            try:
                item = self.queue.popleft()
            except IndexError:
                break
            if type(item) is not FlushMarker:
                lines.append(encode_event(item) + "\n")
        if not lines:
            return
        with spool.overflow_lock:
            try:
                spool.overflow.append("".join(lines).encode())
                spool.overflow.seal()
            except OSError as exc:
                events.count("sink_spool_errors")
                events.count("sink_dropped", len(lines))
                warn_once("spool_write", f"cannot write the spool: {exc}", exc)
                return
        events.count("sink_spilled", len(lines))

    def sync_spool(self) -> None:
        if self.spool is None:
            return
        try:
            self.spool.sync()
        except OSError as exc:
            events.count("sink_spool_errors")
            warn_once("spool_sync", f"cannot fsync the spool: {exc}", exc)

    def seal_spool(self) -> None:
        if self.spool is None:
            return
        try:
            self.spool.seal()
        except OSError as exc:
            events.count("sink_spool_errors")
            warn_once("spool_seal", f"cannot seal a spool segment: {exc}", exc)

    # -- replay ------------------------------------------------------------------------------

    def replay_until(self, deadline: float, closing: bool = False) -> bool:
        """Replay ready segments until none is left (True) or the deadline passes (False),
        waiting out the backoff while the backend fails (closing: only a short one)."""
        spool = self.spool
        if spool is None:
            return not self.queue
        backoff = self.backoff
        while True:
            now = time.monotonic()
            if now >= deadline:
                return False
            if not backoff.can_try():
                if closing and backoff.retry_at - now > 1.0:
                    return False  # all of it is durable in the spool; do not hold up exit
                time.sleep(max(0.0, min(backoff.retry_at - now, deadline - now, 0.05)))
                continue
            if spool.pending:
                self.seal_spool()
            if not self.replay_one():
                if backoff.can_try() and not spool.pending:
                    return True
                continue
            # Live events first, even while settling (a few batches: the replay must progress).
            for _ in range(4):
                if not self.queue or type(self.queue[0]) is FlushMarker:
                    break
                batch = self.take()[0]
                if batch:
                    self.deliver(batch)

    def replay_one(self) -> bool:
        """Replay one segment; True when one was claimed (whether or not it all went in)."""
        spool = self.spool
        assert spool is not None
        try:
            claim = spool.claim()
        except OSError as exc:
            events.count("sink_spool_errors")
            warn_once("spool_list", f"cannot list the spool: {exc}", exc)
            return False
        if claim is None:
            return False
        try:
            parsed, size, corrupt = claim.read()
        except OSError as exc:
            events.count("sink_spool_errors")
            warn_once("spool_read", f"cannot read spool segment {claim.path}: {exc}", exc)
            return False
        if corrupt:
            events.count("sink_spool_corrupt_lines", corrupt)
        stem = claim.stem
        failures = spool.replay_failures.get(stem, 0)
        if failures < _REPLAY_SINGLY_AFTER:
            poison: list[Event] = []
            complete = self.replay_batches(parsed)
        else:  # the segment failed before: one event at a time, to find what the backend refuses
            poison, complete = self.replay_singly(parsed)
        if not complete:
            spool.replay_failures[stem] = failures + 1
            claim.release()
            return True
        spool.replay_failures.pop(stem, None)
        if poison:
            events.count("sink_poison", len(poison))
            warn_once("poison", f"events the backend rejects kept in {stem}.poison")
            claim.quarantine(poison)
        claim.done()
        spool.bytes = max(0, spool.bytes - size)
        events.count("sink_replayed", len(parsed) - len(poison))
        return True

    def replay_batches(self, parsed: list[Event]) -> bool:
        """Write ``parsed`` in batches; False at the first batch that fails."""
        step = self.batch_size
        return all(self.write(parsed[i : i + step]) for i in range(0, len(parsed), step))

    def replay_singly(self, parsed: list[Event]) -> tuple[list[Event], bool]:
        """Write ``parsed`` one event at a time: the events the backend refuses while it takes
        others (poison), and whether the replay got through the segment.

        An event that fails is poison only if the backend works right after: the `canary`
        (an event it took) goes in again. If the canary fails too, the backend is down and
        the replay stops; with no canary yet, the verdict waits for the first event that
        goes in.
        """
        poison: list[Event] = []
        undecided: list[Event] = []
        for event in parsed:
            if self.write([event]):
                for earlier in undecided:
                    if self.write([earlier]):
                        continue
                    if not self.canary_goes_in():
                        return poison, False
                    poison.append(earlier)
                undecided = []
                continue
            if self.canary is None:
                undecided.append(event)
            elif self.canary_goes_in():
                poison.append(event)
            else:
                return poison, False  # the backend is down: nothing to conclude
        return poison, not undecided

    def canary_goes_in(self) -> bool:
        """Whether the backend takes the `canary` again (a write that stores nothing)."""
        if self.canary is None:
            return False
        try:
            self.backend.write_batch([self.canary])
        except Exception:
            return False
        self.backoff.recovered()
        return True
