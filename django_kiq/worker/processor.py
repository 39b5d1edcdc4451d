"""Running one job: decode -> server middleware -> call -> outcome.

Runs on a processor thread of the manager. It makes no Redis call and holds no policy of its
own: the retry middleware asks ``retry.decide`` what a failure means, and the result is an
:class:`Outcome` the manager writes through the storage layer. Built-in middleware (logging,
stats, retries) sits outermost in the same chain as the user's ``KIQ["SERVER_MIDDLEWARE"]``, so
the chain is the single place execution is wrapped.

A job's failure is any exception it raises, ``SystemExit`` and ``KeyboardInterrupt`` included:
a worker's signal handlers only set flags, so no exception on a processor thread is ever the
shutdown. :meth:`Processor.process` never raises: whatever goes wrong while running a job or
deciding its fate (a hostile field, a middleware or handler bug, an outcome that cannot be
encoded), the job gets an outcome, dead with the reason if nothing else works, and the thread
lives on.
"""

from __future__ import annotations

import asyncio
import json
import logging
import sys
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any, NamedTuple

from django.db import close_old_connections
from django.utils.module_loading import import_string

from .. import limits, payload, registry, retry, unique, workflows
from ..conf import KiqSettings
from ..exceptions import JobTimeout, MalformedPayload, UnknownJob
from ..execution import CurrentJob
from ..middleware import build_chain
from ..observability import worker_hooks
from ..stats import Counters
from . import database, logsetup
from .control import Control

if TYPE_CHECKING:
    from .aio import Awaited

logger = logging.getLogger("django_kiq.job")
_INF = float("inf")


@dataclass(slots=True, kw_only=True)
class JobContext:
    """One execution, as server middleware sees it (``job`` is the decoded hash)."""

    raw: bytes
    queue: str
    job: dict[str, Any]
    definition: registry.JobDefinition | None
    thread: str
    started: float = field(default_factory=time.monotonic)
    decision: retry.Decision | None = None
    current: CurrentJob | None = None  # what current_job() returns inside the job
    value: Any = None  # what the job returned (its result record keeps it: docs/workflows.md)
    reschedule: Any = None  # limit_rules.Reschedule: the job met a full limiter (limits.py)
    # What begin() wired for the job's workflow (docs/workflows.md): "result" (it keeps its
    # result), "batch" (a batch job keeping none), or None (neither, or not begun yet).
    workflow: str | None = None
    # A "batch" job's success count (storage.BatchMark), which its done outcome carries
    # (workflows.success_mark); None for any other job.
    batch: Any = None
    # How an async job run on the worker's event loop ended (worker/aio.py's Awaited).
    awaited: Awaited | None = None

    @property
    def jid(self) -> str:
        return str(self.job.get("jid", "?"))

    @property
    def name(self) -> str:
        return str(self.job.get("class", "?"))

    @property
    def display_name(self) -> str:
        """What logs and metrics call the job: a wrapper's ``display_class`` when it has one."""
        return str(self.job.get("display_class") or self.name)


class Outcome(NamedTuple):
    """What to do with the job's in-progress entry (immutable; build it with keywords).

    ``kind``: "done", "retry", "dead", "discard", "requeue" (back to the head of its queue:
    an iterable job that checkpointed at a shutdown), "cancelled" or "expired" (both dropped).
    The cleanup fields say what ends with the job in the same settle step: its unique lock
    (``unlock``, held by ``jid``), its iterable checkpoint, a counter. A "done" outcome with a
    cleanup is settled with the others of the fetcher's next pass (worker/manager.py), like the
    acknowledgements; any other outcome that needs settling is settled at once.

    A NamedTuple rather than a frozen dataclass: one is built per job, and a tuple builds in
    a third of the time (0.4 against 1.4 µs with nine fields).
    """

    kind: str
    raw: bytes
    new: bytes = b""
    queue: str = ""
    at: float = 0.0
    unlock: str = ""
    jid: str = ""
    drop_cursor: bool = False
    count: str = ""  # type: ignore[assignment]  # shadows tuple.count, never called on it
    # Workflows (docs/workflows.md), None unless the job asked: its result record and its
    # batch's count, written in the same settle step (storage.ResultWrite / BatchMark).
    result: Any = None
    batch: Any = None

    @property
    def needs_settle(self) -> bool:
        return self.kind != "done" or bool(self.unlock or self.drop_cursor) or (
            self.result is not None or self.batch is not None)


