"""Redis Cluster mode (storage/cluster.py): a real local cluster, real worker subprocesses.

A session-scoped fixture starts 6 ``redis-server`` nodes (3 masters with a replica each,
tests/redis_cluster.py) and stops them by PID at the end; the failover test starts a cluster of
its own, since it kills a master. Jobs (tests/cluster_jobs.py) record every run in a ledger on
the test's own Redis DB, which never fails over, so runs, lost and duplicated jobs are counted
exactly. Queues "default", "critical" and "low" hash to the three different masters.
"""

from __future__ import annotations

import json
import signal
import time

import pytest
import redis
from django.conf import settings
from django.core.checks import Error
from django.test import override_settings

from django_kiq import api, results, storage
from django_kiq.checks import check_settings
from django_kiq.storage import Settle
from django_kiq.storage.cluster import ClusterStorage
from django_kiq.storage.keys import ClusterKeys, Keys
from tests import cluster_jobs
from tests.conftest import wait_for
from tests.redis_cluster import available, local_cluster

pytestmark = pytest.mark.skipif(available() is not None, reason=str(available()))
QUEUES = ("default", "critical", "low")


@pytest.fixture(scope="session")
def cluster(tmp_path_factory):
    with local_cluster(tmp_path_factory.mktemp("redis-cluster")) as c:
        yield c


def _kiq(cluster) -> dict:
    return {**settings.KIQ, "REDIS_CLUSTER_URL": cluster.url, "IMPORTS": ["tests.cluster_jobs"],
            "ENQUEUE_ON_COMMIT": False}


@pytest.fixture
def store(cluster, redis_client):
    """The cluster, emptied, as the default storage; ``redis_client`` (the ledger) emptied too."""
    cluster.flush()
    with override_settings(KIQ=_kiq(cluster)):
        current = storage.get_default()
        assert isinstance(current, ClusterStorage)
        yield current
    storage.reset_default()


@pytest.fixture
def start_worker(cluster, worker_factory, redis_url):
    def start(*args: str, env: dict[str, str] | None = None):
        return worker_factory("-c", "5", *(a for q in QUEUES for a in ("-q", q)), *args, env={
            "KIQ_REDIS_CLUSTER_URL": cluster.url, "KIQ_TEST_LEDGER_URL": redis_url,
            "KIQ_IMPORTS": "tests.cluster_jobs", **(env or {})})
    return start


def runs(ledger: redis.Redis, tokens) -> dict[str, int]:
    pipe = ledger.pipeline(transaction=False)
    for token in tokens:
        pipe.scard(f"ledger:{token}")
    return dict(zip(tokens, pipe.execute()))


def all_ran(ledger, tokens) -> bool:
    return all(runs(ledger, tokens).values())


# -- key layout -------------------------------------------------------------------------------

def test_each_queue_has_one_slot_and_the_rest_shares_another(cluster):
    from redis.crc import key_slot

    keys = ClusterKeys()
    for queue in QUEUES:
        own = {key_slot(k.encode()) for k in (
            keys.queue(queue), keys.queue_wip("host:1:abc", queue), keys.queue_paused(queue),
            keys.queue_trash(queue, "t"))}
        assert len(own) == 1, queue
        assert keys.queue_of(keys.queue(queue)) == queue
    shared = {key_slot(k.encode()) for k in (
        keys.schedule, keys.retry, keys.dead, keys.queues, keys.processes, keys.stat("processed"),
        keys.process("host:1:abc"), keys.wip("host:1:abc", "sched"), keys.unique("d"),
        keys.limit("x"), keys.batch("b"), keys.job_result("j"), keys.outbox("default"),
        keys.settling("host:1:abc"), keys.wip_queues("host:1:abc"), keys.periodic_state())}
    assert len(shared) == 1
    masters = {cluster.master_of(keys.queue(q)) for q in QUEUES}
    assert len(masters) == 3, "the three test queues must live on three different masters"
    # Single-Redis mode keeps Sidekiq's names, untouched.
    assert Keys().queue("default") == "queue:default" and Keys().schedule == "schedule"
    assert ClusterKeys("app").queue("default") == "{app:q:default}queue:default"


