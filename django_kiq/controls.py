"""What execution control shows about a job (docs/execution.md): its unique lock, its iterable
checkpoint, its time limit and expiry. Read helpers of ``django_kiq.api`` (re-exported there).

Runs in the caller's thread (an admin request, a shell). Reads go through the storage verbs
(``unique_holder``, ``load_checkpoint``); the fields come from the job hash, which is input read
from Redis, so each is validated here and anything odd reads as absent.
"""

from __future__ import annotations

from dataclasses import dataclass

from . import storage, unique
from .records import JobRecord, decode_record
from .storage import Checkpoint

__all__ = ["UniqueLock", "Checkpoint", "unique_lock", "checkpoint", "timeout_of",
           "expires_at_of", "lock_pair", "lock_pair_of"]


@dataclass(frozen=True, slots=True, kw_only=True)
class UniqueLock:
    """A unique job's lock as Redis holds it now (``@job(unique_for=...)``)."""

    digest: str  # the job hash's ``kiq_unique``: same job name, queue and arguments
    key: str  # the Redis key of the lock
    jid: str  # the job this was read for
    holder: str | None  # the jid holding the lock now; None when it is free
    ttl: float | None  # seconds until it expires on its own; None when it is free

    @property
    def held(self) -> bool:
        """This job holds the lock (False: it is free, or a newer job took it)."""
        return self.holder == self.jid


def unique_lock(record: JobRecord, *,
                store: storage.Storage | None = None) -> UniqueLock | None:
    """The lock of a unique job and who holds it now; None for a job that is not unique."""
    digest = unique.lock_of(record.fields)
    if not digest:
        return None
    store = store or storage.get_default()
    held = store.unique_holder(digest)
    return UniqueLock(digest=digest, key=store.keys.unique(digest), jid=record.jid,
                      holder=held[0] if held else None, ttl=held[1] if held else None)


def checkpoint(job: str | JobRecord, *,
               store: storage.Storage | None = None) -> Checkpoint | None:
    """An iterable job's last saved checkpoint (cursor JSON text, items done, saved at), or
    None: not iterable, not started yet, or finished (its checkpoint ends with it)."""
    if isinstance(job, JobRecord):
        if job.fields.get("kiq_iterable") is not True:
            return None
        job = job.jid
    return (store or storage.get_default()).load_checkpoint(job)


def _seconds(value: object) -> float | None:
    if isinstance(value, bool) or not isinstance(value, (int, float)):
        return None
    return float(value) if 0 < value < float("inf") else None


def timeout_of(record: JobRecord) -> float | None:
    """The job's own time limit in seconds (``kiq_timeout``), or None (the worker's default)."""
    return _seconds(record.fields.get("kiq_timeout"))


def expires_at_of(record: JobRecord) -> float | None:
    """Epoch seconds after which the job is dropped instead of started, or None."""
    return _seconds(record.fields.get("kiq_expires_at"))


def lock_pair(record: JobRecord) -> tuple[str, str] | None:
    """(digest, jid) of the lock a unique job takes: released when the job is deleted or
    killed through the API, if it still holds it."""
    digest = unique.lock_of(record.fields)
    return (digest, record.jid) if digest else None


def lock_pair_of(raw: bytes) -> tuple[str, str] | None:
    """:func:`lock_pair` of a member's bytes (the storage layer's callback on a clear)."""
    return lock_pair(decode_record(raw))