class Processor:
    def __init__(self, *, settings: KiqSettings, counters: Counters,
                 now: Callable[[], float] = time.time, control: Control | None = None,
                 stopping: Callable[[], bool] = lambda: False):
        self.settings = settings
        self.counters = counters
        self.now = now
        self.control = control  # None outside a worker (test modes): no watchdog, no Redis
        self._fence = control.fence if control is not None else threading.Lock
        self.stopping = stopping  # True once the worker is stopping (iterable jobs yield)
        self.error_handlers = [import_string(p) for p in settings.error_handlers]
        self.death_handlers = [import_string(p) for p in settings.death_handlers]
        hooks = worker_hooks(settings)  # tracing, metrics: none unless a setting asks
        self.ended_hooks = hooks.ended
        self.chain = build_chain(settings.server_middleware, self._call,
                                 builtins=[*hooks.middleware, self._log, self._stats, self._retry,
                                           limits.job_middleware])

    # -- entry point ---------------------------------------------------------------------------

    def process(self, queue: str, raw: bytes, thread: str) -> Outcome:
        """Run one job; always returns its outcome, never raises."""
        try:
            return self._process(queue, raw, thread)
        except BaseException as exc:  # noqa: BLE001 - last resort: the thread must live on
            logger.exception("could not run or record the outcome of a job on %s; moving it "
                             "to dead", queue)
            return self.last_resort(queue, raw, exc)

    def _process(self, queue: str, raw: bytes, thread: str) -> Outcome:
        return self.resolve(self.admit(queue, raw, thread), raw)

    def resolve(self, admitted: JobContext | Outcome, raw: bytes) -> Outcome:
        """The outcome of what :meth:`admit` returned: the job run through the chain
        (:meth:`complete`; an async job awaited on the event loop has run already and only its
        end is replayed, see worker/aio.py), or the outcome of a job that did not start."""
        if isinstance(admitted, JobContext):
            if admitted.workflow is None and self.asks_workflow(admitted.job):
                self.begin(admitted)
            if admitted.workflow is None:
                return self.complete(admitted)
            return self._workflow(admitted)
        if admitted.kind in ("cancelled", "expired") and (
                b'"bid"' in raw or b'"kiq_result_ttl"' in raw or self.settings.result_ttl):
            return workflows.on_outcome(admitted, payload.decode(raw), None, self.settings)
        return admitted

    def asks_workflow(self, job: dict[str, Any]) -> bool:
        """The job keeps its result or is in a batch (docs/workflows.md): :meth:`begin` it,
        and its outcome goes through ``workflows.on_outcome``."""
        return "kiq_result_ttl" in job or "bid" in job or self.settings.result_ttl is not None

    def begin(self, ctx: JobContext) -> None:
        """Wire an admitted job's workflow before it runs: a job keeping its result is
        recorded as running (a Redis write) and ``current_job().progress()`` reports to its
        record; ``current_job().batch`` is its batch. A batch job keeping no result (most of
        a batch's drain) gets its success count built now, so a done outcome carries it as
        built (:meth:`_done`), with no second pass. :meth:`resolve` calls it for a job run on
        a processor thread; worker/aio.py before it awaits an async job."""
        assert ctx.current is not None  # admit() set it
        job = ctx.job
        if "kiq_result_ttl" in job or self.settings.result_ttl is not None:
            ctx.workflow = "result"
            store = self.control.store if self.control is not None else None
            workflows.on_start(ctx.current, job, self.settings, store,
                               touch=self.control.on_change if self.control is not None
                               else None)
        elif "bid" in job:
            ctx.workflow = "batch"
            ctx.current.extras["batch"] = job  # CurrentJob.batch reads its lineage, if asked
            ctx.batch = workflows.success_mark(job, self.settings)

    def _workflow(self, ctx: JobContext) -> Outcome:
        """A begun job's run: its result and batch count added to its outcome (a "batch"
        job's success carries its count already)."""
        outcome = self.complete(ctx)
        if ctx.workflow == "batch" and outcome.kind == "done":
            return outcome
        return workflows.on_outcome(outcome, ctx.job, ctx.value, self.settings)

    def admit(self, queue: str, raw: bytes, thread: str) -> JobContext | Outcome:
        """Decode a fetched job and check that it may start: its context, or the outcome of a
        job that does not run (malformed, or cancelled or expired before it started)."""
        try:
            job = payload.decode(raw)
        except MalformedPayload as exc:
            return self._malformed(queue, raw, str(exc))
        ctx = JobContext(raw=raw, queue=queue, job=job, thread=thread,
                         definition=registry.get(job["class"]))
        skipped = self._skip(ctx)
        if skipped is not None:
            return skipped
        ctx.current = self._current(ctx)
        return ctx

    def complete(self, ctx: JobContext) -> Outcome:
        """Run an admitted job through the chain; its outcome.

        An async job awaited on the worker's event loop (``ctx.awaited``, see worker/aio.py)
        has already run: the chain replays its end, on the loop thread, which holds no
        database connection to tidy.
        """
        assert ctx.current is not None
        threaded = ctx.awaited is None
        depths = None
        if threaded and database.may_be_open():  # skipped while the thread holds none
            _close_old_connections()
            depths = database.atomic_depths()
        try:
            ctx.value = self.chain(ctx)
        except BaseException as exc:  # noqa: BLE001 - SystemExit too: a failure like any
            if ctx.current.cancelled:
                return self._ended(ctx, "cancelled")
            if isinstance(exc, _Checkpointed):
                return Outcome(kind="requeue", raw=ctx.raw, queue=ctx.queue)
            if ctx.reschedule is not None:  # met a full limiter: back when it has room
                return Outcome(kind="reschedule", raw=ctx.raw, at=ctx.reschedule.at,
                               new=payload.encode(payload.for_schedule(ctx.reschedule.job)))
            if ctx.decision is None:  # raised outside the retry middleware's reach
                ctx.decision = self._decide(ctx, exc)
            return self._outcome(ctx)
        finally:
            if threaded and database.may_be_open():  # before, or opened by the job
                database.end_open_transactions(depths or {}, jid=ctx.jid, name=ctx.display_name)
                _close_old_connections()
                database.note_closed()
        if ctx.current.cancelled:  # it caught JobCancelled, cleaned up and returned
            return self._ended(ctx, "cancelled")
        return self._done(ctx)

    # -- execution control (docs/execution.md) -------------------------------------------------

    def _skip(self, ctx: JobContext) -> Outcome | None:
        """Cancelled or expired before it started: dropped, counted, its lock released."""
        if self.control is not None and self.control.is_cancelled(ctx.jid):
            logger.info("cancelled jid=%s job=%s: dropped before it started", ctx.jid,
                        ctx.display_name, extra=_fields(ctx, "cancelled"))
            return self._ended(ctx, "cancelled")
        expires_at = ctx.job.get("kiq_expires_at")
        if (isinstance(expires_at, (int, float)) and not isinstance(expires_at, bool)
                and self.now() > expires_at):
            logger.info("expired jid=%s job=%s: not started within its expiry (%.1fs late)",
                        ctx.jid, ctx.display_name, self.now() - expires_at,
                        extra=_fields(ctx, "expired"))
            return self._ended(ctx, "expired")
        if ctx.job.get("kiq_unique_until") == "start" and self.control is not None:
            lock = unique.lock_of(ctx.job)
            if lock:
                self.control.release_lock(lock, ctx.jid)
        return None

    def _current(self, ctx: JobContext) -> CurrentJob:
        job = ctx.job
        timeout = job.get("kiq_timeout", self.settings.default_timeout)
        if timeout is not None and not (type(timeout) in (int, float) and 0 < timeout < _INF):
            timeout = self.settings.default_timeout  # read from Redis: junk means the default
        count = job.get("retry_count")
        enqueued = job.get("enqueued_at")
        return CurrentJob(
            jid=ctx.jid, name=ctx.display_name, queue=ctx.queue,
            attempt=count + 2 if type(count) is int else 1,
            enqueued_at=enqueued if type(enqueued) in (int, float) else None,
            deadline=None if timeout is None else self.now() + timeout,
            fence=self._fence())

    def _ended(self, ctx: JobContext, kind: str) -> Outcome:
        """Cancelled or expired: dropped, counted in stat:<kind>, lock and checkpoint ended."""
        for hook in self.ended_hooks:  # metrics (observability), when on
            hook(ctx, kind)
        return Outcome(kind=kind, raw=ctx.raw, unlock=unique.lock_of(ctx.job), jid=ctx.jid,
                       drop_cursor=bool(ctx.job.get("kiq_iterable")), count=kind)

    def _done(self, ctx: JobContext) -> Outcome:
        job = ctx.job
        if "kiq_unique" not in job and "kiq_iterable" not in job:
            # Nothing ends with it: a batched ack (or a batched count in its batch).
            return Outcome(kind="done", raw=ctx.raw, batch=ctx.batch)
        lock = "" if job.get("kiq_unique_until") == "start" else unique.lock_of(job)
        return Outcome(kind="done", raw=ctx.raw, unlock=lock, jid=ctx.jid,
                       drop_cursor=bool(job.get("kiq_iterable")), batch=ctx.batch)

    def last_resort(self, queue: str, raw: bytes, exc: BaseException) -> Outcome:
        """Dead, with the reason: for a job whose failure could not be handled the normal way.

        Keeps the job hash (with error fields) when it can still be encoded, else a
        malformed-payload record holding the raw text (e.g. args with a lone surrogate, which
        decode from JSON but cannot be encoded again).
        """
        now = self.now()
        reason = (f"the worker could not handle this job's outcome ({retry.exception_path(exc)}: "
                  f"{retry.message_of(exc)}); moved to dead")
        try:
            job = payload.decode(raw)
            job.update({"failed_at": now, "error_class": "django_kiq.ProcessorError",
                        "error_message": reason})
            new = payload.encode(job)
        except BaseException:  # noqa: BLE001 - fall back to the raw text, which always encodes
            new = payload.encode(payload.malformed_record(raw, queue=queue, reason=reason,
                                                          now=now))
            return Outcome(kind="dead", raw=raw, new=new, at=now)
        try:  # dead like any other way: counted in its batch, its result failed
            return Outcome(kind="dead", raw=raw, new=new, at=now,
                           **workflows.dead_cleanups(job, self.settings))
        except Exception:  # noqa: BLE001 - a job hash the bookkeeping cannot read: dead alone
            return Outcome(kind="dead", raw=raw, new=new, at=now)

    def fail(self, queue: str, raw: bytes, exc: BaseException) -> Outcome:
        """The outcome of a job that failed outside a run here: a job stuck past its time limit
        in a process the supervisor replaced (worker/supervisor.py) fails with ``JobTimeout``
        through the same retry decision, handlers and workflow records as a run would."""
        try:
            job = payload.decode(raw)
        except MalformedPayload as error:
            return self._malformed(queue, raw, str(error))
        try:
            ctx = JobContext(raw=raw, queue=queue, job=job, thread="supervisor",
                             definition=registry.get(job["class"]))
            ctx.decision = self._decide(ctx, exc)
            outcome = self._outcome(ctx)
            if self.asks_workflow(job):
                outcome = workflows.on_outcome(outcome, job, None, self.settings)
            return outcome
        except BaseException as error:  # noqa: BLE001 - as process(): dead with the reason
            return self.last_resort(queue, raw, error)

    def idle(self) -> None:
        """Called by an idle processor thread about once a second: close this thread's
        database connections that are past ``CONN_MAX_AGE`` or unusable, as a job's end does."""
        _close_old_connections()

    def _malformed(self, queue: str, raw: bytes, reason: str) -> Outcome:
        logger.error("malformed payload on queue %s moved to dead: %s", queue, reason)
        record = payload.malformed_record(raw, queue=queue, reason=reason, now=self.now())
        return Outcome(kind="dead", raw=raw, new=payload.encode(record), at=self.now())

    def _outcome(self, ctx: JobContext) -> Outcome:
        d = ctx.decision
        assert d is not None  # set by the retry middleware, or by _decide
        if d.kind == "retry":  # keeps its unique lock and its checkpoint for the next attempt
            assert d.at is not None  # a retry has its time
            return Outcome(kind="retry", raw=ctx.raw, new=payload.encode(d.job), at=d.at)
        ended: dict[str, Any] = {"unlock": unique.lock_of(ctx.job), "jid": ctx.jid,
                 "drop_cursor": bool(ctx.job.get("kiq_iterable"))}
        if d.kind == "dead":
            return Outcome(kind="dead", raw=ctx.raw, new=payload.encode(d.job), at=self.now(),
                           **ended)
        return Outcome(kind="discard", raw=ctx.raw, **ended)

    # -- the innermost call --------------------------------------------------------------------

    def _call(self, ctx: JobContext) -> Any:
        if ctx.definition is None:
            raise UnknownJob(unknown_job_message(ctx.name))
        current = ctx.current
        # Test modes call the chain without the worker's context; an async job awaited on the
        # event loop was tracked there (worker/aio.py): here its end is only replayed.
        if current is None or ctx.awaited is not None:
            return self._invoke(ctx)
        current.begin()
        if self.control is not None:
            self.control.track(ctx.thread, current)
        try:
            return self._invoke(ctx)
        finally:
            current.finish()
            if self.control is not None:
                self.control.untrack(ctx.thread)

    def _invoke(self, ctx: JobContext) -> Any:
        if ctx.awaited is not None:
            return ctx.awaited.replay()
        assert ctx.definition is not None  # _call raised UnknownJob otherwise
        func = ctx.definition.func
        kwargs = ctx.job.get("kwargs") or {}
        if ctx.definition.options.iterable and self.control is not None:
            return self._iterate(ctx, func, kwargs)
        if ctx.definition.options.iterable:  # test modes: run it through, no checkpoints
            for _ in func(*ctx.job["args"], **kwargs):
                pass
            return None
        result = func(*ctx.job["args"], **kwargs)
        if ctx.definition.is_async:  # no event loop in this process (ASYNC_CONCURRENCY 0, tests)
            result = asyncio.run(result)
        return result

    def _iterate(self, ctx: JobContext, func: Callable, kwargs: dict[str, Any]) -> None:
        """Run an iterable job from its last checkpoint, saving its cursor as it goes.

        The cursor is saved at most every CHECKPOINT_INTERVAL seconds, and when the worker
        stops: the job then ends at an item boundary and is requeued, to resume from there.
        """
        assert self.control is not None and ctx.current is not None  # a worker's job (_invoke)
        saved = self.control.load_checkpoint(ctx.jid)
        cursor = json.loads(saved.cursor) if saved is not None else None
        done = saved.done if saved is not None else 0
        current = ctx.current
        current.extras.update(cursor=cursor, done=done)
        interval = self.settings.checkpoint_interval
        last_save = time.monotonic()
        items = func(*ctx.job["args"], **{**kwargs, "cursor": cursor})
        try:
            for cursor in items:
                done += 1
                current.extras.update(cursor=cursor, done=done)
                current.check()  # a safe point: cancelled or past the deadline stops here
                if self.stopping():
                    self.control.save_checkpoint(ctx.jid, cursor, done)
                    raise _Checkpointed()
                if time.monotonic() - last_save >= interval:
                    self.control.save_checkpoint(ctx.jid, cursor, done)
                    last_save = time.monotonic()
        finally:
            items.close()
        return None

    # -- built-in middleware -------------------------------------------------------------------

    def _log(self, call_next: Callable) -> Callable:
        # One line per finished job at INFO; the start line is DEBUG (issue 16: at INFO two
        # lines per job cost more than the job). worker/logsetup.py writes them off-thread.
        def log(ctx: JobContext) -> Any:
            verbose = logger.isEnabledFor(logging.INFO)
            if verbose and logger.isEnabledFor(logging.DEBUG):
                logger.debug("start jid=%s job=%s queue=%s", ctx.jid, ctx.display_name, ctx.queue,
                             extra=_fields(ctx, None))
            try:
                result = call_next(ctx)
            except BaseException as exc:  # noqa: BLE001 - logged, then re-raised
                if ctx.current is not None and ctx.current.cancelled:
                    elapsed = time.monotonic() - ctx.started
                    logger.info("cancelled jid=%s job=%s elapsed=%.3fs%s", ctx.jid,
                                ctx.display_name, elapsed, f" by {ctx.current.cancelled_by}"
                                if ctx.current.cancelled_by else "",
                                extra=_fields(ctx, "cancelled", elapsed))
                    raise
                if ctx.reschedule is not None:
                    raise  # met a full limiter: limits.py logged the reschedule
                elapsed = time.monotonic() - ctx.started
                logger.warning("fail jid=%s job=%s elapsed=%.3fs error=%s: %s", ctx.jid,
                               ctx.display_name, elapsed, type(exc).__name__, exc,
                               extra={**_fields(ctx, "fail", elapsed),
                                      "error": type(exc).__name__})
                raise
            if verbose:
                elapsed = time.monotonic() - ctx.started
                logsetup.job_line(logger, logging.INFO, "done jid=%s job=%s queue=%s elapsed=%.3fs",
                                  (ctx.jid, ctx.display_name, ctx.queue, elapsed),
                                  _fields(ctx, "done", elapsed))
            return result
        return log

    def _stats(self, call_next: Callable) -> Callable:
        def stats(ctx: JobContext) -> Any:
            failed = True
            try:
                result = call_next(ctx)
                failed = False
                return result
            finally:
                if ctx.current is not None and (ctx.current.cancelled or failed and isinstance(
                        sys.exc_info()[1], _Checkpointed)):
                    failed = False  # cancelled, or paused at a checkpoint: not a failure
                failed = failed and ctx.reschedule is None  # rescheduled by a full limiter
                self.counters.record(ctx.display_name, time.monotonic() - ctx.started, failed)
        return stats

    def _retry(self, call_next: Callable) -> Callable:
        def retry_mw(ctx: JobContext) -> Any:
            try:
                return call_next(ctx)
            except BaseException as exc:  # noqa: BLE001 - SystemExit is a job's failure too
                current = ctx.current
                if isinstance(exc, _Checkpointed) or (current is not None and current.cancelled):
                    raise  # not a failure: no retry decision, no handlers
                if ctx.reschedule is not None:
                    raise  # met a full limiter: rescheduled, not a failure (limits.py)
                if isinstance(exc, JobTimeout) and current is not None and not exc.args[1:]:
                    exc.args = (current.timeout_message(),)
                ctx.decision = self._decide(ctx, exc)
                raise
        return retry_mw

    def _decide(self, ctx: JobContext, exc: BaseException) -> retry.Decision:
        options = ctx.definition.options if ctx.definition else None
        decision = retry.decide(ctx.job, exc, default_max=self.settings.max_retries,
                                now=self.now(), retry_in=options.retry_in if options else None)
        self._run_handlers(self.error_handlers, exc, {"job": decision.job, "queue": ctx.queue})
        if decision.exhausted and decision.reason != "retry disabled":
            if options and options.on_exhausted and decision.reason.startswith("retries"):
                self._run_handlers([options.on_exhausted], decision.job, exc)
            self._run_handlers(self.death_handlers, decision.job, exc)
        return decision

    def _run_handlers(self, handlers: list[Callable], *args: Any) -> None:
        for handler in handlers:
            try:
                handler(*args)
            except BaseException:  # noqa: BLE001 - a handler's exit must not skip the outcome
                logger.exception("error/death handler %r raised; ignored", handler)


