"""Regressions of issue 10 items 8-11 on the admin and API side, against the real Redis.

8: any queue name a job can carry, bad keys, jids with quotes, jobs sharing a jid; the requeue
script readies members as ``payload.ready_for_queue`` does (no ``at``). 9: a paused queue stays
listed when emptied. 10: every figure of a page comes from one read. 11: breadcrumbs spacing and
the set tables at 420 px (the last test drives Chromium like tests/test_admin_browser.py).
"""

from __future__ import annotations

import html
import json
import re
import threading
import time
from urllib.parse import unquote

import pytest
from django.urls import resolve, reverse

from django_kiq import api, payload
from django_kiq.storage import Heartbeat
from tests import jobs  # noqa: F401 - registers the job names used below

try:  # Chromium, the login and the demo data of the browser test (it skips without Chromium)
    from tests.test_admin_browser import browser, demo_data, page  # noqa: F401
    HAVE_CHROMIUM = True
except pytest.skip.Exception:
    HAVE_CHROMIUM = False

pytestmark = pytest.mark.django_db

NAMES = ["a/b", "with space", "日本語", "50%", "why?", "#tag", "..", "x/../y", "~tilde", "q|1"]


def url(name: str, *args) -> str:
    return reverse(f"admin:django_kiq_{name}", args=args)


def raw_job(jid: str, *, queue: str = "default", args=None, **extra) -> bytes:
    job = payload.build(name="tests.jobs.record", args=["x"] if args is None else args,
                        kwargs={}, queue=queue, now=time.time() - 60, jid=jid)
    job.update(extra)
    return payload.encode(job)


def messages_of(response) -> str:
    return " ".join(str(m) for m in response.context["messages"])


@pytest.fixture(autouse=True)
def _fast_passwords(settings):
    settings.PASSWORD_HASHERS = ["django.contrib.auth.hashers.MD5PasswordHasher"]


# -- 8: any queue name, bad keys, odd jids, jobs sharing a jid -----------------------------------

@pytest.mark.parametrize("name", NAMES)
def test_every_page_handles_any_queue_name(admin_client, store, name):
    failed = dict(error_class="ValueError", error_message="boom", retry_count=1)
    store.push([(name, raw_job("a" * 24, queue=name))])
    store.schedule([(time.time() + 60, raw_job("b" * 24, queue=name, **failed))], "retry")
    store.schedule([(time.time() - 60, raw_job("c" * 24, queue=name, **failed))], "dead")
    store.schedule([(time.time() + 60, raw_job("d" * 24, queue=name))], "schedule")
    work = {"t1": json.dumps({"queue": name, "run_at": time.time(),
                              "payload": raw_job("e" * 24, queue=name).decode()})}
    store.heartbeat(Heartbeat(identity="h:1:a", info=json.dumps({"queues": [name]}), busy=1,
                              quiet=False, rss_kb=1, rtt_us=1, work=work, ttl=60, processed=0,
                              failed=0))
    queue_url = url("queue", name)
    assert resolve(unquote(queue_url)).kwargs["name"] == name  # reverse() round-trips any name
    for page in ("retries", "dead", "scheduled", "queues", "busy"):
        response = admin_client.get(url(page))
        assert response.status_code == 200, page
        assert f'href="{html.escape(queue_url)}"' in response.text, page
    queue_page = admin_client.get(queue_url)
    assert queue_page.status_code == 200 and len(queue_page.context["rows"]) == 1
    row = queue_page.context["rows"][0]
    assert admin_client.get(row.url).status_code == 200  # the job's detail page
    for slug in ("retries", "dead"):
        [row] = admin_client.get(url(slug)).context["rows"]
        assert admin_client.get(row.url).status_code == 200, slug
    admin_client.post(queue_url, {"action": "pause"})
    assert api.Queue(name).paused
    response = admin_client.post(queue_url, {"action": "delete", "key": row_key(queue_page)},
                                 follow=True)
    assert "Deleted job " + "a" * 24 in messages_of(response)
    assert api.Queue(name).size() == 0


