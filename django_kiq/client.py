"""Enqueueing: building job hashes, client middleware, on-commit pushes, Redis errors.

Runs in whatever process calls ``.enqueue()`` (web requests, shells, the worker itself). Argument
checks and client middleware run at call time so mistakes surface where they are made; inside
``transaction.atomic()`` the Redis push waits for the commit (``KIQ["ENQUEUE_ON_COMMIT"]``) and a
rollback pushes nothing. The jid is returned at once either way.
"""

from __future__ import annotations

import contextlib
import datetime as dt
import gc
import importlib
import logging
import threading
import time
from collections.abc import Callable, Iterable, Iterator, Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, Protocol

from django.core.exceptions import ImproperlyConfigured
from django.db import transaction

from . import batches, payload, storage, unique, workflows
from .conf import KiqSettings, get_settings
from .exceptions import DuplicateJob, EnqueueError, PayloadTooLarge
from .middleware import build_chain
from .observability import client_middleware as builtin_client_middleware

if TYPE_CHECKING:
    from .registry import Job, JobOptions

logger = logging.getLogger("django_kiq.client")

_chain_lock = threading.Lock()
_chains: dict[tuple, Callable] = {}


def enqueue(job_obj: Job[..., Any], args: Sequence[Any],
            kwargs: dict[str, Any]) -> str | None:
    settings = get_settings()
    if _plain(settings) and batches.current() is None:
        options = job_obj.options
        if (options.unique_for is None and options.expires_in is None
                and options.result_ttl is None
                and not (settings.enqueue_on_commit
                         and transaction.get_connection().in_atomic_block)):
            return _push_plain(job_obj.name, options, tuple(args), kwargs, settings)
    return _submit(job_obj, [(tuple(args), dict(kwargs))], at=None)[0]


# The settings object (reset on setting_changed) the cached answer below is for.
_plain_for: list[Any] = [None, False]


def _plain(settings: KiqSettings) -> bool:
    """Whether a job may skip the pipeline's steps that are no-ops under these settings: no
    client middleware (user or built-in), no test mode, no result records for every job."""
    if _plain_for[0] is not settings:
        plain = not (settings.testing or settings.result_ttl or settings.client_middleware
                     or builtin_client_middleware(settings))
        _plain_for[:] = [settings, plain]
    return bool(_plain_for[1])


def _push_plain(name: str, options: JobOptions, args: tuple[Any, ...], kwargs: dict[str, Any],
                settings: KiqSettings) -> str:
    """A single enqueue when :func:`_plain` holds, the job is neither unique nor expiring nor
    keeps a result, no batch is open and no transaction defers it: what :func:`_submit` would
    do (the same checks, the same bytes), without the pipeline's per-call objects. Most
    ``.enqueue()`` calls come here; each saved µs is a few percent of the call (issue 16)."""
    payload.check_args(args, kwargs)
    now = time.time()
    job = payload.build(name=name, args=args, kwargs=kwargs, queue=options.queue, now=now,
                        options=options.payload_fields(), jid=payload.new_jid())
    job["enqueued_at"] = now  # what payload.ready_for_queue adds, at the same place
    raw = payload.encode(job)
    if len(raw) > settings.max_payload_bytes:
        check_size(job, settings, raw)
    try:
        storage.get_default().push([(options.queue, raw)])
    except storage.RedisError as exc:
        raise enqueue_error([job], exc) from exc
    return job["jid"]


def enqueue_many(job_obj: Job[..., Any], arg_list: Iterable[Sequence[Any]]) -> list[str | None]:
    # The job hashes of one call all live until their push, so a garbage collection in between
    # frees none of them but walks them all, and promotes them until a full collection walks the
    # whole process: 30% of a 100,000-job call (200,000 against 290,000 jobs/s). The call
    # creates no reference cycle; collections resume when it returns. (Not in aenqueue_many:
    # its awaits would pause collections for the other tasks of the loop.)
    with gc_paused():
        return _submit(job_obj, many_items(arg_list), at=None)


