"""Display helpers of the admin pages: epoch floats to datetimes, JSON as text, row objects.

Pure functions over :mod:`django_kiq.api` records. Everything here returns plain text that the
templates escape (autoescape is never turned off for job data, and nothing is marked safe).
"""

from __future__ import annotations

import datetime as dt
import json
from dataclasses import dataclass
from typing import Any

ARGS_PREVIEW_CHARS = 120


def when(epoch: float | int | str | None) -> dt.datetime | None:
    """An aware UTC datetime for an epoch timestamp; None for a missing or unreadable value."""
    if epoch is None or epoch == "":
        return None
    try:
        return dt.datetime.fromtimestamp(float(epoch), dt.UTC)
    except (TypeError, ValueError, OverflowError, OSError):
        return None


def as_json(value: Any) -> str:
    return json.dumps(value, ensure_ascii=False, default=repr)


def short_json(value: Any, limit: int = ARGS_PREVIEW_CHARS) -> str:
    """Compact JSON cut at ``limit`` characters (with an ellipsis), for table cells."""
    text = as_json(value)
    return text if len(text) <= limit else text[: limit - 1] + "…"


def pretty_json(value: Any) -> str:
    return json.dumps(value, ensure_ascii=False, indent=2, sort_keys=False, default=repr)


def args_preview(record: Any) -> str:
    """Positional and keyword arguments as one line: ``[1, "a"] {"b": 2}``."""
    text = as_json(record.args)
    if record.kwargs:
        text += " " + as_json(record.kwargs)
    return text if len(text) <= ARGS_PREVIEW_CHARS else text[: ARGS_PREVIEW_CHARS - 1] + "…"


def field_text(value: Any) -> str:
    """A job hash field as the detail page shows it: strings as they are, the rest as JSON."""
    return value if isinstance(value, str) else pretty_json(value)


@dataclass(frozen=True, slots=True, kw_only=True)
class JobRow:
    """One table row: the record plus what the templates need precomputed."""

    record: Any
    url: str
    args: str
    at: dt.datetime | None
    enqueued_at: dt.datetime | None
    failed_at: dt.datetime | None

    @classmethod
    def build(cls, record: Any, url: str) -> "JobRow":
        return cls(record=record, url=url, args=args_preview(record), at=when(record.score),
                   enqueued_at=when(record.enqueued_at), failed_at=when(record.failed_at))


def error_line(record: Any, limit: int = 200) -> str:
    if not record.error_class and not record.error_message:
        return ""
    text = f"{record.error_class or 'Error'}: {record.error_message or ''}".strip()
    return text if len(text) <= limit else text[: limit - 1] + "…"
