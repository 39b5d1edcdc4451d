"""Every Redis key name django-kiq uses, in one place.

The layout is Sidekiq's (``queues``, ``queue:<name>``, ``schedule``, ``retry``, ``dead``,
``processes``, ``<identity>``, ``<identity>:work``, ``<identity>-signals``, ``stat:*``) so a Ruby
Sidekiq can share the Redis. Keys Sidekiq has no equivalent for live under ``kiq:``. The optional
namespace prefixes every key as ``<namespace>:<key>``, like redis-namespace does for Ruby.
"""

from __future__ import annotations

import datetime as dt
from dataclasses import dataclass

LANES = ("fetch", "sched")


@dataclass(frozen=True, slots=True)
class Keys:
    namespace: str = ""

    def _k(self, name: str) -> str:
        return f"{self.namespace}:{name}" if self.namespace else name

    @property
    def queues(self) -> str:
        return self._k("queues")

    def queue(self, name: str) -> str:
        return self._k(f"queue:{name}")

    @property
    def schedule(self) -> str:
        return self._k("schedule")

    @property
    def retry(self) -> str:
        return self._k("retry")

    @property
    def dead(self) -> str:
        return self._k("dead")

    def sorted_set(self, name: str) -> str:
        if name not in ("schedule", "retry", "dead"):
            raise ValueError(f"unknown job set {name!r}")
        return self._k(name)

    @property
    def processes(self) -> str:
        return self._k("processes")

    def process(self, identity: str) -> str:
        return self._k(identity)

    def work(self, identity: str) -> str:
        return self._k(f"{identity}:work")

    def signals(self, identity: str) -> str:
        return self._k(f"{identity}-signals")

    def stat(self, name: str) -> str:
        return self._k(f"stat:{name}")

    def stat_daily(self, name: str, day: dt.date) -> str:
        return self._k(f"stat:{name}:{day.isoformat()}")

    # django-kiq's own keys (no Sidekiq equivalent).

    def wip(self, identity: str, lane: str = "fetch") -> str:
        """An in-progress LIST of one process: jobs it took and has not finished with.

        Lane "fetch" holds jobs its processors run; lane "sched" holds jobs its poller moves
        from the schedule/retry sets to their queues.
        """
        if lane not in LANES:
            raise ValueError(f"unknown in-progress lane {lane!r}")
        suffix = "" if lane == "fetch" else f"|{lane}"
        return self._k(f"kiq:wip:{identity}{suffix}")

    @property
    def wip_registry(self) -> str:
        """HASH identity -> info JSON of every process that may own an in-progress list."""
        return self._k("kiq:wip")

    @property
    def paused_queues(self) -> str:
        return self._k("kiq:paused")

    def periodic_state(self) -> str:
        return self._k("kiq:periodic")

    def periodic_tick(self, name: str, tick: float) -> str:
        return self._k(f"kiq:periodic:tick:{name}:{tick:.0f}")

    def clock(self, identity: str) -> str:
        """STRING: how far a process's clock is ahead of Redis's, seconds (with a TTL)."""
        return self._k(f"kiq:clock:{identity}")

    def metrics(self, job_name: str, hour: int) -> str:
        return self._k(f"kiq:metrics:{hour}:{job_name}")

    def metrics_names(self, hour: int) -> str:
        return self._k(f"kiq:metrics:{hour}")

    # Execution control (docs/execution.md).

    def unique(self, digest: str) -> str:
        """STRING: the jid holding a unique job's lock, with a TTL (``@job(unique_for=...)``)."""
        return self._k(f"kiq:unique:{digest}")

    # Flow control (docs/limits.md); limiter names hold no ":" (limit_rules.NAME).

    def limit(self, name: str, part: str = "") -> str:
        """A limiter's state, ``kiq:limit:<name>`` (a ZSET of leases or of acquisition times,
        a HASH window and count, or a STRING: see limit_acquire.lua), or with ``part`` "meta"
        its HASH of kind, size, span and counters."""
        return self._k(f"kiq:limit:{name}:{part}" if part else f"kiq:limit:{name}")

    @property
    def limits(self) -> str:
        """ZSET: limiter name -> when it was last used (ms): the admin's Limits page."""
        return self._k("kiq:limits")

    def limit_holds(self, identity: str) -> str:
        """ZSET: limiter name -> latest expiry (ms) of the leases one process holds in it."""
        return self._k(f"kiq:limits:held:{identity}")

    def cursor(self, jid: str) -> str:
        """HASH: an iterable job's last checkpoint (cursor JSON, items done, saved at)."""
        return self._k(f"kiq:cursor:{jid}")

    @property
    def cancellations(self) -> str:
        """ZSET: "<jid> <who>" members scored by a sequence number: the recent cancellations."""
        return self._k("kiq:cancelled")

    def trash(self, token: str) -> str:
        """LIST or ZSET: a cleared queue or job set renamed aside while its unique jobs'
        locks are released (with a TTL; see set_clear.lua)."""
        return self._k(f"kiq:trash:{token}")

    @property
    def cancellation_seq(self) -> str:
        """STRING: the sequence number of the last cancellation."""
        return self._k("kiq:cancelled:seq")

    # Workflows (docs/workflows.md): job results, batches.

    def job_result(self, jid: str) -> str:
        """HASH: a ``@job(result_ttl=...)``'s or a django.tasks task's status, value, error,
        progress (with a TTL)."""
        return self._k(f"kiq:result:{jid}")

    def job_result_done(self, jid: str) -> str:
        """LIST: one element once the job finished, for waiters to block on (with a TTL)."""
        return self._k(f"kiq:result:{jid}:done")

    def batch(self, bid: str) -> str:
        """HASH: a batch's description, counters, callbacks and their fired flags."""
        return self._k(f"kiq:batch:{bid}")

    def batch_set(self, bid: str, name: str) -> str:
        """SET of a batch's members: "pending" (not succeeded yet), "failed", "dead"."""
        if name not in ("pending", "failed", "dead"):
            raise ValueError(f"unknown batch set {name!r}")
        return self._k(f"kiq:batch:{bid}:{name}")

    @property
    def batches(self) -> str:
        """ZSET: bid scored by creation time (the admin's Batches tab)."""
        return self._k("kiq:batches")


