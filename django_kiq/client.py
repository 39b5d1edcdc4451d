"""Enqueueing: building job hashes, client middleware, on-commit pushes, Redis errors.

Runs in whatever process calls ``.enqueue()`` (web requests, shells, the worker itself). Argument
checks and client middleware run at call time so mistakes surface where they are made; inside
``transaction.atomic()`` the Redis push waits for the commit (``KIQ["ENQUEUE_ON_COMMIT"]``) and a
rollback pushes nothing. The jid is returned at once either way.
"""

from __future__ import annotations

import datetime as dt
import importlib
import logging
import threading
import time
from collections.abc import Callable, Iterable, Sequence
from typing import Any, Protocol

from django.core.exceptions import ImproperlyConfigured
from django.db import transaction

from . import payload, storage, unique
from .conf import KiqSettings, get_settings
from .exceptions import DuplicateJob, EnqueueError, PayloadTooLarge
from .middleware import build_chain

logger = logging.getLogger("django_kiq.client")

_chain_lock = threading.Lock()
_chains: dict[tuple, Callable] = {}


def enqueue(job_obj, args: Sequence, kwargs: dict[str, Any]) -> str | None:
    return _submit(job_obj, [(tuple(args), dict(kwargs))], at=None)[0]


def enqueue_many(job_obj, arg_list: Iterable[Sequence]) -> list[str | None]:
    items = []
    for i, item in enumerate(arg_list):
        if not isinstance(item, (tuple, list)):
            raise TypeError(f"enqueue_many item {i} is a {type(item).__name__}; "
                            "pass a tuple of positional arguments per job")
        items.append((tuple(item), {}))
    return _submit(job_obj, items, at=None)


def enqueue_in(job_obj, delay: float | dt.timedelta, args: Sequence,
               kwargs: dict[str, Any]) -> str | None:
    seconds = delay.total_seconds() if isinstance(delay, dt.timedelta) else delay
    if not isinstance(seconds, (int, float)) or isinstance(seconds, bool):
        raise TypeError(f"enqueue_in takes seconds or a timedelta, not {delay!r}")
    return _submit(job_obj, [(tuple(args), dict(kwargs))], at=time.time() + seconds)[0]


def enqueue_at(job_obj, when: dt.datetime | float, args: Sequence,
               kwargs: dict[str, Any]) -> str | None:
    return _submit(job_obj, [(tuple(args), dict(kwargs))], at=to_epoch(when))[0]


def to_epoch(when: dt.datetime | float) -> float:
    if isinstance(when, dt.datetime):
        if when.tzinfo is None or when.utcoffset() is None:
            raise ValueError("enqueue_at needs an aware datetime (or epoch seconds); "
                             f"got naive {when!r}")
        return when.timestamp()
    if isinstance(when, (int, float)) and not isinstance(when, bool):
        return float(when)
    raise TypeError(f"enqueue_at takes an aware datetime or epoch seconds, not {when!r}")


def _submit(job_obj, items: list[tuple[tuple, dict]], at: float | None) -> list[str | None]:
    settings = get_settings()
    options = job_obj.options
    fields = options.payload_fields()
    now = time.time()
    jobs = []
    for (args, kwargs), jid in zip(items, payload.new_jids(len(items))):
        payload.check_args(args, kwargs)
        job = payload.build(name=job_obj.name, args=args, kwargs=kwargs, queue=options.queue,
                            now=now, options=fields, jid=jid)
        if at is not None and at > now:
            job["at"] = at
        jobs.append(job)
    if options.expires_in is not None or options.unique_for is not None:
        return _submit_controlled(job_obj, options, items, jobs, settings, now)
    return submit_payloads(jobs, settings)


