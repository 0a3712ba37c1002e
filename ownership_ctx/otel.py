"""OpenTelemetry interoperability: one trace id, ownership on every span and in baggage.

- `OwnershipSpanProcessor` copies the bound envelope onto every span started while it is bound,
  so spans from any instrumentation (HTTP, database, LLM instrumentations) are attributable.
- One trace id end to end: `OwnershipIdGenerator` gives root spans the bound envelope's trace
  id, and `instrument` makes the edge mint trace ids from the active span, whichever of the two
  middlewares runs first.
- `OwnershipPropagator` writes the envelope into the outgoing ``baggage`` header wherever
  OpenTelemetry propagates context, to allowed hosts only, so OpenTelemetry-instrumented
  services in any language see ``ownership.*`` baggage. Incoming OpenTelemetry baggage with
  ``ownership.*`` entries is read by our middleware as any other baggage.
- `OwnershipInstrumentor` and friends are ``BaseInstrumentor`` subclasses registered under
  ``opentelemetry_instrumentor``: ``opentelemetry-instrument`` enables them with no code change.

OpenTelemetry is imported here and only here (the ``otel`` extra).
"""

from __future__ import annotations

import os
from collections.abc import Collection, Iterable, MutableMapping
from typing import Any

from opentelemetry import trace
from opentelemetry.context import Context
from opentelemetry.instrumentation.instrumentor import BaseInstrumentor  # type: ignore[attr-defined]
from opentelemetry.propagators.textmap import (
    CarrierT,
    Getter,
    Setter,
    TextMapPropagator,
    default_getter,
    default_setter,
)
from opentelemetry.sdk.trace import ReadableSpan, Span, SpanProcessor
from opentelemetry.sdk.trace.id_generator import IdGenerator, RandomIdGenerator

from .codec import BAGGAGE_HEADER, encode
from .context import current
from .gate import Entry, Gate, set_enter_hook, set_trace_id_source
from .hashing import Keys
from .http import AllowList
from .policy import Policy

__all__ = [
    "ATTRIBUTE_PREFIX",
    "OwnershipASGIInstrumentor",
    "OwnershipCeleryInstrumentor",
    "OwnershipDramatiqInstrumentor",
    "OwnershipIdGenerator",
    "OwnershipInstrumentor",
    "OwnershipPropagator",
    "OwnershipSpanProcessor",
    "active_trace_id",
    "annotate_active_span",
    "span_attributes",
]

ATTRIBUTE_PREFIX = "ownership."
ALLOW_HOSTS_ENV = "OWNERSHIP_CTX_ALLOW_HOSTS"


def span_attributes(envelope: Any) -> dict[str, str]:
    """``ownership.*`` span attributes for an envelope (trace id excluded: the span has it)."""
    return {
        ATTRIBUTE_PREFIX + key: value
        for key, value in envelope.as_dict().items()
        if key != "trace_id"
    }


def active_trace_id() -> str | None:
    """The trace id of the active OpenTelemetry span, as 32 hex, or ``None``."""
    context = trace.get_current_span().get_span_context()
    return format(context.trace_id, "032x") if context.is_valid else None


class OwnershipSpanProcessor(SpanProcessor):
    """Adds the bound envelope's fields to every span when it starts."""

    def on_start(self, span: Span, parent_context: Context | None = None) -> None:
        envelope = current()
        if envelope is not None:
            span.set_attributes(span_attributes(envelope))

    def on_end(self, span: ReadableSpan) -> None:
        pass

    def shutdown(self) -> None:
        pass

    def force_flush(self, timeout_millis: int = 30000) -> bool:
        return True


class OwnershipIdGenerator(IdGenerator):
    """Root spans started while an envelope is bound take its trace id.

    Pass it to ``TracerProvider(id_generator=...)``, or set
    ``OTEL_PYTHON_ID_GENERATOR=ownership`` for ``opentelemetry-instrument``.
    """

    def __init__(self) -> None:
        self._random = RandomIdGenerator()

    def generate_span_id(self) -> int:
        return self._random.generate_span_id()

    def generate_trace_id(self) -> int:
        envelope = current()
        if envelope is not None:
            return int(envelope.trace_id, 16)
        return self._random.generate_trace_id()


