"""The admin console (django_kiq.admin) through Django's test client, against the real Redis.

Covers every page and action, the permissions (login, 403 without view_jobs, 403 on POST without
manage_jobs), CSRF on actions, escaping of job data, paging, filtering and the confirmation step
of set-wide actions. Data is written with the storage verbs and django_kiq.payload, or produced
by a real worker running tests.jobs.
"""

from __future__ import annotations

import datetime as dt
import json
import re
import time

import pytest
from django.conf import settings
from django.contrib.auth.models import Permission
from django.contrib.admin import AdminSite
from django.test import Client, override_settings
from django.urls import path, reverse

from django_kiq import api, payload
from django_kiq.admin import JobsAdmin
from django_kiq.models import Jobs
from django_kiq.storage import Heartbeat
from tests import jobs  # noqa: F401 - registers the job names used below
from tests.conftest import wait_for

pytestmark = pytest.mark.django_db

BASE = "/admin/django_kiq/jobs/"
XSS = "<script>alert('kiq')</script>"
ESCAPED = "&lt;script&gt;alert(&#x27;kiq&#x27;)&lt;/script&gt;"
GET_PAGES = ["", "stats/", "busy/", "queues/", "queues/default/", "retries/", "scheduled/",
             "dead/", "periodic/", "metrics/"]


def url(name: str, *args) -> str:
    return reverse(f"admin:django_kiq_{name}", args=args)


def job_raw(i: int = 0, *, name: str = "tests.jobs.record", args=None, queue: str = "default",
            **extra) -> bytes:
    job = payload.build(name=name, args=[f"arg{i}"] if args is None else args, kwargs={},
                        queue=queue, now=time.time() - 60, jid=f"{i:024x}")
    job.update(extra)
    return payload.encode(job)


def failed_raw(i: int = 0, **extra) -> bytes:
    fields = {"retry_count": 2, "error_class": "ValueError", "error_message": f"boom {i}",
              "failed_at": time.time() - 30, "error_backtrace": ["line one", "line two"]}
    return job_raw(i, name="tests.jobs.fail", **{**fields, **extra})


def fill(store, set_name: str, raws: list[bytes], start: float | None = None) -> None:
    start = time.time() + 3600 if start is None else start
    store.schedule([(start + i, raw) for i, raw in enumerate(raws)], set_name)


def jids_in(redis_client, key: str) -> set[str]:
    members = (redis_client.zrange(key, 0, -1) if redis_client.type(key) == b"zset"
               else redis_client.lrange(key, 0, -1))
    return {json.loads(m)["jid"] for m in members}


def beat(store, identity: str, *, work: dict | None = None, metrics: dict | None = None,
         busy: int = 0, processed: int = 0) -> list[str]:
    info = {"hostname": "web-host", "pid": 4242, "tag": "blue", "concurrency": 5,
            "queues": ["default", "mail"], "started_at": time.time() - 600, "version": "0.1.0"}
    return store.heartbeat(Heartbeat(
        identity=identity, info=json.dumps(info), busy=busy, quiet=False, rss_kb=20480,
        rtt_us=50, work=work or {}, ttl=60, processed=processed, failed=0), metrics=metrics)


@pytest.fixture(autouse=True)
def _fast_passwords(settings):
    """admin_client's user has a password: hash it cheaply (the default takes ~1 s here)."""
    settings.PASSWORD_HASHERS = ["django.contrib.auth.hashers.MD5PasswordHasher"]


@pytest.fixture
def user_client(django_user_model):
    """A logged-in client for a staff user with the given django_kiq permissions."""

    def make(*codenames: str, staff: bool = True, **client_kwargs) -> Client:
        user = django_user_model.objects.create_user(
            username=f"u{django_user_model.objects.count()}", password=None, is_staff=staff)
        for codename in codenames:
            user.user_permissions.add(
                Permission.objects.get(content_type__app_label="django_kiq", codename=codename))
        client = Client(**client_kwargs)
        client.force_login(user)
        return client

    return make


def follow_messages(response) -> list[str]:
    return [str(m) for m in response.context["messages"]]


def post(client, path: str, data: dict, **kwargs):
    return client.post(path, data, follow=True, **kwargs)


# -- mounting and permissions -------------------------------------------------------------------

# A project's own AdminSite next to the default one (used with @pytest.mark.urls below).
ops_site = AdminSite(name="ops")
ops_site.register(Jobs, JobsAdmin)
urlpatterns = [path("ops/", ops_site.urls)]


def test_urls_live_under_the_model_and_the_changelist_is_the_dashboard():
    assert url("dashboard") == BASE == reverse("admin:django_kiq_jobs_changelist")
    assert url("job", "retries", "1.5|abc") == BASE + "job/retries/1.5%7Cabc/"
    assert url("queue", "mail") == BASE + "queues/mail/"


