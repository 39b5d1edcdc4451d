"""The running job's context and in-thread interruption (django_kiq.execution), and the
execution-control options of @job (timeout, expires_in, unique_*, iterable)."""

import threading
import time

import pytest

from django_kiq import DuplicateJob, JobCancelled, JobTimeout, current_job, job
from django_kiq.execution import CurrentJob


def _context(deadline=None):
    return CurrentJob(jid="j" * 24, name="tests.x", queue="default", attempt=1,
                      enqueued_at=time.time(), deadline=deadline)


def _run_in_thread(target):
    out = {}

    def run():
        try:
            out["value"] = target()
        except BaseException as exc:  # noqa: BLE001 - the test inspects it
            out["error"] = exc

    thread = threading.Thread(target=run)
    thread.start()
    return thread, out


def test_current_job_is_none_outside_a_job():
    assert current_job() is None


def test_interrupt_raises_in_a_python_loop_and_the_thread_lives_on():
    ctx = _context(deadline=time.time() + 0.05)
    started = threading.Event()

    def body():
        ctx.begin()
        try:
            assert current_job() is ctx
            started.set()
            while True:
                sum(range(50))
        finally:
            ctx.finish()

    thread, out = _run_in_thread(body)
    started.wait(5)
    assert ctx.interrupt(JobTimeout) is True
    thread.join(5)
    assert isinstance(out["error"], JobTimeout)
    assert ctx.interrupt(JobTimeout) is False  # once only, and never after the job left


def test_finish_withdraws_an_interruption_that_was_not_raised_yet():
    """Set between the job's return and finish(): the worker's own code never sees it."""
    ctx = _context()
    ready, go = threading.Event(), threading.Event()

    def body():
        ctx.begin()
        ready.set()
        go.wait(5)  # blocked in C: the exception is pending, not raised
        ctx.finish()
        total = 0
        for i in range(100_000):  # plenty of bytecode: a pending exception would surface here
            total += i
        return total

    thread, out = _run_in_thread(body)
    ready.wait(5)
    assert ctx.interrupt(JobCancelled) is True
    go.set()
    thread.join(5)
    # Either raised inside the job (before finish) or withdrawn: never after finish().
    assert "value" in out or isinstance(out.get("error"), JobCancelled)
    assert current_job() is None


def test_check_raises_at_a_safe_point():
    ctx = _context(deadline=time.time() - 1)
    with pytest.raises(JobTimeout):
        ctx.check()
    ctx = _context()
    ctx.check()
    ctx.cancel(by="admin")
    assert ctx.cancelled is True
    with pytest.raises(JobCancelled, match="by admin"):
        ctx.check()


def test_exceptions_are_ordinary_exceptions():
    assert issubclass(JobCancelled, Exception) and issubclass(JobTimeout, Exception)
    assert DuplicateJob("x", jid="abc").jid == "abc"


@pytest.mark.parametrize("options, error", [
    ({"timeout": 0}, ValueError),
    ({"timeout": "5"}, ValueError),
    ({"expires_in": -1}, ValueError),
    ({"unique_for": float("inf")}, ValueError),
    ({"unique_for": 60, "unique_until": "finish"}, ValueError),
    ({"unique_for": 60, "unique_conflict": "ignore"}, ValueError),
    ({"unique_for": 60, "unique_key": "args"}, TypeError),
    ({"unique_until": "start"}, TypeError),
    ({"iterable": "yes"}, TypeError),
])
def test_bad_execution_options_fail_at_decoration(options, error):
    with pytest.raises(error):
        job(**options)


def test_iterable_needs_a_generator_with_a_cursor():
    with pytest.raises(TypeError, match="generator"):
        @job(iterable=True)
        def not_a_generator(cursor=None):
            return 1
    with pytest.raises(TypeError, match="cursor"):
        @job(iterable=True)
        def no_cursor():
            yield 1


def test_set_accepts_timeout_and_expiry():
    from tests.jobs import record

    fields = record.set(timeout=5, expires_in=60).options
    assert fields.timeout == 5 and fields.expires_in == 60
    assert record.set(timeout=5).options.payload_fields()["kiq_timeout"] == 5
    with pytest.raises(TypeError):
        record.set(unique_for=5)