@contextlib.contextmanager
def gc_paused() -> Iterator[None]:
    """Garbage collections off for the block, if they were on (then on again after)."""
    if not gc.isenabled():
        yield
        return
    gc.disable()
    try:
        yield
    finally:
        gc.enable()


def many_items(arg_list: Iterable[Sequence[Any]]) -> list[tuple[tuple[Any, ...], dict[str, Any]]]:
    items: list[tuple[tuple[Any, ...], dict[str, Any]]] = []
    for i, item in enumerate(arg_list):
        if not isinstance(item, (tuple, list)):
            raise TypeError(f"enqueue_many item {i} is a {type(item).__name__}; "
                            "pass a tuple of positional arguments per job")
        items.append((tuple(item), {}))
    return items


def enqueue_in(job_obj: Job[..., Any], delay: float | dt.timedelta, args: Sequence[Any],
               kwargs: dict[str, Any]) -> str | None:
    return _submit(job_obj, [(tuple(args), dict(kwargs))], at=time.time() + seconds_of(delay))[0]


def seconds_of(delay: float | dt.timedelta) -> float:
    seconds = delay.total_seconds() if isinstance(delay, dt.timedelta) else delay
    if not isinstance(seconds, (int, float)) or isinstance(seconds, bool):
        raise TypeError(f"enqueue_in takes seconds or a timedelta, not {delay!r}")
    return seconds


