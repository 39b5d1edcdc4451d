"""Issue 10: a job or a field must never stop a worker (items 1, 2, 4, 5, 7, 10, 16).

Real worker subprocesses where the bug needed a process (the jobs live in tests/fault_jobs.py),
a real Manager and Processor against the real Redis where a unit was enough. Each test names
the item it proves.
"""

import json
import logging
import signal
import threading
import time

import pytest
from django.conf import settings
from django.tasks import TaskResultStatus
from django.tasks.signals import task_finished
from django.test import override_settings

from django_kiq import payload, retry
from django_kiq.conf import get_settings
from django_kiq.stats import Counters
from django_kiq.storage import Storage
from django_kiq.storage.keys import Keys
from django_kiq.worker.fetcher import Fetcher, QueueOrder, recover_orphans
from django_kiq.worker.manager import Manager
from django_kiq.worker.processor import Processor
from tests import fault_jobs, jobs
from tests.conftest import fill_redis, private_redis, run_as_worker, wait_for

ENV = {"KIQ_IMPORTS": "tests.jobs,tests.fault_jobs"}


def _runs(redis_client, key="test:runs"):
    return {k.decode(): int(v) for k, v in redis_client.hgetall(key).items()}


def _members(redis_client, name):
    return {json.loads(m)["jid"]: json.loads(m) for m in redis_client.zrange(name, 0, -1)}


def _stop(worker):
    worker.send(signal.SIGTERM)
    assert worker.wait(timeout=15) == 0, worker.output()
    assert "Exception in thread" not in worker.output(), worker.output()


def _raw(jid, cls="tests.fault_jobs.fail_with", args='["boom"]', **fields):
    """A job hash as raw JSON text, so fields can hold what json.dumps would not write."""
    extra = "".join(f', "{k}": {v}' for k, v in fields.items())
    return (f'{{"class": "{cls}", "args": {args}, "jid": "{jid}", "queue": "default", '
            f'"retry": 3{extra}}}').encode()


# -- item 1: SystemExit, KeyboardInterrupt, any BaseException ------------------------------------

def test_a_job_calling_sys_exit_fails_and_the_worker_lives_on(redis_client, worker_factory):
    exit_jid = fault_jobs.exit_job.enqueue("exit")
    interrupt_jid = fault_jobs.interrupt_job.enqueue("interrupt")
    halt_jid = fault_jobs.halt_job.enqueue("halt")
    jobs.record.enqueue("after")
    worker = worker_factory("-c", "1", env=ENV)  # one thread: a dead thread would stop it all
    wait_for(lambda: _runs(redis_client).get("after") == 1, timeout=15,
             message="the processor thread died with the job")
    retries = wait_for(lambda: len(_members(redis_client, "retry")) == 3 and
                       _members(redis_client, "retry"))
    assert retries[exit_jid]["error_class"] == "SystemExit"
    assert retries[exit_jid]["error_message"] == "3" and retries[exit_jid]["retry_count"] == 0
    assert retries[interrupt_jid]["error_class"] == "KeyboardInterrupt"
    assert retries[halt_jid]["error_class"] == "tests.fault_jobs.Halt"
    assert redis_client.llen(f"kiq:wip:{_identity(redis_client)}") == 0
    _stop(worker)  # a real shutdown signal still shuts it down


def _identity(redis_client):
    return wait_for(lambda: next(iter(redis_client.smembers("processes")), None)).decode()


@pytest.mark.django_db(transaction=True)
def test_a_task_calling_sys_exit_ends_failed_and_finished_fires(redis_client):
    finished = []

    def on_finished(sender, task_result, **kwargs):
        finished.append(task_result.status)

    task_finished.connect(on_finished, weak=False)
    try:
        result = fault_jobs.exit_task.enqueue()
        raw = redis_client.rpop("queue:default")
        outcome = run_as_worker(raw)  # the task's end is recorded in its settle step
    finally:
        task_finished.disconnect(on_finished)
    assert outcome.kind == "dead"  # the backend's retry 0: its only attempt
    result.refresh()
    assert result.status == TaskResultStatus.FAILED
    assert [e.exception_class_path for e in result.errors] == ["builtins.SystemExit"]
    assert finished == [TaskResultStatus.FAILED]


# -- item 2: untrusted bookkeeping fields, and nothing escapes a processor thread ----------------

