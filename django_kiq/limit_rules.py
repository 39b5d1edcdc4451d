"""Pure flow-control rules: names, intervals, what each limiter style decides, rescheduling.

No Redis, no settings, the clock and the random source passed in. The storage layer's scripts
(``storage/lua/limit_*.lua``) make the same decisions on Redis's clock in one atomic step;
``tests/test_limits.py`` checks each script against the function here. Times are seconds.

The four styles (docs/limits.md):

- ``concurrent``: at most ``size`` leases held at once; a lease ends when released or when it
  expires, ``lock_timeout`` after it was taken (plus the second in which its process may reuse
  it: ``limit_leases.py``). Room is expected when the oldest lease expires (or sooner, when one
  is released).
- ``window``: at most ``size`` acquisitions per clock-aligned interval (12:00:00-12:59:59 for
  "hour"); the count starts again at each boundary.
- ``bucket``: at most ``size`` acquisitions in any span of one interval (a rolling log): each
  acquisition counts for one interval after it happened.
- ``leaky``: a bucket of ``size`` that drains at ``size`` per interval (GCRA): a burst of
  ``size`` at once, then one every ``interval / size``.

:func:`plan_reschedule` decides what happens to a job that met a full limiter: rescheduled for
when the limiter expects room, plus jitter, at most ``reschedule`` times per limiter (counted in
the job hash), then an ordinary failure.
"""

from __future__ import annotations

import math
import random
import re
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any

KINDS = ("concurrent", "window", "bucket", "leaky")
INTERVALS = {"second": 1.0, "minute": 60.0, "hour": 3600.0, "day": 86400.0}
NAME = re.compile(r"^[A-Za-z0-9_.\-]{1,200}$")
RESCHEDULES_FIELD = "kiq_limit_reschedules"  # job hash: {limiter name: times rescheduled}
DEFAULT_RESCHEDULE = 20
# A full concurrent limiter only knows when its oldest lease expires; slots are usually given
# back sooner, so a job waiting for one comes back after at most 2**n seconds (n: reschedules
# so far), capped here.
CONCURRENT_BACKOFF_MAX = 60.0
JITTER_MIN = 0.5  # seconds: the smallest spread of jobs rescheduled by one limiter at once
JITTER_SHARE = 0.25  # of the delay, when that is larger
# Windows are numbered in Lua doubles printed with 14 digits: a 10 ms interval keeps the
# window number exact for centuries.
MIN_INTERVAL = 0.01
EPSILON = 1e-6  # seconds: float slack in the leaky bucket's arithmetic


# -- validation (at creation: no I/O) -----------------------------------------------------------

def check_name(name: Any) -> str:
    if not isinstance(name, str) or not NAME.match(name):
        raise ValueError(f"limiter name {name!r} is invalid: use 1-200 letters, digits, '-', "
                         "'_' or '.' (e.g. f\"stripe-{account_id}\")")
    return name


def interval_seconds(value: Any) -> float:
    """"second", "minute", "hour", "day" or a number of seconds (at least MIN_INTERVAL)."""
    if isinstance(value, str) and value in INTERVALS:
        return INTERVALS[value]
    if (isinstance(value, (int, float)) and not isinstance(value, bool)
            and MIN_INTERVAL <= value < math.inf):
        return float(value)
    raise ValueError(f"interval {value!r} is invalid: use 'second', 'minute', 'hour', 'day' "
                     f"or a number of seconds >= {MIN_INTERVAL}")


def check_size(size: Any) -> int:
    if isinstance(size, bool) or not isinstance(size, int) or size < 1:
        raise ValueError(f"limiter size {size!r} is invalid: a whole number >= 1")
    return size


def check_seconds(value: Any, what: str, *, zero: bool = True) -> float:
    if (isinstance(value, (int, float)) and not isinstance(value, bool) and value < math.inf
            and (value >= 0 if zero else value > 0)):
        return float(value)
    raise ValueError(f"{what} {value!r} is invalid: a number of seconds "
                     f"{'>= 0' if zero else '> 0'}")


# -- decisions (mirrored by the Lua scripts) ----------------------------------------------------

@dataclass(frozen=True, slots=True, kw_only=True)
class Verdict:
    allowed: bool
    wait: float = 0.0  # seconds until room is expected (0 when allowed)


