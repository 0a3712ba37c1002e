"""Run the reference integrations as real processes: servers and workers as subprocesses."""

from __future__ import annotations

import contextlib
import json
import os
import signal
import socket
import subprocess
import sys
import time
from collections.abc import Callable, Iterator, Sequence
from pathlib import Path
from typing import Any

import httpx

ROOT = Path(__file__).resolve().parents[2]


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


@contextlib.contextmanager
def processes(
    commands: Sequence[Sequence[str]], env: dict[str, str], logs: Path
) -> Iterator[list[subprocess.Popen[bytes]]]:
    """Start each command (its output in ``logs``); stop them all gracefully afterwards."""
    started: list[subprocess.Popen[bytes]] = []
    full_env = {**os.environ, **env, "PYTHONPATH": str(ROOT)}
    try:
        for index, command in enumerate(commands):
            out = open(logs / f"process-{index}.log", "wb")  # noqa: SIM115 - closed with the process
            started.append(
                subprocess.Popen(command, cwd=ROOT, env=full_env, stdout=out, stderr=out)
            )
        yield started
    finally:
        for process in started:
            if process.poll() is None:
                process.send_signal(signal.SIGTERM)
        for process in started:
            try:
                process.wait(20)
            except subprocess.TimeoutExpired:
                process.kill()
                process.wait(5)


def python(*args: str) -> list[str]:
    return [sys.executable, *args]


def wait_until(check: Callable[[], Any], timeout: float = 30.0, what: str = "") -> Any:
    deadline = time.monotonic() + timeout
    while True:
        try:
            result = check()
            if result:
                return result
        except (httpx.HTTPError, OSError, ValueError):
            pass
        if time.monotonic() > deadline:
            raise TimeoutError(f"gave up waiting for {what or check}")
        time.sleep(0.1)


def healthy(url: str) -> bool:
    return httpx.get(url, timeout=2).status_code == 200


def json_lines(path: Path) -> list[dict[str, Any]]:
    if not path.exists():
        return []
    return [json.loads(line) for line in path.read_text().splitlines() if line.strip()]


def show_logs(logs: Path) -> str:
    return "\n".join(f"--- {p.name}\n{p.read_text()[-3000:]}" for p in sorted(logs.glob("*.log")))
