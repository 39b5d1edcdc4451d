"""Dramatiq's jobs: ``dramatiq dr_app`` (its CLI logs at INFO; ``-v`` is DEBUG, so WARNING is set
on its loggers here when ``PB_LOG_LEVEL`` says so)."""
import logging

import dramatiq
from dramatiq.brokers.redis import RedisBroker

from common import REDIS_HOST, REDIS_PORT, body_noop, body_sleep10, job_logger_level

logging.getLogger("dramatiq").setLevel(job_logger_level())
broker = RedisBroker(host=REDIS_HOST, port=REDIS_PORT, db=0)
dramatiq.set_broker(broker)


@dramatiq.actor
def noop(i):
    body_noop(i)


@dramatiq.actor
def sleep10(i):
    body_sleep10(i)
