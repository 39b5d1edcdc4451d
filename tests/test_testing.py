"""Test modes (django_kiq.testing): inline runs, fake collection and drain, context managers,
the pytest fixtures and plugin, on-commit delivery, and that neither mode sends a Redis command."""

import datetime as dt
import os
import subprocess
import sys
import textwrap
import time

import pytest
from django.conf import settings
from django.core.exceptions import ImproperlyConfigured
from django.db import transaction
from django.test import override_settings

from django_kiq import PayloadTooLarge, testing
from django_kiq.conf import get_settings
from django_kiq.testing import kiq_fake, kiq_inline  # noqa: F401 - fixtures used by name
from tests import jobs
from tests.conftest import CLAIM_KEY, ROOT

UNREACHABLE = "redis://127.0.0.1:1/0"
SEEN_BY_MIDDLEWARE: list = []


@pytest.fixture(autouse=True)
def _fresh_memory():
    jobs.MEMORY.clear()
    SEEN_BY_MIDDLEWARE.clear()
    testing.clear()
    yield
    testing.clear()


def _only_claim_key(redis_client) -> bool:
    return redis_client.keys("*") == [CLAIM_KEY.encode()]


def _kiq(**changes):
    return override_settings(KIQ={**settings.KIQ, **changes})


def drop_secret(next_push):
    """Client middleware: cancels jobs whose first argument is "secret", tags the others."""
    def push(job):
        if job["args"] and job["args"][0] == "secret":
            return None
        return next_push({**job, "tagged": True})
    return push


def spy(next_call):
    """Server middleware: records the context the job ran with."""
    def call(ctx):
        SEEN_BY_MIDDLEWARE.append((ctx.queue, ctx.job, ctx.raw))
        return next_call(ctx)
    return call


# -- inline ----------------------------------------------------------------------------------

def test_inline_runs_at_enqueue_with_json_round_trip(redis_client):
    arg = {"ids": [1, 2], "nested": {"x": 1.5}}
    with testing.inline():
        jid = jobs.mem_record.enqueue(arg, note="n")
    [(received, note)] = jobs.MEMORY
    assert len(jid) == 24 and note == "n"
    assert received == arg and received is not arg  # a decoded copy, as a worker gets
    assert _only_claim_key(redis_client)


def test_inline_rejects_non_json_args_before_running():
    with testing.inline():
        with pytest.raises(TypeError, match="argument 0"):
            jobs.mem_record.enqueue((1, 2))
        with pytest.raises(TypeError, match="argument 'note'"):
            jobs.mem_record.enqueue(1, note=dt.date.today())
    assert jobs.MEMORY == []


def test_inline_exception_reaches_caller_and_writes_no_retry(redis_client):
    with testing.inline(), pytest.raises(ValueError, match="kaboom"):
        jobs.fail.enqueue("kaboom")
    assert _only_claim_key(redis_client)


def test_inline_runs_scheduled_jobs_at_once():
    with testing.inline():
        jobs.mem_record.enqueue_in(3600, "later")
        jobs.mem_record.enqueue_at(dt.datetime.now(dt.UTC) + dt.timedelta(days=1), "tomorrow")
    assert jobs.MEMORY == [("later", None), ("tomorrow", None)]


def test_inline_goes_through_client_and_server_middleware():
    chains = {"CLIENT_MIDDLEWARE": [f"{__name__}.drop_secret"],
              "SERVER_MIDDLEWARE": [f"{__name__}.spy"]}
    with _kiq(**chains), testing.inline():
        assert jobs.mem_record.enqueue("secret") is None
        jid = jobs.mem_record.enqueue_in(60, "public")
    assert jobs.MEMORY == [("public", None)]
    [(queue, job, raw)] = SEEN_BY_MIDDLEWARE
    assert queue == "default" and job["jid"] == jid and job["tagged"] is True
    assert "at" not in job and job["enqueued_at"] >= job["created_at"]
    assert isinstance(raw, bytes) and b'"tagged":true' in raw


# -- fake ------------------------------------------------------------------------------------

