"""Each integration README's shell steps, run as written.

`export` lines become the environment of the steps after them; a line ending in `&` starts a
background process (the next step waits for the port it names with `--port`); every other
line runs in the foreground and must succeed. Only what a shared test machine needs changes:
the ports become free ones, the queue a unique name, the broker the test's, and the trace id
placeholder the id the gateway answered with. The last step (a report) is repeated until the
worker's events are stored, as a reader would run it again.
"""

from __future__ import annotations

import os
import re
import shlex
import signal
import socket
import subprocess
import sys
import time
import uuid
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

import pytest

from tests.integrations.support import ROOT, free_port

pytestmark = pytest.mark.brokers
BIN = Path(sys.executable).parent


def steps(readme: Path) -> list[str]:
    """The commands of the README's ```sh block, continuation lines joined."""
    (block,) = re.findall(r"^```sh\n(.*?)^```", readme.read_text(), flags=re.M | re.S)
    return [line.strip() for line in block.replace("\\\n", " ").splitlines() if line.strip()]


def listening(port: int) -> bool:
    with socket.socket() as sock:
        sock.settimeout(0.5)
        return sock.connect_ex(("127.0.0.1", port)) == 0


def wait_for(check: object, what: str, timeout: float = 60.0) -> None:
    deadline = time.monotonic() + timeout
    while not check():  # type: ignore[operator]
        if time.monotonic() > deadline:
            raise TimeoutError(f"gave up waiting for {what}")
        time.sleep(0.2)


@contextmanager
def background() -> Iterator[list[subprocess.Popen[bytes]]]:
    started: list[subprocess.Popen[bytes]] = []
    try:
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


def run_as_written(
    readme: Path, workdir: Path, substitutions: dict[str, str], env: dict[str, str], expect: str
) -> str:
    """Run the README's steps in ``workdir`` (``substitutions``: regex -> replacement); return
    the output of the last one, once it contains ``expect``."""
    environ = {
        **os.environ,
        **env,
        "PATH": f"{BIN}{os.pathsep}{os.environ.get('PATH', '')}",
        "PYTHONPATH": str(ROOT),  # the README runs from a clone's root: its modules importable
    }
    logs = workdir / "logs"
    logs.mkdir()
    commands = steps(readme)
    trace_id = ""
    output = ""
    with background() as started:
        for number, written in enumerate(commands, start=1):
            command = written
            for old, new in substitutions.items():
                command = re.sub(old, new, command)
            command = command.replace("<the x-trace-id of that response>", trace_id)
            if command.startswith("export "):
                name, _, value = shlex.split(command[len("export ") :])[0].partition("=")
                environ[name] = value
                continue
            if command.endswith("&"):
                log = open(logs / f"step-{number}.log", "wb")  # noqa: SIM115 - closed with the process
                started.append(
                    subprocess.Popen(
                        ["bash", "-c", "exec " + command[:-1]],
                        cwd=workdir, env=environ, stdout=log, stderr=log,
                    )
                )  # fmt: skip
                if port := re.search(r"--port (\d+)", command):
                    wait_for(lambda p=int(port[1]): listening(p), f"step {number}: {written}")
                continue
            last = number == len(commands)
            deadline = time.monotonic() + (30 if last else 0)
            while True:
                done = subprocess.run(
                    ["bash", "-c", command], cwd=workdir, env=environ,
                    capture_output=True, text=True, timeout=120,
                )  # fmt: skip
                output = done.stdout
                if done.returncode == 0 and (not last or expect in output):
                    break
                if time.monotonic() > deadline:
                    shown = "\n".join(f"--- {p.name}\n{p.read_text()[-2000:]}" for p in
                                      sorted(logs.glob("*.log")))  # fmt: skip
                    raise AssertionError(
                        f"step {number} `{written}` -> {done.returncode}\n{output}\n"
                        f"{done.stderr}\n{shown}"
                    )
                time.sleep(0.5)
            if match := re.search(r"^x-trace-id: ([0-9a-f]{32})", output, flags=re.M | re.I):
                trace_id = match[1]
    return output


def _ports(*ports: str) -> dict[str, str]:
    return {rf"\b{port}\b": str(free_port()) for port in ports}


def test_fastapi_celery_readme(redis_url: str, tmp_path: Path) -> None:
    queue = f"readme-{uuid.uuid4().hex[:8]}"
    substitutions = {
        **_ports("8000", "8001", "9000"),
        r"-Q chain\b": f"-Q {queue}",
    }
    env = {"CHAIN_BROKER_URL": f"{redis_url}/3", "CHAIN_QUEUE": queue}
    readme = ROOT / "integrations" / "fastapi_celery" / "README.md"
    output = run_as_written(readme, tmp_path, substitutions, env, expect="gpt-4o-mini")
    assert "owner_team=support" in output and "chain.summarize" in output


def test_flask_dramatiq_readme(rabbitmq_url: str, tmp_path: Path) -> None:
    # kombu spells the default vhost "//", pika "/%2F".
    broker = rabbitmq_url[:-2] + "/%2F" if rabbitmq_url.endswith("//") else rabbitmq_url
    substitutions = _ports("8000", "9000")
    env = {"DOCS_BROKER_URL": broker, "DOCS_QUEUE": f"readme-{uuid.uuid4().hex[:8]}"}
    readme = ROOT / "integrations" / "flask_dramatiq" / "README.md"
    output = run_as_written(readme, tmp_path, substitutions, env, expect="legal")
    assert re.search(r"^legal\s+classify\s", output, flags=re.M), output
