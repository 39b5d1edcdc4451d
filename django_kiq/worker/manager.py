"""The thread pool of one worker process and the fetcher thread that feeds it.

Threads (all named ``kiq-*``):
- ``kiq-fetcher``: the only thread that moves jobs into the in-progress list. Each pass sends the
  pending acknowledgements and fetches as many jobs as there are free processor slots in one
  round trip (``fetch.lua``), then hands them to the processors: each job waits in ``_buffer``
  under a token, and the token goes through a ``SimpleQueue`` (a C queue: a processor blocks in
  ``get`` without the Python-level waiter lists of a ``Condition``, which cost about 15% of the
  worker's GIL time on no-op jobs). The job itself moves from ``_buffer`` to ``_running`` under
  the manager's lock, so at every instant a fetched job is in one of them (reconcile, quiet and
  stop rely on it); a token whose job ``quiet()`` gave back finds nothing and is skipped.
- ``kiq-processor-N`` (concurrency of them): run one job at a time through the processor and
  report the outcome. Done jobs are acknowledged in the fetcher's next pass, and so are done
  jobs with cleanups (a result record, a batch count, a unique lock, a checkpoint): one
  ``settle.lua`` call per pass for all of them; retries, deaths and discards are written at
  once with ``settle.lua``.
- ``kiq-wait-<queue>``: while the process is idle, block on a queue until it holds a job (a
  non-destructive BLMOVE), then wake the fetcher; so pickup takes a round trip, not a poll.

Lifecycle: ``start()``, then ``quiet()`` (fetch no more; buffered jobs go back to their queues),
then ``stop(deadline)`` (wait for running jobs until the deadline, then, in one atomic write,
acknowledge what finished and push the rest back to the head of their queues, each push
counted toward ``POISON_LIMIT``). A processor thread outlives anything a job or its bookkeeping
raises; the processor turns every failure into an outcome.
"""

from __future__ import annotations

import itertools
import logging
import threading
import time
from collections.abc import Callable, Sequence
from queue import Empty, SimpleQueue
from typing import TYPE_CHECKING

from ..storage import TRANSIENT_ERRORS, Settle, Storage, Succeeded
from .fetcher import Fetcher, plan_cutoff, plan_requeue
from .loop import Backoff
from .processor import Outcome, Processor

if TYPE_CHECKING:
    from .aio import AsyncRunner

logger = logging.getLogger("django_kiq.manager")
PREFETCH_SECONDS = 0.005
MAX_PREFETCH_PER_THREAD = 8


