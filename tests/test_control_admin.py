"""Execution control where users see and operate it: the API's deletes releasing unique locks,
and the admin's Cancel buttons, counters, stuck badge, and a job's lock and checkpoint.

Real Redis; the admin through Django's test client; a real worker subprocess for cancelling a
running job from the Busy page (jobs in ``tests.control_jobs``).
"""

from __future__ import annotations

import json
import time

import pytest

from django_kiq import api, payload
from django_kiq.storage import sets as storage_sets
from tests import control_jobs as cj
from tests.conftest import wait_for
from tests.test_admin import (XSS, ESCAPED, _fast_passwords, beat,  # noqa: F401 - fixtures
                              follow_messages, job_raw, url, user_client)

# Enqueues inside a test transaction would wait for its commit (ENQUEUE_ON_COMMIT): none here.
pytestmark = pytest.mark.django_db(transaction=True)

IMPORTS = {"KIQ_IMPORTS": "tests.jobs,tests.control_jobs"}


def locks(redis_client) -> dict[str, bytes]:
    return {k.decode(): redis_client.get(k) for k in redis_client.scan_iter("kiq:unique:*")}


def unique_in(redis_client, set_name: str, token: str) -> str:
    """A unique job (holding its lock) waiting in the schedule, retry or dead set."""
    jid = cj.unique_record.enqueue_in(600, token)
    if set_name != "schedule":
        [(raw, score)] = [(m, s) for m, s in redis_client.zrange("schedule", 0, -1,
                                                                 withscores=True)
                          if json.loads(m)["jid"] == jid]
        redis_client.zrem("schedule", raw)
        redis_client.zadd(set_name, {raw: score})
    return jid


def cancellations(redis_client) -> list[str]:
    return [m.decode() for m in redis_client.zrange("kiq:cancelled", 0, -1)]


def stat(redis_client, name: str) -> int:
    return int(redis_client.get(f"stat:{name}") or 0)


# -- unique locks released by the API's deletes -------------------------------------------------

def test_deleting_a_queued_unique_job_releases_its_lock(redis_client):
    jid = cj.unique_record.set(queue="parked").enqueue("q")
    assert list(locks(redis_client).values()) == [jid.encode()]
    assert api.Queue("parked").delete(jid) is True
    assert locks(redis_client) == {}
    assert cj.unique_record.set(queue="parked").enqueue("q") is not None


@pytest.mark.parametrize("set_class", [api.ScheduledSet, api.RetrySet, api.DeadSet])
def test_deleting_from_each_set_releases_the_lock(redis_client, set_class):
    jid = unique_in(redis_client, set_class.name, "s")
    jobs = set_class()
    assert jobs.delete([jobs.find(jid)]) == 1
    assert locks(redis_client) == {} and jobs.size() == 0


@pytest.mark.parametrize("set_class", [api.ScheduledSet, api.RetrySet])
def test_a_killed_unique_job_is_dead_and_holds_no_lock(redis_client, set_class):
    jid = unique_in(redis_client, set_class.name, "k")
    assert set_class().kill([set_class().find(jid).key]) == 1
    assert locks(redis_client) == {} and api.DeadSet().find(jid) is not None


def test_a_lock_a_newer_job_took_is_kept(redis_client):
    jid = unique_in(redis_client, "retry", "n")
    [key] = locks(redis_client)
    redis_client.set(key, "a-newer-job")  # this job's lock expired; another took it
    assert api.RetrySet().delete([api.RetrySet().find(jid)]) == 1
    assert locks(redis_client) == {key: b"a-newer-job"}
    queued = cj.unique_record.set(queue="parked").enqueue("m")
    [key2] = set(locks(redis_client)) - {key}
    redis_client.set(key2, "another")
    assert api.Queue("parked").delete(queued) is True
    assert locks(redis_client)[key2] == b"another"


def test_a_job_deleted_by_someone_else_first_releases_nothing(redis_client):
    jid = unique_in(redis_client, "schedule", "x")
    record = api.ScheduledSet().find(jid)
    redis_client.zrem("schedule", record.raw)  # moved away meanwhile: it is not ours to end
    assert api.ScheduledSet().delete([record]) == 0
    assert list(locks(redis_client).values()) == [jid.encode()]


@pytest.mark.parametrize("set_class", [api.ScheduledSet, api.RetrySet, api.DeadSet])
def test_delete_all_releases_the_locks_of_its_unique_jobs(redis_client, store, set_class,
                                                          monkeypatch):
    monkeypatch.setattr(storage_sets, "UNIQUE_PAGE", 3)  # several pages of the aside copy
    jids = [unique_in(redis_client, set_class.name, f"u{i}") for i in range(4)]
    store.schedule([(time.time() + i, job_raw(i)) for i in range(5)], set_class.name)
    redis_client.set("kiq:unique:someone-else", "other-jid")
    assert set_class().delete_all() == 9
    assert locks(redis_client) == {"kiq:unique:someone-else": b"other-jid"}
    assert set_class().size() == 0 and list(redis_client.scan_iter("kiq:trash:*")) == []
    assert len(jids) == 4


