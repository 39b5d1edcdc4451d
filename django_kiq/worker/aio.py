"""The event loop of a worker process: ``async def`` jobs run as tasks on one thread.

Owned by the manager, which starts it with its threads when any registered job is async and
``ASYNC_CONCURRENCY`` (``--async-concurrency``) is above 0, and stops it after its running jobs
drained or the shutdown deadline passed. Threads:

- ``kiq-async-loop`` runs the asyncio loop. The fetcher thread hands it the async jobs it
  fetched (:meth:`AsyncRunner.split` + :meth:`AsyncRunner.submit`); each becomes a task, at most
  ``concurrency`` at once (the rest wait in arrival order). A task asks the processor to admit the
  job (decode; cancelled or expired before it started; its :class:`CurrentJob`), awaits it
  under its time limit (``asyncio.timeout``), then has the processor run its chain over a replay
  of how it ended (:class:`Awaited`), which yields the same :class:`Outcome` a processor thread
  produces: retries, dead jobs, handlers, stats and logs are the processor's.
- ``kiq-async-settle`` hands each outcome to the manager (``Manager._finish``), which writes it
  to Redis and retries through outages: the loop never blocks on a settle.

So hundreds of I/O-bound jobs wait together on one thread instead of one thread each. The
guarantees are the thread jobs': a job stays in the process's in-progress list until its outcome
is written (the manager counts it among its running jobs, a shutdown waits for it and pushes it
back at the deadline, and a SIGKILLed process's jobs are recovered); the watchdog
(``worker/control.py``) sees it like a thread job, and cancelling it (``api.cancel``) or its
deadline cancels its task (:meth:`TaskJob.interrupt`), which ends as ``JobCancelled`` or
``JobTimeout``.

What differs, and why: server middleware is sync code that wraps a call; it cannot wrap an
await on the loop without blocking the loop for the job's duration. It runs right after the
await, around the replayed result or exception, so middleware that observes (logs, metrics,
error reporting, the retry decision) works unchanged, while state a middleware sets up before
calling the next one is not in place while an async job runs. Error and death handlers and
middleware run on the loop thread: keep them quick. An async job reaches the database with
``sync_to_async`` (the loop thread has no connection of its own, as in an ASGI view).
"""

from __future__ import annotations

import asyncio
import itertools
import logging
import math
import queue as queues
import threading
import time
from collections import deque
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

from .. import payload, registry
from ..conf import KiqSettings
from ..exceptions import JobCancelled, JobTimeout, MalformedPayload
from ..execution import CurrentJob, task_job
from .control import Control
from .processor import JobContext, Outcome, Processor

logger = logging.getLogger("django_kiq.worker")
STOP_WAIT = 2.0  # seconds for the loop to cancel its tasks at the stop
SHARE_WEIGHT = 0.5  # weight of the last fetched batch in the share of async jobs
MIN_SHARE = 0.01

#: The manager's end of a job: (running key, queue, outcome, seconds it ran).
Finish = Callable[[str, str, Outcome, float], None]


@dataclass(frozen=True, slots=True)
class Awaited:
    """How an awaited job ended: its result, or the exception it raised."""

    result: Any = None
    error: BaseException | None = None

    def replay(self) -> Any:
        """Return the result or raise the exception again (the processor's innermost call)."""
        if self.error is not None:
            raise self.error
        return self.result


class TaskJob(CurrentJob):
    """A :class:`CurrentJob` whose interruptions cancel an asyncio task.

    The watchdog calls :meth:`interrupt` from its own thread; the task is cancelled on the loop
    (``call_soon_threadsafe``) and :meth:`AsyncRunner._await` turns its ``CancelledError``
    into the exception delivered. Never bound to a thread: ``current_job()`` finds it through
    :data:`~django_kiq.execution.task_job`, a context variable of the task.
    """

    __slots__ = ("_loop", "_task")
    _loop: asyncio.AbstractEventLoop
    _task: asyncio.Task[Any]

    @classmethod
    def of(cls, current: CurrentJob, task: asyncio.Task[Any]) -> TaskJob:
        job = cls(jid=current.jid, name=current.name, queue=current.queue,
                  attempt=current.attempt, enqueued_at=current.enqueued_at,
                  deadline=current.deadline)
        job._loop = task.get_loop()
        job._task = task
        job.extras.update(current.extras)  # what Processor.begin wired: progress, batch
        return job

    def begin(self) -> None:
        with self._fence:
            self._active = True

    def finish(self) -> None:
        with self._fence:
            self._active = False

    def interrupt(self, exc_type: type[BaseException]) -> bool:
        with self._fence:
            if not self._active or self._delivered is not None:
                return False
            self._delivered = exc_type
            self._loop.call_soon_threadsafe(self._task.cancel)
            return True


