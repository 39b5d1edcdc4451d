"""Reliable fetch: queue order, the in-progress record, reconciliation and orphan recovery.

Every job a worker runs is first moved atomically (``fetch.lua``) from its queue into the
process's in-progress list and leaves it only once finished, so a crash never loses one. The
manager's fetcher thread is the only thread that adds to that list; it calls :meth:`fetch`.
When a fetch call fails mid-flight (connection killed), Redis may or may not have moved jobs:
:meth:`reconcile` compares the list with what the process knows it holds and adopts the rest.
:func:`recover_orphans` (run by the heartbeat thread) returns the jobs of processes whose
heartbeat expired to the head of their queues, or to dead after ``POISON_LIMIT`` recoveries;
:func:`plan_cutoff` counts a job still running at a shutdown's deadline the same way. Payloads
read back from Redis are untrusted: one that cannot be read goes to dead with the reason and
never stops a recovery pass.
"""

from __future__ import annotations

import json
import logging
import random
import time
from collections import Counter
from collections.abc import Callable, Iterable, Sequence

from .. import limits, payload, retry, workflows
from ..storage import TRANSIENT_ERRORS, Settle, Storage, Succeeded

logger = logging.getLogger("django_kiq.fetcher")
RECOVERIES_FIELD = "kiq_recoveries"


def parse_queue_args(specs: Iterable[str]) -> tuple[list[tuple[str, int]], bool]:
    """``["critical,3", "default"]`` -> ([("critical", 3), ("default", 1)], strict?)."""
    queues: list[tuple[str, int]] = []
    weighted = False
    for spec in specs:
        for part in str(spec).split():
            name, _, weight = part.partition(",")
            if weight:
                weighted = True
                if not weight.isdigit() or int(weight) < 1:
                    raise ValueError(f"queue weight in {part!r} must be a positive integer")
            queues.append((name, int(weight or 1)))
    if not queues:
        queues = [("default", 1)]
    return queues, not weighted


class QueueOrder:
    """Strict order (as listed) or weighted random order, recomputed per fetch."""

    def __init__(self, queues: Sequence[tuple[str, int]], strict: bool,
                 rng: random.Random | None = None):
        self.names = [name for name, _ in queues]
        self.weights = [weight for _, weight in queues]
        self.strict = strict or len(queues) == 1
        self.rng = rng or random.Random()

    def next(self) -> list[str]:
        if self.strict:
            return self.names
        # Weighted shuffle without replacement: each queue's chance to come first is
        # proportional to its weight, like Sidekiq's repeat-shuffle-uniq.
        keys = [self.rng.random() ** (1.0 / w) for w in self.weights]
        return [n for _, n in sorted(zip(keys, self.names), reverse=True)]


class Fetcher:
    def __init__(self, store: Storage, identity: str, order: QueueOrder):
        self.store = store
        self.identity = identity
        self.order = order
        self.paused: frozenset[str] = frozenset()  # as of the last fetch

    def fetch(self, count: int, acks: Sequence[bytes],
              settles: Sequence[Settle | Succeeded] = ()) -> list[tuple[str, bytes]]:
        """Acknowledge ``acks``, settle ``settles`` (done jobs with cleanups) and move up to
        ``count`` jobs into the in-progress list, in one round trip."""
        jobs, paused = self.store.fetch(self.identity, self.order.next(), count, acks, settles)
        self.paused = frozenset(paused)
        return jobs

    def reconcile(self, known: Iterable[bytes]) -> list[tuple[str, bytes]]:
        """Jobs in our in-progress list that the process does not know it holds.

        ``known`` must be taken *before* this call (running, buffered and unacknowledged
        jobs): a job finished concurrently is then still in ``known``, so it is never adopted.
        """
        unknown = Counter(self.store.wip_items(self.identity)) - Counter(known)
        adopted = []
        for raw, times in unknown.items():
            adopted.extend([(_queue_of(raw), raw)] * times)
        if adopted:
            logger.warning("reconciled %d job(s) fetched by a call whose reply was lost",
                           len(adopted))
        return adopted


def _queue_of(raw: bytes) -> str:
    try:
        value = json.loads(raw).get("queue")
    except (ValueError, AttributeError, RecursionError):
        # RecursionError: JSON nested ~20,000 deep. Uncaught it would kill the fetcher thread
        # (reconcile) or stall orphan recovery for good; the processor sends such a job dead.
        return "default"
    return value if isinstance(value, str) and value else "default"


# Seconds between the last-chance runs of jobs that died together (see plan_recovery).
APART = 2.0


def plan_recovery(raws: Sequence[bytes], *, identity: str, poison_limit: int,
                  now: float) -> list[Settle]:
    """Where each orphaned job goes: the head of its queue, or dead once it is a poison pill.

    A job about to get its last chance (one death short of ``poison_limit``) whose process held
    other jobs too goes to the retry set instead, each such job ``APART`` seconds after the
    previous one. A poison pill kills the jobs that share its process: put back together at the
    head of the queue, the same group is fetched together and dies together again, until every
    one of them reaches the limit (the chaos suite's poison scenario sent 4 innocent jobs dead
    that way). Run apart, the pill dies alone and the others complete.
    """
    entries = []
    crowded, apart = len(raws) > 1, 0
    for raw in raws:
        counted = _count_or_poison(raw, now=now, poison_limit=poison_limit, why=lambda count: (
            f"the process running this job died {count} times (last: {identity})"))
        if isinstance(counted, Settle):
            entries.append(counted)
            continue
        job, count = counted
        if crowded and count == poison_limit - 1:
            apart += 1
            job.update({
                "error_class": "django_kiq.ProcessDied",
                "error_message": f"the process running this job died {count} time(s) (last: "
                                 f"{identity}) with other jobs in it; runs apart from them once "
                                 "more before it counts as a poison pill",
            })
            entries.append(Settle(kind="z", old=raw, new=payload.encode(job), dest="retry",
                                  score=now + apart * APART,
                                  **workflows.requeued_cleanups(job, status="retrying")))
        else:
            entries.append(Settle(kind="q", old=raw, new=payload.encode(job),
                                  dest=_queue_of(raw), **workflows.requeued_cleanups(job)))
    return entries


