"""Prometheus metrics: the worker's per-job counters (in-process, through ``Processor.process``),
the Redis collector behind the queue gauges, the web view's access rules, and a real
``kiq_worker --metrics-port`` subprocess scraped over HTTP.
"""

import socket
import sys
import time
import urllib.request

import pytest
from django.conf import settings
from django.core.exceptions import ImproperlyConfigured
from django.core.management import CommandError, call_command
from django.test import override_settings
from prometheus_client import REGISTRY
from prometheus_client.parser import text_string_to_metric_families

from django_kiq import payload
from django_kiq.api import cancel
from django_kiq.checks import check_settings
from django_kiq.conf import get_settings
from django_kiq.observability import NO_HOOKS, client_middleware, prometheus, worker_hooks
from django_kiq.stats import Counters
from django_kiq.worker.control import Control
from django_kiq.worker.processor import Processor
from tests import jobs
from tests.conftest import wait_for

server = pytest.mark.django_db(transaction=True)


def _kiq(**changes):
    return override_settings(KIQ={**settings.KIQ, **changes})


def _raw(job_obj, *args, queue="default", **fields):
    job = payload.build(name=job_obj.name, args=args, kwargs={}, queue=queue, now=time.time(),
                        options=job_obj.options.payload_fields())
    job.update(fields)
    return payload.encode(job)


def _sample(name, job_obj, queue="default"):
    return REGISTRY.get_sample_value(name, {"job": job_obj.name, "queue": queue}) or 0.0


# -- off by default -----------------------------------------------------------------------------

def test_off_by_default_nothing_is_added_to_either_chain():
    assert worker_hooks(get_settings()) is NO_HOOKS
    assert client_middleware(get_settings()) == ()
    processor = Processor(settings=get_settings(), counters=Counters())
    assert processor.ended_hooks == ()


# -- the worker's counters ----------------------------------------------------------------------

@server
def test_worker_counts_each_outcome_by_job_and_queue():
    with _kiq(METRICS_PORT=9191):
        processor = Processor(settings=get_settings(), counters=Counters())
    cases = [(jobs.noop, "done", "kiq_jobs_processed_total"),
             (jobs.fail, "retry", "kiq_jobs_retried_total"),
             (jobs.fail_to_dead, "dead", "kiq_jobs_dead_total")]
    for job_obj, kind, counter in cases:
        before = {name: _sample(name, job_obj) for name in (
            "kiq_jobs_processed_total", "kiq_jobs_failed_total", counter,
            "kiq_job_duration_seconds_count")}
        outcome = processor.process("default", _raw(job_obj), "t")
        assert outcome.kind == kind
        assert _sample("kiq_jobs_processed_total", job_obj) == before[
            "kiq_jobs_processed_total"] + 1
        assert _sample("kiq_job_duration_seconds_count", job_obj) == before[
            "kiq_job_duration_seconds_count"] + 1
        failed = 0 if kind == "done" else 1
        assert _sample("kiq_jobs_failed_total", job_obj) == before["kiq_jobs_failed_total"] + failed
        if kind != "done":
            assert _sample(counter, job_obj) == before[counter] + 1


@server
def test_worker_counts_expired_and_cancelled_jobs_that_never_ran(store):
    control = Control(store=store)
    with _kiq(METRICS_PORT=9191):
        processor = Processor(settings=get_settings(), counters=Counters(), control=control)
    expired, cancelled = (_sample(f"kiq_jobs_{k}_total", jobs.noop, "mail")
                          for k in ("expired", "cancelled"))
    ran = _sample("kiq_jobs_processed_total", jobs.noop, "mail")
    outcome = processor.process("mail", _raw(jobs.noop, queue="mail",
                                             kiq_expires_at=time.time() - 5), "t")
    assert outcome.kind == "expired"
    raw = _raw(jobs.noop, queue="mail")
    cancel(payload.decode(raw)["jid"])  # recorded, then read by the worker's poll
    control.poll_cancellations()
    assert processor.process("mail", raw, "t").kind == "cancelled"
    assert _sample("kiq_jobs_expired_total", jobs.noop, "mail") == expired + 1
    assert _sample("kiq_jobs_cancelled_total", jobs.noop, "mail") == cancelled + 1
    assert _sample("kiq_jobs_processed_total", jobs.noop, "mail") == ran  # neither ran


# -- queue gauges read from Redis ---------------------------------------------------------------

def _families(collector):
    return {f.name: f for f in collector.collect()}


def _value(family, **labels):
    return next(s.value for s in family.samples if all(s.labels.get(k) == v
                                                        for k, v in labels.items()))


def test_redis_collector_reads_sizes_and_latency_once_per_ttl(store, redis_client):
    now = [100.0]
    collector = prometheus.RedisCollector(store=store, totals=True, clock=lambda: now[0])
    for token in ("a", "b"):
        jobs.record.enqueue(token)
    redis_client.set("stat:processed", 7)
    redis_client.set("stat:expired", 2)
    families = _families(collector)
    assert _value(families["kiq_redis_up"]) == 1
    assert _value(families["kiq_queue_size"], queue="default") == 2
    assert 0 <= _value(families["kiq_queue_latency_seconds"], queue="default") < 60
    assert _value(families["kiq_queue_paused"], queue="default") == 0
    assert _value(families["kiq_cluster_jobs_processed"]) == 7
    assert _value(families["kiq_cluster_jobs_expired"]) == 2
    assert families["kiq_cluster_jobs_processed"].type == "counter"
    jobs.record.enqueue("c")
    now[0] += 0.5  # within the second: the cached read
    assert _value(_families(collector)["kiq_queue_size"], queue="default") == 2
    now[0] += 1
    assert _value(_families(collector)["kiq_queue_size"], queue="default") == 3