def row_key(response) -> str:
    return response.context["rows"][0].record.key


@pytest.mark.parametrize("key", ["nan|x", "NaN|x", "-nan|x", "1.0|", "x|y"])
def test_a_bad_score_in_a_job_url_is_404_not_500(admin_client, store, key):
    admin_client.raise_request_exception = False
    assert admin_client.get(url("job", "dead", key)).status_code == 404
    assert admin_client.get(f"/admin/django_kiq/jobs/job/dead/{key}/").status_code == 404
    assert admin_client.post(url("dead"), {"action": "delete", "key": [key]}).status_code == 400


@pytest.mark.parametrize("jid", ['say "hi"', "back\\slash", "a/b", "ünï", "../.."])
def test_a_queued_job_with_an_odd_jid_opens_and_is_deleted(admin_client, store, redis_client,
                                                           jid):
    store.push([("default", raw_job(jid))])
    assert api.Queue("default").find(jid).jid == jid
    page = admin_client.get(url("queue", "default"))
    [row] = page.context["rows"]
    detail = admin_client.get(row.url)
    assert detail.status_code == 200 and html.escape(jid) in detail.text
    by_jid = admin_client.get(url("queue_job", "default", jid))
    assert by_jid.status_code == 200 and by_jid.context["record"].jid == jid
    response = admin_client.post(url("queue", "default"),
                                 {"action": "delete", "key": row.record.key}, follow=True)
    assert f"Deleted job {jid}." in messages_of(response)
    assert redis_client.llen("queue:default") == 0


@pytest.mark.parametrize("jid", ['say "hi"', "ünï"])
def test_sets_find_and_open_a_job_whose_jid_json_escapes(admin_client, store, jid):
    store.schedule([(time.time() + 60, raw_job(jid))], "retry")
    record = api.RetrySet().find(jid)
    assert record is not None and record.jid == jid
    assert admin_client.get(url("job", "retries", record.key)).status_code == 200


def test_delete_removes_the_row_shown_not_another_with_its_jid(admin_client, store,
                                                               redis_client):
    first, second = raw_job("same" * 6, args=["first"]), raw_job("same" * 6, args=["second"])
    store.push([("default", first), ("default", second)])
    page = admin_client.get(url("queue", "default"))
    rows = page.context["rows"]
    assert [r.record.args for r in rows] == [["first"], ["second"]]
    assert rows[0].url != rows[1].url  # two jobs, two detail pages
    assert admin_client.get(rows[1].url).context["record"].raw == second
    response = admin_client.post(url("queue", "default"),
                                 {"action": "delete", "key": rows[1].record.key}, follow=True)
    assert "Deleted job" in messages_of(response)
    assert redis_client.lrange("queue:default", 0, -1) == [first]
    # From the detail page of the other one: again exactly that entry.
    detail = admin_client.get(rows[0].url)
    key = re.search(r'name="key" value="([^"]+)"', detail.text).group(1)
    admin_client.post(url("queue", "default"), {"action": "delete", "key": key})
    assert redis_client.llen("queue:default") == 0


def test_queue_get_finds_an_entry_after_the_queue_moved(store, redis_client):
    store.push([("default", raw_job(f"{i:024x}")) for i in range(1500)])
    queue = api.Queue("default")
    record = queue.jobs(offset=1200, limit=1)[0]
    assert queue.get(record.key) == record
    redis_client.rpop("queue:default", 700)  # workers took the 700 oldest: positions shifted
    moved = queue.get(record.key)
    assert moved.raw == record.raw and moved.key != record.key
    assert queue.delete(moved) and queue.get(record.key) is None
    with pytest.raises(ValueError):
        queue.get("not-a-key")