@pytest.mark.parametrize("set_class", [api.ScheduledSet, api.RetrySet])
def test_kill_all_releases_the_locks_of_its_unique_jobs(redis_client, store, set_class):
    jids = [unique_in(redis_client, set_class.name, f"k{i}") for i in range(3)]
    store.schedule([(time.time() + i, job_raw(i)) for i in range(4)], set_class.name)
    assert set_class().kill_all() == 7
    assert locks(redis_client) == {} and set_class().size() == 0
    assert {api.DeadSet().find(jid) is not None for jid in jids} == {True}
    assert api.DeadSet().size() == 7


def test_clearing_a_queue_releases_the_locks_of_its_unique_jobs(redis_client, store,
                                                                 monkeypatch):
    monkeypatch.setattr(storage_sets, "UNIQUE_PAGE", 4)
    store.push([("parked", job_raw(i, queue="parked")) for i in range(5)])
    jids = [cj.unique_record.set(queue="parked").enqueue(f"c{i}") for i in range(3)]
    store.push([("parked", job_raw(i + 10, queue="parked")) for i in range(5)])
    assert len(locks(redis_client)) == 3 and all(jids)
    assert api.Queue("parked").clear() == 13
    assert locks(redis_client) == {}
    assert redis_client.exists("queue:parked") == 0
    assert not redis_client.sismember("queues", "parked")
    assert list(redis_client.scan_iter("kiq:trash:*")) == []
    assert api.Queue("empty").clear() == 0


# -- dashboard counters -------------------------------------------------------------------------

def test_cancelled_and_expired_counters_in_the_snapshot_and_the_summary(admin_client,
                                                                       redis_client, store):
    redis_client.set("stat:cancelled", 1234)
    redis_client.set("stat:expired", 56)
    stats = api.Stats()
    assert (stats.cancelled, stats.expired) == (1234, 56)
    text = admin_client.get(url("dashboard")).text
    assert 'data-kiq-stat="cancelled">1,234</span>' in text
    assert 'data-kiq-stat="expired">56</span>' in text
    assert text.index('data-kiq-stat="failed"') < text.index('data-kiq-stat="cancelled"')
    data = admin_client.get(url("stats")).json()
    assert (data["cancelled"], data["expired"]) == (1234, 56)


# -- Cancel buttons -----------------------------------------------------------------------------

def test_cancel_a_queued_job_from_the_queue_page(admin_client, redis_client, store):
    jid = cj.wait_to_be_cancelled.set(queue="parked").enqueue("q")
    other = cj.wait_to_be_cancelled.set(queue="parked").enqueue("r")
    page = admin_client.get(url("queue", "parked")).text
    assert 'id="kiq-cancel-form"' in page
    assert f'name="jid" value="{jid}" class="button" form="kiq-cancel-form">Cancel' in page
    response = admin_client.post(url("queue", "parked"), {"action": "cancel", "jid": jid},
                                 follow=True)
    assert follow_messages(response) == [f"Cancelled job {jid}: it was queued: removed."]
    assert [json.loads(m)["jid"] for m in redis_client.lrange("queue:parked", 0, -1)] == [other]
    assert stat(redis_client, "cancelled") == 1
    assert cancellations(redis_client) == [f"{jid} admin"]


def test_cancel_selected_and_single_rows_on_the_scheduled_and_retry_pages(
        admin_client, redis_client):
    scheduled = [cj.wait_to_be_cancelled.enqueue_in(600, f"s{i}") for i in range(3)]
    keys = [r.key for r in api.ScheduledSet().jobs() if r.jid in scheduled[:2]]
    page = admin_client.get(url("scheduled")).text
    assert 'value="cancel"' in page and 'form="kiq-cancel-form">Cancel' in page
    response = admin_client.post(url("scheduled"), {"action": "cancel", "key": keys},
                                 follow=True)
    assert follow_messages(response) == ["Cancelled 2 jobs (2 scheduled)."]
    assert [r.jid for r in api.ScheduledSet().jobs()] == scheduled[2:]
    retry = unique_in(redis_client, "retry", "r")
    response = admin_client.post(url("retries"), {"action": "cancel", "jid": retry},
                                 follow=True)
    assert follow_messages(response) == [
        f"Cancelled job {retry}: it was waiting for a retry: removed."]
    assert api.RetrySet().size() == 0 and locks(redis_client) == {}  # its lock went with it
    assert stat(redis_client, "cancelled") == 3
    assert 'value="cancel"' not in admin_client.get(url("dead")).text  # dead: nothing to stop


