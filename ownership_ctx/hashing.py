"""Keyed hashing of raw identifiers and HMAC signing of envelopes.

Hashing is keyed (HMAC-SHA256) so that a dictionary of known customer ids cannot reverse a
hashed tenant. Signing covers an unambiguous canonical form of every ownership entry (see
`signed_text`), so a worker or a receiving service can refuse an envelope that was forged or
altered in transit. Both truncate the HMAC to 128 bits: ample against forgery and collisions,
and short on the wire.
"""

from __future__ import annotations

import dataclasses
import hashlib
import hmac
import os
from collections.abc import Iterable, Mapping
from typing import Any, Final

__all__ = [
    "SIGNATURE_VERSION",
    "ConfigurationError",
    "Keys",
    "hash_identifier",
    "signed_text",
    "signed_text_around",
    "value_text",
]

HASH_KEY_ENV: Final = "OWNERSHIP_CTX_HASH_KEY"
SIGNING_KEYS_ENV: Final = "OWNERSHIP_CTX_SIGNING_KEYS"
MIN_KEY_BYTES: Final = 16
#: The signature format, written before the MAC (``s2:<32 hex>``). ``s1`` signed newline-joined
#: ``key=value`` lines, which a value holding a newline could imitate: it is refused.
SIGNATURE_VERSION: Final = "s2"
_SIGNATURE_PREFIX: Final = SIGNATURE_VERSION + ":"
_SIGNED_TEXT_HEADER: Final = b"ownership_ctx envelope signature s2\n"


class ConfigurationError(RuntimeError):
    """Raised at startup when ownership_ctx is configured in a way that cannot work."""


def hash_identifier(raw: str, key: bytes) -> str:
    """The keyed-hash form of a raw tenant or user id: ``h1:`` and 32 hex characters."""
    digest = hmac.new(key, raw.encode("utf-8", "surrogatepass"), hashlib.sha256).hexdigest()
    return "h1:" + digest[:32]


def signed_text(entries: Mapping[str, str]) -> bytes:
    """The bytes a signature covers: the entries sorted by key, each key and each value
    prefixed by its length in bytes (``<n>:<bytes>``), after a header naming the format.

    Length prefixes make the text unambiguous: no value, whatever it holds, can imitate an
    entry boundary, so two different sets of entries never share a signed text. Sorted keys
    make it independent of wire order and of other systems' baggage.
    """
    text = "".join([f"{len(k)}:{k}{len(v)}:{v}" for k, v in sorted(entries.items())])
    if text.isascii():  # then characters are bytes: the common case, in one step
        return _SIGNED_TEXT_HEADER + text.encode("ascii")
    return b"".join([_SIGNED_TEXT_HEADER, *(_field(k, v) for k, v in sorted(entries.items()))])


def signed_text_around(entries: Mapping[str, str], key: str) -> tuple[bytes, bytes]:
    """``(before, after)`` such that ``signed_text({**entries, key: value})`` is ``before +
    value_text(value) + after`` for any value: the part of the signed text that does not
    change when only ``key`` does (a trace id), computed once."""
    others = {k: v for k, v in entries.items() if k != key}
    before = [_SIGNED_TEXT_HEADER, *(_field(k, others[k]) for k in sorted(others) if k < key)]
    after = [_field(k, others[k]) for k in sorted(others) if k > key]
    return b"".join([*before, _length_prefixed(key)]), b"".join(after)


def value_text(value: str) -> bytes:
    """A value as the signed text holds it."""
    return _length_prefixed(value)


def _field(key: str, value: str) -> bytes:
    return _length_prefixed(key) + _length_prefixed(value)


def _length_prefixed(text: str) -> bytes:
    raw = text.encode("utf-8", "surrogatepass")
    return b"%d:%s" % (len(raw), raw)


def _check_key(name: str, key: bytes) -> bytes:
    if len(key) < MIN_KEY_BYTES:
        raise ConfigurationError(f"{name} must be at least {MIN_KEY_BYTES} bytes long")
    return key


