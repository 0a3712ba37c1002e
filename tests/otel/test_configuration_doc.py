"""docs/configuration.md lists every OWNERSHIP_CTX_* variable the package reads."""

from __future__ import annotations

import re
from pathlib import Path

import ownership_ctx

PACKAGE = Path(ownership_ctx.__file__).parent
DOC = Path(__file__).resolve().parents[2] / "docs" / "configuration.md"
VARIABLE = re.compile(r"OWNERSHIP_CTX_[A-Z0-9_]+")


def documented() -> list[str]:
    return re.findall(r"^\| `(OWNERSHIP_CTX_[A-Z0-9_]+)` \|", DOC.read_text(), flags=re.M)


def test_every_variable_in_the_source_is_in_the_table() -> None:
    used = {
        name: source.relative_to(PACKAGE).as_posix()
        for source in sorted(PACKAGE.rglob("*.py"))
        for name in VARIABLE.findall(source.read_text())
    }
    assert "OWNERSHIP_CTX_SINK_URL" in used  # the scan sees the package
    missing = {name: where for name, where in used.items() if name not in documented()}
    assert missing == {}, "add these to docs/configuration.md"


def test_each_variable_has_one_row() -> None:
    rows = documented()
    assert len(rows) == len(set(rows))
