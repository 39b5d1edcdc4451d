"""Batches, chains and groups (django_kiq.batches, django_kiq.canvas) on the real Redis.

Callbacks record their runs in a ledger (tests/workflow_jobs.py), so "exactly once" is checked
from outside django-kiq's own bookkeeping.
"""

import random
import signal
import time

import pytest

from django_kiq import api, batch, chain, group
from tests import jobs
from tests import workflow_jobs as wj
from tests.conftest import wait_for

ENV = {"KIQ_IMPORTS": "tests.jobs,tests.workflow_jobs", "KIQ_PROCESS_TTL": "3",
       "KIQ_HEARTBEAT_INTERVAL": "0.5"}


def _ledger(redis_client):
    return {k.decode(): int(v) for k, v in redis_client.hgetall("test:ledger").items()}


def _runs(redis_client, token):
    return int(redis_client.hget("test:runs", token) or 0)


def _start(worker_factory, *args, **env):
    return worker_factory(*args, env={**ENV, **env})


# -- shape and fail-fast ----------------------------------------------------------------------

def test_signatures_are_validated_like_enqueue():
    sig = wj.work.s("a", seconds=0)
    assert (sig.name, sig.args, sig.kwargs) == ("tests.workflow_jobs.work", ("a",), {"seconds": 0})
    assert sig.set(queue="critical").options == {"queue": "critical"}
    with pytest.raises(TypeError, match="JSON-native"):
        wj.work.s(object())
    with pytest.raises(TypeError, match="unknown option"):
        sig.set(colour="blue")
    with pytest.raises(TypeError, match="signature"):
        batch(on_success=wj.ledger)


def test_a_jobs_lineage_is_read_only_from_well_formed_bids(monkeypatch):
    """The worker reads a job's batch from its hash (from Redis): junk means no batch, never a
    key built from it; an un-nested batch's lineage is remembered per bid, up to a bound."""
    from django_kiq import batches

    assert batches.lineage_of({"bid": "abc"}) == ("abc",)
    assert batches.lineage_of({"bid": "abc"}) is batches.lineage_of({"bid": "abc"})
    for junk in ("", "a b", "x" * 65, "k:*", 5, None, ["a"], {"a": 1}):
        assert batches.lineage_of({"bid": junk}) == ()
        assert batches.lineage_of({"bid": junk, "kiq_parent_bids": ["p"]}) == ()
    assert batches.lineage_of({"bid": "a", "kiq_parent_bids": ["p", "g"]}) == ("a", "p", "g")
    assert batches.lineage_of({"bid": "a", "kiq_parent_bids": ["p q"]}) == ("a",)
    assert batches.lineage_of({"bid": "a", "kiq_parent_bids": "p"}) == ("a",)
    monkeypatch.setattr(batches, "_known", {})
    monkeypatch.setattr(batches, "_KNOWN_MAX", 10)
    for i in range(25):
        assert batches.lineage_of({"bid": f"b{i}"}) == (f"b{i}",)
        assert len(batches._known) <= 10


@pytest.mark.parametrize(("name", "kind", "count"), [
    ("noop", "done", "s"), ("fail", "retry", "f"), ("fail_to_dead", "dead", "d"),
    ("fail_no_retry", "discard", "f"),
])
def test_each_outcome_of_a_batch_job_carries_its_count(name, kind, count):
    """A batch job keeping no result takes the processor's lean path (its success count built
    before it runs); every other outcome is still counted as on_outcome says."""
    from django_kiq import payload
    from django_kiq.conf import get_settings
    from django_kiq.stats import Counters
    from django_kiq.worker.processor import Processor

    settings = get_settings()
    job = getattr(jobs, name).s().job_hash(settings=settings, lineage=("b1", "p1"), jid="j1")
    raw = payload.encode(job)
    outcome = Processor(settings=settings, counters=Counters()).process("default", raw, "t")
    assert (outcome.kind, outcome.result) == (kind, None)
    assert tuple(outcome.batch) == (("b1", "p1"), "j1", count, settings.batch_ttl)
    unique = payload.encode({**job, "class": jobs.noop.name, "kiq_unique": "k",
                             "kiq_unique_for": 60})
    done = Processor(settings=settings, counters=Counters()).process("default", unique, "t")
    assert (done.kind, done.batch.outcome, done.jid) == ("done", "s", "j1")


