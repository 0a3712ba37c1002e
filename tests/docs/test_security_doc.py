"""Every ```python block of docs/security.md runs as written.

Each block standalone: a fresh namespace, the current directory a fresh temporary directory,
in file order, with the event sink restored afterwards (the way tests/docs/test_docs.py runs every
page).
"""

from __future__ import annotations

import logging
import os
import re
from collections.abc import Iterator
from pathlib import Path

import pytest

from ownership_ctx import Envelope, Gate, Keys, Policy, encode_header, events
from ownership_ctx.codec import QUEUE_HEADER
from ownership_ctx.sinks import MemorySink

PAGE = Path(__file__).resolve().parents[2] / "docs" / "security.md"
BLOCK = re.compile(r"^```python\n(.*?)^```$", re.DOTALL | re.MULTILINE)


def blocks() -> list[tuple[int, str]]:
    text = PAGE.read_text(encoding="utf-8")
    return [(text.count("\n", 0, m.start()) + 1, m.group(1)) for m in BLOCK.finditer(text)]


@pytest.fixture
def in_temp_dir(tmp_path: Path) -> Iterator[Path]:
    previous = os.getcwd()
    sink = events.get_sink()
    os.chdir(tmp_path)
    try:
        yield tmp_path
    finally:
        os.chdir(previous)
        events.set_sink(sink)


def test_the_page_has_python_blocks() -> None:
    assert len(blocks()) >= 4


@pytest.mark.parametrize(
    ("line", "code"), blocks(), ids=lambda v: str(v) if isinstance(v, int) else ""
)
def test_python_block_runs(line: int, code: str, in_temp_dir: Path) -> None:
    exec(compile(code, f"{PAGE.name}:{line}", "exec"), {"__name__": "__main__"})


def test_the_rollout_signal_for_accept_unsigned_is_the_hop_event_problem(
    caplog: pytest.LogCaptureFixture,
) -> None:
    # "While it is set, a believed unsigned envelope leaves no trace (no problem, no log line);
    # once it is removed, each unsigned envelope ... shows as `-:unsigned` in the `problems`
    # of its `hop` event ... and in a log line."
    keys = Keys(signing_keys=(b"signing-key-0123456789abcdef",))
    unsigned = encode_header(
        Envelope(
            trace_id="4bf92f3577b34da6a3ce929d0e0e4736",
            owner_team="search",
            workflow_id="ticket-triage",
            feature="summarize",
        )
    )
    sink = MemorySink()
    previous = events.set_sink(sink)
    try:
        for accept_unsigned in (True, False):
            caplog.clear()
            gate = Gate(Policy(mode="quarantine", accept_unsigned=accept_unsigned), keys)
            with (
                caplog.at_level(logging.INFO, logger="ownership_ctx"),
                gate.enter({QUEUE_HEADER: unsigned}, hop="celery", unit="t", header=QUEUE_HEADER),
            ):
                pass
            logged = [r.getMessage() for r in caplog.records if "unsigned" in r.getMessage()]
            assert bool(logged) is not accept_unsigned
    finally:
        events.set_sink(previous)
    believed, ignored = sink.of_kind("hop")
    assert (believed["outcome"], believed["problems"]) == ("attributed", [])
    assert ignored["outcome"] == "quarantined" and "-:unsigned" in ignored["problems"]
