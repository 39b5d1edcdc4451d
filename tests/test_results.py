"""Job results and progress (django_kiq.results): on the real Redis, with worker subprocesses."""

import threading
import time

import pytest

from django_kiq import registry, results, workflows
from django_kiq.conf import get_settings
from django_kiq.storage import Storage
from tests import workflow_jobs as wj
from tests.conftest import wait_for

ENV = {"KIQ_IMPORTS": "tests.jobs,tests.workflow_jobs", "KIQ_PROCESS_TTL": "3",
       "KIQ_HEARTBEAT_INTERVAL": "0.5"}


def test_result_ttl_is_validated_at_decoration():
    with pytest.raises(ValueError, match="result_ttl"):
        registry.validate_options({"result_ttl": 0}, where="t")
    with pytest.raises(ValueError, match="result_ttl"):
        registry.validate_options({"result_ttl": 1.5}, where="t")
    assert wj.add.set(result_ttl=5).options.result_ttl == 5


def test_status_mapping_is_pure():
    assert workflows.status_of("done") == ("succeeded", True, "s")
    assert workflows.status_of("retry") == ("retrying", False, "f")
    assert workflows.status_of("dead") == ("failed", True, "d")
    assert workflows.status_of("requeue") == ("queued", False, None)


def test_no_result_and_no_cost_unless_asked(redis_client):
    from tests import jobs

    jid = jobs.record.enqueue("x")
    assert results.get(jid) is None
    assert not list(redis_client.scan_iter("kiq:result:*"))


def test_a_result_is_queued_then_succeeded_with_its_value(redis_client, worker_factory):
    jid = wj.add.enqueue(2, 3)
    queued = results.get(jid)
    assert queued.status == "queued" and queued.enqueued_at is not None
    worker_factory("-c", "2", env=ENV)
    done = queued.wait(timeout=20)
    assert done.status == "succeeded" and done.value == 5 and done.attempt == 1
    assert done.started_at <= done.finished_at
    assert 0 < redis_client.ttl(f"kiq:result:{jid}") <= 600


def test_a_failure_is_recorded_with_its_error(worker_factory):
    jid = wj.explode.enqueue("boom")
    worker_factory("-c", "1", env=ENV)
    done = results.get(jid).wait(timeout=20)
    assert done.status == "failed"
    assert done.error["class"] == "ValueError" and "boom" in done.error["message"]


def test_wait_blocks_without_polling_and_wakes_at_the_settle(monkeypatch, worker_factory):
    jid = wj.with_progress.enqueue(1.0)
    worker_factory("-c", "1", env=ENV)
    running = wait_for(lambda: (r := results.get(jid)) and r.status == "running" and r,
                       timeout=20)
    progress = wait_for(lambda: results.get(jid).progress, timeout=5)
    assert progress == 40
    assert results.get(jid).progress_message == "imported 4,000 of 10,000 rows"
    calls = []
    for name in ("job_result", "wait_job_result"):
        original = getattr(Storage, name)
        monkeypatch.setattr(Storage, name, lambda self, *a, _o=original, _n=name, **k: (
            calls.append(_n), _o(self, *a, **k))[1])
    done = running.wait(timeout=20)
    assert done.status == "succeeded" and done.value == "done"
    # One blocking BLMOVE woken by the settle step, then one read: no polling loop.
    assert calls == ["wait_job_result", "job_result"]


