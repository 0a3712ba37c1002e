"""The pipeline every durable sink runs behind: constant-time hand-off, background batches, spool.

The host's thread only appends the event to a bounded in-memory queue (a ``deque``; a few
hundred nanoseconds). A daemon writer thread takes batches (up to ``batch_size`` events, at
least every ``flush_interval`` seconds) and hands them to a *backend*: any object with
``write_batch(list_of_events) -> None`` (and optionally ``close()`` and
``after_fork_in_child()``). Backends insert by ``event_id`` with insert-or-ignore, so writing
the same event twice stores it once; the pipeline relies on that to replay without
bookkeeping.

When something degrades, events go to an on-disk *spool* (a directory of JSON-lines segment
files) instead of being lost:

- the backend raises (down, locked, read-only, ...): the batch is appended to a spool segment
  and fsync'd, the writer backs off exponentially and retries; once a write succeeds it
  replays the spool, oldest segment first, between live batches;
- the queue is full (the backend is slower than the host): the *caller* encodes the event and
  appends it to its own spool segment, so memory stays bounded and nothing blocks for long
  (a few microseconds of JSON and one ``write(2)`` instead of a queue append);
- without a spool directory, the oldest queued event is dropped instead, and counted.

Segments are shared by every process on the host that uses the same directory: a segment is
written as ``*.open``, sealed to ``*.jsonl`` and claimed for replay by an atomic rename, so
exactly one process replays it; segments of processes that died are recovered by whoever
scans next. Everything degraded is counted in `ownership_ctx.events.stats` (``sink_*``) and
logged once; nothing here raises into the host.

Shutdown: `Pipeline.flush` and `Pipeline.close` (for Celery / Dramatiq worker shutdown and ASGI
lifespan shutdown hooks), and an ``atexit`` hook that closes every live pipeline. Fork: a child
gets a fresh queue, fresh locks and its own writer (started on its first event); the parent's
pending events stay the parent's.
"""

from __future__ import annotations

import atexit
import contextlib
import json
import logging
import os
import threading
import time
import uuid
import weakref
from collections import deque
from collections.abc import Mapping
from typing import Any, Protocol

from ownership_ctx import events
from ownership_ctx.schema import encoding as schema_encoding

__all__ = ["Backend", "Pipeline", "close_all", "creatable_dir", "encode_event", "flush_all"]

logger = logging.getLogger("ownership_ctx.sinks")

Event = Mapping[str, Any]


class Backend(Protocol):
    """What the writer thread writes to. ``write_batch`` may raise: the batch is then spooled."""

    def write_batch(self, events: list[Event]) -> None: ...


# ---------------------------------------------------------------------------------------------
# Encoding (spool lines): the one encoder, shared with the stores' JSON bodies and JSON-lines
# files (NaN and infinities as null).

encode_event = schema_encoding.encode_event


# ---------------------------------------------------------------------------------------------
# Logging and counting degraded states, once each


_warned: set[str] = set()
_warned_lock = threading.Lock()


def _warn_once(key: str, message: str, exc: BaseException | None = None) -> None:
    with _warned_lock:
        if key in _warned:
            return
        _warned.add(key)
    logger.warning("ownership_ctx: %s", message, exc_info=exc)


# ---------------------------------------------------------------------------------------------
# Spool segments


#: Distinguishes this process from an earlier one with the same pid (containers restart with
#: the same small pids): a segment tagged with our pid but another token is an orphan.
_token = uuid.uuid4().hex[:8]


def _owner() -> str:
    return f"{os.getpid()}_{_token}"


def _owner_alive(owner: str) -> bool:
    pid_text, _, token = owner.partition("_")
    try:
        pid = int(pid_text)
    except ValueError:
        return False
    if pid == os.getpid():
        # Our pid: alive only if it is really us (same token).
        return token == _token
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


def creatable_dir(directory: str) -> bool:
    """Whether ``directory`` is a writable directory or could be created as one."""
    path = os.path.abspath(directory)
    while not os.path.exists(path):
        parent = os.path.dirname(path)
        if parent == path:
            return False
        path = parent
    return os.path.isdir(path) and os.access(path, os.W_OK | os.X_OK)


