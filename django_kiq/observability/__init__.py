"""Metrics, tracing and structured logs: what each chain gets, decided once, at build time.

Nothing here runs per job unless a setting asked for it. The processor and the client call
:func:`worker_hooks` and :func:`client_middleware` once, when they build their middleware chain;
with every feature off both return nothing, so a job pays no extra call. The optional libraries
(``prometheus_client``, ``opentelemetry-api``) are imported only by the modules that use them,
and only when their feature is on.

- ``prometheus``: the worker's ``--metrics-port`` endpoint (counters, durations, busy threads,
  queue sizes and latency); ``views``: the same queue gauges and cluster-wide totals for the web
  process.
- ``tracing``: a PRODUCER span at enqueue whose context travels in the job hash, a CONSUMER span
  per execution on the worker.
- ``logformat``: ``KIQ["LOG_FORMAT"] = "json"``, one JSON object per log line.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

from ..conf import KiqSettings


@dataclass(frozen=True, slots=True, kw_only=True)
class WorkerHooks:
    """What a processor adds for observability.

    ``middleware``: server middleware factories placed outermost, before the built-in logging.
    ``ended``: ``hook(ctx, kind)`` callables for jobs dropped around the chain ("cancelled",
    "expired"), which no middleware sees end.
    """

    middleware: tuple[Callable, ...] = ()
    ended: tuple[Callable[[Any, str], None], ...] = ()


NO_HOOKS = WorkerHooks()


def worker_hooks(settings: KiqSettings) -> WorkerHooks:
    """The tracing and metrics hooks a processor built with ``settings`` needs (often none)."""
    middleware: list[Callable] = []
    ended: list[Callable] = []
    if settings.opentelemetry:
        from . import tracing

        factory = tracing.server_middleware()
        if factory is not None:  # None: OpenTelemetry is not installed
            middleware.append(factory)
    if settings.metrics_port is not None:
        from . import prometheus

        metrics = prometheus.worker_metrics()
        middleware.append(metrics.middleware)
        ended.append(metrics.ended)
    if not middleware and not ended:
        return NO_HOOKS
    return WorkerHooks(middleware=tuple(middleware), ended=tuple(ended))


def client_middleware(settings: KiqSettings) -> tuple[Callable, ...]:
    """Built-in client middleware (outermost): the PRODUCER span when tracing is on."""
    if not settings.opentelemetry:
        return ()
    from . import tracing

    factory = tracing.client_middleware()
    return () if factory is None else (factory,)


def ended_how(ctx: Any, exc: BaseException | None) -> str:
    """How one execution left the server chain, seen from a middleware outside the retry one.

    "done", "cancelled", the retry decision's kind ("retry", "dead", "discard"), "requeued"
    (an iterable job paused at a shutdown) or "failed" (raised outside the retry middleware's
    reach; the processor decides its fate after the chain).
    """
    if ctx.current is not None and ctx.current.cancelled:
        return "cancelled"
    if exc is None:
        return "done"
    if ctx.decision is not None:
        return ctx.decision.kind
    from ..worker.processor import _Checkpointed  # the rare path: no import per job

    return "requeued" if isinstance(exc, _Checkpointed) else "failed"