def test_admin_index_links_to_the_console(admin_client, store):
    response = admin_client.get("/admin/")
    assert response.status_code == 200
    assert f'href="{BASE}"' in response.text and "Background jobs" in response.text
    app = admin_client.get("/admin/django_kiq/")
    assert app.status_code == 200 and f'href="{BASE}"' in app.text


@pytest.mark.urls("tests.test_admin")
def test_a_custom_admin_site_serves_the_console_with_its_own_links(admin_client, store):
    fill(store, "retry", [failed_raw(1)])
    response = admin_client.get("/ops/django_kiq/jobs/retries/")
    assert response.status_code == 200
    assert 'href="/ops/django_kiq/jobs/dead/"' in response.text
    assert 'href="/ops/django_kiq/jobs/job/retries/' in response.text
    assert 'href="/ops/"' in response.text and 'href="/admin/' not in response.text
    moved = admin_client.post("/ops/django_kiq/jobs/retries/", {"action": "retry_all"})
    assert 'href="/ops/django_kiq/jobs/retries/"' in moved.text  # its confirmation page


def test_no_table_is_created(store):
    from django.db import connection

    assert "django_kiq_jobs" not in connection.introspection.table_names()


@pytest.mark.parametrize("page", GET_PAGES + ["job/retries/1.0|x/"])
def test_anonymous_users_are_sent_to_the_admin_login(client, page, store):
    response = client.get(BASE + page)
    assert response.status_code == 302
    assert response["Location"].startswith("/admin/login/?next=")


def test_non_staff_users_are_sent_to_the_login_even_with_the_permission(user_client, store):
    response = user_client("view_jobs", "manage_jobs", staff=False).get(BASE)
    assert response.status_code == 302 and "/admin/login/" in response["Location"]


@pytest.mark.parametrize("page", GET_PAGES)
def test_staff_without_view_jobs_get_403(user_client, page, store):
    assert user_client("manage_jobs").get(BASE + page).status_code == 403
    assert user_client().get(BASE + page).status_code == 403


@pytest.mark.parametrize("page", GET_PAGES)
def test_view_only_staff_see_every_page(user_client, page, store):
    assert user_client("view_jobs").get(BASE + page).status_code == 200


@pytest.mark.parametrize("page,data", [
    ("retries/", {"action": "delete_all", "confirm": "yes"}),
    ("queues/default/", {"action": "clear", "confirm": "yes"}),
    ("busy/", {"action": "stop_all", "confirm": "yes"}),
    ("periodic/", {"action": "pause", "name": "x"}),
])
def test_view_only_staff_cannot_act(user_client, store, redis_client, page, data):
    fill(store, "retry", [failed_raw(1)])
    store.push([("default", job_raw(2))])
    client = user_client("view_jobs")
    assert client.post(BASE + page, data).status_code == 403
    assert redis_client.zcard("retry") == 1 and redis_client.llen("queue:default") == 1
    page_html = client.get(url("retries")).text
    assert 'value="retry_now"' not in page_html and 'name="key"' not in page_html


def test_get_only_pages_refuse_post(admin_client, store):
    assert admin_client.post(url("stats")).status_code == 405
    assert admin_client.post(url("metrics")).status_code == 405


def test_actions_need_a_csrf_token(user_client, store, redis_client):
    fill(store, "retry", [failed_raw(1)])
    client = user_client("view_jobs", "manage_jobs", enforce_csrf_checks=True)
    key = api.RetrySet().jobs()[0].key
    response = client.post(url("retries"), {"action": "delete", "key": [key]})
    assert response.status_code == 403 and redis_client.zcard("retry") == 1
    page = client.get(url("retries"))
    token = re.search(r'name="csrfmiddlewaretoken" value="([^"]+)"', page.text).group(1)
    response = client.post(url("retries"), {"action": "delete", "key": [key],
                                            "csrfmiddlewaretoken": token})
    assert response.status_code == 302 and redis_client.zcard("retry") == 0


# -- summary bar, dashboard, stats --------------------------------------------------------------


def test_summary_bar_on_every_page(admin_client, store, redis_client):
    redis_client.set("stat:processed", 12345)
    redis_client.set("stat:failed", 67)
    fill(store, "retry", [failed_raw(i) for i in range(3)])
    fill(store, "schedule", [job_raw(i) for i in range(4)])
    fill(store, "dead", [failed_raw(i) for i in range(5)])
    store.push([("default", job_raw(9))])
    for page in GET_PAGES:
        if page == "stats/":
            continue
        text = admin_client.get(BASE + page).text
        summary = text[text.index('class="kiq-summary"'):]
        summary = summary[:summary.index("</ul>")]
        for key, value in (("processed", "12,345"), ("failed", "67"), ("busy", "0"),
                           ("enqueued", "1"), ("retries", "3"), ("scheduled", "4"),
                           ("dead", "5")):
            assert f'data-kiq-stat="{key}">{value}</span>' in summary, (page, key)
        assert f'href="{url("dead")}"' in summary and f'href="{url("busy")}"' in summary


