"""The poller and the cron ticker against the real Redis: lost replies and clock skew.

A lost reply is produced by Redis itself: ``CLIENT REPLY SKIP`` before the claim's EVALSHA makes
the server run ``due.lua`` and send nothing back, so the poller's call times out exactly as if the
connection had been killed after the script ran; one subprocess test kills a real worker's
connections again and again (``CLIENT KILL``) while thousands of jobs come due.
Clock skew needs no change to the machine's clock: the poller and the ticker take this process's
clock as ``now=``, and a fast worker is one built with ``now=lambda: time.time() + 30``.
"""

from __future__ import annotations

import json
import logging
import math
import time

import pytest
import redis
from redis.backoff import NoBackoff
from redis.retry import Retry

from django_kiq import payload
from django_kiq.conf import get_settings
from django_kiq.periodic import PeriodicEntry
from django_kiq.storage import Heartbeat, Storage
from django_kiq.worker.cron_ticker import CronTicker
from django_kiq.worker.scheduler import Poller, SkewWatch
from tests import jobs  # noqa: F401 - registers tests.jobs.record
from tests.conftest import wait_for

POLLER = "host:1:poller"
LANE = f"kiq:wip:{POLLER}|sched"
SKEW = 30.0


def fast_clock() -> float:
    return time.time() + SKEW


def scheduled(store: Storage, n: int, at: float, queue: str = "default") -> set[str]:
    raws = [payload.build(name="tests.jobs.record", args=[i], kwargs={}, queue=queue,
                          now=at - 60) for i in range(n)]
    store.schedule([(at, payload.encode(payload.for_schedule(job))) for job in raws])
    return {job["jid"] for job in raws}


def queued(redis_client, queue: str = "default") -> list[dict]:
    return [json.loads(raw) for raw in redis_client.lrange(f"queue:{queue}", 0, -1)]


@pytest.fixture
def lossy_store(store, redis_url):
    """A Storage whose next EVALSHA runs in Redis but gets no reply (``arm()``)."""
    state = {"armed": False}

    class SkipNextReply(redis.Connection):
        def send_command(self, *args, **kwargs):
            if state["armed"] and str(args[0]).upper() == "EVALSHA":
                state["armed"] = False
                self.send_packed_command(self.pack_command("CLIENT", "REPLY", "SKIP"))
            super().send_command(*args, **kwargs)

    client = redis.Redis.from_url(redis_url, connection_class=SkipNextReply, socket_timeout=0.3,
                                  retry=Retry(NoBackoff(), 0))
    lossy = Storage(client, store.keys)
    lossy.arm = lambda: state.update(armed=True)
    yield lossy
    client.close()


# -- item 3: a claim whose reply was lost ---------------------------------------------------------


def test_jobs_claimed_by_a_lost_reply_reach_their_queue_at_the_next_pass(lossy_store,
                                                                         redis_client):
    poller = Poller(store=lossy_store, identity=POLLER, settings=get_settings())
    poller.step()  # loads due.lua: the armed call below is the claim itself
    jids = scheduled(lossy_store, 40, time.time() - 5)
    lossy_store.arm()
    with pytest.raises(redis.exceptions.TimeoutError):
        poller.step()
    # Redis ran the claim: the jobs sit in the lane, and the poller does not know it.
    assert redis_client.llen(LANE) == 40 and redis_client.zcard("schedule") == 0
    poller.step()
    assert redis_client.llen(LANE) == 0
    moved = queued(redis_client)
    assert sorted(j["jid"] for j in moved) == sorted(jids)  # each once, none lost
    assert all("at" not in j and j["enqueued_at"] > 0 and j["queue"] == "default"
               for j in moved)


def test_running_poller_empties_its_lane_after_a_lost_reply(lossy_store, redis_client, caplog):
    poller = Poller(store=lossy_store, identity=POLLER, settings=get_settings())
    poller.step()
    lossy_store.arm()
    jids = scheduled(lossy_store, 700, time.time() - 5)  # more than one claim batch
    poller.start()
    try:
        wait_for(lambda: redis_client.llen("queue:default") == 700, timeout=10,
                 message="jobs stayed in the scheduler's in-progress lane")
    finally:
        poller.stop()
    assert redis_client.llen(LANE) == 0
    assert {j["jid"] for j in queued(redis_client)} == jids
    assert "reconciled" in caplog.text


# -- item 6: a worker whose clock is fast -------------------------------------------------------


def test_fast_clock_poller_does_not_move_a_job_before_its_time(store, redis_client):
    [jid] = scheduled(store, 1, store.server_time() + 3)
    poller = Poller(store=store, identity=POLLER, settings=get_settings(), now=fast_clock)
    assert poller.poll_once() == 0  # its clock says 27 s late; Redis's says 3 s early
    assert redis_client.zcard("schedule") == 1 and redis_client.llen(LANE) == 0
    # It sleeps until the job is due by Redis's clock (capped), instead of spinning.
    assert poller.step() > 0
    assert poller.clock.offset == pytest.approx(SKEW, abs=0.5)
    wait_for(lambda: poller.poll_once() == 1, timeout=6)
    [job] = queued(redis_client)
    assert job["jid"] == jid
    assert job["enqueued_at"] == pytest.approx(store.server_time(), abs=1)  # Redis's time


