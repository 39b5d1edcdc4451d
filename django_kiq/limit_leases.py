"""A process's concurrent-limiter leases: those its blocks hold, and those it keeps for reuse.

Used by :mod:`django_kiq.limits` from any thread that enters or leaves a concurrent limiter's
block, and by one ``kiq-limit-watch`` thread per process (a daemon, started on first use).

Why keep leases: taken alone, a block costs two round trips (acquire, release), which dominate
a short job (docs/limits.md, "Cost"). So when a block ends, its process keeps the lease for the
next block of the same limiter (same name, size and lock_timeout) in any of its threads, which
takes it with no round trip. What still holds:

- **at most ``size`` at once, everywhere**: a kept lease stays in the limiter's lease set in
  Redis, so it counts as in use (the admin shows it); every running block has its own lease.
- **every block has its lease for lock_timeout**: a lease is reused only within ``REUSE_FOR``
  of being taken from Redis, and is taken with an expiry of lock_timeout + REUSE_FOR.
- **fairness under saturation**: after REUSE_FOR the lease goes back to Redis when its block
  ends, and the process competes for a slot like everyone else; a kept lease nobody reuses
  goes back after ``LINGER``. Another process waits at most about that much longer.
- **a dead holder's slots come back at once**: kept leases are in the process's held index like
  any other, so orphan recovery releases them.

A limiter with lock_timeout under ``KEEP_MIN_LOCK`` keeps nothing (an extra second would
matter to it). The counts of blocks run on reused leases travel to Redis with the release.

The watch thread warns when a block holds its slot past lock_timeout (no Redis call) and gives
back kept leases that are due; it sleeps until the earliest such moment. A forked child starts
with nothing kept (its parent's leases are not its own); at exit the kept leases are released.
"""

from __future__ import annotations

import atexit
import logging
import math
import os
import threading
import time
from typing import Any

logger = logging.getLogger("django_kiq.limits")

LINGER = 0.25  # seconds a kept lease waits for its next block before going back
REUSE_FOR = 1.0  # seconds after it was taken from Redis during which a lease may be reused
KEEP_MIN_LOCK = 2.0  # limiters with a shorter lock_timeout keep no lease


def reuse_window(lock_timeout: float) -> float:
    """Seconds a lease of this limiter may be reused (and outlives lock_timeout in Redis)."""
    return REUSE_FOR if lock_timeout >= KEEP_MIN_LOCK else 0.0


class Lease:
    """One lease this process holds. ``taken``: the monotonic time just before the acquisition
    was sent (its Redis expiry is at least ``taken`` + lock_timeout + reuse); ``clock``: Redis's
    clock minus the monotonic one, as the grant told; ``reused``: blocks after the first;
    ``deadline``: when the block on it passes lock_timeout (monotonic)."""

    __slots__ = ("key", "member", "taken", "clock", "reuse", "reused", "kept_at", "deadline",
                 "overdue")

    def __init__(self, key: Any, member: str, *, taken: float, clock: float, reuse: float):
        self.key = key
        self.member = member
        self.taken = taken
        self.clock = clock
        self.reuse = reuse
        self.reused = 0
        self.kept_at = 0.0
        self.deadline = 0.0
        self.overdue = False

    def due(self) -> float:
        """When a kept lease goes back: unused for LINGER, or no longer reusable."""
        return min(self.kept_at + LINGER, self.taken + self.reuse)


class _Pool:
    __slots__ = ("limiter", "idle", "waiting")

    def __init__(self, limiter: Any):
        self.limiter = limiter  # the first Limiter seen with this key: its store and name
        self.idle: list[Lease] = []
        self.waiting = 0


