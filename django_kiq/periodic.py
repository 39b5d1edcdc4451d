"""Periodic (cron) jobs: the entries, their tick arithmetic, and the read/manage API.

Entries come from ``@job(cron=..., timezone=...)`` (named after the job) and from
``KIQ["PERIODIC"]`` (named ``"name"`` or ``"<job>:<cron>"``). :func:`entries` builds the list in
the calling process (worker start-up, admin) and raises ``ImproperlyConfigured`` on an unknown
job, a bad cron, a bad argument or a duplicate name. The ticking itself runs on the worker's
``kiq-cron`` thread (:mod:`django_kiq.worker.cron_ticker`), on Redis's clock; :func:`records`,
:func:`pause`, :func:`resume` and :func:`enqueue_now` read and change the state it shares through
Redis (via storage verbs only), from any process, and :func:`clocks` tells how far each worker's
clock is from Redis's.

Cron expressions: 5 fields (minute hour day month weekday), 6 fields with SECONDS FIRST
(``"*/10 * * * * *"`` = every 10 seconds), or ``@hourly``-style keywords. Times are computed in
the entry's time zone (default: Django's ``TIME_ZONE``). When clocks go back, a tick at a
repeated wall-clock time runs once, unless the minute or hour field is a wildcard (Vixie cron's
rule); when clocks go forward, ticks in the skipped hour run at the first instant after it.
"""

from __future__ import annotations

import datetime as dt
import difflib
import math
import time
from dataclasses import dataclass, field
from typing import Any
from zoneinfo import ZoneInfo

from croniter import CroniterError, croniter
from django.core.exceptions import ImproperlyConfigured

from . import payload, registry, storage
from .conf import KiqSettings, get_settings

# A missed tick is still enqueued (once) if it is at most this old, or half the gap to the
# following tick, whichever is larger. See ``PeriodicEntry.catchup_window``.
CATCHUP_GRACE = 60.0
# Seconds a worker's clock may differ from Redis's before its log and the admin warn about it.
CLOCK_TOLERANCE = 1.0
ENTRY_KEYS = frozenset({"name", "cron", "job", "args", "kwargs", "queue", "timezone"})
KEYWORDS = {"@yearly": "0 0 1 1 *", "@annually": "0 0 1 1 *", "@monthly": "0 0 1 * *",
            "@weekly": "0 0 * * 0", "@daily": "0 0 * * *", "@midnight": "0 0 * * *",
            "@hourly": "0 * * * *"}


def is_valid_cron(expression: object) -> bool:
    """5 fields, 6 fields with seconds first, or a keyword such as ``@daily``."""
    if not isinstance(expression, str):
        return False
    fields = expression.split()
    if len(fields) == 1:
        return fields[0].lower() in KEYWORDS
    return len(fields) in (5, 6) and croniter.is_valid(expression, second_at_beginning=True)


@dataclass(frozen=True, slots=True, kw_only=True)
class PeriodicEntry:
    """One cron schedule: enqueue ``job(*args, **kwargs)`` on ``queue`` at each tick."""

    name: str
    cron: str
    timezone: str
    job: str
    queue: str
    # Arguments may hold lists and dicts: left out of hash() so entries stay hashable.
    args: tuple[Any, ...] = field(default=(), hash=False)
    kwargs: dict[str, Any] = field(default_factory=dict, hash=False)

    def next_after(self, t: float) -> float:
        """The first tick strictly after epoch ``t``."""
        it = croniter(self._expression(), self._local(t), second_at_beginning=True)
        while True:
            tick = it.get_next(float)
            if not self._repeated(tick):
                return tick

    def latest_at(self, t: float) -> float:
        """The last tick at or before epoch ``t`` (ticks fall on whole seconds)."""
        it = croniter(self._expression(), self._local(math.floor(t) + 1),
                      second_at_beginning=True)
        while True:
            tick = it.get_prev(float)
            if not self._repeated(tick):
                return tick

    def catchup_window(self, tick: float, following: float | None = None) -> float:
        """How late ``tick`` may still be enqueued: max(60 s, half the gap to the next tick).

        ``following`` is the next tick after ``tick`` if the caller already knows it.
        """
        following = self.next_after(tick) if following is None else following
        return max(CATCHUP_GRACE, (following - tick) / 2)

    def _expression(self) -> str:
        return KEYWORDS.get(self.cron.strip().lower(), self.cron)

    def _local(self, t: float) -> dt.datetime:
        return dt.datetime.fromtimestamp(t, ZoneInfo(self.timezone))

    def _repeated(self, tick: float) -> bool:
        """True for the second occurrence of a wall-clock time (clocks went back) of a
        fixed-time entry: a daily 02:30 runs once on that night, an hourly one runs twice."""
        local = self._local(tick)
        if not local.fold or local.replace(fold=0).utcoffset() == local.utcoffset():
            return False
        fields = self._expression().split()
        minute, hour = fields[1:3] if len(fields) == 6 else fields[0:2]
        return not minute.startswith("*") and not hour.startswith("*")


