"""Flow control (django_kiq.limits, limit_rules, storage/limits.py, the Limits admin page).

The rules are tested pure; each Lua rule against its Python mirror on the real Redis; the
worker side (a job meeting a full limiter is rescheduled, not failed) through the processor;
and the guarantees end to end with worker subprocesses: the overlap of a ``concurrency=3`` job
across 2 processes x 10 threads is exactly 3, a window of N per second never lets N+1 in, a
leaky limiter gives its burst then its drain rate, a SIGKILLed holder's slot is back within
PROCESS_TTL, and rescheduled jobs all complete.
"""

from __future__ import annotations

import logging
import math
import threading
import time
from collections import Counter

import pytest

from django_kiq import (api, job, limit_leases as leases, limit_rules as rules, limits, payload,
                        registry)
from django_kiq.conf import get_settings
from django_kiq.stats import Counters
from django_kiq.worker.processor import Processor
from tests import limit_jobs
from tests.conftest import wait_for
from tests.test_admin import _fast_passwords, user_client  # noqa: F401 - fixtures

WORKER_ENV = {"KIQ_IMPORTS": "tests.jobs,tests.limit_jobs", "KIQ_LOG_LEVEL": "WARNING"}


@pytest.fixture(autouse=True)
def _no_kept_leases():
    """Leases this process kept for reuse belong to the test that took them."""
    yield
    leases.shared.release_kept()


# -- pure rules ---------------------------------------------------------------------------------

@pytest.mark.parametrize("name", ["", "a b", "x:y", "é", "a/b", None, 3, "a" * 201])
def test_bad_names_fail_at_creation(name):
    with pytest.raises(ValueError, match="limiter name"):
        limits.concurrent(name, 1)


@pytest.mark.parametrize("kwargs", [{"size": 0}, {"size": 1.5}, {"size": True},
                                    {"interval": "week"}, {"interval": 0}, {"interval": -1},
                                    {"interval": 0.001}, {"wait_timeout": -1},
                                    {"reschedule": -1}])
def test_bad_settings_fail_at_creation(kwargs):
    args = {"size": 5, "interval": "second", **kwargs}
    with pytest.raises(ValueError):
        limits.window("ok", args.pop("size"), args.pop("interval"), **args)


def test_creating_a_limiter_does_no_io():
    class NoStore:
        def __getattr__(self, name):
            raise AssertionError(f"I/O at creation: {name}")

    for make in (lambda: limits.concurrent("stripe-42.x_y", 5, store=NoStore()),
                 lambda: limits.window("w", 5, "hour", store=NoStore()),
                 lambda: limits.bucket("b", 5, 2.5, store=NoStore()),
                 lambda: limits.leaky("l", 5, "minute", store=NoStore())):
        make()
    assert limits.window("w", 1, "day").interval == 86400.0


def test_rules_concurrent_and_bucket():
    assert rules.concurrent([5.0, 6.0], size=3, now=1.0).allowed
    assert rules.concurrent([5.0, 6.0, 0.5], size=2, now=1.0) == rules.Verdict(allowed=False,
                                                                              wait=4.0)
    assert rules.bucket([0.2, 0.9], size=2, interval=1.0, now=1.0).wait == pytest.approx(0.2)
    assert rules.bucket([0.2, 0.9], size=2, interval=1.0, now=1.25).allowed


def test_rules_window_restarts_at_each_clock_boundary():
    assert rules.window(10, 5, size=5, interval=1.0, now=10.999) == rules.Verdict(
        allowed=False, wait=pytest.approx(0.001))
    assert rules.window(10, 5, size=5, interval=1.0, now=11.0).allowed
    assert rules.window_index(7200.0, 3600.0) == 2


