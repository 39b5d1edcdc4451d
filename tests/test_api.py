"""Tests of django_kiq.api (and the storage verbs of storage/sets.py) against the real Redis."""

from __future__ import annotations

import base64
import datetime as dt
import json
import time
import zlib

import pytest
from django.conf import settings
from django.test import override_settings

from django_kiq import api, payload, storage
from django_kiq.stats import HISTOGRAM_MS
from django_kiq.storage import Heartbeat
from tests import jobs

NOW = 1_800_000_000.0


def make(i: int = 0, *, queue: str = "default", name: str = "tests.jobs.record",
         **extra) -> bytes:
    job = payload.build(name=name, args=[f"t{i}"], kwargs={}, queue=queue, now=NOW - 100,
                        jid=f"{i:024x}")
    job.update(extra)
    return payload.encode(job)


def fill(store, set_name: str, count: int, *, start: float = NOW, step: float = 1.0,
         **extra) -> list[bytes]:
    raws = [make(i, **extra) for i in range(count)]
    store.schedule([(start + i * step, raw) for i, raw in enumerate(raws)], set_name)
    return raws


def queue_jids(redis_client, name: str = "default") -> list[str]:
    """Jids of a queue in run order (the right end runs first)."""
    return [json.loads(raw)["jid"] for raw in reversed(redis_client.lrange(f"queue:{name}", 0, -1))]


# -- records ----------------------------------------------------------------------------------

def test_record_decodes_fields_and_keeps_raw_bytes():
    raw = b'{"class":"Hard","args":[1, 2.50],"jid":"abc","queue":"q","created_at":1.5,' \
          b'"enqueued_at":1700000000123,"retry_count":2,"error_class":"E","error_message":"m",' \
          b'"failed_at":3.0,"wrapped":"Wrapped"}'
    record = api.decode_record(raw, 12.5)
    assert record.raw is raw
    assert (record.jid, record.name, record.args, record.queue) == ("abc", "Hard", [1, 2.5], "q")
    assert record.enqueued_at == pytest.approx(1700000000.123)  # Sidekiq 8 milliseconds
    assert (record.created_at, record.failed_at, record.retry_count) == (1.5, 3.0, 2)
    assert (record.error_class, record.error_message) == ("E", "m")
    assert record.key == "12.5|abc" and record.score == 12.5
    assert record.display_name == "Wrapped" and not record.malformed
    assert api.decode_record(raw).key == "abc"


def test_record_reads_ruby_compressed_backtrace_and_lists():
    lines = ["app.rb:1", "app.rb:2"]
    packed = base64.encodebytes(zlib.compress(json.dumps(lines).encode())).decode()
    assert api.decode_record(make(error_backtrace=packed)).error_backtrace == lines
    assert api.decode_record(make(error_backtrace=lines)).error_backtrace == lines
    assert api.decode_record(make()).error_backtrace is None


@pytest.mark.parametrize("raw", [b"not json", b"[1]", b'{"class":"x"}', b"\xff\xfe"])
def test_malformed_record_has_a_stable_standin_jid(raw):
    record = api.decode_record(raw, 5.0)
    assert record.malformed and record.fields == {} and record.raw == raw
    assert record.jid.startswith("raw-") and record.jid == api.decode_record(raw).jid
    assert record.key == f"5.0|{record.jid}"
    assert record.display_name == "(malformed payload)"


# -- queues -----------------------------------------------------------------------------------

def test_queue_pages_in_run_order(store):
    store.push([("default", make(i)) for i in range(60)])
    queue = api.Queue("default")
    assert queue.size() == 60
    assert [r.jid for r in queue.jobs()] == [f"{i:024x}" for i in range(25)]
    assert [r.jid for r in queue.jobs(50, 25)] == [f"{i:024x}" for i in range(50, 60)]
    assert queue.jobs(60, 25) == [] and queue.jobs(0, 0) == []


