#!/usr/bin/env python
"""How late do scheduled jobs start? Lateness percentiles of ``enqueue_at`` jobs, two workers.

    .venv/bin/python bench/scheduled_precision.py [--redis URL] [--jobs 1000] [--spread 10]
                                                  [--retry-filler 100000]

Claims an empty Redis DB (15 down to 1) the way tests/conftest.py does, fills the retry set with
``--retry-filler`` unrelated far-future entries (a big retry set must not delay the schedule),
starts two ``manage.py kiq_worker`` processes, schedules ``--jobs`` runs of
``tests.jobs.record_lateness`` spread evenly over ``--spread`` seconds, waits until every one has
recorded ``start time - scheduled time``, prints p50/p90/p99/max, stops the workers and empties
the DB it claimed. Nothing else on the Redis server is touched.
"""

from __future__ import annotations

import argparse
import os
import secrets
import signal
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import redis

ROOT = Path(__file__).resolve().parent.parent
CLAIM_KEY = "kiq:test-claim"
RESET = "redis.call('FLUSHDB'); return redis.call('SET', KEYS[1], ARGV[1], 'EX', ARGV[2])"
RESULTS = "bench:lateness"
WORKERS = 2
FAR_FUTURE = 10 * 365 * 24 * 3600


def claim_db(base_url: str) -> tuple[str, str]:
    token = secrets.token_hex(8)
    base = base_url.rsplit("/", 1)[0] if base_url.count("/") > 2 else base_url
    for db in range(15, 0, -1):
        url = f"{base}/{db}"
        client = redis.Redis.from_url(url)
        try:
            if client.dbsize() == 0 and client.set(CLAIM_KEY, token, nx=True, ex=3600):
                return url, token
        finally:
            client.close()
    raise SystemExit(f"no empty Redis DB (1-15) to claim at {base_url}")


def release_db(url: str, token: str) -> None:
    client = redis.Redis.from_url(url)
    if client.get(CLAIM_KEY) == token.encode():
        client.eval(RESET, 1, CLAIM_KEY, token, 1)
        client.delete(CLAIM_KEY)
    client.close()


def fill_retry_set(store, count: int) -> None:
    from django_kiq import payload

    now = time.time()
    items = [(now + FAR_FUTURE + i, payload.encode(payload.build(
        name="tests.jobs.noop", args=[i], kwargs={}, queue="default", now=now,
        options={"retry": True, "retry_count": 3, "error_message": "filler"})))
        for i in range(count)]
    store.schedule(items, "retry")


def start_workers(url: str, log_dir: Path) -> list[tuple[subprocess.Popen, Path]]:
    env = {**os.environ, "KIQ_REDIS_URL": url, "KIQ_IMPORTS": "tests.jobs",
           "DJANGO_SETTINGS_MODULE": "testproject.settings", "KIQ_LOG_LEVEL": "WARNING",
           "PYTHONUNBUFFERED": "1"}
    workers = []
    for i in range(WORKERS):
        log = log_dir / f"worker-{i}.log"
        with open(log, "wb") as out:
            proc = subprocess.Popen([sys.executable, str(ROOT / "manage.py"), "kiq_worker"],
                                    cwd=ROOT, env=env, stdout=out, stderr=subprocess.STDOUT)
        workers.append((proc, log))
    return workers


def stop_workers(workers: list[tuple[subprocess.Popen, Path]]) -> None:
    for proc, _ in workers:
        if proc.poll() is None:
            proc.send_signal(signal.SIGTERM)
    for proc, _ in workers:
        try:
            proc.wait(timeout=30)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()


def wait_until(predicate, timeout: float, what: str, workers) -> None:
    deadline = time.monotonic() + timeout
    while not predicate():
        if time.monotonic() > deadline:
            logs = "\n".join(log.read_text(errors="replace")[-2000:] for _, log in workers)
            raise SystemExit(f"timed out waiting for {what}\n{logs}")
        time.sleep(0.05)


def schedule_jobs(count: int, spread: float) -> float:
    """Schedule ``count`` jobs evenly over ``spread`` seconds from 2 s from now; returns the
    seconds the scheduling itself took."""
    from django_kiq import payload
    from django_kiq.client import submit_payloads

    started = time.time()
    first = started + 2.0
    jobs = []
    for i in range(count):
        at = first + spread * i / count
        job = payload.build(name="tests.jobs.record_lateness", args=[RESULTS, at], kwargs={},
                            queue="default", now=started, options={"retry": False})
        job["at"] = at
        jobs.append(job)
    submit_payloads(jobs)
    return time.time() - started


def report(lateness: list[float], args, schedule_took: float) -> None:
    cuts = statistics.quantiles(lateness, n=100, method="inclusive")
    ms = [x * 1000 for x in (cuts[49], cuts[89], cuts[98], max(lateness))]
    print(f"{len(lateness)} jobs over {args.spread:g}s, {WORKERS} workers, retry set of "
          f"{args.retry_filler:,} far-future entries (scheduling took {schedule_took:.2f}s)")
    print("lateness (start - scheduled): p50 {:.1f} ms  p90 {:.1f} ms  p99 {:.1f} ms  "
          "max {:.1f} ms".format(*ms))
    print(f"min {min(lateness) * 1000:.1f} ms, mean {statistics.fmean(lateness) * 1000:.1f} ms")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--redis", default=os.environ.get("KIQ_REDIS_URL",
                                                          "redis://127.0.0.1:6379/0"))
    parser.add_argument("--jobs", type=int, default=1000)
    parser.add_argument("--spread", type=float, default=10.0)
    parser.add_argument("--retry-filler", type=int, default=100_000)
    args = parser.parse_args()

    url, token = claim_db(args.redis)
    os.environ.update(KIQ_REDIS_URL=url, DJANGO_SETTINGS_MODULE="testproject.settings",
                      KIQ_IMPORTS="tests.jobs")
    sys.path.insert(0, str(ROOT))
    import django

    django.setup()
    from django_kiq import storage

    store = storage.get_default()
    workers: list = []
    try:
        with tempfile.TemporaryDirectory(prefix="kiq-bench-") as log_dir:
            fill_retry_set(store, args.retry_filler)
            workers = start_workers(url, Path(log_dir))
            wait_until(lambda: store.client.scard(store.keys.processes) == WORKERS, 60,
                       "the workers to start", workers)
            took = schedule_jobs(args.jobs, args.spread)
            wait_until(lambda: store.client.llen(RESULTS) >= args.jobs, args.spread + 60,
                       "every job to run", workers)
            lateness = [float(x) for x in store.client.lrange(RESULTS, 0, -1)]
            stop_workers(workers)
        report(lateness, args, took)
    finally:
        stop_workers(workers)
        release_db(url, token)


if __name__ == "__main__":
    main()