def test_stats_endpoint(admin_client, store, redis_client):
    redis_client.set("stat:processed", 10)
    fill(store, "dead", [failed_raw(1)])
    data = admin_client.get(url("stats")).json()
    assert (data["processed"], data["failed"], data["dead"], data["enqueued"]) == (10, 0, 1, 0)
    assert {"busy", "retries", "scheduled", "processes", "latency", "time"} <= set(data)


def test_dashboard_history_chart_and_redis_info(admin_client, store, redis_client):
    today = dt.datetime.now(dt.UTC).date()
    redis_client.set(f"stat:processed:{today}", 1500)
    redis_client.set(f"stat:failed:{today}", 20)
    redis_client.set(f"stat:processed:{today - dt.timedelta(days=8)}", 700)
    week = admin_client.get(url("dashboard") + "?days=7")
    assert week.status_code == 200 and week.context["days"] == 7
    assert "<strong>1,500</strong>" in week.text and "<strong>20</strong>" in week.text
    assert week.text.count('class="kiq-line kiq-processed"') == 1
    assert len(week.context["chart"].hovers) == 7
    month = admin_client.get(url("dashboard") + "?days=30")
    assert "<strong>2,200</strong>" in month.text and len(month.context["chart"].hovers) == 30
    assert admin_client.get(url("dashboard") + "?days=3").context["days"] == 30
    info = api.Stats.redis_info()
    assert f"<td>{info['redis_version']}</td>" in month.text
    assert "data-kiq-realtime" in month.text and 'data-stats-url="' + url("stats") in month.text
    assert ("may evict keys" in month.text) == (info["maxmemory_policy"] != "noeviction")


def test_dashboard_warns_when_redis_may_evict(admin_client, store, monkeypatch):
    real = api.Stats.redis_info()
    monkeypatch.setattr(api.Stats, "redis_info",
                        classmethod(lambda cls: {**real, "maxmemory_policy": "allkeys-lru"}))
    text = admin_client.get(url("dashboard")).text
    assert "maxmemory-policy is “allkeys-lru”" in text and "noeviction" in text


def test_redis_errors_are_not_swallowed(admin_client, store, redis_client):
    """An unreachable Redis is a 500 (and a logged exception), on pages and on actions."""
    fill(store, "retry", [failed_raw(1)])
    admin_client.raise_request_exception = False
    with override_settings(KIQ={**settings.KIQ, "REDIS_URL": "redis://127.0.0.1:1/0"}):
        assert admin_client.get(url("retries")).status_code == 500
        assert admin_client.post(url("retries"), {"action": "delete_all", "confirm": "yes"}
                                 ).status_code == 500
    assert redis_client.zcard("retry") == 1


# -- busy ---------------------------------------------------------------------------------------


def test_busy_lists_processes_and_running_jobs(admin_client, store):
    raw = job_raw(5, args=[XSS])
    work = {"kiq-processor-1": json.dumps({"queue": "default", "payload": raw.decode(),
                                           "run_at": time.time() - 3, "progress": 40,
                                           "progress_message": f"4 of 10 {XSS}"})}
    beat(store, "web-host:4242:aa", work=work, busy=1)
    text = admin_client.get(url("busy")).text
    assert '<progress max="100" value="40' in text and "4 of 10 &lt;script&gt;" in text
    assert "web-host:4242" in text and "blue" in text and "default, mail" in text
    assert "20.0 MB" in text and "kiq-processor-1" in text and f"{5:024x}" in text
    assert XSS not in text and "&lt;script&gt;" in text
    assert 'value="quiet"' in text and 'value="stop_all"' in text


def test_busy_quiet_and_stop_one(admin_client, store):
    beat(store, "h:1:a")
    response = post(admin_client, url("busy"), {"action": "quiet", "identity": "h:1:a"})
    assert "Asked h:1:a to quiet" in " ".join(follow_messages(response))
    post(admin_client, url("busy"), {"action": "stop", "identity": "h:1:a"})
    assert beat(store, "h:1:a") == ["TSTP", "TERM"]


def test_busy_quiet_and_stop_all_ask_first(admin_client, store):
    beat(store, "h:1:a")
    beat(store, "h:2:b")
    confirm = admin_client.post(url("busy"), {"action": "stop_all"})
    assert confirm.status_code == 200 and "Stop all 2 running worker processes?" in confirm.text
    assert 'name="confirm" value="yes"' in confirm.text
    assert beat(store, "h:1:a") == []
    response = post(admin_client, url("busy"), {"action": "stop_all", "confirm": "yes"})
    assert "Asked every process to stop" in " ".join(follow_messages(response))
    post(admin_client, url("busy"), {"action": "quiet_all", "confirm": "yes"})
    assert beat(store, "h:1:a") == ["TERM", "TSTP"] and beat(store, "h:2:b") == ["TERM", "TSTP"]


