"""Outbound HTTP: add the current envelope to requests bound for allowed hosts.

httpx (sync and async) through a transport wrapper, requests through a transport adapter. An
allow-list decides where ownership may go: a host not on it — a provider API, a partner, the
public internet — never receives ownership headers. Baggage already on the request is kept;
our entries replace stale ``ownership.*`` ones. Signed when signing keys are configured, so a
receiving service with ``Policy(trust="signed")`` believes internal callers only.

    client = httpx.Client(transport=OwnershipTransport(allow_hosts=["*.svc.internal"]))
    session.mount("http://", OwnershipAdapter(allow_hosts=["billing.svc.internal"]))
"""

from __future__ import annotations

import fnmatch
from collections.abc import Iterable, MutableMapping
from typing import TYPE_CHECKING, Any

from .gate import Gate
from .hashing import Keys

if TYPE_CHECKING:
    import httpx
    import requests

__all__ = ["AllowList", "AsyncOwnershipTransport", "OwnershipAdapter", "OwnershipTransport"]


class AllowList:
    """Host names (``fnmatch`` globs, case-insensitive) that may receive ownership headers."""

    __slots__ = ("_exact", "_globs")

    def __init__(self, hosts: Iterable[str]) -> None:
        hosts = [h.lower().rstrip(".") for h in hosts]
        self._exact = frozenset(h for h in hosts if not any(c in h for c in "*?["))
        self._globs = tuple(h for h in hosts if h not in self._exact)

    def allows(self, host: str | None) -> bool:
        if not host:
            return False
        host = host.lower().rstrip(".")
        return host in self._exact or any(fnmatch.fnmatchcase(host, g) for g in self._globs)


class _Injector:
    """What both clients share: the allow-list check and the gate's way out."""

    __slots__ = ("_allow", "_gate")

    def __init__(self, allow_hosts: Iterable[str], keys: Keys | None) -> None:
        self._allow = AllowList(allow_hosts)
        self._gate = Gate(keys=keys)

    def apply(self, host: str | None, headers: MutableMapping[str, str]) -> None:
        if self._allow.allows(host):
            self._gate.inject(headers)


class OwnershipTransport:
    """An httpx transport that adds the envelope, then sends with ``transport``.

    ``transport`` defaults to a plain ``httpx.HTTPTransport()``; pass yours to keep its
    settings (retries, proxies, TLS).
    """

    def __init__(
        self,
        transport: httpx.BaseTransport | None = None,
        *,
        allow_hosts: Iterable[str],
        keys: Keys | None = None,
    ) -> None:
        import httpx

        self._transport = transport if transport is not None else httpx.HTTPTransport()
        self._injector = _Injector(allow_hosts, keys)

    def handle_request(self, request: httpx.Request) -> httpx.Response:
        self._injector.apply(request.url.host, request.headers)
        return self._transport.handle_request(request)

    def close(self) -> None:
        self._transport.close()

    def __enter__(self) -> OwnershipTransport:
        return self

    def __exit__(self, *args: Any) -> None:
        self.close()


class AsyncOwnershipTransport:
    """`OwnershipTransport` for ``httpx.AsyncClient``."""

    def __init__(
        self,
        transport: httpx.AsyncBaseTransport | None = None,
        *,
        allow_hosts: Iterable[str],
        keys: Keys | None = None,
    ) -> None:
        import httpx

        self._transport = transport if transport is not None else httpx.AsyncHTTPTransport()
        self._injector = _Injector(allow_hosts, keys)

    async def handle_async_request(self, request: httpx.Request) -> httpx.Response:
        self._injector.apply(request.url.host, request.headers)
        return await self._transport.handle_async_request(request)

    async def aclose(self) -> None:
        await self._transport.aclose()

    async def __aenter__(self) -> AsyncOwnershipTransport:
        return self

    async def __aexit__(self, *args: Any) -> None:
        await self.aclose()


def _adapter_class() -> type[Any]:
    # Built on first use so that importing this module never imports requests.
    from urllib.parse import urlsplit

    from requests.adapters import HTTPAdapter

    class OwnershipAdapter(HTTPAdapter):
        """A ``requests`` transport adapter that adds the envelope before sending.

        Mount it for the schemes (or URL prefixes) your internal services use; it is an
        ``HTTPAdapter``, so pool and retry settings go to it as usual.
        """

        def __init__(
            self, *, allow_hosts: Iterable[str], keys: Keys | None = None, **kwargs: Any
        ) -> None:
            super().__init__(**kwargs)
            self._injector = _Injector(allow_hosts, keys)

        def send(self, request: requests.PreparedRequest, *args: Any, **kwargs: Any) -> Any:
            headers = request.headers
            baggage = headers.get("baggage")
            if isinstance(baggage, bytes):  # requests allows bytes header values
                headers["baggage"] = baggage.decode("latin-1")
            host = urlsplit(request.url or "").hostname
            self._injector.apply(host, headers)  # type: ignore[arg-type]
            return super().send(request, *args, **kwargs)

    OwnershipAdapter.__module__ = __name__
    OwnershipAdapter.__qualname__ = "OwnershipAdapter"
    return OwnershipAdapter


if TYPE_CHECKING:
    from requests.adapters import HTTPAdapter

    class OwnershipAdapter(HTTPAdapter):
        def __init__(
            self, *, allow_hosts: Iterable[str], keys: Keys | None = None, **kwargs: Any
        ) -> None: ...


def __getattr__(name: str) -> Any:
    if name == "OwnershipAdapter":
        cls = _adapter_class()
        globals()["OwnershipAdapter"] = cls
        return cls
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
