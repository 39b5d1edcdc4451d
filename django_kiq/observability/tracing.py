"""OpenTelemetry tracing: a PRODUCER span per enqueued job, a CONSUMER span per execution.

Imported only when ``KIQ["OPENTELEMETRY"]`` is True, when a chain is built; with
``opentelemetry-api`` missing both factories return None and nothing is done. Spans go to
whatever tracer provider the application configured (the API alone records nothing).

- The client middleware runs in the enqueuing thread, outermost in the client chain: it opens a
  ``send <queue>`` PRODUCER span and injects its context into the job hash with the configured
  propagator (W3C ``traceparent``, plus ``tracestate``/``baggage`` when present). That is the
  message's creation context, written once: a job that already carries one (the poller moving a
  scheduled job, a retry) keeps it and the new send span links to it.
- The server middleware runs on a processor thread, outermost in the server chain: a
  ``process <queue>`` CONSUMER span per execution, a child of the creation context (OpenTelemetry's
  messaging conventions allow the creation context as parent for single messages), with a link to
  it as well. Every attempt of a retried job is a child of the same enqueue.

Attributes follow the messaging semantic conventions (``messaging.system``,
``messaging.operation.name``/``.type``, ``messaging.destination.name``, ``messaging.message.id``),
with system-specific ones under ``messaging.django_kiq.*``. A failure sets the span status to
ERROR, records the exception as an event and sets ``error.type`` to the exception's class path
(``ValueError``, ``myapp.errors.Gone``).
"""

from __future__ import annotations

import logging
from collections.abc import Callable
from typing import Any

try:
    from opentelemetry import propagate, trace
    from opentelemetry.trace import SpanKind, Status, StatusCode
    AVAILABLE = True
except ImportError:  # the feature is then a no-op
    AVAILABLE = False

from .. import __version__
from ..retry import exception_path

logger = logging.getLogger("django_kiq.observability")

SYSTEM = "django_kiq"
#: Job hash keys that carry the creation context (the W3C Trace Context / Baggage headers).
CARRIER_KEYS = ("traceparent", "tracestate", "baggage")


def _tracer() -> trace.Tracer:
    return trace.get_tracer("django_kiq", __version__)


def client_middleware() -> Callable | None:
    """The PRODUCER-span client middleware factory, or None without OpenTelemetry."""
    if not AVAILABLE:
        logger.warning("KIQ['OPENTELEMETRY'] is on but opentelemetry-api is not installed "
                       "(pip install 'django-kiq[otel]'); no spans are recorded")
        return None
    tracer = _tracer()

    def send_span(next_push: Callable) -> Callable:
        def push(job: dict[str, Any]) -> dict[str, Any] | None:
            queue = str(job.get("queue") or "default")
            carried = carrier_of(job)
            links = _links(carried)
            with tracer.start_as_current_span(
                    f"send {queue}", kind=SpanKind.PRODUCER, links=links,
                    attributes=_attributes("send", queue, job),
                    record_exception=False, set_status_on_exception=False) as span:
                if not carried:
                    headers: dict[str, str] = {}
                    propagate.inject(headers)
                    job.update((k, v) for k, v in headers.items() if k in CARRIER_KEYS)
                try:
                    result = next_push(job)
                except BaseException as exc:
                    record_failure(span, exc)
                    raise
                if result is None:
                    span.set_attribute("messaging.django_kiq.dropped", True)
                return result
        return push
    return send_span


def server_middleware() -> Callable | None:
    """The CONSUMER-span server middleware factory, or None without OpenTelemetry."""
    if not AVAILABLE:
        logger.warning("KIQ['OPENTELEMETRY'] is on but opentelemetry-api is not installed "
                       "(pip install 'django-kiq[otel]'); no spans are recorded")
        return None
    from . import ended_how

    tracer = _tracer()

    def process_span(next_call: Callable) -> Callable:
        def call(ctx: Any) -> Any:
            carried = carrier_of(ctx.job)
            parent = propagate.extract(carried) if carried else None
            attributes = _attributes("process", ctx.queue, ctx.job)
            attributes["messaging.django_kiq.job"] = ctx.display_name
            if ctx.current is not None:
                attributes["messaging.django_kiq.attempt"] = ctx.current.attempt
            with tracer.start_as_current_span(
                    f"process {ctx.queue}", context=parent, kind=SpanKind.CONSUMER,
                    links=_links(carried), attributes=attributes,
                    record_exception=False, set_status_on_exception=False) as span:
                try:
                    result = next_call(ctx)
                except BaseException as exc:
                    outcome = ended_how(ctx, exc)
                    span.set_attribute("messaging.django_kiq.outcome", outcome)
                    if outcome not in ("cancelled", "requeued"):
                        record_failure(span, exc)
                    raise
                span.set_attribute("messaging.django_kiq.outcome", ended_how(ctx, None))
                return result
        return call
    return process_span


def carrier_of(job: dict[str, Any]) -> dict[str, str]:
    """The creation context fields of a job hash (read from Redis: strings only)."""
    return {k: v for k in CARRIER_KEYS if isinstance(v := job.get(k), str) and v}


def record_failure(span: Any, exc: BaseException) -> None:
    """Status ERROR, an ``exception`` event and ``error.type``, as the conventions ask."""
    span.set_attribute("error.type", exception_path(exc))  # as the job's error_class
    span.record_exception(exc)
    span.set_status(Status(StatusCode.ERROR, f"{type(exc).__name__}: {exc}"))


def _attributes(operation: str, queue: str, job: dict[str, Any]) -> dict[str, Any]:
    return {"messaging.system": SYSTEM, "messaging.operation.name": operation,
            "messaging.operation.type": operation, "messaging.destination.name": queue,
            "messaging.message.id": str(job.get("jid", ""))}


def _links(carried: dict[str, str]) -> list:
    """A link to the creation context a job already carries (none for a new job)."""
    if not carried:
        return []
    context = trace.get_current_span(propagate.extract(carried)).get_span_context()
    return [trace.Link(context)] if context.is_valid else []