def test_busy_rejects_unknown_actions(admin_client, store):
    assert admin_client.post(url("busy"), {"action": "explode"}).status_code == 400
    assert admin_client.post(url("busy"), {"action": "quiet"}).status_code == 400


# -- queues -------------------------------------------------------------------------------------


def test_queues_list_sizes_and_pause_resume(admin_client, store):
    store.push([("default", job_raw(i)) for i in range(3)] + [("mail", job_raw(9, queue="mail"))])
    text = admin_client.get(url("queues")).text
    assert f'href="{url("queue", "mail")}"' in text and f'href="{url("queue", "default")}"' in text
    response = post(admin_client, url("queue", "mail"), {"action": "pause", "next": url("queues")})
    assert response.redirect_chain[-1][0] == url("queues")
    assert "Queue mail paused." in follow_messages(response) and api.Queue("mail").paused
    assert "paused</span>" in response.text and 'value="resume"' in response.text
    post(admin_client, url("queue", "mail"), {"action": "resume"})
    assert not api.Queue("mail").paused


def test_queue_page_is_paged_and_deletes_one_job(admin_client, store, redis_client):
    store.push([("default", job_raw(i)) for i in range(30)])
    first = admin_client.get(url("queue", "default"))
    assert len(first.context["rows"]) == 25 and "1–25 of 30" in first.text
    assert first.context["rows"][0].record.jid == f"{0:024x}"  # run order: oldest first
    assert 'href="?offset=25"' in first.text and "« First</span>" in first.text
    second = admin_client.get(url("queue", "default") + "?offset=25")
    assert len(second.context["rows"]) == 5 and "26–30 of 30" in second.text
    assert 'href="?"' in second.text and "Next ›</span>" in second.text
    row = first.context["rows"][3]
    jid = row.record.jid
    assert f'name="key" value="{row.record.key}"' in first.text  # the row's Delete button
    response = post(admin_client, url("queue", "default"), {"action": "delete",
                                                            "key": row.record.key})
    assert f"Deleted job {jid}." in follow_messages(response)
    assert jid not in jids_in(redis_client, "queue:default")
    assert redis_client.llen("queue:default") == 29
    again = post(admin_client, url("queue", "default"), {"action": "delete",
                                                         "key": row.record.key})
    assert "That job was no longer in queue default." in follow_messages(again)
    assert admin_client.post(url("queue", "default"), {"action": "delete", "jid": jid}
                             ).status_code == 400  # a jid could name another job


def test_queue_clear_asks_first(admin_client, store, redis_client):
    store.push([("default", job_raw(i)) for i in range(4)])
    confirm = admin_client.post(url("queue", "default"), {"action": "clear"})
    assert confirm.status_code == 200 and "Delete all 4 jobs waiting in queue" in confirm.text
    assert redis_client.llen("queue:default") == 4
    response = post(admin_client, url("queue", "default"), {"action": "clear", "confirm": "yes"})
    assert "Cleared queue default: deleted 4 jobs." in follow_messages(response)
    assert redis_client.llen("queue:default") == 0


def test_queue_job_detail(admin_client, store):
    store.push([("mail", job_raw(1, queue="mail", args=[XSS, {"n": 1}]))])
    jid = f"{1:024x}"
    page = admin_client.get(url("queue", "mail"))
    key = page.context["rows"][0].record.key
    assert f'href="{url("queue_job", "mail", key)}"' in page.text
    detail = admin_client.get(url("queue_job", "mail", key))
    assert detail.status_code == 200 and jid in detail.text
    assert XSS not in detail.text and ESCAPED in detail.text
    assert '&quot;n&quot;: 1' in detail.text  # pretty-printed, escaped
    assert f'name="key" value="{key}"' in detail.text  # its Delete button
    assert admin_client.get(url("queue_job", "mail", jid)).status_code == 200  # a jid works too
    deleted = post(admin_client, url("queue", "mail"), {"action": "delete", "key": key,
                                                        "next": url("queue", "mail")})
    assert f"Deleted job {jid}." in follow_messages(deleted)
    gone = admin_client.get(url("queue_job", "mail", "f" * 24), follow=True)
    assert "is no longer in queue mail" in " ".join(follow_messages(gone))


# -- retries / scheduled / dead ------------------------------------------------------------------


