"""Pure retry policy: what happens to a job that raised.

``decide()`` takes the job hash, the exception and the job's options, and returns a
:class:`Decision` (retry at a time, dead, or discard) with the updated job hash. It touches no
Redis and reads no settings; the processor writes the decision through the storage layer.
Backoff is Sidekiq's: ``count**4 + 15 + random(0, 10 * (count + 1))`` seconds.
"""

from __future__ import annotations

import random
import traceback
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

ERROR_MESSAGE_LIMIT = 10_000


@dataclass(frozen=True, slots=True, kw_only=True)
class Decision:
    kind: str  # "retry", "dead" or "discard"
    job: dict[str, Any]
    at: float | None = None
    reason: str = ""

    @property
    def exhausted(self) -> bool:
        return self.kind != "retry"


def backoff(count: int, rand: Callable[[int, int], int] = random.randint) -> float:
    return count ** 4 + 15 + rand(0, 10 * (count + 1))


def max_attempts(job: dict[str, Any], default_max: int) -> int | None:
    """Retries allowed by the job hash's ``retry`` field; None means no retry and no morgue."""
    value = job.get("retry", True)
    if value is False:
        return None
    if value is True:
        return default_max
    try:
        return max(0, int(value))
    except (TypeError, ValueError):
        return default_max


def record_failure(job: dict[str, Any], exc: BaseException, now: float) -> dict[str, Any]:
    """A copy of ``job`` with Sidekiq's failure fields filled in for this attempt."""
    job = dict(job)
    if "retry_count" in job:
        job["retry_count"] = int(job["retry_count"]) + 1
        job["retried_at"] = now
    else:
        job["retry_count"] = 0
        job["failed_at"] = now
    job["error_class"] = exception_path(exc)
    job["error_message"] = str(exc)[:ERROR_MESSAGE_LIMIT]
    lines = job.get("backtrace")
    if lines:
        # The frames only (the message is in error_message), innermost last, as Python prints.
        flat = "".join(traceback.format_tb(exc.__traceback__)).splitlines()
        job["error_backtrace"] = flat if lines is True else flat[-int(lines):]
    return job


def exception_path(exc: BaseException) -> str:
    cls = type(exc)
    return cls.__qualname__ if cls.__module__ == "builtins" else f"{cls.__module__}.{cls.__qualname__}"


def decide(job: dict[str, Any], exc: BaseException, *, default_max: int, now: float,
           retry_in: Callable | None = None,
           rand: Callable[[int, int], int] = random.randint) -> Decision:
    limit = max_attempts(job, default_max)
    if limit is None:
        return Decision(kind="discard", job=job, reason="retry disabled")
    failed = record_failure(job, exc, now)
    count = failed["retry_count"]
    if count >= limit:
        return _exhausted(failed, f"retries exhausted ({limit})")
    delay: Any = None
    if retry_in is not None:
        try:
            delay = retry_in(count, exc, failed)
        except Exception:  # a broken retry_in must not lose the job: use the default backoff
            delay = None
    if delay == "discard":
        return Decision(kind="discard", job=failed, reason="retry_in returned 'discard'")
    if delay == "kill":
        return Decision(kind="dead", job=failed, reason="retry_in returned 'kill'")
    if delay is None:
        delay = backoff(count, rand)
    if retry_queue := failed.get("retry_queue"):
        failed["queue"] = retry_queue
    return Decision(kind="retry", job=failed, at=now + float(delay))


def _exhausted(job: dict[str, Any], reason: str) -> Decision:
    if job.get("dead") is False:
        return Decision(kind="discard", job=job, reason=reason + "; dead=False")
    return Decision(kind="dead", job=job, reason=reason)