HOSTILE = {
    # jid -> (raw job hash, where it must end, words its reason must contain)
    "a" * 24: (_raw("a" * 24, retry_count='"x"'), "dead", "retry_count"),
    "b" * 24: (_raw("b" * 24, retry_count="null"), "retry", ""),  # null: as absent (Sidekiq)
    # A number out of a double's range is not read (payload.py refuses non-finite numbers,
    # with or without orjson): the payload is malformed, dead with its raw text.
    "c" * 24: (_raw("c" * 24, retry="1e400"), "dead", "not valid JSON"),
    "d" * 24: (_raw("d" * 24, retry='{"n": 1}'), "dead", "'retry'"),
    "e" * 24: (_raw("e" * 24, backtrace='"x"'), "retry", ""),
    "f" * 24: (_raw("f" * 24, retry_count="1e400"), "dead", "not valid JSON"),
    # A lone surrogate: dead with its raw text. orjson refuses it when reading; the stdlib
    # reads it, the job fails, and its retry cannot be encoded.
    "0" * 24: (_raw("0" * 24, args='["\\ud800"]'), "dead",
               "not valid JSON" if payload.BACKEND == "orjson" else "could not handle"),
}


def test_hostile_fields_end_in_retry_or_dead_and_the_worker_goes_on(redis_client,
                                                                    worker_factory):
    redis_client.lpush("queue:default", *(raw for raw, _, _ in HOSTILE.values()))
    jobs.record.enqueue("after-hostile")
    worker = worker_factory("-c", "1", env=ENV)
    wait_for(lambda: _runs(redis_client).get("after-hostile") == 1, timeout=15,
             message="a hostile field wedged the worker")
    dead, retried = _members(redis_client, "dead"), _members(redis_client, "retry")
    for jid, (_, where, reason) in HOSTILE.items():
        if jid in ("0" * 24, "c" * 24, "f" * 24):  # a record keeping the raw text, new jid
            [record] = [d for d in dead.values() if d.get("raw_payload") == payload.raw_text(
                HOSTILE[jid][0])]
            assert reason in record["error_message"], record
            continue
        entry = (dead if where == "dead" else retried).get(jid)
        assert entry is not None, (jid, where, dead, retried)
        assert reason in entry["error_message"], entry
        assert entry["error_class"] == "ValueError"
    assert retried["b" * 24]["retry_count"] == 0 and "error_backtrace" not in retried["e" * 24]
    assert redis_client.llen("queue:default") == 0
    _stop(worker)


def _orphan(redis_client, identity, *raws):
    """A dead process: registered, no heartbeat, ``raws`` in its in-progress list in order."""
    redis_client.hset("kiq:wip", identity, "{}")
    redis_client.rpush(f"kiq:wip:{identity}", *raws)


def _recovered(token, recoveries):
    return payload.encode(payload.build(name="tests.jobs.record", args=[token], kwargs={},
                                        queue="default", now=1.0,
                                        options={"kiq_recoveries": recoveries}))


def test_hostile_recovery_count_stops_neither_start_nor_heartbeat(redis_client, worker_factory):
    # kiq_recoveries "x" listed first in a dead process's list once made recovery raise: new
    # workers exited at start, and every heartbeat failed before the jobs after it.
    _orphan(redis_client, "ghost:1:a", _recovered("bad-start", "x"),
            _recovered("orphan-at-start", 1))
    worker = worker_factory("-c", "1", env={**ENV, "KIQ_PROCESS_TTL": "2",
                                            "KIQ_HEARTBEAT_INTERVAL": "0.3"})
    wait_for(lambda: _runs(redis_client).get("orphan-at-start") == 1, timeout=15,
             message="the worker did not start, or stopped recovering at the hostile job")
    identity = _identity(redis_client)
    # Now through the heartbeat: another dead process, the hostile job first again.
    _orphan(redis_client, "ghost:2:b", _recovered("bad-beat", [1]), _recovered("orphan-beat", 0))
    wait_for(lambda: _runs(redis_client).get("orphan-beat") == 1, timeout=10,
             message="the heartbeat stopped recovering at the hostile job")
    beat = float(redis_client.hget(identity, "beat"))
    wait_for(lambda: float(redis_client.hget(identity, "beat") or 0) > beat + 1, timeout=5,
             message="the heartbeat stopped")
    assert 0 < redis_client.ttl(identity) <= 2
    dead = [json.loads(m) for m in redis_client.zrange("dead", 0, -1)]
    assert sorted(json.loads(d["raw_payload"])["args"][0] for d in dead) == ["bad-beat",
                                                                            "bad-start"]
    assert all("kiq_recoveries" in d["error_message"] for d in dead)
    assert redis_client.hkeys("kiq:wip") == [identity.encode()]
    _stop(worker)


