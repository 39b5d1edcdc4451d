"""The poller: moves due jobs from the ``schedule`` and ``retry`` sets onto their queues.

Runs on the ``kiq-scheduler`` thread of every worker process. Each pass claims up to a batch of
due jobs atomically (``due.lua``: two pollers never claim the same job) into this process's
scheduler in-progress list (its "sched" lane), runs client middleware on them again (it may
change or cancel a job), readies them (``payload.ready_for_queue``) and settles them onto their
queues (``settle.lua``). A crash between the two steps leaves the claimed jobs recoverable, never
lost. Between passes it sleeps until the earliest due time, capped by
``KIQ["POLL_INTERVAL_MAX"]``, so jobs start on time without a fixed multi-second interval.

Lost replies. When a claim's reply is lost (connection killed after ``due.lua`` ran), the jobs
sit in the lane and the poller does not know it holds them. Between passes the poller holds
nothing, so whatever its lane still holds then is exactly what it does not know about: the
round trip that finds the next due time also reads the lane, and the poller settles any
leftover onto its queue like a fresh claim before sleeping. A live worker's lane is therefore
empty between passes (the fetcher's ``reconcile`` does the same for the fetch lane).

Time. Scheduling follows Redis's clock, never the worker's: ``due.lua`` compares scores with
Redis's ``TIME``, the sleep is measured against the ``TIME`` read with the next due time, and
the cron ticker reads ``TIME`` each pass (:class:`RedisClock`). So a worker whose clock is fast
starts nothing early and makes no other worker skip a tick. Each pass also measures this
process's clock offset; :class:`SkewWatch` logs it when it exceeds a second (once, and again
when it changes materially) and publishes it for the admin's Periodic page.
"""

from __future__ import annotations

import logging
import random
import socket
import time
from collections.abc import Callable

from .. import payload
from ..client import client_chain
from ..conf import KiqSettings
from ..periodic import CLOCK_TOLERANCE
from ..storage import Settle, Storage
from .loop import LoopThread

logger = logging.getLogger("django_kiq.scheduler")
BATCH = 500
SETS = ("schedule", "retry")
PUBLISH_EVERY = 10.0  # seconds between publications of the offset (the key lives 3 times that)


class RedisClock:
    """Redis's clock as seen from one process, and how far this process's clock is from it.

    ``read()`` asks Redis (``TIME``, one round trip); ``estimate()`` is the local clock corrected
    by the last offset measured, for timestamps and sleeps that need no round trip. ``local`` is
    the process's own clock, injectable so tests can run a worker whose clock is off.
    """

    def __init__(self, store: Storage, *, local: Callable[[], float] = time.time):
        self.store = store
        self.local = local
        self.offset = 0.0  # local minus Redis, seconds, as of the last reading

    def read(self) -> float:
        before = self.local()
        server = self.store.server_time()
        return self.note(before, server, self.local())

    def note(self, before: float, server: float, after: float) -> float:
        """Record a ``TIME`` answer read between local times ``before`` and ``after``."""
        # Redis read its clock somewhere in the round trip: the midpoint errs by at most RTT/2.
        self.offset = (before + after) / 2 - server
        return server

    def estimate(self) -> float:
        return self.local() - self.offset


class SkewWatch:
    """Reports this worker's clock offset: a log line when it matters, a key for the admin."""

    def __init__(self, store: Storage, identity: str, *,
                 monotonic: Callable[[], float] = time.monotonic):
        self.store = store
        self.identity = identity
        self.monotonic = monotonic
        self.reported: float | None = None  # the offset last warned about, None while in sync
        self._published_at: float | None = None

    def observe(self, offset: float) -> None:
        changed = self._log(offset)
        now = self.monotonic()
        if changed or self._published_at is None or now - self._published_at >= PUBLISH_EVERY:
            self.store.record_clock_offset(self.identity, offset, ttl=3 * PUBLISH_EVERY)
            self._published_at = now

    def _log(self, offset: float) -> bool:
        """Log the offset if it is news; True if it was."""
        if abs(offset) > CLOCK_TOLERANCE:
            if self.reported is not None and abs(offset - self.reported) <= CLOCK_TOLERANCE:
                return False
            logger.warning(
                "this worker's clock (%s) is %.1fs %s Redis's: scheduled and cron jobs follow "
                "Redis's clock, but times this worker writes (enqueued_at, retry times) are off; "
                "fix the host's clock (NTP)", socket.gethostname(), abs(offset),
                "ahead of" if offset > 0 else "behind")
            self.reported = offset
            return True
        if self.reported is not None:
            logger.warning("this worker's clock is back within %.0fs of Redis's (%+.3fs)",
                           CLOCK_TOLERANCE, offset)
            self.reported = None
            return True
        return False


