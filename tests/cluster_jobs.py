"""Jobs for tests/test_cluster.py and bench/cluster_spread.py: each run is recorded in a ledger
on ``KIQ_TEST_LEDGER_URL`` (the test's own Redis DB, not the cluster under test, which may fail
over), as a unique id per execution, so the test counts runs, lost and duplicated jobs exactly.
"""

import time
import uuid

from django_kiq import job
from tests.jobs import _ledger

def ledger():
    """A retrying client of the ledger Redis (it never fails over): tests.jobs' own."""
    return _ledger()


def _record(token: str) -> None:
    ledger().sadd(f"ledger:{token}", uuid.uuid4().hex)


@job
def run(token, sleep=0.0):
    time.sleep(sleep)
    _record(token)


@job(queue="critical")
def run_critical(token, sleep=0.0):
    time.sleep(sleep)
    _record(token)


@job(queue="low")
def run_low(token, sleep=0.0, batch_id=None):
    """``batch_id``: given when it runs as a batch's callback."""
    time.sleep(sleep)
    _record(token)


@job(retry=2, retry_in=lambda count, exc, job: 0.2)
def fail_twice(token):
    """Fails until its third run (retry_count 1 -> 2); each run recorded."""
    runs = ledger().incr(f"attempts:{token}")
    _record(f"{token}:{runs}")
    if runs < 3:
        raise RuntimeError(f"attempt {runs} fails on purpose")


@job(retry=0)
def fail_to_dead(token):
    _record(token)
    raise RuntimeError("straight to dead")


@job(unique_for=60)
def unique_run(token, sleep=0.0):
    time.sleep(sleep)
    _record(token)


@job(concurrency=2, retry=0)
def capped(token, seconds=0.1):
    """At most 2 at once everywhere: records the highest overlap it saw."""
    r = ledger()
    now = r.incr("capped:running")
    r.eval("if tonumber(ARGV[1]) > tonumber(redis.call('GET', KEYS[1]) or '0') then "
           "redis.call('SET', KEYS[1], ARGV[1]) end", 1, "capped:max", now)
    try:
        time.sleep(seconds)
    finally:
        r.decr("capped:running")
    _record(token)


# No-op jobs, one per queue, for bench/cluster_spread.py (no ledger: the cluster's own
# command counts are what it measures).
@job
def nothing(i=0):
    pass


@job(queue="critical")
def nothing_critical(i=0):
    pass


@job(queue="low")
def nothing_low(i=0):
    pass


@job(result_ttl=600)
def add(a, b):
    return a + b


@job(result_ttl=600, queue="critical")
def total(values, label=""):
    return {"label": label, "sum": sum(values)}
