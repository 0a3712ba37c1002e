"""Celery adapter: the envelope rides in every task message and is bound while the task runs.

One call per app::

    from ownership_ctx.celery import install
    install(app, policy=Policy(rules=(Rule("reports.*", mode="stamp", defaults={...}),)))

or, from a worker's own configuration (also reaches prefork children)::

    from ownership_ctx.celery import install_on_worker
    install_on_worker(policy=POLICY)

Publish (``before_task_publish``): the current envelope is written under `QUEUE_HEADER` at the
top level of the message headers and mirrored into the nested ``headers["headers"]`` dict,
which is what Celery copies into re-published messages (``retry()``, autoretry, retries after a
lost worker). A message that already carries an envelope keeps it: re-enqueues done by Celery
keep the original owner. While an envelope is bound, one the caller set
(``apply_async(headers={"ownership_envelope": ...})``) is kept only if it verifies under the
policy (see `Gate.keeps_callers`); else the bound one is sent. With nothing bound, a unit whose
policy rule stamps (beat schedules) gets an envelope from configuration; anything else is marked
unattributed, never given someone else's envelope.

Worker: Celery builds one tracer function per task (``celery.app.trace.build_tracer``) that
runs prerun signals, the body, the success / retry / failure handling with their log lines,
postrun signals and cleanup. We wrap that whole function: the envelope is bound before the
first of those and reset after the last, so Celery's own retry and failure lines carry it too.
(Resetting in ``task_postrun`` leaves out every receiver that runs after ours and anything
Celery logs after postrun.) A refused unit never enters the tracer: the body does not run and
Celery handles the refusal like a task that raised ``Reject(requeue=False)``: result FAILURE,
``link_error`` errbacks, message rejected (dead-lettered where the broker is set up for it).

Budgets (`ownership_ctx.budgets.install`): a publish for an owner over a hard limit raises
`BudgetExceeded` before anything is sent, and a worker refuses such a task like a rejected one
(``TaskRefused``, never retried; ``observe`` mode only counts).

Eager mode (``task_always_eager``, ``Task.apply``) has no message: the caller's envelope goes
through the same inject -> enter round trip, so an eager task sees exactly the caller's envelope
and is held to the same policy as on a worker.
"""

from __future__ import annotations

import importlib
import logging
import threading
from collections.abc import Callable, Mapping, MutableMapping
from typing import TYPE_CHECKING, Any, Final

from . import events
from .budgets import state as budget_state
from .budgets.model import BudgetExceeded
from .codec import QUEUE_HEADER, TRACEPARENT_HEADER, decode_header
from .context import bind, current
from .envelope import Envelope
from .gate import Entry, Gate
from .hashing import Keys
from .policy import Policy

if TYPE_CHECKING:
    from celery import Celery

    #: Raised / stored when a task is refused (a ``celery.exceptions.Reject``; built lazily).
    TaskRefused: type[Exception]

__all__ = ["HOP", "NESTED_HEADERS", "CeleryHooks", "TaskRefused", "install", "install_on_worker"]

HOP: Final = "celery"
#: The nested headers dict that Celery copies into re-published messages (see module doc).
NESTED_HEADERS: Final = "headers"
_PUBLISH_HOP: Final = "celery_publish"

logger = logging.getLogger("ownership_ctx.celery")

#: Celery's tracer: ``tracer(task_id, args, kwargs, request) -> trace_ok_t``.
Tracer = Callable[..., Any]

_lock = threading.Lock()
#: Installed hooks by app, the most recent install last (apps live as long as the process).
_hooks: dict[Any, CeleryHooks] = {}


def __getattr__(name: str) -> Any:
    # `TaskRefused` subclasses Celery's `Reject`, so it is built on first use: importing this
    # module must not import Celery. Pickle and result backends find it here by name.
    if name == "TaskRefused":
        return _task_refused()
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")


