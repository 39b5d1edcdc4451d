"""Bad input, one test each: what the caller sees at enqueue, what a worker does with it.

Producer-side mistakes fail where they are made (the enqueue call, the decorator, the worker's
start-up), before anything reaches Redis. Payloads that are already in Redis, whoever pushed them,
never crash a worker and never vanish: they reach the retry or dead set with the reason.
Settings of the wrong type are system-check errors: see tests/test_checks.py for each setting;
here only that the worker refuses to start on one.
"""

import json

import pytest
from django.conf import settings
from django.core.management import call_command
from django.core.management.base import CommandError, SystemCheckError
from django.test import override_settings

from django_kiq import PayloadTooLarge, job, payload
from django_kiq.conf import get_settings
from django_kiq.exceptions import MalformedPayload
from django_kiq.stats import Counters
from django_kiq.worker.fetcher import Fetcher, QueueOrder, recover_orphans
from django_kiq.worker.manager import Manager
from django_kiq.worker.processor import Processor
from tests import jobs

MIB = 1024 * 1024
DEEP = 100_000
# The processor closes stale database connections around each job, as a worker does.
runs_jobs = pytest.mark.django_db(transaction=True)


def _processor():
    return Processor(settings=get_settings(), counters=Counters())


def _run_one(store, identity="h:1:bad"):
    """Fetch one job, run it in-process and write its outcome, as a worker thread does."""
    fetcher = Fetcher(store, identity, QueueOrder([("default", 1)], True))
    [(queue, raw)] = fetcher.fetch(1, [])
    outcome = _processor().process(queue, raw, "kiq-processor-0")
    if outcome.kind == "done":
        fetcher.fetch(0, [raw])
    else:
        store.settle(identity, [Manager._settle_entry(outcome)])
    return outcome


def _deep(depth: int, open_: str = "[", close: str = "]") -> str:
    return open_ * depth + close * depth


# -- payloads a worker finds in Redis --------------------------------------------------------------

@runs_jobs
@pytest.mark.parametrize("raw, reason", [
    (b"{not json", "not valid JSON"),
    (b'{"args": [1], "jid": "x"}', "no 'class'"),
    (b'{"class": "tests.jobs.record", "jid": "x"}', "no 'args'"),
    (b'{"class": "tests.jobs.record", "args": {"a": 1}}', "no 'args'"),
    (b"[1, 2]", "not an object"),
    (b"\xff\xfe{}", "not valid JSON"),  # not UTF-8
    (('{"class": "tests.jobs.record", "args": ' + _deep(DEEP) + "}").encode(),
     "nested too deeply"),
])
def test_malformed_payload_goes_dead_with_its_text(raw, reason):
    with pytest.raises(MalformedPayload, match=reason):
        payload.decode(raw)
    outcome = _processor().process("default", raw, "kiq-processor-0")
    assert outcome.kind == "dead"
    record = json.loads(outcome.new)
    assert record["error_class"] == "django_kiq.exceptions.MalformedPayload"
    assert reason in record["error_message"]
    assert record["raw_payload"] == payload.raw_text(raw)


@runs_jobs
def test_malformed_payloads_reach_the_dead_set(store, redis_client):
    redis_client.lpush("queue:default", b"\xff\xfe", b'{"args": []}')
    for _ in range(2):
        assert _run_one(store).kind == "dead"
    dead = [json.loads(m) for m in redis_client.zrange("dead", 0, -1)]
    assert sorted(d["raw_payload"] for d in dead) == ["\\xff\\xfe", '{"args": []}']
    assert redis_client.llen("kiq:wip:h:1:bad") == 0


@runs_jobs
def test_wrong_arity_is_a_typeerror_failure_that_is_retried(store, redis_client):
    jid = jobs.add.enqueue(1)  # add(a, b): nothing checks arity at enqueue (kwargs may fill it)
    outcome = _run_one(store)
    assert outcome.kind == "retry"
    [(raw, score)] = redis_client.zrange("retry", 0, -1, withscores=True)
    retried = json.loads(raw)
    assert retried["jid"] == jid and retried["error_class"] == "TypeError"
    assert "missing 1 required positional argument" in retried["error_message"]
    assert retried["retry_count"] == 0 and score > retried["failed_at"]


def test_deeply_nested_payload_in_progress_is_recovered_not_fatal(store, redis_client):
    # The fetcher reads the queue of an adopted or orphaned job: it must survive JSON that
    # json.loads cannot decode (RecursionError), or a thread dies / recovery stalls for good.
    raw = ('{"class": "tests.jobs.record", "queue": "q", "args": ' + _deep(DEEP) + "}").encode()
    redis_client.lpush("kiq:wip:h:2:deep", raw)
    fetcher = Fetcher(store, "h:2:deep", QueueOrder([("default", 1)], True))
    assert fetcher.reconcile([]) == [("default", raw)]
    redis_client.lpush("kiq:wip:h:2:deep|sched", raw)
    store.register("h:2:deep", "{}")
    assert recover_orphans(store, poison_limit=3) == 2
    assert redis_client.llen("queue:default") == 1  # the sched-lane copy, to be sent dead
    assert redis_client.zcard("dead") == 1  # the fetch-lane copy: undecodable, dead at once