@dataclass(frozen=True, slots=True, kw_only=True)
class PeriodicRecord:
    """An entry with its state: times are epoch seconds; ``last_run`` None if it never ran."""

    entry: PeriodicEntry
    last_run: float | None
    next_run: float
    paused: bool
    last_jid: str | None


@dataclass(frozen=True, slots=True, kw_only=True)
class WorkerClock:
    """How far a live worker's clock is from Redis's, which ticks follow: + ahead, - behind."""

    identity: str
    offset: float  # seconds, as the worker's scheduler last measured it

    @property
    def skewed(self) -> bool:
        return abs(self.offset) > CLOCK_TOLERANCE


# -- building the entries ----------------------------------------------------------------------


def entries(settings: KiqSettings | None = None) -> list[PeriodicEntry]:
    """Every periodic entry: ``@job`` crons, then ``KIQ["PERIODIC"]``, in that order."""
    settings = settings or get_settings()
    zone = default_timezone()
    found = [
        PeriodicEntry(name=d.name, cron=d.options.cron, timezone=d.options.timezone or zone,
                      job=d.name, queue=d.options.queue)
        for d in registry.all_definitions() if d.options.cron
    ]
    for entry in found:
        _check_fires(entry, f"@job {entry.job}")
    found += [_from_setting(i, raw, zone) for i, raw in enumerate(settings.periodic)]
    seen: set[str] = set()
    for entry in found:
        if entry.name in seen:
            raise ImproperlyConfigured(
                f"periodic entry name {entry.name!r} is used twice; give KIQ['PERIODIC'] "
                "entries a unique 'name'")
        seen.add(entry.name)
    return found


def default_timezone() -> str:
    from django.conf import settings

    return getattr(settings, "TIME_ZONE", None) or "UTC"


def _from_setting(i: int, raw: Any, default_zone: str) -> PeriodicEntry:
    where = f"KIQ['PERIODIC'][{i}]"
    if not isinstance(raw, dict):
        raise ImproperlyConfigured(f"{where} must be a dict, not {raw!r}")
    unknown = set(raw) - ENTRY_KEYS
    if unknown:
        raise ImproperlyConfigured(f"{where}: unknown key(s) {sorted(unknown)}; valid keys are "
                                   f"{sorted(ENTRY_KEYS)}")
    job = raw.get("job")
    definition = registry.get(job) if isinstance(job, str) else None
    if definition is None:
        close = difflib.get_close_matches(str(raw.get("job")), registry.names(), n=3)
        hint = f"did you mean {' or '.join(map(repr, close))}? " if close else ""
        raise ImproperlyConfigured(
            f"{where}: job {raw.get('job')!r} is not a registered job; {hint}(jobs register when "
            "their module is imported: an app's jobs.py or a module in KIQ['IMPORTS'])")
    args, kwargs = raw.get("args", ()), raw.get("kwargs", {})
    try:
        registry.validate_cron(raw.get("cron"), raw.get("timezone"), where=where)
        registry.validate_options({"queue": raw.get("queue")}, where=where)
        if not isinstance(args, (list, tuple)) or not isinstance(kwargs, dict):
            raise TypeError(f"{where}: 'args' must be a list and 'kwargs' a dict")
        payload.check_args(args, kwargs)
    except (ValueError, TypeError) as exc:
        raise ImproperlyConfigured(str(exc)) from None
    name = raw.get("name") or f"{definition.name}:{raw['cron']}"
    if not isinstance(name, str):
        raise ImproperlyConfigured(f"{where}: 'name' must be a string")
    entry = PeriodicEntry(name=name, cron=raw["cron"], job=definition.name,
                          timezone=raw.get("timezone") or default_zone,
                          queue=raw.get("queue") or definition.options.queue,
                          args=tuple(args), kwargs=dict(kwargs))
    _check_fires(entry, where)
    return entry


