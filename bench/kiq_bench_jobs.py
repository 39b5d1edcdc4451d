"""Jobs the benchmark's django-kiq workers run (loaded with ``KIQ_IMPORTS=bench.kiq_bench_jobs``).

Imported by the worker subprocesses and by ``bench/run.py`` (to enqueue them by name). The
bodies report to Redis without a round trip per job, the way the peers' harness counts
(``../shared/bench/peers/apps/common.py``): each run bumps an in-process counter, and a daemon
thread (``bench-reporter``, started by the first job) flushes it every 5 ms in one pipeline. On
this kind of VM one round trip costs about as much as a whole no-op job, so a per-job ``INCR``
would halve the number being measured.

Keys (all under ``bench:``, in the worker's own Redis DB): ``bench:done`` jobs finished,
``bench:first`` epoch time the first job started, ``bench:last`` epoch time the latest finished,
``bench:lat`` one entry per ``pickup`` run: seconds from enqueue to start, ``bench:rtt`` (only
with ``BENCH_COUNT_ROUND_TRIPS=1``) Redis round trips the worker made so far, per thread name:
every ``send_packed_command`` of redis-py is one request (a pipeline is one), counted in process
so a script's inner commands are not mistaken for round trips.
"""

from __future__ import annotations

import os
import threading
import time

from django_kiq import job

DONE_KEY = "bench:done"
FIRST_KEY = "bench:first"
LAST_KEY = "bench:last"
LATENCY_KEY = "bench:lat"
ROUND_TRIPS_KEY = "bench:rtt"
FLUSH_EVERY = 0.005


class Reporter:
    """Counts finished jobs and latency samples in memory; one thread writes them out."""

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._done = 0
        self._first: float | None = None
        self._last = 0.0
        self._samples: list[float] = []
        self._first_sent = False
        self._thread: threading.Thread | None = None
        self.round_trips: dict[str, int] = {}

    def started(self, now: float) -> None:
        if self._first is None:
            with self._lock:
                if self._first is None:
                    self._first = now

    def done(self, now: float, sample: float | None = None) -> None:
        with self._lock:
            self._done += 1
            self._last = now
            if sample is not None:
                self._samples.append(sample)
            if self._thread is None:
                self._thread = threading.Thread(target=self._loop, name="bench-reporter",
                                                daemon=True)
                self._thread.start()

    def _loop(self) -> None:
        import redis  # the bench harness, not django_kiq: it may talk to Redis itself

        client = redis.Redis.from_url(os.environ["KIQ_REDIS_URL"])
        while True:
            time.sleep(FLUSH_EVERY)
            with self._lock:
                done, self._done = self._done, 0
                samples, self._samples = self._samples, []
                first, last = self._first, self._last
            if not done:
                continue
            pipe = client.pipeline(transaction=False)
            if not self._first_sent and first is not None:
                pipe.set(FIRST_KEY, repr(first), nx=True)
                self._first_sent = True
            if samples:
                pipe.rpush(LATENCY_KEY, *map(repr, samples))
            if self.round_trips:
                pipe.hset(ROUND_TRIPS_KEY, mapping=dict(self.round_trips))
            pipe.set(LAST_KEY, repr(last))
            pipe.incrby(DONE_KEY, done)  # last, so a reader seeing the count sees the rest
            pipe.execute()


REPORTER = Reporter()


def count_round_trips(counts: dict[str, int]) -> None:
    """Count every request redis-py sends, per thread name (the reporter's own excluded).

    Each thread only writes its own key, so the unlocked read-modify-write does not race.
    """
    from redis.connection import AbstractConnection

    original = AbstractConnection.send_packed_command

    def counted(self, command, check_health=True):
        name = threading.current_thread().name
        if name != "bench-reporter":
            counts[name] = counts.get(name, 0) + 1
        return original(self, command, check_health)

    AbstractConnection.send_packed_command = counted


if os.environ.get("BENCH_COUNT_ROUND_TRIPS") == "1":
    count_round_trips(REPORTER.round_trips)


@job
def noop(i):
    """Nothing at all: measures the framework's own cost per job."""
    now = time.time()
    REPORTER.started(now)
    REPORTER.done(now)


@job
def sleep10(i):
    """10 ms of blocking I/O (a sleep): measures how well concurrency overlaps waiting."""
    REPORTER.started(time.time())
    time.sleep(0.01)
    REPORTER.done(time.time())


@job
def pickup(enqueued_at):
    """Records start time minus the caller's ``time.time()`` just before it enqueued us."""
    now = time.time()
    REPORTER.started(now)
    REPORTER.done(now, now - enqueued_at)
