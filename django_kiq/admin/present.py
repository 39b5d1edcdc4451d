"""Display helpers of the admin pages: epoch floats to datetimes, JSON as text, row objects.

Pure functions over :mod:`django_kiq.api` records. Everything here returns plain text that the
templates escape (autoescape is never turned off for job data, and nothing is marked safe).
"""

from __future__ import annotations

import datetime as dt
import json
from dataclasses import dataclass
from typing import Any

from django.utils import timezone
from django.utils.timesince import timesince, timeuntil

from django_kiq.api import JobRecord
from django_kiq.results import JobResult

ARGS_PREVIEW_CHARS = 120


def when(epoch: float | None) -> dt.datetime | None:
    """An aware UTC datetime for an epoch timestamp; None for a missing or absurd value."""
    if epoch is None:
        return None
    try:
        return dt.datetime.fromtimestamp(epoch, dt.UTC)
    except (ValueError, OverflowError, OSError):
        return None


@dataclass(frozen=True, slots=True, kw_only=True)
class Moment:
    """A point in time and how far it is from now: "3 minutes ago", "in 5 minutes"."""

    at: dt.datetime
    relative: str


def moment(epoch: float | None, now: dt.datetime | None = None) -> Moment | None:
    at = when(epoch)
    if at is None:
        return None
    now = now or timezone.now()
    seconds = (at - now).total_seconds()
    if abs(seconds) < 60:  # timesince would say "0 minutes"
        text = f"{abs(seconds):.0f} s"
        return Moment(at=at, relative=f"in {text}" if seconds > 0 else f"{text} ago")
    if seconds > 0:
        return Moment(at=at, relative=f"in {timeuntil(at, now)}")
    return Moment(at=at, relative=f"{timesince(at, now)} ago")


def as_json(value: Any) -> str:
    return json.dumps(value, ensure_ascii=False, default=repr)


def cut(text: str, limit: int) -> str:
    """``text`` shortened to ``limit`` characters, with an ellipsis when cut."""
    return text if len(text) <= limit else text[: limit - 1] + "…"


def short_json(value: Any, limit: int = ARGS_PREVIEW_CHARS) -> str:
    """Compact JSON cut at ``limit`` characters, for table cells."""
    return cut(as_json(value), limit)


def pretty_json(value: Any) -> str:
    return json.dumps(value, ensure_ascii=False, indent=2, sort_keys=False, default=repr)


def args_preview(record: JobRecord) -> str:
    """Positional and keyword arguments as one line: ``[1, "a"] {"b": 2}``."""
    text = as_json(record.args)
    if record.kwargs:
        text += " " + as_json(record.kwargs)
    return cut(text, ARGS_PREVIEW_CHARS)


def field_text(value: Any) -> str:
    """A job hash field as the detail page shows it: strings as they are, the rest as JSON."""
    return value if isinstance(value, str) else pretty_json(value)


@dataclass(frozen=True, slots=True, kw_only=True)
class JobRow:
    """One table row: the record plus what the templates need precomputed."""

    record: JobRecord
    url: str
    args: str
    at: Moment | None
    enqueued_at: Moment | None
    failed_at: Moment | None
    error: str
    result: JobResult | None = None  # its result record, where a page reads them (queue page)

    @classmethod
    def build(cls, record: JobRecord, url: str, result: JobResult | None = None) -> "JobRow":
        return cls(record=record, url=url, args=args_preview(record), at=moment(record.score),
                   enqueued_at=moment(record.enqueued_at), failed_at=moment(record.failed_at),
                   error=error_line(record), result=result)


def error_line(record: JobRecord, limit: int = 200) -> str:
    """``ErrorClass: message`` for a table cell ("" for a job that never failed)."""
    if not record.error_class and not record.error_message:
        return ""
    return cut(f"{record.error_class or 'Error'}: {record.error_message or ''}".strip(), limit)


def duration(seconds: float | None) -> str:
    """A short human duration: "3.1 ms", "420 ms", "4.20 s", "12 s", "4 min", "3.5 h"."""
    if seconds is None:
        return "–"
    if seconds < 0.01:
        return f"{seconds * 1000:.1f} ms"
    if seconds < 1:
        return f"{seconds * 1000:.0f} ms"
    if seconds < 10:
        return f"{seconds:.2f} s"
    if seconds < 120:
        return f"{seconds:.0f} s"
    if seconds < 7200:
        return f"{seconds / 60:.0f} min"
    if seconds < 172800:
        return f"{seconds / 3600:.1f} h"
    return f"{seconds / 86400:.1f} d"
