"""The pipeline every durable sink runs behind: constant-time hand-off, background batches, spool.

The host's thread only appends the event to a bounded in-memory queue (a ``deque``; a few
hundred nanoseconds). A daemon writer thread (`ownership_ctx.sinks.writer`) takes batches (up
to ``batch_size`` events, at least every ``flush_interval`` seconds) and hands them to a
*backend*: any object with ``write_batch(list_of_events) -> None`` (and optionally ``close()``
and ``after_fork_in_child()``). Backends insert by ``event_id`` with insert-or-ignore, so
writing the same event twice stores it once; the pipeline relies on that to replay without
bookkeeping.

When something degrades, events go to an on-disk *spool* (`ownership_ctx.sinks.spool`: a
directory of JSON-lines segment files) instead of being lost:

- the backend raises (down, locked, read-only, ...): the batch is appended to a spool segment
  and fsync'd, the writer backs off exponentially and retries; once a write succeeds it
  replays the spool, oldest segment first, between live batches;
- the queue is full (the backend is slower than the host): the *caller* encodes the event and
  appends it to its own spool segment, so memory stays bounded and nothing blocks for long
  (a few microseconds of JSON and one ``write(2)`` instead of a queue append);
- without a spool directory, the oldest queued event is dropped instead, and counted.

Segments are shared by every process on the host that uses the same directory; exactly one
process replays each, and segments of processes that died are recovered by whoever scans next.
Everything degraded is counted in `ownership_ctx.events.stats` (``sink_*``) and logged once;
nothing here raises into the host.

Shutdown: `Pipeline.flush` and `Pipeline.close` (for Celery / Dramatiq worker shutdown and ASGI
lifespan shutdown hooks), and an ``atexit`` hook that closes every live pipeline. Fork: a child
gets a fresh queue, fresh locks and its own writer (started on its first event); the parent's
pending events stay the parent's.
"""

from __future__ import annotations

import atexit
import os
import threading
import time
import weakref
from collections import deque
from typing import Any

from ownership_ctx import events

from .degraded import warn_once
from .encoding import Event, encode_event
from .spool import Spool, creatable_dir
from .writer import Backend, FlushMarker, Writer, stamp

__all__ = ["Backend", "Pipeline", "close_all", "creatable_dir", "encode_event", "flush_all"]


