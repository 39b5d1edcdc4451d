"""Deleting or killing a job of a batch through the API counts it as dead in its batch
(docs/workflows.md, "Deletes and kills"): the batch completes and its callbacks fire once.

No worker runs here: a callback that fires is pushed to the schedule set, due now, so the
tests count callback members there (and read the batch's own flags) instead of running them.
"""

import time

import pytest

from django_kiq import api, batch
from tests import workflow_jobs as wj

CALLBACKS = {"on_success": "success", "on_complete": "complete", "on_death": "death"}


def _batch(n=2, *, at=None, **callbacks):
    """A sealed batch of ``n`` jobs (queued, or scheduled ``at`` seconds ahead); the jids."""
    callbacks = callbacks or {k: wj.ledger.s(v) for k, v in CALLBACKS.items()}
    with batch(**callbacks) as b:
        jids = [wj.work.enqueue(f"t{i}") if at is None else wj.work.enqueue_in(at, f"t{i}")
                for i in range(n)]
    return b.bid, jids


def _fired(bid):
    """{callback name: times pushed} for the ledger callbacks of ``bid`` in the schedule set."""
    counts = {}
    for record in api.ScheduledSet().jobs(0, 1000):
        if record.name == "tests.workflow_jobs.ledger" and record.fields.get("kiq_cb_of", bid):
            counts[record.args[0]] = counts.get(record.args[0], 0) + 1
    return counts


def _drop_callbacks():
    api.ScheduledSet().delete([r for r in api.ScheduledSet().jobs(0, 1000)
                               if r.name == "tests.workflow_jobs.ledger"])


def _to_retry(redis_client, jids):
    """Move scheduled jobs, byte for byte, into the retry set (as a failed attempt would)."""
    for jid in jids:
        record = api.ScheduledSet().find(jid)
        redis_client.zrem("schedule", record.raw)
        redis_client.zadd("retry", {record.raw: time.time() + 60})


def _assert_dead_complete(bid, dead=1):
    status = api.Batch(bid)
    assert (status.dead, status.failures, status.complete, status.succeeded) == (
        dead, dead, True, False)
    assert _fired(bid) == {"complete": 1, "death": 1}


def _succeed(redis_client, bid, jids):
    """Count ``jids`` as succeeded: what their settle step would do (SREM from pending)."""
    redis_client.srem(f"kiq:batch:{bid}:pending", *jids)


def test_deleting_the_last_pending_queued_job_completes_the_batch(redis_client):
    bid, jids = _batch(2)
    queue = api.Queue("default")
    queue.delete(jids[0])
    status = api.Batch(bid)
    assert (status.dead, status.failures, status.complete) == (1, 1, False)
    assert _fired(bid) == {"death": 1}  # on_death fires at the first death
    _drop_callbacks()
    assert queue.delete(jids[1])
    status = api.Batch(bid)
    assert (status.dead, status.pending, status.complete, status.succeeded) == (2, 2, True, False)
    assert _fired(bid) == {"complete": 1}  # on_death once per batch: not again


@pytest.mark.parametrize("where", ["scheduled", "retry"])
def test_delete_from_a_job_set_counts_dead(redis_client, where):
    bid, jids = _batch(2, at=60)
    if where == "retry":
        _to_retry(redis_client, jids)
    job_set = api.ScheduledSet() if where == "scheduled" else api.RetrySet()
    _succeed(redis_client, bid, jids[1:])
    assert job_set.delete([job_set.find(jids[0])]) == 1
    _assert_dead_complete(bid)


def test_kill_counts_dead(redis_client):
    bid, jids = _batch(2, at=60)
    _to_retry(redis_client, jids)
    _succeed(redis_client, bid, jids[1:])
    assert api.RetrySet().kill([api.RetrySet().find(jids[0])]) == 1
    assert api.DeadSet().find(jids[0]) is not None
    _assert_dead_complete(bid)


def test_a_job_deleted_twice_counts_once(redis_client):
    bid, jids = _batch(2, at=60)
    _to_retry(redis_client, jids)
    record = api.RetrySet().find(jids[0])
    assert api.RetrySet().kill([record]) == 1  # dead now: on_death fired
    dead = api.DeadSet().find(jids[0])
    assert api.DeadSet().delete([dead]) == 1  # counted dead already: nothing new
    assert api.DeadSet().delete([dead]) == 0  # gone: nothing at all
    status = api.Batch(bid)
    assert (status.dead, status.failures, status.complete) == (1, 1, False)
    assert _fired(bid) == {"death": 1}
    _drop_callbacks()
    api.RetrySet().delete([api.RetrySet().find(jids[1])])
    status = api.Batch(bid)
    assert (status.dead, status.failures, status.complete) == (2, 2, True)
    assert _fired(bid) == {"complete": 1}


def test_delete_all_and_kill_all_count_every_batch_job(redis_client):
    bid, jids = _batch(3, at=60)
    plain = wj.work.enqueue_in(60, "plain")
    _to_retry(redis_client, jids[:2])
    assert api.RetrySet().kill_all() == 2
    status = api.Batch(bid)
    assert (status.dead, status.complete) == (2, False)
    assert _fired(bid) == {"death": 1}
    assert api.ScheduledSet().find(plain) is not None
    _drop_callbacks()
    assert api.ScheduledSet().delete_all() == 2  # the last batch job and the plain one
    status = api.Batch(bid)
    assert (status.dead, status.failures, status.complete, status.succeeded) == (
        3, 3, True, False)
    assert _fired(bid) == {"complete": 1}


def test_kill_all_counts_batch_jobs_the_bulk_step_moved(redis_client, store):
    """A batch job that reaches the set after the ZSCAN pass is moved by set_kill_batch.lua
    and counted right after (set_remove.lua "gone")."""
    bid, jids = _batch(1, at=60)
    _to_retry(redis_client, jids)
    moved = store.set_kill_batch("retry", time.time(), 1000, api._leaving_of)
    assert moved == 1
    _assert_dead_complete(bid)


def test_queue_clear_counts_batch_jobs_once(redis_client):
    bid, jids = _batch(3)
    plain = wj.work.enqueue("plain")
    assert api.Queue("default").clear() == 4
    status = api.Batch(bid)
    assert (status.dead, status.failures, status.pending, status.complete) == (3, 3, 3, True)
    assert _fired(bid) == {"complete": 1, "death": 1}
    assert api.Queue("default").clear() == 0
    assert _fired(bid) == {"complete": 1, "death": 1}
    assert plain not in api.Batch(bid).pending_jids()


def test_nested_batch_deletes_reach_the_parent(redis_client):
    with batch(on_complete=wj.ledger.s("outer")) as outer:
        with batch(on_complete=wj.ledger.s("inner")) as inner:
            jid = wj.work.enqueue("t")
    assert api.Queue("default").delete(jid)
    assert api.Batch(inner.bid).complete
    # the child's callback joined the parent: the parent waits for it to run
    assert not api.Batch(outer.bid).complete
    assert api.Batch(outer.bid).pending == 2
    assert _fired(inner.bid).get("inner") == 1


def test_jobs_outside_a_batch_are_unaffected(redis_client):
    bid, jids = _batch(1)
    plain = wj.work.enqueue("plain")
    later = wj.work.enqueue_in(60, "later")
    assert api.Queue("default").delete(plain)
    assert api.ScheduledSet().kill([api.ScheduledSet().find(later)]) == 1
    status = api.Batch(bid)
    assert (status.dead, status.failures, status.pending, status.complete) == (0, 0, 1, False)
    assert _fired(bid) == {}
    assert api.Queue("default").find(jids[0]) is not None
