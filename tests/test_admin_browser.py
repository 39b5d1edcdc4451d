"""The admin console in a real headless Chromium (Debian's), driven by Playwright.

Logs in through the admin login form, opens every page, retries a job from the Retries page and
sees it leave the set, runs a set-wide action through its confirmation page, watches the live
chart poll, and saves a screenshot of each page into pytest's temporary folder, so a test run
changes no tracked file. ``bash scripts/screenshots.sh`` runs this module with
``KIQ_SCREENSHOTS_DIR=docs/screenshots`` to refresh the committed screenshots docs/admin.md
shows. Skipped only when /usr/bin/chromium is missing (CI installs it).
"""

from __future__ import annotations

import datetime as dt
import json
import os
import time
from pathlib import Path

import pytest
from django.conf import settings
from django.test import override_settings

from django_kiq import api, payload
from django_kiq.storage import Heartbeat
from tests import jobs  # noqa: F401 - registers the job names the seed data uses

CHROMIUM = Path("/usr/bin/chromium")
ROOT = Path(__file__).resolve().parent.parent
SHOTS_ENV = "KIQ_SCREENSHOTS_DIR"  # set by scripts/screenshots.sh; relative to the repository

if not CHROMIUM.exists():
    pytest.skip("Debian's chromium is not installed at /usr/bin/chromium "
                "(apt-get install chromium)", allow_module_level=True)
from playwright.sync_api import sync_playwright  # noqa: E402 - a dev dependency

pytestmark = pytest.mark.django_db(transaction=True)

CHROMIUM_ARGS = ["--no-sandbox", "--headless", "--disable-gpu", "--disable-background-networking",
                 "--disable-component-update", "--disable-sync", "--no-first-run"]
XSS = "<script>alert('kiq')</script>"


@pytest.fixture(scope="module")
def browser():
    # Playwright's sync API runs an event loop in this thread while the browser is open, so
    # Django's ORM (creating the user, flushing the test DB) would be refused as "async
    # unsafe": allow it for this module only.
    with pytest.MonkeyPatch.context() as patch, sync_playwright() as pw:
        patch.setenv("DJANGO_ALLOW_ASYNC_UNSAFE", "true")
        chromium = pw.chromium.launch(executable_path=str(CHROMIUM), args=CHROMIUM_ARGS)
        yield chromium
        chromium.close()


@pytest.fixture
def page(browser, live_server, django_user_model, settings):
    settings.PASSWORD_HASHERS = ["django.contrib.auth.hashers.MD5PasswordHasher"]
    django_user_model.objects.create_superuser("admin", "admin@example.com", "admin")
    context = browser.new_context(viewport={"width": 1360, "height": 900})
    tab = context.new_page()
    errors: list[str] = []
    tab.on("pageerror", lambda exc: errors.append(str(exc)))
    tab.goto(f"{live_server.url}/admin/login/?next=/admin/django_kiq/jobs/")
    tab.fill("#id_username", "admin")
    tab.fill("#id_password", "admin")
    tab.click("input[type=submit]")
    tab.wait_for_url("**/admin/django_kiq/jobs/")
    yield tab
    context.close()
    assert errors == [], f"JavaScript errors: {errors}"


