"""Calls a type checker must reject (tests/test_typing.py runs mypy over this file and expects
exactly the errors marked ``# E:`` below). Not collected by pytest, never run."""

import datetime as dt
from collections.abc import Coroutine
from typing import Any, assert_type

from django_kiq import Job, job


@job
def send_welcome(user_id: int) -> bool:
    return True


@job(queue="mail", retry=3)
def notify(user_id: int, *, channel: str = "email") -> None:
    pass


@job
async def fetch(url: str) -> bytes:
    return b""


# What is right.
same: Job[[int], bool] = send_welcome
assert_type(send_welcome(1), bool)
assert_type(send_welcome.enqueue(1), str | None)
assert_type(send_welcome.delay(1), str | None)
assert_type(send_welcome.enqueue_in(5, 1), str | None)
assert_type(send_welcome.enqueue_at(dt.datetime.now(dt.UTC), 1), str | None)
assert_type(send_welcome.enqueue_many([(1,), (2,)]), list[str | None])
copy: Job[[int], bool] = send_welcome.set(queue="critical")
assert_type(notify.set(retry=False).enqueue(1, channel="sms"), str | None)
coroutine: Coroutine[Any, Any, bytes] = fetch("x")


async def in_async_code() -> None:
    assert_type(await send_welcome.aenqueue(1), str | None)
    assert_type(await notify.aenqueue_in(dt.timedelta(minutes=1), 1), str | None)
    assert_type(await fetch.aenqueue_at(0.0, "x"), str | None)
    assert_type(await fetch.aenqueue_many([("x",)]), list[str | None])
    await send_welcome.aenqueue("x")  # E: arg-type


# What is wrong.
send_welcome.enqueue("x")  # E: arg-type
send_welcome.delay()  # E: call-arg
send_welcome.enqueue(1, 2)  # E: call-arg
send_welcome.enqueue_in(5, "x")  # E: arg-type
send_welcome.enqueue_at("tomorrow", 1)  # E: arg-type
notify.enqueue(1, chanel="sms")  # E: call-arg
notify.set(queue="critical").enqueue("x")  # E: arg-type
notify.set(queu="critical")  # E: call-arg
send_welcome("x")  # E: arg-type
flag: str = send_welcome(1)  # E: assignment
jid: str = send_welcome.enqueue(1)  # E: assignment


@job(queue=1)  # E: call-overload
def bad_queue() -> None:
    pass


@job(retries=3)  # E: call-overload
def bad_option() -> None:
    pass
