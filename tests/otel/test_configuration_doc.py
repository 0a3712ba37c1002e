"""docs/configuration.md lists every OWNERSHIP_CTX_* variable the package reads, with the
default and the effect it documents."""

from __future__ import annotations

import os
import re
from pathlib import Path

import pytest

import ownership_ctx
from ownership_ctx import ConfigurationError, Envelope, Keys, Policy, bind
from ownership_ctx.otel.config import auto_settings, policy_from_env
from ownership_ctx.otel.propagator import OwnershipPropagator
from ownership_ctx.sinks.config import resolve_url

PACKAGE = Path(ownership_ctx.__file__).parent
DOC = Path(__file__).resolve().parents[2] / "docs" / "configuration.md"
VARIABLE = re.compile(r"OWNERSHIP_CTX_[A-Z0-9_]+")


def documented() -> list[str]:
    return re.findall(r"^\| `(OWNERSHIP_CTX_[A-Z0-9_]+)` \|", DOC.read_text(), flags=re.M)


def test_every_variable_in_the_source_is_in_the_table() -> None:
    used = {
        name: source.relative_to(PACKAGE).as_posix()
        for source in sorted(PACKAGE.rglob("*.py"))
        for name in VARIABLE.findall(source.read_text())
    }
    assert "OWNERSHIP_CTX_SINK_URL" in used  # the scan sees the package
    missing = {name: where for name, where in used.items() if name not in documented()}
    assert missing == {}, "add these to docs/configuration.md"


def test_each_variable_has_one_row() -> None:
    rows = documented()
    assert len(rows) == len(set(rows))


def test_the_documented_defaults_and_effects(monkeypatch: pytest.MonkeyPatch) -> None:
    for name in [n for n in os.environ if n.startswith("OWNERSHIP_CTX_")]:
        monkeypatch.delenv(name)
    policy = Policy.from_env({})
    assert (policy.mode, policy.required, policy.trust, policy.accept_unsigned) == (
        "enforce",
        ("owner_team", "workflow_id", "feature"),
        "all",
        False,
    )
    assert policy_from_env({}).mode == "quarantine"
    assert Keys.from_env({}) == Keys()
    assert resolve_url(None, {}) == "sqlite:///ownership.db"
    assert resolve_url(None, {"OWNERSHIP_CTX_SINK_URL": "events.db"}) == "sqlite:///events.db"
    settings = auto_settings("test", {})
    assert settings is not None and settings.trace_header is None
    monkeypatch.setenv("OWNERSHIP_CTX_TRACE_HEADER", "x-trace-id")
    settings = auto_settings("test", {})
    assert settings is not None and settings.trace_header == "x-trace-id"

    configured = Policy.from_env(
        {
            "OWNERSHIP_CTX_REQUIRED": "",
            "OWNERSHIP_CTX_TRUST": "signed",
            "OWNERSHIP_CTX_MODE": "stamp",
        }
    )
    assert (configured.required, configured.trust, configured.mode) == ((), "signed", "stamp")
    for on in ("1", "true", "yes"):
        assert Policy.from_env({"OWNERSHIP_CTX_ACCEPT_UNSIGNED": on}).accept_unsigned
    for off in ("0", "false", "no"):
        assert not Policy.from_env({"OWNERSHIP_CTX_ACCEPT_UNSIGNED": off}).accept_unsigned
    with pytest.raises(ValueError):
        Policy.from_env({"OWNERSHIP_CTX_ACCEPT_UNSIGNED": "maybe"})
    with pytest.raises(ConfigurationError, match="16 bytes"):
        Keys.from_env({"OWNERSHIP_CTX_HASH_KEY": "short"})
    keys = Keys.from_env(
        {"OWNERSHIP_CTX_SIGNING_KEYS": "new-key-0123456789ab, old-key-0123456789ab"}
    )
    assert keys.signing_keys == (b"new-key-0123456789ab", b"old-key-0123456789ab")


def test_allow_hosts_decides_where_the_propagator_writes(monkeypatch: pytest.MonkeyPatch) -> None:
    envelope = Envelope(trace_id="4bf92f3577b34da6a3ce929d0e0e4736", owner_team="search")

    def written(host: str) -> bool:
        carrier = {"host": host}
        with bind(envelope):
            OwnershipPropagator().inject(carrier)
        return "baggage" in carrier

    monkeypatch.delenv("OWNERSHIP_CTX_ALLOW_HOSTS", raising=False)
    assert not written("router.svc.internal")  # empty: no host gets it
    monkeypatch.setenv("OWNERSHIP_CTX_ALLOW_HOSTS", "*.svc.internal,partner.example")
    assert written("router.svc.internal") and written("partner.example")
    assert not written("api.openai.com")
