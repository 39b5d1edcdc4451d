"""Batch overhead per job: enqueue and drain, batch against plain (docs/workflows.md).

    .venv/bin/python -m bench.workflows_bench [--enqueue 100000] [--drain 20000] [-c 10]
                                              [--reps 5]

Claims an empty Redis DB the way the test suite does (KIQ_REDIS_URL's server), and measures:
1. enqueue: ``noop.enqueue_many`` of N jobs in chunks of 10,000, plain, then inside
   ``with batch():`` (each job joins the batch in its push: ``batch.lua``);
2. drain: one ``kiq_worker`` subprocess drains N pre-filled no-op jobs, plain, then a batch of
   N (each job's settle counts it in the batch; the plain ones are acknowledged in bulk).
Rates are jobs per second; the ratio is batch / plain (goals: enqueue >= 50%, drain >= 80%).
With ``--reps N`` each test runs N times, plain and batch alternating so a busy neighbour slows
both alike; the output gives each repetition's ratio, then the median ratio with the lowest and
highest, and the 1-minute load average before and after.
"""

from __future__ import annotations

import argparse
import os
import statistics
import subprocess
import sys
import time
from pathlib import Path

import django

ROOT = Path(__file__).resolve().parent.parent
CHUNK = 10_000


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--enqueue", type=int, default=100_000)
    parser.add_argument("--drain", type=int, default=20_000)
    parser.add_argument("-c", "--concurrency", type=int, default=10)
    parser.add_argument("--reps", type=int, default=1)
    opts = parser.parse_args()
    sys.path.insert(0, str(ROOT))
    from tests.conftest import CLAIM_KEY, RESET, _claim_db

    url, token = _claim_db()
    os.environ.update(KIQ_REDIS_URL=url, DJANGO_SETTINGS_MODULE="testproject.settings",
                      KIQ_IMPORTS="bench.kiq_bench_jobs")
    django.setup()
    from django_kiq import batch, storage
    from bench import kiq_bench_jobs as jobs

    client = storage.get_default().client
    load_before = os.getloadavg()[0]
    try:
        ratios: dict[str, list[float]] = {"enqueue": [], "drain": []}
        for rep in range(opts.reps):
            plain = _enqueue(jobs.noop, opts.enqueue, None, client, token, CLAIM_KEY)
            batched = _enqueue(jobs.noop, opts.enqueue, batch, client, token, CLAIM_KEY)
            ratios["enqueue"].append(batched / plain)
            print(f"[{rep + 1}] enqueue {opts.enqueue:,}: plain {plain:,.0f}/s, "
                  f"batch {batched:,.0f}/s ({100 * batched / plain:.0f}%)", flush=True)
            dplain = _drain(jobs.noop, opts.drain, None, client, url, opts.concurrency, token,
                            CLAIM_KEY)
            dbatch = _drain(jobs.noop, opts.drain, batch, client, url, opts.concurrency, token,
                            CLAIM_KEY)
            ratios["drain"].append(dbatch / dplain)
            print(f"[{rep + 1}] drain {opts.drain:,} (-c {opts.concurrency}): plain "
                  f"{dplain:,.0f}/s, batch {dbatch:,.0f}/s ({100 * dbatch / dplain:.0f}%)",
                  flush=True)
        for name, values in ratios.items():
            print(f"{name}: batch/plain median {100 * statistics.median(values):.0f}% "
                  f"(lowest {100 * min(values):.0f}%, highest {100 * max(values):.0f}%, "
                  f"{len(values)} runs)")
        print(f"load average (1 min): {load_before:.2f} before, {os.getloadavg()[0]:.2f} after, "
              f"{os.cpu_count()} cores")
    finally:
        client.eval(RESET, 1, CLAIM_KEY, token, 1)
        client.delete(CLAIM_KEY)


def _reset(client, token, claim_key) -> None:
    from tests.conftest import RESET

    client.eval(RESET, 1, claim_key, token, 3600)


def _fill(job, n: int, batch) -> None:
    for start in range(0, n, CHUNK):
        job.enqueue_many([(i,) for i in range(start, min(n, start + CHUNK))])


def _enqueue(job, n: int, batch, client, token, claim_key) -> float:
    _reset(client, token, claim_key)
    started = time.perf_counter()
    if batch is None:
        _fill(job, n, None)
    else:
        with batch(description="bench"):
            _fill(job, n, batch)
    elapsed = time.perf_counter() - started
    assert client.llen("queue:default") == n
    return n / elapsed


def _drain(job, n: int, batch, client, url: str, concurrency: int, token, claim_key) -> float:
    _reset(client, token, claim_key)
    if batch is None:
        _fill(job, n, None)
    else:
        with batch(description="bench drain") as b:
            _fill(job, n, batch)
    env = {**os.environ, "KIQ_REDIS_URL": url, "KIQ_IMPORTS": "bench.kiq_bench_jobs",
           "DJANGO_SETTINGS_MODULE": "testproject.settings", "KIQ_LOG_LEVEL": "WARNING"}
    worker = subprocess.Popen([sys.executable, "manage.py", "kiq_worker", "-c",
                               str(concurrency)], cwd=ROOT, env=env,
                              stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    try:
        deadline = time.monotonic() + 600
        while int(client.get("bench:done") or 0) < n and time.monotonic() < deadline:
            time.sleep(0.05)
        if batch is not None:  # the last settle (and the batch's completion) is the end
            while not client.hexists(f"kiq:batch:{b.bid}", "success_at"):
                time.sleep(0.01)
            end = float(client.hget(f"kiq:batch:{b.bid}", "success_at"))
        else:
            while client.llen(f"kiq:wip:{_identity(client)}"):
                time.sleep(0.01)
            end = time.time()
        first = float(client.get("bench:first"))
        return n / max(1e-9, max(end, float(client.get("bench:last"))) - first)
    finally:
        worker.terminate()
        worker.wait(30)


def _identity(client) -> str:
    names = [k.decode() for k in client.hkeys("kiq:wip")]
    return names[0] if names else "none"


if __name__ == "__main__":
    main()
