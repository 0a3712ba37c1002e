"""Every ```python block of docs/readme-reports.md runs, each in a fresh namespace."""

from __future__ import annotations

import re
from pathlib import Path

import pytest

from ownership_ctx import events, metering

DOC = Path(__file__).resolve().parents[2] / "docs" / "readme-reports.md"
BLOCKS = re.findall(r"^```python\n(.*?)^```", DOC.read_text(), flags=re.M | re.S)


def test_the_section_has_snippets() -> None:
    assert len(BLOCKS) >= 2
    for command in ("chargeback", "coverage", "audit", "trace", "anomaly", "report --html"):
        assert f"### `{command}`" in DOC.read_text()


@pytest.mark.parametrize("index", range(len(BLOCKS)))
def test_snippet_runs(index: int) -> None:
    previous = events.get_sink()
    try:
        code = compile(BLOCKS[index], f"readme-reports.md[python block {index + 1}]", "exec")
        exec(code, {"__name__": f"readme_reports_{index + 1}"})
    finally:
        events.set_sink(previous)
        metering.configure()