@pytest.mark.parametrize("kiq, error_id", [
    ({"REDIS_CLUSTER_URL": "127.0.0.1:7000"}, "django_kiq.E040"),
    ({"REDIS_CLUSTER_NODES": [("127.0.0.1", "7000")]}, "django_kiq.E041"),
    ({"REDIS_CLUSTER_URL": "redis://127.0.0.1:7000",
      "REDIS_SENTINELS": [("127.0.0.1", 26379)], "REDIS_SENTINEL_MASTER": "m"}, "django_kiq.E042"),
    ({"REDIS_CLUSTER_URL": "redis://127.0.0.1:7000/3"}, "django_kiq.E043"),
])
def test_cluster_settings_are_checked(kiq, error_id):
    with override_settings(KIQ=kiq):
        errors = [e for e in check_settings() if isinstance(e, Error)]
    assert [e.id for e in errors] == [error_id], errors


@pytest.mark.parametrize("url", ["redis://127.0.0.1:7000", "redis://127.0.0.1:7000/",
                                 "redis://:pw@10.0.0.1:7000/0",
                                 "rediss://h:7000?ssl_cert_reqs=none"])
def test_good_cluster_urls_pass_the_checks(url):
    with override_settings(KIQ={"REDIS_CLUSTER_URL": url,
                                "REDIS_CLUSTER_NODES": [("10.0.0.2", 7000)]}):
        assert [e for e in check_settings() if isinstance(e, Error)] == []


# -- end to end with workers ------------------------------------------------------------------

def test_enqueue_fetch_run_on_three_shards(store, start_worker, redis_client):
    tokens = {q: [f"{q}-{i}" for i in range(30)] for q in QUEUES}
    cluster_jobs.run.enqueue_many([(t,) for t in tokens["default"]])
    cluster_jobs.run_critical.enqueue_many([(t,) for t in tokens["critical"]])
    for t in tokens["low"]:
        cluster_jobs.run_low.delay(t)
    assert store.queue_size("low") == 30
    worker = start_worker()
    every = [t for ts in tokens.values() for t in ts]
    wait_for(lambda: all_ran(redis_client, every), timeout=30, message=worker.output)
    assert set(runs(redis_client, every).values()) == {1}
    wait_for(lambda: api.Stats().processed >= 90, timeout=10)
    assert all(store.queue_size(q) == 0 for q in QUEUES)
    assert sorted(store.queue_names()) == sorted(QUEUES)
    worker.send(signal.SIGTERM)
    assert worker.wait(timeout=20) == 0, worker.output()
    assert store.orphans() == [] and store.in_progress() == []
    assert "Traceback" not in worker.output(), worker.output()


def test_retries_dead_scheduled_and_retry_now(store, start_worker, redis_client):
    cluster_jobs.fail_twice.delay("f")
    cluster_jobs.fail_to_dead.delay("d")
    at = time.time() + 1.0
    cluster_jobs.run_low.enqueue_at(at, "s")
    worker = start_worker()
    # fail_twice: retried through the retry set twice by the poller, then succeeds.
    wait_for(lambda: all_ran(redis_client, ["f:1", "f:2", "f:3", "d", "s"]), timeout=30,
             message=worker.output)
    assert store.set_size("retry") == 0
    wait_for(lambda: store.set_size("dead") == 1, timeout=5)
    assert redis_client.smembers("ledger:s") and time.time() >= at
    # Retry now from the dead set (set_requeue_batch.lua through the queue's outbox).
    assert api.DeadSet().retry_all() == 1
    wait_for(lambda: runs(redis_client, ["d"])["d"] == 2, timeout=15, message=worker.output)
    wait_for(lambda: store.set_size("dead") == 1, timeout=5)
    assert store.client.llen(store.keys.outbox("default")) == 0
    worker.send(signal.SIGTERM)
    assert worker.wait(timeout=20) == 0, worker.output()
    assert "Traceback" not in worker.output(), worker.output()


