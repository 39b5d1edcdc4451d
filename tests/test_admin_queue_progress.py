"""The admin's queue page shows the status and progress of queued jobs that keep a result
record (``result_ttl``): one pipelined read per page, none when no job on it keeps one."""

from __future__ import annotations

import pytest
from django.urls import reverse

from django_kiq import api, results
from django_kiq.storage import get_default
from tests import jobs, workflow_jobs as wj

# Committed transactions: ENQUEUE_ON_COMMIT pushes the jobs at the commit.
pytestmark = pytest.mark.django_db(transaction=True)


@pytest.fixture(autouse=True)
def _fast_passwords(settings):
    settings.PASSWORD_HASHERS = ["django.contrib.auth.hashers.MD5PasswordHasher"]


def _queue_url(name="default"):
    return reverse("admin:django_kiq_queue", args=[name])


def test_queued_jobs_with_a_result_show_their_status_and_progress(admin_client, store):
    jid = wj.with_progress.enqueue(0)
    plain = jobs.record.enqueue("x")
    get_default().write_job_results([(jid, {"progress": "40", "progress_message":
                                            "imported 4,000 of 10,000 rows"}, 600)])
    response = admin_client.get(_queue_url())
    assert response.status_code == 200
    html = response.content.decode()
    assert '<th scope="col">Status</th>' in html
    assert '<progress max="100" value="40' in html
    assert "imported 4,000 of 10,000 rows" in html
    assert ">queued</span>" in html
    rows = {row.record.jid: row.result for row in response.context["rows"]}
    assert rows[jid].progress == 40 and rows[plain] is None


def test_nothing_is_read_when_no_job_on_the_page_keeps_a_result(admin_client, store,
                                                                monkeypatch):
    jobs.record.enqueue("x")
    calls = []
    original = type(store).job_results

    def spy(self, jids):
        calls.append(list(jids))
        return original(self, jids)

    monkeypatch.setattr(type(store), "job_results", spy)
    response = admin_client.get(_queue_url())
    assert response.status_code == 200
    assert '<th scope="col">Status</th>' not in response.content.decode()
    assert all(not jids for jids in calls)  # no key read at all
    assert store.job_results([]) == []


def test_one_pipelined_read_per_page(store, monkeypatch):
    jids = [wj.add.enqueue(i, 1) for i in range(30)]
    records = api.Queue("default").jobs(0, 25)
    sent = []
    original = type(store.client).pipeline

    def counting(self, *args, **kwargs):
        sent.append(1)
        return original(self, *args, **kwargs)

    monkeypatch.setattr(type(store.client), "pipeline", counting)
    found = results.of_jobs([r.fields for r in records])
    assert len(sent) == 1
    assert len(found) == 25 and set(found) <= set(jids)
    assert all(r.status == "queued" for r in found.values())

