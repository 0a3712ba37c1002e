"""Every ```python block of docs/readme-store.md runs standalone, in a fresh namespace."""

from __future__ import annotations

import os
import re
from pathlib import Path

import pytest

DOC = Path(__file__).resolve().parents[2] / "docs" / "readme-store.md"
BLOCKS = re.findall(r"^```python\n(.*?)^```", DOC.read_text(), flags=re.M | re.S)


def test_the_section_has_snippets() -> None:
    assert len(BLOCKS) >= 2


@pytest.mark.parametrize("index", range(len(BLOCKS)))
def test_snippet_runs(index: int, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.chdir(tmp_path)  # snippets write relative paths: keep them out of the repo
    monkeypatch.delenv("OWNERSHIP_CTX_SINK_URL", raising=False)
    code = compile(BLOCKS[index], f"readme-store.md[python block {index + 1}]", "exec")
    exec(code, {"__name__": f"readme_store_block_{index + 1}"})
    assert os.getcwd() == str(tmp_path)
