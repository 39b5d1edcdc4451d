"""Flow control: concurrency and rate limits shared by every process on the same Redis.

::

    ERP = limits.concurrent("erp", 50, lock_timeout=30, wait_timeout=5)
    GITHUB = limits.window("github", 5000, "hour")

    with ERP:                                   # or: with ERP.within_limit() as grant:
        ...

A :class:`Limiter` is a description (creating one does no I/O, so one per call for dynamic names
such as ``f"stripe-{account_id}"`` is cheap) and is safe to share between threads. Each
acquisition is one script call to the storage layer (``limit_acquire.lua``, on Redis's clock)
and a concurrent release one more; the rules are :mod:`django_kiq.limit_rules`. A concurrent
lease whose block ended is kept a moment by the process and reused by its next block of the
same limiter with no round trip (:mod:`django_kiq.limit_leases`: what that keeps guaranteed).
With no room, the calling thread waits up to ``wait_timeout``, sleeping until the limiter says
room is expected (rate styles) or with a short backoff (concurrent slots can be given back any
time; a lease kept by another thread of this process wakes it at once), then raises
:class:`OverLimit`.

Inside a job, the worker's middleware (:func:`job_middleware`, innermost of the built-ins)
turns :class:`OverLimit` into a reschedule for when the limiter expects room (no retry counted,
no error recorded), at most ``reschedule`` times per limiter; outside a job it propagates.
Concurrent slots are leases of a process identity (the member also names the thread that took
it): given back when the block ends (or kept for reuse, see above), expired after
``lock_timeout``, and released at once by orphan recovery when the holder's process dies
(:func:`release_dead_process`). A ``kiq-limit-watch`` thread, started on first use, logs a
warning when a block holds a slot past its ``lock_timeout`` and gives kept leases back.
"""

from __future__ import annotations

import logging
import os
import random
import secrets
import socket
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

from . import limit_leases as leases, limit_rules as rules
from .exceptions import KiqError

logger = logging.getLogger("django_kiq.limits")

__all__ = ["OverLimit", "Limiter", "Slot", "LimitRecord", "concurrent", "window", "bucket",
           "leaky", "records", "reset"]

NOTE_EVERY = 10.0  # seconds between a process's records of one limiter's use (the admin list)
POLL_FIRST, POLL_MAX = 0.01, 0.25  # waiting for a concurrent slot: backoff between tries
DEFAULT_LOCK_TIMEOUT = 30.0
DEFAULT_CONCURRENT_WAIT = 5.0


class OverLimit(KiqError):
    """No room in a limiter within its ``wait_timeout``. ``wait``: seconds until room is
    expected (for a concurrent limiter: until its oldest lease expires, an upper bound)."""

    def __init__(self, limiter: "Limiter", wait: float, at: float):
        super().__init__(f"limiter {limiter.name!r} ({limiter.describe()}) is full; room "
                         f"expected in {wait:.3f}s")
        self.limiter = limiter
        self.name = limiter.name
        self.wait = wait
        self.at = at  # Redis's clock at the last refusal, epoch seconds


# -- process identity -----------------------------------------------------------------------------

_identity: tuple[int, str] | None = None  # (pid, identity): recomputed in a forked child


def bind_process(identity: str) -> None:
    """Called by a worker at start: its leases carry the identity orphan recovery knows."""
    global _identity
    _identity = (os.getpid(), identity)


def process_identity() -> str:
    global _identity
    current = _identity
    if current is None or current[0] != os.getpid():
        current = _identity = (os.getpid(), f"{socket.gethostname()}:{os.getpid()}:"
                                            f"{secrets.token_hex(6)}")
    return current[1]


def release_dead_process(store: Any, identity: str) -> int:
    """Orphan recovery: give back every lease of dead process ``identity`` (-1 if alive)."""
    released = store.limit_reap(identity)
    if released > 0:
        logger.warning("released %d limiter slot(s) held by dead process %s", released,
                       identity)
    return released


# -- limiters -----------------------------------------------------------------------------------

_noted: dict[str, float] = {}  # limiter name -> monotonic time this process last recorded a use


