"""Sample jobs for the demo: one of each behaviour the admin pages show.

``fast`` fills the processed counter, ``slow`` keeps workers busy on its own queue, ``flaky``
lands in the retry set now and then, and ``always_fails`` ends in the dead set.
"""

import random
import time

from django_kiq import job


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
