"""Periodic (cron) jobs: tick arithmetic, entries, the ticker against the real Redis, the API.

Tickers run with an injected time (``tick_once(now)``) around a fixed epoch, so nothing sleeps;
one subprocess test runs two real workers on an every-second entry.
"""

from __future__ import annotations

import datetime as dt
import json
import signal
import time
from zoneinfo import ZoneInfo

import pytest
from django.core.exceptions import ImproperlyConfigured
from django.core.management import CommandError, call_command
from django.test import override_settings

from django_kiq import payload, periodic, registry
from django_kiq.conf import get_settings
from django_kiq.periodic import PeriodicEntry
from django_kiq.worker.cron_ticker import CronTicker
from tests import jobs  # noqa: F401 - registers the jobs entries name
from tests.conftest import wait_for

BASE = 1_800_000_000.0  # 2027-01-15 08:00:00 UTC: a whole hour
PARIS = ZoneInfo("Europe/Paris")
CRON_JOB = "tests.test_periodic.every10"


def cron_target():
    """Registered as a throwaway @job(cron=...) by the ``cron_job`` fixture."""


def entry(cron: str, *, name: str = "e", tz: str = "UTC", **kwargs) -> PeriodicEntry:
    return PeriodicEntry(name=name, cron=cron, timezone=tz, job="tests.jobs.record",
                         queue=kwargs.pop("queue", "default"), args=("x",), **kwargs)


def paris(*args: int, fold: int = 0) -> float:
    return dt.datetime(*args, tzinfo=PARIS, fold=fold).timestamp()


def ticks(e: PeriodicEntry, start: float, n: int) -> list[float]:
    out = []
    for _ in range(n):
        start = e.next_after(start)
        out.append(start)
    return out


def ticker(store, identity: str, *entries: PeriodicEntry) -> CronTicker:
    return CronTicker(store=store, identity=identity, settings=get_settings(), entries=entries)


def queued(store, queue: str = "default") -> list[dict]:
    return [payload.decode(raw) for raw in store.client.lrange(store.keys.queue(queue), 0, -1)]


@pytest.fixture
def cron_job():
    """A job registered with ``@job(cron="*/10 * * * * *")`` for the duration of one test."""
    definition = registry.register(cron_target, {"name": CRON_JOB, "cron": "*/10 * * * * *",
                                                 "timezone": "UTC"})
    yield definition
    registry.unregister(CRON_JOB)


# -- tick arithmetic -------------------------------------------------------------------------


def test_five_field_ticks():
    e = entry("*/5 * * * *")
    assert ticks(e, BASE, 3) == [BASE + 300, BASE + 600, BASE + 900]
    assert e.next_after(BASE + 0.5) == BASE + 300
    assert e.latest_at(BASE) == BASE
    assert e.latest_at(BASE + 299.9) == BASE
    assert entry("@hourly").next_after(BASE) == BASE + 3600


def test_six_fields_put_seconds_first():
    every10 = entry("*/10 * * * * *")
    assert ticks(every10, BASE, 3) == [BASE + 10, BASE + 20, BASE + 30]
    assert every10.latest_at(BASE + 19.5) == BASE + 10
    assert ticks(entry("*/1 * * * * *"), BASE, 2) == [BASE + 1, BASE + 2]
    # second 30 of minute 59 of every hour
    assert entry("30 59 * * * *").next_after(BASE) == BASE + 59 * 60 + 30


@pytest.mark.parametrize("expression, valid", [
    ("*/5 * * * *", True), ("*/10 * * * * *", True), ("0 0 12 * * MON", True), ("@daily", True),
    ("* * * * * * *", False), ("* * * *", False), ("every tuesday", False), ("@often", False),
    (None, False),
])
def test_valid_expressions(expression, valid):
    assert periodic.is_valid_cron(expression) is valid


def test_timezone_follows_the_wall_clock():
    nine = entry("0 9 * * *", tz="Europe/Paris")
    assert nine.next_after(paris(2025, 1, 10, 12)) == paris(2025, 1, 11, 9)  # 08:00 UTC
    assert nine.next_after(paris(2025, 7, 10, 12)) == paris(2025, 7, 11, 9)  # 07:00 UTC
    assert paris(2025, 1, 11, 9) % 86400 == 8 * 3600
    assert paris(2025, 7, 11, 9) % 86400 == 7 * 3600