def enqueue_at(job_obj: Job[..., Any], when: dt.datetime | float, args: Sequence[Any],
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


def _submit(job_obj: Job[..., Any], items: list[tuple[tuple[Any, ...], dict[str, Any]]],
            at: float | None) -> list[str | None]:
    batch = build_batch(job_obj, items, at)
    # Inside ``with batch():`` the jobs carry its id and its writer pushes them into it.
    joined = batches.join_current(batch.jobs, job_obj.options)
    return batch.spread(submit_payloads(batch.jobs, raise_duplicates=batch.raise_duplicates,
                                        writer=joined))


@dataclass(slots=True, kw_only=True)
class Batch:
    """The job hashes of one enqueue call, built and stamped, before the pipeline.

    ``jobs`` are the hashes to submit; ``positions[i]`` is the caller's index of ``jobs[i]``
    (a unique job given twice in one ``enqueue_many`` is kept once, the other gets None).
    """

    jobs: list[dict[str, Any]]
    positions: list[int]
    size: int
    raise_duplicates: bool = False

    def spread(self, jids: list[str | None]) -> list[str | None]:
        """The pipeline's jids, one per item the caller passed."""
        if len(self.positions) == self.size:
            return jids
        out: list[str | None] = [None] * self.size
        for i, jid in zip(self.positions, jids):
            out[i] = jid
        return out


def build_batch(job_obj: Job[..., Any], items: list[tuple[tuple[Any, ...], dict[str, Any]]],
                at: float | None) -> Batch:
    """Check arguments and build one job hash per item (sync and async enqueue share this)."""
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
        return _controlled(job_obj, options, items, jobs, now)
    return Batch(jobs=jobs, positions=list(range(len(jobs))), size=len(jobs))


def _controlled(job_obj: Job[..., Any], options: JobOptions,
                items: list[tuple[tuple[Any, ...], dict[str, Any]]],
                jobs: list[dict[str, Any]], now: float) -> Batch:
    """Expiring and unique jobs: stamp their per-call fields, drop duplicates in the batch."""
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
    return Batch(jobs=kept, positions=positions, size=len(jobs),
                 raise_duplicates=options.unique_conflict == "raise")


class Writer(Protocol):
    """The last step of the enqueue pipeline: write accepted job hashes somewhere.

    Called with the jobs that survived client middleware, at once or at commit. A writer that
    encodes each job anyway says so with ``checks_size = True`` and checks the size as it
    encodes (so a job is encoded once); otherwise the pipeline checks sizes before calling it.
    ``checks_size`` is optional (read with getattr: a plain function or a partial has none).
    """

    def __call__(self, jobs: list[dict[str, Any]],
                 settings: KiqSettings, /) -> list[str | None] | None: ...


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
    started by hand, the API; ``aclient.asubmit_payloads`` runs the same :func:`admit` step and
    awaits the Redis writer instead of calling it). ``on_commit`` overrides
    ``KIQ["ENQUEUE_ON_COMMIT"]`` for these jobs; ``writer`` replaces the Redis writer (the
    django.tasks backend writes a result record with each job). In a ``KIQ["TESTING"]`` mode the
    mode's writer runs instead of any other. Returns each job's jid, or None where middleware
    dropped it or, for a unique job, another job holds its lock (``raise_duplicates`` raises
    :class:`DuplicateJob` instead). Deferred to a commit, a duplicate can only be dropped (and
    logged) at the commit.
    """
    settings = settings or get_settings()
    if settings.testing:
        writer = _test_writer(settings.testing)
    writer = writer or REDIS_WRITER
    admitted = admit(jobs, settings, writer, on_commit=on_commit)
    if admitted.pending:
        refused = writer(admitted.accepted, settings)
        if refused:
            apply_refusals(admitted.accepted, refused, admitted.jids, raise_duplicates)
    return admitted.jids


@dataclass(frozen=True, slots=True, kw_only=True)
class Admitted:
    """What :func:`admit` let through: ``accepted`` hashes, every job's jid (None if dropped),
    and whether the caller must write them now (``pending``) or a commit will."""

    accepted: list[dict[str, Any]]
    jids: list[str | None]
    pending: bool


def admit(jobs: list[dict[str, Any]], settings: KiqSettings, writer: Writer, *,
          on_commit: bool | None = None) -> Admitted:
    """The pipeline up to the write: client middleware, the size check, on-commit deferral.

    Inside ``transaction.atomic()`` on the calling thread's default connection (and with
    ``KIQ["ENQUEUE_ON_COMMIT"]``, or ``on_commit=True``) the write is registered with
    ``transaction.on_commit`` and ``pending`` is False; a too-large job fails here either way.
    """
    chain = client_chain(settings)
    # Middleware may return a new dict rather than the one it was given: pair results by position.
    results = [chain(job) for job in jobs]
    accepted = [j for j in results if j is not None]
    jids = [job["jid"] if job is not None else None for job in results]
    if not accepted:
        return Admitted(accepted=accepted, jids=jids, pending=False)
    defer = settings.enqueue_on_commit if on_commit is None else on_commit
    defer = defer and transaction.get_connection().in_atomic_block
    if defer or not getattr(writer, "checks_size", False):  # a too-large job must fail here, not at commit time
        for job in accepted:
            check_size(job, settings)
    if defer:
        transaction.on_commit(lambda: writer(accepted, settings))
    return Admitted(accepted=accepted, jids=jids, pending=not defer)


def apply_refusals(accepted: list[dict[str, Any]], refused: list[str | None],
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
    key = (settings.client_middleware, settings.opentelemetry)
    chain = _chains.get(key)
    if chain is None:
        with _chain_lock:  # built-ins first (outermost): the tracing span, when on
            chain = _chains[key] = build_chain(settings.client_middleware, lambda job: job,
                                               builtins=builtin_client_middleware(settings))
    return chain


def check_size(job: dict[str, Any], settings: KiqSettings, raw: bytes | None = None) -> None:
    size = len(payload.encode(job) if raw is None else raw)
    if size > settings.max_payload_bytes:
        raise PayloadTooLarge(
            f"job {job['class']} ({job['jid']}) encodes to {size:,} bytes, over "
            f"KIQ['MAX_PAYLOAD_BYTES'] = {settings.max_payload_bytes:,}; store the data "
            "elsewhere and pass a reference")


@dataclass(slots=True, kw_only=True)
class Writes:
    """The Redis writes of accepted jobs, encoded and size-checked (:func:`plan_writes`).

    ``immediate``: (queue, payload) due now; ``scheduled``: (at, payload) for later;
    ``unique``: unique jobs, each taking its lock and pushed in one step; ``unique_of[i]``: the
    index in ``unique`` of job ``i``, or None for a plain job.
    """

    immediate: list[tuple[str, bytes]]
    scheduled: list[tuple[float, bytes]]
    unique: list[storage.UniquePush]
    unique_of: list[int | None]

    def refusals(self, jobs: list[dict[str, Any]],
                 holders: list[str | None]) -> list[str | None] | None:
        """None when every job was written; else per job the jid holding its lock, or None."""
        if not self.unique:
            return None
        out = [None if i is None else holders[i] for i in self.unique_of]
        for job, holder in zip(jobs, out):
            if holder is not None:
                logger.info("unique job %s (%s) not enqueued: %s holds its lock", job["class"],
                            job["jid"], holder)
        return out


def plan_writes(jobs: list[dict[str, Any]], settings: KiqSettings, now: float) -> Writes:
    """Encode each job for where it goes (sync and async writers share this)."""
    writes = Writes(immediate=[], scheduled=[], unique=[], unique_of=[])
    immediate, unique_of, limit = writes.immediate, writes.unique_of, settings.max_payload_bytes
    for job in jobs:
        at: float | None = job.get("at")
        queue = job.get("queue")
        if at is None and type(queue) is str and queue and "kiq_unique" not in job:
            # Due now and plain (most jobs): payload.ready_for_queue's result, in place (these
            # hashes are the pipeline's own), without a copy per job.
            job["enqueued_at"] = now
            raw = payload.encode(job)
            if len(raw) > limit:
                check_size(job, settings, raw)
            unique_of.append(None)
            immediate.append((queue, raw))
            continue
        scheduled = at is not None and at > now
        # Like Sidekiq, the time lives in the score only: a member carrying "at" would be
        # scheduled again by a Ruby poller's Client.push instead of reaching its queue.
        ready = payload.for_schedule(job) if scheduled else payload.ready_for_queue(job, now)
        raw = payload.encode(ready)
        check_size(job, settings, raw)
        if "kiq_unique" in job:
            delay = at - now if at is not None and scheduled else 0
            ttl = unique.lock_ttl_ms(job["kiq_unique_for"], delay=delay)
            writes.unique_of.append(len(writes.unique))
            writes.unique.append(storage.UniquePush(
                digest=job["kiq_unique"], jid=job["jid"], ttl_ms=ttl, raw=raw,
                queue=ready["queue"], at=at if scheduled else None))
            continue
        writes.unique_of.append(None)
        if at is not None and scheduled:
            writes.scheduled.append((at, raw))
        else:
            writes.immediate.append((ready["queue"], raw))
    return writes


def push_now(jobs: list[dict[str, Any]],
             settings: KiqSettings | None = None) -> list[str | None] | None:
    """Write jobs to Redis now: due ones to their queue, future ones to the schedule set.

    Returns None when every job was written; with unique jobs among them, one entry per job:
    None if written, else the jid of the job holding its lock (that job was not written).
    """
    settings = settings or get_settings()
    store = storage.get_default()
    writes = plan_writes(jobs, settings, time.time())
    try:
        if writes.immediate:
            store.push(writes.immediate)
        if writes.scheduled:
            store.schedule(writes.scheduled)
        holders = store.push_unique(writes.unique) if writes.unique else []
        if settings.result_ttl or "kiq_result_ttl" in jobs[0]:  # results: "queued" records
            workflows.record_enqueued(store, jobs, settings, time.time())
    except storage.RedisError as exc:
        raise enqueue_error(jobs, exc) from exc
    return writes.refusals(jobs, holders)


def enqueue_error(jobs: list[dict[str, Any]], exc: Exception) -> EnqueueError:
    """The error a caller gets when Redis refused or failed a push (logged here)."""
    jids = ", ".join(j["jid"] for j in jobs[:5]) + (" ..." if len(jobs) > 5 else "")
    logger.error("enqueue failed for %d job(s) (%s): %s", len(jobs), jids, exc)
    return EnqueueError(f"could not enqueue {len(jobs)} job(s) ({jids}): Redis error: {exc}",
                        jid=jobs[0]["jid"])


class RedisWriter:
    """The production writer: :func:`push_now`, which checks sizes as it encodes."""

    checks_size = True

    def __call__(self, jobs: list[dict[str, Any]],
                 settings: KiqSettings) -> list[str | None] | None:
        return push_now(jobs, settings)


REDIS_WRITER = RedisWriter()