def test_queue_latency_uses_the_oldest_job(store):
    queue = api.Queue("default")
    assert queue.latency() == 0.0
    store.push([("default", make(0, enqueued_at=NOW - 30)), ("default", make(1, enqueued_at=NOW))])
    assert queue.latency(now=NOW) == 30.0


def test_real_client_jobs_are_listed(store):
    jid = jobs.record.enqueue("hello")
    [record] = api.Queue("default").jobs()
    assert record.jid == jid and record.args == ["hello"] and record.enqueued_at is not None
    assert [q.name for q in api.Queue.all()] == ["default"]


def test_queue_find_scans_pages_and_delete_removes_exact_bytes(store):
    store.push([("default", make(i)) for i in range(2500)])
    queue = api.Queue("default")
    record = queue.find(f"{5:024x}")  # the 6th to run: on the last scanned page
    assert record is not None and record.raw == make(5)
    assert queue.find("nope") is None
    assert queue.delete(record) is True
    assert queue.delete(record) is False
    assert queue.delete(f"{7:024x}") is True
    assert queue.size() == 2498 and queue.find(f"{5:024x}") is None


def test_queue_finds_and_deletes_malformed_members(store, redis_client):
    redis_client.lpush("queue:default", b"garbage", make(1))
    queue = api.Queue("default")
    bad = [r for r in queue.jobs() if r.malformed]
    assert [r.raw for r in bad] == [b"garbage"]
    assert queue.find(bad[0].jid) == bad[0]
    assert queue.delete(bad[0].jid) is True
    assert redis_client.lrange("queue:default", 0, -1) == [make(1)]


def test_queue_clear_and_all(store, redis_client):
    store.push([("b", make(1)), ("a", make(2)), ("a", make(3))])
    assert [q.name for q in api.Queue.all()] == ["a", "b"]
    assert api.Queue("a").clear() == 2
    assert [q.name for q in api.Queue.all()] == ["b"]
    assert not redis_client.exists("queue:a")


def test_queue_pause_and_resume(store):
    queue = api.Queue("critical")
    assert queue.paused is False
    queue.pause()
    assert queue.paused is True and store.paused_queues() == {"critical"}
    queue.resume()
    assert queue.paused is False and store.paused_queues() == set()


# -- job sets: reading ------------------------------------------------------------------------

def test_sets_page_in_their_order_at_any_offset(store):
    fill(store, "schedule", 3000)
    fill(store, "dead", 30)
    scheduled = api.ScheduledSet()
    assert scheduled.size() == 3000
    assert [r.score for r in scheduled.jobs()] == [NOW + i for i in range(25)]
    assert [r.score for r in scheduled.jobs(2990, 25)] == [NOW + i for i in range(2990, 3000)]
    dead = api.DeadSet()
    assert [r.score for r in dead.jobs(0, 3)] == [NOW + 29, NOW + 28, NOW + 27]
    assert [r.score for r in dead.jobs(28, 25)] == [NOW + 1, NOW]


def test_enqueue_in_lands_in_the_scheduled_set(store):
    jid = jobs.record.enqueue_in(3600, "later")
    [record] = api.ScheduledSet().jobs()
    # As in Sidekiq, the run-at time is the score only, not a field of the member.
    assert record.jid == jid and "at" not in record.fields and record.score > time.time()


def test_get_by_key_even_among_many_equal_scores(store):
    fill(store, "retry", 2500, step=0.0)  # all at one score: get() must page through them
    retries = api.RetrySet()
    last = make(2499)
    key = f"{NOW!r}|{2499:024x}"
    record = retries.get(key)
    assert record is not None and record.raw == last and record.key == key
    assert retries.get(f"{NOW + 1!r}|{2499:024x}") is None
    assert retries.get(f"{NOW!r}|missing") is None
    with pytest.raises(ValueError):
        retries.get("not-a-key")