def _submit_controlled(job_obj, options, items: list[tuple[tuple, dict]],
                       jobs: list[dict[str, Any]], settings: KiqSettings,
                       now: float) -> list[str | None]:
    """Expiring and unique jobs: stamp their per-call fields, drop duplicates in the batch."""
    out: list[str | None] = [None] * len(jobs)
    kept, positions, seen = [], [], set()
    for i, ((args, kwargs), job) in enumerate(zip(items, jobs)):
        start = job.get("at", now)
        if options.expires_in is not None:
            job["kiq_expires_at"] = start + options.expires_in
        if options.unique_for is not None:
            lock = unique.digest(name=job_obj.name, queue=options.queue, args=args,
                                 kwargs=kwargs, key=options.unique_key)
            if lock in seen:  # the same job twice in one enqueue_many
                logger.info("duplicate of unique job %s dropped within its batch", job_obj.name)
                continue
            seen.add(lock)
            job["kiq_unique"] = lock
            job["kiq_unique_for"] = options.unique_for
        kept.append(job)
        positions.append(i)
    jids = submit_payloads(kept, settings,
                           raise_duplicates=options.unique_conflict == "raise")
    for i, jid in zip(positions, jids):
        out[i] = jid
    return out


class Writer(Protocol):
    """The last step of the enqueue pipeline: write accepted job hashes somewhere.

    Called with the jobs that survived client middleware, at once or at commit. A writer that
    encodes each job anyway says so with ``checks_size = True`` and checks the size as it
    encodes (so a job is encoded once); otherwise the pipeline checks sizes before calling it.
    """

    checks_size: bool

    def __call__(self, jobs: list[dict[str, Any]],
                 settings: KiqSettings) -> list[str | None] | None: ...


#: The writers of ``KIQ["TESTING"]`` modes, registered by ``django_kiq.testing`` on import.
_test_writers: dict[str, Writer] = {}


def register_test_writer(mode: str, writer: Writer) -> None:
    _test_writers[mode] = writer


def _test_writer(mode: str) -> Writer:
    if mode not in _test_writers:
        # The test modes live in django_kiq.testing, which registers its writers when imported;
        # a project may switch a mode on through settings alone, before anything imported it.
        importlib.import_module("django_kiq.testing")
    try:
        return _test_writers[mode]
    except KeyError:
        raise ImproperlyConfigured(
            f"KIQ['TESTING'] is {mode!r}; use None, 'inline' or 'fake'") from None


def submit_payloads(jobs: list[dict[str, Any]], settings: KiqSettings | None = None, *,
                    on_commit: bool | None = None, writer: Writer | None = None,
                    raise_duplicates: bool = False) -> list[str | None]:
    """The one enqueue pipeline: client middleware -> size check -> on-commit -> a writer.

    Every way of enqueueing ends here (``@job`` calls, the django.tasks backend, cron runs
    started by hand, the API). ``on_commit`` overrides ``KIQ["ENQUEUE_ON_COMMIT"]`` for these
    jobs; ``writer`` replaces the Redis writer (the django.tasks backend writes a result record
    with each job). In a ``KIQ["TESTING"]`` mode the mode's writer runs instead of any other.
    Returns each job's jid, or None where middleware dropped it or, for a unique job, another
    job holds its lock (``raise_duplicates`` raises :class:`DuplicateJob` instead). Deferred to
    a commit, a duplicate can only be dropped (and logged) at the commit.
    """
    settings = settings or get_settings()
    if settings.testing:
        writer = _test_writer(settings.testing)
    writer = writer or REDIS_WRITER
    chain = client_chain(settings)
    # Middleware may return a new dict rather than the one it was given: pair results by position.
    results = [chain(job) for job in jobs]
    accepted = [j for j in results if j is not None]
    jids = [job["jid"] if job is not None else None for job in results]
    if not accepted:
        return jids
    defer = settings.enqueue_on_commit if on_commit is None else on_commit
    defer = defer and transaction.get_connection().in_atomic_block
    if defer or not getattr(writer, "checks_size", False):  # a too-large job must fail here, not at commit time
        for job in accepted:
            check_size(job, settings)
    if defer:
        transaction.on_commit(lambda: writer(accepted, settings))
        return jids
    refused = writer(accepted, settings)
    if refused:
        _apply_refusals(accepted, refused, jids, raise_duplicates)
    return jids


def _apply_refusals(accepted: list[dict[str, Any]], refused: list[str | None],
                    jids: list[str | None], raise_duplicates: bool) -> None:
    """Unique jobs the writer did not push (another job holds the lock): None, or raise."""
    for job, holder in zip(accepted, refused):
        if holder is None:
            continue
        if raise_duplicates:
            raise DuplicateJob(f"{job['class']} is already enqueued as {holder} (unique job)",
                               jid=holder)
        jids[jids.index(job["jid"])] = None


