"""The cron ticker: enqueues each tick of every periodic entry, exactly once across all workers.

Runs on the ``kiq-cron`` thread of every worker process that has periodic entries; there is no
leader. At each tick every live process builds the job and calls ``periodic_fire.lua``, which
claims the tick (``SET NX EX``) and pushes in one step: the first caller wins, the others get 0.
So a dead process is replaced at the very next tick, by construction.

Each entry keeps a local cursor: the last tick this process considered. When the most recent
tick is past the cursor, it is fired if it is at most ``PeriodicEntry.catchup_window`` late
(max(60 s, half the gap to the next tick)); older ticks in between are never replayed. At start
the cursor is the last tick Redis recorded for the entry, so after downtime the most recent
missed tick runs once (if recent enough); an entry with no history starts at its next tick.

Time is Redis's: each pass reads Redis's clock (``TIME``, through :class:`RedisClock`) and
decides its ticks by it, never by the worker's clock. Every worker thus agrees on which tick is
due: one whose clock runs ahead neither fires a tick early nor, by recording a future tick as
handled, makes the others skip theirs.

Lifecycle: ``start()`` spawns the thread, which sleeps until the next tick of any entry (at most
1 s) between passes and backs off while Redis is unreachable (the cursor does not move, so the
tick is retried); ``stop()`` ends it. Tests call ``tick_once(now)`` with an injected time, which
stands in for Redis's clock.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable, Sequence

from .. import payload
from ..client import client_chain
from ..conf import KiqSettings
from ..periodic import PeriodicEntry, build_job
from ..storage import TRANSIENT_ERRORS, Storage
from .loop import LoopThread
from .scheduler import RedisClock

logger = logging.getLogger("django_kiq.cron")
MAX_SLEEP = 1.0
# A claim outlives its tick long enough to cover clock skew between hosts; the last-tick field
# in Redis guards beyond that.
CLAIM_TTL_MIN, CLAIM_TTL_MAX = 60.0, 86400.0


class CronTicker(LoopThread):
    thread_name = "kiq-cron"

    def __init__(self, *, store: Storage, identity: str, settings: KiqSettings,
                 entries: Sequence[PeriodicEntry], now: Callable[[], float] = time.time):
        super().__init__()
        self.store = store
        self.identity = identity
        self.settings = settings
        self.entries = list(entries)
        self.clock = RedisClock(store, local=now)  # ``now``: this process's own clock
        self.chain = client_chain(settings)
        self._cursor: dict[str, float] | None = None  # name -> last tick considered
        self._upcoming: dict[str, float] = {}  # name -> first tick after the cursor

    def start(self) -> None:
        names = ", ".join(f"{e.name} ({e.cron})" for e in self.entries)
        logger.info("cron: %d periodic entr%s: %s", len(self.entries),
                    "y" if len(self.entries) == 1 else "ies", names)
        super().start()

    def step(self) -> float:
        self.tick_once(self.clock.read())
        return self.delay(self.clock.estimate())

    # -- one pass ------------------------------------------------------------------------------

    def tick_once(self, now: float | None = None) -> int:
        """Fire every entry whose tick has come; returns how many jobs THIS process pushed.

        ``now`` is Redis's clock, read if not given.
        """
        now = self.clock.read() if now is None else now
        if self._cursor is None:
            self._cursor = self._initial_cursors(now)
        pushed = 0
        for entry in self.entries:
            try:
                pushed += self._tick_entry(entry, now)
            except TRANSIENT_ERRORS:
                raise
            except Exception:
                # A bad entry (middleware bug, payload too large) must not stop the others;
                # its tick is dropped, not retried in a loop.
                logger.exception("cron %s: could not enqueue its tick", entry.name)
                self._advance(entry, entry.latest_at(now))
        return pushed

    def delay(self, now: float) -> float:
        """Seconds until the next tick of any entry, at most MAX_SLEEP."""
        if not self._upcoming:
            return MAX_SLEEP
        return max(0.0, min(MAX_SLEEP, min(self._upcoming.values()) - now))

    def _initial_cursors(self, now: float) -> dict[str, float]:
        """Resume from the last tick Redis recorded; an entry never seen starts now."""
        states = self.store.periodic_states([e.name for e in self.entries])
        return {e.name: now if (tick := states[e.name].tick) is None else tick
                for e in self.entries}

    def _tick_entry(self, entry: PeriodicEntry, now: float) -> int:
        assert self._cursor is not None
        upcoming = self._upcoming.get(entry.name)
        if upcoming is None:
            upcoming = self._upcoming[entry.name] = entry.next_after(self._cursor[entry.name])
        if now < upcoming:
            return 0
        tick = entry.latest_at(now)
        following = entry.next_after(tick)
        pushed = 0
        late = now - tick
        if late <= entry.catchup_window(tick, following):
            pushed = self._fire(entry, tick, now, claim_ttl=2 * (following - tick))
        else:
            logger.warning("cron %s: tick %s missed by %.0fs, beyond the catch-up window; "
                           "next run at its next tick", entry.name, _fmt(tick), late)
        self._advance(entry, tick, following)
        return pushed

    def _advance(self, entry: PeriodicEntry, tick: float, following: float | None = None) -> None:
        assert self._cursor is not None
        self._cursor[entry.name] = tick
        self._upcoming[entry.name] = following or entry.next_after(tick)

    def _fire(self, entry: PeriodicEntry, tick: float, now: float, *, claim_ttl: float) -> int:
        job = build_job(entry, now)
        try:
            job = self.chain(job)
        except Exception:
            logger.exception("cron %s: client middleware raised; pushed unchanged", entry.name)
        if job is None:  # cancelled by client middleware (in every process alike)
            return 0
        job = payload.ready_for_queue(job, now, default_queue=entry.queue)
        queue = job["queue"]
        result = self.store.periodic_fire(
            name=entry.name, tick=tick, identity=self.identity, queue=queue,
            claim_ttl=min(CLAIM_TTL_MAX, max(CLAIM_TTL_MIN, claim_ttl)),
            raw=payload.encode(job), jid=job["jid"], now=now)
        if result == 1:
            logger.info("cron %s: enqueued %s %s on %s (tick %s%s)", entry.name, entry.job,
                        job["jid"], queue, _fmt(tick),
                        f", caught up {now - tick:.0f}s late" if now - tick >= 1 else "")
        elif result == -1:
            logger.info("cron %s: paused; tick %s skipped", entry.name, _fmt(tick))
        return 1 if result == 1 else 0


def _fmt(t: float) -> str:
    return time.strftime("%Y-%m-%d %H:%M:%S UTC", time.gmtime(t))