class _Segment:
    """The segment file one role of one process appends to. Not thread-safe: callers lock."""

    __slots__ = ("_dirty", "_fd", "_path", "_role", "_seq", "_size", "directory", "segment_bytes")

    def __init__(self, directory: str, role: str, segment_bytes: int) -> None:
        self.directory = directory
        self.segment_bytes = segment_bytes
        self._role = role
        self._fd = -1
        self._path = ""
        self._size = 0
        self._seq = 0
        self._dirty = False

    @property
    def pending(self) -> bool:
        return self._fd >= 0 and self._size > 0

    def append(self, data: bytes) -> None:
        if self._fd < 0 or self._size >= self.segment_bytes:
            self.seal()
            self._open()
        view = memoryview(data)
        try:
            while view:
                written = os.write(self._fd, view)
                view = view[written:]
        except OSError:
            # A full disk mid-line: cut the partial line off, or the next one would be glued
            # to it and both lost at replay.
            with contextlib.suppress(OSError):
                os.ftruncate(self._fd, self._size)
            raise
        self._size += len(data)
        self._dirty = True

    def sync(self) -> None:
        if self._dirty and self._fd >= 0:
            os.fsync(self._fd)
            self._dirty = False

    def seal(self) -> None:
        """Make the segment replayable (``.open`` -> ``.jsonl``); a new one opens on demand."""
        fd, self._fd = self._fd, -1
        if fd < 0:
            return
        path, size = self._path, self._size
        try:
            if self._dirty:
                os.fsync(fd)
        finally:
            self._dirty = False
            os.close(fd)
        if size:
            os.replace(path, path[: -len(".open")] + ".jsonl")
        else:
            with contextlib.suppress(OSError):
                os.unlink(path)

    def forget(self) -> None:
        """In a fork child: the open segment is the parent's; drop our copy of its descriptor."""
        fd, self._fd = self._fd, -1
        self._size = 0
        self._dirty = False
        if fd >= 0:
            with contextlib.suppress(OSError):
                os.close(fd)

    def _open(self) -> None:
        os.makedirs(self.directory, exist_ok=True)
        self._seq += 1
        name = f"{time.time_ns():020d}-{_owner()}-{self._role}-{self._seq}.open"
        self._path = os.path.join(self.directory, name)
        self._fd = os.open(self._path, os.O_WRONLY | os.O_CREAT | os.O_APPEND | os.O_CLOEXEC, 0o600)
        self._size = 0


def _writer_of(name: str) -> str:
    """``<ns>-<pid>_<token>-<role>-<seq>.open``: who writes (or wrote) the segment."""
    parts = name.split("-", 2)
    return parts[1] if len(parts) > 2 else ""


def _replayer_of(name: str) -> str:
    """``<stem>.<pid>_<token>.replay``: who claimed the segment for replay."""
    parts = name.rsplit(".", 2)
    return parts[1] if len(parts) == 3 else ""


def _stamp(event: dict[str, Any]) -> None:
    # Without an id a replay could not be recognised as one; without a time, no hour bucket.
    if event.get("event_id") is None:
        event["event_id"] = uuid.uuid4().hex
    event.setdefault("ts", time.time())


class _Marker:
    """Put in the queue by `Pipeline.flush`: the writer signals it once everything queued
    before it is written (or spooled) and the spool is replayed as far as the deadline allows."""

    __slots__ = ("complete", "deadline", "done", "stop")

    def __init__(self, deadline: float, stop: bool) -> None:
        self.deadline = deadline
        self.stop = stop
        self.done = threading.Event()
        self.complete = False


# ---------------------------------------------------------------------------------------------
# The pipeline