def test_jobs_of_a_killed_worker_are_recovered(store, start_worker, redis_client):
    tokens = [f"k{i}" for i in range(15)]
    cluster_jobs.run.enqueue_many([(t, 2.0) for t in tokens[:5]])
    cluster_jobs.run_critical.enqueue_many([(t, 2.0) for t in tokens[5:10]])
    cluster_jobs.run_low.enqueue_many([(t, 2.0) for t in tokens[10:]])
    first = start_worker(env={"KIQ_PROCESS_TTL": "2", "KIQ_HEARTBEAT_INTERVAL": "0.5"})
    wait_for(lambda: len(store.in_progress()) >= 5, timeout=15, message=first.output)
    first.send(signal.SIGKILL)
    first.wait(timeout=10)
    held = store.in_progress()
    assert held, "the killed worker held no job"
    second = start_worker("-c", "15", env={"KIQ_PROCESS_TTL": "2",
                                           "KIQ_HEARTBEAT_INTERVAL": "0.5"})
    try:
        wait_for(lambda: all_ran(redis_client, tokens), timeout=40)
    except AssertionError:
        raise AssertionError((runs(redis_client, tokens), second.output())) from None
    # Jobs record their run after sleeping: a killed run recorded nothing, so each ran once.
    assert set(runs(redis_client, tokens).values()) == {1}, (runs(redis_client, tokens),
                                                              first.output(), second.output())
    assert "recovered" in second.output(), second.output()
    try:
        wait_for(lambda: store.in_progress() == [] and store.orphans() == [], timeout=10)
    except AssertionError:
        raise AssertionError((store.in_progress(), store.orphans(), second.output())) from None
    second.send(signal.SIGTERM)
    assert second.wait(timeout=20) == 0, second.output()


def test_unique_jobs_limits_a_batch_and_a_result(store, start_worker, redis_client):
    from django_kiq.batches import BatchStatus, batch

    first = cluster_jobs.unique_run.delay("u", 1.0)
    assert first is not None
    assert cluster_jobs.unique_run.delay("u", 1.0) is None  # the lock holds: dropped
    cluster_jobs.capped.enqueue_many([(f"c{i}", 0.2) for i in range(8)])
    with batch(description="cluster", on_success=cluster_jobs.run_low.s("batch-done")) as b:
        cluster_jobs.run.enqueue_many([(f"b{i}",) for i in range(5)])
        cluster_jobs.run_critical.delay("b5")
    added = cluster_jobs.add.delay(2, 3)
    workers = [start_worker(), start_worker()]
    members = [f"b{i}" for i in range(6)]
    every = ["u", *(f"c{i}" for i in range(8)), *members, "batch-done"]
    try:
        wait_for(lambda: all_ran(redis_client, every), timeout=30)
    except AssertionError:
        raise AssertionError((runs(redis_client, every),
                              "\n".join(w.output() for w in workers))) from None
    assert set(runs(redis_client, every).values()) == {1}
    assert int(redis_client.get("capped:max")) <= 2
    # The lock went with the success (settle's global step): the same job is accepted again.
    wait_for(lambda: cluster_jobs.unique_run.delay("u", 1.0) is not None, timeout=5)
    wait_for(lambda: runs(redis_client, ["u"])["u"] == 2, timeout=15)
    result = results.get(added).wait(timeout=10)  # written in the settle's global step
    assert (result.status, result.value) == ("succeeded", 5), result
    status = BatchStatus(b.bid)
    assert status.pending == 0 and status.total == 6, status
    for worker in workers:
        worker.send(signal.SIGTERM)
    for worker in workers:
        assert worker.wait(timeout=20) == 0, worker.output()
        assert "Traceback" not in worker.output(), worker.output()


def test_cron_fire_and_queue_admin_verbs(store):
    raw = b'{"class":"tests.cluster_jobs.run","args":["cron"],"jid":"c1","queue":"low"}'
    assert store.periodic_fire(name="every", tick=1000.0, identity="me", claim_ttl=60,
                               queue="low", raw=raw, jid="c1", now=1000.0) == 1
    assert store.periodic_fire(name="every", tick=1000.0, identity="other", claim_ttl=60,
                               queue="low", raw=raw, jid="c1", now=1000.0) == 0
    assert store.queue_range("low", 0, -1) == [raw]
    assert store.client.llen(store.keys.outbox("low")) == 0
    cluster_jobs.run.enqueue_many([(f"a{i}",) for i in range(3)])
    queue = api.Queue("default")
    assert queue.size() == 3
    assert queue.delete(queue.jobs()[0]) is True
    assert queue.size() == 2
    queue.pause()
    assert api.Queue("default").paused
    assert store.fetch("me", ["default"], 5) == ([], {"default"})
    queue.resume()
    assert len(store.fetch("me", ["default"], 1)[0]) == 1
    assert queue.clear() == 1 and queue.size() == 0
    assert "default" not in store.queue_names() or store.queue_size("default") == 0


