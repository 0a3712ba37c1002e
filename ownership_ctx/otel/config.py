"""What the automatic instrumentors read from the environment.

Installing the package must never change what an application answers, so with nothing
configured the instrumentors *observe*: policy mode ``quarantine`` (units without ownership run,
marked ``quarantined``) and no response header added. Enforcement is the operator's choice:
``OWNERSHIP_CTX_MODE=enforce`` and/or a whole policy, ``OWNERSHIP_CTX_POLICY=module:attribute``.
"""

from __future__ import annotations

import contextlib
import dataclasses
import importlib
import logging
import os
from collections.abc import Iterator, Mapping
from typing import Any, Final

from ..gate import Gate
from ..hashing import Keys
from ..policy import Policy

__all__ = [
    "ACCEPT_UNSIGNED_ENV",
    "MODE_ENV",
    "POLICY_ENV",
    "REQUIRED_ENV",
    "TRACE_HEADER_ENV",
    "TRUST_ENV",
    "AutoSettings",
    "auto_settings",
    "left_off_on_error",
    "policy_from_env",
]

POLICY_ENV: Final = "OWNERSHIP_CTX_POLICY"
MODE_ENV: Final = "OWNERSHIP_CTX_MODE"
REQUIRED_ENV: Final = "OWNERSHIP_CTX_REQUIRED"
TRUST_ENV: Final = "OWNERSHIP_CTX_TRUST"
TRACE_HEADER_ENV: Final = "OWNERSHIP_CTX_TRACE_HEADER"
ACCEPT_UNSIGNED_ENV: Final = "OWNERSHIP_CTX_ACCEPT_UNSIGNED"

#: The mode of an instrumentor nobody configured: observe, never reject.
OBSERVE_MODE: Final = "quarantine"

logger = logging.getLogger("ownership_ctx")


def _load(spec: str) -> Any:
    module_name, sep, attribute = spec.partition(":")
    if not sep or not module_name.strip() or not attribute.strip():
        raise ValueError(f"{POLICY_ENV} must be 'module:attribute', not {spec!r}")
    value: Any = importlib.import_module(module_name.strip())
    for part in attribute.strip().split("."):
        value = getattr(value, part)
    return value


def policy_from_env(environ: Mapping[str, str] | None = None) -> Policy:
    """The policy the instrumentors apply.

    ``OWNERSHIP_CTX_POLICY`` (``module:attribute``: a `Policy`, or a callable returning one),
    its mode overridden by ``OWNERSHIP_CTX_MODE`` when set. Else `Policy.from_env` (mode,
    required fields, trust, ...) with ``quarantine`` as the default mode: observe, never reject.
    Raises ``ValueError`` (or the import's error) when the configuration cannot work.
    """
    env = os.environ if environ is None else environ
    mode = env.get(MODE_ENV, "").strip()
    spec = env.get(POLICY_ENV, "").strip()
    if not spec:
        return Policy.from_env({**env, MODE_ENV: mode or OBSERVE_MODE})
    loaded = _load(spec)
    if not isinstance(loaded, Policy) and callable(loaded):
        loaded = loaded()
    if not isinstance(loaded, Policy):
        raise ValueError(f"{POLICY_ENV}={spec!r} is not an ownership_ctx Policy")
    ignored = [name for name in (REQUIRED_ENV, TRUST_ENV, ACCEPT_UNSIGNED_ENV) if name in env]
    if ignored:
        logger.warning(
            "ownership_ctx: %s ignored: %s=%s sets the whole policy (only %s overrides it)",
            ", ".join(ignored),
            POLICY_ENV,
            spec,
            MODE_ENV,
        )
    return dataclasses.replace(loaded, mode=mode) if mode else loaded  # type: ignore[arg-type]


@dataclasses.dataclass(frozen=True)
class AutoSettings:
    """Policy, keys and response header for one automatic instrumentor."""

    policy: Policy
    keys: Keys | None
    trace_header: str | None


def auto_settings(name: str, kwargs: Mapping[str, Any]) -> AutoSettings | None:
    """Settings from ``instrument(**kwargs)`` (``policy=``, ``keys=``, ``trace_header=``) or
    the environment, checked now; ``None`` after logging the error when they cannot work.

    Never raises: OpenTelemetry stops loading every instrumentation after one that raises.
    """
    try:
        policy = kwargs.get("policy") or policy_from_env()
        keys = kwargs.get("keys")
        if "trace_header" in kwargs:
            trace_header = kwargs["trace_header"]
        else:
            trace_header = os.environ.get(TRACE_HEADER_ENV, "").strip() or None
        Gate(policy, keys)  # configuration errors surface now, not on the first unit of work
    except Exception as exc:
        logger.error(
            "ownership_ctx: %s is not enabled, its configuration cannot work: %s: %s",
            name,
            type(exc).__name__,
            exc,
        )
        return None
    return AutoSettings(policy, keys, trace_header)


@contextlib.contextmanager
def left_off_on_error(name: str) -> Iterator[None]:
    """Log what goes wrong while instrumenting and leave that part off: OpenTelemetry stops
    loading every instrumentation after one that raises."""
    try:
        yield
    except Exception:
        logger.exception("ownership_ctx: %s failed to instrument and is left off", name)
