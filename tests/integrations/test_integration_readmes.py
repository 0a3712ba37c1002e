"""Each integration README's shell steps, run as written (real Redis / RabbitMQ).

The one liberty taken: the README's ports (9000, 8000, 8001) become free ports, and the
brokers' environment overrides (``CHAIN_BROKER_URL``, ``DOCS_QUEUE``) keep this run apart from
other tests. ``export`` lines set the environment of the later steps; ``... &`` lines start
processes (a step that listens on ``--port`` is waited for, as a reader would); the other lines
run in bash, and the last one is repeated until the worker's provider call is in its output.
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
from pathlib import Path

import pytest

from tests.integrations.support import free_port

ROOT = Path(__file__).resolve().parents[2]


def shell_steps(readme: Path, ports: dict[str, int]) -> list[str]:
    """The first ```sh block, one step per command (continuation lines joined)."""
    match = re.search(r"```sh\n(.*?)```", readme.read_text(), re.S)
    assert match, f"no ```sh block in {readme}"
    block = match.group(1)
    for written, free in ports.items():
        block = re.sub(rf"\b{written}\b", str(free), block)
    return [line for line in block.replace("\\\n", " ").splitlines() if line.strip()]


def listening(port: int) -> bool:
    with socket.socket() as sock:
        sock.settimeout(0.5)
        return sock.connect_ex(("127.0.0.1", port)) == 0


class Steps:
    """Runs README steps in order, with one environment and a working directory of its own."""

    def __init__(self, workdir: Path, env: dict[str, str]) -> None:
        self.workdir = workdir
        bin_dir = str(Path(sys.executable).parent)
        self.env = {
            **{k: v for k, v in os.environ.items() if not k.startswith("OWNERSHIP_CTX_")},
            **env,
            "PATH": bin_dir + os.pathsep + os.environ.get("PATH", ""),
            "PYTHONPATH": str(ROOT),
        }
        self.background: list[tuple[subprocess.Popen[bytes], Path]] = []

    def run(self, step: str, *, until: str | None = None, timeout: float = 90) -> str:
        words = shlex.split(step, comments=True)
        if words[0] == "export":
            for assignment in words[1:]:
                name, _, value = assignment.partition("=")
                self.env[name] = value
            return ""
        if words[-1] == "&":
            self.start(words[:-1])
            return ""
        deadline = time.monotonic() + timeout
        while True:
            result = subprocess.run(
                ["bash", "-c", step],
                cwd=self.workdir,
                env=self.env,
                capture_output=True,
                text=True,
                timeout=60,
                check=False,
            )
            done = result.returncode == 0 and (until is None or until in result.stdout)
            if done:
                return result.stdout
            if time.monotonic() > deadline:
                raise AssertionError(
                    f"step failed: {step}\n{result.stdout}\n{result.stderr}\n{self.logs()}"
                )
            time.sleep(1)

    def start(self, words: list[str]) -> None:
        log = self.workdir / f"{len(self.background)}-{words[0]}.log"
        with open(log, "wb") as out:
            process = subprocess.Popen(
                words,
                cwd=self.workdir,
                env=self.env,
                stdout=out,
                stderr=subprocess.STDOUT,
                start_new_session=True,
            )
        self.background.append((process, log))
        if "--port" in words:
            port = int(words[words.index("--port") + 1])
            deadline = time.monotonic() + 60
            while not listening(port):
                if process.poll() is not None or time.monotonic() > deadline:
                    raise AssertionError(f"{' '.join(words)} did not listen:\n{self.logs()}")
                time.sleep(0.2)

    def logs(self) -> str:
        return "\n".join(f"--- {log.name}\n{log.read_text()[-3000:]}" for _, log in self.background)

    def stop(self) -> None:
        for process, _ in self.background:
            if process.poll() is None:
                os.killpg(process.pid, signal.SIGTERM)
        for process, _ in self.background:
            try:
                process.wait(20)
            except subprocess.TimeoutExpired:
                os.killpg(process.pid, signal.SIGKILL)
                process.wait(5)


@pytest.fixture
def steps(tmp_path: Path) -> Iterator[Steps]:
    runner = Steps(tmp_path, {})
    try:
        yield runner
    finally:
        runner.stop()


def test_fastapi_celery_readme(redis_url: str, steps: Steps) -> None:
    ports = {"9000": free_port(), "8000": free_port(), "8001": free_port()}
    readme = ROOT / "integrations" / "fastapi_celery" / "README.md"
    # A Redis database of this test's own: the README's worker consumes the queue "chain".
    steps.env["CHAIN_BROKER_URL"] = f"{redis_url}/13"
    *first, curl, trace = shell_steps(readme, ports)
    for step in first:
        steps.run(step)
    response = steps.run(curl)
    found = re.search(r"^x-trace-id: ([0-9a-f]{32})\r?$", response, re.M | re.I)
    assert found, response
    assert "<the x-trace-id header of that response>" in trace
    trace = trace.replace("<the x-trace-id header of that response>", found.group(1))
    out = steps.run(trace, until="gpt-4o-mini")
    assert f"trace {found.group(1)}" in out and "owner_team=support" in out
    assert "chain.summarize" in out  # the Celery hop, same trace


def test_flask_dramatiq_readme(rabbitmq_url: str, steps: Steps) -> None:
    ports = {"9000": free_port(), "8000": free_port()}
    readme = ROOT / "integrations" / "flask_dramatiq" / "README.md"
    steps.env["DOCS_QUEUE"] = f"oc-readme-{uuid.uuid4().hex[:8]}"
    *first, curl, chargeback = shell_steps(readme, ports)
    for step in first:
        steps.run(step)
    assert '"owner_team":"legal"' in steps.run(curl).replace(" ", "")
    out = steps.run(chargeback, until="legal")
    row = next(line for line in out.splitlines() if line.startswith("legal"))
    assert "classify" in row