def test_retries_page_columns_paging_and_last_page(admin_client, store):
    fill(store, "retry", [failed_raw(i) for i in range(60)])
    first = admin_client.get(url("retries"))
    assert len(first.context["rows"]) == 25 and "1–25 of 60" in first.text
    assert "Page 1 of 3" in first.text and 'href="?offset=50"' in first.text  # last
    assert "ValueError: boom 0" in first.text and "Next retry" in first.text
    assert 'value="retry_now"' in first.text and 'value="kill_all"' in first.text
    middle = admin_client.get(url("retries") + "?offset=25")
    assert 'href="?"' in middle.text and 'href="?offset=50"' in middle.text
    assert middle.context["rows"][0].record.jid == f"{25:024x}"  # soonest first
    last = admin_client.get(url("retries") + "?offset=50")
    assert len(last.context["rows"]) == 10 and "51–60 of 60" in last.text
    beyond = admin_client.get(url("retries") + "?offset=999")
    assert beyond.context["pager"].offset == 50
    assert admin_client.get(url("retries") + "?per_page=100").context["pager"].limit == 100


def test_set_filter_by_substring(admin_client, store):
    fill(store, "retry", [failed_raw(i) for i in range(30)]
         + [failed_raw(99, error_message="needle in here")])
    response = admin_client.get(url("retries") + "?q=needle")
    assert [r.record.jid for r in response.context["rows"]] == [f"{99:024x}"]
    assert response.context["pager"] is None and "1 match" in response.text
    assert "(search complete)" in response.text and "Search further" not in response.text
    none = admin_client.get(url("retries") + "?q=nothing-like-this")
    assert none.context["rows"] == [] and "No jobs here." in none.text
    assert admin_client.get(url("retries") + "?q=needle&cursor=-4").status_code == 200


def test_set_filter_on_a_big_set_resumes_from_the_redis_cursor(admin_client, store,
                                                               monkeypatch):
    from django_kiq.admin.views import sets

    monkeypatch.setattr(sets, "SEARCH_BUDGET", 1000)
    needles = {5, 1500, 2999}
    fill(store, "retry", [failed_raw(i, error_message="needle" if i in needles else "hay")
                          for i in range(3000)])
    found, steps, path = set(), 0, url("retries") + "?q=needle"
    while path:
        response = admin_client.get(path)
        steps += 1
        found |= {r.record.jid for r in response.context["rows"]}
        more = response.context["more_url"]
        path = url("retries") + more if more else None
        if more:
            assert "Search further ›" in response.text and "of the 3,000 jobs" in response.text
    assert found == {f"{i:024x}" for i in needles} and steps >= 3


def test_retry_now_selected_moves_jobs_to_their_queue(admin_client, store, redis_client):
    fill(store, "retry", [failed_raw(i) for i in range(3)])
    keys = [r.key for r in api.RetrySet().jobs()[:2]]
    response = post(admin_client, url("retries"), {"action": "retry_now", "key": keys})
    assert "Retried 2 jobs." in follow_messages(response)
    assert jids_in(redis_client, "queue:default") == {f"{0:024x}", f"{1:024x}"}
    assert redis_client.zcard("retry") == 1
    again = post(admin_client, url("retries"), {"action": "retry_now", "key": keys})
    assert "had already left the set" in " ".join(follow_messages(again))


def test_delete_and_kill_selected(admin_client, store, redis_client):
    fill(store, "retry", [failed_raw(i) for i in range(3)])
    first, second, _ = api.RetrySet().jobs()
    post(admin_client, url("retries"), {"action": "delete", "key": [first.key]})
    response = post(admin_client, url("retries"), {"action": "kill", "key": [second.key]})
    assert "Moved to the dead set 1 job." in follow_messages(response)
    assert jids_in(redis_client, "retry") == {f"{2:024x}"}
    assert jids_in(redis_client, "dead") == {second.jid}


def test_row_action_without_selection_warns(admin_client, store, redis_client):
    fill(store, "retry", [failed_raw(1)])
    response = post(admin_client, url("retries"), {"action": "delete"})
    assert "No jobs were selected" in " ".join(follow_messages(response))
    assert redis_client.zcard("retry") == 1


def test_actions_a_set_does_not_allow_are_refused(admin_client, store, redis_client):
    fill(store, "dead", [failed_raw(1)])
    key = api.DeadSet().jobs()[0].key
    assert admin_client.post(url("dead"), {"action": "kill", "key": [key]}).status_code == 400
    assert admin_client.post(url("dead"), {"action": "kill_all"}).status_code == 400
    assert admin_client.post(url("scheduled"), {"action": "retry_all"}).status_code == 400
    assert admin_client.post(url("retries"), {"action": "delete", "key": ["nonsense"]}
                             ).status_code == 400
    assert redis_client.zcard("dead") == 1
    assert 'value="kill"' not in admin_client.get(url("dead")).text