class Pipeline:
    """A sink (``emit``) that hands events to a background writer and a backend.

    ``queue_size`` bounds memory (events, not bytes); ``batch_size`` / ``flush_interval`` bound
    batches by size and age; ``spool_dir`` (``None``: drop-oldest instead of spilling) and
    ``spool_max_bytes`` bound the disk; ``retry_initial`` / ``retry_max`` set the backoff while
    the backend fails; ``close_timeout`` is what the ``atexit`` hook gives this pipeline.
    """

    def __init__(
        self,
        backend: Backend,
        *,
        queue_size: int = 20_000,
        batch_size: int = 2_000,
        flush_interval: float = 0.1,
        spool_dir: str | os.PathLike[str] | None = None,
        spool_max_bytes: int = 1 << 30,
        segment_bytes: int = 4 << 20,
        retry_initial: float = 0.1,
        retry_max: float = 5.0,
        rescan_interval: float = 5.0,
        close_timeout: float = 10.0,
        name: str = "events",
    ) -> None:
        if queue_size < 1 or batch_size < 1:
            raise ValueError("queue_size and batch_size must be positive")
        self.backend = backend
        self.name = name
        self.queue_size = queue_size
        self.batch_size = batch_size
        self.flush_interval = flush_interval
        self.spool_dir = os.fspath(spool_dir) if spool_dir is not None else None
        self.spool_max_bytes = spool_max_bytes
        self.segment_bytes = segment_bytes
        self.retry_initial = retry_initial
        self.retry_max = retry_max
        self.rescan_interval = rescan_interval
        self.close_timeout = close_timeout
        self._closed = False
        self._unwritten_after_close = False
        self._reset_process_state()
        # The spool directory is created by the first segment written to it: a run that never
        # spools leaves nothing behind. An unusable one is reported now, not at the first spill.
        if self.spool_dir is not None and not creatable_dir(self.spool_dir):
            events.count("sink_spool_errors")
            warn_once("spool_dir", f"spool directory {self.spool_dir} unusable (not writable)")
        _live.add(self)

    def _reset_process_state(self) -> None:
        """Everything a process must own alone: built at start and again in a fork child."""
        self._queue: deque[Any] = deque()
        # The hot path reads only this flag and the queue length: True while a writer runs.
        self._accepting = False
        self._thread: threading.Thread | None = None
        self._start_lock = threading.Lock()
        directory = self.spool_dir
        self._spool = (
            Spool(
                directory,
                max_bytes=self.spool_max_bytes,
                segment_bytes=self.segment_bytes,
                rescan_interval=self.rescan_interval,
            )
            if directory is not None
            else None
        )
        self._writer = Writer(
            self._queue,
            self.backend,
            self._spool,
            name=self.name,
            queue_size=self.queue_size,
            batch_size=self.batch_size,
            flush_interval=self.flush_interval,
            retry_initial=self.retry_initial,
            retry_max=self.retry_max,
        )

    # -- the host's path ---------------------------------------------------------------------

    def emit(self, event: Event) -> None:
        """Hand ``event`` off. Constant time while the queue has room; never raises."""
        queue = self._queue
        if self._accepting and len(queue) < self.queue_size:
            queue.append(event)
        else:
            self._slow_emit(event)

    def _slow_emit(self, event: Event) -> None:
        try:
            if (
                not self._closed
                and not self._accepting
                and self._start()
                and len(self._queue) < self.queue_size
            ):
                self._queue.append(event)
                return
            self._overflow(event)
        except Exception as exc:  # pragma: no cover - belt and braces: never into the host
            events.count("sink_dropped")
            warn_once("emit", "event dropped: pipeline failed", exc)

    def _start(self) -> bool:
        with self._start_lock:
            if self._accepting:
                return True
            if self._closed:
                return False
            thread = threading.Thread(
                target=self._writer.run, name=f"ownership_ctx-{self.name}-writer", daemon=True
            )
            try:
                thread.start()
            except RuntimeError as exc:  # interpreter shutting down: no new threads
                warn_once("start", f"writer thread not started: {exc}")
                return False
            self._thread = thread
            self._accepting = True
            return True

    def _overflow(self, event: Event) -> None:
        """Queue full (or pipeline closed): spill from the caller's thread, else drop-oldest."""
        if self._closed:
            self._unwritten_after_close = True  # spilled for the next run, or dropped
        spool = self._spool
        if spool is not None:
            if isinstance(event, dict) and (event.get("event_id") is None or "ts" not in event):
                stamp(event)
            data = (encode_event(event) + "\n").encode()
            if spool.fits(len(data)):
                with spool.overflow_lock:
                    try:
                        spool.overflow.append(data)
                        if self._closed:
                            # No writer will seal it: make it replayable by the next one now.
                            spool.overflow.seal()
                    except OSError as exc:
                        events.count("sink_spool_errors")
                        warn_once("spool_write", f"cannot write the spool: {exc}", exc)
                    else:
                        spool.bytes += len(data)
                        events.count("sink_spilled")
                        warn_once(
                            "overflow",
                            f"event queue full ({self.queue_size}); spilling to {self.spool_dir}",
                        )
                        return
            else:
                warn_once("spool_full", f"spool over {self.spool_max_bytes} bytes; dropping")
        if self._accepting and not self._closed:
            # Drop the oldest rather than the newest: the newest describe the current state.
            queue = self._queue
            try:
                oldest = queue.popleft()
            except IndexError:
                oldest = None
            if isinstance(oldest, FlushMarker):
                queue.appendleft(oldest)
            queue.append(event)
        events.count("sink_dropped")
        warn_once("dropped", "events are being dropped (queue full, no usable spool)")

    # -- shutdown ----------------------------------------------------------------------------

    def flush(self, timeout: float | None = 5.0) -> bool:
        """Write everything emitted so far (by this thread, or before this call from others)
        and replay the spool, waiting at most ``timeout`` seconds.

        True when all of it reached the backend; False when some is still spooled on disk
        (it is replayed later, by this process or the next) or the timeout passed. A closed
        pipeline answers at once: it writes nothing more (what was emitted after `close` is
        in the spool, for the next run), so a shutdown hook never waits on it.
        """
        if self._closed:
            return not self._unwritten_after_close
        return self._settle(timeout, stop=False)

    def close(self, timeout: float | None = None) -> bool:
        """Flush (at most ``timeout``, default ``close_timeout``), stop the writer, seal the
        spool for the next run and close the backend. Idempotent. Events emitted afterwards
        are spilled (or dropped without a spool)."""
        if self._closed:
            return True
        result = self._settle(self.close_timeout if timeout is None else timeout, stop=True)
        self._mark_closed()
        _live.discard(self)
        return result

    def _mark_closed(self) -> None:
        self._closed = True
        self._writer.closed = True

    def _settle(self, timeout: float | None, stop: bool) -> bool:
        deadline = time.monotonic() + (timeout if timeout is not None else 1e9)
        if threading.current_thread() is self._thread:
            return False  # from inside the backend: waiting on ourselves would deadlock
        writer = self._writer
        try:
            thread = self._thread
            if thread is not None and thread.is_alive() and self._accepting:
                marker = FlushMarker(deadline, stop)
                self._queue.append(marker)
                writer.wakeup.set()
                finished = marker.done.wait(max(0.0, deadline - time.monotonic()))
                if stop:
                    with self._start_lock:
                        self._accepting = False
                        self._mark_closed()
                    thread.join(max(0.0, deadline - time.monotonic()))
                    if thread.is_alive():
                        # The backend hangs (or the replay is long): what is still queued goes
                        # to the spool rather than die with the process.
                        warn_once("close", "writer still busy at close; spooling the queue")
                        writer.spool_queue()
                        return False
                    # Events that raced past the flag after the writer's last look.
                    self._drain_inline(deadline, closing=True)
                    self._finish()
                return finished and marker.complete
            if stop:
                with self._start_lock:
                    self._accepting = False
                    self._mark_closed()
            complete = self._drain_inline(deadline, closing=stop)
            if stop:
                self._finish()
            return complete
        except Exception as exc:
            events.count("sink_errors")
            warn_once("flush", "flush failed", exc)
            return False

    def _drain_inline(self, deadline: float, closing: bool = False) -> bool:
        """No writer thread (never started, or gone): do its work on the calling thread."""
        writer = self._writer
        queue = self._queue
        while queue and time.monotonic() < deadline:
            if closing and not writer.backoff.can_try() and self._spool is not None:
                writer.spool_queue()  # the backend is down: make the rest durable and go
                break
            batch = writer.take()[0]
            if batch:
                writer.deliver(batch)
        writer.seal_spool()
        return writer.replay_until(deadline, closing) and not queue

    def _finish(self) -> None:
        self._writer.seal_spool()
        close = getattr(self.backend, "close", None)
        if callable(close):
            try:
                close()
            except Exception as exc:
                warn_once("backend_close", "backend close failed", exc)

    # -- fork --------------------------------------------------------------------------------

    def _after_fork_in_child(self) -> None:
        """In a fork child: the parent's queue, writer and open segments are not ours."""
        if self._spool is not None:
            self._spool.forget()
        self._reset_process_state()
        hook = getattr(self.backend, "after_fork_in_child", None)
        if callable(hook):
            hook()


