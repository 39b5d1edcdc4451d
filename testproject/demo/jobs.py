"""Sample jobs for the demo: one of each behaviour the admin pages show.

``fast`` fills the processed counter, ``slow`` keeps workers busy on its own queue, ``flaky``
lands in the retry set now and then, ``always_fails`` ends in the dead set, and
``minute_report`` is the periodic job (``KIQ["PERIODIC"]`` in testproject/settings.py) that the
Periodic page lists. The workflow jobs fill the Batches tab: ``import_row`` makes up a batch
whose callback is ``import_finished``, ``double`` and ``total`` a chain and a chord keeping their
results, and ``crunch`` reports its progress (the Busy page's bar, its job page's result).
"""

import logging
import random
import time

from django_kiq import api, current_job, job

logger = logging.getLogger("django_kiq.demo")


@job
def fast(n):
    """Return the sum of 0..n-1: done in microseconds."""
    return sum(range(n))


@job(queue="slow")
def slow(seconds=2.0):
    """Sleep, so the busy page has something to show."""
    time.sleep(seconds)


@job(retry=3)
def flaky(fail_ratio=0.5):
    """Fail at random; retries usually get it through, sometimes it dies after three."""
    if random.random() < fail_ratio:
        raise RuntimeError(f"flaky failed (fail_ratio={fail_ratio})")


@job(retry=2, backtrace=True)
def always_fails(reason="demo"):
    """Fail every time, keeping the backtrace, to show retries ending in the dead set."""
    raise ValueError(reason)


@job
def minute_report():
    """Every minute (the demo's cron entry): log one line of counters, as a health check would."""
    stats = api.Stats()
    logger.info("demo report: processed=%d failed=%d enqueued=%d retries=%d dead=%d",
                stats.processed, stats.failed, stats.enqueued, stats.retry_size,
                stats.dead_size)


@job(retry=1)
def import_row(row_id):
    """One row of the demo import batch: a few milliseconds each; every 25th row fails for
    good (one retry, about half a minute later, then dead), so the batch shows a failure, a
    dead job and ``on_death``, then completes (``on_complete``) but never succeeds."""
    time.sleep(0.005)
    if row_id % 25 == 24:
        raise ValueError(f"row {row_id} is malformed")


@job
def import_finished(label, batch_id=None):
    """A batch callback: it gets the batch id as ``batch_id``."""
    status = api.Batch(batch_id)
    logger.info("demo import %s: batch %s, %d of %d jobs failed so far", label, batch_id,
                status.failures, status.total)


@job(result_ttl=3600)
def double(x):
    return 2 * x


@job(result_ttl=3600)
def total(values):
    return sum(values)


@job(queue="slow", result_ttl=3600)
def crunch(steps=20):
    """Report progress at each step: the Busy page shows the bar, the job's result keeps it."""
    for step in range(1, steps + 1):
        time.sleep(0.5)
        current_job().progress(100 * step / steps, f"step {step} of {steps}")
    return {"steps": steps}