@pytest.mark.parametrize("slug,set_name,action,check", [
    ("retries", "retry", "retry_all", lambda r: r.llen("queue:default") == 5),
    ("retries", "retry", "delete_all", lambda r: r.zcard("dead") == 0),
    ("retries", "retry", "kill_all", lambda r: r.zcard("dead") == 5),
    ("scheduled", "schedule", "enqueue_all", lambda r: r.llen("queue:default") == 5),
    ("scheduled", "schedule", "delete_all", lambda r: r.llen("queue:default") == 0),
    ("dead", "dead", "retry_all", lambda r: r.llen("queue:default") == 5),
    ("dead", "dead", "delete_all", lambda r: r.llen("queue:default") == 0),
])
def test_set_wide_actions_ask_for_confirmation(admin_client, store, redis_client, slug,
                                               set_name, action, check):
    fill(store, set_name, [failed_raw(i) for i in range(5)])
    confirm = admin_client.post(url(slug), {"action": action})
    assert confirm.status_code == 200 and "all 5 jobs of the" in confirm.text
    assert f'name="action" value="{action}"' in confirm.text
    assert f'href="{url(slug)}"' in confirm.text  # "No, take me back"
    assert redis_client.zcard(set_name) == 5
    response = post(admin_client, url(slug), {"action": action, "confirm": "yes"})
    assert any(m.endswith("5 jobs.") for m in follow_messages(response))
    assert redis_client.zcard(set_name) == 0 and check(redis_client)


def test_scheduled_page_and_add_to_queue(admin_client, store, redis_client):
    fill(store, "schedule", [job_raw(i) for i in range(2)])
    page = admin_client.get(url("scheduled"))
    assert "Add to queue" in page.text and "Retries</th>" not in page.text
    assert 'value="kill"' not in page.text
    key = page.context["rows"][0].record.key
    response = post(admin_client, url("scheduled"), {"action": "enqueue_now", "key": [key]})
    assert "Added to their queues 1 job." in follow_messages(response)
    assert redis_client.llen("queue:default") == 1 and redis_client.zcard("schedule") == 1


def test_dead_page_newest_first_and_retry(admin_client, store, redis_client):
    fill(store, "dead", [failed_raw(i) for i in range(3)], start=time.time() - 100)
    page = admin_client.get(url("dead"))
    assert [r.record.jid for r in page.context["rows"]] == [f"{i:024x}" for i in (2, 1, 0)]
    response = post(admin_client, url("dead"),
                    {"action": "retry_now", "key": [page.context["rows"][0].record.key]})
    assert "Retried 1 job." in follow_messages(response)
    assert jids_in(redis_client, "queue:default") == {f"{2:024x}"}


# -- job detail ---------------------------------------------------------------------------------


def test_job_detail_shows_every_field(admin_client, store):
    fill(store, "retry", [failed_raw(1, args=[1, {"deep": [1, 2]}], custom_field="hello")])
    record = api.RetrySet().jobs()[0]
    page = admin_client.get(url("retries"))
    assert f'href="{url("job", "retries", record.key)}"' in page.text
    detail = admin_client.get(url("job", "retries", record.key))
    assert detail.status_code == 200
    text = detail.text
    assert "ValueError" in text and "boom 1" in text and "line one\nline two" in text
    assert '&quot;deep&quot;: [\n' in text  # pretty-printed args, escaped
    assert "custom_field" in text and "hello" in text and "retry_count" in text
    assert 'value="retry_now"' in text and f'value="{record.key}"' in text
    response = post(admin_client, url("retries"),
                    {"action": "delete", "key": [record.key], "next": url("retries")})
    assert "Deleted 1 job." in follow_messages(response)


def test_job_detail_of_a_job_that_left_and_of_a_bad_key(admin_client, store):
    response = admin_client.get(url("job", "dead", "123.0|abc"), follow=True)
    assert response.redirect_chain[-1][0] == url("dead")
    assert "no longer in the dead set" in " ".join(follow_messages(response))
    assert admin_client.get(url("job", "dead", "not-a-key")).status_code == 404
    assert admin_client.get(url("job", "nope", "1.0|abc")).status_code == 404


def test_malformed_entries_show_their_raw_text(admin_client, store):
    fill(store, "dead", [b'{"not": "a job", "x": "' + XSS.encode() + b'"}'])
    record = api.DeadSet().jobs()[0]
    page = admin_client.get(url("dead"))
    assert "malformed" in page.text and XSS not in page.text
    detail = admin_client.get(url("job", "dead", record.key))
    assert "Raw payload" in detail.text and XSS not in detail.text
    assert "&lt;script&gt;" in detail.text