def test_find_and_filter_scan_with_escaped_globs(store):
    raws = fill(store, "retry", 2000)
    store.schedule([(NOW + 5000, make(9001, error_message="a*b[1]?c")),
                    (NOW + 5001, make(9002, error_message="axxb1yc")),
                    (NOW + 5002, make(9003, error_message="back\\slash"))], "retry")
    retries = api.RetrySet()
    assert retries.find(f"{1234:024x}").raw == raws[1234]
    assert retries.find("0" * 30) is None
    [hit] = retries.filter("a*b[1]?c")  # glob characters match only themselves
    assert hit.jid == f"{9001:024x}"
    # The filter matches the stored JSON text, where a backslash is written as two.
    assert [r.jid for r in retries.filter("back\\\\slash")] == [f"{9003:024x}"]
    assert retries.filter("back\\slash") == []
    assert len(retries.filter('"t1', limit=7)) == 7
    found = retries.filter('"t1', limit=2000)  # t1, t10-t19, t100-t199, t1000-t1999
    assert len(found) == 1 + 10 + 100 + 1000
    assert [r.score for r in found] == sorted(r.score for r in found)
    assert retries.filter("no such text") == []


# -- job sets: entry actions ------------------------------------------------------------------

def test_retry_now_moves_to_queue_with_enqueued_at_and_same_retry_count(store, redis_client):
    fill(store, "retry", 3, retry_count=4, queue="mail")
    retries = api.RetrySet()
    first, second, third = retries.jobs()
    assert retries.retry_now([first, second.key], now=NOW + 9) == 2
    assert retries.size() == 1 and retries.jobs()[0].raw == third.raw
    assert redis_client.smembers("queues") == {b"mail"}
    moved = api.Queue("mail").jobs()
    assert [r.jid for r in moved] == [first.jid, second.jid]
    assert all(r.enqueued_at == NOW + 9 and r.retry_count == 4 for r in moved)
    assert moved[0].fields == {**first.fields, "enqueued_at": NOW + 9}
    assert retries.retry_now([first], now=NOW) == 0  # already moved: not counted twice


def test_enqueue_now_drops_at_and_dead_retry_now_works(store):
    store.schedule([(NOW, make(1, at=NOW))], "schedule")
    store.schedule([(NOW, make(2))], "dead")
    assert api.ScheduledSet().enqueue_now(api.ScheduledSet().jobs(), now=NOW) == 1
    assert api.DeadSet().retry_now(api.DeadSet().jobs()[0].key, now=NOW) == 1
    queued = api.Queue("default").jobs()
    assert [r.jid for r in queued] == [f"{1:024x}", f"{2:024x}"]
    assert "at" not in queued[0].fields
    assert api.ScheduledSet().size() == api.DeadSet().size() == 0


def test_delete_acts_on_exact_members(store):
    fill(store, "schedule", 5)
    scheduled = api.ScheduledSet()
    records = scheduled.jobs()
    assert scheduled.delete([records[0], records[1].key, "1.0|nothing"]) == 2
    assert scheduled.delete([records[0]]) == 0
    assert scheduled.size() == 3


def test_kill_moves_bytes_to_dead_with_now_as_score(store):
    raws = fill(store, "retry", 3)
    retries = api.RetrySet()
    assert retries.kill([retries.jobs()[0]], now=NOW + 50) == 1
    [dead] = api.DeadSet().jobs()
    assert dead.raw == raws[0] and dead.score == NOW + 50
    with pytest.raises(TypeError):
        api.DeadSet().kill([dead])
    with pytest.raises(TypeError):
        api.DeadSet().kill_all()


def test_malformed_members_can_be_deleted_and_killed_but_not_retried(store, redis_client):
    redis_client.zadd("retry", {b"garbage": NOW, b'{"class":"x"}': NOW + 1})
    retries = api.RetrySet()
    bad = retries.jobs()
    assert all(r.malformed for r in bad)
    assert retries.get(bad[0].key) == bad[0]
    assert retries.find(bad[1].jid) == bad[1]
    assert retries.retry_now(bad) == 0 and retries.size() == 2
    assert retries.kill([bad[0]], now=NOW) == 1
    assert retries.delete([bad[1].key]) == 1
    assert redis_client.zrange("dead", 0, -1) == [b"garbage"]