def test_requeued_members_lose_at_and_get_a_fresh_enqueued_at(store, redis_client):
    """set_requeue_batch.lua readies a member as payload.ready_for_queue does, by safe edits."""
    now = time.time()
    cases = {
        b'{"class":"A","args":[1],"jid":"a","queue":"q","at":1.5,"enqueued_at":2}': True,
        b'{"class":"A","at":1.5,"args":[{"at":3}],"jid":"b","queue":"q"}': True,
        b'{"class":"A","args":["\\"at\\":4"],"jid":"c","queue":"q","at": null }': True,
        b'{"class":"A","args":[],"jid":"d","queue":"q","at":1.5}': True,
        # The only "at" text is a nested one while the top-level key is written escaped: the
        # edit cannot be proved safe, so the member moves with its "at" (never corrupted).
        b'{"class":"A","args":[{"at":1}],"jid":"e","queue":"q","\\u0061t":2}': False,
    }
    redis_client.zadd("schedule", {raw: now + i for i, raw in enumerate(cases)})
    assert api.ScheduledSet().enqueue_all(now=now + 10) == len(cases)
    pushed = {json.loads(raw)["jid"]: raw for raw in redis_client.lrange("queue:q", 0, -1)}
    for raw, dropped in cases.items():
        before = json.loads(raw)
        after = json.loads(pushed[before["jid"]])
        assert after["enqueued_at"] == now + 10
        expected = {k: v for k, v in before.items() if k != "at" or not dropped}
        assert after == {**expected, "enqueued_at": now + 10}, raw
    # retry_now goes through payload.ready_for_queue: the same result.
    store.schedule([(now, raw_job("f" * 24, at=now))], "schedule")
    assert api.ScheduledSet().enqueue_now(api.ScheduledSet().jobs(), now=now + 20) == 1
    job = json.loads(redis_client.lindex("queue:default", 0))
    assert "at" not in job and job["enqueued_at"] == now + 20


# -- 9: a paused queue stays listed -------------------------------------------------------------

def test_a_cleared_paused_queue_stays_listed_with_resume(admin_client, store, redis_client):
    store.push([("mail", raw_job("m" * 24, queue="mail"))])
    api.Queue("mail").pause()
    admin_client.post(url("queue", "mail"), {"action": "clear", "confirm": "yes"})
    assert redis_client.sismember("queues", "mail") == 0  # clearing forgets the registration
    assert [q.name for q in api.Queue.all()] == ["mail"]
    page = admin_client.get(url("queues"))
    assert f'href="{url("queue", "mail")}"' in page.text
    assert 'value="resume"' in page.text and "paused</span>" in page.text
    admin_client.post(url("queue", "mail"), {"action": "resume"})
    assert api.Queue.all() == [] and "No queue has been used yet." in admin_client.get(
        url("queues")).text


# -- 10: one read per page ----------------------------------------------------------------------

@pytest.fixture
def round_trips(store, monkeypatch):
    """Count what reaches Redis through the default storage: (kind, detail) per round trip."""
    calls: list[tuple[str, str]] = []
    client = store.client
    command, pipeline = client.execute_command, client.pipeline

    def counted_command(*args, **kwargs):
        calls.append(("command", str(args[0])))
        return command(*args, **kwargs)

    def counted_pipeline(*args, **kwargs):
        calls.append(("pipeline", "MULTI" if kwargs.get("transaction", True) else "plain"))
        return pipeline(*args, **kwargs)

    monkeypatch.setattr(client, "execute_command", counted_command)
    monkeypatch.setattr(client, "pipeline", counted_pipeline)
    return calls


def test_polling_and_pages_read_every_figure_in_one_multi(admin_client, store, round_trips):
    store.push([("default", raw_job("a" * 24)), ("mail", raw_job("b" * 24, queue="mail"))])
    store.heartbeat(Heartbeat(identity="h:1:a", info="{}", busy=2, quiet=False, rss_kb=1,
                              rtt_us=1, work={}, ttl=60, processed=0, failed=0))
    for path in (url("stats"), url("busy"), url("queues")):
        admin_client.get(path)  # learns the queue and process names
        round_trips.clear()
        response = admin_client.get(path)
        assert response.status_code == 200
        assert round_trips == [("pipeline", "MULTI")], path
    data = admin_client.get(url("stats")).json()
    assert (data["enqueued"], data["busy"], data["processes"]) == (2, 2, 1)
    round_trips.clear()
    admin_client.get(url("dashboard"))
    assert round_trips == [("pipeline", "MULTI"), ("command", "INFO")]  # + the Redis panel