_live: weakref.WeakSet[Pipeline] = weakref.WeakSet()
_live_lock = threading.Lock()


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
        self._reset_process_state()
        # The spool directory is created by the first segment written to it: a run that never
        # spools leaves nothing behind. An unusable one is reported now, not at the first spill.
        if self.spool_dir is not None and not creatable_dir(self.spool_dir):
            events.count("sink_spool_errors")
            _warn_once("spool_dir", f"spool directory {self.spool_dir} unusable (not writable)")
        with _live_lock:
            _live.add(self)

    def _reset_process_state(self) -> None:
        """Everything a process must own alone: built at start and again in a fork child."""
        self._queue: deque[Any] = deque()
        # The hot path reads only this flag and the queue length: True while a writer runs.
        self._accepting = False
        self._thread: threading.Thread | None = None
        self._start_lock = threading.Lock()
        self._overflow_lock = threading.Lock()
        self._wakeup = threading.Event()
        self._retry_at = 0.0
        self._backoff = self.retry_initial
        self._spool_bytes = 0
        self._next_scan = 0.0  # scan the spool (for earlier runs' segments) on the first pass
        self._replay_failures: dict[str, int] = {}
        spool = self.spool_dir
        self._spill_seg = _Segment(spool, "spill", self.segment_bytes) if spool else None
        self._overflow_seg = _Segment(spool, "overflow", self.segment_bytes) if spool else None

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
            _warn_once("emit", "event dropped: pipeline failed", exc)

    def _start(self) -> bool:
        with self._start_lock:
            if self._accepting:
                return True
            if self._closed:
                return False
            thread = threading.Thread(
                target=self._run, name=f"ownership_ctx-{self.name}-writer", daemon=True
            )
            try:
                thread.start()
            except RuntimeError as exc:  # interpreter shutting down: no new threads
                _warn_once("start", f"writer thread not started: {exc}")
                return False
            self._thread = thread
            self._accepting = True
            return True

    def _overflow(self, event: Event) -> None:
        """Queue full (or pipeline closed): spill from the caller's thread, else drop-oldest."""
        segment = self._overflow_seg
        if segment is not None:
            if isinstance(event, dict) and (event.get("event_id") is None or "ts" not in event):
                _stamp(event)
            data = (encode_event(event) + "\n").encode()
            if self._spool_bytes + len(data) <= self.spool_max_bytes:
                with self._overflow_lock:
                    try:
                        segment.append(data)
                        if self._closed:
                            # No writer will seal it: make it replayable by the next one now.
                            segment.seal()
                    except OSError as exc:
                        events.count("sink_spool_errors")
                        _warn_once("spool_write", f"cannot write the spool: {exc}", exc)
                    else:
                        self._spool_bytes += len(data)
                        events.count("sink_spilled")
                        _warn_once(
                            "overflow",
                            f"event queue full ({self.queue_size}); spilling to {self.spool_dir}",
                        )
                        return
            else:
                _warn_once("spool_full", f"spool over {self.spool_max_bytes} bytes; dropping")
        if self._accepting and not self._closed:
            # Drop the oldest rather than the newest: the newest describe the current state.
            queue = self._queue
            try:
                oldest = queue.popleft()
            except IndexError:
                oldest = None
            if isinstance(oldest, _Marker):
                queue.appendleft(oldest)
            queue.append(event)
        events.count("sink_dropped")
        _warn_once("dropped", "events are being dropped (queue full, no usable spool)")

    # -- shutdown ----------------------------------------------------------------------------

    def flush(self, timeout: float | None = 5.0) -> bool:
        """Write everything emitted so far (by this thread, or before this call from others)
        and replay the spool, waiting at most ``timeout`` seconds.

        True when all of it reached the backend; False when some is still spooled on disk
        (it is replayed later, by this process or the next) or the timeout passed.
        """
        return self._settle(timeout, stop=False)

    def close(self, timeout: float | None = None) -> bool:
        """Flush (at most ``timeout``, default ``close_timeout``), stop the writer, seal the
        spool for the next run and close the backend. Idempotent. Events emitted afterwards
        are spilled (or dropped without a spool)."""
        if self._closed:
            return True
        result = self._settle(self.close_timeout if timeout is None else timeout, stop=True)
        self._closed = True
        with _live_lock:
            _live.discard(self)
        return result

    def _settle(self, timeout: float | None, stop: bool) -> bool:
        deadline = time.monotonic() + (timeout if timeout is not None else 1e9)
        if threading.current_thread() is self._thread:
            return False  # from inside the backend: waiting on ourselves would deadlock
        try:
            thread = self._thread
            if thread is not None and thread.is_alive() and self._accepting:
                marker = _Marker(deadline, stop)
                self._queue.append(marker)
                self._wakeup.set()
                finished = marker.done.wait(max(0.0, deadline - time.monotonic()))
                if stop:
                    with self._start_lock:
                        self._accepting = False
                        self._closed = True
                    thread.join(max(0.0, deadline - time.monotonic()))
                    if thread.is_alive():
                        # The backend hangs (or the replay is long): what is still queued goes
                        # to the spool rather than die with the process.
                        _warn_once("close", "writer still busy at close; spooling the queue")
                        self._spool_queue()
                        return False
                    # Events that raced past the flag after the writer's last look.
                    self._drain_inline(deadline, closing=True)
                    self._finish()
                return finished and marker.complete
            if stop:
                with self._start_lock:
                    self._accepting = False
                    self._closed = True
            complete = self._drain_inline(deadline, closing=stop)
            if stop:
                self._finish()
            return complete
        except Exception as exc:
            events.count("sink_errors")
            _warn_once("flush", "flush failed", exc)
            return False

    def _spool_queue(self) -> None:
        segment = self._overflow_seg
        if segment is None:
            return
        lines = []
        while True:
            try:
                item = self._queue.popleft()
            except IndexError:
                break
            if type(item) is not _Marker:
                lines.append(encode_event(item) + "\n")
        if not lines:
            return
        with self._overflow_lock:
            try:
                segment.append("".join(lines).encode())
                segment.seal()
            except OSError as exc:
                events.count("sink_spool_errors")
                events.count("sink_dropped", len(lines))
                _warn_once("spool_write", f"cannot write the spool: {exc}", exc)
                return
        events.count("sink_spilled", len(lines))

    def _drain_inline(self, deadline: float, closing: bool = False) -> bool:
        """No writer thread (never started, or gone): do its work on the calling thread."""
        queue = self._queue
        while queue and time.monotonic() < deadline:
            if closing and not self._can_try() and self.spool_dir is not None:
                self._spool_queue()  # the backend is down: make the rest durable and go
                break
            batch = self._take()[0]
            if batch:
                self._deliver(batch)
        self._seal_spool()
        return self._replay_until(deadline, closing) and not queue

    def _finish(self) -> None:
        self._seal_spool()
        close = getattr(self.backend, "close", None)
        if callable(close):
            try:
                close()
            except Exception as exc:
                _warn_once("backend_close", "backend close failed", exc)

    # -- the writer thread -------------------------------------------------------------------

    def _run(self) -> None:
        while True:
            try:
                if self._step():
                    return
            except Exception as exc:  # pragma: no cover - a writer must outlive its bugs
                events.count("sink_errors")
                _warn_once("writer", "writer thread error", exc)
                time.sleep(self.flush_interval)

    def _step(self) -> bool:
        """One pass of the writer; True when it must exit."""
        batch, markers = self._take()
        if batch:
            self._deliver(batch)
        for marker in markers:
            self._seal_spool()
            marker.complete = self._replay_until(marker.deadline, closing=marker.stop)
            marker.done.set()
            if marker.stop:
                return True
        if batch or markers:
            return False
        if self._closed:
            return True  # close() gave up waiting for us and spooled the queue: done
        # Idle: make spooled events durable, replay a segment when the backend is up.
        self._sync_spool()
        if self.spool_dir is not None and self._can_try():
            if self._mine_pending():
                self._seal_spool()
                self._next_scan = 0.0
            if time.monotonic() >= self._next_scan and self._replay_one():
                return False  # more may be waiting: come straight back (live events first)
        self._wakeup.wait(self.flush_interval)
        self._wakeup.clear()
        return False

    def _take(self) -> tuple[list[Any], list[_Marker]]:
        queue = self._queue
        batch: list[Any] = []
        markers: list[_Marker] = []
        popleft = queue.popleft
        for _ in range(min(len(queue), self.batch_size)):
            item = popleft()
            if type(item) is _Marker:
                markers.append(item)
                break  # write what precedes the marker before signalling it
            batch.append(item)
        return batch, markers

    def _can_try(self) -> bool:
        return self._retry_at == 0.0 or time.monotonic() >= self._retry_at

    def _deliver(self, batch: list[Event]) -> None:
        for event in batch:
            if isinstance(event, dict) and (event.get("event_id") is None or "ts" not in event):
                _stamp(event)
        if self._can_try() and self._write(batch):
            return
        self._spill(batch)

    def _write(self, batch: list[Event]) -> bool:
        try:
            self.backend.write_batch(batch)
        except Exception as exc:
            events.count("sink_backend_errors")
            was_healthy = self._retry_at == 0.0
            self._retry_at = time.monotonic() + self._backoff
            self._backoff = min(self._backoff * 2, self.retry_max)
            if was_healthy:
                logger.warning(
                    "ownership_ctx: %s backend failed (%s: %s); spooling and retrying",
                    self.name,
                    type(exc).__name__,
                    exc,
                )
            return False
        if self._retry_at != 0.0:
            logger.info("ownership_ctx: %s backend recovered; replaying the spool", self.name)
            self._retry_at = 0.0
            self._backoff = self.retry_initial
            self._next_scan = 0.0
        events.count("sink_written", len(batch))
        return True

    def _spill(self, batch: list[Event]) -> None:
        segment = self._spill_seg
        if segment is None:
            # No spool: keep the batch at the head of the queue for the next try; the queue
            # bound (drop-oldest) then limits memory.
            self._queue.extendleft(reversed(batch))
            excess = len(self._queue) - self.queue_size
            for _ in range(max(0, excess)):
                item = self._queue.pop()
                if isinstance(item, _Marker):
                    self._queue.appendleft(item)
                    continue
                events.count("sink_dropped")
            # Sleep out the backoff instead of spinning on a backend that is down.
            self._wakeup.wait(max(0.0, min(self._retry_at - time.monotonic(), self.retry_max)))
            self._wakeup.clear()
            return
        data = "".join([encode_event(e) + "\n" for e in batch]).encode()
        if self._spool_bytes + len(data) > self.spool_max_bytes:
            events.count("sink_dropped", len(batch))
            _warn_once("spool_full", f"spool over {self.spool_max_bytes} bytes; dropping")
            return
        try:
            segment.append(data)
            segment.sync()  # fsync per batch: a spooled batch survives a power cut
        except OSError as exc:
            events.count("sink_spool_errors")
            events.count("sink_dropped", len(batch))
            _warn_once("spool_write", f"cannot write the spool: {exc}", exc)
            return
        self._spool_bytes += len(data)
        events.count("sink_spilled", len(batch))

    def _sync_spool(self) -> None:
        try:
            if self._spill_seg is not None:
                self._spill_seg.sync()
            if self._overflow_seg is not None and self._overflow_seg.pending:
                with self._overflow_lock:
                    self._overflow_seg.sync()
        except OSError as exc:
            events.count("sink_spool_errors")
            _warn_once("spool_sync", f"cannot fsync the spool: {exc}", exc)

    def _seal_spool(self) -> None:
        try:
            if self._spill_seg is not None:
                self._spill_seg.seal()
            if self._overflow_seg is not None:
                with self._overflow_lock:
                    self._overflow_seg.seal()
        except OSError as exc:
            events.count("sink_spool_errors")
            _warn_once("spool_seal", f"cannot seal a spool segment: {exc}", exc)

    # -- replay ------------------------------------------------------------------------------

    def _replay_until(self, deadline: float, closing: bool = False) -> bool:
        """Replay ready segments until none is left (True) or the deadline passes (False),
        waiting out the backoff while the backend fails (closing: only a short one)."""
        if self.spool_dir is None:
            return not self._queue
        while True:
            now = time.monotonic()
            if now >= deadline:
                return False
            if not self._can_try():
                if closing and self._retry_at - now > 1.0:
                    return False  # all of it is durable in the spool; do not hold up exit
                time.sleep(max(0.0, min(self._retry_at - now, deadline - now, 0.05)))
                continue
            if self._mine_pending():
                self._seal_spool()
            if not self._replay_one():
                if self._can_try() and not self._mine_pending():
                    return True
                continue
            # Live events first, even while settling (a few batches: the replay must progress).
            for _ in range(4):
                if not self._queue or type(self._queue[0]) is _Marker:
                    break
                batch = self._take()[0]
                if batch:
                    self._deliver(batch)

    def _mine_pending(self) -> bool:
        return any(seg is not None and seg.pending for seg in (self._spill_seg, self._overflow_seg))

    def _claim(self) -> str | None:
        """Claim the oldest ready segment (ours first) by renaming it; None when none is."""
        directory = self.spool_dir
        assert directory is not None
        try:
            names = os.listdir(directory)
        except FileNotFoundError:
            return None  # removed (or never created): nothing to replay; writes recreate it
        except OSError as exc:
            events.count("sink_spool_errors")
            _warn_once("spool_list", f"cannot list the spool: {exc}", exc)
            return None
        me = _owner()
        ready: list[tuple[bool, str]] = []
        total = 0
        for name in names:
            if name.endswith(".jsonl"):
                ready.append((_writer_of(name) != me, name))
            elif name.endswith(".open") or name.endswith(".replay"):
                # A writer or replayer that died (or an earlier process with our pid): its
                # segment is ready for anyone. Our own replays are never in flight here, as
                # only this thread replays.
                replay = name.endswith(".replay")
                owner = _replayer_of(name) if replay else _writer_of(name)
                if (replay and owner == me) or not _owner_alive(owner):
                    stem = name.rsplit(".", 2 if replay else 1)[0]
                    with contextlib.suppress(OSError):
                        os.replace(
                            os.path.join(directory, name), os.path.join(directory, stem + ".jsonl")
                        )
                        name = stem + ".jsonl"
                        ready.append((True, name))
            else:
                continue
            with contextlib.suppress(OSError):
                total += os.stat(os.path.join(directory, name)).st_size
        self._spool_bytes = total
        for _, name in sorted(ready):
            claimed = os.path.join(directory, f"{name[: -len('.jsonl')]}.{me}.replay")
            try:
                os.rename(os.path.join(directory, name), claimed)
            except OSError:
                continue  # another process claimed it first
            return claimed
        # Nothing ready: look again later (other processes' orphans), or as soon as we seal.
        self._next_scan = time.monotonic() + self.rescan_interval
        return None

    def _replay_one(self) -> bool:
        """Replay one segment; True when one was claimed (whether or not it all went in)."""
        path = self._claim()
        if path is None:
            return False
        stem = path.rsplit(".", 2)[0]
        try:
            with open(path, "rb") as file:
                data = file.read()
        except OSError as exc:
            events.count("sink_spool_errors")
            _warn_once("spool_read", f"cannot read spool segment {path}: {exc}", exc)
            return False
        parsed: list[Event] = []
        for line in data.splitlines():
            if not line.strip():
                continue
            try:
                event = json.loads(line)
            except ValueError:
                # A line cut short by a crash mid-write: the rest of the segment is still good.
                events.count("sink_spool_corrupt_lines")
                continue
            if isinstance(event, dict):
                parsed.append(event)
        failures = self._replay_failures.get(stem, 0)
        step = self.batch_size if failures < 2 else 1
        poison: list[Event] = []
        for start in range(0, len(parsed), step):
            chunk = parsed[start : start + step]
            if self._write(chunk):
                continue
            if step == 1 and self._is_poison(chunk):
                poison.extend(chunk)
                continue
            self._replay_failures[stem] = failures + 1
            with contextlib.suppress(OSError):
                os.replace(path, stem + ".jsonl")
            return True
        self._replay_failures.pop(stem, None)
        if poison:
            self._quarantine(stem, poison)
        with contextlib.suppress(OSError):
            os.unlink(path)
        self._spool_bytes = max(0, self._spool_bytes - len(data))
        events.count("sink_replayed", len(parsed) - len(poison))
        return True

    def _is_poison(self, chunk: list[Event]) -> bool:
        """A single event failed while its neighbours went in: probe the backend with nothing
        else to tell "this event" from "the backend is down"."""
        try:
            self.backend.write_batch([])
        except Exception:
            return False
        self._retry_at = 0.0
        self._backoff = self.retry_initial
        return True

    def _quarantine(self, stem: str, poison: list[Event]) -> None:
        events.count("sink_poison", len(poison))
        _warn_once("poison", f"events the backend rejects kept in {stem}.poison")
        with contextlib.suppress(OSError), open(stem + ".poison", "a", encoding="utf-8") as f:
            f.writelines(encode_event(e) + "\n" for e in poison)

    # -- fork --------------------------------------------------------------------------------

    def _after_fork_in_child(self) -> None:
        for segment in (self._spill_seg, self._overflow_seg):
            if segment is not None:
                segment.forget()
        self._reset_process_state()
        hook = getattr(self.backend, "after_fork_in_child", None)
        if callable(hook):
            hook()


def flush_all(timeout: float = 5.0) -> bool:
    """Flush every live pipeline of this process (for worker / lifespan shutdown hooks)."""
    with _live_lock:
        pipelines = list(_live)
    deadline = time.monotonic() + timeout
    ok = True
    for pipeline in pipelines:
        ok = pipeline.flush(max(0.0, deadline - time.monotonic())) and ok
    return ok


def close_all(timeout: float | None = None) -> bool:
    """Close every live pipeline (each gets its own ``close_timeout`` unless ``timeout``)."""
    with _live_lock:
        pipelines = list(_live)
    ok = True
    for pipeline in pipelines:
        ok = pipeline.close(timeout) and ok
    return ok


def _after_fork_in_child() -> None:
    global _live_lock, _warned_lock, _token
    # Another thread may have held these at the fork; in the child it never will release them.
    _live_lock = threading.Lock()
    _warned_lock = threading.Lock()
    _token = uuid.uuid4().hex[:8]
    for pipeline in list(_live):
        try:
            pipeline._after_fork_in_child()
        except Exception as exc:  # pragma: no cover
            _warn_once("fork", "pipeline reset after fork failed", exc)


atexit.register(close_all)
os.register_at_fork(after_in_child=_after_fork_in_child)
