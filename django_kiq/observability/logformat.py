"""``KIQ["LOG_FORMAT"] = "json"``: one JSON object per log line.

:class:`JsonFormatter` is a ``logging.Formatter``; reference it from ``LOGGING`` like any other
(``{"()": "django_kiq.observability.logformat.JsonFormatter"}``). Each line holds ``ts`` (UTC,
ISO 8601), ``level``, ``logger`` and ``message``, then the job fields the worker attaches to its
records about a job (``jid``, ``job``, ``queue``, ``elapsed``, ``outcome``, ``error``),
``exc_info`` as text when present, and the trace and span ids when an OpenTelemetry span is
current (the tracing middleware's, when both are on).

:func:`apply` is called once by ``kiq_worker`` at start-up, in the main thread, before anything
logs; it changes handlers only when the setting says "json".
"""

from __future__ import annotations

import datetime as dt
import json
import logging
import sys
from typing import Any

#: Record attributes the worker sets through ``extra=`` on its job log lines.
JOB_FIELDS = ("jid", "job", "queue", "elapsed", "outcome", "error")


class JsonFormatter(logging.Formatter):
    """Formats a record as one line of JSON (``default=str`` for any odd ``extra`` value)."""

    def format(self, record: logging.LogRecord) -> str:
        line: dict[str, Any] = {
            "ts": dt.datetime.fromtimestamp(record.created, dt.UTC).isoformat(
                timespec="milliseconds").replace("+00:00", "Z"),
            "level": record.levelname,
            "logger": record.name,
            "message": record.getMessage(),
        }
        for name in JOB_FIELDS:
            value = record.__dict__.get(name)
            if value is not None:
                line[name] = value
        line.update(_trace_ids())
        if record.exc_info:
            line["exc_info"] = self.formatException(record.exc_info)
        elif record.exc_text:
            line["exc_info"] = record.exc_text
        if record.stack_info:
            line["stack_info"] = self.formatStack(record.stack_info)
        return json.dumps(line, default=str, ensure_ascii=False)


def _trace_ids() -> dict[str, str]:
    """The current span's ids, when OpenTelemetry is loaded and a span is recording."""
    trace = sys.modules.get("opentelemetry.trace")  # never imported here just for logging
    if trace is None:
        return {}
    context = trace.get_current_span().get_span_context()
    if not context.is_valid:
        return {}
    return {"trace_id": f"{context.trace_id:032x}", "span_id": f"{context.span_id:016x}"}


def apply(log_format: str) -> None:
    """Make the ``django_kiq`` loggers write JSON (``log_format == "json"``; else nothing).

    - Nothing configured at all (no handler on the root or ``django_kiq`` loggers): the root
      logger gets one stderr handler writing JSON, so every line of the process is JSON.
    - Otherwise every handler attached to ``django_kiq`` or one of its child loggers gets a
      :class:`JsonFormatter` (such a handler then writes JSON for all the records it handles,
      from any logger). If ``django_kiq`` has no handler of its own, it gets a JSON stderr
      handler and stops propagating, so its lines are not written twice.
    """
    if log_format != "json":
        return
    root, kiq = logging.getLogger(), logging.getLogger("django_kiq")
    if not root.handlers and not kiq.handlers:
        only = logging.StreamHandler()
        only.setFormatter(JsonFormatter())
        root.addHandler(only)
        return
    formatter = JsonFormatter()
    for logger in _kiq_loggers():
        for handler in logger.handlers:
            handler.setFormatter(formatter)
    if not kiq.handlers:
        own = logging.StreamHandler()
        own.setFormatter(formatter)
        kiq.addHandler(own)
        kiq.propagate = False


def _kiq_loggers() -> list[logging.Logger]:
    names = [name for name in logging.root.manager.loggerDict
             if name == "django_kiq" or name.startswith("django_kiq.")]
    loggers = [logging.getLogger(name) for name in names]
    return loggers or [logging.getLogger("django_kiq")]