def test_dst_spring_forward_runs_the_skipped_time_once():
    daily = entry("30 2 * * *", tz="Europe/Paris")
    # 2025-03-30 02:00-03:00 does not exist in Paris: the 02:30 run happens at 03:00.
    assert ticks(daily, paris(2025, 3, 29, 12), 2) == [paris(2025, 3, 30, 3),
                                                        paris(2025, 3, 31, 2, 30)]


def test_dst_fall_back_runs_fixed_times_once_and_wildcards_twice():
    daily = entry("30 2 * * *", tz="Europe/Paris")
    # 2025-10-26 02:00-03:00 happens twice in Paris: a daily 02:30 still runs once.
    assert ticks(daily, paris(2025, 10, 25, 12), 2) == [paris(2025, 10, 26, 2, 30),
                                                         paris(2025, 10, 27, 2, 30)]
    assert daily.latest_at(paris(2025, 10, 26, 2, 45, fold=1)) == paris(2025, 10, 26, 2, 30)
    hourly = entry("0 * * * *", tz="Europe/Paris")
    assert ticks(hourly, paris(2025, 10, 26, 1, 30), 3) == [
        paris(2025, 10, 26, 2), paris(2025, 10, 26, 2, fold=1), paris(2025, 10, 26, 3)]


# -- entries ---------------------------------------------------------------------------------


def test_entries_from_job_decorator_and_setting(cron_job):
    settings = get_settings().replace(periodic=(
        {"cron": "0 * * * *", "job": "tests.jobs.record", "args": ["a"]},
        {"name": "nightly", "cron": "0 3 * * *", "job": "tests.jobs.record_other",
         "timezone": "Europe/Paris", "kwargs": {}},
        {"name": "elsewhere", "cron": "0 3 * * *", "job": "tests.jobs.record", "queue": "low"},
    ))
    found = {e.name: e for e in periodic.entries(settings)}
    assert found[CRON_JOB] == PeriodicEntry(name=CRON_JOB, cron="*/10 * * * * *",
                                            timezone="UTC", job=CRON_JOB, queue="default")
    assert found["tests.jobs.record:0 * * * *"] == PeriodicEntry(
        name="tests.jobs.record:0 * * * *", cron="0 * * * *", timezone="UTC",
        job="tests.jobs.record", queue="default", args=("a",))
    assert found["nightly"].queue == "other"  # the job's own default queue
    assert found["nightly"].timezone == "Europe/Paris"
    assert found["elsewhere"].queue == "low"


@pytest.mark.parametrize("raw, message", [
    ({"cron": "* * * * *", "job": "nope"}, "not a registered job"),
    ({"cron": "whenever", "job": "tests.jobs.record"}, "not a valid cron"),
    ({"cron": "* * * * * * *", "job": "tests.jobs.record"}, "not a valid cron"),
    ({"cron": "* * * * *", "job": "tests.jobs.record", "timezone": "Mars/Base"}, "timezone"),
    ({"cron": "* * * * *", "job": "tests.jobs.record", "every": 5}, "unknown key"),
    ({"cron": "* * * * *", "job": "tests.jobs.record", "args": [object()]}, "JSON-native"),
    ({"cron": "* * * * *", "job": "tests.jobs.record", "args": "a"}, "must be a list"),
    ({"cron": "* * * * *", "job": "tests.jobs.record", "queue": "a b"}, "queue name"),
    ({"cron": "0 0 30 2 *", "job": "tests.jobs.record"}, "never fires"),
    ("tests.jobs.record", "must be a dict"),
])
def test_invalid_periodic_entries_fail(raw, message):
    with pytest.raises(ImproperlyConfigured, match=message):
        periodic.entries(get_settings().replace(periodic=(raw,)))