def _task_refused() -> type[Exception]:
    global _TaskRefused
    if _TaskRefused is None:
        from celery.exceptions import Reject

        class TaskRefused(Reject):  # type: ignore[misc]
            """A task refused under ``enforce``: a ``Reject`` that is never requeued.

            Stored as the task's FAILURE result; it names fields and rules, never values.
            """

            def __init__(self, reason: str | None = None, requeue: bool = False) -> None:
                super().__init__(reason, False)

            def __str__(self) -> str:
                return str(self.reason)

        TaskRefused.__module__ = __name__
        TaskRefused.__qualname__ = "TaskRefused"
        _TaskRefused = TaskRefused
    return _TaskRefused


_TaskRefused: type[Exception] | None = None


class CeleryHooks:
    """The hooks installed on one app. ``gate`` holds the policy and keys of both sides."""

    __slots__ = ("app", "gate")

    def __init__(self, app: Any, gate: Gate) -> None:
        self.app = app
        self.gate = gate

    # -- publish ---------------------------------------------------------------------------

    def publish(self, headers: MutableMapping[str, Any], task_name: str) -> None:
        """Write the envelope into a message's headers (top level and nested)."""
        nested = headers.get(NESTED_HEADERS)
        value = headers.get(QUEUE_HEADER)
        if not isinstance(value, str) and isinstance(nested, Mapping):
            value = nested.get(QUEUE_HEADER, value)
        if (
            value is not None
            and current() is not None
            and not self.gate.keeps_callers(value, hop=HOP, unit=task_name)
        ):
            # A caller's header (apply_async(headers=...)) does not replace the envelope
            # bound here unless it verifies: garbage or an unsigned "other team" is refused.
            value = None
        if not isinstance(value, str):
            carrier: dict[str, str] = {}
            if current() is None and self.gate.policy.for_unit(task_name).mode == "stamp":
                # A publish with no request behind it (beat): ownership from configuration.
                with self.gate.enter({}, hop=_PUBLISH_HOP, unit=task_name, header=QUEUE_HEADER):
                    self.gate.inject(carrier, header=QUEUE_HEADER)
            else:
                self.gate.inject(carrier, header=QUEUE_HEADER)
            value = carrier[QUEUE_HEADER]
        headers[QUEUE_HEADER] = value
        if nested is None or isinstance(nested, Mapping):
            # A copy: the nested dict may be shared with a request or a signature's options.
            headers[NESTED_HEADERS] = {**(nested or {}), QUEUE_HEADER: value}

    # -- worker ----------------------------------------------------------------------------

    def admit(self, name: str, request: Mapping[str, Any] | None, eager: bool = False) -> Entry:
        """Enter the unit of work of one task execution (bound until `Entry.close`)."""
        if eager:
            carrier: dict[str, str] = {}
            self.gate.inject(carrier, header=QUEUE_HEADER)
        else:
            carrier = _carrier(name, request)
        return self.gate.enter(carrier, hop=HOP, unit=name, header=QUEUE_HEADER, native=request)

    def wrap(
        self, name: str, tracer: Tracer, *, eager: bool = False, raises: bool = False
    ) -> Tracer:
        """Wrap Celery's tracer for task ``name`` (``raises``: eager with propagation)."""
        if getattr(tracer, "_ownership_ctx", False):
            return tracer
        admit = self.admit

        def traced(uuid: str, args: Any, kwargs: Any, request: Any = None) -> Any:
            entry = admit(name, request, eager)
            try:
                if entry.envelope is None:
                    return _refuse(entry, name, uuid, raises)
                budgets = budget_state.active  # ownership_ctx.budgets.install; else None
                if budgets is not None:
                    refusal = budgets.check(entry.envelope, "queue")
                    if refusal is not None:
                        return _refuse(entry, name, uuid, raises, refusal.detail())
                return tracer(uuid, args, kwargs, request)
            finally:
                entry.close()

        traced._ownership_ctx = True  # type: ignore[attr-defined]
        traced.__wrapped__ = tracer  # type: ignore[attr-defined]
        return traced

    def uninstall(self) -> None:
        """Stop applying these hooks (tracers already built stay wrapped but pass through)."""
        with _lock:
            if _hooks.get(self.app) is self:
                del _hooks[self.app]
            if not _hooks:
                from celery import signals

                signals.before_task_publish.disconnect(dispatch_uid=_DISPATCH_UID)


