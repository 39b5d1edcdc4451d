"""``django.tasks`` tasks used by tests/test_tasks.py; worker subprocesses import this module
through ``KIQ_IMPORTS``. Built with the test project's default TASKS backend (KiqBackend).

Tasks record what they did in Redis keys under ``test:`` (the claimed test DB).
"""

import asyncio

from django.tasks import task

from django_kiq import storage
from tests.jobs import wait_for_release


def _redis():
    return storage.get_default().client


@task
def add(a, b):
    return a + b


@task
def record_order(token):
    _redis().rpush("test:task-order", token)


@task(queue_name="mail", priority=5)
def send_mail(to):
    return f"sent to {to}"


@task
async def async_add(a, b):
    await asyncio.sleep(0)
    return a + b


@task(takes_context=True)
def with_context(context, token):
    return {"attempt": context.attempt, "id": context.task_result.id, "token": token}


@task
def fail(message):
    raise ValueError(message)


@task(retry=2)
def flaky(token, succeed_on):
    """Fail until attempt ``succeed_on`` (counted in Redis), then return the attempt number."""
    attempt = _redis().hincrby("test:flaky", token, 1)
    if attempt < succeed_on:
        raise RuntimeError(f"attempt {attempt} of {token}")
    return attempt


@task
def block_until_released(token, limit=20.0):
    """Mark the start, then wait until a test sets ``test:release`` (or ``limit`` passes)."""
    wait_for_release(token, limit)
    return token


def _plain(x):
    return x


renamed = task(_plain)  # a task whose attribute name is not its function's name
