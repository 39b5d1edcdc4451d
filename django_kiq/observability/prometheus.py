"""Prometheus metrics: a worker's own counters, and queue gauges read from Redis at scrape time.

Imported only when metrics are asked for (``kiq_worker --metrics-port``, ``KIQ["METRICS_PORT"]``,
or the web view); without ``prometheus_client`` the import raises ImproperlyConfigured naming
the extra to install.

In a worker process: :class:`WorkerMetrics` (one per process, on prometheus_client's default
registry, so metrics a project defines in its own jobs are served too) is a server middleware
that runs on the processor threads and counts each execution by job name and queue, plus a hook
for jobs dropped before they ran (cancelled, expired). :func:`serve` starts prometheus_client's
HTTP server on its own daemon thread (``kiq-metrics``), which lives as long as the process.

At scrape time, on the HTTP server's thread (or a web request's), :class:`RedisCollector` reads
queue sizes, latency and the stat:* totals with one snapshot read (``api.Stats``, one MULTI),
cached for ``ttl`` seconds so several scrapers cost one read. A failed read yields
``kiq_redis_up 0`` and no stale figures.
"""

from __future__ import annotations

import logging
import threading
import time
from collections.abc import Callable, Iterator
from typing import Any

from django.core.exceptions import ImproperlyConfigured

try:
    from prometheus_client import REGISTRY, CollectorRegistry, Counter, Gauge, Histogram
    from prometheus_client import start_http_server
    from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily
except ImportError as exc:
    raise ImproperlyConfigured(
        "Prometheus metrics (kiq_worker --metrics-port, KIQ['METRICS_PORT'], the metrics view) "
        "need the prometheus_client library: pip install 'django-kiq[prometheus]'") from exc

from .. import api, storage
from . import ended_how

logger = logging.getLogger("django_kiq.observability")

LABELS = ("job", "queue")
# Seconds: jobs run from milliseconds to an hour, wider than the library's web-request default.
DURATION_BUCKETS = (0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30, 60, 120, 300,
                    600, 1800, 3600)
#: Retry decisions -> the counter of that name ("discard": counted as failed only).
FAILED = frozenset({"retry", "dead", "discard", "failed"})


class WorkerMetrics:
    """The counters, histogram and gauges of one worker process."""

    def __init__(self, registry: CollectorRegistry = REGISTRY):
        self.registry = registry

        def counter(name: str, doc: str) -> Counter:
            return Counter(name, doc, LABELS, registry=registry)

        self.processed = counter("kiq_jobs_processed", "Job executions that ran, failed or not "
                                 "(as Sidekiq's stat:processed).")
        self.failed = counter("kiq_jobs_failed", "Job executions that raised.")
        self.retried = counter("kiq_jobs_retried", "Failed executions scheduled for a retry.")
        self.dead = counter("kiq_jobs_dead", "Failed executions moved to the dead set.")
        self.cancelled = counter("kiq_jobs_cancelled", "Jobs cancelled, before or while running.")
        self.expired = counter("kiq_jobs_expired", "Jobs dropped unstarted past their expiry.")
        self.duration = Histogram("kiq_job_duration_seconds", "Job execution time.", LABELS,
                                  buckets=DURATION_BUCKETS, registry=registry)
        self.busy = Gauge("kiq_worker_busy_threads", "Processor threads running a job now.",
                          registry=registry)
        self.threads = Gauge("kiq_worker_threads", "Processor threads of this worker.",
                             registry=registry)
        # Label children per (job, queue): one dict lookup per job instead of five.
        self._children: dict[tuple[str, str], tuple] = {}

    def _for(self, job: str, queue: str) -> tuple:
        key = (job, queue)
        children = self._children.get(key)
        if children is None:
            children = self._children[key] = tuple(
                metric.labels(job, queue)
                for metric in (self.processed, self.failed, self.retried, self.dead,
                               self.duration))
        return children

    def middleware(self, call_next: Callable) -> Callable:
        """Server middleware: count one execution and observe its duration."""
        def metrics(ctx: Any) -> Any:
            exc = None
            started = time.monotonic()
            try:
                return call_next(ctx)
            except BaseException as e:
                exc = e
                raise
            finally:
                self.observe(ctx, ended_how(ctx, exc), time.monotonic() - started)
        return metrics

    def observe(self, ctx: Any, how: str, seconds: float) -> None:
        processed, failed, retried, dead, duration = self._for(ctx.display_name, ctx.queue)
        processed.inc()
        duration.observe(seconds)
        if how in FAILED:
            failed.inc()
            if how == "retry":
                retried.inc()
            elif how == "dead":
                dead.inc()

    def ended(self, ctx: Any, kind: str) -> None:
        """Processor hook: a job dropped around the chain ("cancelled" or "expired")."""
        counter = self.cancelled if kind == "cancelled" else self.expired
        counter.labels(ctx.display_name, ctx.queue).inc()