class _LivePipelines:
    """The pipelines of this process that are not closed: for `flush_all`, `close_all` (at
    exit) and the reset of each in a fork child."""

    def __init__(self) -> None:
        self._pipelines: weakref.WeakSet[Pipeline] = weakref.WeakSet()
        self._lock = threading.Lock()

    def add(self, pipeline: Pipeline) -> None:
        with self._lock:
            self._pipelines.add(pipeline)

    def discard(self, pipeline: Pipeline) -> None:
        with self._lock:
            self._pipelines.discard(pipeline)

    def snapshot(self) -> list[Pipeline]:
        with self._lock:
            return list(self._pipelines)

    def after_fork_in_child(self) -> None:
        # Another thread may have held the lock at the fork; in the child it never releases it.
        self._lock = threading.Lock()
        for pipeline in list(self._pipelines):
            try:
                pipeline._after_fork_in_child()
            except Exception as exc:  # pragma: no cover
                warn_once("fork", "pipeline reset after fork failed", exc)


_live = _LivePipelines()


def flush_all(timeout: float = 5.0) -> bool:
    """Flush every live pipeline of this process (for worker / lifespan shutdown hooks)."""
    deadline = time.monotonic() + timeout
    ok = True
    for pipeline in _live.snapshot():
        ok = pipeline.flush(max(0.0, deadline - time.monotonic())) and ok
    return ok


def close_all(timeout: float | None = None) -> bool:
    """Close every live pipeline (each gets its own ``close_timeout`` unless ``timeout``)."""
    ok = True
    for pipeline in _live.snapshot():
        ok = pipeline.close(timeout) and ok
    return ok


atexit.register(close_all)
os.register_at_fork(after_in_child=_live.after_fork_in_child)
