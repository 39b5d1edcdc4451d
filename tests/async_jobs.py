"""Async jobs used by tests/test_async.py and bench/async_sleep.py (workers import this module
through KIQ_IMPORTS). They record in Redis, with the asyncio client of the loop they run on
(``storage.aio``), so recording never blocks the worker's event loop."""

import asyncio
import threading
import time

from django_kiq import current_job, job
from django_kiq.storage import aio


def _redis():
    return aio.get_default().client


@job
async def nap(token: str, seconds: float = 0.1) -> None:
    """Sleep, then record the run's start and end (epoch seconds) and the thread it ran on."""
    started = time.time()
    await asyncio.sleep(seconds)
    ended = time.time()
    pipe = _redis().pipeline(transaction=False)
    pipe.rpush("test:async:spans", f"{started} {ended}")
    pipe.sadd("test:async:threads", threading.current_thread().name)
    pipe.hincrby("test:runs", token, 1)
    await pipe.execute()


@job(retry=2, retry_in=lambda count, exc, job: 0.1)
async def flaky(token: str) -> str:
    """Fail on the first two attempts, succeed on the third."""
    attempt = await _redis().hincrby("test:attempts", token, 1)
    await asyncio.sleep(0)
    if attempt < 3:
        raise ValueError(f"attempt {attempt} failed")
    await _redis().hincrby("test:runs", token, 1)
    return "ok"


@job(timeout=0.5, retry=0)
async def overrun(token: str) -> None:
    await _redis().hset("test:started_at", token, repr(time.time()))
    await asyncio.sleep(30)
    await _redis().hincrby("test:runs", token, 1)


@job(retry=False)
async def wait_to_be_cancelled(token: str, seconds: float = 30) -> None:
    ctx = current_job()
    assert ctx is not None
    await _redis().hset("test:ctx", token, ctx.jid)
    await _redis().hincrby("test:started", token, 1)
    try:
        await asyncio.sleep(seconds)
    except asyncio.CancelledError:
        await _redis().hincrby("test:cleanup", token, 1)
        raise
    await _redis().hincrby("test:runs", token, 1)


@job(result_ttl=600)
async def crunch(steps: int = 3, seconds: float = 0.3) -> dict:
    """Report progress at each step (its result record and the Busy page show it)."""
    for step in range(1, steps + 1):
        await asyncio.sleep(seconds)
        current_job().progress(100 * step / steps, f"step {step} of {steps}")
    return {"steps": steps}


@job
async def spawn(token: str, count: int) -> None:
    """A batch member that adds ``count`` naps to its own batch."""
    with current_job().batch:
        for i in range(count):
            await nap.aenqueue(f"{token}-{i}", 0.01)