_lock = threading.Lock()
_worker: WorkerMetrics | None = None


def worker_metrics() -> WorkerMetrics:
    """This process's :class:`WorkerMetrics`, created on first use."""
    global _worker
    with _lock:
        if _worker is None:
            _worker = WorkerMetrics()
        return _worker


def serve(*, port: int, busy: Callable[[], int], concurrency: int,
          store: storage.Storage, addr: str = "0.0.0.0") -> threading.Thread:
    """Serve this process's metrics and the queue gauges on ``addr:port``/metrics.

    Raises OSError when the port cannot be bound (the command turns it into its error).
    """
    metrics = worker_metrics()
    metrics.busy.set_function(busy)
    metrics.threads.set(concurrency)
    metrics.registry.register(RedisCollector(store=store))
    _server, thread = start_http_server(port, addr=addr, registry=metrics.registry)
    thread.name = "kiq-metrics"
    return thread


class RedisCollector:
    """Queue sizes and latency, set sizes, and (``totals``) cluster-wide counters from Redis.

    ``store``: None means the default storage, looked up at each read (settings may change).
    """

    def __init__(self, *, store: storage.Storage | None = None, totals: bool = False,
                 ttl: float = 1.0, clock: Callable[[], float] = time.monotonic):
        self.store = store
        self.totals = totals
        self.ttl = ttl
        self.clock = clock
        self._lock = threading.Lock()
        self._cached: tuple[float, api.Stats | None] = (float("-inf"), None)

    def describe(self) -> list:
        return []  # names are fixed; registering must not read Redis

    def collect(self) -> Iterator:
        stats = self.snapshot()
        yield GaugeMetricFamily("kiq_redis_up", "1 when the last read of Redis succeeded.",
                                value=0 if stats is None else 1)
        if stats is not None:
            yield from _families(stats, totals=self.totals)

    def snapshot(self) -> api.Stats | None:
        """The figures of the last read, re-read once older than ``ttl``; None if it failed."""
        with self._lock:
            at, value = self._cached
            if self.clock() - at < self.ttl:
                return value
            value = self._read()
            self._cached = (self.clock(), value)
            return value

    def _read(self) -> api.Stats | None:
        try:
            return api.Stats(store=self.store or storage.get_default(), queues=True)
        except storage.RedisError as exc:
            logger.warning("metrics: cannot read Redis: %s", exc)
            return None


def _families(stats: api.Stats, *, totals: bool) -> Iterator:
    size = GaugeMetricFamily("kiq_queue_size", "Jobs waiting in the queue.", labels=["queue"])
    latency = GaugeMetricFamily("kiq_queue_latency_seconds", "Age of the oldest waiting job.",
                                labels=["queue"])
    paused = GaugeMetricFamily("kiq_queue_paused", "1 when the queue is paused.",
                               labels=["queue"])
    for queue in stats.queues or ():
        size.add_metric([queue.name], queue.size)
        latency.add_metric([queue.name], queue.latency)
        paused.add_metric([queue.name], 1 if queue.paused else 0)
    yield from (size, latency, paused)
    for name, value, doc in (("scheduled", stats.scheduled_size, "scheduled for later"),
                             ("retry", stats.retry_size, "waiting for a retry"),
                             ("dead", stats.dead_size, "in the dead set")):
        yield GaugeMetricFamily(f"kiq_{name}_set_size", f"Jobs {doc}.", value=value)
    if not totals:
        return
    yield GaugeMetricFamily("kiq_processes", "Live worker processes.",
                            value=stats.processes_size)
    yield GaugeMetricFamily("kiq_busy_threads", "Threads running a job, all workers.",
                            value=stats.busy)
    for name, value in (("processed", stats.processed), ("failed", stats.failed),
                        ("cancelled", stats.cancelled), ("expired", stats.expired)):
        yield CounterMetricFamily(f"kiq_cluster_jobs_{name}", f"All workers' stat:{name}.",
                                  value=value)


_web: CollectorRegistry | None = None


def web_registry() -> CollectorRegistry:
    """The registry the web view serves: Redis figures only (a web process runs no jobs)."""
    global _web
    with _lock:
        if _web is None:
            _web = CollectorRegistry()
            _web.register(RedisCollector(totals=True))
        return _web