def test_jobs_enqueued_in_the_block_join_the_batch_atomically(redis_client):
    with batch(description="three", on_success=wj.ledger.s("s")) as b:
        jids = [wj.work.enqueue(f"t{i}") for i in range(3)]
        wj.work.enqueue_in(60, "later")
    outside = wj.work.enqueue("outside")
    status = api.Batch(b.bid)
    assert (status.description, status.total, status.pending, status.sealed) == (
        "three", 4, 4, True)
    assert set(jids) < set(status.pending_jids())
    assert outside not in status.pending_jids()
    queued = api.Queue("default").find(jids[0])
    assert queued.fields["bid"] == b.bid


@pytest.mark.parametrize("path", ["multi", "script"])
def test_one_push_of_many_runs_keeps_every_jobs_place_and_membership(store, redis_client,
                                                                     path, monkeypatch):
    """A call's jobs go as runs (consecutive pushes to one queue, or to the schedule set), in
    one MULTI on a single Redis ("multi") or through batch.lua ("script": Redis Cluster, and
    calls that create or seal the batch too): pushes to two queues and the schedule set,
    interleaved, keep their order in each queue, their scores, and all join pending; a run
    longer than one LPUSH's 1,000 too."""
    from django_kiq.storage import BatchPush

    if path == "script":
        monkeypatch.setattr(store, "multi_spans_queues", False)
    with batch(description="runs") as b:
        pass  # an empty sealed batch to push into
    now = time.time()
    plan = ([("a", None)] * 3 + [("b", None)] * 2 + [("", now + 60)] * 2 + [("a", None)] * 1205
            + [("", now + 90)])
    pushes = [BatchPush(f"j{i:05d}", f"p{i}".encode(), queue, at)
              for i, (queue, at) in enumerate(plan)]
    assert store.batch_write(b.bid, ttl=60, jobs=pushes)
    queue_a = [raw.decode() for raw in reversed(redis_client.lrange("queue:a", 0, -1))]
    assert queue_a == [f"p{i}" for i, (q, _) in enumerate(plan) if q == "a"]  # oldest first
    assert [raw.decode() for raw in reversed(redis_client.lrange("queue:b", 0, -1))] == [
        "p3", "p4"]
    assert redis_client.zrange("schedule", 0, -1, withscores=True) == [
        (b"p5", pytest.approx(now + 60)), (b"p6", pytest.approx(now + 60)),
        (f"p{len(plan) - 1}".encode(), pytest.approx(now + 90))]
    assert {b"a", b"b"} <= redis_client.smembers("queues")
    status = api.Batch(b.bid)
    assert status.total == status.pending == len(plan)
    assert redis_client.scard(f"kiq:batch:{b.bid}:pending") == len(plan)


# -- callbacks --------------------------------------------------------------------------------

def test_success_and_complete_fire_once_after_the_last_job(redis_client, worker_factory):
    with batch(on_success=wj.ledger.s("success"), on_complete=wj.ledger.s("complete"),
               on_death=wj.ledger.s("death")) as b:
        for i in range(20):
            wj.work.enqueue(f"j{i}")
    _start(worker_factory, "-c", "4")
    wait_for(lambda: _ledger(redis_client).get("success"), timeout=20)
    time.sleep(1.0)
    assert _ledger(redis_client) == {"success": 1, "complete": 1}
    assert redis_client.hget("test:ledger:bid", "success").decode() == b.bid
    status = api.Batch(b.bid)
    assert status.complete and status.succeeded and status.pending == 0
    assert status.callbacks["success"]["fired_at"] is not None
    assert 0 < redis_client.ttl(f"kiq:batch:{b.bid}") <= 30 * 24 * 3600


def test_a_dead_job_fires_complete_and_death_once_never_success(redis_client, worker_factory):
    with batch(on_success=wj.ledger.s("success"), on_complete=wj.ledger.s("complete"),
               on_death=wj.ledger.s("death")) as b:
        for i in range(5):
            wj.work.enqueue(f"ok{i}")
        wj.fail.set(dead=True).enqueue("bad")
        wj.fail.set(retry=0).enqueue("bad2")  # retry=0 with dead=True: dead at once too
    _start(worker_factory, "-c", "2")
    wait_for(lambda: _ledger(redis_client).get("complete"), timeout=20)
    time.sleep(1.0)
    assert _ledger(redis_client) == {"complete": 1, "death": 1}
    status = api.Batch(b.bid)
    assert status.complete and not status.succeeded
    assert (status.pending, status.failures, status.dead) == (2, 2, 2)


