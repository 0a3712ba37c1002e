"""Brokers and connections the fault tests break on purpose (never the shared services).

`RedisServer` and `RabbitNode` are private servers on ports of their own, started, stopped and
restarted by the test that owns them, with their data on disk so that a restart keeps queued
messages (AOF with fsync on every write; durable RabbitMQ queues). `ResettingProxy` sits
between a worker and its broker and resets every connection through it on request.
"""

from __future__ import annotations

import abc
import contextlib
import os
import select
import shutil
import signal
import socket
import struct
import subprocess
import tempfile
import threading
import time
import uuid
from collections.abc import Iterator
from pathlib import Path


def require_binary(binary: str) -> None:
    """Skip without ``binary`` (fail instead when ``OWNERSHIP_CTX_REQUIRE_BROKERS=1``)."""
    import pytest

    if shutil.which(binary) is None:
        if os.environ.get("OWNERSHIP_CTX_REQUIRE_BROKERS") == "1":
            pytest.fail(f"{binary} is needed for the fault tests")
        pytest.skip(f"{binary} is not installed")


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def wait_port(port: int, timeout: float, up: bool = True) -> None:
    deadline = time.monotonic() + timeout
    while True:
        try:
            with socket.create_connection(("127.0.0.1", port), 0.5):
                answered = True
        except OSError:
            answered = False
        if answered == up:
            return
        if time.monotonic() > deadline:
            raise RuntimeError(f"port {port} still {'closed' if up else 'open'} after {timeout}s")
        time.sleep(0.1)


class PrivateServer(abc.ABC):
    """A broker process of the test's own, in ``self.dir``: `start`, `stop`, then these."""

    dir: Path

    @abc.abstractmethod
    def start(self) -> None: ...

    @abc.abstractmethod
    def stop(self) -> None: ...

    def restart(self, down_for: float = 1.0) -> None:
        self.stop()
        time.sleep(down_for)
        self.start()

    def close(self) -> None:
        self.stop()
        shutil.rmtree(self.dir, ignore_errors=True)


class RedisServer(PrivateServer):
    """``redis-server`` on a free port, data in a temporary directory."""

    def __init__(self) -> None:
        self.port = free_port()
        self.dir = Path(tempfile.mkdtemp(prefix="oc-fault-redis-"))
        self.proc: subprocess.Popen[bytes] | None = None

    @property
    def url(self) -> str:
        return f"redis://127.0.0.1:{self.port}/0"

    def start(self) -> None:
        command = ["redis-server", "--port", str(self.port), "--bind", "127.0.0.1"]
        command += ["--dir", str(self.dir), "--save", "", "--appendonly", "yes"]
        command += ["--appendfsync", "always", "--protected-mode", "no"]
        out = (self.dir / "server.log").open("ab")
        self.proc = subprocess.Popen(command, stdout=out, stderr=subprocess.STDOUT)
        wait_port(self.port, 20)

    def stop(self) -> None:
        if self.proc is not None and self.proc.poll() is None:
            self.proc.terminate()  # SIGTERM: redis finishes its AOF and exits
            try:
                self.proc.wait(20)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait(5)
        self.proc = None