def concurrent(expiries: Sequence[float], *, size: int, now: float) -> Verdict:
    """``expiries``: when each lease taken so far expires (expired ones are ignored)."""
    live = sorted(e for e in expiries if e > now)
    if len(live) < size:
        return Verdict(allowed=True)
    return Verdict(allowed=False, wait=live[len(live) - size] - now)


def window_index(now: float, interval: float) -> int:
    return math.floor(now / interval)


def window(index: int | None, count: int, *, size: int, interval: float,
           now: float) -> Verdict:
    """``index``/``count``: the window the stored count belongs to, and that count."""
    current = window_index(now, interval)
    used = count if index == current else 0
    if used < size:
        return Verdict(allowed=True)
    return Verdict(allowed=False, wait=(current + 1) * interval - now)


def bucket(starts: Sequence[float], *, size: int, interval: float, now: float) -> Verdict:
    """``starts``: when each earlier acquisition happened."""
    recent = sorted(s for s in starts if s > now - interval)
    if len(recent) < size:
        return Verdict(allowed=True)
    return Verdict(allowed=False, wait=recent[len(recent) - size] + interval - now)


def leaky(tat: float | None, *, size: int, interval: float,
          now: float) -> tuple[Verdict, float | None]:
    """GCRA: ``tat`` is the theoretical time the bucket is empty. Returns the new ``tat``."""
    step = interval / size
    after = max(tat if tat is not None else now, now) + step
    if after - now > interval + EPSILON:
        return Verdict(allowed=False, wait=after - now - interval), tat
    return Verdict(allowed=True), after


def usage(kind: str, state: Any, *, size: int, interval: float, now: float) -> int:
    """How much of the limiter is used at ``now``: leases held (concurrent) or acquisitions
    counted in the current window (the others). ``state`` is what the storage layer read:
    expiries (concurrent), (index, count) (window), starts (bucket), tat (leaky)."""
    if kind == "concurrent":
        return sum(1 for e in state or () if e > now)
    if kind == "window":
        index, count = state or (None, 0)
        return count if index == window_index(now, interval) else 0
    if kind == "bucket":
        return sum(1 for s in state or () if s > now - interval)
    if kind == "leaky":
        if state is None:
            return 0
        return max(0, min(size, math.ceil((state - now) / (interval / size) - EPSILON)))
    raise ValueError(f"unknown limiter kind {kind!r}")


# -- a job that met a full limiter --------------------------------------------------------------

@dataclass(frozen=True, slots=True, kw_only=True)
class Reschedule:
    """Run the job again at ``at`` (epoch seconds): ``job`` carries the raised count."""

    name: str
    count: int  # reschedules by this limiter, this one included
    at: float
    job: dict[str, Any]


def reschedules(job: dict[str, Any], name: str) -> int:
    """Times ``name`` rescheduled this job. Read from Redis: anything but a count is 0."""
    counts = job.get(RESCHEDULES_FIELD)
    value = counts.get(name) if isinstance(counts, dict) else None
    if isinstance(value, int) and not isinstance(value, bool) and value >= 0:
        return value
    return 0


def plan_reschedule(job: dict[str, Any], *, name: str, kind: str, wait: float, limit: int,
                    now: float, rand: Callable[[], float] = random.random) -> Reschedule | None:
    """When to run a job again that met the full limiter ``name``; None once it was
    rescheduled ``limit`` times by that limiter (then it is an ordinary failure)."""
    done = reschedules(job, name)
    if done >= limit:
        return None
    delay = max(0.0, wait if math.isfinite(wait) else CONCURRENT_BACKOFF_MAX)
    if kind == "concurrent":
        delay = min(delay, 2.0 ** min(done, 16), CONCURRENT_BACKOFF_MAX)
    delay += rand() * max(JITTER_MIN, delay * JITTER_SHARE)
    counts = job.get(RESCHEDULES_FIELD)
    counts = {k: v for k, v in counts.items() if isinstance(k, str)} if isinstance(
        counts, dict) else {}
    counts[name] = done + 1
    return Reschedule(name=name, count=done + 1, at=now + delay,
                      job={**job, RESCHEDULES_FIELD: counts})