def test_rules_leaky_allows_the_burst_then_the_drain():
    tat, allowed = None, []
    for _ in range(6):  # six at t=0: the burst of 4, then two refusals
        verdict, tat = rules.leaky(tat, size=4, interval=1.0, now=0.0)
        allowed.append(verdict.allowed)
    assert allowed == [True] * 4 + [False] * 2
    assert rules.leaky(tat, size=4, interval=1.0, now=0.0)[0].wait == pytest.approx(0.25)
    assert rules.leaky(tat, size=4, interval=1.0, now=0.25)[0].allowed
    assert rules.usage("leaky", tat, size=4, interval=1.0, now=0.0) == 4
    assert rules.usage("leaky", tat, size=4, interval=1.0, now=0.5) == 2


def test_plan_reschedule_counts_per_limiter_and_reads_the_count_as_untrusted():
    job = {"jid": "j", "retry_count": 2, rules.RESCHEDULES_FIELD: {"other": 7}}
    plan = rules.plan_reschedule(job, name="sms", kind="window", wait=2.0, limit=3, now=100.0,
                                 rand=lambda: 1.0)
    assert plan.count == 1 and plan.at == pytest.approx(102.5)  # + jitter max(0.5, 0.5)
    assert plan.job[rules.RESCHEDULES_FIELD] == {"other": 7, "sms": 1}
    assert plan.job["retry_count"] == 2 and "error_class" not in plan.job
    assert rules.plan_reschedule({rules.RESCHEDULES_FIELD: {"sms": 3}}, name="sms",
                                 kind="window", wait=1, limit=3, now=0) is None
    for junk in ("x", [1], {"sms": "9"}, {"sms": True}, {"sms": -4}):
        again = rules.plan_reschedule({rules.RESCHEDULES_FIELD: junk}, name="sms",
                                      kind="window", wait=1, limit=3, now=0)
        assert again.count == 1
    concurrent = rules.plan_reschedule({rules.RESCHEDULES_FIELD: {"erp": 2}}, name="erp",
                                       kind="concurrent", wait=30.0, limit=20, now=0.0,
                                       rand=lambda: 0.0)
    assert concurrent.at == 4.0  # a slot comes back sooner than the oldest lease expires


# -- the Lua rules against their mirrors ------------------------------------------------------

def test_concurrent_script_matches_the_rule(store):
    taken = [store.limit_acquire(kind="concurrent", name="c", size=2, span=30.0,
                                 member=f"p|t|{i}", holder="p") for i in range(3)]
    assert [g.allowed for g in taken] == [True, True, False]
    expected = rules.concurrent([taken[0].at + 30, taken[1].at + 30], size=2, now=taken[2].at)
    assert taken[2].wait == pytest.approx(expected.wait, abs=0.002)
    assert store.limit_release("c", "p|t|0") and not store.limit_release("c", "p|t|0")
    assert store.limit_acquire(kind="concurrent", name="c", size=2, span=30.0, member="p|t|3",
                               holder="p").allowed


def test_window_script_matches_the_rule(store):
    grants = [store.limit_acquire(kind="window", name="w", size=3, span=60.0) for _ in range(4)]
    if len({math.floor(g.at / 60) for g in grants}) > 1:
        pytest.skip("crossed a minute boundary")
    assert [g.allowed for g in grants] == [True, True, True, False]
    expected = rules.window(math.floor(grants[3].at / 60), 3, size=3, interval=60.0,
                            now=grants[3].at)
    assert grants[3].wait == pytest.approx(expected.wait, abs=0.002)


def test_bucket_script_matches_the_rule(store):
    grants = []
    for i in range(3):
        grants.append(store.limit_acquire(kind="bucket", name="b", size=2, span=0.3,
                                          member=str(i)))
    assert [g.allowed for g in grants] == [True, True, False]
    expected = rules.bucket([g.at for g in grants[:2]], size=2, interval=0.3, now=grants[2].at)
    assert grants[2].wait == pytest.approx(expected.wait, abs=0.002)
    time.sleep(grants[2].wait + 0.01)
    assert store.limit_acquire(kind="bucket", name="b", size=2, span=0.3, member="3").allowed