class RabbitNode(PrivateServer):
    """A second RabbitMQ node: own name, ports, data and log directories, no plugins."""

    def __init__(self) -> None:
        self.port, self.dist_port = free_port(), free_port()
        self.name = f"oc-fault-{uuid.uuid4().hex[:8]}@localhost"
        self.dir = Path(tempfile.mkdtemp(prefix="oc-fault-rabbit-"))
        for sub in ("mnesia", "log"):
            (self.dir / sub).mkdir()
        (self.dir / "enabled_plugins").write_text("[].\n")
        # The server script runs the node as the rabbitmq user: it must write there.
        for path in (self.dir, self.dir / "mnesia", self.dir / "log"):
            path.chmod(0o777)
        (self.dir / "enabled_plugins").chmod(0o644)
        self.proc: subprocess.Popen[bytes] | None = None

    @property
    def url(self) -> str:
        return f"amqp://guest:guest@127.0.0.1:{self.port}//"

    def start(self, timeout: float = 90) -> None:
        env = {
            **os.environ,
            "RABBITMQ_NODENAME": self.name,
            "RABBITMQ_NODE_PORT": str(self.port),
            "RABBITMQ_DIST_PORT": str(self.dist_port),
            "RABBITMQ_MNESIA_BASE": str(self.dir / "mnesia"),
            "RABBITMQ_LOG_BASE": str(self.dir / "log"),
            "RABBITMQ_ENABLED_PLUGINS_FILE": str(self.dir / "enabled_plugins"),
            "RABBITMQ_CONFIG_FILE": str(self.dir / "none"),  # no config: no management
        }
        out = (self.dir / "server.out").open("ab")
        self.proc = subprocess.Popen(
            ["rabbitmq-server"], env=env, stdout=out, stderr=subprocess.STDOUT
        )
        try:
            wait_port(self.port, timeout)
        except RuntimeError:
            self.stop()
            raise RuntimeError((self.dir / "server.out").read_text()[-3000:]) from None

    def _processes(self) -> list[int]:
        """Our server script and its descendants (it switches user, so not one group)."""
        assert self.proc is not None
        children: dict[int, list[int]] = {}
        for entry in Path("/proc").iterdir():
            if entry.name.isdigit():
                with contextlib.suppress(OSError):
                    fields = (entry / "stat").read_text().rsplit(")", 1)[1].split()
                    children.setdefault(int(fields[1]), []).append(int(entry.name))
        found, todo = [], [self.proc.pid]
        while todo:
            pid = todo.pop()
            found.append(pid)
            todo.extend(children.get(pid, []))
        return found

    def stop(self) -> None:
        if self.proc is None:
            return
        pids = self._processes()
        for pid in pids:  # the Erlang VM: SIGTERM is a clean node stop
            if _command(pid).startswith("beam"):
                with contextlib.suppress(ProcessLookupError):
                    os.kill(pid, signal.SIGTERM)
        deadline = time.monotonic() + 30
        while any(_alive(pid) for pid in pids) and time.monotonic() < deadline:
            time.sleep(0.1)
        for pid in pids:
            with contextlib.suppress(ProcessLookupError, PermissionError):
                os.kill(pid, signal.SIGKILL)
        with contextlib.suppress(subprocess.TimeoutExpired):
            self.proc.wait(5)
        self.proc = None
        wait_port(self.port, 10, up=False)


def _command(pid: int) -> str:
    try:
        return Path(f"/proc/{pid}/comm").read_text().strip()
    except OSError:
        return ""


def _alive(pid: int) -> bool:
    try:
        with open(f"/proc/{pid}/stat") as fh:
            return fh.read().rsplit(")", 1)[1].split()[0] != "Z"
    except OSError:
        return False


@contextlib.contextmanager
def private_broker(kind: str) -> Iterator[RedisServer | RabbitNode]:
    server: RedisServer | RabbitNode = RedisServer() if kind == "redis" else RabbitNode()
    server.start()
    try:
        yield server
    finally:
        server.close()


class ResettingProxy:
    """A TCP proxy to ``127.0.0.1:target``; `reset` sends RST on every connection through it."""

    def __init__(self, target: int) -> None:
        self.target = target
        self.listener = socket.create_server(("127.0.0.1", 0))
        self.port = int(self.listener.getsockname()[1])
        self.resets = 0
        self._pairs: list[tuple[socket.socket, socket.socket]] = []
        self._lock = threading.Lock()
        self._closed = False
        self._thread = threading.Thread(target=self._accept, daemon=True)
        self._thread.start()

    def url(self, template: str) -> str:
        """``template`` with its port replaced by the proxy's (``{port}`` placeholder)."""
        return template.format(port=self.port)

    def _accept(self) -> None:
        while not self._closed:
            try:
                client, _ = self.listener.accept()
            except OSError:
                return
            try:
                upstream = socket.create_connection(("127.0.0.1", self.target), 5)
            except OSError:
                client.close()
                continue
            with self._lock:
                self._pairs.append((client, upstream))
            threading.Thread(target=self._pump, args=(client, upstream), daemon=True).start()

    def _pump(self, a: socket.socket, b: socket.socket) -> None:
        peers = {a: b, b: a}
        try:
            while True:
                readable, _, _ = select.select([a, b], [], [], 1.0)
                for sock in readable:
                    data = sock.recv(65536)
                    if not data:
                        return
                    peers[sock].sendall(data)
        except (OSError, ValueError):  # reset under us: the socket is closed or gone
            return
        finally:
            for sock in (a, b):
                with contextlib.suppress(OSError):
                    sock.close()

    def reset(self) -> int:
        """Reset every open connection (both sides see ``Connection reset by peer``)."""
        with self._lock:
            pairs, self._pairs = self._pairs, []
        for pair in pairs:
            for sock in pair:
                with contextlib.suppress(OSError):
                    sock.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
                    sock.close()
        self.resets += len(pairs)
        return len(pairs)

    def close(self) -> None:
        self._closed = True
        self.listener.close()
        self.reset()
