"""Celery's jobs: ``celery -A cel_app worker`` (no result backend, Celery's default)."""
from celery import Celery

from common import REDIS_URL, body_noop, body_sleep10

app = Celery("cel_app", broker=REDIS_URL)
app.conf.worker_hijack_root_logger = True


@app.task
def noop(i):
    body_noop(i)


@app.task
def sleep10(i):
    body_sleep10(i)
