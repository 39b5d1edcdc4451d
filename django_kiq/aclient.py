"""Async enqueueing: ``await job.aenqueue(...)`` and its siblings, on redis-py's asyncio client.

Runs on the caller's event loop (an ASGI view, an async job on the worker's loop, a script under
``asyncio.run``). It is the sync client's pipeline with an awaited last step: arguments are
checked and job hashes built by ``client.build_batch``, client middleware, the size check and the
on-commit rule run in ``client.admit``, and only the Redis write differs (``storage.aio``'s
verbs, the same Lua scripts, no thread hop per call). Client middleware is sync code and runs
on the loop: keep it quick, as it must be for sync enqueueing too.

On-commit in async code: the rule is the sync one, "defer when the calling thread's connection
is inside ``transaction.atomic()``". Django refuses ``atomic()`` on a thread that runs an event
loop (``SynchronousOnlyOperation``), so a coroutine awaiting ``aenqueue`` is never inside a
transaction of its own and the job is written when the call is awaited. To enqueue only if a
transaction commits, do both in one sync function: ``await sync_to_async(create_and_enqueue)()``
where that function calls ``job.enqueue(...)`` inside ``atomic()``; the push then waits for the
commit as always. Even a loop run by ``asyncio.run`` inside a sync ``atomic()`` block does not
wait: code on a loop sees a connection of its own (Django keeps one per async context), which is
in no transaction, so ``aenqueue`` there writes at once and a rollback does not undo it.

``KIQ["TESTING"]`` modes hand the jobs to the mode's sync writer through ``sync_to_async`` (an
inline run may touch the database, which the loop thread cannot).
"""

from __future__ import annotations

import datetime as dt
import time
from collections.abc import Iterable, Sequence
from typing import TYPE_CHECKING, Any

from asgiref.sync import sync_to_async

from . import batches, client, storage, workflows
from .conf import KiqSettings, get_settings

if TYPE_CHECKING:
    from .registry import Job


async def aenqueue(job_obj: Job[..., Any], args: Sequence[Any],
                   kwargs: dict[str, Any]) -> str | None:
    return (await _asubmit(job_obj, [(tuple(args), dict(kwargs))], at=None))[0]


async def aenqueue_many(job_obj: Job[..., Any],
                        arg_list: Iterable[Sequence[Any]]) -> list[str | None]:
    return await _asubmit(job_obj, client.many_items(arg_list), at=None)


async def aenqueue_in(job_obj: Job[..., Any], delay: float | dt.timedelta, args: Sequence[Any],
                      kwargs: dict[str, Any]) -> str | None:
    at = time.time() + client.seconds_of(delay)
    return (await _asubmit(job_obj, [(tuple(args), dict(kwargs))], at=at))[0]


async def aenqueue_at(job_obj: Job[..., Any], when: dt.datetime | float, args: Sequence[Any],
                      kwargs: dict[str, Any]) -> str | None:
    at = client.to_epoch(when)
    return (await _asubmit(job_obj, [(tuple(args), dict(kwargs))], at=at))[0]


async def _asubmit(job_obj: Job[..., Any], items: list[tuple[tuple[Any, ...], dict[str, Any]]],
                   at: float | None) -> list[str | None]:
    batch = client.build_batch(job_obj, items, at)
    # Inside ``with batch():`` (a context variable: this task's) the jobs join it through its
    # writer (batch.lua), which is sync: run the pipeline off the loop, as the test modes do.
    joined = batches.join_current(batch.jobs, job_obj.options)
    if joined is not None:
        submit = sync_to_async(client.submit_payloads, thread_sensitive=False)
        jids = await submit(batch.jobs, raise_duplicates=batch.raise_duplicates, writer=joined)
    else:
        jids = await asubmit_payloads(batch.jobs, raise_duplicates=batch.raise_duplicates)
    return batch.spread(jids)


async def asubmit_payloads(jobs: list[dict[str, Any]], settings: KiqSettings | None = None, *,
                           raise_duplicates: bool = False) -> list[str | None]:
    """``client.submit_payloads`` with the Redis write awaited: same steps, same results."""
    settings = settings or get_settings()
    if settings.testing:
        submit = sync_to_async(client.submit_payloads, thread_sensitive=True)
        return await submit(jobs, settings, raise_duplicates=raise_duplicates)
    admitted = client.admit(jobs, settings, client.REDIS_WRITER)
    if admitted.pending:
        refused = await apush_now(admitted.accepted, settings)
        if refused:
            client.apply_refusals(admitted.accepted, refused, admitted.jids, raise_duplicates)
    return admitted.jids


async def apush_now(jobs: list[dict[str, Any]],
                    settings: KiqSettings) -> list[str | None] | None:
    """``client.push_now`` on the running loop's asyncio client (same encoding, same result)."""
    from .storage import aio

    store = aio.get_default()
    writes = client.plan_writes(jobs, settings, time.time())
    try:
        if writes.immediate:
            await store.push(writes.immediate)
        if writes.scheduled:
            await store.schedule(writes.scheduled)
        holders = await store.push_unique(writes.unique) if writes.unique else []
        if settings.result_ttl or "kiq_result_ttl" in jobs[0]:  # results: "queued" records
            await store.write_job_results(
                workflows.enqueued_records(jobs, settings, time.time()), status_if_new=True)
    except storage.RedisError as exc:
        raise client.enqueue_error(jobs, exc) from exc
    return writes.refusals(jobs, holders)
