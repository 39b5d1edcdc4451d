"""Client middleware around push and server middleware around execution, against the real Redis.

Server chains run in-process through ``Processor.process``; the poller's second pass of the
client chain over scheduled jobs runs through ``Poller.poll_once``. No worker subprocess.
"""

import json
import time

import pytest
from django.conf import settings
from django.test import override_settings

from django_kiq import payload
from django_kiq.conf import get_settings
from django_kiq.stats import Counters
from django_kiq.worker.processor import Processor
from django_kiq.worker.scheduler import Poller
from tests import jobs

HERE = __name__
TRAIL: list = []


@pytest.fixture(autouse=True)
def _fresh():
    jobs.MEMORY.clear()
    TRAIL.clear()


def _kiq(**changes):
    return override_settings(KIQ={**settings.KIQ, **changes})


def _queue(redis_client, name="default"):
    return [json.loads(raw) for raw in redis_client.lrange(f"queue:{name}", 0, -1)]


# -- client middleware (defined here, configured by dotted path) ------------------------------

def add_tenant(next_push):
    def push(job):
        # A copy, not the hash it was given: enqueue must still return the jid.
        return next_push({**job, "tenant": "acme", "hops": job.get("hops", 0) + 1})
    return push


def drop_secret(next_push):
    def push(job):
        if job["args"] == ["secret"]:
            return None
        return next_push(job)
    return push


def _tracer(label):
    def factory(next_push):
        def push(job):
            job.setdefault("trail", []).append(label)
            TRAIL.append(f"{label}:in")
            result = next_push(job)
            TRAIL.append(f"{label}:out")
            return result
        return push
    return factory


client_a, client_b, client_c = _tracer("a"), _tracer("b"), _tracer("c")


def test_client_middleware_changes_the_pushed_hash(redis_client):
    with _kiq(CLIENT_MIDDLEWARE=[f"{HERE}.add_tenant"]):
        jid = jobs.record.enqueue("x")
    [job] = _queue(redis_client)
    assert jid is not None and job["jid"] == jid
    assert job["tenant"] == "acme" and job["hops"] == 1


def test_client_middleware_cancels_a_push(redis_client):
    with _kiq(CLIENT_MIDDLEWARE=[f"{HERE}.drop_secret"]):
        assert jobs.record.enqueue("secret") is None
        assert jobs.record.enqueue_in(60, "secret") is None
        jids = jobs.record.enqueue_many([("a",), ("secret",), ("b",)])
    assert jids[1] is None and None not in (jids[0], jids[2])
    assert [j["jid"] for j in _queue(redis_client)] == [jids[2], jids[0]]  # LPUSH: newest first
    assert redis_client.zcard("schedule") == 0


def test_client_middleware_runs_in_listed_order(redis_client):
    with _kiq(CLIENT_MIDDLEWARE=[f"{HERE}.client_a", f"{HERE}.client_b", f"{HERE}.client_c"]):
        jobs.record.enqueue("x")
    [job] = _queue(redis_client)
    assert job["trail"] == ["a", "b", "c"]
    assert TRAIL == ["a:in", "b:in", "c:in", "c:out", "b:out", "a:out"]


def test_client_middleware_exception_reaches_the_caller(redis_client):
    with _kiq(CLIENT_MIDDLEWARE=[f"{HERE}.broken_client"]), pytest.raises(LookupError):
        jobs.record.enqueue("x")
    assert redis_client.llen("queue:default") == 0


def broken_client(next_push):
    def push(job):
        raise LookupError("no tenant")
    return push


