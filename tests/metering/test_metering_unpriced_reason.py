"""Why a call has no cost, on the event; and a loud, single warning when genai-prices is missing."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest

from ownership_ctx import metering
from ownership_ctx.metering import pricing
from ownership_ctx.sinks import MemorySink

ROOT = Path(__file__).resolve().parents[2]
USAGE = {"input_tokens": 1000, "output_tokens": 300}


def test_each_unpriced_call_says_why(sink: MemorySink) -> None:
    priced = metering.record_call(provider="openai", model="gpt-4o", usage=USAGE)
    assert priced["cost"] is not None and priced["unpriced_reason"] is None
    unknown = metering.record_call(provider="openai", model="my-private-model", usage=USAGE)
    assert (unknown["cost"], unknown["unpriced_reason"]) == (None, "unknown model")
    failed = metering.record_call(provider="openai", model="gpt-4o", usage=None, status="error")
    assert (failed["cost"], failed["unpriced_reason"]) == (None, "failed attempt")
    silent = metering.record_call(provider="openai", model="gpt-4o", usage=None)
    assert silent["unpriced_reason"] == "no usage reported"
    hit = metering.record_cache_hit(provider="openai", model="my-private-model", usage=USAGE)
    assert hit["cost"] == "0" and hit["unpriced_reason"] is None


def test_without_the_price_library(sink: MemorySink, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(pricing, "_library", False)
    monkeypatch.setattr(pricing, "_warned_library", False)
    metering.configure()  # a fresh pricer: nothing cached from earlier tests
    try:
        event = metering.record_call(provider="openai", model="gpt-4o", usage=USAGE)
        assert (event["cost"], event["unpriced_reason"]) == (None, "no price library")
        with pytest.warns(RuntimeWarning, match=r'pip install "ownership-ctx\[prices\]"'):
            pricing.warn_if_no_price_library()
        pricing.warn_if_no_price_library()  # once per process: no second warning
    finally:
        metering.configure()


SCRIPT = """
import logging, warnings
logging.basicConfig(level=logging.WARNING, format="%(levelname)s %(message)s")
import openai
from ownership_ctx import metering
metering.instrument(openai.OpenAI(api_key="sk-test"))
metering.instrument(openai.OpenAI(api_key="sk-test"))
"""


def test_instrumenting_without_genai_prices_warns_once_loudly(tmp_path: Path) -> None:
    shims = tmp_path / "genai_prices"
    shims.mkdir()
    (shims / "__init__.py").write_text(
        'raise ModuleNotFoundError("No module named genai_prices", name="genai_prices")\n'
    )
    result = subprocess.run(
        [sys.executable, "-c", SCRIPT],
        capture_output=True,
        text=True,
        timeout=60,
        env={**os.environ, "PYTHONPATH": f"{tmp_path}{os.pathsep}{ROOT}"},
        check=True,
    )
    lines = [line for line in result.stderr.splitlines() if "genai-prices" in line]
    assert len([line for line in lines if line.startswith("WARNING ")]) == 1, result.stderr
    assert any("RuntimeWarning" in line for line in lines), result.stderr
    assert 'pip install "ownership-ctx[prices]"' in result.stderr