def test_a_leftover_outbox_is_relayed_by_the_heartbeat_sweep(store):
    """A caller that died between a script and its relay left a job in an outbox: the next
    orphan pass of any worker pushes it to its queue."""
    store.client.sadd(store.keys.queues, "critical")
    store.client.lpush(store.keys.outbox("critical"), b'{"jid":"x","queue":"critical"}')
    store._next_sweep = 0.0
    assert store.orphans() == []
    assert store.queue_range("critical", 0, -1) == [b'{"jid":"x","queue":"critical"}']
    assert store.client.llen(store.keys.outbox("critical")) == 0


@pytest.mark.django_db
def test_admin_pages_read_a_cluster(store, admin_client):
    from django.urls import reverse

    cluster_jobs.run.enqueue_many([(f"a{i}",) for i in range(3)])
    cluster_jobs.run_critical.delay("c")
    cluster_jobs.run_low.enqueue_in(60, "later")
    store.add_dead(b'{"class":"x","jid":"dead1","queue":"low"}', time.time())
    for name, args in [("dashboard", []), ("stats", []), ("busy", []), ("queues", []),
                       ("queue", ["default"]), ("scheduled", []), ("retries", []),
                       ("dead", []), ("periodic", []), ("metrics", []), ("limits", []),
                       ("batches", [])]:
        response = admin_client.get(reverse(f"admin:django_kiq_{name}", args=args))
        assert response.status_code == 200, (name, response.content[:500])
    stats = api.Stats(queues=True)
    assert stats.enqueued == 4 and stats.scheduled_size == 1 and stats.dead_size == 1


def test_async_enqueue_takes_the_same_cluster_steps(store):
    import asyncio

    async def main():
        first = await cluster_jobs.run.aenqueue("a1")
        held = await cluster_jobs.unique_run.aenqueue("a2")
        again = await cluster_jobs.unique_run.aenqueue("a2")
        return first, held, again

    first, held, again = asyncio.run(main())
    assert first and held and again is None
    assert store.queue_size("default") == 2
    assert store.client.llen(store.keys.outbox("default")) == 0


def test_commands_spread_over_the_three_masters(cluster, store):
    """Jobs spread evenly over three queues on three masters: no master serves more than 45%
    of the run's commands (bench/cluster_spread.py measures the same at scale)."""
    from bench.cluster_spread import measure

    result = measure(cluster, jobs=3000, workers=1, concurrency=5)
    assert len(result["share"]) == 3
    assert max(result["share"].values()) <= 0.45, result


# -- failover under load ----------------------------------------------------------------------

def _replicate(cluster, ports) -> None:
    """The writes so far of the masters on ``ports`` reach their replicas: a write, then WAIT
    on that connection (WAIT covers everything up to the offset of its last write)."""
    from redis.crc import key_slot

    owners = {port: cluster.slots_of(port) for port in ports}
    for port, ranges in owners.items():
        with cluster.node(port) as client:
            slot_key = next(f"barrier{i}" for i in range(100_000)
                            if any(a <= key_slot(f"barrier{i}".encode()) <= b for a, b in ranges))
            client.set(slot_key, "1")
            assert client.wait(1, 5000) >= 1, f"master {port}'s replica did not catch up"


def _enqueue(tokens, deadline=30.0) -> None:
    """Push, retrying while the producer's client finds the new topology (EnqueueError: the
    push did not happen, or did partly: a retry may duplicate, never lose)."""
    from django_kiq import EnqueueError

    end = time.monotonic() + deadline
    for token in tokens:
        while True:
            try:
                [cluster_jobs.run, cluster_jobs.run_critical, cluster_jobs.run_low][
                    hash(token) % 3].delay(token, 0.01)
                break
            except EnqueueError:
                if time.monotonic() > end:
                    raise
                time.sleep(0.1)