def _carrier(name: str, request: Mapping[str, Any] | None) -> dict[str, str]:
    if not request:
        return {}
    value = request.get(QUEUE_HEADER)
    if value is None:
        # Some paths keep only the nested dict (celery#4875): read it there too.
        nested = request.get(NESTED_HEADERS)
        if isinstance(nested, Mapping):
            value = nested.get(QUEUE_HEADER)
    carrier: dict[str, str] = {}
    if isinstance(value, str):
        carrier[QUEUE_HEADER] = value
    elif value is not None:
        logger.warning(
            "ownership envelope header of task %r is a %s, not text; treated as absent",
            name,
            type(value).__name__,
        )
    traceparent = request.get(TRACEPARENT_HEADER)
    if isinstance(traceparent, str):
        carrier[TRACEPARENT_HEADER] = traceparent  # joins OpenTelemetry's trace when we have none
    return carrier


def _refuse(
    entry: Entry, name: str, uuid: str, raises: bool, over_budget: str | None = None
) -> Any:
    from celery import states
    from celery.app.trace import ExceptionInfo, TraceInfo, trace_ok_t

    if over_budget is not None:
        reason = "over budget: " + over_budget
    else:
        reason = "ownership envelope rejected: " + ("; ".join(entry.reasons()) or "none received")
    logger.error(
        "Task %s[%s] refused, its body did not run: %s",
        name,
        uuid,
        reason,
        extra={"ownership_outcome": entry.outcome, "ownership_hop": HOP},
    )
    exc = _task_refused()(reason)
    if raises:
        raise exc
    try:
        raise exc
    except Exception:
        einfo = ExceptionInfo(internal=True)
    # What the tracer returns for a failed task: the worker then treats it as Reject(requeue=False).
    return trace_ok_t(einfo, TraceInfo(states.FAILURE, exc), 0.0, None)


def _guard_publish(app: Any) -> None:
    """Budgets: ``app.send_task`` (every publish: ``delay``, ``apply_async``, canvases,
    ``retry``) raises `BudgetExceeded` for an owner over a hard limit, before anything is
    sent. (``before_task_publish`` cannot refuse: Celery logs and swallows its errors.)"""
    send_task = app.send_task
    if getattr(send_task, "_ownership_ctx", False):
        return

    def guarded_send_task(*args: Any, **kwargs: Any) -> Any:
        budgets = budget_state.active
        if budgets is not None:
            envelope = current()
            refusal = budgets.check(envelope, "queue") if envelope is not None else None
            if refusal is not None:
                raise BudgetExceeded(refusal)
        return send_task(*args, **kwargs)

    guarded_send_task._ownership_ctx = True  # type: ignore[attr-defined]
    app.send_task = guarded_send_task


def _hooks_for_task(task: Any) -> CeleryHooks | None:
    app = getattr(task, "_app", None)
    return _hooks.get(app) if app is not None else None


def _publisher(task_name: str) -> CeleryHooks | None:
    # before_task_publish does not say which app publishes. One installed app is the common
    # case; else the current app or the most recent install that knows the task, else the
    # current app, else the most recent install (every app's hooks write a correct envelope;
    # only keys and publish-time stamp rules differ).
    if len(_hooks) <= 1:
        return next(iter(_hooks.values()), None)
    from celery import current_app

    app = current_app._get_current_object()
    for candidate in (app, *reversed(_hooks)):
        hooks = _hooks.get(candidate)
        if hooks is not None and task_name in candidate._tasks:
            return hooks
    return _hooks.get(app) or next(reversed(_hooks.values()))