def test_job_data_is_escaped_everywhere(admin_client, store):
    evil = failed_raw(1, args=[XSS], kwargs={"k": XSS}, error_class=XSS, error_message=XSS,
                      error_backtrace=[XSS], display_class=XSS)
    fill(store, "retry", [evil])
    record = api.RetrySet().jobs()[0]
    for path in (url("retries"), url("retries") + "?q=script", url("job", "retries", record.key)):
        text = admin_client.get(path).text
        assert XSS not in text, path
        assert ESCAPED in text, path


# -- periodic -----------------------------------------------------------------------------------


@pytest.fixture
def cron_entry(redis_url):
    entry = {"name": "nightly", "cron": "0 3 * * *", "job": "tests.jobs.record",
             "args": [XSS], "queue": "mail", "timezone": "Europe/Paris"}
    with override_settings(KIQ={**settings.KIQ, "PERIODIC": [entry]}):
        yield entry


def test_periodic_page_and_actions(admin_client, store, redis_client, cron_entry,
                                   django_capture_on_commit_callbacks):
    page = admin_client.get(url("periodic"))
    assert "nightly" in page.text and "0 3 * * *" in page.text and "Europe/Paris" in page.text
    assert XSS not in page.text and "active</span>" in page.text
    response = post(admin_client, url("periodic"), {"action": "pause", "name": "nightly"})
    assert "Paused nightly" in " ".join(follow_messages(response))
    assert "paused</span>" in response.text and 'value="resume"' in response.text
    post(admin_client, url("periodic"), {"action": "resume", "name": "nightly"})
    assert not api_periodic_paused("nightly")
    # The test runs inside a transaction: the push waits for a commit (ENQUEUE_ON_COMMIT).
    with django_capture_on_commit_callbacks(execute=True):
        response = post(admin_client, url("periodic"),
                        {"action": "enqueue_now", "name": "nightly"})
    [text] = follow_messages(response)
    jid = re.search(r"job ([0-9a-f]{24})", text).group(1)
    assert jids_in(redis_client, "queue:mail") == {jid} and jid in response.text


def api_periodic_paused(name: str) -> bool:
    from django_kiq import periodic

    return next(r.paused for r in periodic.records() if r.entry.name == name)


def test_periodic_unknown_entry_is_an_error_message(admin_client, store, cron_entry):
    response = post(admin_client, url("periodic"), {"action": "pause", "name": "ghost"})
    [text] = follow_messages(response)
    assert text.startswith("Pause ghost failed:") and "no periodic entry named 'ghost'" in text
    refused = admin_client.post(url("periodic"), {"action": "explode", "name": "x"})
    assert refused.status_code == 400


# -- metrics ------------------------------------------------------------------------------------


def test_metrics_table_and_histogram(admin_client, store):
    beat(store, "m:1:a", metrics={"tests.jobs.record": {"p": 10, "f": 2, "ms": 5000, "h0": 7,
                                                        "h3": 3},
                                  XSS: {"p": 1, "f": 0, "ms": 1, "h0": 1}})
    for hours in (1, 8, 24, 72):
        response = admin_client.get(url("metrics") + f"?hours={hours}")
        assert response.status_code == 200 and response.context["hours"] == hours
    text = response.text
    assert "tests.jobs.record" in text and "5.00 s" in text and "500 ms" in text
    assert "(20.0%)" in text and "&lt; 20 ms: 7" in text and "45 ms – 65 ms: 3" in text
    assert text.count('class="kiq-bar"') == 2 * 26
    assert XSS not in text
    assert admin_client.get(url("metrics") + "?hours=5").context["hours"] == 1


# -- batches and finding a job -----------------------------------------------------------------


def _move(redis_client, store, jid: str, set_name: str, at: float) -> bytes:
    """Take a queued job out of its queue and into a job set, unchanged (test data)."""
    record = api.Queue("default").find(jid)
    assert redis_client.lrem("queue:default", 1, record.raw) == 1
    if set_name:
        fill(store, set_name, [record.raw], start=at)
    return record.raw


