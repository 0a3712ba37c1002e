"""Every ```python block of docs/readme-metering.md runs, each in a fresh namespace; the field
table lists exactly the documented schema."""

from __future__ import annotations

import re
import warnings
from pathlib import Path

import pytest

from ownership_ctx import events
from ownership_ctx.metering.schema import FIELDS

DOC = Path(__file__).resolve().parents[2] / "docs" / "readme-metering.md"
TEXT = DOC.read_text()
BLOCKS = re.findall(r"^```python\n(.*?)^```", TEXT, flags=re.M | re.S)


def test_the_section_has_snippets() -> None:
    assert len(BLOCKS) >= 5


@pytest.mark.parametrize("index", range(len(BLOCKS)))
def test_snippet_runs(index: int) -> None:
    previous = events.get_sink()
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", DeprecationWarning)
            code = compile(BLOCKS[index], f"readme-metering.md[python block {index + 1}]", "exec")
            exec(code, {"__name__": f"readme_metering_{index + 1}"})
    finally:
        events.set_sink(previous)


def test_field_table_matches_the_schema() -> None:
    documented = set(re.findall(r"^\| `([^`]+)` \|", TEXT, flags=re.M))
    assert documented == set(FIELDS)