def test_a_long_wait_blocks_in_steps_under_the_socket_timeout(monkeypatch, store):
    """wait(timeout) longer than the connection's socket timeout: each blocking command lasts
    at most MAX_BLOCK (a longer one made redis-py raise TimeoutError at 15 s), and the wait
    goes on block after block until the job finishes."""
    from django_kiq.storage import batches as storage_batches
    from django_kiq.storage import connection
    from tests.conftest import run_as_worker

    assert storage_batches.MAX_BLOCK < connection.SOCKET_TIMEOUT
    monkeypatch.setattr(storage_batches, "MAX_BLOCK", 0.2)
    blocks = []
    third_block = threading.Event()
    original = Storage.wait_job_result

    def counted(self, jid, timeout):
        blocks.append(timeout)
        if len(blocks) >= 3:
            third_block.set()
        return original(self, jid, timeout)

    monkeypatch.setattr(Storage, "wait_job_result", counted)
    jid = wj.add.enqueue(1, 2)
    waiting = results.get(jid)
    raw = store.client.rpop("queue:default")

    def run_after_three_blocks():
        third_block.wait(10)  # not set: the first block outlived MAX_BLOCK (the assert below)
        run_as_worker(raw)

    runner = threading.Thread(target=run_after_three_blocks)
    runner.start()
    done = waiting.wait(timeout=30)
    runner.join()
    assert done.status == "succeeded" and done.value == 3
    assert len(blocks) >= 3 and third_block.is_set()


def test_a_late_queued_record_keeps_the_status_a_worker_wrote(store):
    """The client writes a job's "queued" record after the push: a worker that ran the job in
    between keeps its status (the record's status is only set where it has none), so wait()
    returns at once instead of spinning on a finished job that reads "queued"."""
    from django_kiq import payload
    from tests.conftest import run_as_worker

    jid = wj.add.enqueue(2, 2)
    raw = store.client.rpop("queue:default")
    run_as_worker(raw)
    workflows.record_enqueued(store, [payload.decode(raw)], get_settings(), time.time())
    late = results.get(jid)
    assert (late.status, late.value) == ("succeeded", 4)
    assert late.wait(timeout=1).value == 4


def test_aenqueue_writes_the_queued_record(store):
    """An async view can await the result of what it enqueued (aenqueue, then aget)."""
    import asyncio

    async def main():
        jid = await wj.add.aenqueue(5, 6)
        return jid, await results.aget(jid)

    jid, found = asyncio.run(main())
    assert found is not None and found.status == "queued" and found.jid == jid


def test_wait_times_out(store):
    jid = wj.add.enqueue(1, 1)
    with pytest.raises(TimeoutError):
        results.get(jid).wait(timeout=0.2)


def test_cancelling_a_waiting_job_ends_its_result_and_counts_in_its_batch(redis_client):
    """api.cancel of a queued or scheduled job writes its result "cancelled" (waiters wake at
    once) and counts it as failed in its batch, in the step that removes it, once."""
    from django_kiq import api, batch

    with batch(description="cancelled", on_complete=wj.ledger.s("c")) as b:
        queued = wj.add.enqueue(1, 2)
        later = wj.add.enqueue_in(600, 3, 4)
        plain = wj.work.enqueue("x")  # keeps no result
    assert results.get(later).status == "scheduled"
    waiting = results.get(queued)
    assert [api.cancel(jid) for jid in (queued, later, plain)] == ["queue", "scheduled", "queue"]
    assert waiting.wait(timeout=5).status == "cancelled"  # woken: TimeoutError otherwise
    for jid in (queued, later):
        record = results.get(jid)
        assert record.status == "cancelled" and record.finished_at is not None
    assert results.get(plain) is None
    status = api.Batch(b.bid)
    assert (status.failures, status.pending, status.complete) == (3, 3, True)
    assert redis_client.zcard("schedule") == 1  # on_complete, pushed once
    assert api.cancel(queued) is None and api.Batch(b.bid).failures == 3


def test_a_job_cancelled_before_a_worker_started_it_reads_cancelled(store):
    """A cancellation recorded while the job was between places: the worker that fetches it
    drops it, and its settle step writes its result "cancelled" (no batch needed)."""
    from django_kiq.stats import Counters
    from django_kiq.worker.control import Control
    from django_kiq.worker.manager import Manager
    from django_kiq.worker.processor import Processor

    jid = wj.add.enqueue(1, 2)
    store.record_cancellation(jid)
    [(queue, raw)], _ = store.fetch("test-run:1:abc", ["default"], 1)
    control = Control(store=store)
    control.poll_cancellations()
    outcome = Processor(settings=get_settings(), counters=Counters(),
                        control=control).process(queue, raw, "kiq-t")
    assert outcome.kind == "cancelled"
    assert store.settle("test-run:1:abc", [Manager._settle_entry(outcome)]) == [1]
    assert results.get(jid).wait(timeout=1).status == "cancelled"


