"""The package's import rules, checked on the source tree: no cycles, no private borrowing.

A cycle makes the import order matter and hides a missing layer; a private name imported from
another module is a contract nobody wrote down. Both are read from the AST (see
`tests.support.imports`), so a deferred import inside a function or an
``importlib.import_module("...")`` counts as much as one at the top of a module.
"""

from __future__ import annotations

from pathlib import Path

from tests.support import imports


def test_the_package_has_no_import_cycles() -> None:
    found = imports.cycles(imports.graph())
    assert found == [], "import cycles (each line: the modules of one cycle):\n" + "\n".join(
        " <-> ".join(cycle) for cycle in found
    )


def test_no_module_imports_another_modules_private_names() -> None:
    found = imports.private_imports()
    assert found == [], "private names used across modules:\n" + "\n".join(found)


def test_the_checks_see_deferred_cyclic_and_private_imports(tmp_path: Path) -> None:
    # The checks themselves: a package with a hidden cycle and a borrowed private name.
    package = tmp_path / imports.PACKAGE
    (package / "sub").mkdir(parents=True)
    (package / "__init__.py").write_text("")
    (package / "sub" / "__init__.py").write_text("")
    (package / "a.py").write_text("from typing import TYPE_CHECKING\nfrom . import b\n")
    (package / "b.py").write_text(
        "import importlib\n\ndef later():\n    importlib.import_module('ownership_ctx.a')\n"
    )
    (package / "sub" / "c.py").write_text(
        "from typing import TYPE_CHECKING\nfrom .. import a\nfrom ..b import _hidden\n"
        "if TYPE_CHECKING:\n    from . import d\nx = a._state\n"
    )
    (package / "sub" / "d.py").write_text("from . import c\n")
    (package / "plugins.py").write_text(
        "import importlib\nNAMES = ('ownership_ctx.host',)\n"
        "def load():\n    for name in NAMES:\n        importlib.import_module(name)\n"
    )
    (package / "host.py").write_text("from .plugins import load\n")
    edges = imports.graph(tmp_path)
    assert imports.cycles(edges) == [
        ["ownership_ctx.a", "ownership_ctx.b"],
        ["ownership_ctx.host", "ownership_ctx.plugins"],
    ]
    assert imports.private_imports(tmp_path) == [
        f"{Path('ownership_ctx/sub/c.py')}:3: _hidden from ownership_ctx.b",
        f"{Path('ownership_ctx/sub/c.py')}:6: _state from ownership_ctx.a",
    ]