def _note_due(name: str) -> bool:
    now = time.monotonic()
    if now - _noted.get(name, -NOTE_EVERY) < NOTE_EVERY:
        return False
    if len(_noted) > 10_000:  # dynamic names: keep the memo small
        _noted.clear()
    _noted[name] = now
    return True


class Slot:
    """One acquisition as a context manager: ``with LIMITER.within_limit() as slot``.

    ``slot.at`` is Redis's clock when room was taken (epoch seconds; on a reused lease, the
    block's start on Redis's clock as the lease's grant tells it).
    """

    __slots__ = ("limiter", "member", "at", "_lease")

    def __init__(self, limiter: "Limiter"):
        self.limiter = limiter
        self.member = ""
        self.at = 0.0
        self._lease: leases.Lease | None = None

    def __enter__(self) -> "Slot":
        self.limiter._acquire(self)
        return self

    def __exit__(self, *exc_info: Any) -> None:
        self.limiter._release(self)


class Limiter:
    """A named limit (see the module docstring); build one with :func:`concurrent`,
    :func:`window`, :func:`bucket` or :func:`leaky`."""

    __slots__ = ("name", "kind", "size", "interval", "lock_timeout", "wait_timeout",
                 "reschedule", "_store", "_held", "_pool", "_reuse")

    def __init__(self, kind: str, name: str, size: int, *, interval: float | None = None,
                 lock_timeout: float | None = None, wait_timeout: float = 0.0,
                 reschedule: int = rules.DEFAULT_RESCHEDULE, store: Any = None):
        self.kind = kind
        self.name = rules.check_name(name)
        self.size = rules.check_size(size)
        self.interval = interval
        self.lock_timeout = lock_timeout
        self.wait_timeout = rules.check_seconds(wait_timeout, "wait_timeout")
        if isinstance(reschedule, bool) or not isinstance(reschedule, int) or reschedule < 0:
            raise ValueError(f"reschedule {reschedule!r} is invalid: a whole number >= 0")
        self.reschedule = reschedule
        self._store = store
        self._held = threading.local()  # this thread's open ``with limiter:`` slots
        # Which kept leases this limiter may reuse (limit_leases.py): with the process identity.
        self._pool = (id(store) if store is not None else 0, self.name, self.size, lock_timeout)
        self._reuse = leases.reuse_window(lock_timeout) if lock_timeout is not None else 0.0

    def __repr__(self) -> str:
        return f"<Limiter {self.name} {self.describe()}>"

    def describe(self) -> str:
        if self.kind == "concurrent":
            return f"concurrent {self.size}, lock_timeout {self.lock_timeout:g}s"
        return f"{self.kind} {self.size} per {self.interval:g}s"

    @property
    def span(self) -> float:
        span = self.lock_timeout if self.kind == "concurrent" else self.interval
        assert span is not None  # validated: the one of the two this kind has
        return span

    def within_limit(self) -> Slot:
        return Slot(self)

    def __enter__(self) -> Slot:
        slot = Slot(self)
        slot.__enter__()
        stack = getattr(self._held, "stack", None)
        if stack is None:
            stack = self._held.stack = []
        stack.append(slot)
        return slot

    def __exit__(self, *exc_info: Any) -> None:
        self._held.stack.pop().__exit__(*exc_info)

    # -- one acquisition ------------------------------------------------------------------------

    def _storage(self) -> Any:
        if self._store is None:
            from . import storage

            return storage.get_default()
        return self._store

    def _acquire(self, slot: Slot) -> None:
        if self.kind == "concurrent":
            self._take_lease(slot)
            return
        store = self._storage()
        member = secrets.token_hex(6) if self.kind == "bucket" else ""
        deadline = time.monotonic() + self.wait_timeout
        while True:
            grant = store.limit_acquire(kind=self.kind, name=self.name, size=self.size,
                                        span=self.span, member=member,
                                        note=_note_due(self.name))
            if grant.allowed:
                slot.at = grant.at
                return
            if grant.wait > deadline - time.monotonic():  # the limiter knows when room comes
                raise OverLimit(self, grant.wait, grant.at)
            time.sleep(grant.wait + random.random() * 0.005)  # a little spread among waiters

    def _take_lease(self, slot: Slot) -> None:
        key = (self._pool, process_identity())
        lease = leases.shared.start(key, self) if self._reuse else None
        if lease is None:
            lease = self._lease_from_redis(key, self._reuse)
        slot._lease, slot.member = lease, lease.member
        slot.at = round(lease.clock + time.monotonic(), 3)

    def _lease_from_redis(self, key: Any, reuse: float) -> leases.Lease:
        store = self._storage()
        holder = process_identity()
        member = f"{holder}|{threading.current_thread().name}|{secrets.token_hex(4)}"
        deadline = time.monotonic() + self.wait_timeout
        pause = POLL_FIRST
        while True:
            sent = time.monotonic()
            grant = store.limit_acquire(kind="concurrent", name=self.name, size=self.size,
                                        span=self.lock_timeout, member=member, holder=holder,
                                        note=_note_due(self.name), reuse=reuse)
            if grant.allowed:
                lease = leases.Lease(key, member, taken=sent, reuse=reuse,
                                     clock=grant.at - time.monotonic())
                leases.shared.opened(self, lease)
                return lease
            # A slot may be given back before the oldest lease expires: a short backoff, and
            # a lease kept by another thread of this process ends the wait at once.
            sleep = min(grant.wait, pause)
            pause = min(pause * 2, POLL_MAX)
            if sleep > deadline - time.monotonic():
                raise OverLimit(self, grant.wait, grant.at)
            kept = leases.shared.wait(key, self, sleep + random.random() * 0.005)
            if kept is not None:
                return kept

    def _release(self, slot: Slot) -> None:
        lease = slot._lease
        if lease is None:
            return
        slot._lease, slot.member = None, ""
        kept, overdue = leases.shared.end(self, lease)
        if kept:
            return  # for this process's next block (limit_leases.py)
        if not self._storage().limit_release(self.name, lease.member, lease.reused) and \
                not overdue:
            logger.warning("the slot of limiter %r held by %s was no longer held when its "
                           "block ended (reset, or taken back by orphan recovery)", self.name,
                           lease.member)