def plan_requeue(jobs: Iterable[tuple[str, bytes]]) -> list[Settle]:
    """Jobs this process gives back unstarted (going quiet): unchanged, to the head of their
    queue."""
    return [Settle(kind="q", old=raw, new=raw, dest=queue) for queue, raw in jobs]


def plan_cutoff(jobs: Iterable[tuple[str, bytes]], *, identity: str, poison_limit: int,
                now: float) -> list[Settle]:
    """Jobs still running at the shutdown deadline: to the head of their queue, counted.

    Being cut off by a shutdown counts toward ``poison_limit`` like a death: a job that wedges
    its worker until someone stops it would otherwise be requeued, wedge the next worker, and
    so on forever, never reaching dead as it would if the worker had been killed instead.
    """
    entries = []
    for queue, raw in jobs:
        counted = _count_or_poison(raw, now=now, poison_limit=poison_limit, why=lambda count: (
            f"this job was still running when its process died or was stopped {count} times "
            f"(last: {identity}, stopped)"))
        if isinstance(counted, Settle):
            entries.append(counted)
        else:
            entries.append(Settle(kind="q", old=raw, new=payload.encode(counted[0]), dest=queue,
                                  **workflows.requeued_cleanups(counted[0])))
    return entries


def _count_or_poison(raw: bytes, *, now: float, poison_limit: int,
                     why: Callable[[int], str]) -> tuple[dict, int] | Settle:
    """The job with its recovery count raised, or its settle entry when it goes to dead: as a
    poison pill (``why(count)`` says why) or because it cannot be counted at all."""
    counted = _count_recovery(raw, now=now)
    if isinstance(counted, Settle):
        return counted
    job, count = counted
    if count >= poison_limit:
        return _poison(job, raw, now, why(count))
    return job, count


def _count_recovery(raw: bytes, *, now: float) -> tuple[dict, int] | Settle:
    """The job with its recovery count raised by one, or a dead entry if it cannot be counted.

    A payload that is not a job, or whose ``kiq_recoveries`` is not a count (it was read from
    Redis: "x" once stopped every heartbeat's recovery and every worker's start), goes to dead
    with the reason rather than vanish or stop the caller.
    """
    try:
        job = payload.decode(raw)
        count = (retry.read_count(job, RECOVERIES_FIELD) or 0) + 1
        job[RECOVERIES_FIELD] = count
        payload.encode(job)  # fails here, not in the caller, if it cannot be written back
        return job, count
    except Exception as exc:  # noqa: BLE001 - a malformed orphan still must not vanish
        reason = f"recovered from a dead or stopped process: {retry.message_of(exc)}"
        record = payload.malformed_record(raw, queue=_queue_of(raw), reason=reason, now=now)
        return Settle(kind="d", old=raw, new=payload.encode(record), score=now)


def _poison(job: dict, raw: bytes, now: float, why: str) -> Settle:
    job.update({"error_class": "django_kiq.PoisonJob", "failed_at": now,
                "error_message": f"{why}; moved to dead instead of running again"})
    # Dead like any other way: counted in its batch (on_death), its result failed, in this step.
    return Settle(kind="d", old=raw, new=payload.encode(job), score=now,
                  **workflows.dead_cleanups(job))


def recover_orphans(store: Storage, *, poison_limit: int, now: float | None = None) -> int:
    """Recover every dead process's in-progress jobs; returns how many were moved.

    A Redis outage stops the pass (the caller backs off); any other error is logged and the
    pass goes on with the next process, so one bad entry never stops recovery for the rest.
    """
    moved = 0
    for identity in store.orphans():
        try:
            moved += _recover(store, identity, poison_limit=poison_limit, now=now)
        except TRANSIENT_ERRORS:
            raise
        except Exception:  # noqa: BLE001 - the next heartbeat tries this process again
            logger.exception("could not recover the jobs of dead process %s", identity)
    return moved


def recover_process(store: Storage, identity: str, *, poison_limit: int,
                    now: float | None = None) -> int:
    """Recover one process's in-progress jobs now, as if its heartbeat had expired.

    For a caller that knows the process is dead before its heartbeat expires: the supervisor of
    ``kiq_worker --processes`` when ``waitpid`` reported its child's exit. The caller removes the
    process hash first (``Storage.unregister``); while it exists, the guarded steps do nothing.
    """
    return _recover(store, identity, poison_limit=poison_limit, now=now)


def _recover(store: Storage, identity: str, *, poison_limit: int, now: float | None) -> int:
    moved = 0
    now_ = time.time() if now is None else now
    for lane in ("sched", "fetch"):
        raws = store.wip_items(identity, lane)
        if lane == "sched":  # the poller had not pushed these yet: no run happened
            entries = [Settle(kind="l", old=raw, new=raw, dest=_queue_of(raw)) for raw in raws]
        else:
            entries = plan_recovery(raws, identity=identity, poison_limit=poison_limit,
                                    now=now_)
        flags = store.settle(identity, entries, lane=lane, guard=True, now=now_)
        if flags is None:  # the owner came back to life
            return moved
        moved += sum(flags)
    limits.release_dead_process(store, identity)  # its limiter slots come back now
    store.unregister(identity, guard=True)
    if moved:
        logger.warning("recovered %d in-progress job(s) of dead process %s", moved, identity)
    return moved
