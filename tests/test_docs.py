"""The README and docs/ are the user's manual: every ```python block runs (each in a fresh
namespace, in a fresh working directory, in file order) and runs again without leaving stray
files behind, every relative link leads to a file, and the provider_call field table lists
exactly the documented schema."""

from __future__ import annotations

import os
import re
import warnings
from collections.abc import Iterator
from pathlib import Path

import pytest

from ownership_ctx import events
from ownership_ctx.metering.schema import FIELDS

ROOT = Path(__file__).resolve().parent.parent
PAGES = [ROOT / "README.md", *sorted((ROOT / "docs").rglob("*.md"))]
FENCE = re.compile(r"^```python\n(.*?)^```", flags=re.M | re.S)
# [text](target) — the target up to a space or the closing parenthesis.
LINK = re.compile(r"\[[^\]]*\]\(([^)\s]+)[^)]*\)")


def _name(page: Path) -> str:
    return page.relative_to(ROOT).as_posix()


BLOCKS = [
    pytest.param(page, number, code, id=f"{_name(page)}-block{number}")
    for page in PAGES
    for number, code in enumerate(FENCE.findall(page.read_text()), start=1)
]


@pytest.fixture
def isolated(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Iterator[Path]:
    """A fresh working directory; the event sink and the environment restored afterwards."""
    monkeypatch.chdir(tmp_path)  # snippets may write files (a SQLite store, a report)
    environ = dict(os.environ)
    previous = events.get_sink()
    try:
        yield tmp_path
    finally:
        events.set_sink(previous)
        os.environ.clear()
        os.environ.update(environ)


def _run(page: Path, number: int, code: str) -> None:
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", DeprecationWarning)
        compiled = compile(code, f"{_name(page)}[python block {number}]", "exec")
        exec(compiled, {"__name__": f"docs_block_{number}"})


def test_the_docs_have_snippets() -> None:
    assert len(BLOCKS) >= 20
    assert (ROOT / "docs" / "index.md").exists()


@pytest.mark.parametrize(("page", "number", "code"), BLOCKS)
def test_snippet_runs(page: Path, number: int, code: str, isolated: Path) -> None:
    _run(page, number, code)


@pytest.mark.parametrize(("page", "number", "code"), BLOCKS)
def test_snippet_runs_twice_and_leaves_no_spool(
    page: Path, number: int, code: str, isolated: Path
) -> None:
    _run(page, number, code)
    _run(page, number, code)  # same directory: whatever the first run left must not matter
    leftovers = [p.relative_to(isolated).as_posix() for p in isolated.rglob("*.spool")]
    assert leftovers == []


def _relative_links(page: Path) -> Iterator[str]:
    text = re.sub(r"^```.*?^```", "", page.read_text(), flags=re.M | re.S)  # not in code
    for target in LINK.findall(text):
        if re.match(r"[a-z][a-z0-9+.-]*:", target) or target.startswith("#"):
            continue  # https://..., mailto:, an anchor on the same page
        yield target.split("#", 1)[0]


@pytest.mark.parametrize("page", PAGES, ids=_name)
def test_relative_links_resolve(page: Path) -> None:
    broken = [t for t in _relative_links(page) if not (page.parent / t).exists()]
    assert broken == []


def test_every_docs_page_is_listed_in_the_index() -> None:
    index = ROOT / "docs" / "index.md"
    listed = {(index.parent / t).resolve() for t in _relative_links(index)}
    pages = {p.resolve() for p in PAGES if p.parent != ROOT and p != index}
    assert pages - listed == set()


def test_provider_call_field_table_matches_the_schema() -> None:
    text = (ROOT / "docs" / "event-schema.md").read_text()
    section = text.split("## The provider_call event", 1)[1].split("\n## ", 1)[0]
    documented = set(re.findall(r"^\| `([^`]+)` \|", section, flags=re.M))
    assert documented == set(FIELDS)