class AsyncRunner:
    """The ``kiq-async-loop`` and ``kiq-async-settle`` threads of one worker process."""

    def __init__(self, *, processor: Processor, control: Control | None, concurrency: int):
        self.processor = processor
        self.control = control
        self.concurrency = concurrency
        self._loop = asyncio.new_event_loop()
        self._finish: Finish | None = None
        self._keys = itertools.count()
        self._outcomes: queues.SimpleQueue[tuple[str, str, Outcome, float] | None] = (
            queues.SimpleQueue())
        self._lock = threading.Lock()
        self._in_flight = 0  # submitted, outcome not yet handed to the manager
        self._share = 0.0  # recent share of async jobs among fetched ones (fetcher thread)
        # Loop thread only:
        self._active = 0
        self._waiting: deque[tuple[str, str, bytes]] = deque()
        self._tasks: set[asyncio.Task[None]] = set()
        self._stopping = False
        self._threads: list[threading.Thread] = []

    # -- lifecycle (the manager's thread) ------------------------------------------------------

    def start(self, finish: Finish) -> None:
        self._finish = finish
        for name, target in (("kiq-async-loop", self._run_loop),
                             ("kiq-async-settle", self._settle_loop)):
            thread = threading.Thread(target=target, name=name, daemon=True)
            thread.start()
            self._threads.append(thread)

    def stop(self) -> None:
        """Cancel the tasks still running (the manager pushes their jobs back), stop the loop,
        and hand over the outcomes already produced before returning."""
        if not self._threads:
            return
        self._stopping = True
        try:
            asyncio.run_coroutine_threadsafe(self._cancel_all(), self._loop).result(STOP_WAIT)
        except Exception:  # noqa: BLE001 - a task that ignores cancellation: leave it behind
            logger.warning("async jobs did not stop within %.0fs; leaving them", STOP_WAIT)
        self._loop.call_soon_threadsafe(self._loop.stop)
        self._outcomes.put(None)
        for thread in self._threads:
            thread.join(timeout=STOP_WAIT)

    async def _cancel_all(self) -> None:
        self._waiting.clear()
        tasks = list(self._tasks)
        for task in tasks:
            task.cancel()
        await asyncio.gather(*tasks, return_exceptions=True)

    # -- the fetcher's side --------------------------------------------------------------------

    def split(self, jobs: list[tuple[str, bytes]],
              ) -> tuple[list[tuple[str, bytes]], list[tuple[str, bytes]]]:
        """(async jobs, the others) among fetched (queue, payload) pairs, in order."""
        mine: list[tuple[str, bytes]] = []
        others: list[tuple[str, bytes]] = []
        for job in jobs:
            (mine if _is_async(job[1]) else others).append(job)
        if jobs:
            self._share += (len(mine) / len(jobs) - self._share) * SHARE_WEIGHT
        return mine, others

    def submit(self, queue: str, raw: bytes) -> str:
        """Start (or line up) one async job; returns its key among the manager's running jobs."""
        key = f"kiq-async-{next(self._keys)}"
        with self._lock:
            self._in_flight += 1
        self._loop.call_soon_threadsafe(self._admit, key, queue, raw)
        return key

    def room(self) -> int:
        """Jobs the fetcher may hold beyond its threads' share.

        The async jobs in flight (counted among the manager's running jobs, yet holding no
        thread), plus the free async slots scaled by the recent share of async jobs among
        fetched ones: a queue of sync jobs is not fetched 500 at a time into a worker whose
        threads would leave them waiting, a queue of async jobs fills the loop in a few passes.
        """
        with self._lock:
            in_flight = self._in_flight
        share = self._share
        if share < MIN_SHARE:
            return in_flight
        return in_flight + math.ceil(share * max(0, self.concurrency - in_flight))

    # -- the loop thread -----------------------------------------------------------------------

    def _run_loop(self) -> None:
        asyncio.set_event_loop(self._loop)
        try:
            self._loop.run_forever()
        finally:
            self._loop.run_until_complete(self._loop.shutdown_asyncgens())
            self._loop.close()

    def _admit(self, key: str, queue: str, raw: bytes) -> None:
        if self._stopping:
            return  # in the manager's running jobs: pushed back with them
        if self._active >= self.concurrency:
            self._waiting.append((key, queue, raw))
            return
        self._active += 1
        task = self._loop.create_task(self._run(key, queue, raw), name=key)
        self._tasks.add(task)
        task.add_done_callback(self._ended)

    def _ended(self, task: asyncio.Task[None]) -> None:
        self._tasks.discard(task)
        self._active -= 1
        if self._waiting and not self._stopping:
            self._admit(*self._waiting.popleft())

    async def _run(self, key: str, queue: str, raw: bytes) -> None:
        started = time.perf_counter()
        try:
            outcome = await self._execute(key, queue, raw)
        except BaseException as exc:  # noqa: BLE001 - the job still gets an outcome
            if self._stopping and isinstance(exc, asyncio.CancelledError):
                raise  # cut off by the stop: the manager pushes it back
            logger.exception("could not run or record the outcome of an async job on %s; "
                             "moving it to dead", queue)
            outcome = self.processor.last_resort(queue, raw, exc)
        self._outcomes.put((key, queue, outcome, time.perf_counter() - started))

    async def _execute(self, key: str, queue: str, raw: bytes) -> Outcome:
        admitted = self.processor.admit(queue, raw, key)
        if isinstance(admitted, JobContext):
            if self.processor.asks_workflow(admitted.job):
                # Before it runs: its result reads "running", current_job().progress() and
                # .batch are wired. The record's write is a Redis round trip: off the loop.
                await asyncio.to_thread(self.processor.begin, admitted)
            # Not registered here after all (the fetcher saw it async): the chain says so.
            admitted.awaited = (Awaited() if admitted.definition is None
                                else await self._await(admitted))
        return self.processor.resolve(admitted, raw)

    async def _await(self, ctx: JobContext) -> Awaited:
        """Run the job under its time limit; how it ended (never raises but at the stop)."""
        assert ctx.current is not None and ctx.definition is not None
        task = asyncio.current_task()
        assert task is not None
        current = ctx.current = TaskJob.of(ctx.current, task)
        token = task_job.set(current)
        current.begin()
        if self.control is not None:
            self.control.track(ctx.thread, current)
        timer = asyncio.timeout(current.remaining())
        try:
            async with timer:
                result = await ctx.definition.func(*ctx.job["args"],
                                                   **(ctx.job.get("kwargs") or {}))
            return Awaited(result=result)
        except asyncio.CancelledError as exc:
            delivered = current.interrupted_with
            if delivered is None:
                raise  # the stop
            task.uncancel()
            error = JobCancelled() if delivered is JobCancelled else JobTimeout()
            return Awaited(error=error.with_traceback(exc.__traceback__))
        except TimeoutError as exc:
            if timer.expired():
                return Awaited(error=JobTimeout().with_traceback(exc.__traceback__))
            return Awaited(error=exc)
        except BaseException as exc:  # noqa: BLE001 - SystemExit too: a failure like any
            return Awaited(error=exc)
        finally:
            current.finish()
            if self.control is not None:
                self.control.untrack(ctx.thread)
            task_job.reset(token)

    # -- the settle thread ---------------------------------------------------------------------

    def _settle_loop(self) -> None:
        assert self._finish is not None
        while True:
            item = self._outcomes.get()
            if item is None:
                return
            try:
                self._finish(*item)
            except Exception:  # noqa: BLE001 - the thread lives on; the job stays in progress
                logger.exception("could not hand over an async job's outcome")
            finally:
                with self._lock:
                    self._in_flight -= 1


def _is_async(raw: bytes) -> bool:
    try:
        definition = registry.get(payload.decode(raw)["class"])
    except (MalformedPayload, KeyError, TypeError):
        return False  # a processor thread turns it into its outcome
    return definition is not None and definition.is_async


def runner_for(settings: KiqSettings, *, processor: Processor,
               control: Control | None) -> AsyncRunner | None:
    """The runner a worker needs: None when no registered job is async or
    ``ASYNC_CONCURRENCY`` is 0 (async jobs then run on processor threads, one loop each)."""
    if settings.async_concurrency < 1:
        return None
    if not any(d.is_async for d in registry.all_definitions()):
        return None
    return AsyncRunner(processor=processor, control=control,
                       concurrency=settings.async_concurrency)