# -- job sets: set-wide actions ---------------------------------------------------------------

def test_retry_all_moves_thousands_and_leaves_malformed(store, redis_client):
    fill(store, "retry", 2500, queue="q1")
    fill(store, "retry", 600, start=NOW + 10_000, queue="q2")
    redis_client.zadd("retry", {b"garbage": NOW - 1, b"[]": NOW + 1500.5})
    assert api.RetrySet().retry_all(now=NOW) == 3100
    assert redis_client.zrange("retry", 0, -1) == [b"garbage", b"[]"]
    assert redis_client.llen("queue:q1") == 2500 and redis_client.llen("queue:q2") == 600
    assert redis_client.smembers("queues") == {b"q1", b"q2"}
    assert queue_jids(redis_client, "q1")[:3] == [f"{i:024x}" for i in range(3)]
    job = json.loads(redis_client.lindex("queue:q1", 0))
    assert job["enqueued_at"] == NOW


def test_retry_all_stamps_enqueued_at_by_editing_text_never_reencoding(store, redis_client):
    at = NOW + 100
    cases = {  # member -> what reaches the queue
        b'{"class":"A","args":[1.10,[]],"jid":"a","queue":"q","enqueued_at":5}':
            b'{"class":"A","args":[1.10,[]],"jid":"a","queue":"q","enqueued_at":%r}' % at,
        b'{"class": "A", "args": [], "jid": "b", "enqueued_at": 5.5, "queue": "q"}':
            b'{"class": "A", "args": [], "jid": "b", "enqueued_at": %r, "queue": "q"}' % at,
        b' {"class":"A","args":[{"enqueued_at":5}],"jid":"c","queue":"q"}':
            b' {"enqueued_at":%r,"class":"A","args":[{"enqueued_at":5}],"jid":"c","queue":"q"}'
            % at,
        # Ambiguous text (two keys of that name) or a value that is not a number: unchanged.
        b'{"class":"A","args":[{"enqueued_at":5}],"jid":"d","queue":"q","enqueued_at":5}': None,
        b'{"class":"A","args":[],"jid":"e","queue":"q","enqueued_at":null}': None,
        # A top-level "at" is dropped, as payload.ready_for_queue drops it.
        b'{"class":"A","args":[],"jid":"f","queue":"q","at":7.25,"enqueued_at":1e3}':
            b'{"class":"A","args":[],"jid":"f","queue":"q","enqueued_at":%r}' % at,
    }
    redis_client.zadd("dead", {raw: NOW + i for i, raw in enumerate(cases)})
    assert api.DeadSet().retry_all(now=at) == len(cases)
    pushed = set(redis_client.lrange("queue:q", 0, -1))
    assert pushed == {new or raw for raw, new in cases.items()}
    assert all(json.loads(raw)["jid"] for raw in pushed)


def test_enqueue_all_moves_scheduled_jobs_and_empty_sets_do_nothing(store, redis_client):
    assert api.ScheduledSet().enqueue_all() == 0 and api.RetrySet().kill_all() == 0
    jids = [jobs.record.enqueue_in(3600, f"s{i}") for i in range(3)]
    assert api.ScheduledSet().enqueue_all(now=NOW) == 3
    queued = api.Queue("default").jobs()
    assert sorted(r.jid for r in queued) == sorted(jids)
    assert all(r.enqueued_at == NOW and "at" not in r.fields for r in queued)
    assert api.ScheduledSet().size() == 0


def test_delete_all_and_kill_all(store, redis_client):
    fill(store, "schedule", 2100)
    assert api.ScheduledSet().delete_all() == 2100
    assert api.ScheduledSet().size() == 0 and api.ScheduledSet().delete_all() == 0
    raws = fill(store, "retry", 2100)
    redis_client.zadd("retry", {b"garbage": NOW})
    assert api.RetrySet().kill_all(now=NOW + 1) == 2101
    assert api.RetrySet().size() == 0 and api.DeadSet().size() == 2101
    assert set(redis_client.zrange("dead", 0, -1)) == {*raws, b"garbage"}


