"""`instrument(client)`: one call meters an official SDK client, sync or async.

- OpenAI / Anthropic (``OpenAI``, ``AsyncOpenAI``, ``AzureOpenAI``, ``Anthropic``, ...): their
  httpx client's transports are wrapped, and the client's ``request`` method (the SDK's retry
  loop) opens a call scope so that retries share a ``call_id``. ``with_options``/``copy``
  return instrumented copies.
- Google Gen AI (``genai.Client``, including ``client.aio``): the sync and async httpx
  clients' transports, and the retry wrapper (``_request``) for the call scope.
- boto3 ``bedrock-runtime``: botocore event hooks (see `bedrock`).

The SDK is recognized by its module name: nothing here imports an SDK. Instrumenting twice is
harmless. Instrumentation mutates the client in place and returns it.
"""

from __future__ import annotations

import functools
import importlib
from typing import Any, TypeVar

from . import recorder
from .pricing import warn_if_no_price_library
from .recorder import failed, open_scope, scoped

__all__ = ["AUTO_MARK", "instrument", "instrument_httpx", "instrumented", "uninstrument"]

C = TypeVar("C")
_MARK = "_ownership_ctx_metered"


def _roots(client: Any) -> set[str]:
    return {cls.__module__.split(".")[0] for cls in type(client).__mro__}


def instrument(client: C, *, provider: str | None = None) -> C:
    """Meter every provider call ``client`` makes; returns ``client`` itself.

    ``provider`` names the provider in events (default from the SDK: ``openai``,
    ``anthropic``, ``gcp.gemini``, ``aws.bedrock``); set it for OpenAI-compatible gateways.
    Raises ``TypeError`` for a client it does not know (a setup error, not a runtime one).
    """
    warn_if_no_price_library()
    roots = _roots(client)
    vars(client).pop(AUTO_MARK, None)  # instrumented on purpose: kept when auto mode is undone
    if "openai" in roots:
        _stainless(client, provider or _openai_provider(client))
    elif "anthropic" in roots:
        _stainless(client, provider or "anthropic")
    elif "google" in roots and hasattr(client, "_api_client"):
        _gemini(client, provider or "gcp.gemini")
    elif "botocore" in roots:
        from .bedrock import instrument_bedrock

        instrument_bedrock(client, provider or "aws.bedrock")
    else:
        raise TypeError(f"ownership_ctx.metering cannot instrument {type(client).__name__}")
    return client


def _openai_provider(client: Any) -> str:
    return "azure.ai.openai" if "Azure" in type(client).__name__ else "openai"


def instrument_httpx(http_client: C, *, provider: str) -> C:
    """Meter an ``httpx``/``httpx2`` ``Client`` or ``AsyncClient`` directly (OpenAI-compatible
    gateways, hand-written calls). Each attempt is its own call unless made inside an
    instrumented SDK call."""
    if getattr(http_client, _MARK, False):
        return http_client
    warn_if_no_price_library()
    name = next(
        (
            cls.__module__.split(".")[0]
            for cls in type(http_client).__mro__
            if cls.__module__.split(".")[0] in ("httpx", "httpx2")
        ),
        None,
    )
    if name is None:
        raise TypeError(f"{type(http_client).__name__} is not an httpx / httpx2 client")
    module = importlib.import_module(name)
    sync_cls, async_cls = _transport_classes(module)
    wrapper = async_cls if isinstance(http_client, module.AsyncClient) else sync_cls
    hc: Any = http_client
    hc._transport = wrapper(hc._transport, provider)
    # Proxy mounts route some URLs around _transport: wrap those too.
    hc._mounts = {
        pattern: (wrapper(t, provider) if t is not None else None)
        for pattern, t in hc._mounts.items()
    }
    setattr(hc, _MARK, True)
    return http_client


def _transport_classes(module: Any) -> tuple[type[Any], type[Any]]:
    from .transport import classes_for

    return classes_for(module)


def _model_of(options: Any) -> str | None:
    data = getattr(options, "json_data", None)
    model = data.get("model") if isinstance(data, dict) else None
    return model if isinstance(model, str) else None


def _stainless(client: Any, provider: str) -> None:
    if getattr(client, _MARK, False):
        return
    instrument_httpx(client._client, provider=provider)
    original = client.request
    if _is_async(original):

        @functools.wraps(original)
        async def arequest(cast_to: Any, options: Any, *args: Any, **kwargs: Any) -> Any:
            scope = _scope_for(options)
            if recorder.budget_hook is None:
                with scoped(scope):
                    return await original(cast_to, options, *args, **kwargs)
            _reserve(scope, provider, options)  # budgets: may refuse before anything is sent
            try:
                with scoped(scope):
                    return await original(cast_to, options, *args, **kwargs)
            except BaseException:
                recorder.budget_hook.failed(scope)
                raise

        client.request = arequest
    else:

        @functools.wraps(original)
        def request(cast_to: Any, options: Any, *args: Any, **kwargs: Any) -> Any:
            scope = _scope_for(options)
            if recorder.budget_hook is None:
                with scoped(scope):
                    return original(cast_to, options, *args, **kwargs)
            _reserve(scope, provider, options)  # budgets: may refuse before anything is sent
            try:
                with scoped(scope):
                    return original(cast_to, options, *args, **kwargs)
            except BaseException:
                recorder.budget_hook.failed(scope)
                raise

        client.request = request
    copy = client.copy

    @functools.wraps(copy)
    def instrumented_copy(*args: Any, **kwargs: Any) -> Any:
        return instrument(copy(*args, **kwargs), provider=provider)

    client.copy = client.with_options = instrumented_copy
    setattr(client, _MARK, True)