class Manager:
    def __init__(self, *, store: Storage, fetcher: Fetcher, processor: Processor,
                 concurrency: int, queues: list[str], poison_limit: int = 3,
                 async_runner: AsyncRunner | None = None):
        self.store = store
        self.async_runner = async_runner  # async jobs' event loop (worker/aio.py), if any
        self.fetcher = fetcher
        self.processor = processor
        self.concurrency = concurrency
        self.queues = queues
        self.poison_limit = poison_limit
        self.identity = fetcher.identity
        # One lock for the job bookkeeping below; stop() waits on it for running jobs.
        self._lock = threading.Lock()
        self._drained = threading.Condition(self._lock)
        # Fetched jobs not yet started, by token (insertion order = fetch order); the tokens go
        # to the processors through _handoff (None wakes a processor to see the stop flag).
        self._buffer: dict[int, tuple[str, bytes]] = {}
        self._handoff: SimpleQueue[int | None] = SimpleQueue()
        self._tokens = itertools.count()
        self._low_water = 0  # the fetcher's next pass waits while more than this are held
        # thread name -> (queue, payload, started at, fetch sequence number: its token)
        self._running: dict[str, tuple[str, bytes, float, int]] = {}
        self._changes = 0  # bumped whenever _running changes: the heartbeat's "work is stale"
        self._job_seconds = 1.0  # moving average of job run time; starts pessimistic
        self._acks: list[bytes] = []
        # Done jobs with cleanups (workflows, unique locks, checkpoints): settled like acks, in
        # one call per fetcher pass. Until it succeeds the job stays in the in-progress list;
        # a crash reruns it, and its cleanups count once (settle.lua acts only if LREM did).
        self._done: list[Settle | Succeeded] = []
        self._wake = threading.Event()
        self._idle = threading.Event()
        self._quiet = threading.Event()
        self._stopping = threading.Event()  # stop() began: iterable jobs checkpoint and yield
        self._stop = threading.Event()
        self._hard = threading.Event()
        self._threads: list[threading.Thread] = []
        self._processors: list[threading.Thread] = []

    # -- lifecycle -----------------------------------------------------------------------------

    def start(self) -> None:
        if self.async_runner is not None:
            self.async_runner.start(self._finish)
        for i in range(self.concurrency):
            self._processors.append(self._spawn(f"kiq-processor-{i}", self._process_loop))
        self._threads.append(self._spawn("kiq-fetcher", self._fetch_loop))
        for queue in self.queues:
            self._threads.append(self._spawn(f"kiq-wait-{queue}", self._wait_loop, queue))

    def _spawn(self, name: str, target: Callable, *args: object) -> threading.Thread:
        thread = threading.Thread(target=target, args=args, name=name, daemon=True)
        thread.start()
        return thread

    def stopping(self) -> bool:
        """True once stop() began (the processor asks between an iterable job's items)."""
        return self._stopping.is_set()

    def touch(self) -> None:
        """The Busy data changed without a job starting or ending (a job became stuck)."""
        with self._lock:
            self._changes += 1

    @property
    def quiet_flag(self) -> bool:
        return self._quiet.is_set()

    def quiet(self) -> None:
        """Fetch no more jobs; give buffered (not yet started) jobs back to their queues."""
        if self._quiet.is_set():
            return
        self._quiet.set()
        self._idle.clear()
        self._wake.set()
        with self._lock:
            buffered = list(self._buffer.values())
            self._buffer.clear()  # their tokens, still queued, now find nothing
        if buffered:
            # RPUSH newest first, so the oldest ends up at the head again, in the same order.
            self._settle_retrying(plan_requeue(reversed(buffered)),
                                  deadline=time.monotonic() + 10)

    def stop(self, deadline: float) -> list[tuple[str, bytes, float, int]]:
        """Wait for running jobs until ``deadline`` (monotonic); requeue the rest.

        Returns the jobs that were still running and were pushed back.
        """
        self._stopping.set()
        self.quiet()
        with self._drained:
            while self._running and time.monotonic() < deadline and not self._hard.is_set():
                self._drained.wait(timeout=min(0.1, max(0.0, deadline - time.monotonic())))
        self._stop.set()
        self._wake.set()
        for _ in self._processors:
            self._handoff.put(None)
        for thread in self._threads:
            thread.join(timeout=2)
        if self.async_runner is not None:  # its unfinished jobs stay in _running: pushed back
            self.async_runner.stop()
        with self._lock:
            # One snapshot of both: a job finishing between an acknowledgement flush and a
            # look at what still runs was in neither, so it stayed in progress and ran again
            # after recovery. Finishing after this snapshot, it is requeued (and runs again).
            acks, self._acks = self._acks, []
            done, self._done = self._done, []
            # Fetched later first (processors may start them in any order), so the oldest ends
            # at the head.
            left = sorted(self._running.values(), key=lambda r: r[3], reverse=True)
        entries: list[Settle | Succeeded] = [Settle(kind="x", old=raw) for raw in acks]
        entries += done
        entries += plan_cutoff(
            ((q, raw) for q, raw, _, _ in left), identity=self.identity,
            poison_limit=self.poison_limit, now=time.time())
        if entries:
            self._settle_retrying(entries, deadline=time.monotonic() + 5)
        return left

    def hard_deadline(self) -> None:
        """Stop waiting for running jobs now (a second interrupt)."""
        self._hard.set()
        with self._drained:
            self._drained.notify_all()

    # -- introspection (heartbeat, TTIN) -------------------------------------------------------

    def busy(self) -> int:
        with self._lock:
            return len(self._running)

    def running(self) -> dict[str, tuple[str, bytes, float, int]]:
        with self._lock:
            return dict(self._running)

    def running_state(self) -> tuple[int, dict[str, tuple[str, bytes, float, int]]]:
        """A change counter and the running jobs, read together (the heartbeat writes the
        work hash when the counter moved since its last write)."""
        with self._lock:
            return self._changes, dict(self._running)

    def _known(self) -> list[bytes]:
        with self._lock:
            return ([raw for _, raw, _, _ in self._running.values()] +
                    [raw for _, raw in self._buffer.values()] + list(self._acks) +
                    [entry.old for entry in self._done])

    # -- processor threads ---------------------------------------------------------------------

    def _process_loop(self) -> None:
        name = threading.current_thread().name
        get, lock, buffer, running = self._handoff.get, self._lock, self._buffer, self._running
        while True:
            try:
                token = get(timeout=1.0)
            except Empty:
                if self._stop.is_set():
                    return
                # Django closes expired connections when a request starts or ends; a thread
                # with no next job closes them here, so an idle worker holds no database
                # connection longer than CONN_MAX_AGE (issue 17).
                self.processor.idle()
                continue
            if token is None:  # stop() wakes each processor once
                if self._stop.is_set():
                    return
                continue
            with lock:
                job = buffer.pop(token, None)
                if job is None:  # given back by quiet()
                    continue
                queue, raw = job
                running[name] = (queue, raw, time.time(), token)
                self._changes += 1
            started = time.perf_counter()
            try:
                outcome = self.processor.process(queue, raw, name)
            except BaseException as exc:  # noqa: BLE001 - process() never raises; if it did,
                # the thread must still live on and the job still get an outcome.
                logger.exception("processor failed on a job; moving it to dead")
                outcome = self.processor.last_resort(queue, raw, exc)
            self._finish(name, queue, outcome, time.perf_counter() - started)

    def _finish(self, name: str, queue: str, outcome: Outcome, elapsed: float) -> None:
        settle = outcome.needs_settle
        deferred = settle and outcome.kind == "done"
        try:
            if settle and not deferred:
                # Until this succeeds the job stays in the in-progress list (and in _running, so
                # a reconcile never adopts it); if Redis never comes back, orphan recovery
                # reruns it.
                self._settle_retrying([self._settle_entry(outcome)], deadline=None,
                                      fallback=lambda exc: self._dead_instead(queue, outcome, exc))
        except Exception:  # noqa: BLE001 - the thread lives on; the job stays in progress
            logger.exception("could not write a job's outcome; it stays in progress")
        with self._lock:
            if deferred:
                self._done.append(self._done_entry(outcome))
            elif not settle:
                self._acks.append(outcome.raw)
            self._running.pop(name, None)
            self._changes += 1
            self._job_seconds += (elapsed - self._job_seconds) * 0.05
            if not self._running and self._stopping.is_set():  # only stop() waits on it
                self._drained.notify_all()
            # Wake the fetcher only when its pass would not wait again (see _fetch_loop): every
            # wake is a context switch, and on 1-ms jobs the fetcher would wake per job.
            wake = not self._buffer or (
                len(self._running) + len(self._buffer) <= self._low_water)
        if wake and not self._wake.is_set():  # set: the fetcher reads the state after this
            self._wake.set()

    def _dead_instead(self, queue: str, outcome: Outcome, exc: Exception) -> list[Settle]:
        """Redis refused the outcome for a reason of its own (not an outage): dead instead."""
        dead = self.processor.last_resort(queue, outcome.raw, exc)
        return [self._settle_entry(dead)]

    @staticmethod
    def _done_entry(outcome: Outcome) -> Settle | Succeeded:
        """The settle entry of a done job with cleanups (deferred to the fetcher's pass)."""
        batch = outcome.batch
        if (batch is not None and batch.outcome == "s" and outcome.result is None
                and not outcome.unlock and not outcome.drop_cursor):
            return Succeeded(outcome.raw, batch)  # most of a batch's drain: the lean entry
        return Manager._settle_entry(outcome)

    @staticmethod
    def _settle_entry(outcome: Outcome) -> Settle:
        # The job's result record and batch count (docs/workflows.md) end with it too.
        workflow = {"result": outcome.result, "batch": outcome.batch}
        ended = {"unlock": outcome.unlock, "jid": outcome.jid,
                 "drop_cursor": outcome.drop_cursor, **workflow}
        if outcome.kind == "retry":
            return Settle(kind="z", old=outcome.raw, new=outcome.new, dest="retry",
                          score=outcome.at, **workflow)
        if outcome.kind == "dead":
            return Settle(kind="d", old=outcome.raw, new=outcome.new, score=outcome.at, **ended)
        if outcome.kind == "reschedule":  # met a full limiter (limits.py): back when it has room
            return Settle(kind="z", old=outcome.raw, new=outcome.new, dest="schedule",
                          score=outcome.at, **workflow)
        if outcome.kind == "requeue":  # an iterable job paused at a checkpoint: resumes first
            return Settle(kind="q", old=outcome.raw, new=outcome.raw, dest=outcome.queue,
                          **workflow)
        if outcome.kind in ("cancelled", "expired"):
            return Settle(kind="x", old=outcome.raw, count=outcome.count, **ended)
        return Settle(kind="x", old=outcome.raw, **ended)  # done or discard

    def _settle_retrying(self, entries: Sequence[Settle | Succeeded], deadline: float | None,
                         fallback: Callable[[Exception], list[Settle]] | None = None) -> bool:
        """Write ``entries`` until it succeeds or ``deadline``; a first non-transient error
        switches to ``fallback(error)``'s entries, if given (e.g. dead with the reason)."""
        backoff = Backoff(f"settle in {self.identity}", threading.Event())
        while True:
            try:
                self.store.settle(self.identity, entries)
                backoff.ok()
                return True
            except Exception as exc:  # any error: the jobs stay in progress, never dropped
                if not isinstance(exc, TRANSIENT_ERRORS):
                    logger.exception("unexpected error writing %d job outcome(s)", len(entries))
                    if fallback is not None:
                        entries, fallback = fallback(exc), None
                        continue
                if deadline is not None and time.monotonic() >= deadline:
                    logger.error("could not write %d job outcome(s); they stay in progress "
                                 "and will be recovered", len(entries))
                    return False
                backoff.failed(exc)

    # -- fetcher thread ------------------------------------------------------------------------

    def _fetch_loop(self) -> None:
        backoff = Backoff("fetcher", self._stop)
        reconcile = isolate = False
        while not self._stop.is_set():
            with self._lock:
                room = self.concurrency + self._prefetch()
                self._low_water = room - room // 2
                free = 0 if self._quiet.is_set() else (
                    room - len(self._running) - len(self._buffer)
                    + (self.async_runner.room() if self.async_runner is not None else 0))
                # While the processors still have buffered jobs, a pass waits until half the
                # room is free, acks included: a round trip per ~room/2 jobs, not per job
                # finished (a woken fetcher would otherwise fetch a few at a time).
                hold = free < room // 2 and bool(self._buffer)
                acks, done = [], []
                if not hold:
                    acks, self._acks = self._acks, []
                    done, self._done = self._done, []
            if hold or (free <= 0 and not acks and not done):
                self._idle.clear()
                self._wake.wait(timeout=1.0)
                self._wake.clear()
                continue
            try:
                if reconcile:
                    self._dispatch(self.fetcher.reconcile(
                        self._known() + acks + [entry.old for entry in done]))
                    reconcile = False
                if done and isolate:  # the combined call failed: settle these on their own
                    self._settle_done(done)
                    done, isolate = [], False
                # settle.lua acts once per job: a repeat after a lost reply is harmless.
                jobs = self.fetcher.fetch(max(free, 0), acks, done)
            except Exception as exc:
                # Transient or not (an UNBLOCKED reply after REPLICAOF, say), the thread lives
                # on: a dead fetcher under a live heartbeat would strand the process's jobs.
                if not isinstance(exc, TRANSIENT_ERRORS):
                    logger.exception("fetcher: unexpected error; retrying")
                with self._lock:
                    self._acks[:0] = acks  # LREM is harmless to repeat if it did run
                    self._done[:0] = done
                isolate = bool(done) and not isinstance(exc, TRANSIENT_ERRORS)
                reconcile = True
                backoff.failed(exc)
                continue
            backoff.ok()
            self._dispatch(jobs)
            if jobs or free <= 0:
                self._idle.clear()
                continue
            self._idle.set()
            self._wake.wait(timeout=2.0)
            self._wake.clear()

    def _settle_done(self, entries: list[Settle | Succeeded]) -> None:
        """Settle done jobs with cleanups in one call (the fetcher's pass). Transient errors
        raise (the pass retries them); if Redis refuses the call for a reason of its own, each
        entry goes alone, and one it still refuses is acknowledged without its cleanups rather
        than block the others."""
        try:
            self.store.settle(self.identity, entries)
            return
        except TRANSIENT_ERRORS:
            raise
        except Exception:  # noqa: BLE001 - isolate the entry Redis refuses
            logger.exception("unexpected error settling %d done job(s); one at a time",
                             len(entries))
        for entry in entries:
            def ack_only(exc: Exception, raw: bytes = entry.old) -> list[Settle]:
                return [Settle(kind="x", old=raw)]

            self._settle_retrying([entry], deadline=time.monotonic() + 5, fallback=ack_only)

    def _prefetch(self) -> int:
        """Jobs to hold beyond the free threads (caller holds the lock).

        Each fetch costs a round trip; for very short jobs that round trip, not the jobs, limits
        throughput, so the fetcher takes a few more than there are free threads. It takes only
        about PREFETCH_SECONDS of work per thread, so with slower jobs it prefetches nothing and
        never holds back jobs another worker could start. Prefetched jobs are in the in-progress
        list like running ones: a crash loses none, a shutdown puts them back at once.
        Up to MAX_PREFETCH_PER_THREAD per thread: with the pass waiting until half the room is
        free (_fetch_loop), 8 rather than 4 keeps the processors from running dry during the
        round trip (each dry processor blocks and is woken again: a futex call each way) and
        halves the round trips per job (0.046 -> 0.025).
        """
        per_thread = PREFETCH_SECONDS / max(self._job_seconds, 1e-6)
        return min(MAX_PREFETCH_PER_THREAD * self.concurrency, int(per_thread * self.concurrency))

    def _dispatch(self, jobs: list[tuple[str, bytes]]) -> None:
        if not jobs:
            return
        with self._lock:
            if not self._quiet.is_set():
                if self.async_runner is not None:
                    jobs = self._start_async(jobs)
                buffer, put = self._buffer, self._handoff.put
                for job in jobs:
                    token = next(self._tokens)
                    buffer[token] = job
                    put(token)
                return
        # Fetched by a call that was in flight when quiet() emptied the buffer. Buffered now, they
        # would start during the shutdown after stop() stopped waiting (run, then requeued or cut
        # off), or stay in the in-progress list until PROCESS_TTL, counted as a recovery. Give
        # them back like quiet() does (the check is under the lock quiet() empties the buffer in).
        self._settle_retrying(plan_requeue(reversed(jobs)), deadline=time.monotonic() + 10)

    def _start_async(self, jobs: list[tuple[str, bytes]]) -> list[tuple[str, bytes]]:
        """Hand fetched async jobs to the event loop, as running jobs (caller holds the lock);
        returns the others, for the processor threads."""
        assert self.async_runner is not None
        mine, others = self.async_runner.split(jobs)
        for queue, raw in mine:
            key = self.async_runner.submit(queue, raw)
            self._running[key] = (queue, raw, time.time(), next(self._tokens))
        if mine:
            self._changes += 1
        return others

    # -- queue waiters -------------------------------------------------------------------------

    def _wait_loop(self, queue: str) -> None:
        backoff = Backoff(f"waiter on {queue}", self._stop)
        while not self._stop.is_set():
            if not self._idle.wait(timeout=1.0) or self._quiet.is_set():
                continue
            if queue in self.fetcher.paused:  # a paused queue with jobs would wake us at once
                self._stop.wait(1.0)
                continue
            try:
                if self.store.wait_for_job(queue, timeout=1.0):
                    self._idle.clear()
                    self._wake.set()
                backoff.ok()
            except Exception as exc:  # the waiter must outlive any error, like the fetcher
                if not isinstance(exc, TRANSIENT_ERRORS):
                    logger.exception("waiter on %s: unexpected error; retrying", queue)
                backoff.failed(exc)
