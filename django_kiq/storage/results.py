"""Storage verbs of the django.tasks backend (``django_kiq.tasks``): the priority-ordered push
with its result record, and the count of a task's attempts.

A task's result is the record every result-keeping job has (``Keys.job_result``, read and
written by the verbs in ``batches.py`` too): one HASH of string fields that the backend encodes
and decodes; this layer treats the values as opaque. Every write refreshes the record's TTL.
The fields this layer itself names are ``attempts``, ``started_at`` and ``worker:<n>`` (see
``task_attempt.lua``).

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

    def push_task(self, result_id: str, record: Mapping[str, str], *, queue: str, raw: bytes,
                  priority: int, ttl: int) -> None:
        """Write the result record and place the job in ``queue`` by ``priority``, atomically.

        The job goes behind every waiting job of equal or higher priority (a job without a
        ``priority`` field counts as 0) and ahead of every job of lower priority.
        """
        self._task_enqueue(
            keys=[self.keys.job_result(result_id), self.keys.queues, self.keys.queue(queue)],
            args=["q", raw, int(priority), queue, int(ttl), PRIORITY_SCAN_LIMIT, *_flat(record)])

    def schedule_task(self, result_id: str, record: Mapping[str, str], *, raw: bytes, at: float,
                      ttl: int) -> None:
        """Write the result record and add the job to the schedule set at ``at``, atomically."""
        self._task_enqueue(
            keys=[self.keys.job_result(result_id), self.keys.queues, self.keys.schedule],
            args=["z", raw, repr(float(at)), "", int(ttl), PRIORITY_SCAN_LIMIT, *_flat(record)])

    def start_task_attempt(self, result_id: str, fields: Mapping[str, str], *, worker_id: str,
                           now: float, ttl: int) -> tuple[int, dict[str, str]]:
        """Count an attempt by ``worker_id``; returns (attempt number, the whole record)."""
        n, flat = self._task_attempt(keys=[self.keys.job_result(result_id)],
                                     args=[worker_id, repr(now), int(ttl), *_flat(fields)])
        return int(n), _decode_pairs(flat)


def _text(value: bytes | str) -> str:
    return value.decode() if isinstance(value, bytes) else value


def _decode_pairs(flat: list) -> dict[str, str]:
    return {_text(flat[i]): _text(flat[i + 1]) for i in range(0, len(flat), 2)}