@dataclasses.dataclass(frozen=True, slots=True)
class Keys:
    """The secrets: a key for hashing raw ids, and keys for signing envelopes.

    ``signing_keys[0]`` signs; every key in ``signing_keys`` verifies, so keys can be rotated
    by adding the new key first and removing the old one once every publisher has the new one.
    `Keys.from_env` reads ``OWNERSHIP_CTX_HASH_KEY`` and ``OWNERSHIP_CTX_SIGNING_KEYS``
    (comma-separated).
    """

    hash_key: bytes | None = None
    signing_keys: tuple[bytes, ...] = ()
    # One keyed HMAC per signing key, copied per use: cheaper than keying a new one each time.
    _macs: tuple[Any, ...] = dataclasses.field(default=(), init=False, repr=False, compare=False)

    def __post_init__(self) -> None:
        if self.hash_key is not None:
            _check_key(HASH_KEY_ENV, self.hash_key)
        for key in self.signing_keys:
            _check_key(SIGNING_KEYS_ENV, key)
        macs = tuple(_keyed(key) for key in self.signing_keys)
        object.__setattr__(self, "_macs", macs)

    def __reduce__(self) -> tuple[type[Keys], tuple[bytes | None, tuple[bytes, ...]]]:
        # Keyed HMAC objects do not pickle: rebuild them (spawned worker processes).
        return (Keys, (self.hash_key, self.signing_keys))

    @classmethod
    def from_env(cls, environ: Mapping[str, str] | None = None) -> Keys:
        env = os.environ if environ is None else environ
        hash_key = env.get(HASH_KEY_ENV) or None
        signing = [k.strip() for k in env.get(SIGNING_KEYS_ENV, "").split(",") if k.strip()]
        return cls(
            hash_key=hash_key.encode() if hash_key else None,
            signing_keys=tuple(k.encode() for k in signing),
        )

    @property
    def can_sign(self) -> bool:
        return bool(self.signing_keys)

    def hash(self, raw: str) -> str:
        """Hash a raw tenant or user id with the hash key."""
        if self.hash_key is None:
            raise ConfigurationError(
                f"hashing a raw id needs a key: set {HASH_KEY_ENV} or pass Keys(hash_key=...)"
            )
        return hash_identifier(raw, self.hash_key)

    def require_hash_key(self, why: str) -> None:
        """Fail at startup, not on the first request, when hashing will be needed."""
        if self.hash_key is None:
            raise ConfigurationError(
                f"{why} needs a hash key: set {HASH_KEY_ENV} or pass Keys(hash_key=...)"
            )

    def sign(self, entries: Mapping[str, str]) -> str:
        """The signature of ``entries`` (wire keys without prefix, signature excluded)."""
        if not self.signing_keys:
            raise ConfigurationError(f"signing needs a key: set {SIGNING_KEYS_ENV}")
        return _sign(self._macs[0], entries)

    def sign_signed_text(self, text: bytes) -> str:
        """`sign` for a signed text built beforehand (see `signed_text_around`)."""
        if not self.signing_keys:
            raise ConfigurationError(f"signing needs a key: set {SIGNING_KEYS_ENV}")
        return _mac_hex(self._macs[0], text)

    def verify(self, entries: Mapping[str, str], signature: str) -> bool:
        """Whether ``signature`` was made over ``entries`` by one of the signing keys.

        Only the current format (`SIGNATURE_VERSION`) verifies.
        """
        return _verify(self._macs, signed_text(entries), signature)

    def verify_signed_text(self, text: bytes, signature: str) -> bool:
        """`verify` for a signed text built beforehand (see `signed_text_around`)."""
        return _verify(self._macs, text, signature)


def _keyed(key: bytes) -> Any:
    mac = hmac.new(key, digestmod=hashlib.sha256)
    # The OpenSSL HMAC object that hmac.HMAC wraps, when it has one: the same copy / update /
    # hexdigest without three Python-level calls around them (a signature per message).
    inner = getattr(mac, "_hmac", None)
    return mac if inner is None or not hasattr(inner, "copy") else inner


def _mac_hex(keyed: Any, message: bytes) -> str:
    mac = keyed.copy()
    mac.update(message)
    return _SIGNATURE_PREFIX + str(mac.hexdigest())[:32]


def _sign(keyed: Any, entries: Mapping[str, str]) -> str:
    return _mac_hex(keyed, signed_text(entries))


def _verify(macs: Iterable[Any], canonical: bytes, signature: str) -> bool:
    if not signature.startswith(_SIGNATURE_PREFIX):
        return False
    expected = signature.encode("ascii", "replace")
    ok = False
    for keyed in macs:
        # Compare against every key without stopping early: timing tells nothing.
        ok |= hmac.compare_digest(_mac_hex(keyed, canonical).encode(), expected)
    return ok
