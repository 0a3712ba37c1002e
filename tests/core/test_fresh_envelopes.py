"""What is written when nothing is bound: a fresh ``unattributed`` envelope per message.

The gate writes it from a text precomputed around the trace id (the enqueue hot path); these
tests check it against the documented wire format and signature, computed here.
"""

from __future__ import annotations

import hashlib
import hmac
import os
import re
import threading

import pytest

from ownership_ctx import Envelope, Gate, Keys, bind, decode_header, encode_header
from ownership_ctx.codec import BAGGAGE_HEADER, QUEUE_HEADER, new_trace_id, unattributed_encoder
from ownership_ctx.hashing import ConfigurationError

KEY = b"fresh-envelope-test-key-0123456789"
OLD_KEY = b"fresh-envelope-test-old-key-0123456789"


def expected_text(trace_id: str, key: bytes | None) -> str:
    """The header, from the documented format (entries in wire order, s2 signature last)."""
    text = f"ownership.v=1,ownership.trace_id={trace_id},ownership.attribution=unattributed"
    if key is None:
        return text
    entries = {"attribution": "unattributed", "trace_id": trace_id, "v": "1"}
    signed = b"ownership_ctx envelope signature s2\n"
    for k in sorted(entries):
        kb, vb = k.encode(), entries[k].encode()
        signed += str(len(kb)).encode() + b":" + kb + str(len(vb)).encode() + b":" + vb
    return f"{text},ownership.sig=s2:" + hmac.new(key, signed, hashlib.sha256).hexdigest()[:32]


@pytest.mark.parametrize(
    ("keys", "signing_key"),
    [(None, None), (Keys(), None), (Keys(signing_keys=(KEY, OLD_KEY)), KEY)],
    ids=["no keys", "no signing keys", "signing keys"],
)
def test_precomputed_text_is_the_encoded_envelope(keys: Keys | None, signing_key: bytes) -> None:
    encoded = unattributed_encoder(keys)
    for trace_id in [new_trace_id() for _ in range(50)] + ["0" * 31 + "1", "f" * 32]:
        envelope = Envelope(trace_id=trace_id, attribution="unattributed")
        assert encoded(trace_id) == expected_text(trace_id, signing_key)
        assert encoded(trace_id) == encode_header(envelope, keys)


@pytest.mark.parametrize("keys", [Keys(), Keys(signing_keys=(KEY,))], ids=["unsigned", "signed"])
def test_write_with_nothing_bound_on_a_queue_header(keys: Keys) -> None:
    gate = Gate(keys=keys)
    seen = set()
    for _ in range(20):
        carrier: dict[str, str] = {}
        gate.write(carrier, header=QUEUE_HEADER)
        envelope, problems = decode_header(carrier[QUEUE_HEADER], keys)
        assert problems == ()
        assert envelope is not None and envelope.attribution == "unattributed"
        assert carrier[QUEUE_HEADER] == expected_text(
            envelope.trace_id, KEY if keys.signing_keys else None
        )
        seen.add(envelope.trace_id)
    assert len(seen) == 20  # a fresh trace id every time


def test_inject_with_nothing_bound_returns_the_envelope_it_wrote() -> None:
    keys = Keys(signing_keys=(KEY,))
    gate = Gate(keys=keys)
    carrier = {BAGGAGE_HEADER: "sentry-environment=production"}
    envelope, problems = gate.inject(carrier)
    assert problems == ()
    assert envelope.attribution == "unattributed"
    assert carrier[BAGGAGE_HEADER] == (
        "sentry-environment=production," + expected_text(envelope.trace_id, KEY)
    )
    queue: dict[str, str] = {}
    envelope, problems = gate.inject(queue, header=QUEUE_HEADER)
    assert (problems, queue) == ((), {QUEUE_HEADER: expected_text(envelope.trace_id, KEY)})


def test_write_with_an_envelope_bound_writes_that_envelope() -> None:
    keys = Keys(signing_keys=(KEY,))
    gate = Gate(keys=keys)
    bound = Envelope(trace_id=new_trace_id(), owner_team="search", feature="triage")
    queue: dict[str, str] = {}
    baggage = {BAGGAGE_HEADER: "k=v"}
    with bind(bound):
        gate.write(queue, header=QUEUE_HEADER)
        gate.write(baggage)
    assert queue[QUEUE_HEADER] == encode_header(bound, keys)
    assert baggage[BAGGAGE_HEADER] == "k=v," + encode_header(bound, keys)


def test_signing_a_prebuilt_text_needs_a_key() -> None:
    with pytest.raises(ConfigurationError):
        Keys().sign_signed_text(b"anything")


def test_minted_trace_ids_are_valid_and_never_repeat_across_threads() -> None:
    def mint(ids: list[str]) -> None:
        ids.extend(new_trace_id() for _ in range(3000))

    per_thread: list[list[str]] = [[] for _ in range(6)]
    threads = [threading.Thread(target=mint, args=(ids,)) for ids in per_thread]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    minted = [trace_id for ids in per_thread for trace_id in ids]
    assert len(set(minted)) == len(minted) == 18000
    assert all(re.fullmatch(r"[0-9a-f]{32}", t) and t != "0" * 32 for t in minted)


@pytest.mark.skipif(not hasattr(os, "fork"), reason="needs fork")
def test_a_forked_child_never_mints_an_id_its_parent_will() -> None:
    new_trace_id()  # the parent now holds ids it has not handed out yet
    read, write = os.pipe()
    pid = os.fork()
    if pid == 0:  # the child: report its ids and leave at once
        try:
            os.write(write, ",".join(new_trace_id() for _ in range(200)).encode())
        finally:
            os._exit(0)
    os.close(write)
    with os.fdopen(read) as pipe:
        child = set(pipe.read().split(","))
    os.waitpid(pid, 0)
    parent = {new_trace_id() for _ in range(200)}
    assert len(child) == 200 and not child & parent
