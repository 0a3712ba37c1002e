"""The context helpers and the log integrations."""

from __future__ import annotations

import asyncio
import contextlib
import io
import json
import logging
import threading
from concurrent.futures import ThreadPoolExecutor

import pytest
import structlog

from ownership_ctx import ContextThreadPoolExecutor, Envelope, bind, current, propagate
from ownership_ctx.logs import OwnershipLogFilter, add_ownership, ownership_processor

A = Envelope(trace_id="a" * 32, owner_team="team-a", workflow_id="wf-a", feature="f-a")
B = Envelope(trace_id="b" * 32, owner_team="team-b", workflow_id="wf-b", feature="f-b")


def test_bind_nests_and_restores() -> None:
    assert current() is None
    binding = bind(A)
    with binding:
        assert current() == A
        with bind(B):
            assert current() == B
            with binding:  # re-entrant use of one binding
                assert current() == A
            assert current() == B
        with bind(None):
            assert current() is None
        assert current() == A
    assert current() is None


def test_bind_decorates_sync_and_async_functions() -> None:
    @bind(A)
    def sync() -> Envelope | None:
        return current()

    @bind(B)
    async def coro() -> Envelope | None:
        await asyncio.sleep(0)
        return current()

    assert sync() == A and asyncio.run(coro()) == B
    assert current() is None


def test_plain_threads_and_pools_need_propagation() -> None:
    seen: list[Envelope | None] = []
    with bind(A):
        thread = threading.Thread(target=lambda: seen.append(current()))
        thread.start()
        thread.join()
        wrapped = threading.Thread(target=propagate(lambda: seen.append(current())))
        wrapped.start()
        wrapped.join()
        with ThreadPoolExecutor(1) as plain:
            seen.append(plain.submit(current).result())
        with ContextThreadPoolExecutor(2) as pool:
            seen.append(pool.submit(current).result())
    assert seen == [None, A, None, A]


def test_one_propagated_function_runs_concurrently_without_interference() -> None:
    barrier = threading.Barrier(4)

    def work() -> Envelope | None:
        barrier.wait(5)
        with bind(B):
            barrier.wait(5)
        return current()

    with bind(A):
        fn = propagate(work)
    with ThreadPoolExecutor(4) as pool:
        results = [f.result() for f in [pool.submit(fn) for _ in range(4)]]
    assert results == [A] * 4


def test_asyncio_paths_see_the_callers_envelope() -> None:
    async def main() -> list[Envelope | None]:
        loop = asyncio.get_running_loop()
        loop.set_default_executor(ContextThreadPoolExecutor(2))
        out: list[Envelope | None] = []

        async def child() -> Envelope | None:
            await asyncio.sleep(0)
            return current()

        with bind(A):
            task = asyncio.create_task(child())
            out.append(await asyncio.to_thread(current))
            out.append(await loop.run_in_executor(None, current))
            with ThreadPoolExecutor(1) as plain:
                out.append(await loop.run_in_executor(plain, propagate(current)))
        out.append(await task)  # created inside the binding: keeps it after the block ends
        out.append(current())
        return out

    assert asyncio.run(main()) == [A, A, A, A, None]


def render(processors: list[object]) -> list[dict[str, object]]:
    stream = io.StringIO()
    structlog.configure(
        processors=[*processors, structlog.processors.JSONRenderer()],  # type: ignore[list-item]
        logger_factory=structlog.PrintLoggerFactory(stream),
        cache_logger_on_first_use=False,
    )
    try:
        log = structlog.get_logger()
        log.info("outside")
        with bind(A.replace(extras={"cost_center": "cc-1"})):
            log.info("inside", owner_team="explicit-wins")
        return [json.loads(line) for line in stream.getvalue().splitlines()]
    finally:
        structlog.reset_defaults()


def test_structlog_processor_adds_fields_only_when_bound() -> None:
    outside, inside = render([add_ownership])
    assert outside == {"event": "outside"}
    assert inside == {
        "event": "inside",
        "owner_team": "explicit-wins",
        "trace_id": "a" * 32,
        "workflow_id": "wf-a",
        "feature": "f-a",
        "extra.cost_center": "cc-1",
        "attribution": "attributed",
    }


def test_structlog_processor_names_are_configurable() -> None:
    _, inside = render(
        [ownership_processor({"owner_team": "team", "trace_id": "trace"}, prefix="own.")]
    )
    assert inside["own.team"] == "team-a" and inside["own.trace"] == "a" * 32
    assert "trace_id" not in inside


@pytest.fixture
def captured() -> tuple[logging.Logger, io.StringIO]:
    stream = io.StringIO()
    handler = logging.StreamHandler(stream)
    handler.addFilter(OwnershipLogFilter(default_value="-"))
    handler.setFormatter(logging.Formatter("%(message)s team=%(owner_team)s trace=%(trace_id)s"))
    logger = logging.getLogger("test.ownership.filter")
    logger.addHandler(handler)
    logger.setLevel(logging.INFO)
    logger.propagate = False
    return logger, stream


def test_logging_filter_adds_record_attributes(
    captured: tuple[logging.Logger, io.StringIO],
) -> None:
    logger, stream = captured
    logger.info("outside")
    with bind(B):
        logger.info("inside")
    assert stream.getvalue().splitlines() == [
        "outside team=- trace=-",
        f"inside team=team-b trace={'b' * 32}",
    ]


def test_logging_filter_renames_and_never_drops() -> None:
    record = logging.LogRecord("x", logging.INFO, __file__, 1, "m", None, None)
    log_filter = OwnershipLogFilter(rename={"owner_team": "team"}, prefix="ownership_")
    assert log_filter.filter(record) is True
    assert record.ownership_team is None  # type: ignore[attr-defined]  # the default value
    record = logging.LogRecord("x", logging.INFO, __file__, 1, "m", None, None)
    with bind(A):
        assert log_filter.filter(record) is True
    assert record.ownership_team == "team-a"  # type: ignore[attr-defined]
    assert record.ownership_tenant is None  # type: ignore[attr-defined]  # A has no tenant


def test_logging_filter_defaults_let_a_format_name_its_fields_anywhere() -> None:
    stream = io.StringIO()
    handler = logging.StreamHandler(stream)
    handler.addFilter(OwnershipLogFilter())  # default_value None, as asgi-correlation-id's
    handler.setFormatter(
        logging.Formatter("%(message)s trace=%(trace_id)s team=%(owner_team)s %(attribution)s")
    )
    logger = logging.getLogger("test.ownership.defaults")
    logger.addHandler(handler)
    logger.propagate = False
    logger.setLevel(logging.INFO)
    errors = io.StringIO()
    with contextlib.redirect_stderr(errors):
        logger.info("outside")
        with bind(A):
            logger.info("inside")
    assert errors.getvalue() == ""  # no "--- Logging error ---"
    assert stream.getvalue().splitlines() == [
        "outside trace=None team=None None",
        f"inside trace={'a' * 32} team=team-a attributed",
    ]
    # What a record already carries (extra=) is kept.
    record = logging.LogRecord("x", logging.INFO, __file__, 1, "m", None, None)
    record.owner_team = "given"
    assert OwnershipLogFilter(default_value="-").filter(record) is True
    assert (record.owner_team, record.trace_id) == ("given", "-")  # type: ignore[attr-defined]