def test_an_empty_batch_succeeds_when_sealed(redis_client, worker_factory):
    with batch(on_success=wj.ledger.s("empty")):
        pass
    _start(worker_factory, "-c", "1")
    wait_for(lambda: _ledger(redis_client).get("empty"), timeout=20)


def test_a_job_adds_jobs_to_its_own_batch(redis_client, worker_factory):
    with batch(on_success=wj.ledger.s("grown")) as b:
        wj.spawn_more.enqueue("kid", 5)
    _start(worker_factory, "-c", "2")
    wait_for(lambda: _ledger(redis_client).get("grown"), timeout=20)
    assert all(_runs(redis_client, f"kid-{i}") == 1 for i in range(5))
    assert api.Batch(b.bid).total == 6


def test_nested_batches_count_as_one_job_until_their_callbacks_ran(redis_client,
                                                                    worker_factory):
    with batch(description="outer", on_success=wj.ledger.s("outer")) as outer:
        wj.work.enqueue("o1")
        with batch(description="inner", on_success=wj.ledger.s("inner")) as inner:
            wj.work.enqueue("i1", 0.3)
            wj.work.enqueue("i2", 0.3)
    assert api.Batch(inner.bid).parent == outer.bid
    assert f"b:{inner.bid}" in api.Batch(outer.bid).pending_jids()
    _start(worker_factory, "-c", "4")
    wait_for(lambda: _ledger(redis_client).get("outer"), timeout=20)
    at = {k.decode(): float(v) for k, v in redis_client.hgetall("test:ledger:at").items()}
    assert at["inner"] <= at["outer"]  # the inner callback ran before the outer succeeded
    assert _ledger(redis_client) == {"inner": 1, "outer": 1}
    assert api.Batch(outer.bid).total == 3  # o1, the inner batch, the inner's callback


def test_a_callback_that_fails_and_retries_fires_once_and_holds_its_parent(redis_client,
                                                                          worker_factory):
    with batch(description="outer", on_success=wj.ledger.s("outer")) as outer:
        with batch(description="inner", on_success=wj.flaky_ledger.s("inner")) as inner:
            wj.work.enqueue("i1")
    worker = _start(worker_factory, "-c", "2")
    wait_for(lambda: _ledger(redis_client).get("outer"), timeout=20, message=worker.output)
    time.sleep(1.0)  # a second firing would be on its way by now
    assert int(redis_client.hget("test:attempts", "inner")) == 2  # failed once, then retried
    assert _ledger(redis_client) == {"inner": 1, "outer": 1}
    at = {k.decode(): float(v) for k, v in redis_client.hgetall("test:ledger:at").items()}
    assert at["inner"] <= at["outer"]  # the parent waited for the retried callback
    fired = api.Batch(inner.bid).callbacks["success"]
    assert fired["fired_at"] is not None
    assert redis_client.zcard("retry") == 0 and redis_client.zcard("dead") == 0
    assert api.Batch(outer.bid).succeeded


# -- chains and groups ------------------------------------------------------------------------

def test_a_chain_runs_in_order_passing_results(redis_client, worker_factory):
    cid = chain(wj.step.s("", "a"), wj.step.s("b"), wj.step.s("c"), pass_result=True).enqueue()
    _start(worker_factory, "-c", "4")
    wait_for(lambda: redis_client.llen("test:order") == 3, timeout=20)
    assert [x.decode() for x in redis_client.lrange("test:order", 0, -1)] == ["a", "b", "c"]
    from django_kiq import canvas, results

    final = results.get(canvas.step_jid(cid, 2)).wait(timeout=10)
    assert final.value == "abc"


