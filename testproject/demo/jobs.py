"""Sample jobs for the demo: one of each behaviour the admin pages show.

``fast`` fills the processed counter, ``slow`` keeps workers busy on its own queue, ``flaky``
lands in the retry set now and then, ``always_fails`` ends in the dead set, and
``minute_report`` is the periodic job (``KIQ["PERIODIC"]`` in testproject/settings.py) that the
Periodic page lists.
"""

import logging
import random
import time

from django_kiq import api, job

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