@pytest.fixture
def demo_data(store, redis_client):
    """Something on every page: processes, queues, the three sets, stats, metrics, cron."""
    now = time.time()

    def raw(i: int, name: str, args: list, queue: str = "default", **extra) -> bytes:
        job = payload.build(name=name, args=args, kwargs={}, queue=queue, now=now - 300 + i)
        job["enqueued_at"] = now - 120 + i
        job.update(extra)
        return payload.encode(job)

    def failure(i: int, name: str, args: list, message: str, **extra) -> bytes:
        return raw(i, name, args, retry_count=i % 5, error_class="ValueError",
                   error_message=message, failed_at=now - 60 * i,
                   error_backtrace=[f'  File "app/jobs.py", line {10 + i}, in {name}',
                                    f"    raise ValueError({message!r})"], **extra)

    store.push([("default", raw(i, "shop.jobs.send_receipt", [1000 + i, "receipt"]))
                for i in range(40)]
               + [("mail", raw(i, "mail.jobs.newsletter", [f"user{i}@example.com"], "mail"))
                  for i in range(6)])
    store.schedule([(now + 600 * (i + 1), raw(i, "shop.jobs.reminder", [i, {"days": 3}]))
                    for i in range(8)], "schedule")
    store.schedule([(now + 30 * (i + 1), failure(i, "shop.jobs.charge_card", [2000 + i],
                                                f"card {2000 + i} declined"))
                    for i in range(30)]
                   + [(now + 5000, failure(99, "shop.jobs.import_feed", [XSS], "bad <feed>"))],
                   "retry")
    store.schedule([(now - 3600 * i, failure(i, "shop.jobs.sync_inventory", [i],
                                            "warehouse API timed out"))
                    for i in range(5)], "dead")
    today = dt.datetime.now(dt.UTC).date()
    for days_ago in range(0, 40):
        day = today - dt.timedelta(days=days_ago)
        redis_client.set(f"stat:processed:{day}", 4000 + (days_ago * 937) % 2500)
        redis_client.set(f"stat:failed:{day}", 40 + (days_ago * 53) % 160)
    redis_client.set("stat:processed", 182_345)
    redis_client.set("stat:failed", 2_113)
    work = {f"kiq-processor-{i}": json.dumps({
        "queue": "default", "run_at": now - 4 * i,
        "payload": raw(i, "shop.jobs.render_invoice", [3000 + i]).decode(),
        # what current_job().progress() reports (docs/workflows.md)
        **({"progress": 40, "progress_message": "page 4 of 10"} if i == 1 else {})})
        for i in (1, 2)}
    metrics = {"shop.jobs.send_receipt": {"p": 900, "f": 12, "ms": 54000, "h2": 300, "h3": 400,
                                          "h4": 150, "h5": 40, "h9": 10},
               "shop.jobs.charge_card": {"p": 120, "f": 31, "ms": 96000, "h8": 40, "h9": 50,
                                         "h10": 25, "h12": 5}}
    for i, (name, tag) in enumerate((("web-1", "blue"), ("web-2", "green"))):
        info = {"hostname": name, "pid": 4100 + i, "tag": tag, "concurrency": 5,
                "queues": ["default", "mail"], "started_at": now - 7200 * (i + 1),
                "version": "0.1.0"}
        store.heartbeat(Heartbeat(identity=f"{name}:{4100 + i}:a1b2c3", info=json.dumps(info),
                                  busy=2 if i == 0 else 0, quiet=i == 1, rss_kb=81920 + i * 4096,
                                  rtt_us=180, work=work if i == 0 else {}, ttl=120, processed=0,
                                  failed=0), metrics=metrics if i == 0 else None)
    for i in range(2):  # the two workers of one ``kiq_worker --processes 2`` supervisor
        info = {"hostname": "worker-1", "pid": 5001 + i, "tag": "", "concurrency": 10,
                "queues": ["default"], "started_at": now - 600, "version": "0.1.0",
                "supervisor": {"identity": "worker-1:5000:sup", "pid": 5000, "index": i,
                               "processes": 2}}
        store.heartbeat(Heartbeat(identity=f"worker-1:{5001 + i}:d4e5f6", info=json.dumps(info),
                                  busy=0, quiet=False, rss_kb=61440, rtt_us=150, work={},
                                  ttl=120, processed=0, failed=0))
    cron = [{"name": "nightly-report", "cron": "0 3 * * *", "job": "tests.jobs.record",
             "args": ["report"], "timezone": "Europe/Paris"},
            {"name": "every-5-minutes", "cron": "*/5 * * * *", "job": "tests.jobs.noop",
             "queue": "default"}]
    with override_settings(KIQ={**settings.KIQ, "PERIODIC": cron}):
        yield


def screenshot_dir(tmp_path: Path, environ=os.environ) -> Path:
    """Where screenshots go: the test's temporary folder, unless KIQ_SCREENSHOTS_DIR asks for
    another (``scripts/screenshots.sh`` points it at docs/screenshots)."""
    chosen = environ.get(SHOTS_ENV)
    return ROOT / chosen if chosen else tmp_path / "screenshots"


@pytest.fixture
def shots(tmp_path) -> Path:
    return screenshot_dir(tmp_path)