def test_dead_set_is_trimmed_to_exactly_max_jobs_and_timeout(redis_client):
    with override_settings(KIQ={**settings.KIQ, "DEAD_MAX_JOBS": 5, "DEAD_TIMEOUT": 1000}):
        store = storage.get_default()
        assert store.dead_max_jobs == 5
        redis_client.zadd("dead", {b"ancient": NOW - 2000, b"recent": NOW - 10})
        fill(store, "retry", 3)
        retries = api.RetrySet()
        assert retries.kill(retries.jobs(), now=NOW) == 3
        assert api.DeadSet().size() == 4  # "ancient" is past DEAD_TIMEOUT
        assert b"ancient" not in redis_client.zrange("dead", 0, -1)
        fill(store, "retry", 40, start=NOW + 1)
        assert retries.kill_all(now=NOW + 100) == 40
        assert api.DeadSet().size() == 5
        fill(store, "schedule", 3)
        assert api.ScheduledSet().kill(api.ScheduledSet().jobs(0, 2), now=NOW + 200) == 2
        assert api.DeadSet().size() == 5
        assert [r.score for r in api.DeadSet().jobs(0, 2)] == [NOW + 200, NOW + 200]


# -- processes --------------------------------------------------------------------------------

def beat(store, identity: str, *, busy: int = 0, work: dict | None = None,
         quiet: bool = False) -> list[str]:
    info = {"hostname": "host1", "started_at": NOW - 60, "pid": 4242, "tag": "web",
            "concurrency": 5, "queues": ["default", "mail"], "identity": identity,
            "version": "0.1.0", "labels": []}
    return store.heartbeat(Heartbeat(
        identity=identity, info=json.dumps(info), busy=busy, quiet=quiet, rss_kb=1234,
        rtt_us=99, work=work or {}, ttl=60, processed=0, failed=0), now=NOW)


def test_process_list_reads_heartbeat_and_work(store, redis_client):
    raw = make(7)
    work = {"kiq-processor-1": json.dumps({"queue": "default", "payload": raw.decode(),
                                           "run_at": NOW - 5})}
    beat(store, "host1:4242:aa", busy=1, work=work, quiet=True)
    beat(store, "host1:4243:bb")
    redis_client.sadd("processes", "gone:1:cc")  # its hash expired
    processes = api.ProcessSet().list()
    assert [p.identity for p in processes] == ["host1:4242:aa", "host1:4243:bb"]
    first = processes[0]
    assert (first.hostname, first.pid, first.tag, first.queues) == (
        "host1", 4242, "web", ["default", "mail"])
    assert (first.concurrency, first.started_at, first.busy, first.beat) == (5, NOW - 60, 1, NOW)
    assert (first.quiet, first.rss_kb, first.rtt_us, first.version) == (True, 1234, 99, "0.1.0")
    assert first.info["identity"] == "host1:4242:aa" and processes[1].quiet is False
    [running] = first.work
    assert (running.process, running.thread, running.queue, running.run_at) == (
        "host1:4242:aa", "kiq-processor-1", "default", NOW - 5)
    assert running.job.raw == raw and running.job.jid == f"{7:024x}"
    assert redis_client.smembers("processes") == {b"host1:4242:aa", b"host1:4243:bb"}


def test_process_signals_reach_the_heartbeat(store, redis_client):
    beat(store, "p:1:a")
    beat(store, "p:2:b")
    processes = api.ProcessSet()
    processes.quiet("p:1:a")
    processes.stop("p:1:a")
    assert beat(store, "p:1:a") == ["TSTP", "TERM"]
    assert not redis_client.exists("p:2:b-signals")
    assert processes.quiet_all() == 2 and processes.stop_all() == 2
    assert beat(store, "p:2:b") == ["TSTP", "TERM"]
    assert 0 < redis_client.ttl("p:1:a-signals") <= 60


# -- metrics and stats ------------------------------------------------------------------------

