"""The README and docs/ are the user's manual: every ```python block runs (each in a fresh
namespace, in a fresh working directory, in file order) and runs again without leaving stray
files behind, every relative link leads to a file, and the provider_call field table lists
exactly the documented schema."""

from __future__ import annotations

import ast
import os
import re
import shutil
import subprocess
import sys
import warnings
from collections.abc import Iterator
from pathlib import Path

import pytest

from ownership_ctx import events
from ownership_ctx.metering.schema import FIELDS
from ownership_ctx.testing.fake_providers import FakeProviders

ROOT = Path(__file__).resolve().parents[2]
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


def _prose(page: Path) -> str:
    return re.sub(r"^```.*?^```", "", page.read_text(), flags=re.M | re.S)


def _relative_links(page: Path) -> Iterator[str]:
    """Every link target that is not a URL (``https:``, ``mailto:``), anchors included."""
    for target in LINK.findall(_prose(page)):
        if not re.match(r"[a-z][a-z0-9+.-]*:", target):
            yield target


def _anchors(page: Path) -> set[str]:
    """The anchors GitHub gives a page's headings: lowercased, punctuation dropped, spaces
    to dashes."""
    headings = re.findall(r"^#+ (.+)$", _prose(page), flags=re.M)
    return {re.sub(r"[^\w\- ]", "", h.strip().lower()).replace(" ", "-") for h in headings}


@pytest.mark.parametrize("page", PAGES, ids=_name)
def test_relative_links_resolve(page: Path) -> None:
    def resolves(target: str) -> bool:
        path, _, anchor = target.partition("#")
        linked = (page.parent / path) if path else page
        if not linked.exists():
            return False
        return not anchor or linked.suffix != ".md" or anchor in _anchors(linked)

    assert [t for t in _relative_links(page) if not resolves(t)] == []


def test_every_docs_page_is_listed_in_the_index() -> None:
    index = ROOT / "docs" / "index.md"
    listed = {(index.parent / t.partition("#")[0]).resolve() for t in _relative_links(index)}
    pages = {p.resolve() for p in PAGES if p.parent != ROOT and p != index}
    assert pages - listed == set()


def test_provider_call_field_table_matches_the_schema() -> None:
    text = (ROOT / "docs" / "event-schema.md").read_text()
    section = text.split("## The provider_call event", 1)[1].split("\n## ", 1)[0]
    documented = set(re.findall(r"^\| `([^`]+)` \|", section, flags=re.M))
    assert documented == set(FIELDS)


# -- the README's adoption path, step by step ---------------------------------------------

OWNER = {"x-owner-team": "support", "x-workflow-id": "ticket-triage", "x-feature": "summarize"}
LEGAL = {"x-owner-team": "legal", "x-workflow-id": "contract-review", "x-feature": "classify"}
CLI = str(Path(sys.executable).with_name("ownership-ctx"))


def _readme_app(mode: str) -> object:
    """The README's app.py, with the policy's mode as step 1 (quarantine) or 4 (enforce)."""
    code = FENCE.findall((ROOT / "README.md").read_text())[0]
    assert 'mode="quarantine"' in code
    namespace: dict[str, object] = {"__name__": "app"}
    exec(compile(code.replace('mode="quarantine"', f'mode="{mode}"'), "app.py", "exec"), namespace)
    return namespace["app"]


