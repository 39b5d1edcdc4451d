"""Jobs of the workflow tests (tests/test_results.py, tests/test_batches.py).

Each records what it did under ``test:`` keys of the run's Redis DB: ``test:ledger`` is the
ledger of callback runs (name -> how many times), ``test:ledger:at`` when each last ran.
"""

import time

from django_kiq import current_job, job, storage


def _redis():
    return storage.get_default().client


@job(result_ttl=600)
def add(a, b):
    return a + b


@job(result_ttl=600, retry=0)
def explode(message):
    raise ValueError(message)


@job(result_ttl=600)
def with_progress(seconds):
    current_job().progress(40, "imported 4,000 of 10,000 rows")
    time.sleep(seconds)
    return "done"


@job
def work(token, seconds=0.0):
    """A batch member: counts its starts and its runs."""
    _redis().hincrby("test:starts", token, 1)
    if seconds:
        time.sleep(seconds)
    _redis().hincrby("test:runs", token, 1)


@job(retry=0)
def fail(token):
    _redis().hincrby("test:runs", token, 1)
    raise RuntimeError(f"{token} failed")


@job
def ledger(name, batch_id=None):
    """A callback: records that it ran (how many times, when, for which batch)."""
    client = _redis()
    client.hincrby("test:ledger", name, 1)
    client.hset("test:ledger:at", name, repr(time.time()))
    client.hset("test:ledger:bid", name, batch_id or "")


def _at_once(count, exc, job):
    return 0


@job(retry=3, retry_in=_at_once)
def flaky_ledger(name, batch_id=None):
    """A callback whose first attempt fails: retried at once, then recorded like ``ledger``."""
    if _redis().hincrby("test:attempts", name, 1) == 1:
        raise RuntimeError(f"{name}: first attempt fails")
    ledger(name, batch_id=batch_id)


@job(result_ttl=600)
def summary(batch_id=None):
    """A callback keeping its result: the batch's counts when it ran."""
    from django_kiq import api

    status = api.Batch(batch_id)
    return {"total": status.total, "failures": status.failures}


@job
def spawn_more(token, count):
    """A batch member that adds ``count`` jobs to its own batch."""
    with current_job().batch:
        for i in range(count):
            work.enqueue(f"{token}-{i}")


@job(result_ttl=600)
def step(value, label):
    """A chain step: appends ``label`` to the order list and returns value + label."""
    _redis().rpush("test:order", label)
    return f"{value}{label}"


@job(result_ttl=600)
def double(x):
    return 2 * x


@job
def collect(values, label="chord"):
    _redis().set(f"test:collected:{label}", repr(values))
    _redis().hincrby("test:ledger", label, 1)