def test_cancel_from_the_job_pages(admin_client, redis_client):
    jid = cj.wait_to_be_cancelled.enqueue_in(600, "j")
    record = api.ScheduledSet().find(jid)
    page = admin_client.get(url("job", "scheduled", record.key)).text
    assert 'name="action" value="cancel"' in page
    response = admin_client.post(url("scheduled"), {"action": "cancel", "key": record.key,
                                                    "next": url("scheduled")}, follow=True)
    assert follow_messages(response) == [f"Cancelled job {jid}: it was scheduled: removed."]
    queued = cj.wait_to_be_cancelled.set(queue="parked").enqueue("jq")
    [row] = api.Queue("parked").jobs()
    page = admin_client.get(url("queue_job", "parked", row.key)).text
    assert f'<input type="hidden" name="jid" value="{queued}">' in page
    response = admin_client.post(url("queue", "parked"), {"action": "cancel", "jid": queued},
                                 follow=True)
    assert follow_messages(response) == [f"Cancelled job {queued}: it was queued: removed."]
    assert api.Queue("parked").size() == 0


def test_cancelling_a_job_that_finished_says_so(admin_client, redis_client, store):
    response = admin_client.post(url("busy"), {"action": "cancel", "jid": "gone-jid"},
                                 follow=True)
    assert follow_messages(response) == [
        "Job gone-jid was not found: it had finished (or was between two places; it will not "
        "run)."]
    assert response.context["messages"]._loaded_messages[0].level_tag == "warning"
    assert stat(redis_client, "cancelled") == 0


@pytest.mark.parametrize("page,field", [("busy", "jid"), ("queue", "jid"),
                                        ("scheduled", "key"), ("retries", "jid")])
def test_cancel_needs_the_manage_permission(user_client, redis_client, page, field):
    queued = cj.wait_to_be_cancelled.set(queue="parked").enqueue("p")
    scheduled = cj.wait_to_be_cancelled.enqueue_in(600, "p2")
    target = {"busy": queued, "queue": queued, "retries": scheduled,
              "scheduled": api.ScheduledSet().find(scheduled).key}[page]
    path = url("queue", "parked") if page == "queue" else url(page)
    client = user_client("view_jobs")
    assert client.post(path, {"action": "cancel", field: target}).status_code == 403
    text = client.get(path).text
    assert 'value="cancel"' not in text and 'kiq-cancel-form' not in text
    assert redis_client.llen("queue:parked") == 1 and redis_client.zcard("schedule") == 1
    assert cancellations(redis_client) == [] and stat(redis_client, "cancelled") == 0


def test_get_cancels_nothing_and_post_needs_csrf(admin_client, user_client, redis_client):
    jid = cj.wait_to_be_cancelled.set(queue="parked").enqueue("g")
    for path in (url("busy"), url("queue", "parked"), url("scheduled")):
        assert admin_client.get(path, {"action": "cancel", "jid": jid}).status_code == 200
    client = user_client("view_jobs", "manage_jobs", enforce_csrf_checks=True)
    assert client.post(url("busy"), {"action": "cancel", "jid": jid}).status_code == 403
    assert redis_client.llen("queue:parked") == 1 and cancellations(redis_client) == []


@pytest.mark.parametrize("data", [{}, {"jid": ""}, {"jid": "x" * 201}, {"key": "nope"},
                                  {"jid": ["a", "b"]}])
def test_malformed_cancel_posts_are_refused(admin_client, store, data):
    assert admin_client.post(url("busy"), {"action": "cancel", **data}).status_code == 400


def test_cancel_a_running_job_from_the_busy_page(admin_client, redis_client, worker_factory):
    worker = worker_factory("-c", "2", env=IMPORTS)
    jid = cj.wait_to_be_cancelled.enqueue("run")
    wait_for(lambda: redis_client.hget("test:started", "run"), timeout=20,
             message=worker.output)
    page = wait_for(lambda: (text := admin_client.get(url("busy")).text)
                    and f'name="jid" value="{jid}"' in text and text, timeout=10)
    assert "Raise JobCancelled in the job" in page
    response = admin_client.post(url("busy"), {"action": "cancel", "jid": jid}, follow=True)
    assert follow_messages(response) == [
        f"Cancelled job {jid}: it was running: JobCancelled is raised in it within a second."]
    wait_for(lambda: redis_client.hget("test:cleanup", "run") == b"1", timeout=10,
             message=worker.output)
    wait_for(lambda: stat(redis_client, "cancelled") == 1, timeout=10)
    assert redis_client.zcard("retry") == 0 and stat(redis_client, "failed") == 0
    wait_for(lambda: "by admin" in worker.output() or "admin" in worker.output(), timeout=5,
             message=worker.output)


