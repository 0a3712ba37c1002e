"""Event and trace ids: 32 lowercase hex, never all zero, never repeated (across threads and
a fork), drawn in batches."""

from __future__ import annotations

import os
import re
import threading

import pytest

from ownership_ctx import events
from ownership_ctx.ids import new_id

HEX32 = re.compile(r"[0-9a-f]{32}")


def test_ids_are_32_hex_and_unique_across_threads() -> None:
    seen: list[list[str]] = [[] for _ in range(8)]

    def draw(out: list[str]) -> None:
        out.extend(new_id() for _ in range(5000))

    threads = [threading.Thread(target=draw, args=(out,)) for out in seen]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    ids = [i for out in seen for i in out]
    assert len(set(ids)) == len(ids) == 40_000
    assert all(HEX32.fullmatch(i) and i != "0" * 32 for i in ids)


@pytest.mark.skipif(not hasattr(os, "fork"), reason="needs fork")
def test_a_forked_child_never_hands_out_its_parents_ids() -> None:
    new_id()  # the parent now holds a batch
    read, write = os.pipe()
    pid = os.fork()
    if pid == 0:  # pragma: no cover - the child
        os.write(write, "".join(new_id() for _ in range(200)).encode())
        os._exit(0)
    os.close(write)
    os.waitpid(pid, 0)
    with os.fdopen(read) as f:
        text = f.read()
    child = {text[i : i + 32] for i in range(0, len(text), 32)}
    parent = {new_id() for _ in range(200)}
    assert len(child) == 200 and not child & parent


def test_emit_stamps_a_fresh_id_and_keeps_a_given_one() -> None:
    got: list[dict[str, object]] = []

    class ListSink:
        def emit(self, event: object) -> None:
            got.append(dict(event))  # type: ignore[call-overload]

    previous = events.set_sink(ListSink())
    try:
        events.emit({"kind": "hop"})
        events.emit({"kind": "hop"})
        events.emit({"kind": "hop", "event_id": "given"})
    finally:
        events.set_sink(previous)
    first, second, third = (e["event_id"] for e in got)
    assert isinstance(first, str) and HEX32.fullmatch(first) and first != second
    assert third == "given"