def test_fast_and_normal_cron_workers_lose_no_tick_and_fire_none_early(store, redis_client):
    entry = PeriodicEntry(name="sec", cron="* * * * * *", timezone="UTC",
                          job="tests.jobs.record", queue="cron-skew")
    settings = get_settings()
    tickers = [CronTicker(store=store, identity=ident, settings=settings, entries=[entry],
                          now=clock)
               for ident, clock in (("fast", fast_clock), ("normal", time.time))]
    for t in tickers:
        t.start()
    # An entry never seen starts at a ticker's first pass: count ticks from when both made it
    # (under load a thread may start a second late; that tick was never owed).
    wait_for(lambda: all(t._cursor is not None for t in tickers), timeout=5)
    start = store.server_time()

    def claimed() -> list[int]:
        return sorted(int(k.rsplit(b":", 1)[1])
                      for k in redis_client.scan_iter(match="kiq:periodic:tick:sec:*"))

    try:
        wait_for(lambda: store.server_time() > math.floor(start) + 4.2, timeout=8)
    finally:
        for t in tickers:
            t.stop()
    end = store.server_time()
    ticks = claimed()
    assert ticks and ticks[-1] <= end, f"fired early: {ticks} after {end:.1f}"
    assert ticks[0] <= math.floor(start) + 1, "the first tick after both started was skipped"
    expected = list(range(ticks[0], math.floor(end) + 1))
    assert ticks == expected, "a tick was skipped"
    jobs_pushed = sorted(queued(redis_client, "cron-skew"), key=lambda j: j["created_at"])
    assert len(jobs_pushed) == len(ticks)
    for tick, job in zip(ticks, jobs_pushed):
        assert tick <= job["enqueued_at"] < tick + 1  # stamped with Redis's time, on time
    assert tickers[0].clock.offset == pytest.approx(SKEW, abs=0.5)


def test_skew_is_logged_once_and_again_when_it_changes(store, caplog):
    caplog.set_level(logging.INFO, logger="django_kiq.scheduler")
    offsets = iter([SKEW, SKEW + 0.3, SKEW - 0.2, 2 * SKEW, 0.01, 0.02])
    watch = SkewWatch(store, POLLER)
    logged = []
    for offset in offsets:
        before = len(caplog.records)
        watch.observe(offset)
        logged.append([r.getMessage() for r in caplog.records[before:]])
    assert ["30.0s ahead of Redis's" in m for m in logged[0]] == [True]
    assert logged[1] == logged[2] == []  # the same skew, give or take: said once
    assert ["60.0s ahead of Redis's" in m for m in logged[3]] == [True]
    assert ["back within 1s" in m for m in logged[4]] == [True]
    assert logged[5] == []


def test_slow_poller_logs_and_publishes_its_offset(store, caplog):
    poller = Poller(store=store, identity=POLLER, settings=get_settings(),
                    now=lambda: time.time() - SKEW)
    poller.step()
    poller.step()
    warnings = [r.getMessage() for r in caplog.records if "Redis's:" in r.getMessage()]
    assert len(warnings) == 1 and "30.0s behind Redis's" in warnings[0]
    beat(store, POLLER)
    assert store.clock_offsets()[POLLER] == pytest.approx(-SKEW, abs=0.5)


def beat(store: Storage, identity: str) -> None:
    store.heartbeat(Heartbeat(identity=identity, info=json.dumps({"hostname": "h"}), busy=0,
                              quiet=False, rss_kb=0, rtt_us=0, work={}, ttl=60, processed=0,
                              failed=0))


@pytest.mark.django_db
def test_periodic_page_shows_each_workers_clock_offset(admin_client, store):
    for identity, clock in (("fast:1:a", fast_clock), ("normal:2:b", time.time)):
        beat(store, identity)
        Poller(store=store, identity=identity, settings=get_settings(), now=clock).step()
    page = admin_client.get("/admin/django_kiq/jobs/periodic/").text
    assert "Worker clocks" in page and "fast:1:a" in page and "normal:2:b" in page
    assert page.count("off by more than 1 s") == 1 and "30.0" in page
    assert "The clock of worker fast:1:a is 30.0" in page and "ahead of Redis" in page
    assert "in sync</span>" in page


# -- a real worker whose connections keep being killed ------------------------------------------


def test_worker_strands_no_scheduled_job_when_its_connections_are_killed(worker_factory,
                                                                         redis_client, store):
    worker = worker_factory("-c", "1", "-q", "default", env={"KIQ_POLL_INTERVAL_MAX": "0.05"})
    identity = wait_for(lambda: next(iter(redis_client.smembers("processes")), None),
                        timeout=30, message="worker did not start").decode()
    start = store.server_time()
    # 4,000 jobs for a queue the worker does not consume, coming due over 2 s: many claims.
    for k in range(40):
        jobs_ = [payload.build(name="tests.jobs.record", args=[k, i], kwargs={}, queue="parked",
                               now=start) for i in range(100)]
        store.schedule([(start + 0.5 + k * 0.05, payload.encode(job)) for job in jobs_])
    deadline = time.monotonic() + 3.0
    while time.monotonic() < deadline:
        kill_connections_to_our_db(redis_client)
        time.sleep(0.002)
    lane = f"kiq:wip:{identity}|sched"
    wait_for(lambda: redis_client.llen("queue:parked") == 4000, timeout=10,
             message="jobs stranded in the scheduler's in-progress lane")
    assert redis_client.llen(lane) == 0 and redis_client.zcard("schedule") == 0
    assert redis_client.sismember("processes", identity), worker.output()


def kill_connections_to_our_db(client: redis.Redis) -> None:
    """CLIENT KILL every connection to this run's DB but ``client``'s own: never another run's."""
    me = client.client_id()
    db = client.connection_pool.connection_kwargs.get("db", 0)
    victims = [c["id"] for c in client.client_list()
               if int(c["db"]) == db and int(c["id"]) != me]
    pipe = client.pipeline(transaction=False)
    for victim in victims:
        pipe.client_kill_filter(_id=victim)
    pipe.execute(raise_on_error=False)
