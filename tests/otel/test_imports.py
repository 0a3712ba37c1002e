"""The propagator, id generator and instrumentors import cleanly in any order, alone or together,
with and without OpenTelemetry's SDK configured from the environment.

OpenTelemetry imports our propagator while ``opentelemetry.propagate`` initialises and our id
generator while the SDK configures itself, so an import cycle only shows in a fresh process:
each case runs in its own interpreter.
"""

from __future__ import annotations

import os
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest

OURS = (
    "ownership_ctx.otel.propagator",
    "ownership_ctx.otel.id_generator",
    "ownership_ctx.otel.spans",
    "ownership_ctx.otel.instrumentor",
    "ownership_ctx.otel.sink",
    "ownership_ctx.otel.asgi",
    "ownership_ctx.otel.flask",
    "ownership_ctx.otel.celery",
    "ownership_ctx.otel.dramatiq",
    "ownership_ctx.otel",
)
THEIRS = (
    "opentelemetry.propagate",
    "opentelemetry.instrumentation.utils",
    "opentelemetry.instrumentation.instrumentor",
    "opentelemetry.sdk.trace",
)
SDK_FROM_ENV = {
    "OTEL_PROPAGATORS": "tracecontext,baggage,ownership",
    "OTEL_PYTHON_ID_GENERATOR": "ownership",
    "OTEL_TRACES_EXPORTER": "none",
    "OTEL_METRICS_EXPORTER": "none",
    "OTEL_LOGS_EXPORTER": "none",
}
WITHOUT_SDK_ENV = {name: "" for name in SDK_FROM_ENV}
CHECK = """
import importlib, sys
for name in sys.argv[1:]:
    importlib.import_module(name)
from opentelemetry import propagate
from ownership_ctx.otel import OwnershipPropagator, OwnershipIdGenerator, OwnershipInstrumentor
print("imported", len(sys.argv) - 1)
"""


def run(args: list[str], env: dict[str, str], tmp_path: Path) -> str:
    result = subprocess.run(
        args,
        capture_output=True,
        text=True,
        env={**os.environ, "OWNERSHIP_CTX_SINK_URL": "memory://", **env},
        cwd=tmp_path,
        timeout=120,
        check=False,
    )
    assert result.returncode == 0, result.stderr
    assert "Traceback" not in result.stderr, result.stderr
    return result.stdout


@pytest.mark.parametrize("env", [SDK_FROM_ENV, WITHOUT_SDK_ENV], ids=["sdk-env", "no-sdk-env"])
@pytest.mark.parametrize("first", OURS + THEIRS)
def test_any_module_first_then_the_rest(first: str, env: dict[str, str], tmp_path: Path) -> None:
    order = [first, *(m for m in OURS + THEIRS if m != first)]
    out = run([sys.executable, "-c", CHECK, *order], env, tmp_path)
    assert f"imported {len(order)}" in out


@pytest.mark.parametrize("module", OURS)
def test_each_module_alone(module: str, tmp_path: Path) -> None:
    assert "imported 1" in run([sys.executable, "-c", CHECK, module], SDK_FROM_ENV, tmp_path)


def test_reverse_order(tmp_path: Path) -> None:
    order = list(reversed(OURS + THEIRS))
    assert f"imported {len(order)}" in run([sys.executable, "-c", CHECK, *order], {}, tmp_path)


ENTRY_POINTS = """
from importlib.metadata import entry_points
from opentelemetry import propagate, trace
loaded = {}
groups = ("opentelemetry_propagator", "opentelemetry_id_generator", "opentelemetry_instrumentor")
for group in groups:
    for ep in entry_points(group=group):
        if ep.name == "ownership" or ep.name.startswith("ownership_ctx"):
            loaded[f"{group}:{ep.name}"] = ep.load().__name__
print(sorted(loaded.items()))
print(type(propagate.get_global_textmap()).__name__, type(trace.get_tracer_provider()).__name__)
"""


def test_entry_points_under_opentelemetry_instrument(tmp_path: Path) -> None:
    instrument = str(Path(sys.executable).parent / "opentelemetry-instrument")
    out = run(
        [instrument, sys.executable, "-c", textwrap.dedent(ENTRY_POINTS)], SDK_FROM_ENV, tmp_path
    )
    assert "('opentelemetry_propagator:ownership', 'OwnershipPropagator')" in out
    assert "('opentelemetry_id_generator:ownership', 'OwnershipIdGenerator')" in out
    for name in ("", "_sink", "_asgi", "_flask", "_celery", "_dramatiq"):
        assert f"'opentelemetry_instrumentor:ownership_ctx{name}'" in out
    assert "CompositePropagator TracerProvider" in out  # the SDK configured, nothing failed