def test_a_job_cut_off_by_shutdown_counts_toward_the_poison_limit(redis_client, worker_factory):
    # A job that wedges its worker until someone TERMs it went back to the queue unchanged,
    # forever: killed instead, it would have gone dead after POISON_LIMIT deaths.
    jid = fault_jobs.hang.enqueue("wedge")
    env = {**ENV, "KIQ_POISON_LIMIT": "2"}
    for attempt in (1, 2):
        worker = worker_factory("-c", "1", "--timeout", "0.2", env=env)
        wait_for(lambda: _runs(redis_client, "test:started").get("wedge") == attempt, timeout=15)
        _stop(worker)
        if attempt == 1:
            [queued] = [json.loads(m) for m in redis_client.lrange("queue:default", 0, -1)]
            assert queued["jid"] == jid and queued["kiq_recoveries"] == 1
    assert redis_client.llen("queue:default") == 0
    [dead] = _members(redis_client, "dead").values()
    assert dead["jid"] == jid and dead["error_class"] == "django_kiq.PoisonJob"
    assert dead["kiq_recoveries"] == 2 and "stopped 2 times" in dead["error_message"]


class _Unprintable(Exception):
    def __str__(self):
        raise RuntimeError("no text")


@pytest.mark.django_db(transaction=True)
def test_failure_handling_never_raises_out_of_the_processor(store, redis_client):
    # Error handlers that exit, a retry_in answering NaN, an exception whose str() raises: the
    # job still gets an outcome and process() returns.
    def exiting_handler(*args):
        raise SystemExit("handler")

    processor = Processor(settings=get_settings(), counters=Counters())
    processor.error_handlers = [exiting_handler]
    processor.death_handlers = [exiting_handler]
    raw = _raw("9" * 24, cls="tests.jobs.fail")
    outcome = processor.process("default", raw, "kiq-processor-0")
    assert outcome.kind == "retry" and json.loads(outcome.new)["error_class"] == "ValueError"
    decision = retry.decide(json.loads(raw), _Unprintable(), default_max=3, now=1.0,
                            retry_in=lambda *a: float("nan"), rand=lambda a, b: 0)
    assert decision.kind == "retry" and decision.at == 16.0
    assert decision.job["error_message"] == "<unprintable _Unprintable>"


# -- item 4: Redis full longer than PROCESS_TTL ------------------------------------------------

def test_liveness_survives_redis_being_full_longer_than_the_ttl(worker_factory, redis_url,
                                                                 redis_client, tmp_path):
    with private_redis(tmp_path, "--maxmemory", "4mb",
                       "--maxmemory-policy", "noeviction") as (url, full):
        with override_settings(KIQ={**settings.KIQ, "REDIS_URL": url}):
            jobs.record_in_ledger.enqueue("long", sleep=6.0)
        worker = worker_factory("-c", "1", env={
            "KIQ_REDIS_URL": url, "KIQ_TEST_LEDGER_URL": redis_url, "KIQ_PROCESS_TTL": "2",
            "KIQ_HEARTBEAT_INTERVAL": "0.3"})
        identity = wait_for(lambda: next(iter(full.smembers("processes")), b"")).decode()
        wait_for(lambda: full.llen(f"kiq:wip:{identity}") == 1, timeout=10)
        wait_for(lambda: fill_redis(full) or "heartbeat: Redis unavailable (Command"
                 in worker.output(), timeout=10, interval=0.1,
                 message="the heartbeat never met the full Redis")
        peers = Storage(full, Keys())
        deadline = time.monotonic() + 3.5  # past PROCESS_TTL (2 s), still full
        while time.monotonic() < deadline:
            fill_redis(full)
            assert full.exists(identity), "the live worker's heartbeat hash expired"
            assert peers.orphans() == [], "the live worker looks dead"
            assert recover_orphans(peers, poison_limit=3) == 0  # a peer's pass steals nothing
            time.sleep(0.2)
        full.delete("filler")
        wait_for(lambda: redis_client.scard("ledger:long") == 1, timeout=15)
        time.sleep(0.5)
        assert redis_client.scard("ledger:long") == 1  # ran once: never recovered elsewhere
        _stop(worker)


# -- item 5: Manager.stop takes acknowledgements and running jobs in one snapshot --------------

class _HookedStorage(Storage):
    """The real storage; the first write of a stopping manager runs ``hook`` before it."""

    manager: Manager | None = None
    hook = None

    def _maybe_hook(self):
        if self.manager is not None and self.manager._stop.is_set() and self.hook:
            hook, type(self).hook = type(self).hook, None
            hook()

    def fetch(self, *args, **kwargs):
        self._maybe_hook()
        return super().fetch(*args, **kwargs)

    def settle(self, *args, **kwargs):
        self._maybe_hook()
        return super().settle(*args, **kwargs)


