"""Every ```python block of the README runs, each in a fresh namespace, in order."""

from __future__ import annotations

import re
from pathlib import Path

import pytest

README = Path(__file__).resolve().parent.parent / "README.md"
BLOCKS = re.findall(r"^```python\n(.*?)^```", README.read_text(), flags=re.M | re.S)


def test_the_readme_has_snippets() -> None:
    assert len(BLOCKS) >= 8


@pytest.mark.parametrize("index", range(len(BLOCKS)))
def test_readme_snippet_runs(index: int) -> None:
    code = compile(BLOCKS[index], f"README.md[python block {index + 1}]", "exec")
    exec(code, {"__name__": f"readme_block_{index + 1}"})