def test_worker_collector_has_no_cluster_totals(store):
    families = _families(prometheus.RedisCollector(store=store))
    assert "kiq_queue_size" in families and "kiq_cluster_jobs_processed" not in families


def test_redis_down_is_reported_as_redis_up_zero(redis_url):
    with _kiq(REDIS_URL="redis://127.0.0.1:1/0"):
        families = _families(prometheus.RedisCollector())
    assert _value(families["kiq_redis_up"]) == 0 and "kiq_queue_size" not in families


# -- the web view -------------------------------------------------------------------------------

VIEW = pytest.mark.urls("django_kiq.observability.urls")


@pytest.fixture(autouse=True)
def _fresh_web_registry(monkeypatch):
    monkeypatch.setattr(prometheus, "_web", None)  # no read cached by an earlier test


@VIEW
@pytest.mark.django_db(transaction=True)  # the enqueue is pushed at once, not at a commit
def test_view_is_staff_only_by_default(client, admin_client, store):
    jobs.record.enqueue("x")
    assert client.get("/metrics").status_code == 403
    assert client.get("/metrics", headers={"Authorization": "Bearer "}).status_code == 403
    response = admin_client.get("/metrics")
    assert response.status_code == 200
    assert response["Content-Type"].startswith("text/plain")
    families = {f.name: f for f in text_string_to_metric_families(response.content.decode())}
    assert _value(families["kiq_queue_size"], queue="default") == 1
    assert "kiq_cluster_jobs_processed" in families and "kiq_processes" in families


@VIEW
@pytest.mark.django_db
def test_view_accepts_the_bearer_token(client, store):
    with _kiq(METRICS_TOKEN="s3cret"):
        ok = client.get("/metrics", headers={"Authorization": "Bearer s3cret"})
        wrong = client.get("/metrics", headers={"Authorization": "Bearer s3cre"})
    assert ok.status_code == 200 and b"kiq_queue_size" in ok.content
    assert wrong.status_code == 403
    assert client.post("/metrics").status_code == 405


# -- without prometheus_client ------------------------------------------------------------------

def test_without_prometheus_client_a_clear_error(monkeypatch, redis_url):
    import django_kiq.observability as package

    monkeypatch.delattr(package, "prometheus")  # restored after the test
    monkeypatch.delitem(sys.modules, "django_kiq.observability.prometheus")
    monkeypatch.setitem(sys.modules, "prometheus_client", None)
    with pytest.raises(ImproperlyConfigured, match=r"django-kiq\[prometheus\]"):
        import django_kiq.observability.prometheus  # noqa: F401
    monkeypatch.delitem(sys.modules, "django_kiq.observability.prometheus", raising=False)
    with pytest.raises(CommandError, match=r"pip install 'django-kiq\[prometheus\]'"):
        call_command("kiq_worker", "--metrics-port", "9191")


def test_checks_reject_a_bad_metrics_port():
    for port in (0, 70000, "9191", True):
        with _kiq(METRICS_PORT=port):
            assert [e.id for e in check_settings()] == ["django_kiq.E025"]
    with _kiq(METRICS_TOKEN=None):
        assert [e.id for e in check_settings()] == ["django_kiq.E026"]


# -- a real worker, scraped over HTTP -----------------------------------------------------------

def _free_port():
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _scrape(port):
    try:
        with urllib.request.urlopen(f"http://127.0.0.1:{port}/metrics", timeout=2) as response:
            return {f.name: f for f in text_string_to_metric_families(response.read().decode())}
    except OSError:
        return None


def test_worker_serves_metrics_on_its_port(worker_factory, redis_client):
    port = _free_port()
    worker = worker_factory("-c", "2", "--metrics-port", str(port))
    for i in range(3):
        jobs.noop.enqueue(i)
    jobs.fail_to_dead.enqueue()

    def settled():
        families = _scrape(port)
        if not families:
            return None
        done = [s for s in families["kiq_jobs_processed"].samples
                if s.name.endswith("_total")]
        return families if sum(s.value for s in done) >= 4 else None

    families = wait_for(settled, timeout=20, message=worker.output)
    assert _value(families["kiq_jobs_processed"], job=jobs.noop.name, queue="default") == 3
    assert _value(families["kiq_jobs_dead"], job=jobs.fail_to_dead.name, queue="default") == 1
    histogram = families["kiq_job_duration_seconds"]
    assert histogram.type == "histogram"
    assert _value(histogram, job=jobs.noop.name, queue="default", le="+Inf") == 3
    assert _value(families["kiq_worker_threads"]) == 2
    jobs.sleep_then_record.enqueue("busy", 3)
    wait_for(lambda: (f := _scrape(port)) and _value(f["kiq_worker_busy_threads"]) == 1,
             timeout=10, message="the busy gauge never showed the sleeping job")
    # Read from Redis at most once a second: 4 waiting at the first scrape, none soon after.
    wait_for(lambda: _value(_scrape(port)["kiq_queue_size"], queue="default") == 0, timeout=5)
    assert "kiq_queue_latency_seconds" in families and "process_cpu_seconds" in families
    assert f"metrics:     http://0.0.0.0:{port}/metrics" in worker.output()
