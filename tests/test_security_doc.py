"""Every ```python block of docs/security.md runs as written.

Each block standalone: a fresh namespace, the current directory a fresh temporary directory,
in file order, with the event sink restored afterwards (the way tests/test_docs.py runs every
page).
"""

from __future__ import annotations

import os
import re
from collections.abc import Iterator
from pathlib import Path

import pytest

from ownership_ctx import events

PAGE = Path(__file__).resolve().parent.parent / "docs" / "security.md"
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
