"""The README is the user's manual: every ```python block runs, each in a fresh namespace, in
order, and the provider_call field table lists exactly the documented schema."""

from __future__ import annotations

import re
import warnings
from pathlib import Path

import pytest

from ownership_ctx import events
from ownership_ctx.metering.schema import FIELDS

README = Path(__file__).resolve().parent.parent / "README.md"
TEXT = README.read_text()
BLOCKS = re.findall(r"^```python\n(.*?)^```", TEXT, flags=re.M | re.S)


def test_the_readme_has_snippets() -> None:
    assert len(BLOCKS) >= 20


@pytest.mark.parametrize("index", range(len(BLOCKS)))
def test_readme_snippet_runs(index: int, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.chdir(tmp_path)  # snippets may write files (a SQLite store, a report)
    previous = events.get_sink()
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", DeprecationWarning)
            code = compile(BLOCKS[index], f"README.md[python block {index + 1}]", "exec")
            exec(code, {"__name__": f"readme_block_{index + 1}"})
    finally:
        events.set_sink(previous)


def test_provider_call_field_table_matches_the_schema() -> None:
    section = TEXT.split("### The provider_call event", 1)[1].split("\n## ", 1)[0]
    documented = set(re.findall(r"^\| `([^`]+)` \|", section, flags=re.M))
    assert documented == set(FIELDS)