def _before_task_publish(
    sender: str | None = None, headers: MutableMapping[str, Any] | None = None, **_: Any
) -> None:
    if headers is None:  # protocol 1 messages have no headers to carry it
        return
    name = sender or headers.get("task") or ""
    hooks = _publisher(name)
    if hooks is not None:
        hooks.publish(headers, name)


_DISPATCH_UID: Final = "ownership_ctx.celery.before_task_publish"
_FLUSH_UID: Final = "ownership_ctx.celery.flush_events"


def _flush_events(**_: Any) -> None:
    events.flush()


def _patch_build_tracer() -> None:
    """Make every tracer Celery builds from now on go through `CeleryHooks.wrap`.

    Celery rebuilds tracers in the worker's consumer (solo and threads pools, on every
    consumer restart), in each prefork child, lazily, and per call in `Task.apply` (eager).
    """
    trace: Any = importlib.import_module("celery.app.trace")
    if getattr(trace.build_tracer, "_ownership_ctx", False):
        return
    original = trace.build_tracer

    def build_tracer(name: str, task: Any, *args: Any, **kwargs: Any) -> Any:
        tracer = original(name, task, *args, **kwargs)
        hooks = _hooks_for_task(task)
        if hooks is None:
            return tracer
        eager = bool(kwargs.get("eager", args[5] if len(args) > 5 else False))
        propagate = bool(kwargs.get("propagate", args[6] if len(args) > 6 else False))
        return hooks.wrap(name, tracer, eager=eager, raises=eager and propagate)

    build_tracer._ownership_ctx = True  # type: ignore[attr-defined]
    trace.build_tracer = build_tracer
    # The worker's consumer imported the name directly.
    consumer: Any = importlib.import_module("celery.worker.consumer.consumer")
    consumer.build_tracer = build_tracer


def _patch_worker_request() -> None:
    """Bind the envelope of the task a worker's main process is handling while it logs about it.

    With a prefork pool, a task whose child died (``WorkerLostError``) or ran past its hard
    time limit is handled in the parent, outside the tracer: ``Request.on_failure`` and
    ``Request.on_timeout`` log the lines an operator reads after a crash. They get the
    envelope the message carries (decoded and verified with the task's keys, no policy
    applied, no hop event: the unit of work was admitted in the child). Nothing is bound when
    the message carries no valid envelope or one is bound already.
    """
    request_module: Any = importlib.import_module("celery.worker.request")
    request_cls = request_module.Request
    if getattr(request_cls.on_failure, "_ownership_ctx", False):
        return

    def about_task(method: Callable[..., Any]) -> Callable[..., Any]:
        def handler(self: Any, *args: Any, **kwargs: Any) -> Any:
            envelope = None if current() is not None else _envelope_of_request(self)
            if envelope is None:
                return method(self, *args, **kwargs)
            with bind(envelope):
                return method(self, *args, **kwargs)

        handler._ownership_ctx = True  # type: ignore[attr-defined]
        handler.__wrapped__ = method  # type: ignore[attr-defined]
        return handler

    request_cls.on_failure = about_task(request_cls.on_failure)
    request_cls.on_timeout = about_task(request_cls.on_timeout)


def _envelope_of_request(request: Any) -> Envelope | None:
    """The valid envelope in a worker ``Request``'s message, else None (never raises)."""
    try:
        hooks = _hooks_for_task(request.task)
        if hooks is None:
            return None
        value = _carrier(request.name, request._request_dict).get(QUEUE_HEADER)
        envelope, problems = decode_header(value, hooks.gate.keys)
        return envelope if envelope is not None and not problems else None
    except Exception:  # a log line must never fail because of us
        return None


