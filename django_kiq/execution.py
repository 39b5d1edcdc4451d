"""The running job's context (``current_job()``) and interrupting a job in its own thread.

A :class:`CurrentJob` is created by the processor for one execution, on the processor thread,
and bound to that thread for the duration of the call: the job's own code reads it through
``current_job()`` (None outside a job). The worker's ``kiq-watchdog`` thread holds the same
objects and calls :meth:`CurrentJob.interrupt` to raise :class:`JobTimeout` or
:class:`JobCancelled` inside the job's thread (``PyThreadState_SetAsyncExc``: delivered the next
time that thread runs Python bytecode; code blocked in C, such as a socket read or
``time.sleep``, sees it only when it returns to Python).

The delivery is fenced by a lock per processor thread: an exception is only ever set while the
job is inside its call, and :meth:`CurrentJob.finish` withdraws one that was set but not yet
raised, so it can never surface in the worker's own code after the job returned.
"""

from __future__ import annotations

import contextvars
import ctypes
import threading
import time
from typing import Any

from .exceptions import JobCancelled, JobTimeout

_local = threading.local()
#: The job of an asyncio task on the worker's event loop (worker/aio.py): many jobs share that
#: thread, each task sees its own (and code it runs through ``sync_to_async`` too).
task_job: contextvars.ContextVar["CurrentJob | None"] = contextvars.ContextVar(
    "kiq_task_job", default=None)
# Two prototypes of one C function: setting takes an exception class, clearing takes NULL
# (a py_object argument would pass None as Py_None, which is not "no exception").
_set_async_exc = ctypes.PYFUNCTYPE(ctypes.c_int, ctypes.c_ulong, ctypes.py_object)(
    ("PyThreadState_SetAsyncExc", ctypes.pythonapi))
_clear_async_exc = ctypes.PYFUNCTYPE(ctypes.c_int, ctypes.c_ulong, ctypes.c_void_p)(
    ("PyThreadState_SetAsyncExc", ctypes.pythonapi))


def current_job() -> "CurrentJob | None":
    """The context of the job running in this thread (or, for an async job on the worker's
    event loop, in this task), or None outside a job."""
    return task_job.get() or getattr(_local, "job", None)


class CurrentJob:
    """One execution of a job, as the job and the watchdog see it.

    ``jid``, ``name``, ``queue``, ``attempt`` (1 on the first run), ``enqueued_at`` (epoch
    seconds or None) and ``deadline`` (epoch seconds or None) describe the run; ``cancelled``
    turns True, live, when the job is cancelled; :meth:`check` raises at a safe point.
    """

    __slots__ = ("jid", "name", "queue", "attempt", "enqueued_at", "deadline", "thread_id",
                 "cancelled", "cancelled_by", "stuck", "started", "extras", "_fence", "_active",
                 "_delivered")

    def __init__(self, *, jid: str, name: str, queue: str, attempt: int,
                 enqueued_at: float | None, deadline: float | None,
                 fence: threading.Lock | None = None):
        self.jid = jid
        self.name = name
        self.queue = queue
        self.attempt = attempt
        self.enqueued_at = enqueued_at
        self.deadline = deadline
        self.thread_id = threading.get_ident()
        self.cancelled = False
        self.cancelled_by: str | None = None
        self.stuck = False
        self.started = time.time()
        #: Per-feature state hung off the execution (iterable cursor, progress...).
        self.extras: dict[str, Any] = {}
        self._fence = fence or threading.Lock()
        self._active = False
        self._delivered: type[BaseException] | None = None

    def __repr__(self) -> str:
        return f"<CurrentJob {self.name} jid={self.jid} attempt={self.attempt}>"

    # -- for the job's own code ----------------------------------------------------------------

    def check(self) -> None:
        """Raise JobCancelled or JobTimeout if the job was cancelled or is past its deadline."""
        if self.cancelled:
            raise JobCancelled(self._cancel_message())
        if self.deadline is not None and time.time() >= self.deadline:
            raise JobTimeout(self.timeout_message())

    def progress(self, percent: float, message: str = "") -> None:
        """Report how far the job got, 0-100, with an optional message: shown on the Busy page
        (from the next heartbeat) and, for a job that keeps its result, in its result record."""
        if type(percent) not in (int, float) or not 0 <= percent <= 100:
            raise ValueError(f"progress takes a percentage from 0 to 100, not {percent!r}")
        self.extras["progress"] = (percent, str(message))
        report = self.extras.get("report_progress")
        if report is not None:
            report(percent, str(message))

    @property
    def batch(self) -> Any:
        """The batch this job belongs to, or None: ``with current_job().batch:`` adds the jobs
        enqueued inside it to the batch (docs/workflows.md)."""
        handle = self.extras.get("batch")
        if isinstance(handle, dict):  # the job hash (workflows.on_start): its lineage, if any
            from .batches import lineage_of

            handle = lineage_of(handle) or None
        if isinstance(handle, tuple):  # the lineage: the handle is built when asked for
            from .batches import Batch

            handle = Batch.joining(handle)
        self.extras["batch"] = handle
        return handle

    def remaining(self) -> float | None:
        """Seconds left before the deadline (never negative), or None without a time limit."""
        return None if self.deadline is None else max(0.0, self.deadline - time.time())

    # -- for the processor (the job's thread) ------------------------------------------------

    def begin(self) -> None:
        """Enter the job on the calling thread (the one interruptions will be raised in)."""
        _local.job = self
        self.thread_id = threading.get_ident()
        self._active = True  # no fence needed: until now interrupt() saw False and did nothing

    def finish(self) -> None:
        """Leave the job: no interruption can be set after this returns."""
        while True:
            try:
                with self._fence:
                    self._active = False
                    if self._delivered is not None:
                        _clear_async_exc(self.thread_id, None)  # withdraw one not yet raised
                break
            except (JobTimeout, JobCancelled):
                # Raised just now, between the job's return and the fence: the job is over,
                # so it is dropped; the loop goes round once more to close the fence.
                continue
        _local.job = None

    # -- for the watchdog (another thread) ---------------------------------------------------

    def cancel(self, by: str | None = None) -> bool:
        """Mark cancelled and raise JobCancelled in the job; False if it already finished."""
        self.cancelled = True
        self.cancelled_by = by
        return self.interrupt(JobCancelled)

    def interrupt(self, exc_type: type[BaseException]) -> bool:
        """Raise ``exc_type`` in the job's thread if it is still inside the job (once)."""
        with self._fence:
            if not self._active or self._delivered is not None:
                return False
            self._delivered = exc_type
            _set_async_exc(self.thread_id, exc_type)
            return True

    @property
    def interrupted_with(self) -> type[BaseException] | None:
        return self._delivered

    def timeout_message(self) -> str:
        limit = "" if self.deadline is None else f" of {self.deadline - self.started:.3g}s"
        return f"the job ran past its time limit{limit}"

    def _cancel_message(self) -> str:
        return "the job was cancelled" + (f" by {self.cancelled_by}" if self.cancelled_by else "")