def test_a_batch_page_links_each_job_to_its_page_wherever_it_is(
        admin_client, user_client, store, redis_client, django_capture_on_commit_callbacks):
    """The batch page links every member to find/<jid>/, which sends the user to the job's page
    in its queue or set, to Busy while it runs, or says it is nowhere (api.locate)."""
    from django_kiq import batch

    with django_capture_on_commit_callbacks(execute=True):
        with batch(description=f"members {XSS}") as b:
            queued, later, retrying, dead, running, gone = (
                jobs.record.enqueue(name) for name in ("q", "s", "r", "d", "b", "g"))
    _move(redis_client, store, later, "schedule", time.time() + 3600)
    _move(redis_client, store, retrying, "retry", time.time() + 600)
    _move(redis_client, store, dead, "dead", time.time() - 5)
    raw = _move(redis_client, store, running, "", 0)
    beat(store, "h:1:a", work={"kiq-processor-0": json.dumps(
        {"queue": "default", "payload": raw.decode(), "run_at": time.time()})}, busy=1)
    _move(redis_client, store, gone, "", 0)
    page = admin_client.get(url("batch", b.bid)).text
    assert XSS not in page and ESCAPED in page
    for jid in (queued, later, retrying, dead, running, gone):
        assert f'href="{url("find", jid)}"' in page
    located = {jid: admin_client.get(url("find", jid)) for jid in (queued, later, retrying, dead)}
    assert located[queued]["Location"] == url(
        "queue_job", "default", api.Queue("default").find(queued).key)
    for jid, slug, set_class in ((later, "scheduled", api.ScheduledSet),
                                 (retrying, "retries", api.RetrySet),
                                 (dead, "dead", api.DeadSet)):
        assert located[jid]["Location"] == url("job", slug, set_class().find(jid).key)
    assert admin_client.get(located[retrying]["Location"]).status_code == 200
    busy = admin_client.get(url("find", running), follow=True)
    assert f"Job {running} (tests.jobs.record) is running in process h:1:a." in (
        follow_messages(busy))
    nowhere = admin_client.get(url("find", gone))
    assert nowhere.status_code == 200 and "is not waiting or running" in nowhere.text
    escaped = admin_client.get(url("find", XSS))
    assert escaped.status_code == 200 and XSS not in escaped.text and ESCAPED in escaped.text
    assert user_client("view_jobs").get(url("find", queued)).status_code == 302
    assert user_client("manage_jobs").get(url("find", queued)).status_code == 403


def test_a_batch_page_retries_its_failed_jobs_now(admin_client, user_client, store,
                                                  redis_client,
                                                  django_capture_on_commit_callbacks):
    """"Retry failed jobs now" moves the batch's failed jobs waiting in the retry set (found in
    one scan of the set) to their queues; POST only, for staff who may manage jobs."""
    from django_kiq import batch, storage

    with django_capture_on_commit_callbacks(execute=True):
        with batch(description="failing") as b:
            failing = jobs.fail.enqueue("x")
            fine = jobs.record.enqueue("y")
    fill(store, "retry", [failed_raw(i) for i in range(3)])  # other jobs' retries stay
    moved = store.fetch("p1", ["default"], 2)[0]
    entries = []
    for _, raw in moved:
        job = payload.decode(raw)
        mark = storage.BatchMark(bids=(b.bid,), member=job["jid"],
                                 outcome="f" if job["jid"] == failing else "s", ttl=60)
        if job["jid"] == failing:
            job.update(retry_count=0, error_class="ValueError", error_message="x",
                       failed_at=time.time())
            entries.append(storage.Settle(kind="z", old=raw, new=payload.encode(job),
                                          dest="retry", score=time.time() + 600, batch=mark))
        else:
            entries.append(storage.Settle(kind="x", old=raw, batch=mark))
    assert store.settle("p1", entries) == [1, 1]
    status = api.Batch(b.bid)
    assert (status.failures, status.pending, redis_client.zcard("retry")) == (1, 1, 4)
    page = admin_client.get(url("batch", b.bid)).text
    assert 'value="retry_failed"' in page and url("find", failing) in page
    assert url("find", fine) not in page
    assert user_client("view_jobs").post(url("batch", b.bid),
                                         {"action": "retry_failed"}).status_code == 403
    assert admin_client.post(url("batch", b.bid), {"action": "nope"}).status_code == 400
    response = post(admin_client, url("batch", b.bid), {"action": "retry_failed"})
    assert f"Moved 1 failed job(s) of batch {b.bid} to their queues." in (
        follow_messages(response))
    assert redis_client.zcard("retry") == 3
    assert jids_in(redis_client, "queue:default") == {failing}


# -- with a real worker -------------------------------------------------------------------------


def test_a_real_failed_job_is_retried_from_the_admin(admin_client, store, redis_client,
                                                     worker_factory,
                                                     django_capture_on_commit_callbacks):
    with django_capture_on_commit_callbacks(execute=True):
        jid = jobs.fail.enqueue("from the admin test")
    worker = worker_factory("-c", "2")
    wait_for(lambda: redis_client.zcard("retry") == 1, timeout=20,
             message="the failing job never reached the retry set")
    worker.send(15)
    worker.wait(20)
    page = admin_client.get(url("retries"))
    [row] = page.context["rows"]
    assert row.record.jid == jid and "ValueError: from the admin test" in page.text
    response = post(admin_client, url("retries"), {"action": "retry_now", "key": [row.record.key]})
    assert "Retried 1 job." in follow_messages(response)
    assert redis_client.zcard("retry") == 0 and jids_in(redis_client, "queue:default") == {jid}
