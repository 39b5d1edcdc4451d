"""The poller: moves due jobs from the ``schedule`` and ``retry`` sets onto their queues.

Runs on the ``kiq-scheduler`` thread of every worker process. Each pass claims up to a batch of
due jobs atomically (``due.lua``: two pollers never claim the same job) into this process's
scheduler in-progress list, runs client middleware on them again (it may change or cancel a job),
stamps ``enqueued_at`` and settles them onto their queues (``settle.lua``). A crash between the
two steps leaves the claimed jobs recoverable, never lost. Between passes it sleeps until the
earliest due time, capped by ``KIQ["POLL_INTERVAL_MAX"]``, so jobs start on time without a
fixed multi-second interval.
"""

from __future__ import annotations

import logging
import random
import time
from collections.abc import Callable

from .. import payload
from ..client import client_chain
from ..conf import KiqSettings
from ..storage import Settle, Storage
from .loop import LoopThread

logger = logging.getLogger("django_kiq.scheduler")
BATCH = 500
SETS = ("schedule", "retry")


class Poller(LoopThread):
    thread_name = "kiq-scheduler"

    def __init__(self, *, store: Storage, identity: str, settings: KiqSettings,
                 now: Callable[[], float] = time.time):
        super().__init__()
        self.store = store
        self.identity = identity
        self.settings = settings
        self.now = now
        self.chain = client_chain(settings)

    def step(self) -> float:
        self.poll_once()
        return self._delay_until_next()

    def poll_once(self, now: float | None = None) -> int:
        """Move every job due at ``now``; returns how many reached a queue."""
        moved = 0
        for set_name in SETS:
            while True:
                claimed = self.store.claim_due(set_name, self.identity,
                                               self.now() if now is None else now, BATCH)
                if claimed:
                    moved += self._enqueue(claimed)
                if len(claimed) < BATCH:
                    break
        return moved

    def _enqueue(self, claimed: list[bytes]) -> int:
        now = self.now()
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
        job.pop("at", None)
        job["enqueued_at"] = now
        queue = job.get("queue") if isinstance(job.get("queue"), str) else "default"
        return Settle(kind="l", old=raw, new=payload.encode(job), dest=queue or "default")

    def _delay_until_next(self) -> float:
        cap = self.settings.poll_interval_max
        next_due = self.store.next_due(SETS)
        if next_due is None:
            return cap * random.uniform(0.8, 1.0)
        return max(0.0, min(cap, next_due - self.now()))