def concurrent(name: str, size: int, *, lock_timeout: float = DEFAULT_LOCK_TIMEOUT,
               wait_timeout: float = DEFAULT_CONCURRENT_WAIT,
               reschedule: int = rules.DEFAULT_RESCHEDULE, store: Any = None) -> Limiter:
    """At most ``size`` blocks at once, across every process; a slot lasts ``lock_timeout``."""
    return Limiter("concurrent", name, size,
                   lock_timeout=rules.check_seconds(lock_timeout, "lock_timeout", zero=False),
                   wait_timeout=wait_timeout, reschedule=reschedule, store=store)


def window(name: str, size: int, interval: str | float, *, wait_timeout: float = 0.0,
           reschedule: int = rules.DEFAULT_RESCHEDULE, store: Any = None) -> Limiter:
    """At most ``size`` per clock-aligned interval (the count restarts at each boundary)."""
    return Limiter("window", name, size, interval=rules.interval_seconds(interval),
                   wait_timeout=wait_timeout, reschedule=reschedule, store=store)


def bucket(name: str, size: int, interval: str | float, *, wait_timeout: float = 0.0,
           reschedule: int = rules.DEFAULT_RESCHEDULE, store: Any = None) -> Limiter:
    """At most ``size`` in any span of one interval (each use counts for one interval)."""
    return Limiter("bucket", name, size, interval=rules.interval_seconds(interval),
                   wait_timeout=wait_timeout, reschedule=reschedule, store=store)


def leaky(name: str, size: int, interval: str | float, *, wait_timeout: float = 0.0,
          reschedule: int = rules.DEFAULT_RESCHEDULE, store: Any = None) -> Limiter:
    """Bursts of up to ``size``, draining at ``size`` per interval."""
    return Limiter("leaky", name, size, interval=rules.interval_seconds(interval),
                   wait_timeout=wait_timeout, reschedule=reschedule, store=store)


