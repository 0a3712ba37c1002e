"""`log_envelope_on_worker_lines`: Celery's own worker lines carry the trace id and owner, on a
real worker (Redis)."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import textwrap
import time
import uuid
from collections.abc import Iterator
from pathlib import Path

import pytest

from ownership_ctx import Envelope, bind

ROOT = Path(__file__).resolve().parents[2]

APP = """
import logging

from celery import Celery
from celery.utils.log import get_task_logger

from ownership_ctx.celery import install, log_envelope_on_worker_lines

app = Celery("{module}", broker="{broker}")
app.conf.task_default_queue = "{queue}"
app.conf.broker_connection_retry_on_startup = True
install(app)
log_envelope_on_worker_lines(app)
task_logger = get_task_logger(__name__)


@app.task(name="{module}.work")
def work() -> None:
    task_logger.info("task logger line")
    logging.getLogger("someone.else").warning("plain logger line")
"""


@pytest.fixture
def worker_app(redis_url: str, tmp_path: Path) -> Iterator[tuple[object, Path]]:
    module = f"loghook_{uuid.uuid4().hex[:8]}"
    queue = f"oc-loghook-{uuid.uuid4().hex[:8]}"
    (tmp_path / f"{module}.py").write_text(
        textwrap.dedent(APP.format(module=module, broker=f"{redis_url}/11", queue=queue))
    )
    log = tmp_path / "worker.log"
    env = {**os.environ, "PYTHONPATH": os.pathsep.join([str(tmp_path), str(ROOT)])}
    env.pop("OWNERSHIP_CTX_SIGNING_KEYS", None)
    command = [sys.executable, "-m", "celery", "-A", module, "worker", "-P", "prefork", "-c", "1"]
    command += ["-Q", queue, "-l", "INFO", "-f", str(log), "--without-gossip", "--without-mingle"]
    proc = subprocess.Popen(
        command,
        cwd=tmp_path,
        env=env,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.STDOUT,
        start_new_session=True,
    )
    sys.path.insert(0, str(tmp_path))
    try:
        app_module = __import__(module)
        yield app_module, log
    finally:
        sys.path.remove(str(tmp_path))
        os.killpg(proc.pid, signal.SIGTERM)
        try:
            proc.wait(20)
        except subprocess.TimeoutExpired:
            os.killpg(proc.pid, signal.SIGKILL)
            proc.wait(5)
        with app_module.app.connection_for_write() as conn:
            conn.default_channel.queue_delete(app_module.app.conf.task_default_queue)


def wait_for(log: Path, text: str, timeout: float = 60) -> list[str]:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        lines = log.read_text(errors="replace").splitlines() if log.exists() else []
        if any(text in line for line in lines):
            return lines
        time.sleep(0.2)
    raise AssertionError(f"{text!r} never logged:\n" + (log.read_text() if log.exists() else ""))


def test_worker_lines_carry_trace_and_owner(worker_app: tuple[object, Path]) -> None:
    app_module, log = worker_app
    wait_for(log, "ready.")
    trace = uuid.uuid4().hex
    envelope = Envelope(
        trace_id=trace, owner_team="search", workflow_id="answer", feature="summaries"
    )
    with bind(envelope):
        app_module.work.delay()  # type: ignore[attr-defined]
    lines = wait_for(log, "succeeded in")
    tag = f"[trace={trace} owner=search]"
    mine = [line for line in lines if tag in line]
    assert any("task logger line" in line for line in mine), lines
    assert any("plain logger line" in line for line in mine), lines
    assert any("succeeded in" in line for line in mine), lines  # Celery's own line
    # Lines outside any task have the defaults, not a stale envelope and not a logging error.
    assert any("ready." in line and "[trace=- owner=-]" in line for line in lines), lines
    assert not any("Logging error" in line for line in lines)