class Poller(LoopThread):
    thread_name = "kiq-scheduler"

    def __init__(self, *, store: Storage, identity: str, settings: KiqSettings,
                 now: Callable[[], float] = time.time):
        super().__init__()
        self.store = store
        self.identity = identity
        self.settings = settings
        self.clock = RedisClock(store, local=now)  # ``now``: this process's own clock
        self.watch = SkewWatch(store, identity)
        self.chain = client_chain(settings)

    def step(self) -> float:
        self.poll_once()
        return self._between_passes()

    def poll_once(self, now: float | None = None) -> int:
        """Move every job due now; returns how many reached a queue.

        Due is judged by Redis's clock; ``now`` stands in for it (tests).
        """
        moved = 0
        for set_name in SETS:
            while True:
                claimed = self.store.claim_due(set_name, self.identity, now, BATCH)
                if claimed:
                    moved += self._enqueue(claimed, now)
                if len(claimed) < BATCH:
                    break
        return moved

    def _enqueue(self, claimed: list[bytes], now: float | None = None) -> int:
        now = self.clock.estimate() if now is None else now
        entries = [self._plan(raw, now) for raw in claimed]
        flags = self.store.settle(self.identity, entries, lane="sched") or []
        return sum(f for f, e in zip(flags, entries) if e.kind == "l")

    def _plan(self, raw: bytes, now: float) -> Settle:
        try:
            job = payload.decode(raw)
        except Exception as exc:  # noqa: BLE001 - a broken entry goes to dead, never vanishes
            logger.error("malformed scheduled entry moved to dead: %s", exc)
            record = payload.malformed_record(raw, queue="default", reason=str(exc), now=now)
            return Settle(kind="d", old=raw, new=payload.encode(record), score=now)
        try:
            job = self.chain(job)
        except Exception:
            logger.exception("client middleware raised on scheduled job %s; pushed unchanged",
                             job.get("jid"))
        if job is None:
            return Settle(kind="x", old=raw)
        job = payload.ready_for_queue(job, now)
        return Settle(kind="l", old=raw, new=payload.encode(job), dest=job["queue"])

    def _between_passes(self) -> float:
        """Reconcile the lane, measure the clock, and return how long to sleep."""
        before = self.clock.local()
        outlook = self.store.poller_outlook(SETS, self.identity, BATCH)
        server = self.clock.note(before, outlook.server_time, self.clock.local())
        self.watch.observe(self.clock.offset)
        if outlook.leftovers:
            self.reconcile(outlook.leftovers)
            return 0.0  # there may be more: look again at once
        cap = self.settings.poll_interval_max
        if outlook.next_due is None:
            return cap * random.uniform(0.8, 1.0)
        return max(0.0, min(cap, outlook.next_due - server))

    def reconcile(self, leftovers: list[bytes]) -> int:
        """Settle jobs left in our lane by a claim whose reply was lost; returns how many.

        Called between passes only, when the poller holds nothing: every entry is unknown to
        it. They go the way of a fresh claim (middleware, readied, settled atomically); an
        entry settled meanwhile is skipped by settle.lua, so nothing moves twice.
        """
        moved = self._enqueue(leftovers)
        logger.warning("reconciled %d scheduled job(s) claimed by a call whose reply was lost",
                       len(leftovers))
        return moved