def test_failover_of_a_master_under_load_loses_nothing(tmp_path, worker_factory, redis_client,
                                                       redis_url):
    """SIGKILL the master of queue "default" while two workers drain 600 jobs, enqueue 300
    more once its replica took over, then SIGKILL the master of the global slot (schedule,
    retry, processes, stats) with 50 scheduled jobs waiting there. Every job runs (ledger);
    duplicates are counted and printed. Writes acknowledged by a master but not yet replicated
    when it dies are lost with it (asynchronous replication, docs/reliability.md): the test
    waits for the replica (WAIT) before each kill, as the Sentinel test does, so that window
    holds only what the workers themselves did in the last moment (fetches and acks: replayed
    as duplicates, never lost)."""
    with local_cluster(tmp_path / "failover") as cluster:
        with override_settings(KIQ=_kiq(cluster)):
            storage.reset_default()
            victim = cluster.master_of(ClusterKeys().queue("default"))
            assert victim != cluster.master_of(ClusterKeys().schedule)
            before = [f"x{i}" for i in range(600)]
            after = [f"y{i}" for i in range(300)]
            _enqueue(before)
            _replicate(cluster, cluster.masters())
            env = {"KIQ_REDIS_CLUSTER_URL": cluster.url, "KIQ_TEST_LEDGER_URL": redis_url,
                   "KIQ_IMPORTS": "tests.cluster_jobs",
                   # Longer than a failover takes: no worker is taken for dead meanwhile.
                   "KIQ_PROCESS_TTL": "10", "KIQ_HEARTBEAT_INTERVAL": "1"}
            queues = [a for q in QUEUES for a in ("-q", q)]
            workers = [worker_factory("-c", "5", *queues, env=env) for _ in range(2)]
            wait_for(lambda: sum(runs(redis_client, before).values()) >= 100, timeout=30,
                     message="the workers did not start")
            cluster.kill(victim)  # SIGKILL under load: its replica is promoted
            wait_for(lambda: victim not in cluster.masters() and len(cluster.masters()) == 3,
                     timeout=30, message="no replica was promoted")
            cluster.wait_healthy()
            _enqueue(after)
            # Then the master of the global slot (schedule, retry, processes, stats) dies too,
            # with scheduled jobs waiting there.
            wait_for(lambda: all_ran(redis_client, after[:50]), timeout=30)
            later = [f"z{i}" for i in range(50)]
            for token in later:
                cluster_jobs.run_low.enqueue_in(1.0, token)
            second = cluster.master_of(ClusterKeys().schedule)
            _replicate(cluster, [second])
            cluster.kill(second)
            wait_for(lambda: len(cluster.masters()) == 3, timeout=30,
                     message="no replica was promoted")
            cluster.wait_healthy()
            every = before + after + later
            try:
                wait_for(lambda: all_ran(redis_client, every), timeout=60)
            except AssertionError:
                lost = [t for t, n in runs(redis_client, every).items() if not n]
                raise AssertionError((len(lost), lost[:20], workers[0].output()[-3000:])) \
                    from None
            for worker in workers:
                worker.send(signal.SIGTERM)
            for worker in workers:
                assert worker.wait(timeout=30) == 0, worker.output()
        storage.reset_default()
    counted = runs(redis_client, every)
    duplicates = {t: n - 1 for t, n in counted.items() if n > 1}
    print(f"cluster failover: {len(every)} jobs, lost 0, duplicates {sum(duplicates.values())}"
          f" ({sorted(duplicates)[:10]})")
    output = "".join(w.output() for w in workers)
    assert "Traceback" not in output, output
    # Duplicates come only from jobs in flight on the killed master: fetched there, or
    # acknowledged there, in the moment before the kill that its replica had not received.
    assert sum(duplicates.values()) <= 30, duplicates


def test_chains_and_chords_on_a_cluster(store, start_worker):
    """A chain passing results and a chord whose callback runs on another queue's shard: the
    step batches are created with their job through batch.lua and the queue's outbox."""
    from django_kiq import canvas, chain, group

    cid = chain(cluster_jobs.add.s(1, 2), cluster_jobs.add.s(10), cluster_jobs.add.s(100),
                pass_result=True).enqueue()
    bid = group(*(cluster_jobs.add.s(i, i) for i in range(1, 4))).enqueue(
        then=cluster_jobs.total.s(label="chord"), pass_results=True)
    chord_jid = api.Batch(bid).callbacks["success"]["jid"]
    assert results.get(chord_jid).status == "scheduled"
    worker = start_worker()
    try:
        last = wait_for(lambda: results.get(canvas.step_jid(cid, 2)), timeout=30)
        assert last.wait(timeout=20).value == 113  # (1 + 2) + 10, then + 100
        chord = results.get(chord_jid).wait(timeout=20)
    except (AssertionError, TimeoutError):
        raise AssertionError(worker.output()) from None
    assert chord.value == {"label": "chord", "sum": 12}
    assert store.client.llen(store.keys.outbox("critical")) == 0  # relayed


