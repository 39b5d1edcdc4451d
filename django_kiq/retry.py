"""Pure retry policy: what happens to a job that raised.

``decide()`` takes the job hash, the exception and the job's options, and returns a
:class:`Decision` (retry at a time, dead, or discard) with the updated job hash. It touches no
Redis and reads no settings; the processor writes the decision through the storage layer.
Backoff is Sidekiq's: ``count**4 + 15 + random(0, 10 * (count + 1))`` seconds.

The job hash was read from Redis: its bookkeeping fields (``retry``, ``retry_count``,
``backtrace``, ``retry_queue``) are input, never trusted. Each is read through a function that
accepts what Sidekiq writes and says when a value cannot be interpreted; a job whose retry
fields make no sense goes to dead with the reason (a hostile ``retry_count`` once wedged a
worker). Any exception counts as a failure, ``SystemExit`` and ``KeyboardInterrupt`` included.
"""

from __future__ import annotations

import logging
import math
import random
import traceback
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any, Literal, cast

logger = logging.getLogger("django_kiq.retry")
ERROR_MESSAGE_LIMIT = 10_000


class Unreadable(ValueError):
    """A bookkeeping field of the job hash holds a value that cannot be interpreted."""


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


# -- reading untrusted fields ----------------------------------------------------------------

def read_count(job: dict[str, Any], name: str) -> int | None:
    """A whole-number field: None if absent or null, else a non-negative int.

    Accepts what Sidekiq and django-kiq write (an int) plus harmless spellings (2.0, "2").
    Raises :class:`Unreadable` for anything else: "x", true, a list, infinity, NaN.
    """
    value = job.get(name)
    if value is None:
        return None
    if isinstance(value, str) and value.strip().isdigit():
        return int(value)
    if isinstance(value, float) and math.isfinite(value):
        return max(0, int(value))
    if isinstance(value, int) and not isinstance(value, bool):
        return max(0, value)
    raise Unreadable(f"field {name!r} is {value!r:.80}, not a count")


def max_attempts(job: dict[str, Any], default_max: int) -> int | None:
    """Retries allowed by the job hash's ``retry`` field; None means no retry and no morgue.

    ``true`` or null (Sidekiq: the job class's default) mean ``default_max``; a number means
    that many. Raises :class:`Unreadable` for anything else.
    """
    value = job.get("retry", True)
    if value is False:
        return None
    if value is True or value is None:
        return default_max
    try:
        return read_count(job, "retry")
    except Unreadable:
        raise Unreadable(f"field 'retry' is {value!r:.80}: neither true, false nor a "
                         "number of retries") from None


def backtrace_lines(job: dict[str, Any]) -> int | None:
    """How many backtrace lines to keep: None for all (``true``), 0 for none.

    A value that is neither (``"x"``) keeps none, as Ruby's ``"x".to_i`` does: a backtrace is
    an aid, not worth failing a job's bookkeeping for.
    """
    value = job.get("backtrace")
    if value is True:
        return None
    try:
        return read_count(job, "backtrace") or 0
    except Unreadable:
        return 0


def message_of(exc: BaseException) -> str:
    """``str(exc)``, cut to ERROR_MESSAGE_LIMIT, whatever the exception does.

    A ``__str__`` that raises, or a lone surrogate that UTF-8 cannot encode, must not stop the
    failure from being recorded.
    """
    try:
        text = str(exc)
    except Exception:  # noqa: BLE001 - a broken __str__ is the job's bug, not ours
        text = f"<unprintable {type(exc).__name__}>"
    text = text[:ERROR_MESSAGE_LIMIT]
    return text.encode("utf-8", "backslashreplace").decode("utf-8")


# -- the decision ------------------------------------------------------------------------------

