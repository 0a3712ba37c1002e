"""Process-wide metering: every official SDK client, whoever creates it, is instrumented.

    from ownership_ctx import metering
    metering.instrument_all()      # at start-up, before the clients are made
    ...
    metering.uninstrument_all()    # undo: constructors restored, its clients unwrapped

Libraries that make their own clients (LangChain, LangGraph, the OpenAI Agents SDK, LiteLLM)
construct them through the SDKs' constructors; `instrument_all` wraps those constructors so each
new client goes through `instrument` as it is made:

- ``openai.OpenAI`` / ``AsyncOpenAI`` (and their subclasses: Azure), ``anthropic.Anthropic`` /
  ``AsyncAnthropic``, ``google.genai.Client`` (``client.aio`` included): their ``__init__``;
- boto3 / botocore: ``botocore.session.Session.create_client``, for ``bedrock-runtime`` clients.

It composes with `instrument`: a client is metered once whichever of the two saw it first (the
instrumentation marks the client), and a client the application instrumented itself stays
metered after `uninstrument_all`. An SDK that is not installed is skipped; calling
`instrument_all` again is a no-op. Clients made before the call are not seen: call it first
(the ``ownership_ctx_metering`` OpenTelemetry instrumentor does, at interpreter start-up).
"""

from __future__ import annotations

import functools
import importlib
import importlib.abc
import importlib.util
import logging
import sys
import threading
import weakref
from collections.abc import Callable
from typing import Any, Final

from .clients import AUTO_MARK, instrument, instrumented, uninstrument
from .recorder import failed

__all__ = ["instrument_all", "instrumented_all", "uninstrument_all"]

logger = logging.getLogger("ownership_ctx.metering")

#: module -> the classes whose ``__init__`` is wrapped (botocore: `Session.create_client`).
_TARGETS: Final[dict[str, tuple[str, ...]]] = {
    "openai": ("OpenAI", "AsyncOpenAI"),
    "anthropic": ("Anthropic", "AsyncAnthropic"),
    "google.genai": ("Client",),
    "botocore.session": ("Session",),
}

_lock = threading.RLock()
_done: set[str] = set()
# (owner, attribute name, original) for each wrapped constructor, to put back.
_patched: list[tuple[Any, str, Any]] = []
_clients: weakref.WeakSet[Any] = weakref.WeakSet()
_enabled = False


def instrumented_all() -> bool:
    """Whether the process-wide mode is on."""
    return _enabled


def instrument_all() -> list[str]:
    """Meter every official SDK client created from now on; returns the SDK modules covered
    (``["openai", "anthropic", "google.genai", "botocore.session"]`` when all are installed).

    SDKs already imported are wrapped now; the others when (and if) they are first imported,
    so this costs no import time. Idempotent; never raises for a missing SDK.
    """
    global _enabled
    with _lock:
        if not _enabled:
            _enabled = True
            sys.meta_path.insert(0, _finder)
            for module_name in _TARGETS:
                module = sys.modules.get(module_name)
                if module is not None:
                    _patch(module_name, module)
        return [name for name in _TARGETS if importlib.util.find_spec(name.split(".")[0])]


def uninstrument_all() -> None:
    """Undo `instrument_all`: constructors restored; the clients it instrumented are no
    longer metered (those the application also passed to `instrument` stay metered)."""
    global _enabled
    with _lock:
        if _finder in sys.meta_path:
            sys.meta_path.remove(_finder)
        _done.clear()
        while _patched:
            owner, name, original = _patched.pop()
            setattr(owner, name, original)
        for client in list(_clients):
            if getattr(client, AUTO_MARK, False):
                try:
                    uninstrument(client)
                except Exception:
                    failed("uninstrumenting a client")
        _clients.clear()
        _enabled = False


def _patch(module_name: str, module: Any) -> None:
    """Wrap the constructors ``module`` defines (once per module)."""
    if module_name in _done:
        return
    _done.add(module_name)
    try:
        if module_name == "botocore.session":
            _wrap(module.Session, "create_client", _after_create_client)
            return
        for name in _TARGETS[module_name]:
            cls = getattr(module, name, None)
            if cls is not None:
                _wrap(cls, "__init__", _after_init)
    except Exception:  # an SDK we do not understand must not stop the application
        logger.warning("ownership_ctx: %s not instrumented", module_name, exc_info=True)


class _Finder(importlib.abc.MetaPathFinder):
    """Post-import hook: when a target module finishes importing, wrap its constructors."""

    def find_spec(self, fullname: str, path: Any, target: Any = None) -> Any:
        if fullname not in _TARGETS or fullname in _done:
            return None
        for finder in sys.meta_path:
            if finder is self:
                continue
            find = getattr(finder, "find_spec", None)
            spec = find(fullname, path, target) if find is not None else None
            if spec is not None:
                break
        else:
            return None
        loader = spec.loader
        if loader is None or not hasattr(loader, "exec_module"):
            return spec
        exec_module = loader.exec_module

        def exec_then_patch(module: Any) -> None:
            exec_module(module)
            with _lock:
                if _enabled:
                    _patch(fullname, module)

        loader.exec_module = exec_then_patch
        return spec


_finder = _Finder()


def _wrap(owner: Any, name: str, after: Callable[[Any, Any, tuple[Any, ...]], None]) -> None:
    original = owner.__dict__[name] if name in owner.__dict__ else getattr(owner, name)

    @functools.wraps(original)
    def wrapper(self: Any, *args: Any, **kwargs: Any) -> Any:
        result = original(self, *args, **kwargs)
        after(self, result, args)
        return result

    _patched.append((owner, name, original))
    setattr(owner, name, wrapper)


def _adopt(client: Any) -> None:
    """Instrument a client made while the mode is on (unless it already is)."""
    if not _enabled:
        return
    try:
        if instrumented(client):
            return
        instrument(client)
        setattr(client, AUTO_MARK, True)
        _clients.add(client)
    except Exception:
        failed("instrumenting a new client")


def _after_init(client: Any, _: Any, __: tuple[Any, ...]) -> None:
    # A subclass's __init__ goes on after ours returns (Azure sets its own fields): the
    # client's HTTP client, which is what gets wrapped, exists by now.
    _adopt(client)


def _after_create_client(_: Any, client: Any, args: tuple[Any, ...]) -> None:
    try:
        service = client.meta.service_model.service_name
    except Exception:
        return
    if service == "bedrock-runtime":
        _adopt(client)