# -- arguments the caller passes -------------------------------------------------------------------

def test_deeply_nested_arguments_are_refused_clearly(redis_client):
    value: list = []
    for _ in range(DEEP):
        value = [value]
    with pytest.raises(ValueError, match="nests lists/dicts more than 98 levels"):
        jobs.record.enqueue(value)
    nested = {}
    for _ in range(200):
        nested = {"k": nested}
    with pytest.raises(ValueError, match="argument 'b' nests"):
        jobs.record_kwargs.enqueue(1, b=nested)
    assert redis_client.llen("queue:default") == 0


def test_nesting_up_to_the_limit_is_accepted_and_round_trips(redis_client):
    value: list = []
    for _ in range(payload.MAX_NESTING - 1):
        value = [value]
    jobs.record.enqueue(value)
    [raw] = redis_client.lrange("queue:default", 0, -1)
    assert payload.decode(raw)["args"] == [value]


def test_non_utf8_arguments_are_refused_at_enqueue(redis_client):
    with pytest.raises(TypeError, match="bytes"):
        jobs.record.enqueue(b"\xff\xfe")
    with pytest.raises(UnicodeEncodeError):  # a lone surrogate cannot be encoded as UTF-8
        jobs.record.enqueue("\udcff")
    assert redis_client.llen("queue:default") == 0


@runs_jobs
def test_one_megabyte_argument_fits_the_default_limit(store, redis_client):
    assert get_settings().max_payload_bytes == MIB
    jobs.noop.enqueue("x" * 1_000_000)
    assert len(redis_client.lindex("queue:default", 0)) > 1_000_000
    assert _run_one(store).kind == "done"
    assert redis_client.llen("kiq:wip:h:1:bad") == 0


@pytest.mark.parametrize("size", [MIB, 16 * MIB])
def test_too_large_payload_is_refused_at_enqueue(redis_client, size):
    with pytest.raises(PayloadTooLarge, match=r"over KIQ\['MAX_PAYLOAD_BYTES'\] = 1,048,576"):
        jobs.noop.enqueue("x" * size)
    with pytest.raises(PayloadTooLarge):  # one job too large: none of the batch is written
        jobs.noop.enqueue_many([("small",), ("x" * size,)])
    assert redis_client.llen("queue:default") == 0


@runs_jobs
def test_raised_limit_lets_16_megabytes_through(store, redis_client, redis_url):
    with override_settings(KIQ={**settings.KIQ, "MAX_PAYLOAD_BYTES": 32 * MIB}):
        jobs.noop.enqueue("x" * (16 * MIB))
        assert len(redis_client.lindex("queue:default", 0)) > 16 * MIB
        assert _run_one(store).kind == "done"


# -- names and schedules ---------------------------------------------------------------------------

@pytest.mark.parametrize("name", ["with space", "with:colon", "", "x" * 129])
def test_bad_queue_names_are_refused_everywhere(name, redis_url):
    with pytest.raises(ValueError, match="not a valid queue name"):
        job(queue=name)
    with pytest.raises(ValueError, match="not a valid queue name"):
        jobs.record.set(queue=name)
    with pytest.raises(CommandError, match="not a valid queue name"):
        call_command("kiq_worker", "-q", name)
    with pytest.raises(CommandError, match="not a valid queue name"):
        call_command("kiq_worker", "-q", f"{name},2")


@pytest.mark.parametrize("cron", ["61 * * * *", "* * * *", "every day", "0 0 * * 8"])
def test_cron_croniter_rejects_fails_at_decoration_and_startup(cron, redis_url):
    with pytest.raises(ValueError, match="not a valid cron expression"):
        job(cron=cron)
    periodic = [{"job": "tests.jobs.noop", "cron": cron}]
    with override_settings(KIQ={**settings.KIQ, "PERIODIC": periodic}):
        with pytest.raises(SystemCheckError, match="django_kiq.E013"):
            call_command("kiq_worker")


def test_cron_that_never_fires_fails_at_startup(redis_url):
    periodic = [{"job": "tests.jobs.noop", "cron": "0 0 31 2 *"}]  # February 31st
    with override_settings(KIQ={**settings.KIQ, "PERIODIC": periodic}):
        with pytest.raises(CommandError, match="never fires"):
            call_command("kiq_worker")


def test_worker_refuses_to_start_on_a_setting_of_the_wrong_type(redis_url):
    # Every setting's check is in tests/test_checks.py; this is only that the worker runs them.
    with override_settings(KIQ={**settings.KIQ, "CONCURRENCY": "5"}):
        with pytest.raises(SystemCheckError, match="django_kiq.E003"):
            call_command("kiq_worker")