# -- inside a job ---------------------------------------------------------------------------------

def job_limiter(job_name: str, size: int) -> Limiter:
    """``@job(concurrency=N)``: a concurrent limiter named after the job."""
    name = "".join(c if c.isascii() and (c.isalnum() or c in "-_.") else "-" for c in job_name)
    return concurrent(name[:200] or "job", size)


_job_limiters: dict[tuple[str, int], Limiter] = {}


def job_middleware(call_next: Callable) -> Callable:
    """The worker's built-in middleware: runs a ``concurrency=N`` job inside its limiter and
    turns OverLimit into ``ctx.reschedule`` (then re-raises; the processor writes it)."""

    def limited(ctx: Any) -> Any:
        definition = ctx.definition
        size = getattr(definition.options, "concurrency", None) if definition else None
        try:
            if not size:
                return call_next(ctx)
            key = (definition.name, size)
            limiter = _job_limiters.get(key) or _job_limiters.setdefault(
                key, job_limiter(definition.name, size))
            with limiter.within_limit():
                return call_next(ctx)
        except OverLimit as exc:
            ctx.reschedule = _plan(ctx, exc)
            raise

    return limited


def _plan(ctx: Any, exc: OverLimit) -> rules.Reschedule | None:
    limiter = exc.limiter
    plan = rules.plan_reschedule(ctx.job, name=limiter.name, kind=limiter.kind, wait=exc.wait,
                                 limit=limiter.reschedule, now=exc.at)
    if plan is None:
        logger.warning("jid=%s job=%s: limiter %r still full after %d reschedules; an "
                       "ordinary failure now", ctx.jid, ctx.display_name, limiter.name,
                       limiter.reschedule)
        return None
    logger.info("jid=%s job=%s: limiter %r is full; rescheduled in %.2fs (%d/%d)", ctx.jid,
                ctx.display_name, limiter.name, plan.at - exc.at, plan.count,
                limiter.reschedule)
    try:
        limiter._storage().limit_count_reschedule(limiter.name)
    except Exception:  # noqa: BLE001 - a counter for the admin; the reschedule still happens
        logger.exception("could not count a reschedule of limiter %r", limiter.name)
    return plan


# -- the read/manage side (django_kiq.api, the admin) ---------------------------------------------

@dataclass(frozen=True, slots=True, kw_only=True)
class LimitRecord:
    """One limiter used in the last 24 hours, as ``api.limits()`` reports it.

    ``in_use``: leases held now (concurrent) or acquisitions counted in the current window
    (window, bucket, leaky); ``interval`` is None for concurrent, ``lock_timeout`` None for the
    others; the counters run since first use (or the last reset).
    """

    name: str
    kind: str
    size: int
    interval: float | None
    lock_timeout: float | None
    in_use: int
    acquired: int
    throttled: int
    rescheduled: int
    last_used: float


def records(*, store: Any = None, hours: float = 24.0) -> list[LimitRecord]:
    """Every limiter used in the last ``hours`` hours, by name (three round trips)."""
    if store is None:
        from . import storage

        store = storage.get_default()
    names = store.limit_names(time.time() - hours * 3600)
    now, states = store.limit_states(names)
    out = []
    for s in states:
        if s.kind not in rules.KINDS or s.size < 1 or s.span <= 0:
            continue  # its meta hash expired or is damaged: nothing to show
        out.append(LimitRecord(
            name=s.name, kind=s.kind, size=s.size,
            interval=None if s.kind == "concurrent" else s.span,
            lock_timeout=s.span if s.kind == "concurrent" else None,
            in_use=rules.usage(s.kind, s.state, size=s.size, interval=s.span, now=now),
            acquired=s.acquired, throttled=s.throttled, rescheduled=s.rescheduled,
            last_used=s.last_used))
    return out


def reset(name: str, *, store: Any = None) -> None:
    """Free a limiter now (its leases, window or log) and zero its counters."""
    rules.check_name(name)
    if store is None:
        from . import storage

        store = storage.get_default()
    store.limit_reset(name)