def test_fake_collects_without_running(redis_client):
    before = time.time()
    with testing.fake() as queue:
        jid1 = jobs.mem_record.enqueue([1, 2])
        jid2 = jobs.mem_record.enqueue_in(600, "later")
        jid3 = jobs.mem_chain.enqueue(0)
    assert jobs.MEMORY == []
    assert queue.jobs is testing.jobs
    assert [j["jid"] for j in testing.jobs] == [jid1, jid2, jid3]
    now_job, later_job, _ = testing.jobs
    assert now_job["args"] == [[1, 2]] and now_job["enqueued_at"] >= before
    assert "at" not in now_job
    assert later_job["at"] == pytest.approx(before + 600, abs=2) and "enqueued_at" not in later_job
    assert [j["jid"] for j in testing.jobs_for(jobs.mem_record)] == [jid1, jid2]
    assert [j["jid"] for j in testing.jobs_for("tests.jobs.mem_chain")] == [jid3]
    assert _only_claim_key(redis_client)


def test_drain_runs_everything_fifo_including_nested_and_scheduled():
    with testing.fake():
        jobs.mem_chain.enqueue(2)
        jobs.mem_record.enqueue_in(3600, "scheduled")
        jobs.mem_record.enqueue("now")
        assert testing.drain() == 5
    # 2 and the two first jobs, then what 2 enqueued (1), then what 1 enqueued (0).
    assert jobs.MEMORY == [2, ("scheduled", None), ("now", None), 1, 0]
    assert testing.jobs == []


def test_drain_can_skip_scheduled_and_filter_by_job():
    with testing.fake() as queue:
        jobs.mem_record.enqueue_in(3600, "scheduled")
        jobs.mem_record.enqueue("now")
        jobs.mem_chain.enqueue(0)
        assert queue.drain(jobs.mem_chain) == 1
        assert queue.drain(include_scheduled=False) == 1
        assert jobs.MEMORY == [0, ("now", None)]
        assert [j["args"] for j in queue.jobs] == [["scheduled"]]
        assert queue.drain("tests.jobs.mem_record") == 1
    assert jobs.MEMORY[-1] == ("scheduled", None)


def test_drain_exception_propagates_and_keeps_the_rest():
    with testing.fake():
        jobs.mem_record.enqueue("first")
        jobs.fail.enqueue("kaboom")
        jobs.mem_record.enqueue("after")
        with pytest.raises(ValueError, match="kaboom"):
            testing.drain()
        assert jobs.MEMORY == [("first", None)]
        assert [j["args"] for j in testing.jobs] == [["after"]]


def test_clear_empties_the_same_list():
    collected = testing.jobs
    with testing.fake():
        jobs.mem_record.enqueue(1)
    assert len(collected) == 1
    testing.clear()
    assert collected == [] and testing.jobs is collected


def test_fake_runs_client_middleware_and_size_check():
    with _kiq(CLIENT_MIDDLEWARE=[f"{__name__}.drop_secret"], MAX_PAYLOAD_BYTES=500):
        with testing.fake():
            assert jobs.mem_record.enqueue("secret") is None
            jid = jobs.mem_record.enqueue("public")
            with pytest.raises(PayloadTooLarge):
                jobs.mem_record.enqueue("x" * 1000)
    [job] = testing.jobs
    assert job["jid"] == jid and job["tagged"] is True


def test_jobs_for_rejects_other_things():
    with pytest.raises(TypeError, match="job name"):
        testing.jobs_for(42)


# -- no Redis, mode switching ----------------------------------------------------------------

@pytest.mark.parametrize("mode", ["inline", "fake"])
def test_modes_send_no_redis_command(mode):
    # Nothing listens on port 1: any Redis command would raise EnqueueError.
    with _kiq(REDIS_URL=UNREACHABLE, TESTING=mode):
        jobs.mem_record.enqueue(1)
        jobs.mem_record.enqueue_in(60, 2)
        jobs.mem_record.enqueue_many([(3,), (4,)])
        testing.drain()
    assert jobs.MEMORY == [(1, None), (2, None), (3, None), (4, None)]


def test_context_managers_restore_the_mode(redis_client):
    with testing.fake():
        assert get_settings().testing == "fake"
        with testing.inline():
            assert get_settings().testing == "inline"
        assert get_settings().testing == "fake"
    assert get_settings().testing is None
    jobs.mem_record.enqueue("real")
    assert redis_client.llen("queue:default") == 1 and jobs.MEMORY == []


def test_fake_context_starts_empty():
    with testing.fake():
        jobs.mem_record.enqueue(1)
    with testing.fake() as queue:
        assert queue.jobs == []


def test_unknown_mode_is_refused():
    with _kiq(TESTING="Fake"), pytest.raises(ImproperlyConfigured, match="'inline' or 'fake'"):
        jobs.mem_record.enqueue(1)