def test_a_job_finishing_while_the_manager_stops_is_not_left_in_progress(store, redis_client):
    release = threading.Event()
    jobs.record.enqueue("quick")
    jobs.block_until_released.enqueue("finishing", 10.0)
    hooked = _HookedStorage(store.client, store.keys)
    identity = "h:5:stop"
    manager = Manager(store=hooked, fetcher=Fetcher(hooked, identity, QueueOrder(
        [("default", 1)], True)), concurrency=2, queues=["default"],
        processor=Processor(settings=get_settings(), counters=Counters()))
    # No fetcher thread: the test hands the jobs over, so the quick job's acknowledgement is
    # still pending when stop() begins (the fetcher thread would have sent it already).
    manager._dispatch(manager.fetcher.fetch(2, []))
    for i in range(2):
        manager._processors.append(manager._spawn(f"kiq-processor-{i}", manager._process_loop))
    wait_for(lambda: manager._acks and len(manager._running) == 1)

    def finish_now():
        """The blocked job finishes right here, inside stop(), before its first write."""
        redis_client.set("test:release", 1)
        wait_for(lambda: not manager.running(), timeout=5)
        release.set()

    _HookedStorage.manager, _HookedStorage.hook = manager, finish_now
    try:
        manager.stop(deadline=time.monotonic())  # no wait: straight to the final writes
    finally:
        _HookedStorage.manager = _HookedStorage.hook = None
    assert release.is_set(), "the hook never ran"
    assert redis_client.lrange(f"kiq:wip:{identity}", 0, -1) == [], \
        "a job that finished during stop() stays in progress, to run again after recovery"


# -- item 7: a broken retry_in is logged --------------------------------------------------------

def test_a_raising_retry_in_is_logged_with_job_and_jid(caplog):
    job = json.loads(_raw("7" * 24))
    with caplog.at_level(logging.ERROR, logger="django_kiq"):
        decision = retry.decide(job, ValueError("x"), default_max=3, now=10.0,
                                retry_in=lambda *a: 1 / 0, rand=lambda a, b: 0)
    assert decision.kind == "retry" and decision.at == 25.0  # the default backoff
    [record] = [r for r in caplog.records if "retry_in" in r.getMessage()]
    assert "7" * 24 in record.getMessage() and "tests.fault_jobs.fail_with" in record.getMessage()
    assert record.exc_info and record.exc_info[0] is ZeroDivisionError


# -- item 10: the Busy page's data is fresh between heartbeats -----------------------------------

def test_a_started_job_shows_in_the_work_hash_within_a_second(redis_client, worker_factory):
    worker = worker_factory("-c", "2", env={"KIQ_HEARTBEAT_INTERVAL": "10",
                                            "KIQ_PROCESS_TTL": "30"})
    identity = _identity(redis_client)
    time.sleep(0.3)  # the start-up beat is written; the next regular one is 10 s away
    jobs.block_until_released.enqueue("slow", 20.0)
    wait_for(lambda: _runs(redis_client, "test:started").get("slow") == 1, timeout=10)
    started = time.monotonic()
    work = wait_for(lambda: redis_client.hgetall(f"{identity}:work"), timeout=1.5,
                    interval=0.05, message="the running job is not in the work hash within 1.5 s")
    assert time.monotonic() - started <= 1.5
    [entry] = [json.loads(v) for v in work.values()]
    assert json.loads(entry["payload"])["args"][0] == "slow" and entry["queue"] == "default"
    assert redis_client.hget(identity, "busy") == b"1"
    redis_client.set("test:release", 1)
    wait_for(lambda: _runs(redis_client).get("slow") == 1, timeout=5)
    wait_for(lambda: not redis_client.exists(f"{identity}:work"), timeout=1.5,
             message="the finished job stayed in the work hash")
    assert redis_client.hget(identity, "busy") == b"0"
    _stop(worker)


# -- item 16: an unknown job says what to do ------------------------------------------------------

@pytest.mark.django_db(transaction=True)
def test_unknown_job_message_says_to_restart_and_what_is_discovered(store):
    raw = _raw("6" * 24, cls="app.jobs.added_after_start")
    outcome = Processor(settings=get_settings(), counters=Counters()).process(
        "default", raw, "kiq-processor-0")
    message = json.loads(outcome.new)["error_message"]
    assert outcome.kind == "retry"
    assert "'app.jobs.added_after_start'" in message and "restart the worker" in message
    assert "--reload" in message
    assert "jobs.py" in message and "tasks.py" in message and "KIQ['IMPORTS']" in message