def test_a_chain_stops_at_a_dead_step(redis_client, worker_factory):
    cid = chain(wj.step.s("", "a"), wj.fail.s("boom"), wj.step.s("", "never")).enqueue()
    _start(worker_factory, "-c", "2")
    wait_for(lambda: _runs(redis_client, "boom") == 1, timeout=20)
    time.sleep(1.5)
    assert [x.decode() for x in redis_client.lrange("test:order", 0, -1)] == ["a"]
    stopped = api.Batch(f"{cid}.1")
    assert stopped.complete and not stopped.succeeded and stopped.dead == 1
    assert not api.Batch(f"{cid}.2").exists


def test_a_chords_callback_gets_every_result_in_order(redis_client, worker_factory):
    bid = group(*[wj.double.s(i) for i in range(10)]).enqueue(
        then=wj.collect.s(label="chord"), pass_results=True)
    _start(worker_factory, "-c", "4")
    wait_for(lambda: _ledger(redis_client).get("chord"), timeout=20)
    assert redis_client.get("test:collected:chord").decode() == repr([2 * i for i in range(10)])
    assert api.Batch(bid).succeeded


def test_a_chords_callback_runs_with_its_own_jobs_options(redis_client):
    """The ``then`` of a group runs inside run_signature, with the options of then's job (its
    result TTL, a queue set on the signature...) and its name shown as the job's."""
    import json

    bid = group(wj.double.s(1)).enqueue(then=wj.step.s("x").set(queue="reports", retry=2),
                                        pass_results=True)
    callback = json.loads(redis_client.hget(f"kiq:batch:{bid}", "cb_success"))
    assert callback["class"] == "django_kiq.canvas.run_signature"
    assert callback["display_class"] == wj.step.name
    assert (callback["queue"], callback["retry"], callback["kiq_result_ttl"]) == (
        "reports", 2, 600)


def test_workflow_results_are_there_before_their_jobs_run(redis_client, worker_factory):
    """A callback keeping its result reads "scheduled" from the seal (kept as long as the
    batch), a group's members and a chain's first step "queued": results.get() and wait()
    find them before they run, and the callback's result after."""
    from django_kiq import canvas, results

    with batch(description="summarised", on_success=wj.summary.s()) as b:
        wj.work.enqueue("x")
    summary_jid = api.Batch(b.bid).callbacks["success"]["jid"]
    waiting = results.get(summary_jid)
    assert waiting.status == "scheduled" and not waiting.finished
    assert redis_client.ttl(f"kiq:result:{summary_jid}") > 29 * 24 * 3600
    bid = group(wj.double.s(1), wj.double.s(2)).enqueue(then=wj.collect.s(), pass_results=True)
    members = api.Batch(bid).pending_jids()
    assert [results.get(jid).status for jid in members] == ["queued", "queued"]
    cid = chain(wj.double.s(3), wj.double.s(), pass_result=True).enqueue()
    assert results.get(canvas.step_jid(cid, 0)).status == "queued"
    _start(worker_factory, "-c", "4")
    assert waiting.wait(timeout=20).value == {"total": 1, "failures": 0}
    second = wait_for(lambda: results.get(canvas.step_jid(cid, 1)), timeout=20)
    assert second.wait(timeout=20).value == 12  # its record exists once step 1 started it


def test_a_job_settled_twice_counts_once(store, redis_client):
    """Two runs of one jid (recovered after it ran, before its settle was known) settle in
    two steps: the second finds the jid gone from pending and changes nothing."""
    from django_kiq import storage

    with batch(on_success=wj.ledger.s("once")) as b:
        jid = wj.work.enqueue("x")
    raw = redis_client.lpop("queue:default")
    redis_client.rpush("kiq:wip:p1", raw, raw)
    mark = storage.BatchMark(bids=(b.bid,), member=jid, outcome="s", ttl=60)
    assert store.settle("p1", [storage.Settle(kind="x", old=raw, batch=mark)]) == [1]
    assert store.settle("p1", [storage.Settle(kind="x", old=raw, batch=mark)]) == [1]
    assert redis_client.zcard("schedule") == 1  # the callback, pushed once
    assert api.Batch(b.bid).succeeded