# -- transactions ----------------------------------------------------------------------------

@pytest.mark.django_db
def test_fake_collects_on_commit_and_not_on_rollback(django_capture_on_commit_callbacks):
    with testing.fake() as queue:
        with django_capture_on_commit_callbacks(execute=True):
            jobs.mem_record.enqueue("kept")
            assert queue.jobs == []  # the test's transaction has not committed yet
        assert [j["args"] for j in queue.jobs] == [["kept"]]
        with django_capture_on_commit_callbacks(execute=True):
            with pytest.raises(RuntimeError), transaction.atomic():
                jobs.mem_record.enqueue("rolled back")
                raise RuntimeError
        assert len(queue.jobs) == 1


@pytest.mark.django_db
def test_inline_runs_after_commit(django_capture_on_commit_callbacks):
    with testing.inline():
        with django_capture_on_commit_callbacks(execute=True):
            jobs.mem_record.enqueue("after commit")
            assert jobs.MEMORY == []
        assert jobs.MEMORY == [("after commit", None)]
        with _kiq(ENQUEUE_ON_COMMIT=False, TESTING="inline"), transaction.atomic():
            jobs.mem_record.enqueue("at once")
            assert jobs.MEMORY[-1] == ("at once", None)


@pytest.mark.django_db
def test_on_commit_override_of_submit_payloads_is_honoured():
    from django_kiq import client, payload

    job = payload.build(name=jobs.mem_record.name, args=["now"], kwargs={}, queue="default",
                        now=time.time())
    with testing.fake() as queue, transaction.atomic():
        [jid] = client.submit_payloads([job], on_commit=False)
        assert [j["jid"] for j in queue.jobs] == [jid]


@pytest.mark.django_db
def test_inline_failure_after_commit_reaches_the_committer(django_capture_on_commit_callbacks):
    with testing.inline(), pytest.raises(ValueError, match="late"):
        with django_capture_on_commit_callbacks(execute=True):
            jobs.fail.enqueue("late")


# -- pytest fixtures and plugin --------------------------------------------------------------

def test_kiq_fake_fixture(kiq_fake):
    jid = jobs.mem_record.enqueue("x")
    assert [j["jid"] for j in kiq_fake.jobs_for(jobs.mem_record)] == [jid]
    assert kiq_fake.drain() == 1 and jobs.MEMORY == [("x", None)]
    jobs.mem_record.enqueue("y")
    kiq_fake.clear()
    assert kiq_fake.jobs == []


def test_kiq_inline_fixture(kiq_inline):
    jobs.mem_record.enqueue("x")
    assert jobs.MEMORY == [("x", None)]


def test_plugin_in_a_users_conftest(tmp_path):
    (tmp_path / "conftest.py").write_text('pytest_plugins = ["django_kiq.testing"]\n')
    (tmp_path / "test_user.py").write_text(textwrap.dedent("""
        from tests import jobs

        def test_fake(kiq_fake):
            jid = jobs.mem_record.enqueue(1)
            assert [j["jid"] for j in kiq_fake.jobs] == [jid]
            assert kiq_fake.drain() == 1 and jobs.MEMORY == [(1, None)]

        def test_inline(kiq_inline):
            jobs.mem_record.enqueue(2)
            assert jobs.MEMORY[-1] == (2, None)

        def test_fake_was_cleared():
            from django_kiq import testing
            assert testing.jobs == []
    """))
    env = {**os.environ, "PYTHONPATH": str(ROOT), "KIQ_REDIS_URL": UNREACHABLE,
           "DJANGO_SETTINGS_MODULE": "testproject.settings"}
    result = subprocess.run(
        [sys.executable, "-m", "pytest", "-q", "-p", "no:cacheprovider", str(tmp_path)],
        cwd=tmp_path, env=env, capture_output=True, text=True, timeout=60)
    assert result.returncode == 0, result.stdout + result.stderr
    assert "3 passed" in result.stdout


def test_importable_without_pytest():
    code = ("import sys; sys.modules['pytest'] = None; import django; django.setup(); "
            "from django_kiq import testing; print(hasattr(testing, 'kiq_fake'))")
    env = {**os.environ, "PYTHONPATH": str(ROOT), "DJANGO_SETTINGS_MODULE": "testproject.settings"}
    result = subprocess.run([sys.executable, "-c", code], env=env, capture_output=True,
                            text=True, timeout=60)
    assert result.returncode == 0, result.stderr
    assert result.stdout.strip() == "False"
