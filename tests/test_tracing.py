"""OpenTelemetry: the enqueue's PRODUCER span, its context carried in the job hash, the worker's
CONSUMER span as its child; checked in the SDK's in-memory exporter. The worker side runs
in-process: a payload popped from Redis through ``Processor.process``.
"""

import json
import sys

import pytest
from django.conf import settings
from django.test import override_settings
from opentelemetry import trace
from opentelemetry.sdk.trace import TracerProvider
from opentelemetry.sdk.trace.export import SimpleSpanProcessor
from opentelemetry.sdk.trace.export.in_memory_span_exporter import InMemorySpanExporter
from opentelemetry.trace import SpanKind, StatusCode

import django_kiq.observability as observability
from django_kiq.conf import get_settings
from django_kiq.observability import NO_HOOKS, tracing, worker_hooks
from django_kiq.stats import Counters
from django_kiq.worker.processor import Processor
from tests import jobs

server = pytest.mark.django_db(transaction=True)


def _kiq(**changes):
    return override_settings(KIQ={**settings.KIQ, **changes})


@pytest.fixture(scope="module")
def exporter():
    provider = trace.get_tracer_provider()
    if not isinstance(provider, TracerProvider):  # the process's first (and only) provider
        provider = TracerProvider()
        trace.set_tracer_provider(provider)
    exporter = InMemorySpanExporter()
    provider.add_span_processor(SimpleSpanProcessor(exporter))
    yield exporter
    exporter.shutdown()


@pytest.fixture
def spans(exporter):
    exporter.clear()
    return exporter


def _pop(redis_client, queue="default"):
    raw = redis_client.rpop(f"queue:{queue}")
    assert raw is not None, f"nothing on queue {queue}"
    return raw


def _work(raw, queue="default"):
    return Processor(settings=get_settings(), counters=Counters()).process(queue, raw, "t")


def _one(spans, name):
    found = [s for s in spans.get_finished_spans() if s.name == name]
    assert len(found) == 1, [s.name for s in spans.get_finished_spans()]
    return found[0]


@server
def test_enqueue_span_is_the_parent_of_the_worker_span(spans, redis_client):
    tracer = trace.get_tracer("tests")
    with _kiq(OPENTELEMETRY=True):
        with tracer.start_as_current_span("web request") as request:
            jid = jobs.record.enqueue("t1")
        raw = _pop(redis_client)
        job = json.loads(raw)
        assert job["traceparent"].startswith("00-")
        assert _work(raw).kind == "done"
    send, process = _one(spans, "send default"), _one(spans, "process default")
    assert send.kind == SpanKind.PRODUCER and process.kind == SpanKind.CONSUMER
    trace_id = request.get_span_context().trace_id
    assert send.context.trace_id == process.context.trace_id == trace_id
    assert send.parent.span_id == request.get_span_context().span_id
    assert process.parent.span_id == send.context.span_id
    assert job["traceparent"].startswith(f"00-{trace_id:032x}-{send.context.span_id:016x}-")
    assert [link.context.span_id for link in process.links] == [send.context.span_id]
    for span, operation in ((send, "send"), (process, "process")):
        assert {k: span.attributes[k] for k in (
            "messaging.system", "messaging.operation.name", "messaging.operation.type",
            "messaging.destination.name", "messaging.message.id")} == {
            "messaging.system": "django_kiq", "messaging.operation.name": operation,
            "messaging.operation.type": operation, "messaging.destination.name": "default",
            "messaging.message.id": jid}
    assert process.attributes["messaging.django_kiq.job"] == jobs.record.name
    assert process.attributes["messaging.django_kiq.attempt"] == 1
    assert process.attributes["messaging.django_kiq.outcome"] == "done"
    assert process.status.status_code == StatusCode.UNSET


@server
def test_a_failure_is_recorded_on_the_worker_span(spans, redis_client):
    with _kiq(OPENTELEMETRY=True):
        jobs.fail.enqueue("kaput")
        assert _work(_pop(redis_client)).kind == "retry"
    process = _one(spans, "process default")
    assert process.status.status_code == StatusCode.ERROR
    assert process.attributes["error.type"] == "ValueError"
    assert process.attributes["messaging.django_kiq.outcome"] == "retry"
    [event] = process.events
    assert event.name == "exception" and "kaput" in event.attributes["exception.message"]


@server
def test_a_retry_stays_a_child_of_the_enqueue(spans, redis_client):
    with _kiq(OPENTELEMETRY=True):
        jobs.fail.enqueue("again")
        raw = _pop(redis_client)
        first = _work(raw)
        second = _work(first.new)  # the retry's payload carries the same context
    send = _one(spans, "send default")
    runs = [s for s in spans.get_finished_spans() if s.name == "process default"]
    assert [s.parent.span_id for s in runs] == [send.context.span_id] * 2
    assert [s.attributes["messaging.django_kiq.attempt"] for s in runs] == [1, 2]
    assert second.kind == "retry"


@server
def test_a_job_carrying_a_context_keeps_it_and_the_send_span_links_to_it(spans):
    with _kiq(OPENTELEMETRY=True):
        chain = observability.client_middleware(get_settings())[0](lambda job: job)
        carried = "00-0af7651916cd43dd8448eb211c80319c-b7ad6b7169203331-01"
        job = chain({"class": "x", "queue": "mail", "jid": "j1", "traceparent": carried})
    assert job["traceparent"] == carried
    send = _one(spans, "send mail")
    assert [f"{link.context.span_id:016x}" for link in send.links] == ["b7ad6b7169203331"]


@server
def test_off_by_default_no_context_and_no_span(spans, redis_client):
    assert worker_hooks(get_settings()) is NO_HOOKS
    jobs.record.enqueue("t2")
    raw = _pop(redis_client)
    assert "traceparent" not in json.loads(raw)
    assert _work(raw).kind == "done"
    assert spans.get_finished_spans() == ()


def test_junk_context_from_redis_is_ignored():
    assert tracing.carrier_of({"traceparent": 42, "tracestate": "", "baggage": "k=v"}) == {
        "baggage": "k=v"}


def test_without_opentelemetry_nothing_is_done(monkeypatch):
    monkeypatch.delattr(observability, "tracing")  # restored after the test
    monkeypatch.delitem(sys.modules, "django_kiq.observability.tracing")
    for name in ("opentelemetry", "opentelemetry.trace", "opentelemetry.propagate"):
        monkeypatch.setitem(sys.modules, name, None)
    with _kiq(OPENTELEMETRY=True):
        assert worker_hooks(get_settings()) is NO_HOOKS
        assert observability.client_middleware(get_settings()) == ()
    monkeypatch.delitem(sys.modules, "django_kiq.observability.tracing")