def test_lean_batch_entries_answer_in_order_and_count_once(store, redis_client):
    """Done jobs whose only cleanup is their batch success go in settle.lua's batch groups
    (their batch's keys once, per job its payload and jid), mixed with ordinary entries: each
    flag answers for its own entry, and a job already settled (not in the in-progress list)
    is not counted."""
    from django_kiq import storage

    with batch(on_success=wj.ledger.s("lean")) as b:
        jids = wj.work.enqueue_many([("a",), ("b",), ("c",)])
    raws = [redis_client.rpop("queue:default") for _ in jids]
    redis_client.lpush("kiq:wip:p2", raws[0], raws[1], b"plain")
    marks = [storage.BatchMark(bids=(b.bid,), member=jid, outcome="s", ttl=60) for jid in jids]
    entries = [storage.Succeeded(raws[0], marks[0]), storage.Settle(kind="x", old=b"plain"),
               storage.Succeeded(raws[2], marks[2]),  # not in progress: neither moved nor counted
               storage.Settle(kind="x", old=raws[1], batch=marks[1])]
    assert store.settle("p2", entries) == [1, 1, 0, 1]
    assert redis_client.llen("kiq:wip:p2") == 0
    assert api.Batch(b.bid).pending == 1 and redis_client.zcard("schedule") == 0
    redis_client.lpush("kiq:wip:p2", raws[2], raws[0])  # the third, and a repeat of the first
    assert store.settle("p2", entries[:1] + entries[2:3]) == [1, 1]
    assert api.Batch(b.bid).succeeded and redis_client.zcard("schedule") == 1


def test_aenqueue_joins_the_enclosing_batch(redis_client):
    import asyncio

    async def enqueue():
        with batch(description="async") as b:
            jid = await wj.work.aenqueue("a1")
            jids = await wj.work.aenqueue_many([("a2",), ("a3",)])
        return b, [jid, *jids]

    b, jids = asyncio.run(enqueue())
    status = api.Batch(b.bid)
    assert (status.total, status.pending, status.sealed) == (3, 3, True)
    assert sorted(status.pending_jids()) == sorted(jids)
    assert api.Queue("default").find(jids[0]).fields["bid"] == b.bid


def _in_progress(redis_client, identity):
    """Move the one queued job into ``identity``'s in-progress list (as a fetch would)."""
    raw = redis_client.rpop("queue:default")
    redis_client.rpush(f"kiq:wip:{identity}", raw)
    return raw


def _assert_dead_in_batch(redis_client, bid, jid):
    status = api.Batch(bid)
    assert (status.dead, status.failures, status.complete, status.succeeded) == (1, 1, True, False)
    assert status.dead_jids() == [jid]
    assert redis_client.zcard("schedule") == 2  # on_death and on_complete, each pushed once


@pytest.mark.parametrize("path", ["recovery", "cutoff"])
def test_a_poison_pill_counts_dead_in_its_batch(store, redis_client, path):
    """Orphan recovery's and a shutdown cutoff's poison limit send a batch job dead in the
    settle step that counts it: on_death and on_complete fire, once."""
    from django_kiq import payload
    from django_kiq.worker.fetcher import plan_cutoff, plan_recovery

    with batch(on_death=wj.ledger.s("death"), on_complete=wj.ledger.s("complete")) as b:
        jid = wj.work.enqueue("pill")
    raw = _in_progress(redis_client, "p2")
    if path == "recovery":
        entries = plan_recovery([raw], identity="p2", poison_limit=1, now=time.time())
    else:
        entries = plan_cutoff([("default", raw)], identity="p2", poison_limit=1,
                              now=time.time())
    assert entries[0].kind == "d" and entries[0].batch.outcome == "d"
    assert store.settle("p2", entries) == [1]
    assert store.settle("p2", entries) == [0]  # a second recovery pass changes nothing
    _assert_dead_in_batch(redis_client, b.bid, jid)
    assert payload.decode(redis_client.zrange("dead", 0, 0)[0])["error_class"] == (
        "django_kiq.PoisonJob")


