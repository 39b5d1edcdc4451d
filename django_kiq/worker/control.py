"""Execution control inside one worker process: time limits, stuck jobs, cancellations.

Owned by the launcher; started before the first fetch and stopped after the manager. It runs the
``kiq-watchdog`` thread, which

- every ``TICK`` seconds raises :class:`JobTimeout` in a job past its deadline (through its
  :class:`~django_kiq.execution.CurrentJob`, in the job's own thread), and marks a job still
  running ``STUCK_AFTER`` seconds past its deadline as stuck (logged once, shown on the Busy
  page: code blocked in C cannot be interrupted from another thread);
- every ``POLL`` seconds reads the cancellations recorded since its last read (one Redis
  command) and raises :class:`JobCancelled` in a running job that was cancelled, wherever the
  cancellation came from.

It also keeps the recent cancellations in memory, so the processor drops a cancelled job it
fetched (the job moved between a canceller's read and its script, or was recovered from a dead
process) without a Redis call, and carries the few Redis verbs the processor needs for
execution control (unique locks released at start, iterable checkpoints). The thread survives
any error (logged, then retried with backoff); without Redis only the cancellations wait.
"""

from __future__ import annotations

import collections
import json
import logging
import threading
import time
from collections.abc import Callable
from typing import Any

from ..exceptions import JobTimeout
from ..execution import CurrentJob
from ..storage import Checkpoint, Storage
from .loop import Backoff

logger = logging.getLogger("django_kiq.control")
TICK = 0.1
POLL = 0.5
POLL_BATCH = 1000
STUCK_AFTER = 5.0
RECENT_CANCELLATIONS = 20_000
CHECKPOINT_TTL = 30 * 24 * 3600


class Control:
    def __init__(self, *, store: Storage, on_change: Callable[[], None] = lambda: None):
        self.store = store
        self.on_change = on_change  # the Busy data changed (a job became stuck)
        self._running: dict[str, CurrentJob] = {}  # processor thread name -> its job
        self._cancelled: set[str] = set()
        self._cancelled_order: collections.deque[str] = collections.deque()
        self._seq = -1
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None
        self._fences = threading.local()

    # -- lifecycle -----------------------------------------------------------------------------

    def start(self) -> None:
        try:  # before the first fetch, so a recovered job cancelled meanwhile is dropped
            self.poll_cancellations()
        except Exception as exc:  # noqa: BLE001 - the watchdog's loop reads them later
            logger.warning("could not read recent cancellations yet: %s", exc)
        self._thread = threading.Thread(target=self._loop, name="kiq-watchdog", daemon=True)
        self._thread.start()

    def stop(self) -> None:
        self._stop.set()
        if self._thread is not None:
            self._thread.join(timeout=2)

    # -- the processor's side ------------------------------------------------------------------

    def fence(self) -> threading.Lock:
        """The calling processor thread's interruption fence (one per thread, reused)."""
        fence = getattr(self._fences, "lock", None)
        if fence is None:
            fence = self._fences.lock = threading.Lock()
        return fence

    def track(self, thread: str, job: CurrentJob) -> None:
        # One dict store (atomic under the GIL, as the pop below): the watchdog reads a copy.
        self._running[thread] = job
        if job.jid in self._cancelled:  # cancelled between the processor's check and now
            job.cancel()

    def untrack(self, thread: str) -> None:
        self._running.pop(thread, None)

    def is_cancelled(self, jid: str) -> bool:
        return jid in self._cancelled

    def stuck(self) -> set[str]:
        """Processor threads whose job is stuck past its deadline (for the Busy page)."""
        return {name for name, job in self._running.copy().items() if job.stuck}

    def progress(self) -> dict[str, tuple[float, str]]:
        """Processor thread -> (percent, message) its job last reported (for the Busy page)."""
        return {name: job.extras["progress"] for name, job in self._running.copy().items()
                if "progress" in job.extras}

    def release_lock(self, digest: str, jid: str) -> None:
        """Release a unique lock when its job starts (``unique_until="start"``)."""
        self.store.release_unique([(digest, jid)])

    def load_checkpoint(self, jid: str) -> Checkpoint | None:
        return self.store.load_checkpoint(jid)

    def save_checkpoint(self, jid: str, cursor: Any, done: int) -> None:
        self.store.save_checkpoint(jid, cursor=json.dumps(cursor), done=done, now=time.time(),
                                   ttl=CHECKPOINT_TTL)

    # -- the watchdog thread -------------------------------------------------------------------

    def _loop(self) -> None:
        backoff = Backoff("watchdog", self._stop)
        next_poll = 0.0
        while not self._stop.wait(TICK):
            try:
                self._enforce_deadlines(time.time())
            except Exception:  # noqa: BLE001 - the watchdog outlives any error
                logger.exception("watchdog: checking deadlines failed")
            if time.monotonic() < next_poll:
                continue
            try:
                self.poll_cancellations()
                backoff.ok()
                next_poll = time.monotonic() + POLL
            except Exception as exc:  # noqa: BLE001 - Redis down: deadlines still enforced
                backoff.failed(exc)
                next_poll = time.monotonic() + POLL

    def _enforce_deadlines(self, now: float) -> None:
        late = [(name, job) for name, job in self._running.copy().items()
                if job.deadline is not None and now >= job.deadline]
        for name, job in late:
            if job.interrupt(JobTimeout):
                logger.warning("timeout jid=%s job=%s: %s; JobTimeout raised in %s", job.jid,
                               job.name, job.timeout_message(), name)
            elif (not job.stuck and job.deadline is not None
                  and now >= job.deadline + STUCK_AFTER):
                job.stuck = True
                logger.error("stuck jid=%s job=%s: still running %.0fs past its time limit in "
                             "%s (blocked outside Python code, which cannot be interrupted; "
                             "recycle the process, or give its I/O a timeout)", job.jid,
                             job.name, now - job.deadline, name)
                self.on_change()

    def poll_cancellations(self) -> int:
        """Read new cancellations; cancel any of them running here. Returns how many read."""
        total = 0
        while True:
            seq, rows = self.store.cancellations_since(self._seq, limit=POLL_BATCH)
            self._seq = seq
            self._apply(rows)
            total += len(rows)
            if len(rows) < POLL_BATCH:
                return total

    def _apply(self, rows: list[tuple[str, str]]) -> None:
        for jid, by in rows:
            self._remember(jid)
            running = [job for job in self._running.copy().values() if job.jid == jid]
            for job in running:
                if job.cancel(by=by or None):
                    logger.info("cancel jid=%s job=%s%s: JobCancelled raised", job.jid,
                                job.name, f" by {by}" if by else "")

    def _remember(self, jid: str) -> None:
        if jid in self._cancelled:
            return
        self._cancelled.add(jid)
        self._cancelled_order.append(jid)
        while len(self._cancelled_order) > RECENT_CANCELLATIONS:
            self._cancelled.discard(self._cancelled_order.popleft())