class Leases:
    """The process's leases (one instance, :data:`shared`); every method is thread-safe and
    takes the one lock once."""

    def __init__(self) -> None:
        self._cond = threading.Condition(threading.Lock())
        self._pools: dict[Any, _Pool] = {}
        self._open: dict[Lease, Any] = {}  # leases a block runs on -> its limiter
        self._thread: threading.Thread | None = None
        self._wake_at = -math.inf  # when the watch thread will look again (-inf: it is awake)
        self._kept = False  # a lease was kept since the watch thread last looked

    # -- the blocks' side ------------------------------------------------------------------------

    def start(self, key: Any, limiter: Any) -> Lease | None:
        """A block starts on a kept lease of ``key`` if one may still be reused (no Redis
        call); None if there is none."""
        with self._cond:
            now = time.monotonic()
            lease = self._take(key, now)
            if lease is not None:
                self._opened(limiter, lease, now)
            return lease

    def wait(self, key: Any, limiter: Any, timeout: float) -> Lease | None:
        """Wait up to ``timeout`` for a lease of ``key`` kept by another thread; a block
        starts on it."""
        deadline = time.monotonic() + timeout
        with self._cond:
            pool = self._pool(key, limiter)
            pool.waiting += 1
            try:
                while True:
                    now = time.monotonic()
                    lease = self._take(key, now)
                    if lease is not None:
                        self._opened(limiter, lease, now)
                        return lease
                    if now >= deadline:
                        return None
                    self._cond.wait(deadline - now)
            finally:
                pool.waiting -= 1

    def opened(self, limiter: Any, lease: Lease) -> None:
        """A block starts on a lease just taken from Redis."""
        with self._cond:
            self._opened(limiter, lease, time.monotonic())

    def end(self, limiter: Any, lease: Lease) -> tuple[bool, bool]:
        """A block ended: (kept for the next block, it had been reported past lock_timeout).
        Not kept: the caller gives the lease back."""
        with self._cond:
            self._open.pop(lease, None)
            now = time.monotonic()
            if lease.overdue or now >= lease.taken + lease.reuse:
                return False, lease.overdue
            pool = self._pool(lease.key, limiter)
            lease.kept_at = now
            pool.idle.append(lease)
            self._kept = True
            if pool.waiting or lease.due() < self._wake_at:
                self._cond.notify_all()
            return True, False

    def release_kept(self) -> int:
        """Give every kept lease back now (at exit; tests); the number given back."""
        with self._cond:
            due = [(pool, lease) for pool in self._pools.values() for lease in pool.idle]
            for pool in self._pools.values():
                pool.idle.clear()
        _give_back(due)
        return len(due)

    def forget(self) -> None:
        """In a forked child: the parent's leases and thread are not this process's."""
        self.__init__()  # type: ignore[misc]  # a reset in place: this class has no subclass

    # -- under the lock --------------------------------------------------------------------------

    def _take(self, key: Any, now: float) -> Lease | None:
        pool = self._pools.get(key)
        if pool is None:
            return None
        idle = pool.idle
        for i in range(len(idle) - 1, -1, -1):  # the most recently kept first
            lease = idle[i]
            if now < lease.taken + lease.reuse:
                del idle[i]
                lease.reused += 1
                return lease
        return None  # any left are past reuse: the watch thread gives them back

    def _opened(self, limiter: Any, lease: Lease, now: float) -> None:
        lease.deadline = now + limiter.lock_timeout
        lease.overdue = False
        self._open[lease] = limiter
        if lease.deadline < self._wake_at:
            self._cond.notify_all()
        if self._thread is None:
            self._thread = threading.Thread(target=self._run, name="kiq-limit-watch",
                                            daemon=True)
            self._thread.start()

    def _pool(self, key: Any, limiter: Any) -> _Pool:
        pool = self._pools.get(key)
        if pool is None:
            pool = self._pools[key] = _Pool(limiter)
        return pool

    # -- the kiq-limit-watch thread --------------------------------------------------------------

    def _run(self) -> None:
        while True:
            with self._cond:
                now = time.monotonic()
                self._warn_overdue(now)
                due = self._collect_due(now)
                if not due:
                    self._wake_at = self._next_wake(now)
                    self._cond.wait(timeout=min(self._wake_at - now, 60.0))
                    self._wake_at = -math.inf
                    continue
            _give_back(due)

    def _warn_overdue(self, now: float) -> None:
        for lease, limiter in self._open.items():
            if lease.deadline <= now and not lease.overdue:
                lease.overdue = True
                logger.warning("limiter %r: %s has held its slot past lock_timeout (%gs); the "
                               "slot has expired or soon will and may be given to another "
                               "holder: raise lock_timeout or shorten the block", limiter.name,
                               lease.member, limiter.lock_timeout)

    def _collect_due(self, now: float) -> list[tuple[_Pool, Lease]]:
        due = []
        for key, pool in list(self._pools.items()):
            keep = [lease for lease in pool.idle if lease.due() > now]
            due += [(pool, lease) for lease in pool.idle if lease.due() <= now]
            pool.idle[:] = keep
            if not keep and not pool.waiting:
                del self._pools[key]  # dynamic names: keep the map small
        return due

    def _next_wake(self, now: float) -> float:
        wake = now + 60.0
        for lease in self._open:
            if not lease.overdue:
                wake = min(wake, lease.deadline)
        for pool in self._pools.values():
            for lease in pool.idle:
                wake = min(wake, lease.due())
        if self._kept:  # busy: look again soon rather than be woken by every keep
            self._kept = False
            wake = min(wake, now + LINGER)
        return wake


def _give_back(due: list[tuple[_Pool, Lease]]) -> None:
    for pool, lease in due:
        limiter = pool.limiter
        try:
            limiter._storage().limit_release(limiter.name, lease.member, lease.reused)
        except Exception:  # noqa: BLE001 - the lease expires by itself; the thread goes on
            logger.exception("could not give back a kept slot of limiter %r", limiter.name)


shared = Leases()
os.register_at_fork(after_in_child=shared.forget)
atexit.register(shared.release_kept)