def test_the_last_resort_counts_dead_in_its_batch(store, redis_client):
    """A job whose outcome the processor could not handle goes dead through last_resort():
    counted in its batch too (and its result, if it keeps one, says failed)."""
    from django_kiq.conf import get_settings
    from django_kiq.stats import Counters
    from django_kiq.worker.manager import Manager
    from django_kiq.worker.processor import Processor

    with batch(on_death=wj.ledger.s("death"), on_complete=wj.ledger.s("complete")) as b:
        jid = wj.work.set(result_ttl=60).enqueue("broken")
    raw = _in_progress(redis_client, "p3")
    outcome = Processor(settings=get_settings(), counters=Counters()).last_resort(
        "default", raw, RuntimeError("boom"))
    assert store.settle("p3", [Manager._settle_entry(outcome)]) == [1]
    _assert_dead_in_batch(redis_client, b.bid, jid)
    from django_kiq import results

    assert results.get(jid).status == "failed"


# -- the proof: exactly once under SIGKILL --------------------------------------------------------

def test_a_1000_job_batch_under_sigkill_fires_success_exactly_once(redis_client,
                                                                    worker_factory):
    with batch(description="chaos", on_success=wj.ledger.s("success"),
               on_complete=wj.ledger.s("complete")) as b:
        wj.work.enqueue_many([(f"c{i}", 0.04) for i in range(1000)])
    env = {"KIQ_POISON_LIMIT": "100"}
    steady = _start(worker_factory, "-c", "5", **env)
    victim = _start(worker_factory, "-c", "5", **env)
    kills = 0
    deadline = time.monotonic() + 40
    rng = random.Random(13)
    while not _ledger(redis_client).get("success") and time.monotonic() < deadline:
        time.sleep(rng.uniform(1.0, 2.0))
        if _ledger(redis_client).get("success"):
            break
        victim.send(signal.SIGKILL)
        victim.wait(5)
        kills += 1
        victim = _start(worker_factory, "-c", "5", **env)
    wait_for(lambda: _ledger(redis_client).get("success"), timeout=5,
             message=steady.output)
    time.sleep(1.0)  # a second firing would be on its way by now
    assert kills >= 3
    assert _ledger(redis_client) == {"success": 1, "complete": 1}
    runs = [int(v) for v in redis_client.hgetall("test:runs").values()]
    assert len(runs) == 1000  # every job ran
    starts = [int(v) for v in redis_client.hgetall("test:starts").values()]
    assert max(starts) >= 2  # some were cut off by a kill and ran again after recovery
    success_at = float(redis_client.hget("test:ledger:at", "success"))
    status = api.Batch(b.bid)
    assert status.succeeded and status.pending == 0 and status.total == 1000
    assert status.succeeded_at <= success_at


def test_done_batch_jobs_settle_with_the_fetchers_pass_or_at_stop(store, redis_client):
    """A finished batch job is not settled on the processor thread: its entry waits (the job
    still in progress) for the fetcher's next pass, sent with the fetch in one round trip, or
    for stop(), which flushes it with the acknowledgements."""
    from django_kiq.conf import get_settings
    from django_kiq.stats import Counters
    from django_kiq.worker.fetcher import Fetcher, QueueOrder
    from django_kiq.worker.manager import Manager
    from django_kiq.worker.processor import Processor

    with batch(on_success=wj.ledger.s("s")) as b:
        wj.work.enqueue_many([("m1",), ("m2",)])
    fetcher = Fetcher(store, "h:5:b", QueueOrder([("default", 1)], True))
    manager = Manager(store=store, fetcher=fetcher, concurrency=1, queues=["default"],
                      processor=Processor(settings=get_settings(), counters=Counters()))
    (q1, raw1), (q2, raw2) = fetcher.fetch(2, [])
    for name, queue, raw in (("t1", q1, raw1), ("t2", q2, raw2)):
        manager._running[name] = (queue, raw, time.time(), 0)
        manager._finish(name, queue, manager.processor.process(queue, raw, name), 0.001)
    assert len(manager._done) == 2 and not manager._acks
    assert redis_client.llen("kiq:wip:h:5:b") == 2 and api.Batch(b.bid).pending == 2
    fetcher.fetch(0, [], manager._done[:1])  # the fetcher's pass: settle + fetch
    assert redis_client.llen("kiq:wip:h:5:b") == 1 and api.Batch(b.bid).pending == 1
    manager._done[:1] = []
    manager.stop(time.monotonic())  # flushes what is left
    assert redis_client.llen("kiq:wip:h:5:b") == 0
    status = api.Batch(b.bid)
    assert status.succeeded and status.pending == 0 and redis_client.zcard("schedule") == 1