class OwnershipPropagator(TextMapPropagator):
    """Writes the envelope into ``baggage`` on injection, for allowed hosts only.

    OpenTelemetry propagates to every destination its instrumentations call, provider APIs
    included, so the destination is checked: the carrier must name its ``host`` (httpx
    requests do) and the host must be on the allow-list (``allow_hosts``, else the
    comma-separated ``OWNERSHIP_CTX_ALLOW_HOSTS``). Anything else gets nothing.
    Add it after ``baggage``: ``OTEL_PROPAGATORS=tracecontext,baggage,ownership``.
    """

    def __init__(self, allow_hosts: Iterable[str] | None = None, keys: Keys | None = None) -> None:
        if allow_hosts is None:
            allow_hosts = [h for h in os.environ.get(ALLOW_HOSTS_ENV, "").split(",") if h.strip()]
        self._allow = AllowList(h.strip() for h in allow_hosts)
        self._keys = keys if keys is not None else Keys.from_env()

    def extract(
        self,
        carrier: CarrierT,
        context: Context | None = None,
        getter: Getter[CarrierT] = default_getter,
    ) -> Context:
        # Our middleware and worker hooks read the envelope from the carrier themselves.
        return context if context is not None else Context()

    def inject(
        self,
        carrier: CarrierT,
        context: Context | None = None,
        setter: Setter[CarrierT] = default_setter,
    ) -> None:
        envelope = current()
        if envelope is None or not isinstance(carrier, MutableMapping):
            return
        host = carrier.get("host") or carrier.get("Host")
        host = host.rsplit(":", 1)[0] if isinstance(host, str) and not host.endswith("]") else host
        if not self._allow.allows(host if isinstance(host, str) else None):
            return
        headers: dict[str, str] = {}
        existing = carrier.get(BAGGAGE_HEADER)
        if isinstance(existing, str):
            headers[BAGGAGE_HEADER] = existing
        encode(envelope, headers, self._keys)
        setter.set(carrier, BAGGAGE_HEADER, headers[BAGGAGE_HEADER])

    @property
    def fields(self) -> set[str]:
        return {BAGGAGE_HEADER}


def annotate_active_span(entry: Entry) -> None:
    """Put the admitted envelope on the span that was already active when it was bound (the
    server span of an OpenTelemetry middleware running outside ours)."""
    span = trace.get_current_span()
    if entry.envelope is not None and span.is_recording():
        span.set_attributes(span_attributes(entry.envelope))


class OwnershipInstrumentor(BaseInstrumentor):  # type: ignore[misc]
    """Ownership on every span, and edge trace ids minted from the active span.

    Adds `OwnershipSpanProcessor` to the global SDK tracer provider (or ``tracer_provider=``),
    annotates spans that were already active when an envelope was bound, and makes the gate
    mint trace ids from the active span.
    """

    _processor: OwnershipSpanProcessor | None = None

    def instrumentation_dependencies(self) -> Collection[str]:
        return ()

    def _instrument(self, **kwargs: Any) -> None:
        provider = kwargs.get("tracer_provider") or trace.get_tracer_provider()
        add = getattr(provider, "add_span_processor", None)
        if add is not None:
            self._processor = OwnershipSpanProcessor()
            add(self._processor)
        set_trace_id_source(active_trace_id)
        set_enter_hook(annotate_active_span)

    def _uninstrument(self, **kwargs: Any) -> None:
        set_trace_id_source(None)
        set_enter_hook(None)
        # SDK providers cannot remove a processor; ours becomes a no-op instead.
        if self._processor is not None:
            self._processor.on_start = lambda span, parent_context=None: None  # type: ignore[method-assign]
            self._processor = None


def _app_classes() -> list[type[Any]]:
    from starlette.applications import Starlette

    classes: list[type[Any]] = [Starlette]
    try:  # FastAPI's __init__ does not call Starlette's: both need the wrapper
        from fastapi import FastAPI

        classes.append(FastAPI)
    except ImportError:
        pass
    return classes