def shoot(page, shots: Path, name: str) -> None:
    shots.mkdir(parents=True, exist_ok=True)
    page.screenshot(path=str(shots / f"{name}.png"), full_page=True)


def test_screenshots_go_to_a_temporary_folder_unless_asked(tmp_path):
    assert screenshot_dir(tmp_path, {}) == tmp_path / "screenshots"
    assert screenshot_dir(tmp_path, {SHOTS_ENV: "docs/screenshots"}) == \
        ROOT / "docs" / "screenshots"
    assert screenshot_dir(tmp_path, {SHOTS_ENV: "/srv/shots"}) == Path("/srv/shots")


def test_every_page_renders_and_retrying_a_job_removes_it(page, live_server, demo_data,
                                                          redis_client, shots):
    base = f"{live_server.url}/admin/django_kiq/jobs/"
    committed = {p: p.stat().st_mtime_ns for p in (ROOT / "docs" / "screenshots").glob("*.png")}
    page.reload()  # the login landed here before the data was written
    # Dashboard: the live chart draws once the second poll gives a difference.
    page.select_option("[data-kiq-interval]", "2")
    page.wait_for_selector("[data-kiq-rt-chart] polyline.kiq-processed", state="attached")
    assert page.text_content('[data-kiq-stat="processed"]') == "182,345"
    last = "document.querySelector('[data-kiq-rt-last=\"processed\"]').textContent"
    for step in (37, 52, 45):  # work done between polls, as a worker's heartbeat would flush
        redis_client.incrby("stat:processed", step)
        redis_client.incrby("stat:failed", step // 10)
        page.wait_for_function(f"{last} === '{step}'")
    assert page.text_content('[data-kiq-stat="processed"]') == f"{182_345 + 37 + 52 + 45:,}"
    shoot(page, shots, "dashboard")
    page.click("[data-kiq-pause]")
    assert page.text_content("[data-kiq-pause]") == "Resume"
    page.click("[data-kiq-pause]")  # leave it running for the next runs

    for path, name, heading in (("busy/", "busy", "Busy"), ("queues/", "queues", "Queues"),
                                ("queues/default/", "queue", "Queue default"),
                                ("scheduled/", "scheduled", "Scheduled"),
                                ("dead/", "dead", "Dead"), ("periodic/", "periodic",
                                                            "Periodic jobs"),
                                ("metrics/", "metrics", "Metrics")):
        page.goto(base + path)
        assert page.text_content("#content h1") == heading
        shoot(page, shots, name)
    assert page.locator("#kiq-metrics svg .kiq-bar").count() == 2 * 26

    page.goto(base + "retries/")
    assert page.locator("input.action-select").count() == 25
    shoot(page, shots, "retries")
    first = page.locator("input.action-select").first
    key = first.get_attribute("value")
    jid = key.split("|", 1)[1]
    first.check()
    assert page.text_content("[data-kiq-selected-count]") == "1 selected"
    page.click("button[name=action][value=retry_now]")
    page.wait_for_selector(".messagelist .success")
    assert "Retried 1 job." in page.text_content(".messagelist")
    assert page.locator(f"input.action-select[value='{key}']").count() == 0
    assert api.RetrySet().find(jid) is None
    assert jid in {json.loads(m)["jid"] for m in redis_client.lrange("queue:default", 0, -1)}

    # A job's detail page, with the script in its arguments shown as text.
    page.goto(base + "retries/?q=import_feed")
    page.click("#result_list tbody a >> nth=0")
    page.wait_for_selector("#kiq-args")
    assert XSS in page.text_content("#kiq-args")
    shoot(page, shots, "job")

    # A set-wide action goes through its confirmation page.
    page.goto(base + "dead/")
    page.click("button[name=action][value=delete_all]")
    page.wait_for_selector(".kiq-confirm")
    shoot(page, shots, "confirm")
    page.click(".kiq-confirm input[type=submit]")
    page.wait_for_selector(".messagelist .success")
    assert "Deleted 5 jobs." in page.text_content(".messagelist")
    assert redis_client.zcard("dead") == 0
    assert {p.stem for p in shots.glob("*.png")} >= {"dashboard", "retries", "job", "confirm",
                                                       "periodic", "busy"}
    if SHOTS_ENV not in os.environ:  # a test run leaves the committed screenshots alone
        assert {p: p.stat().st_mtime_ns for p in committed} == committed


def _settle_batch_jobs(store, bid: str, succeed: int, fail: int = 0) -> None:
    """Run ``succeed`` + ``fail`` of the queue's oldest jobs the way a worker settles them:
    fetched into an in-progress list, then settled with their count in batch ``bid`` (the
    failures to the retry set)."""
    from django_kiq import storage

    fetched, _ = store.fetch("shot:1:a", ["default"], succeed + fail)
    entries = []
    for i, (_, raw) in enumerate(fetched):
        job = payload.decode(raw)
        ok = i < succeed
        mark = storage.BatchMark(bids=(bid,), member=job["jid"], outcome="s" if ok else "f",
                                 ttl=3600)
        if ok:
            entries.append(storage.Settle(kind="x", old=raw, batch=mark))
            continue
        job.update(retry_count=0, error_class="ValueError", failed_at=time.time(),
                   error_message=f"row {job['args'][0]} is malformed")
        entries.append(storage.Settle(kind="z", old=raw, new=payload.encode(job), dest="retry",
                                      score=time.time() + 900, batch=mark))
    store.settle("shot:1:a", entries)


def test_batch_pages_show_progress_and_lead_to_each_job(page, live_server, store, redis_client,
                                                        shots):
    """The Batches tab and a batch page, as a user sees them: progress, counts and callbacks;
    a pending job's link opens its page; "Retry failed jobs now" sends the failure back."""
    from django_kiq import batch

    with batch(description="Nightly sync", on_success=jobs.record.s("synced")) as done:
        jobs.record.enqueue_many([(f"sync-{i}",) for i in range(4)])
    _settle_batch_jobs(store, done.bid, succeed=4)
    with batch(description="Import November <rows>", on_success=jobs.record.s("imported"),
               on_death=jobs.record.s("alert")) as b:
        jobs.record.enqueue_many([(f"row-{i}",) for i in range(12)])
    _settle_batch_jobs(store, b.bid, succeed=7, fail=1)
    base = f"{live_server.url}/admin/django_kiq/jobs/"

    page.goto(base + "batches/")
    assert page.text_content("#content h1") == "Batches"
    rows = page.locator("#kiq-batches tbody tr")
    assert rows.count() == 2
    assert "Import November <rows>" in rows.nth(0).text_content()
    assert "58%" in rows.nth(0).text_content() and "succeeded" in rows.nth(1).text_content()
    shoot(page, shots, "batches")

    page.click("text=Import November <rows>")
    page.wait_for_selector("button[value=retry_failed]")
    assert "12 total, 5 pending, 1 failed, 0 dead" in page.text_content("#content")
    shoot(page, shots, "batch")
    failed = set(page.locator("h2:has-text('Failed') + ul a").all_text_contents())
    queued = [link for link in page.locator("h2:has-text('Pending') + ul a").all()
              if link.text_content() not in failed]  # the failed one is pending too
    jid = queued[0].text_content()
    queued[0].click()
    page.wait_for_selector("#kiq-args")
    assert jid in page.text_content("#content") and "/queues/default/" in page.url

    page.go_back()
    page.click("button[value=retry_failed]")
    page.wait_for_selector(".messagelist .success")
    assert "Moved 1 failed job(s)" in page.text_content(".messagelist")
    assert redis_client.zcard("retry") == 0 and redis_client.llen("queue:default") == 5


def test_live_poll_reloads_list_pages(page, live_server, demo_data, redis_client):
    page.evaluate("localStorage.setItem('kiq.interval', '2')")
    page.goto(f"{live_server.url}/admin/django_kiq/jobs/scheduled/")
    assert page.text_content('[data-kiq-stat="scheduled"]') == "8"
    page.check("[data-kiq-live-toggle]")
    assert "every 2 s" in page.text_content("[data-kiq-live-state]")
    redis_client.zremrangebyrank("schedule", 0, 2)
    page.wait_for_function(
        "document.querySelector('[data-kiq-stat=\"scheduled\"]').textContent === '5'",
        timeout=10_000)
    assert page.locator("input.action-select").count() == 5