class _Checkpointed(BaseException):
    """An iterable job saved its cursor at a shutdown and stopped; it is requeued, not failed.

    A BaseException so that a job's ``except Exception`` around its loop cannot swallow it.
    """


def _fields(ctx: JobContext, outcome: str | None, elapsed: float | None = None) -> dict[str, Any]:
    """Structured fields of a job's log line (``extra=``: the JSON log format writes them)."""
    return {"jid": ctx.jid, "job": ctx.display_name, "queue": ctx.queue, "outcome": outcome,
            "elapsed": None if elapsed is None else round(elapsed, 6)}


def unknown_job_message(name: str) -> str:
    """Why ``name`` is unknown, and what to do (a job added after the worker started)."""
    return (f"no job is registered as {name!r} in this worker. A worker registers its jobs "
            "once, at start-up, from the jobs.py and tasks.py modules of installed apps and the "
            "modules listed in KIQ['IMPORTS']: if the job was added or renamed since, restart "
            "the worker, or run it with `kiq_worker --reload` while developing)")


def _close_old_connections() -> None:
    """Django's per-job connection hygiene; its failure is not the job's outcome."""
    try:
        close_old_connections()
    except Exception:  # noqa: BLE001 - e.g. a database gone away while closing
        logger.exception("closing old database connections failed")