def record_failure(job: dict[str, Any], exc: BaseException, now: float) -> dict[str, Any]:
    """A copy of ``job`` with Sidekiq's failure fields filled in for this attempt.

    Raises :class:`Unreadable` if ``retry_count`` is not a count (null counts as absent, as in
    Sidekiq).
    """
    job = dict(job)
    count = read_count(job, "retry_count")
    if count is not None:
        job["retry_count"] = count + 1
        job["retried_at"] = now
    else:
        job["retry_count"] = 0
        job["failed_at"] = now
    job["error_class"] = exception_path(exc)
    job["error_message"] = message_of(exc)
    lines = backtrace_lines(job)
    if lines != 0:
        # The frames only (the message is in error_message), innermost last, as Python prints.
        flat = "".join(traceback.format_tb(exc.__traceback__)).splitlines()
        flat = [line.encode("utf-8", "backslashreplace").decode("utf-8") for line in flat]
        job["error_backtrace"] = flat if lines is None else flat[-lines:]
    return job


def exception_path(exc: BaseException) -> str:
    cls = type(exc)
    return cls.__qualname__ if cls.__module__ == "builtins" else f"{cls.__module__}.{cls.__qualname__}"


def decide(job: dict[str, Any], exc: BaseException, *, default_max: int, now: float,
           retry_in: Callable | None = None,
           rand: Callable[[int, int], int] = random.randint) -> Decision:
    try:
        limit = max_attempts(job, default_max)
        if limit is None:
            return Decision(kind="discard", job=job, reason="retry disabled")
        failed = record_failure(job, exc, now)
    except Unreadable as bad:
        return unreadable(job, exc, now, str(bad))
    count = failed["retry_count"]
    if count >= limit:
        return _exhausted(failed, f"retries exhausted ({limit})")
    delay = _custom_delay(retry_in, count, exc, failed)
    if delay == "discard":
        return Decision(kind="discard", job=failed, reason="retry_in returned 'discard'")
    if delay == "kill":
        return Decision(kind="dead", job=failed, reason="retry_in returned 'kill'")
    if delay is None:
        delay = backoff(count, rand)
    retry_queue = failed.get("retry_queue")
    if isinstance(retry_queue, str) and retry_queue:
        failed["queue"] = retry_queue
    return Decision(kind="retry", job=failed, at=now + delay)


def unreadable(job: dict[str, Any], exc: BaseException, now: float, reason: str) -> Decision:
    """Dead, with the failure recorded and the reason the job cannot be retried."""
    logger.error("job %s jid=%s moved to dead: %s", job.get("class"), job.get("jid"), reason)
    failed = dict(job)
    failed.update({
        "failed_at": now, "error_class": exception_path(exc),
        "error_message": f"{message_of(exc)} [moved to dead: {reason}]",
    })
    return Decision(kind="dead", job=failed, reason=reason)


def _custom_delay(retry_in: Callable | None, count: int, exc: BaseException,
                  failed: dict[str, Any]) -> float | Literal["discard", "kill"] | None:
    """The job's own ``retry_in`` answer: seconds, "discard", "kill", or None for the default."""
    if retry_in is None:
        return None
    try:
        delay = retry_in(count, exc, failed)
    except Exception:  # a broken retry_in must not lose the job: use the default backoff
        logger.exception("retry_in of job %s jid=%s raised; using the default backoff",
                         failed.get("class"), failed.get("jid"))
        return None
    if delay is None or (isinstance(delay, str) and delay in ("discard", "kill")):
        return cast('Literal["discard", "kill"] | None', delay)
    if isinstance(delay, (int, float)) and not isinstance(delay, bool) and math.isfinite(delay):
        return max(0.0, float(delay))
    logger.error("retry_in of job %s jid=%s returned %r (not seconds, 'discard' or 'kill'); "
                 "using the default backoff", failed.get("class"), failed.get("jid"), delay)
    return None


def _exhausted(job: dict[str, Any], reason: str) -> Decision:
    if job.get("dead") is False:
        return Decision(kind="discard", job=job, reason=reason + "; dead=False")
    return Decision(kind="dead", job=job, reason=reason)
