"""Huey's jobs: ``huey_consumer hu_app.huey``."""
from huey import RedisHuey

from common import REDIS_HOST, REDIS_PORT, body_noop, body_sleep10

huey = RedisHuey("pb", host=REDIS_HOST, port=REDIS_PORT, db=0)


@huey.task()
def noop(i):
    body_noop(i)


@huey.task()
def sleep10(i):
    body_sleep10(i)
