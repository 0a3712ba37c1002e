"""The spool: events on disk while the backend is down or slower than the host.

A directory of JSON-lines segment files, shared by every process on the host that uses it. A
segment is written as ``<ns>-<pid>_<token>-<role>-<seq>.open`` by one role of one process
(``spill``: the writer's failed batches; ``overflow``: the host threads' events when the queue
is full), sealed to ``.jsonl`` (replayable) and claimed for replay by an atomic rename to
``.<pid>_<token>.replay``, so exactly one process replays it. Segments of processes that died
(``.open`` or ``.replay`` of a pid that is gone, or of an earlier process with our pid) are
recovered by whoever scans next. Events the backend rejects one by one while their neighbours
go in are kept in ``.poison`` files, never replayed again.

Nothing here counts or logs: the pipeline does (it knows what a failure means). OSError from
the file system reaches the caller.
"""

from __future__ import annotations

import contextlib
import json
import os
import threading
import time
import uuid
from typing import Final

from .encoding import Event, encode_event

__all__ = ["Claim", "Segment", "Spool", "creatable_dir", "owner", "owner_alive"]

OPEN: Final = ".open"
READY: Final = ".jsonl"
REPLAY: Final = ".replay"
POISON: Final = ".poison"

#: Distinguishes this process from an earlier one with the same pid (containers restart with
#: the same small pids): a segment tagged with our pid but another token is an orphan.
_token = uuid.uuid4().hex[:8]


def owner() -> str:
    """Who this process is in segment names: ``<pid>_<token>``."""
    return f"{os.getpid()}_{_token}"


def owner_alive(name: str) -> bool:
    """Whether the process named ``<pid>_<token>`` still runs."""
    pid_text, _, token = name.partition("_")
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


def _new_token_in_child() -> None:
    global _token
    _token = uuid.uuid4().hex[:8]


os.register_at_fork(after_in_child=_new_token_in_child)


def creatable_dir(directory: str) -> bool:
    """Whether ``directory`` is a writable directory or could be created as one."""
    path = os.path.abspath(directory)
    while not os.path.exists(path):
        parent = os.path.dirname(path)
        if parent == path:
            return False
        path = parent
    return os.path.isdir(path) and os.access(path, os.W_OK | os.X_OK)


def writer_of(name: str) -> str:
    """``<ns>-<pid>_<token>-<role>-<seq>.open``: who writes (or wrote) the segment."""
    parts = name.split("-", 2)
    return parts[1] if len(parts) > 2 else ""


def replayer_of(name: str) -> str:
    """``<stem>.<pid>_<token>.replay``: who claimed the segment for replay."""
    parts = name.rsplit(".", 2)
    return parts[1] if len(parts) == 3 else ""


class Segment:
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
            os.replace(path, path[: -len(OPEN)] + READY)
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
        name = f"{time.time_ns():020d}-{owner()}-{self._role}-{self._seq}{OPEN}"
        self._path = os.path.join(self.directory, name)
        self._fd = os.open(self._path, os.O_WRONLY | os.O_CREAT | os.O_APPEND | os.O_CLOEXEC, 0o600)
        self._size = 0


class Claim:
    """One segment this process claimed for replay (renamed to ``.replay``)."""

    __slots__ = ("path", "stem")

    def __init__(self, path: str) -> None:
        self.path = path
        self.stem = path.rsplit(".", 2)[0]

    def read(self) -> tuple[list[Event], int, int]:
        """The segment's events, its size in bytes and how many lines were corrupt (cut short
        by a crash mid-write: the rest of the segment is still good)."""
        with open(self.path, "rb") as file:
            data = file.read()
        parsed: list[Event] = []
        corrupt = 0
        for line in data.splitlines():
            if not line.strip():
                continue
            try:
                event = json.loads(line)
            except ValueError:
                corrupt += 1
                continue
            if isinstance(event, dict):
                parsed.append(event)
        return parsed, len(data), corrupt

    def release(self) -> None:
        """Give the segment back, replayable (its replay failed part-way)."""
        with contextlib.suppress(OSError):
            os.replace(self.path, self.stem + READY)

    def done(self) -> None:
        """Every event of the segment is in the backend (or quarantined): remove it."""
        with contextlib.suppress(OSError):
            os.unlink(self.path)

    def quarantine(self, poison: list[Event]) -> str:
        """Keep ``poison`` (events the backend rejects) beside the spool; returns the file."""
        path = self.stem + POISON
        with contextlib.suppress(OSError), open(path, "a", encoding="utf-8") as f:
            f.writelines(encode_event(e) + "\n" for e in poison)
        return path


