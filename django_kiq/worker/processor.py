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
import logging
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

from django.db import close_old_connections
from django.utils.module_loading import import_string

from .. import payload, registry, retry
from ..conf import KiqSettings
from ..exceptions import MalformedPayload, UnknownJob
from ..middleware import build_chain
from ..stats import Counters
from . import database

logger = logging.getLogger("django_kiq.job")


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


@dataclass(frozen=True, slots=True, kw_only=True)
class Outcome:
    """What to do with the job's in-progress entry: "done", "retry", "dead" or "discard"."""

    kind: str
    raw: bytes
    new: bytes = b""
    queue: str = ""
    at: float = 0.0


class Processor:
    def __init__(self, *, settings: KiqSettings, counters: Counters,
                 now: Callable[[], float] = time.time):
        self.settings = settings
        self.counters = counters
        self.now = now
        self.error_handlers = [import_string(p) for p in settings.error_handlers]
        self.death_handlers = [import_string(p) for p in settings.death_handlers]
        self.chain = build_chain(settings.server_middleware, self._call,
                                 builtins=[self._log, self._stats, self._retry])

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
        try:
            job = payload.decode(raw)
        except MalformedPayload as exc:
            return self._malformed(queue, raw, str(exc))
        ctx = JobContext(raw=raw, queue=queue, job=job, thread=thread,
                         definition=registry.get(job["class"]))
        _close_old_connections()
        depths = database.atomic_depths()
        try:
            self.chain(ctx)
        except BaseException as exc:  # noqa: BLE001 - SystemExit too: a failure like any
            if ctx.decision is None:  # raised outside the retry middleware's reach
                ctx.decision = self._decide(ctx, exc)
            return self._outcome(ctx)
        finally:
            database.end_open_transactions(depths, jid=ctx.jid, name=ctx.display_name)
            _close_old_connections()
        return Outcome(kind="done", raw=raw)

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
        if d.kind == "retry":
            return Outcome(kind="retry", raw=ctx.raw, new=payload.encode(d.job), at=d.at)
        if d.kind == "dead":
            return Outcome(kind="dead", raw=ctx.raw, new=payload.encode(d.job), at=self.now())
        return Outcome(kind="discard", raw=ctx.raw)

    # -- the innermost call --------------------------------------------------------------------

    def _call(self, ctx: JobContext) -> Any:
        if ctx.definition is None:
            raise UnknownJob(unknown_job_message(ctx.name))
        func = ctx.definition.func
        kwargs = ctx.job.get("kwargs") or {}
        result = func(*ctx.job["args"], **kwargs)
        if ctx.definition.is_async:
            result = asyncio.run(result)
        return result

    # -- built-in middleware -------------------------------------------------------------------

    def _log(self, call_next: Callable) -> Callable:
        def log(ctx: JobContext) -> Any:
            verbose = logger.isEnabledFor(logging.INFO)
            if verbose:
                logger.info("start jid=%s job=%s queue=%s", ctx.jid, ctx.display_name, ctx.queue)
            try:
                result = call_next(ctx)
            except BaseException as exc:  # noqa: BLE001 - logged, then re-raised
                logger.warning("fail jid=%s job=%s elapsed=%.3fs error=%s: %s", ctx.jid,
                               ctx.display_name, time.monotonic() - ctx.started,
                               type(exc).__name__, exc)
                raise
            if verbose:
                logger.info("done jid=%s job=%s elapsed=%.3fs", ctx.jid, ctx.display_name,
                            time.monotonic() - ctx.started)
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
                self.counters.record(ctx.display_name, time.monotonic() - ctx.started, failed)
        return stats

    def _retry(self, call_next: Callable) -> Callable:
        def retry_mw(ctx: JobContext) -> Any:
            try:
                return call_next(ctx)
            except BaseException as exc:  # noqa: BLE001 - SystemExit is a job's failure too
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


def unknown_job_message(name: str) -> str:
    """Why ``name`` is unknown, and what to do (a job added after the worker started)."""
    return (f"no job is registered as {name!r} in this worker. A worker registers its jobs "
            "once, at start-up, from the jobs.py and tasks.py modules of installed apps and the "
            "modules listed in KIQ['IMPORTS']: if the job was added or renamed since, restart "
            "the worker (a future `kiq_worker --reload` will do it for you)")


def _close_old_connections() -> None:
    """Django's per-job connection hygiene; its failure is not the job's outcome."""
    try:
        close_old_connections()
    except Exception:  # noqa: BLE001 - e.g. a database gone away while closing
        logger.exception("closing old database connections failed")