def _check_fires(entry: PeriodicEntry, where: str) -> None:
    """A valid expression may still never match (``0 0 30 2 *``): fail now, not in the ticker."""
    try:
        entry.next_after(time.time())
    except CroniterError as exc:
        raise ImproperlyConfigured(f"{where}: {entry.cron!r} never fires ({exc})") from None


def build_job(entry: PeriodicEntry, now: float) -> dict[str, Any]:
    """The job hash one run of ``entry`` pushes (client middleware not applied yet)."""
    definition = registry.get(entry.job)
    options = definition.options.payload_fields() if definition else {"retry": True}
    return payload.build(name=entry.job, args=entry.args, kwargs=entry.kwargs, queue=entry.queue,
                         now=now, options=options)


# -- read / manage (admin, shell) ----------------------------------------------------------------


def records(now: float | None = None) -> list[PeriodicRecord]:
    """Every entry with its pause flag, last run and next run (one Redis round trip)."""
    now = time.time() if now is None else now
    found = entries()
    states = storage.get_default().periodic_states([e.name for e in found])
    return [PeriodicRecord(entry=e, last_run=states[e.name].last_run, next_run=e.next_after(now),
                           paused=states[e.name].paused, last_jid=states[e.name].last_jid)
            for e in found]


def clocks() -> list[WorkerClock]:
    """Each live worker's clock offset from Redis's (published every few seconds by its
    scheduler thread; a worker started in the last seconds may not be listed yet)."""
    offsets = storage.get_default().clock_offsets()
    return [WorkerClock(identity=i, offset=offsets[i]) for i in sorted(offsets)]


def get(name: str) -> PeriodicEntry:
    """The entry called ``name``; LookupError if there is none."""
    for entry in entries():
        if entry.name == name:
            return entry
    raise LookupError(f"no periodic entry named {name!r}")


def pause(name: str) -> None:
    """Stop enqueueing ``name`` at its ticks (every worker, at once) until :func:`resume`."""
    storage.get_default().periodic_set_paused(get(name).name, True)


def resume(name: str) -> None:
    """Enqueue ``name`` again from its next tick; ticks passed while paused are not replayed."""
    storage.get_default().periodic_set_paused(get(name).name, False)


def enqueue_now(name: str) -> str | None:
    """Enqueue one run of ``name`` now, outside its schedule; returns its jid.

    Runs client middleware (None if it cancelled the run) and pushes at once, even inside a
    transaction: the arguments are fixed in the entry, so there is no commit to wait for (an
    admin request may well be atomic). ``KIQ["TESTING"]`` modes collect or run it like any job.
    Records the run as the entry's last run; the tick schedule is unchanged.
    """
    from .client import submit_payloads

    entry, settings, now = get(name), get_settings(), time.time()
    [jid] = submit_payloads([build_job(entry, now)], settings, on_commit=False)
    if jid is not None and not settings.testing:
        storage.get_default().periodic_record_run(entry.name, jid, now)
    return jid