# -- Busy: stuck badge and deadline -------------------------------------------------------------

def test_a_stuck_job_has_a_badge_and_every_timed_job_a_deadline(admin_client, store):
    now = time.time()
    stuck = payload.decode(job_raw(1, name="tests.control_jobs.sleep_in_c"))
    stuck["kiq_timeout"] = 30
    calm = payload.decode(job_raw(2))
    work = {"kiq-processor-1": json.dumps({"queue": "default", "run_at": now - 40,
                                           "payload": payload.encode(stuck).decode(),
                                           "stuck": True}),
            "kiq-processor-2": json.dumps({"queue": "default", "run_at": now - 5,
                                           "payload": payload.encode(calm).decode()})}
    beat(store, "web-host:4242:abc", work=work, busy=2)
    text = admin_client.get(url("busy")).text
    assert text.count('class="kiq-badge kiq-badge-bad" title="Past its time limit') == 1
    assert "blocked outside Python code" in text and "Recycle the process" in text
    rows = [row.split("</tr>")[0]
            for row in text.split('<td class="kiq-sub-cell" data-label="Process">')[1:]]
    stuck_row = next(r for r in rows if stuck["jid"] in r)
    calm_row = next(r for r in rows if calm["jid"] in r)
    assert ">stuck</span>" in stuck_row and ">stuck</span>" not in calm_row
    assert "10 s ago" in stuck_row or "11 s ago" in stuck_row  # run_at + 30 s: 10 s ago
    deadline_cell = calm_row.split('data-label="Deadline">')[1].split("</td>")[0]
    assert deadline_cell == "–"


# -- job page: lock, checkpoint, time limit, expiry ---------------------------------------------

def test_the_job_page_shows_the_lock_and_who_holds_it(admin_client, redis_client):
    jid = unique_in(redis_client, "retry", "lock")
    [key] = locks(redis_client)
    record = api.RetrySet().find(jid)
    lock = api.unique_lock(record)
    assert (lock.key, lock.holder, lock.held) == (key, jid, True) and 0 < lock.ttl <= 660
    text = admin_client.get(url("job", "retries", record.key)).text
    assert f"<code>{key}</code>" in text and "held by this job" in text
    assert "expires in 1" in text  # 11 min
    redis_client.set(key, "a-newer-job")
    text = admin_client.get(url("job", "retries", record.key)).text
    assert "held by another job" in text and "<code>a-newer-job</code>" in text
    redis_client.delete(key)
    assert api.unique_lock(api.RetrySet().find(jid)).holder is None
    assert ">free</span>" in admin_client.get(url("job", "retries", record.key)).text
    assert api.unique_lock(api.decode_record(job_raw(3))) is None


def test_the_job_page_shows_an_iterable_jobs_checkpoint_and_limits(admin_client, store):
    now = time.time()
    job = payload.decode(job_raw(5, name="tests.control_jobs.ledger"))
    job.update(kiq_iterable=True, kiq_timeout=90, kiq_expires_at=now + 3600)
    store.schedule([(now + 60, payload.encode(job))], "retry")
    record = api.RetrySet().find(job["jid"])
    page = url("job", "retries", record.key)
    text = admin_client.get(page).text
    assert 'id="kiq-control"' in text and "None saved" in text
    panel = text[text.index('id="kiq-control"'):]
    panel = panel[:panel.index("</table>")]
    assert "90 s" in panel and "Expires" in panel and "in 59\xa0minutes" in panel, panel
    store.save_checkpoint(job["jid"], cursor=json.dumps({"after": XSS}), done=42, now=now - 3,
                          ttl=60)
    point = api.checkpoint(record)
    assert (point.done, json.loads(point.cursor)) == (42, {"after": XSS})
    text = admin_client.get(page).text
    assert "<strong>42</strong> items done" in text and "3 s ago" in text
    assert ESCAPED in text and XSS not in text  # the cursor is job data: escaped
    assert api.checkpoint(api.decode_record(job_raw(6))) is None
    plain = admin_client.get(url("job", "scheduled", "1.0|x")).status_code
    assert plain == 302
    assert api.timeout_of(record) == 90 and api.expires_at_of(record) == pytest.approx(now + 3600)


def test_a_job_without_execution_control_has_no_such_panel(admin_client, store):
    store.schedule([(time.time() + 60, job_raw(7))], "schedule")
    record = api.ScheduledSet().jobs()[0]
    assert 'id="kiq-control"' not in admin_client.get(url("job", "scheduled", record.key)).text