@dataclass(frozen=True, slots=True)
class ClusterKeys(Keys):
    """The Redis Cluster layout (``KIQ["REDIS_CLUSTER_URL"]``; storage/cluster.py).

    Every key carries a hash tag. A queue's list, every process's in-progress lane for that
    queue and its paused flag share the queue's tag, ``{kiq:q:<name>}``: fetching, acknowledging
    and requeueing stay single-slot, and different queues hash to different slots (shards).
    Everything else shares one tag, ``{kiq}`` (``{<namespace>}`` with a namespace), so the scripts
    over job sets, locks, limits, batches and results stay single-slot as in one Redis.
    Ruby Sidekiq does not know this layout: interop needs the single-Redis or Sentinel mode.
    """

    @property
    def tag(self) -> str:
        return self.namespace or "kiq"

    def _k(self, name: str) -> str:
        return f"{{{self.tag}}}{name}"

    def _q(self, queue: str, name: str) -> str:
        return f"{{{self.tag}:q:{queue}}}{name}"

    def queue(self, name: str) -> str:
        return self._q(name, f"queue:{name}")

    def queue_of(self, key: str) -> str | None:
        """The queue name if ``key`` is a queue list of this layout, else None."""
        head = f"{{{self.tag}:q:"
        if not key.startswith(head):
            return None
        name, _, rest = key[len(head):].partition("}")
        return name if rest == f"queue:{name}" else None

    def queue_wip(self, identity: str, queue: str) -> str:
        """LIST: the jobs ``identity`` fetched from ``queue`` and has not finished with."""
        return self._q(queue, f"kiq:wip:{identity}")

    def queue_paused(self, queue: str) -> str:
        """SET holding the queue's name while it is paused (mirrors ``paused_queues``)."""
        return self._q(queue, "kiq:paused")

    def queue_trash(self, queue: str, token: str) -> str:
        """A cleared queue renamed aside (RENAME needs the queue's slot; see set_clear.lua)."""
        return self._q(queue, f"kiq:trash:{token}")

    def queue_scratch(self, queue: str, token: str) -> str:
        """A throwaway key in the queue's slot, for a script's writes that belong elsewhere
        (deleted right after the call; see ClusterStorage.push_task)."""
        return self._q(queue, f"kiq:scratch:{token}")

    def wip_queues(self, identity: str) -> str:
        """SET: the queues ``identity`` has in-progress lanes in (recovery reads them)."""
        return self._k(f"kiq:wip:{identity}:queues")

    def outbox(self, queue: str) -> str:
        """LIST: jobs a script over global keys pushed for ``queue``, relayed to it next."""
        return self._k(f"kiq:outbox:{queue}")

    def settling(self, identity: str) -> str:
        """LIST, empty outside one MULTI: settle.lua's in-progress list for global effects."""
        return self._k(f"kiq:settling:{identity}")