def test_metrics_summary_sums_the_last_hours(store):
    hour = int(NOW // 3600)
    metrics = {"a.job": {"p": 4, "f": 1, "ms": 2000, "h0": 3, f"h{len(HISTOGRAM_MS)}": 1},
               "b.job": {"p": 1, "f": 0, "ms": 50, "h2": 1}}
    for seconds_ago in (0, 3600, 3 * 3600):
        store.heartbeat(Heartbeat(identity="m:1:a", info="{}", busy=0, quiet=False, rss_kb=0,
                                  rtt_us=0, work={}, ttl=60, processed=0, failed=0),
                        metrics=metrics, now=hour * 3600 + 10 - seconds_ago)
    a, b = api.Metrics().summary(2, now=NOW)
    assert (a.name, a.processed, a.failed, a.total_seconds, a.avg_seconds) == (
        "a.job", 8, 2, 4.0, 0.5)
    assert len(a.histogram) == len(HISTOGRAM_MS) + 1
    assert a.histogram[0] == 6 and a.histogram[-1] == 2 and sum(a.histogram) == 8
    assert (b.name, b.processed, b.histogram[2]) == ("b.job", 2, 2)
    assert api.Metrics().summary(4, now=NOW)[0].processed == 12
    assert api.Metrics().summary(1, now=NOW + 7200) == []


def test_stats_snapshot(store, redis_client):
    redis_client.set("stat:processed", 10)
    redis_client.set("stat:failed", 3)
    store.push([("default", make(0, enqueued_at=NOW - 12)), ("default", make(1)),
                ("other", make(2))])
    fill(store, "schedule", 4)
    fill(store, "retry", 2)
    fill(store, "dead", 1)
    beat(store, "s:1:a", busy=2)
    beat(store, "s:2:b", busy=3)
    stats = api.Stats(now=NOW)
    assert (stats.processed, stats.failed, stats.enqueued, stats.busy) == (10, 3, 3, 5)
    assert (stats.scheduled_size, stats.retry_size, stats.dead_size) == (4, 2, 1)
    assert stats.processes_size == 2 and stats.default_queue_latency == 12.0


def test_stats_on_an_empty_redis(store):
    stats = api.Stats()
    assert (stats.processed, stats.enqueued, stats.busy, stats.default_queue_latency) == (
        0, 0, 0, 0.0)


def test_stats_history_and_redis_info(store, redis_client):
    today = dt.datetime.fromtimestamp(NOW, dt.UTC).date()
    yesterday = today - dt.timedelta(days=1)
    redis_client.set(f"stat:processed:{today}", 7)
    redis_client.set(f"stat:failed:{today}", 2)
    redis_client.set(f"stat:processed:{yesterday}", 5)
    assert api.Stats.history(3, now=NOW) == [
        (today - dt.timedelta(days=2), 0, 0), (yesterday, 5, 0), (today, 7, 2)]
    assert api.Stats().history(1, now=NOW) == [(today, 7, 2)]
    info = api.Stats.redis_info()
    assert set(info) == {"redis_version", "uptime_in_days", "connected_clients",
                         "used_memory_human", "used_memory_peak_human", "maxmemory_policy"}
    assert info["redis_version"]


def test_search_is_bounded_and_resumable(store):
    rows = {payload.encode(payload.build(name="S", args=[f"needle-{i}" if i % 500 == 0 else i],
                                         kwargs={}, queue="q", now=1)): float(i)
            for i in range(5000)}
    store.client.zadd("retry", rows)
    retries = api.RetrySet()
    first = retries.search("needle", limit=100, budget=1000)
    assert first.scanned <= 2000 and not first.complete
    found, cursor, steps = list(first.records), first.cursor, 1
    while cursor:
        page = retries.search("needle", cursor=cursor, limit=100, budget=1000)
        found += page.records
        cursor, steps = page.cursor, steps + 1
    assert steps > 1
    assert sorted({r.args[0] for r in found}) == sorted(f"needle-{i}" for i in range(0, 5000, 500))