def test_a_new_queue_is_seen_in_the_same_snapshot_that_names_it(store, redis_client):
    api.Stats()
    store.push([("new", raw_job("a" * 24, queue="new"))])
    stats = api.Stats(queues=True)
    assert stats.enqueued == 1 and [(q.name, q.size) for q in stats.queues] == [("new", 1)]


def test_polled_figures_always_add_up_while_jobs_move(admin_client, store, redis_client):
    """A writer moves jobs from the queue to processed (and some to failed + retry) in MULTIs;
    every answer of the stats endpoint must see a state between two of those steps."""
    total = 400
    store.push([("default", raw_job(f"{i:024x}")) for i in range(total)])
    stop = threading.Event()

    def work() -> None:
        i = 0
        while not stop.is_set() and redis_client.llen("queue:default"):
            with redis_client.pipeline(transaction=True) as pipe:
                pipe.rpop("queue:default")
                pipe.incr("stat:processed")
                if i % 3 == 0:
                    pipe.incr("stat:failed")
                    pipe.zadd("retry", {f"r{i}": time.time()})
                pipe.execute()
            i += 1

    writer = threading.Thread(target=work, name="test-writer")
    writer.start()
    try:
        answers = [admin_client.get(url("stats")).json() for _ in range(150)]
    finally:
        stop.set()
        writer.join(10)
    assert any(0 < a["processed"] < total for a in answers)  # polls ran while jobs moved
    for a in answers:
        assert a["enqueued"] + a["processed"] == total, a
        assert a["failed"] == a["retries"], a


# -- 11: breadcrumbs ----------------------------------------------------------------------------

def breadcrumb_text(response) -> str:
    crumbs = re.search(r'<ol class="breadcrumbs[^"]*">(.*?)</ol>', response.text, re.S).group(1)
    return re.sub(r"\s+", " ", html.unescape(re.sub(r"<[^>]+>", "", crumbs))).strip()


def test_breadcrumbs_have_a_space_after_each_separator(admin_client, store):
    store.push([("default", raw_job("a" * 24))])
    queue_page = admin_client.get(url("queue", "default"))
    assert breadcrumb_text(queue_page) == "Home › Background jobs › Dashboard › Queues › " \
                                          "Queue default"
    detail = admin_client.get(queue_page.context["rows"][0].url)
    text = breadcrumb_text(detail)
    assert "Queues › default › Job tests.jobs.record" in text
    assert not re.search(r"›\S", text)


# -- 11: the set tables at 420 px, in Chromium ----------------------------------------------------

@pytest.mark.skipif(not HAVE_CHROMIUM, reason="Chromium is not installed")
@pytest.mark.django_db(transaction=True)
def test_set_tables_fit_a_420px_screen(page, live_server, demo_data, tmp_path):
    """Arguments and errors stay inside the window: each row becomes a card of labelled cells.
    Screenshots go to tmp_path only."""
    page.set_viewport_size({"width": 420, "height": 900})
    for path in ("retries/", "dead/", "scheduled/", "queues/default/"):
        page.goto(f"{live_server.url}/admin/django_kiq/jobs/{path}")
        page.screenshot(path=str(tmp_path / f"{path.replace('/', '_')}420.png"))
        width = page.evaluate("window.innerWidth")
        cells = page.locator("#result_list td.kiq-args-cell, #result_list td.kiq-error")
        assert cells.count() >= 2, path
        for i in range(min(cells.count(), 6)):
            box = cells.nth(i).bounding_box()
            assert box["x"] >= 0 and box["x"] + box["width"] <= width, (path, i, box)
        assert page.evaluate("document.documentElement.scrollWidth") <= width, path
    crumbs = page.inner_text("ol.breadcrumbs")
    assert "Queues › Queue default" in " ".join(crumbs.split())