def client_chain(settings: KiqSettings) -> Callable:
    key = settings.client_middleware
    chain = _chains.get(key)
    if chain is None:
        with _chain_lock:
            chain = _chains[key] = build_chain(settings.client_middleware, lambda job: job)
    return chain


def check_size(job: dict[str, Any], settings: KiqSettings, raw: bytes | None = None) -> None:
    size = len(payload.encode(job) if raw is None else raw)
    if size > settings.max_payload_bytes:
        raise PayloadTooLarge(
            f"job {job['class']} ({job['jid']}) encodes to {size:,} bytes, over "
            f"KIQ['MAX_PAYLOAD_BYTES'] = {settings.max_payload_bytes:,}; store the data "
            "elsewhere and pass a reference")


def encode_for_push(jobs: list[dict[str, Any]], settings: KiqSettings, now: float,
                    ) -> tuple[list[tuple[str, bytes]], list[tuple[float, bytes]]]:
    """(queue, payload) pairs due now and (at, payload) pairs for later; sizes checked."""
    immediate, scheduled = [], []
    for job in jobs:
        at = job.get("at")
        if at is not None and at > now:
            # Like Sidekiq, the time lives in the score only: a member carrying "at" would be
            # scheduled again by a Ruby poller's Client.push instead of reaching its queue.
            raw = payload.encode(payload.for_schedule(job))
            scheduled.append((at, raw))
        else:
            job = payload.ready_for_queue(job, now)
            raw = payload.encode(job)
            immediate.append((job["queue"], raw))
        check_size(job, settings, raw)
    return immediate, scheduled


def push_now(jobs: list[dict[str, Any]],
             settings: KiqSettings | None = None) -> list[str | None] | None:
    """Write jobs to Redis now: due ones to their queue, future ones to the schedule set.

    Returns None when every job was written; with unique jobs among them, one entry per job:
    None if written, else the jid of the job holding its lock (that job was not written).
    """
    settings = settings or get_settings()
    store = storage.get_default()
    now = time.time()
    try:
        if any("kiq_unique" in job for job in jobs):
            return _push_unique(store, jobs, settings, now)
        immediate, scheduled = encode_for_push(jobs, settings, now)
        if immediate:
            store.push(immediate)
        if scheduled:
            store.schedule(scheduled)
        return None
    except storage.RedisError as exc:
        jids = ", ".join(j["jid"] for j in jobs[:5]) + (" ..." if len(jobs) > 5 else "")
        logger.error("enqueue failed for %d job(s) (%s): %s", len(jobs), jids, exc)
        raise EnqueueError(f"could not enqueue {len(jobs)} job(s) ({jids}): Redis error: {exc}",
                           jid=jobs[0]["jid"]) from exc



def _push_unique(store, jobs: list[dict[str, Any]], settings: KiqSettings,
                 now: float) -> list[str | None]:
    """Each unique job takes its lock and is pushed in one atomic step (plain ones as usual)."""
    items, plain, where = [], [], []
    for job in jobs:
        if "kiq_unique" not in job:
            plain.append(job)
            where.append(None)
            continue
        at = job.get("at")
        scheduled = at is not None and at > now
        ready = payload.for_schedule(job) if scheduled else payload.ready_for_queue(job, now)
        raw = payload.encode(ready)
        check_size(job, settings, raw)
        ttl = unique.lock_ttl_ms(job["kiq_unique_for"], delay=(at - now) if scheduled else 0)
        items.append(storage.UniquePush(digest=job["kiq_unique"], jid=job["jid"], ttl_ms=ttl,
                                        raw=raw, queue=ready["queue"],
                                        at=at if scheduled else None))
        where.append(len(items) - 1)
    if plain:
        push_now(plain, settings)
    holders = store.push_unique(items) if items else []
    out = [None if i is None else holders[i] for i in where]
    for job, holder in zip(jobs, out):
        if holder is not None:
            logger.info("unique job %s (%s) not enqueued: %s holds its lock", job["class"],
                        job["jid"], holder)
    return out


class RedisWriter:
    """The production writer: :func:`push_now`, which checks sizes as it encodes."""

    checks_size = True

    def __call__(self, jobs: list[dict[str, Any]],
                 settings: KiqSettings) -> list[str | None] | None:
        return push_now(jobs, settings)


REDIS_WRITER = RedisWriter()
