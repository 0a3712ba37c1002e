"""Helpers shared by the agent-runtime tests (imported as ``tests.agents.support``: this folder
has no ``__init__.py``, so that its name does not shadow the OpenAI Agents SDK's ``agents``)."""

from __future__ import annotations

from typing import Any

from ownership_ctx.sinks import MemorySink

TRACE = "4bf92f3577b34da6a3ce929d0e0e4736"


def calls(sink: MemorySink) -> list[dict[str, Any]]:
    return sink.of_kind("provider_call")