def test_poller_runs_client_middleware_again_on_scheduled_jobs(redis_client, store):
    with _kiq(CLIENT_MIDDLEWARE=[f"{HERE}.add_tenant", f"{HERE}.drop_secret"]):
        kept = jobs.record.enqueue_in(60, "kept")
        [scheduled] = [json.loads(m) for m in redis_client.zrange("schedule", 0, -1)]
        assert scheduled["hops"] == 1
        # A job another client (say Ruby) scheduled without our middleware: cancelled on its way.
        secret = payload.build(name=jobs.record.name, args=["secret"], kwargs={},
                               queue="default", now=time.time())
        store.schedule([(time.time() + 60, payload.encode(secret))])
        poller = Poller(store=store, identity="test:1:abc", settings=get_settings())
        assert poller.poll_once(now=time.time() + 3600) == 1
    [job] = _queue(redis_client)
    assert job["jid"] == kept and job["hops"] == 2 and "at" not in job
    assert redis_client.zcard("schedule") == 0
    assert store.wip_items("test:1:abc", "sched") == []


# -- server middleware: run through the worker's Processor in-process -------------------------

def outer(next_call):
    def call(ctx):
        TRAIL.append(f"outer:in:{ctx.name}:{ctx.queue}:{ctx.jid}:{ctx.thread}")
        try:
            return next_call(ctx)
        except Exception as exc:
            TRAIL.append(f"outer:saw:{type(exc).__name__}")
            raise
        finally:
            TRAIL.append("outer:out")
    return call


def inner(next_call):
    def call(ctx):
        TRAIL.append(f"inner:in:{ctx.job['args']}")
        result = next_call(ctx)
        TRAIL.append("inner:out")
        return result
    return call


def broken_server(next_call):
    def call(ctx):
        raise PermissionError("tenant suspended")
    return call


def skip_everything(next_call):
    def call(ctx):
        TRAIL.append("skipped")
    return call


# Processor.process calls close_old_connections(), as a worker does between jobs; that needs
# database access once any earlier test has opened a connection.
server = pytest.mark.django_db(transaction=True)


def _process(job_obj, *args, **kwargs):
    raw = payload.encode(payload.build(name=job_obj.name, args=args, kwargs=kwargs,
                                       queue="default", now=time.time(),
                                       options=job_obj.options.payload_fields()))
    counters = Counters()
    outcome = Processor(settings=get_settings(), counters=counters).process("default", raw, "t")
    return outcome, counters


@server
def test_server_middleware_wraps_execution_in_order():
    with _kiq(SERVER_MIDDLEWARE=[f"{HERE}.outer", f"{HERE}.inner"]):
        outcome, counters = _process(jobs.mem_record, "x")
    assert outcome.kind == "done" and jobs.MEMORY == [("x", None)]
    assert TRAIL[0].startswith("outer:in:tests.jobs.mem_record:default:")
    assert TRAIL[0].endswith(":t")
    assert TRAIL[1:] == ["inner:in:['x']", "inner:out", "outer:out"]
    assert counters.processed == 1 and counters.failed == 0


@server
def test_server_middleware_sees_the_job_failure():
    with _kiq(SERVER_MIDDLEWARE=[f"{HERE}.outer"]):
        outcome, counters = _process(jobs.fail, "kaboom")
    assert TRAIL[1:] == ["outer:saw:ValueError", "outer:out"]
    assert outcome.kind == "retry" and counters.failed == 1
    assert json.loads(outcome.new)["error_message"] == "kaboom"


@server
def test_server_middleware_exception_is_a_job_failure():
    with _kiq(SERVER_MIDDLEWARE=[f"{HERE}.broken_server"]):
        outcome, counters = _process(jobs.mem_record, "x")
    assert jobs.MEMORY == []
    assert outcome.kind == "retry" and outcome.at > time.time()
    failed = json.loads(outcome.new)
    assert failed["error_class"] == "PermissionError" and failed["retry_count"] == 0
    assert counters.failed == 1


@server
def test_server_middleware_may_skip_the_job():
    with _kiq(SERVER_MIDDLEWARE=[f"{HERE}.skip_everything"]):
        outcome, _ = _process(jobs.mem_record, "x")
    assert outcome.kind == "done" and TRAIL == ["skipped"] and jobs.MEMORY == []