def _reserve(scope: Any, provider: str, options: Any) -> None:
    """Budgets' reservation for one SDK call: raises only a refusal (`BudgetExceeded`)."""
    hook = recorder.budget_hook
    if hook is not None:
        hook.reserve(scope, provider, getattr(options, "json_data", None))


def _reserve_gemini(scope: Any, provider: str, args: Any, kwargs: Any) -> None:
    """Budgets' reservation for one Gemini call (its ``HttpRequest``, first argument)."""
    hook = recorder.budget_hook
    if hook is not None:
        hook.reserve(scope, provider, args[0] if args else kwargs.get("http_request"))


def _scope_for(options: Any) -> Any:
    try:
        return open_scope(_model_of(options))
    except Exception:
        failed("opening a call scope")
        return open_scope()


def _is_async(fn: Any) -> bool:
    import inspect

    return inspect.iscoroutinefunction(fn)


def _gemini(client: Any, provider: str) -> None:
    api = client._api_client
    if getattr(api, _MARK, False):
        return
    for name in ("_httpx_client", "_async_httpx_client"):
        http_client = getattr(api, name, None)
        if http_client is not None:
            instrument_httpx(http_client, provider=provider)
            _per_loop(http_client, provider)
    if getattr(api, "_async_httpx_client", None) is not None and hasattr(api, "_use_aiohttp"):
        # With aiohttp installed (LiteLLM brings it), google-genai sends async calls through
        # aiohttp instead of the (metered) httpx client it also has: keep them on httpx.
        api._use_aiohttp = _no_aiohttp
    request = getattr(api, "_request", None)
    if request is not None:

        @functools.wraps(request)
        def scoped_request(*args: Any, **kwargs: Any) -> Any:
            scope = open_scope()
            if recorder.budget_hook is None:
                with scoped(scope):
                    return request(*args, **kwargs)
            _reserve_gemini(scope, provider, args, kwargs)  # budgets: may refuse
            try:
                with scoped(scope):
                    return request(*args, **kwargs)
            except BaseException:
                recorder.budget_hook.failed(scope)
                raise

        api._request = scoped_request
    arequest = getattr(api, "_async_request", None)
    if arequest is not None:

        @functools.wraps(arequest)
        async def scoped_arequest(*args: Any, **kwargs: Any) -> Any:
            scope = open_scope()
            if recorder.budget_hook is None:
                with scoped(scope):
                    return await arequest(*args, **kwargs)
            _reserve_gemini(scope, provider, args, kwargs)  # budgets: may refuse
            try:
                with scoped(scope):
                    return await arequest(*args, **kwargs)
            except BaseException:
                recorder.budget_hook.failed(scope)
                raise

        api._async_request = scoped_arequest
    setattr(api, _MARK, True)


def _no_aiohttp() -> bool:
    return False


def _per_loop(http_client: Any, provider: str) -> None:
    """google-genai's async client sends through one inner client per event loop, built
    later from its constructor arguments: instrument those inner clients as they are made."""
    inner_cls = getattr(http_client, "_inner_client_cls", None)
    if inner_cls is None or not getattr(http_client, "_per_loop", False):
        return

    def make(**kwargs: Any) -> Any:
        return instrument_httpx(inner_cls(**kwargs), provider=provider)

    http_client._inner_client_cls = make
    for inner in list(getattr(http_client, "_loop_clients", {}).values()):
        instrument_httpx(inner, provider=provider)


# -- undoing (for `auto.uninstrument_all`) -----------------------------------------------------
#: Set on clients that `auto.instrument_all` instrumented; `instrument` clears it, so a client
#: the application instrumented itself stays metered when the process-wide mode is undone.
AUTO_MARK = "_ownership_ctx_auto"


def instrumented(client: Any) -> bool:
    """Whether ``client`` is metered (by `instrument` or the process-wide mode)."""
    if getattr(client, _MARK, False):
        return True
    api = getattr(client, "_api_client", None)
    meta = getattr(client, "meta", None)
    return bool(getattr(api, _MARK, False) or getattr(meta, _MARK, False))


def uninstrument(client: Any) -> None:
    """Stop metering ``client`` (as `instrument` found it). Unknown or plain clients: no-op."""
    roots = _roots(client)
    if "openai" in roots or "anthropic" in roots:
        if not getattr(client, _MARK, False):
            return
        _unwrap_httpx(client._client)
        for name in ("request", "copy", "with_options", _MARK):
            vars(client).pop(name, None)
    elif "google" in roots and hasattr(client, "_api_client"):
        api = client._api_client
        if not getattr(api, _MARK, False):
            return
        for name in ("_httpx_client", "_async_httpx_client"):
            http_client = getattr(api, name, None)
            if http_client is not None:
                _unwrap_httpx(http_client)
                for inner in list(getattr(http_client, "_loop_clients", {}).values()):
                    _unwrap_httpx(inner)
                vars(http_client).pop("_inner_client_cls", None)
        for name in ("_request", "_async_request", "_use_aiohttp", _MARK):
            vars(api).pop(name, None)
    elif "botocore" in roots:
        from .bedrock import uninstrument_bedrock

        uninstrument_bedrock(client)
    vars(client).pop(AUTO_MARK, None)


def _unwrap_httpx(http_client: Any) -> None:
    if not getattr(http_client, _MARK, False):
        return
    wrapped = tuple(_classes_in_use())
    transport = http_client._transport
    if isinstance(transport, wrapped):
        http_client._transport = transport.inner
    http_client._mounts = {
        pattern: (t.inner if isinstance(t, wrapped) else t)
        for pattern, t in http_client._mounts.items()
    }
    vars(http_client).pop(_MARK, None)


def _classes_in_use() -> list[type[Any]]:
    from .transport import wrapper_classes

    return wrapper_classes()
