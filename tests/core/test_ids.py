"""Event and trace ids: 32 lowercase hex, never all zero, never repeated (across threads and
a fork), drawn in batches; event ids start with their emit time in milliseconds."""

from __future__ import annotations

import os
import re
import threading
import time
from collections.abc import Callable

import pytest

from ownership_ctx import events
from ownership_ctx.ids import new_event_id, new_id

HEX32 = re.compile(r"[0-9a-f]{32}")


@pytest.mark.parametrize("mint", [new_id, new_event_id], ids=["trace", "event"])
def test_ids_are_32_hex_and_unique_across_threads(mint: Callable[[], str]) -> None:
    seen: list[list[str]] = [[] for _ in range(8)]

    def draw(out: list[str]) -> None:
        out.extend(mint() for _ in range(5000))

    threads = [threading.Thread(target=draw, args=(out,)) for out in seen]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    ids = [i for out in seen for i in out]
    assert len(set(ids)) == len(ids) == 40_000
    assert all(HEX32.fullmatch(i) and i != "0" * 32 for i in ids)


@pytest.mark.skipif(not hasattr(os, "fork"), reason="needs fork")
@pytest.mark.parametrize("mint", [new_id, new_event_id], ids=["trace", "event"])
def test_a_forked_child_never_hands_out_its_parents_ids(mint: Callable[[], str]) -> None:
    mint()  # the parent now holds a batch
    read, write = os.pipe()
    pid = os.fork()
    if pid == 0:  # pragma: no cover - the child
        os.write(write, "".join(mint() for _ in range(200)).encode())
        os._exit(0)
    os.close(write)
    os.waitpid(pid, 0)
    with os.fdopen(read) as f:
        text = f.read()
    child = {text[i : i + 32] for i in range(0, len(text), 32)}
    parent = {mint() for _ in range(200)}
    assert len(child) == 200 and not child & parent


def test_emit_stamps_a_fresh_time_ordered_id_and_keeps_a_given_one() -> None:
    got: list[dict[str, object]] = []

    class ListSink:
        def emit(self, event: object) -> None:
            got.append(dict(event))  # type: ignore[call-overload]

    previous = events.set_sink(ListSink())
    before = int(time.time() * 1000)
    try:
        events.emit({"kind": "hop"})
        events.emit({"kind": "hop"})
        events.emit({"kind": "hop", "event_id": "given"})
    finally:
        events.set_sink(previous)
    first, second, third = (e["event_id"] for e in got)
    assert isinstance(first, str) and HEX32.fullmatch(first) and first != second
    assert third == "given"
    assert before <= int(first[:12], 16) <= int(time.time() * 1000)


def test_event_ids_start_with_their_time_in_milliseconds_and_sort_by_it() -> None:
    before = int(time.time() * 1000)
    ids = [new_event_id() for _ in range(3)]
    time.sleep(0.003)
    later = new_event_id()
    after = int(time.time() * 1000)
    stamps = [int(i[:12], 16) for i in (*ids, later)]
    assert all(before <= s <= after for s in stamps)
    # Ids minted later sort after (what keeps the store's id index growing at its end);
    # the 20 hex after the time are the random part.
    assert all(i < later for i in ids)
    assert len({i[12:] for i in ids}) == 3
