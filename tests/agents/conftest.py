"""Fixtures for the agent-runtime tests: one fake provider server, a sink, metering reset.

LiteLLM would fetch its model price map from the network at import: the local copy is used.
"""

from __future__ import annotations

import gc
import os
from collections.abc import Iterator

import pytest

from ownership_ctx import events, metering
from ownership_ctx.sinks import MemorySink
from ownership_ctx.testing.fake_providers import FakeProviders

os.environ.setdefault("LITELLM_LOCAL_MODEL_COST_MAP", "True")


@pytest.fixture(scope="session")
def fake_server() -> Iterator[FakeProviders]:
    with FakeProviders() as fake:
        yield fake


@pytest.fixture
def fake(fake_server: FakeProviders) -> Iterator[FakeProviders]:
    fake_server.reset()
    yield fake_server
    fake_server.reset()


@pytest.fixture
def sink() -> Iterator[MemorySink]:
    sink = MemorySink()
    previous = events.set_sink(sink)
    try:
        yield sink
    finally:
        gc.collect()
        events.set_sink(previous)


@pytest.fixture
def auto() -> Iterator[None]:
    """The process-wide mode on for one test, undone after it."""
    metering.instrument_all()
    try:
        yield
    finally:
        metering.uninstrument_all()