class Spool:
    """One process's view of a spool directory: its two segments, the bytes the directory
    holds (bounded by ``max_bytes``) and when to scan it again for segments to replay."""

    __slots__ = (
        "bytes",
        "directory",
        "max_bytes",
        "next_scan",
        "overflow",
        "overflow_lock",
        "replay_failures",
        "rescan_interval",
        "spill",
    )

    def __init__(
        self, directory: str, *, max_bytes: int, segment_bytes: int, rescan_interval: float
    ) -> None:
        self.directory = directory
        self.max_bytes = max_bytes
        self.rescan_interval = rescan_interval
        #: The writer thread's failed batches.
        self.spill = Segment(directory, "spill", segment_bytes)
        #: The host threads' events when the queue is full; they append under this lock.
        self.overflow = Segment(directory, "overflow", segment_bytes)
        self.overflow_lock = threading.Lock()
        self.bytes = 0  # what the directory holds, as of the last scan plus what we added
        self.next_scan = 0.0  # scan (for earlier runs' segments) on the first pass
        self.replay_failures: dict[str, int] = {}  # per segment stem

    def fits(self, size: int) -> bool:
        return self.bytes + size <= self.max_bytes

    @property
    def pending(self) -> bool:
        """Whether one of our segments holds events not yet sealed (replayable)."""
        return self.spill.pending or self.overflow.pending

    def sync(self) -> None:
        """Make what we appended durable (fsync)."""
        self.spill.sync()
        if self.overflow.pending:
            with self.overflow_lock:
                self.overflow.sync()

    def seal(self) -> None:
        """Seal our segments: replayable by us or by the next process."""
        self.spill.seal()
        with self.overflow_lock:
            self.overflow.seal()

    def forget(self) -> None:
        """In a fork child: our segments are the parent's."""
        self.spill.forget()
        self.overflow.forget()

    def claim(self) -> Claim | None:
        """Claim the oldest ready segment (ours first) by renaming it; None when none is.

        Recovers the segments of dead writers and replayers on the way, and recounts
        `bytes`. Raises OSError when the directory cannot be listed (absent: None).
        """
        directory = self.directory
        try:
            names = os.listdir(directory)
        except FileNotFoundError:
            return None  # removed (or never created): nothing to replay; writes recreate it
        me = owner()
        ready: list[tuple[bool, str]] = []
        total = 0
        for name in names:
            if name.endswith(READY):
                ready.append((writer_of(name) != me, name))
            elif name.endswith(OPEN) or name.endswith(REPLAY):
                # A writer or replayer that died (or an earlier process with our pid): its
                # segment is ready for anyone. Our own replays are never in flight here, as
                # only one thread of a process replays.
                replay = name.endswith(REPLAY)
                writer = replayer_of(name) if replay else writer_of(name)
                if (replay and writer == me) or not owner_alive(writer):
                    stem = name.rsplit(".", 2 if replay else 1)[0]
                    with contextlib.suppress(OSError):
                        os.replace(
                            os.path.join(directory, name), os.path.join(directory, stem + READY)
                        )
                        name = stem + READY
                        ready.append((True, name))
            else:
                continue
            with contextlib.suppress(OSError):
                total += os.stat(os.path.join(directory, name)).st_size
        self.bytes = total
        for _, name in sorted(ready):
            claimed = os.path.join(directory, f"{name[: -len(READY)]}.{me}{REPLAY}")
            try:
                os.rename(os.path.join(directory, name), claimed)
            except OSError:
                continue  # another process claimed it first
            return Claim(claimed)
        # Nothing ready: look again later (other processes' orphans), or as soon as we seal.
        self.next_scan = time.monotonic() + self.rescan_interval
        return None
