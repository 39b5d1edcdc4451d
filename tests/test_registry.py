"""@job: registration, options and the fail-fast rules at decoration time."""

import pytest

from django_kiq import job, registry
from tests import jobs


def test_default_name_is_module_qualname():
    assert jobs.record.name == "tests.jobs.record"
    assert registry.get("tests.jobs.record").func is jobs.record.__wrapped__


def test_name_option_registers_ruby_class_name():
    assert registry.get("HardWorker").func.__name__ == "hard_worker"


def test_plain_call_runs_synchronously_without_redis(redis_client):
    assert jobs.add(2, 3) == 5
    assert redis_client.dbsize() == 1  # only the test claim key


def test_nested_function_rejected():
    # A nested function has "<locals>" in its qualname: the worker could never find it.
    with pytest.raises(TypeError, match="nested function"):
        def outer():
            @job
            def inner():
                pass
        outer()


def test_lambda_rejected():
    with pytest.raises(TypeError, match="lambda"):
        job(lambda: None)


def test_unknown_option_rejected():
    with pytest.raises(TypeError, match="unknown option"):
        job(queuee="mail")


def test_bad_option_values_rejected():
    with pytest.raises(ValueError, match="retry"):
        job(retry=-1)
    with pytest.raises(ValueError, match="queue name"):
        job(queue="has space")
    with pytest.raises(ValueError, match="queue name"):
        job(queue="a:b")
    with pytest.raises(ValueError, match="cron"):
        job(cron="every tuesday")
    with pytest.raises(ValueError, match="timezone"):
        job(cron="* * * * *", timezone="Mars/Olympus")


def _two(count, exc):
    return 1


def _three(count, exc, job, extra=None):
    return 1


def test_hooks_must_take_the_workers_arguments():
    with pytest.raises(TypeError, match=r"retry_in is called as retry_in\(count, exc, job\)"):
        job(retry_in=_two)
    with pytest.raises(TypeError, match=r"on_exhausted is called as on_exhausted\(job, exc\)"):
        job(on_exhausted=_three)
    with pytest.raises(TypeError, match="retry_in must be callable"):
        job(retry_in=5)
    with pytest.raises(TypeError, match="retry_in"):
        jobs.record.set(retry_in=_two)
    assert job(retry_in=_three, on_exhausted=lambda *a: None)
    assert job(retry_in=lambda count, exc, job: 1, on_exhausted=lambda job, exc, **kw: None)


def test_duplicate_name_rejected():
    with pytest.raises(ValueError, match="already registered"):
        job(name="tests.jobs.record")(_module_level_other)


def _module_level_other():
    pass


def test_set_returns_copy_with_overrides():
    critical = jobs.record.set(queue="critical", retry=False)
    assert critical.options.queue == "critical"
    assert critical.options.retry is False
    assert jobs.record.options.queue == "default"
    with pytest.raises(TypeError, match="unknown option"):
        jobs.record.set(cron="* * * * *")


def test_async_job_detected():
    assert registry.get("tests.jobs.async_record").is_async