def test_duplicate_entry_names_fail():
    twice = {"name": "same", "cron": "* * * * *", "job": "tests.jobs.record"}
    with pytest.raises(ImproperlyConfigured, match="used twice"):
        periodic.entries(get_settings().replace(periodic=(twice, twice)))


def test_worker_refuses_to_start_with_an_unknown_periodic_job(redis_url):
    bad = {"REDIS_URL": redis_url, "PERIODIC": [{"job": "nope", "cron": "* * * * *"}]}
    with override_settings(KIQ=bad), pytest.raises(CommandError, match="not a registered job"):
        call_command("kiq_worker")


# -- the ticker ------------------------------------------------------------------------------


def test_two_tickers_enqueue_each_tick_exactly_once(store):
    e = entry("*/10 * * * * *")
    a, b, late = ticker(store, "a", e), ticker(store, "b", e), ticker(store, "late", e)
    assert a.tick_once(BASE - 5) + b.tick_once(BASE - 3) == 0  # start-up: no history, no run
    late.tick_once(BASE - 4)
    for k in range(6):
        first, second = (a, b) if k % 2 else (b, a)
        at = BASE + 10 * k + 0.01
        assert first.tick_once(at) + second.tick_once(at + 0.02 * k) == 1
    jobs = queued(store)
    assert len(jobs) == 6 and len({j["jid"] for j in jobs}) == 6
    assert all(j["class"] == "tests.jobs.record" and j["args"] == ["x"] and "enqueued_at" in j
               for j in jobs)
    owners = {store.client.get(store.keys.periodic_tick("e", BASE + 10 * k)) for k in range(6)}
    assert owners == {b"a", b"b"}
    # A ticker that stalled all along wakes up: the latest tick was handled, it pushes nothing.
    assert late.tick_once(BASE + 50.5) == 0
    assert len(queued(store)) == 6


def test_stalled_ticker_fires_only_the_latest_tick(store):
    e = entry("*/1 * * * * *")
    t = ticker(store, "a", e)
    t.tick_once(BASE - 0.5)
    assert t.tick_once(BASE + 3.2) == 1  # ticks BASE .. BASE+2 are not replayed
    assert store.periodic_states(["e"])["e"].tick == BASE + 3
    assert t.delay(BASE + 3.2) == pytest.approx(0.8)


def test_downtime_gives_one_catch_up_run(store):
    hourly = entry("0 * * * *")
    before = ticker(store, "before", hourly)
    before.tick_once(BASE - 10)
    assert before.tick_once(BASE + 1) == 1
    # Every worker was down for five hours; two come back 10 minutes after the latest tick.
    back = BASE + 5 * 3600 + 600
    c, d = ticker(store, "c", hourly), ticker(store, "d", hourly)
    assert c.tick_once(back) + d.tick_once(back) + c.tick_once(back + 1) == 1
    assert c.tick_once(BASE + 6 * 3600) + d.tick_once(BASE + 6 * 3600 + 0.1) == 1
    assert len(queued(store)) == 3


def test_a_tick_missed_by_more_than_the_window_is_skipped(store):
    hourly = entry("0 * * * *")
    before = ticker(store, "before", hourly)
    before.tick_once(BASE - 10)
    before.tick_once(BASE)
    back = ticker(store, "back", hourly)
    assert back.tick_once(BASE + 3 * 3600 + 40 * 60) == 0  # 40 min late > half an hour
    assert back.tick_once(BASE + 4 * 3600) == 1
    assert len(queued(store)) == 2


def test_a_new_entry_waits_for_its_next_tick(store):
    t = ticker(store, "a", entry("*/5 * * * *"))
    assert t.tick_once(BASE + 100) == 0
    assert t.tick_once(BASE + 299) == 0
    assert t.tick_once(BASE + 300) == 1


def test_pause_and_resume(store, cron_job):
    e = periodic.get(CRON_JOB)
    t = ticker(store, "a", e)
    t.tick_once(BASE - 1)
    periodic.pause(CRON_JOB)
    assert [r.paused for r in periodic.records(now=BASE) if r.entry.name == CRON_JOB] == [True]
    assert t.tick_once(BASE) + t.tick_once(BASE + 10) == 0
    assert queued(store) == []
    periodic.resume(CRON_JOB)
    # The ticks passed while paused are not replayed; the next one runs.
    assert ticker(store, "b", e).tick_once(BASE + 15) == 0
    assert t.tick_once(BASE + 20) == 1
    assert len(queued(store)) == 1
    with pytest.raises(LookupError):
        periodic.pause("no such entry")


