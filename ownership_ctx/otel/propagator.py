"""`OwnershipPropagator`: the envelope into outgoing ``baggage``, for allowed hosts only.

Loaded by ``opentelemetry.propagate`` while that module initialises (``OTEL_PROPAGATORS``): it
must import neither ``opentelemetry.propagate`` nor ``opentelemetry.instrumentation``.
"""

from __future__ import annotations

import os
from collections.abc import Iterable, MutableMapping

from opentelemetry.context import Context
from opentelemetry.propagators.textmap import (
    CarrierT,
    Getter,
    Setter,
    TextMapPropagator,
    default_getter,
    default_setter,
)

from ..codec import BAGGAGE_HEADER, encode
from ..context import current
from ..hashing import Keys
from ..http import AllowList

__all__ = ["ALLOW_HOSTS_ENV", "OwnershipPropagator"]

ALLOW_HOSTS_ENV = "OWNERSHIP_CTX_ALLOW_HOSTS"


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