def test_leaky_script_matches_the_rule(store):
    grants = [store.limit_acquire(kind="leaky", name="l", size=4, span=1000.0) for _ in range(5)]
    assert [g.allowed for g in grants] == [True] * 4 + [False]
    tat = None
    for g in grants[:4]:
        _, tat = rules.leaky(tat, size=4, interval=1000.0, now=g.at)
    expected, _ = rules.leaky(tat, size=4, interval=1000.0, now=grants[4].at)
    assert grants[4].wait == pytest.approx(expected.wait, abs=0.002)


# -- the Limiter API ----------------------------------------------------------------------------

def test_with_limiter_across_threads_never_exceeds_its_size(store):
    limiter = limits.concurrent("threads", 2, wait_timeout=10)
    inside, peak, lock = [0], [0], threading.Lock()

    def work():
        with limiter:
            with lock:
                inside[0] += 1
                peak[0] = max(peak[0], inside[0])
            time.sleep(0.02)
            with lock:
                inside[0] -= 1

    threads = [threading.Thread(target=work) for _ in range(8)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert peak[0] == 2
    [record] = api.limits()  # the process keeps its leases a moment (counted as in use)
    assert (record.name, record.kind, record.size) == ("threads", "concurrent", 2)
    assert record.in_use <= 2
    assert record.lock_timeout == 30.0 and record.interval is None
    wait_for(lambda: api.limits()[0].in_use == 0, timeout=2,
             message="kept leases were not given back after the linger")
    assert api.limits()[0].acquired == 8  # uses on reused leases counted with the release


def test_over_limit_propagates_outside_a_job_and_waiting_does_not_busy_poll(store):
    calls = Counter()

    class Counting:
        def __getattr__(self, name):
            calls[name] += 1
            return getattr(store, name)

    limiter = limits.window("calls", 2, 0.5, wait_timeout=0, store=Counting())
    if time.time() % 0.5 > 0.4:
        time.sleep(0.12)  # keep the two uses in one window
    with limiter, limiter:
        pass
    with pytest.raises(limits.OverLimit) as info:
        limiter.__enter__()
    assert info.value.name == "calls" and 0 < info.value.wait <= 0.5
    patient = limits.window("calls", 2, 0.5, wait_timeout=2, store=Counting())
    calls.clear()
    started = time.monotonic()
    with patient.within_limit():
        pass
    assert time.monotonic() - started < 0.6
    assert calls["limit_acquire"] == 2  # asked once, slept until the window ended, asked again


def test_a_rate_limiter_raises_at_once_when_room_comes_after_wait_timeout(store):
    limiter = limits.window("later", 1, "hour", wait_timeout=1)
    with limiter:
        pass
    started = time.monotonic()
    with pytest.raises(limits.OverLimit):
        limiter.__enter__()
    assert time.monotonic() - started < 0.1


def test_a_slot_held_past_lock_timeout_is_warned_about_and_expires(store, caplog):
    limiter = limits.concurrent("slow", 1, lock_timeout=0.2, wait_timeout=0)
    with caplog.at_level(logging.WARNING, logger="django_kiq.limits"):
        with limiter:
            time.sleep(0.35)
            other = limits.concurrent("slow", 1, lock_timeout=0.2, wait_timeout=0)
            with other:  # the first slot expired: it may be given to another holder
                pass
    assert any("past lock_timeout" in r.message for r in caplog.records)


def test_a_dead_process_leases_are_released_by_recovery(store, redis_client):
    dead = limits.concurrent("reap", 2, lock_timeout=300, wait_timeout=0)
    limits.bind_process("host:1:dead")
    try:
        dead.__enter__()
        dead.__enter__()
    finally:
        limits.bind_process("host:2:alive")
    with pytest.raises(limits.OverLimit):
        dead.__enter__()
    redis_client.set("host:1:dead", "x")  # its heartbeat: alive, nothing released
    assert limits.release_dead_process(store, "host:1:dead") == -1
    redis_client.delete("host:1:dead")
    assert limits.release_dead_process(store, "host:1:dead") == 2
    with dead:
        pass
    limits.bind_process(limits.process_identity() + "x")


# -- kept leases: reused by the process's next block with no round trip ----------------------------

class Counting:
    """The store, counting every verb called on it (only the storage layer talks to Redis)."""

    def __init__(self, store):
        self.store, self.calls = store, Counter()

    def __getattr__(self, name):
        self.calls[name] += 1
        return getattr(self.store, name)


def test_a_kept_lease_is_reused_without_a_redis_command_then_given_back(store, redis_client):
    counting = Counting(store)
    limiter = limits.concurrent("kept", 3, store=counting)
    with limiter:
        pass
    assert counting.calls == {"limit_acquire": 1}
    for _ in range(50):
        with limiter.within_limit() as slot:
            assert abs(slot.at - time.time()) < 1.0  # Redis's clock, as the grant told it
    assert counting.calls == {"limit_acquire": 1}  # 50 blocks, not one Redis command
    [record] = api.limits()
    assert record.in_use == 1  # kept: still counted as in use, everywhere
    [(member, expiry)] = redis_client.zrange("kiq:limit:kept", 0, -1, withscores=True)
    assert expiry / 1000 >= slot.at + 30.0  # the last block still had its lock_timeout
    wait_for(lambda: api.limits()[0].in_use == 0, timeout=1.0, interval=0.01,
             message="an idle kept lease was not given back after the linger")
    assert counting.calls == {"limit_acquire": 1, "limit_release": 1}
    assert api.limits()[0].acquired == 51


def test_a_lease_is_reused_only_for_a_second_then_competed_for_again(store, monkeypatch):
    monkeypatch.setattr(leases, "REUSE_FOR", 0.2)
    counting = Counting(store)
    limiter = limits.concurrent("rotate", 2, store=counting)
    ended = time.monotonic() + 0.7
    blocks = 0
    while time.monotonic() < ended:
        with limiter:
            blocks += 1
    assert 3 <= counting.calls["limit_acquire"] <= 5  # taken again each 0.2 s, not per block
    assert counting.calls["limit_release"] >= 2 and blocks > 100


def test_a_limiter_with_a_short_lock_timeout_keeps_nothing(store):
    counting = Counting(store)
    limiter = limits.concurrent("short", 2, lock_timeout=1.5, store=counting)
    for _ in range(3):
        with limiter:
            pass
    assert counting.calls == {"limit_acquire": 3, "limit_release": 3}
    assert leases.reuse_window(1.5) == 0.0 and leases.reuse_window(2.0) == leases.REUSE_FOR


def test_a_kept_lease_counts_as_in_use_for_other_processes_until_given_back(store):
    limiter = limits.concurrent("one", 1, wait_timeout=0)
    mine = limits.process_identity()
    with limiter:
        pass  # kept by this process
    limits.bind_process("host:9:other")  # another process, as far as the limiter can tell
    try:
        with pytest.raises(limits.OverLimit) as info:
            limiter.__enter__()
        assert info.value.wait > 30.0  # the kept lease expires lock_timeout + 1 s after it was taken
        started = time.monotonic()
        wait_for(lambda: _enters(limiter), timeout=2.0, interval=0.01,
                 message="the other process never got the slot")
        assert time.monotonic() - started < leases.LINGER + 0.25
    finally:
        limits.bind_process(mine)


def _enters(limiter) -> bool:
    try:
        with limiter:
            return True
    except limits.OverLimit:
        return False


def test_a_waiting_thread_takes_a_lease_kept_by_another_at_once(store):
    limiter = limits.concurrent("handover", 1, wait_timeout=5)
    taken = threading.Event()
    waited = []

    def second():
        taken.wait()
        started = time.monotonic()
        with limiter:
            waited.append(time.monotonic() - started)

    thread = threading.Thread(target=second)
    thread.start()
    with limiter:
        taken.set()
        time.sleep(0.6)  # the waiter backs off to 250 ms between tries meanwhile
        released = time.monotonic()
    thread.join()
    assert waited and waited[0] >= 0.55
    assert time.monotonic() - released < 0.2  # woken by the keep, not by its next try
    [record] = api.limits()
    assert record.in_use == 1 and record.throttled >= 3


def test_records_and_reset(store):
    limits.window("w1", 3, "minute").__enter__()
    limits.bucket("b1", 3, "minute").__enter__()
    limits.leaky("l1", 3, "minute").__enter__()
    by_name = {r.name: r for r in api.limits()}
    assert {n: (r.kind, r.in_use, r.interval) for n, r in by_name.items()} == {
        "b1": ("bucket", 1, 60.0), "l1": ("leaky", 1, 60.0), "w1": ("window", 1, 60.0)}
    api.reset_limit("w1")
    assert {r.name: r.in_use for r in api.limits()}["w1"] == 0


# -- in a job: rescheduled, not failed ------------------------------------------------------------

FULL = limits.concurrent("full", 1, wait_timeout=0, reschedule=2)


@job(retry=0)
def needs_full():
    with FULL:
        pass


def test_a_job_meeting_a_full_limiter_is_rescheduled_then_fails_after_reschedule_times(store):
    processor = Processor(settings=get_settings(), counters=Counters())
    raw = payload.encode(payload.build(name=needs_full.name, args=[], kwargs={},
                                       queue="default", now=time.time(),
                                       options=needs_full.options.payload_fields()))
    with FULL:  # the test holds the only slot
        for count in (1, 2):
            outcome = processor.process("default", raw, "t")
            assert outcome.kind == "reschedule"
            moved = payload.decode(outcome.new)
            assert moved[rules.RESCHEDULES_FIELD] == {"full": count}
            assert "error_class" not in moved and "retry_count" not in moved
            assert outcome.at > time.time()
            raw = outcome.new
        outcome = processor.process("default", raw, "t")
    assert outcome.kind == "dead"  # retry=0: the ordinary failure path, with the error
    assert payload.decode(outcome.new)["error_class"] == "django_kiq.limits.OverLimit"
    [record] = [r for r in api.limits() if r.name == "full"]
    assert record.rescheduled == 2 and record.throttled == 3


def test_concurrency_option_is_validated_at_decoration():
    for bad in (0, -1, 1.5, "3", True):
        with pytest.raises(ValueError, match="concurrency"):
            registry.validate_options({"concurrency": bad}, where="t")
    assert limit_jobs.capped.options.concurrency == 3


# -- end to end, with worker processes -----------------------------------------------------------

def _runs(redis_client) -> int:
    return sum(int(v) for v in redis_client.hvals("test:limits:runs"))


def _clean(store) -> None:
    stats = api.Stats()
    assert (stats.failed, stats.retry_size, stats.dead_size) == (0, 0, 0)


def test_concurrency_3_across_2_processes_x_10_threads_overlaps_exactly_3(worker_factory,
                                                                         redis_client, store):
    limit_jobs.capped.enqueue_many([(f"c{i}", 0.05) for i in range(90)])
    for _ in range(2):
        worker_factory("-c", "10", env=WORKER_ENV)
    wait_for(lambda: _runs(redis_client) == 90, timeout=40, message="capped jobs did not finish")
    assert int(redis_client.get("test:limits:max")) == 3
    _clean(store)


def test_window_never_lets_n_plus_1_into_one_window_and_rescheduled_jobs_complete(
        worker_factory, redis_client, store):
    limit_jobs.windowed.enqueue_many([(f"w{i}",) for i in range(20)])
    for _ in range(2):
        worker_factory("-c", "5", env=WORKER_ENV)
    wait_for(lambda: _runs(redis_client) == 20, timeout=30,
             message="windowed jobs did not all complete")
    per_window = Counter(math.floor(float(t)) for t in redis_client.lrange("test:limits:window",
                                                                           0, -1))
    assert max(per_window.values()) == 5 and sum(per_window.values()) == 20
    _clean(store)
    [record] = [r for r in api.limits() if r.name == "test-window"]
    assert record.rescheduled >= 15  # at most 5 of 20 got the first window


def test_leaky_gives_its_burst_then_its_drain_rate(worker_factory, redis_client, store):
    limit_jobs.leaky.enqueue_many([(f"l{i}",) for i in range(12)])
    worker_factory("-c", "12", env=WORKER_ENV)
    wait_for(lambda: _runs(redis_client) == 12, timeout=30)
    starts = sorted(float(t) for t in redis_client.lrange("test:limits:leaky", 0, -1))
    first, step = starts[0], 1.0 / 4
    assert starts[3] - first < step  # the burst of 4 at once
    for k in range(4, 12):  # then one per step: never earlier, never much later
        assert starts[k] - first >= (k - 3) * step - 0.002
    assert starts[11] - first <= 8 * step + 0.5
    _clean(store)


def test_a_sigkilled_holders_slot_is_back_within_process_ttl(worker_factory, redis_client,
                                                             store):
    holder = worker_factory("-c", "2", env=WORKER_ENV)
    worker_factory("-c", "1", "-q", "other", env=WORKER_ENV)  # recovers orphans, runs nothing
    limit_jobs.hold.enqueue("h1")
    wait_for(lambda: redis_client.get("test:limits:holding"), timeout=15)
    probe = limits.concurrent("test-kill", 1, lock_timeout=120, wait_timeout=0)
    with pytest.raises(limits.OverLimit):
        probe.__enter__()
    holder.kill()
    killed = time.monotonic()

    def free() -> bool:
        try:
            with probe:
                return True
        except limits.OverLimit:
            return False

    wait_for(free, timeout=10, interval=0.05, message="the dead holder's slot never came back")
    assert time.monotonic() - killed < 3 + 1.5  # PROCESS_TTL + a heartbeat or so, not 120 s


# -- the admin's Limits page ----------------------------------------------------------------------

LIMITS_URL = "/admin/django_kiq/jobs/limits/"


@pytest.mark.django_db
def test_limits_page_lists_limiters_and_resets_with_manage_permission(user_client, store):
    erp = limits.concurrent("erp", 50)
    erp.__enter__()
    with limits.concurrent("kept-erp", 5):
        pass  # its lease is kept by this process for a moment: in use
    limits.window("github", 5000, "hour").__enter__()
    viewer = user_client("view_jobs")
    page = viewer.get(LIMITS_URL)
    assert page.status_code == 200
    assert '1 <span class="kiq-sub">(20%)</span>' in page.text  # kept-erp: 1 of 5
    assert "erp" in page.text and "at most 50 at once" in page.text
    assert "5,000 per clock hour" in page.text and 'value="reset"' not in page.text
    assert 'href="/admin/django_kiq/jobs/limits/"' in viewer.get("/admin/django_kiq/jobs/").text
    assert viewer.post(LIMITS_URL, {"action": "reset", "name": "erp"}).status_code == 403
    manager = user_client("view_jobs", "manage_jobs", enforce_csrf_checks=True)
    assert manager.post(LIMITS_URL, {"action": "reset", "name": "erp"}).status_code == 403
    manager = user_client("view_jobs", "manage_jobs")
    assert 'value="reset"' in manager.get(LIMITS_URL).text
    assert manager.post(LIMITS_URL, {"action": "reset", "name": "a b"}).status_code == 400
    done = manager.post(LIMITS_URL, {"action": "reset", "name": "erp"}, follow=True)
    assert "Reset limiter erp" in done.text
    assert {r.name: r.in_use for r in api.limits()}["erp"] == 0
    erp.__exit__(None, None, None)  # released, so no lease outlives the test