def _cli(*args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run([CLI, *args], capture_output=True, text=True, timeout=120)


@pytest.mark.parametrize("store", ["default", "from-env"])
def test_the_readme_adoption_path(store: str, isolated: Path) -> None:
    from fastapi.testclient import TestClient

    if store == "from-env":
        os.environ["OWNERSHIP_CTX_SINK_URL"] = f"sqlite:///{isolated / 'events.db'}"
    else:  # the app and the CLI agree on the default with nothing configured
        os.environ.pop("OWNERSHIP_CTX_SINK_URL", None)
    with FakeProviders() as fake:
        os.environ["OPENAI_API_KEY"] = "sk-test"
        os.environ["OPENAI_BASE_URL"] = fake.openai_url
        # Step 2: one request with its owner, one without; exempt routes answer.
        with TestClient(_readme_app("quarantine")) as client:  # runs the lifespan
            owned = client.post("/v1/summarize?text=hello", headers=OWNER)
            anonymous = client.post("/v1/summarize?text=hello")
            exempt = [client.get(p).status_code for p in ("/healthz", "/docs", "/openapi.json")]
        assert (owned.status_code, anonymous.status_code, exempt) == (200, 200, [200] * 3)
        assert owned.headers["x-trace-id"] != anonymous.headers["x-trace-id"]
        sink = events.get_sink()
        assert sink is not None
        sink.close()

        # Step 3: coverage names the route that sent nothing, and nothing else.
        coverage = _cli("coverage")
        assert coverage.returncode == 0, coverage.stderr
        assert "/v1/summarize" in coverage.stdout and "quarantined" in coverage.stdout
        assert "/healthz" not in coverage.stdout and "/docs" not in coverage.stdout
        assert "50.00%" in coverage.stdout  # one call of two has no owner
        chargeback = _cli("chargeback", "--by", "team")
        assert chargeback.returncode == 0 and "support" in chargeback.stdout

        # Step 4: enforce refuses the caller without an owner; exempt routes still answer.
        with TestClient(_readme_app("enforce")) as client:
            refused = client.post("/v1/summarize?text=hello")
            exempt = [client.get(p).status_code for p in ("/healthz", "/docs", "/openapi.json")]
            assert client.post("/v1/summarize?text=hello", headers=OWNER).status_code == 200
        assert refused.status_code == 400 and exempt == [200] * 3
        assert refused.headers["content-type"] == "application/problem+json"
        sink = events.get_sink()
        assert sink is not None
        sink.close()
    assert _cli("coverage", "--max-unattributed", "2%").returncode == 1  # still 1 call of 3


def test_the_flask_adoption_path(isolated: Path) -> None:
    code = FENCE.findall((ROOT / "docs" / "flask-dramatiq.md").read_text())[0]
    namespace: dict[str, object] = {"__name__": "app"}
    exec(compile(code, "app.py", "exec"), namespace)
    os.environ.pop("OWNERSHIP_CTX_SINK_URL", None)  # the default store, for the app and the CLI
    with FakeProviders() as fake:
        os.environ["ANTHROPIC_API_KEY"] = "sk-test"
        os.environ["ANTHROPIC_BASE_URL"] = fake.url
        client = namespace["create_app"]().test_client()  # type: ignore[operator]
        statuses = [
            client.post("/v1/classify", headers=LEGAL).status_code,
            client.post("/v1/classify").status_code,
            client.get("/health").status_code,
        ]
        assert statuses == [200, 200, 200]
        sink = events.get_sink()
        assert sink is not None
        sink.close()
    coverage = _cli("coverage")
    assert coverage.returncode == 0, coverage.stderr
    assert re.search(r"^http +/v1/classify +quarantined ", coverage.stdout, flags=re.M)
    assert "50.00%" in coverage.stdout and "/health" not in coverage.stdout
    assert re.search(r"^legal ", _cli("chargeback", "--by", "team").stdout, flags=re.M)


def test_the_core_modules_the_layout_names_import_only_the_standard_library() -> None:
    # docs/layout.md and the team contract: the core runs without any third-party package.
    text = (ROOT / "docs" / "layout.md").read_text()
    lines = text.splitlines()
    (start,) = [i for i, ln in enumerate(lines) if ln.strip() == "core: standard library only"]
    core = []
    for line in lines[start + 1 :]:
        if not line.startswith("    "):  # the lines indented under "core:" name its modules
            break
        core += [name.strip() for name in line.strip().split("  ")[0].split(",")]
    assert "gate" in core and "units" in core
    for name in core:
        path = ROOT / "ownership_ctx" / f"{name}.py"
        for node in ast.walk(ast.parse(path.read_text())):
            if isinstance(node, ast.ImportFrom) and node.level:
                inside = (node.module or "").split(".")[0]
                targets = [inside] if inside else [alias.name for alias in node.names]
                assert all(t in core for t in targets), f"{name}: from .{node.module} import"
            elif isinstance(node, ast.ImportFrom):
                assert _stdlib(node.module or ""), f"{name}: from {node.module} import"
            elif isinstance(node, ast.Import):
                for alias in node.names:
                    assert _stdlib(alias.name), f"{name}: import {alias.name}"


def _stdlib(module: str) -> bool:
    top = module.split(".")[0]
    return top in sys.stdlib_module_names or top == "__future__"


def test_the_benchmark_table_lists_every_script_and_each_takes_quick_and_json() -> None:
    text = (ROOT / "docs" / "benchmarks.md").read_text()
    listed = set(re.findall(r"^\| `(\w+\.py)` \|", text, flags=re.M))
    scripts = {path.name for path in (ROOT / "benchmarks").glob("*.py")}
    assert listed == scripts
    for name in sorted(scripts):
        source = (ROOT / "benchmarks" / name).read_text()
        for flag in ("--quick", "--json"):
            assert f'add_argument("{flag}"' in source, (name, flag)


def _make_dry_run(*args: str) -> str:
    if shutil.which("make") is None:
        pytest.skip("make is not installed")
    done = subprocess.run(
        ["make", "-n", "-C", str(ROOT), *args], capture_output=True, text=True, check=True
    )
    return done.stdout


def test_the_make_targets_the_docs_name_exist() -> None:
    text = (ROOT / "docs" / "layout.md").read_text() + (ROOT / "docs" / "benchmarks.md").read_text()
    targets = set(re.findall(r"(?:`|^)make ([a-z][a-z0-9-]*)", text, flags=re.M))
    assert {"demo", "test", "bench", "proof", "faults"} <= targets
    phony = (ROOT / "Makefile").read_text().split(".PHONY:")[1].splitlines()[0].split()
    assert targets <= set(phony)


def test_every_test_file_the_makefile_names_exists() -> None:
    # Moving a test file must not leave `make property-long` / `proof` / `faults` behind.
    named = re.findall(r"\btests/[\w/]+\.py\b", (ROOT / "Makefile").read_text())
    assert named
    assert [path for path in named if not (ROOT / path).is_file()] == []


def test_make_proof_and_make_faults_run_what_proof_at_scale_says() -> None:
    # docs/proof-at-scale.md: `make proof` (1,000 workflows; PROOF_WORKFLOWS=200 a shorter one)
    # runs the two property tests with brokers required and writes proof-results.json;
    # `make faults` runs every fault test on both brokers with three times the workflows.
    default = _make_dry_run("proof")
    assert "OC_PROOF_WORKFLOWS=1000" in default
    shorter = _make_dry_run("proof", "PROOF_WORKFLOWS=200")
    for part in (
        "OWNERSHIP_CTX_REQUIRE_BROKERS=1",
        "OC_PROOF_WORKFLOWS=200",
        "OC_PROOF_REPORT=proof-results.json",
        "tests/dramatiq/test_dramatiq_property.py",
        "tests/celery/test_celery_property.py",
    ):
        assert part in shorter
    faults = _make_dry_run("faults")
    for part in (
        "OWNERSHIP_CTX_REQUIRE_BROKERS=1",
        "OC_FAULTS_ALL=1",
        "OC_FAULT_SCALE=3",
        "tests/dramatiq/test_dramatiq_faults.py",
        "tests/celery/test_celery_faults.py",
    ):
        assert part in faults
