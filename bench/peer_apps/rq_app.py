"""RQ's jobs (``rq worker`` imports them by dotted path)."""
from common import body_noop, body_sleep10


def noop(i):
    body_noop(i)


def sleep10(i):
    body_sleep10(i)
