"""Storage verbs of the django.tasks backend (``django_kiq.tasks``): result records and the
priority-ordered push.

A result is one HASH (``Keys.task_result``) of string fields that the backend encodes and
decodes; this layer treats the values as opaque. Every write refreshes the record's TTL. The
fields this layer itself names are ``attempts``, ``started_at`` and ``worker:<n>`` (see
``task_attempt.lua``), and ``status`` when an attempt is released (``task_release.lua``).

A mixin of :class:`~django_kiq.storage.store.Storage`: methods use ``self.client``,
``self.keys`` and ``self._script``. Runs on the enqueueing thread (push) and on the worker's
processor threads (attempts), which may be many at once: it holds no state of its own.
"""

from __future__ import annotations

from collections.abc import Mapping

from .base import StorageBase

# How many waiting jobs a priority push reads, at most, to find its place (task_enqueue.lua).
PRIORITY_SCAN_LIMIT = 10_000


def _flat(fields: Mapping[str, str]) -> list[str]:
    return [item for pair in fields.items() for item in pair]


class ResultOps(StorageBase):
    def _register_result_scripts(self) -> None:
        """Called by ``Storage.__init__``: register this mixin's Lua scripts."""
        self._task_enqueue = self._script("task_enqueue")
        self._task_attempt = self._script("task_attempt")
        self._task_release = self._script("task_release")

    def push_task(self, result_id: str, record: Mapping[str, str], *, queue: str, raw: bytes,
                  priority: int, ttl: int) -> None:
        """Write the result record and place the job in ``queue`` by ``priority``, atomically.

        The job goes behind every waiting job of equal or higher priority (a job without a
        ``priority`` field counts as 0) and ahead of every job of lower priority.
        """
        self._task_enqueue(
            keys=[self.keys.task_result(result_id), self.keys.queues, self.keys.queue(queue)],
            args=["q", raw, int(priority), queue, int(ttl), PRIORITY_SCAN_LIMIT, *_flat(record)])

    def schedule_task(self, result_id: str, record: Mapping[str, str], *, raw: bytes, at: float,
                      ttl: int) -> None:
        """Write the result record and add the job to the schedule set at ``at``, atomically."""
        self._task_enqueue(
            keys=[self.keys.task_result(result_id), self.keys.queues, self.keys.schedule],
            args=["z", raw, repr(float(at)), "", int(ttl), PRIORITY_SCAN_LIMIT, *_flat(record)])

    def start_task_attempt(self, result_id: str, fields: Mapping[str, str], *, worker_id: str,
                           now: float, ttl: int) -> tuple[int, dict[str, str]]:
        """Count an attempt by ``worker_id``; returns (attempt number, the whole record)."""
        n, flat = self._task_attempt(keys=[self.keys.task_result(result_id)],
                                     args=[worker_id, repr(now), int(ttl), *_flat(fields)])
        return int(n), _decode_pairs(flat)

    def release_task_attempt(self, result_id: str, *, worker_id: str, ttl: int) -> bool:
        """The attempt ``worker_id`` was running was cut off: status READY again, unless the
        record no longer says that attempt is running. True if it changed."""
        return bool(self._task_release(keys=[self.keys.task_result(result_id)],
                                       args=[worker_id, int(ttl)]))

    def update_task_result(self, result_id: str, fields: Mapping[str, str], *, ttl: int) -> None:
        """Set fields of a record and refresh its TTL (one key: a MULTI is atomic enough)."""
        key = self.keys.task_result(result_id)
        pipe = self.client.pipeline(transaction=True)
        # redis-py's mapping key type is invariant: no dict[str, str] fits it
        pipe.hset(key, mapping=dict(fields))  # type: ignore[arg-type]
        pipe.expire(key, max(1, int(ttl)))
        if fields.get("status") in ("SUCCESSFUL", "FAILED"):  # finished: wake JobResult.wait()
            done = self.keys.job_result_done(result_id)  # (results.py), in the same MULTI
            pipe.rpush(done, "1")
            pipe.expire(done, max(1, int(ttl)))
        pipe.execute()

    def task_result(self, result_id: str) -> dict[str, str] | None:
        """The record's fields, or None if there is none (never written, or expired)."""
        flat = self.client.hgetall(self.keys.task_result(result_id))
        if not flat:
            return None
        return {_text(k): _text(v) for k, v in flat.items()}


def _text(value: bytes | str) -> str:
    return value.decode() if isinstance(value, bytes) else value


def _decode_pairs(flat: list) -> dict[str, str]:
    return {_text(flat[i]): _text(flat[i + 1]) for i in range(0, len(flat), 2)}