def test_records_report_last_and_next_run(store, cron_job):
    [before] = [r for r in periodic.records(now=BASE + 1) if r.entry.name == CRON_JOB]
    assert (before.last_run, before.next_run, before.paused, before.last_jid) == (
        None, BASE + 10, False, None)
    t = ticker(store, "a", before.entry)
    t.tick_once(BASE + 1)
    t.tick_once(BASE + 10.25)
    [after] = [r for r in periodic.records(now=BASE + 12) if r.entry.name == CRON_JOB]
    [job] = queued(store)
    assert (after.last_run, after.next_run, after.last_jid) == (BASE + 10.25, BASE + 20,
                                                                job["jid"])


def test_enqueue_now(store, cron_job):
    jid = periodic.enqueue_now(CRON_JOB)
    [job] = queued(store)
    assert (job["jid"], job["class"], job["args"]) == (jid, CRON_JOB, [])
    [record] = [r for r in periodic.records() if r.entry.name == CRON_JOB]
    assert record.last_jid == jid and record.last_run == pytest.approx(time.time(), abs=5)
    # A manual run does not move the tick cursor: the next tick still runs.
    assert store.periodic_states([CRON_JOB])[CRON_JOB].tick is None


@pytest.mark.django_db
def test_enqueue_now_does_not_wait_for_a_commit(store, cron_job):
    from django.db import transaction

    with transaction.atomic():
        jid = periodic.enqueue_now(CRON_JOB)
        assert [j["jid"] for j in queued(store)] == [jid]


def test_client_middleware_sees_periodic_jobs(store):
    seen = []

    def tag(next_push):
        def push(job):
            seen.append(job["jid"])
            job["tags"] = ["cron"]
            return next_push(job)
        return push

    settings = get_settings().replace(client_middleware=(tag,))
    t = CronTicker(store=store, identity="a", settings=settings,
                   entries=[entry("*/10 * * * * *")])
    t.tick_once(BASE - 1)
    assert t.tick_once(BASE) == 1
    [job] = queued(store)
    assert job["tags"] == ["cron"] and seen == [job["jid"]]


# -- real workers ----------------------------------------------------------------------------


def test_two_workers_enqueue_every_second_exactly_once(worker_factory, redis_client):
    entries = [{"name": "every-second", "cron": "*/1 * * * * *", "job": "tests.jobs.record",
                "args": ["tick"], "queue": "cron-test"}]  # a queue no worker consumes
    env = {"KIQ_PERIODIC": json.dumps(entries)}
    workers = [worker_factory("-q", "default", "-c", "1", env=env) for _ in range(2)]
    wait_for(lambda: redis_client.scard("processes") == 2, timeout=30,
             message="workers did not start")
    both_up = time.time()

    def claimed() -> list[int]:
        return sorted(int(k.rsplit(b":", 1)[1])
                      for k in redis_client.scan_iter(match="kiq:periodic:tick:every-second:*"))

    wait_for(lambda: sum(t > both_up for t in claimed()) >= 4, timeout=15,
             message="ticks did not come")
    for worker in workers:
        worker.send(signal.SIGTERM)
    for worker in workers:
        assert worker.wait(20) == 0, worker.output()
    ticks_claimed = claimed()
    jobs = [json.loads(raw) for raw in redis_client.lrange("queue:cron-test", 0, -1)]
    assert len(jobs) == len(ticks_claimed)  # one job per tick, never two
    recent = [t for t in ticks_claimed if t > both_up]
    assert recent == list(range(recent[0], recent[0] + len(recent)))  # no second skipped
    for tick, created in zip(ticks_claimed, sorted(j["created_at"] for j in jobs)):
        assert tick <= created
    assert "cron: 1 periodic entry" in workers[0].output()