class OwnershipASGIInstrumentor(BaseInstrumentor):  # type: ignore[misc]
    """Adds `OwnershipMiddleware` to every Starlette / FastAPI application created afterwards.

    The policy comes from ``policy=`` or `Policy.from_env` (``OWNERSHIP_CTX_MODE``,
    ``OWNERSHIP_CTX_REQUIRED``, ``OWNERSHIP_CTX_TRUST``); keys from `Keys.from_env`.
    """

    _originals: dict[type[Any], Any] = {}  # noqa: RUF012 - class-level: one patch per process

    def instrumentation_dependencies(self) -> Collection[str]:
        return ("starlette >= 0.37",)

    def _instrument(self, **kwargs: Any) -> None:
        from .asgi import OwnershipMiddleware

        policy = kwargs.get("policy") or Policy.from_env()
        keys = kwargs.get("keys")
        Gate(policy, keys)  # configuration errors surface now, not on the first request

        def wrap(original: Any) -> Any:
            def init_with_ownership(app: Any, *args: Any, **init_kwargs: Any) -> None:
                original(app, *args, **init_kwargs)
                if not getattr(app, "_ownership_ctx_instrumented", False):
                    app._ownership_ctx_instrumented = True
                    app.add_middleware(OwnershipMiddleware, policy=policy, keys=keys)

            return init_with_ownership

        for cls in _app_classes():
            self._originals[cls] = cls.__dict__["__init__"]
            cls.__init__ = wrap(cls.__dict__["__init__"])

    def _uninstrument(self, **kwargs: Any) -> None:
        for cls, original in self._originals.items():
            cls.__init__ = original
        self._originals.clear()


class OwnershipCeleryInstrumentor(BaseInstrumentor):  # type: ignore[misc]
    """Installs the Celery hooks (`ownership_ctx.celery.install`) on every Celery app created
    afterwards: publishers carry the envelope, workers (prefork children included) bind it.

    Policy from ``policy=`` or `Policy.from_env`; keys from ``keys=`` or `Keys.from_env`.
    """

    _original_init: Any = None

    def instrumentation_dependencies(self) -> Collection[str]:
        return ("celery >= 5.3",)

    def _instrument(self, **kwargs: Any) -> None:
        from celery import Celery

        from .celery import install

        policy = kwargs.get("policy") or Policy.from_env()
        keys = kwargs.get("keys")
        Gate(policy, keys)  # configuration errors surface now
        original = Celery.__init__
        type(self)._original_init = original

        def init_with_ownership(app: Any, *args: Any, **init_kwargs: Any) -> None:
            original(app, *args, **init_kwargs)
            install(app, policy=policy, keys=keys)

        Celery.__init__ = init_with_ownership

    def _uninstrument(self, **kwargs: Any) -> None:
        from celery import Celery

        if type(self)._original_init is not None:
            Celery.__init__ = type(self)._original_init
            type(self)._original_init = None


class OwnershipDramatiqInstrumentor(BaseInstrumentor):  # type: ignore[misc]
    """Adds `ownership_ctx.dramatiq.OwnershipMiddleware` to every Dramatiq broker created
    afterwards (it places itself first, where it must be).

    Policy from ``policy=`` or `Policy.from_env`; keys from ``keys=`` or `Keys.from_env`.
    """

    _original_init: Any = None

    def instrumentation_dependencies(self) -> Collection[str]:
        return ("dramatiq >= 1.17",)

    def _instrument(self, **kwargs: Any) -> None:
        from dramatiq.broker import Broker

        from .dramatiq import OwnershipMiddleware as DramatiqOwnership

        policy = kwargs.get("policy") or Policy.from_env()
        keys = kwargs.get("keys")
        Gate(policy, keys)
        original = Broker.__init__
        type(self)._original_init = original

        def init_with_ownership(broker: Any, *args: Any, **init_kwargs: Any) -> None:
            original(broker, *args, **init_kwargs)
            if not any(isinstance(m, DramatiqOwnership) for m in broker.middleware):
                broker.add_middleware(DramatiqOwnership(policy=policy, keys=keys))

        Broker.__init__ = init_with_ownership  # type: ignore[method-assign, assignment]

    def _uninstrument(self, **kwargs: Any) -> None:
        from dramatiq.broker import Broker

        if type(self)._original_init is not None:
            Broker.__init__ = type(self)._original_init  # type: ignore[method-assign]
            type(self)._original_init = None