def install(app: Celery, *, policy: Policy | None = None, keys: Keys | None = None) -> CeleryHooks:
    """Carry the envelope through every message of ``app`` and bind it in its workers.

    ``policy`` is applied by the worker to each task by name (and at publish time for stamp
    rules, so that beat publishes carry ownership from configuration). ``keys`` sign on
    publish and verify in the worker (``Keys.from_env()`` when omitted). Idempotent per app:
    installing again replaces the policy and keys.
    """
    from celery import signals

    gate = Gate(policy, keys)
    with _lock:
        _patch_build_tracer()
        _patch_worker_request()
        _guard_publish(app)
        hooks = _hooks.pop(app, None)
        if hooks is None:
            hooks = CeleryHooks(app, gate)
        else:
            hooks.gate = gate
        _hooks[app] = hooks
        signals.before_task_publish.connect(
            _before_task_publish, weak=False, dispatch_uid=_DISPATCH_UID
        )
        # Prefork children leave with os._exit (no atexit): write their events first.
        signals.worker_process_shutdown.connect(_flush_events, weak=False, dispatch_uid=_FLUSH_UID)
        signals.worker_shutdown.connect(_flush_events, weak=False, dispatch_uid=_FLUSH_UID)
    # Tracers built before this call (a late install in a prefork child) are wrapped now.
    if app.finalized:
        for name, task in list(app.tasks.items()):
            tracer = getattr(task, "__trace__", None)
            if tracer is not None:
                task.__trace__ = hooks.wrap(name, tracer)
    return hooks


def install_on_worker(*, policy: Policy | None = None, keys: Keys | None = None) -> None:
    """Install on the app of the worker that starts in this process, and in each pool child.

    For a worker's configuration module when the app module is shared with code that must not
    install the hooks itself. Connects ``worker_init`` (the worker's main process, before it
    consumes) and ``worker_process_init`` (every prefork child, also when children are spawned
    rather than forked).
    """
    from celery import current_app, signals

    def on_worker_init(sender: Any = None, **_: Any) -> None:
        install(getattr(sender, "app", None) or current_app, policy=policy, keys=keys)

    def on_process_init(**_: Any) -> None:
        install(current_app._get_current_object(), policy=policy, keys=keys)

    uid = "ownership_ctx.celery.install_on_worker"
    signals.worker_init.connect(on_worker_init, weak=False, dispatch_uid=uid)
    signals.worker_process_init.connect(on_process_init, weak=False, dispatch_uid=uid)


#: What `log_envelope_on_worker_lines` appends to Celery's worker and task log formats.
WORKER_LOG_SUFFIX: Final = " [trace=%(trace_id)s owner=%(owner_team)s]"


def log_envelope_on_worker_lines(app: Celery, *, suffix: str = WORKER_LOG_SUFFIX) -> None:
    """Put the envelope (trace id and owner) on Celery's own worker log lines.

    Call it next to `install`, in the module the worker imports (``celery -A``)::

        install(app)
        log_envelope_on_worker_lines(app)

    Appends ``suffix`` to ``worker_log_format`` and ``worker_task_log_format`` and puts an
    `OwnershipLogFilter` on the handlers Celery sets up (``after_setup_logger`` /
    ``after_setup_task_logger``; prefork children inherit them), so lines logged inside a task,
    including Celery's "succeeded" / "raised" / "retry" lines, read ``[trace=4bf9… owner=search]``
    and lines outside any task ``[trace=- owner=-]``. ``suffix`` may name any envelope field
    (``%(workflow_id)s``, ``%(feature)s``, ``%(attribution)s``, ...); ``""`` adds the filter only,
    for your own formats. Idempotent.
    """
    from celery import signals

    from .logs import OwnershipLogFilter

    if suffix:
        for key in ("worker_log_format", "worker_task_log_format"):
            fmt = app.conf[key]
            if not fmt.endswith(suffix):
                app.conf[key] = fmt + suffix

    def add_filter(logger: logging.Logger | None = None, **_: Any) -> None:
        for handler in logger.handlers if logger is not None else ():
            if not any(isinstance(f, OwnershipLogFilter) for f in handler.filters):
                handler.addFilter(OwnershipLogFilter(default_value="-"))

    uid = "ownership_ctx.celery.log_envelope_on_worker_lines"
    signals.after_setup_logger.connect(add_filter, weak=False, dispatch_uid=uid)
    signals.after_setup_task_logger.connect(add_filter, weak=False, dispatch_uid=uid)
