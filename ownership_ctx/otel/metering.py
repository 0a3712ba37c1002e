"""`OwnershipMeteringInstrumentor` (entry point ``ownership_ctx_metering``): every official SDK
client in the process is metered (`ownership_ctx.metering.instrument_all`)."""

from __future__ import annotations

from collections.abc import Collection
from typing import Any

from opentelemetry.instrumentation.instrumentor import BaseInstrumentor  # type: ignore[attr-defined]

from ..metering import instrument_all, uninstrument_all
from .config import left_off_on_error

__all__ = ["OwnershipMeteringInstrumentor"]


class OwnershipMeteringInstrumentor(BaseInstrumentor):  # type: ignore[misc]
    """Meters the OpenAI, Anthropic, Google Gen AI and Bedrock clients however they are made
    (LangChain, LiteLLM, the OpenAI Agents SDK included). SDKs are wrapped when imported."""

    def instrumentation_dependencies(self) -> Collection[str]:
        return ()

    def _instrument(self, **kwargs: Any) -> None:
        with left_off_on_error("ownership_ctx_metering"):
            instrument_all()

    def _uninstrument(self, **kwargs: Any) -> None:
        uninstrument_all()