def test_async_forms(worker_factory):
    import asyncio

    jid = wj.add.enqueue(20, 22)
    worker_factory("-c", "1", env=ENV)

    async def main():
        found = await results.aget(jid)
        return await found.await_(20)

    assert asyncio.run(main()).value == 42


def test_global_result_ttl_keeps_every_jobs_result(settings, redis_url, worker_factory):
    from django.test import override_settings

    from tests import jobs

    with override_settings(KIQ={"REDIS_URL": redis_url, "RESULT_TTL": 60}):
        assert get_settings().result_ttl == 60
        jid = jobs.record.enqueue("g")
        assert results.get(jid).status == "queued"
    worker_factory("-c", "1", env={**ENV})
    # The worker's own settings have no RESULT_TTL: it does not write the final record.
    wait_for(lambda: results.get(jid) is not None, timeout=5)


def test_admin_pages_show_batches_results_and_progress(admin_client, store,
                                                       django_capture_on_commit_callbacks):
    from django_kiq import api, batch
    from django_kiq.records import _work_record

    # In a transaction the pushes and the seal wait for the commit, in that order.
    with django_capture_on_commit_callbacks(execute=True) as deferred:
        with batch(description="admin view", on_success=wj.ledger.s("x")) as b:
            jid = wj.add.enqueue(1, 2)
        assert api.Batch(b.bid).total == 0
    assert len(deferred) == 2 and api.Batch(b.bid).sealed
    listing = admin_client.get("/admin/django_kiq/jobs/batches/")
    assert listing.status_code == 200 and b"admin view" in listing.content
    page = admin_client.get(f"/admin/django_kiq/jobs/batches/{b.bid}/")
    assert page.status_code == 200 and jid.encode() in page.content
    assert admin_client.get("/admin/django_kiq/jobs/batches/nope/").status_code == 404
    queued = api.Queue("default").find(jid)
    job_page = admin_client.get(f"/admin/django_kiq/jobs/queues/default/{jid}/")
    assert queued is not None and b"kiq-result" in job_page.content
    work = _work_record("p", "t", '{"queue":"default","payload":"{}","run_at":1,'
                                  '"progress":40,"progress_message":"4 of 10"}')
    assert (work.progress, work.progress_message) == (40, "4 of 10")


def test_result_and_batch_ttl_settings_are_checked(settings):
    from django_kiq.checks import check_settings

    for bad in ("60", 0, 1.5, True):
        settings.KIQ = {"RESULT_TTL": bad}
        assert [e.id for e in check_settings()] == ["django_kiq.E029"], bad
    for bad in ("60", 0, 1.5):
        settings.KIQ = {"BATCH_TTL": bad}
        assert [e.id for e in check_settings()] == ["django_kiq.E003"], bad
    settings.KIQ = {"RESULT_TTL": 3600, "BATCH_TTL": 86400}
    assert check_settings() == []


@pytest.mark.django_db(transaction=True)
def test_a_django_tasks_result_reads_and_waits_through_the_same_api(redis_client):
    """results.get(task id) is a JobResult: a task's result is the same record, so wait()
    wakes when the task's settle step records its end, not at the timeout."""
    from django.tasks import task_backends
    from django.test import override_settings

    from tests import djtasks
    from tests.conftest import run_as_worker

    with override_settings(TASKS={"default": {"BACKEND": "django_kiq.tasks.KiqBackend"}}):
        assert task_backends["default"]
        task = djtasks.add.enqueue(2, 3)
        pending = results.get(task.id)
        assert pending.status == "queued" and not pending.finished
        got = []
        waiter = threading.Thread(target=lambda: got.append(pending.wait(timeout=20)))
        started = time.monotonic()
        waiter.start()
        raw = redis_client.rpop("queue:default")
        run_as_worker(raw)
        waiter.join(10)
    assert got and got[0].status == "succeeded" and got[0].value == 5
    assert time.monotonic() - started < 5