def test_cancel_a_queued_job_and_a_django_task(store):
    from django_kiq.cancellation import cancel
    from tests import djtasks

    jid = cluster_jobs.unique_run.delay("cancelled")
    assert cancel(jid) == "queue"
    assert store.queue_size("default") == 0
    assert api.Stats().cancelled == 1
    assert cluster_jobs.unique_run.delay("cancelled") is not None  # its lock went with it
    from django_kiq import batch

    with batch(description="cancel") as b:  # its result and batch count, on the {kiq} slot
        kept = cluster_jobs.run.set(result_ttl=60).enqueue("kept")
    assert cancel(kept) == "queue"
    assert results.get(kept).wait(timeout=1).status == "cancelled"
    assert (api.Batch(b.bid).failures, api.Batch(b.bid).complete) == (1, True)
    result = djtasks.send_mail.enqueue("a@example.com")
    assert store.queue_size("mail") == 1
    assert store.client.llen(store.keys.outbox("mail")) == 0
    assert result.id


def test_a_supervised_worker_runs_on_a_cluster(store, start_worker, redis_client):
    tokens = [f"p{i}" for i in range(60)]
    cluster_jobs.run.enqueue_many([(t,) for t in tokens])
    worker = start_worker("--processes", "2")
    wait_for(lambda: all_ran(redis_client, tokens), timeout=30, message=worker.output)
    worker.send(signal.SIGTERM)
    assert worker.wait(timeout=30) == 0, worker.output()
    output = worker.output()
    assert "Traceback" not in output and "could not recover" not in output, output


def test_django_tasks_keep_their_priority_order(store):
    from tests import djtasks

    low = djtasks.record_order.using(priority=-5).enqueue("low")
    high = djtasks.record_order.using(priority=5).enqueue("high")
    plain = djtasks.record_order.enqueue("plain")
    queue = api.Queue(djtasks.record_order.queue_name)
    order = [json.loads(r)["jid"] for r in reversed(store.queue_range(queue.name, 0, -1))]
    assert order == [high.id, plain.id, low.id]
    assert store.job_result(high.id) is not None
    leftovers = [k for k in store.client.scan_iter(match="*scratch*", target_nodes="primaries")]
    assert leftovers == []


def test_a_lane_whose_record_was_dropped_is_still_found(store):
    """A process taken for dead during a long pause had its lane record dropped by the peer
    that recovered it; lanes it fills before recording them again are still found."""
    store.push([("low", b'{"jid":"j","queue":"low"}')])
    jobs, _ = store.fetch("ghost:1:a", ["low"], 1)
    store.client.delete(store.keys.wip_queues("ghost:1:a"))
    assert store.wip_items("ghost:1:a") == [jobs[0][1]]
    assert store.unregister("ghost:1:a") == 1  # one job left: the registry entry stays
    assert store.settle("ghost:1:a", [Settle(kind="q", old=jobs[0][1], new=jobs[0][1],
                                             dest="low")]) == [1]
    assert store.queue_range("low", 0, -1) == [jobs[0][1]]
    assert store.unregister("ghost:1:a") == 0


def test_a_crash_inside_a_cross_slot_step_duplicates_never_loses(store):
    """The two windows of docs/reliability.md "Redis Cluster" a dead worker can leave: a settle
    whose global step ran but not its lane step, and a due job claimed by the poller but not yet
    pushed. Recovery (what a live worker's heartbeat runs) puts both back in their queues."""
    from django_kiq.worker.fetcher import recover_orphans

    dead = "gone:1:x"
    store.register(dead, "{}")
    store.push([("critical", b'{"jid":"r","queue":"critical","class":"x","args":[]}')])
    [(_, raw)] = store.fetch(dead, ["critical"], 1)[0]
    retry = Settle(kind="z", old=raw, new=raw.replace(b'"r"', b'"r","retry_count":0'),
                   dest="retry", score=time.time() + 3600)
    store._settle_effects(dead, [retry], "fetch", False, time.time())  # then the crash
    store.schedule([(time.time() - 1, b'{"jid":"s","queue":"low","class":"x","args":[]}')])
    assert store.claim_due("schedule", dead, None, 10)  # claimed, then the crash
    assert recover_orphans(store, poison_limit=3) == 2
    assert store.set_size("retry") == 1  # the retry entry stays: the job may run twice
    assert [json.loads(r)["jid"] for r in store.queue_range("critical", 0, -1)] == ["r"]
    assert [json.loads(r)["jid"] for r in store.queue_range("low", 0, -1)] == ["s"]
    assert store.in_progress() == [] and store.orphans() == []
