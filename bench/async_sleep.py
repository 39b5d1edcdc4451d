"""Async jobs on the worker's event loop: 1,000 jobs that each ``await asyncio.sleep(0.1)``.

``python -m bench.async_sleep [--jobs 1000] [--async-concurrency 500] [--redis URL] [--runs 3]``

Starts a private redis-server (or claims the empty DB of ``--redis``, see bench/infra.py),
enqueues the jobs (``tests.async_jobs.nap``, which records each run's start and end), starts one
``kiq_worker -c 5 --async-concurrency N`` and reports the wall time from the first job's start to
the last job's end (the floor is jobs / N x 0.1 s: 0.2 s for the defaults), the worker's thread
count while they run, and its peak RSS. docs/jobs.md quotes the figures.
"""

from __future__ import annotations

import argparse
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from bench import infra


def run_once(target: infra.RedisTarget, jobs: int, concurrency: int, workdir: Path) -> dict:
    from tests import async_jobs

    target.reset()
    async_jobs.nap.enqueue_many([(f"b{i}", 0.1) for i in range(jobs)])
    env = {**os.environ, **infra.worker_env(target.url),
           "KIQ_IMPORTS": "tests.jobs,tests.async_jobs"}
    log = open(workdir / "worker.log", "ab")
    proc = subprocess.Popen([sys.executable, str(infra.ROOT / "manage.py"), "kiq_worker",
                             "-c", "5", "--async-concurrency", str(concurrency)],
                            cwd=infra.ROOT, env=env, stdout=log, stderr=subprocess.STDOUT)
    infra.STARTED.append(proc)
    threads, rss = 0, 0
    deadline = time.monotonic() + 60
    try:
        while target.client.llen("test:async:spans") < jobs:
            if time.monotonic() > deadline or proc.poll() is not None:
                raise SystemExit(f"the worker did not finish; see {workdir / 'worker.log'}")
            threads = max(threads, len(os.listdir(f"/proc/{proc.pid}/task")))
            rss = max(rss, infra.rss_kb(proc.pid))
            time.sleep(0.01)
    finally:
        proc.terminate()
        proc.wait(timeout=30)
        log.close()
    spans = [tuple(map(float, s.split()))
             for s in target.client.lrange("test:async:spans", 0, -1)]
    wall = max(end for _, end in spans) - min(start for start, _ in spans)
    return {"wall": wall, "threads": threads, "rss_mb": rss / 1024}


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--jobs", type=int, default=1000)
    parser.add_argument("--async-concurrency", type=int, default=500)
    parser.add_argument("--runs", type=int, default=3)
    parser.add_argument("--redis", default=None, help="an empty Redis DB to use instead")
    args = parser.parse_args(argv)
    workdir = Path(tempfile.mkdtemp(prefix="kiq-bench-async-"))
    target = infra.RedisTarget(args.redis, workdir)
    os.environ.update(DJANGO_SETTINGS_MODULE="testproject.settings", KIQ_REDIS_URL=target.url,
                      KIQ_LOG_LEVEL="WARNING")
    import django

    django.setup()
    try:
        results = [run_once(target, args.jobs, args.async_concurrency, workdir)
                   for _ in range(args.runs)]
    finally:
        infra.cleanup()
        target.close()
    floor = -(-args.jobs // args.async_concurrency) * 0.1
    print(f"{args.jobs} jobs x asyncio.sleep(0.1), --async-concurrency "
          f"{args.async_concurrency} (floor {floor:.1f} s):")
    for i, r in enumerate(results, 1):
        print(f"  run {i}: first start -> last end {r['wall']:.3f} s, worker threads "
              f"{r['threads']}, peak RSS {r['rss_mb']:.0f} MB")
    best = min(r["wall"] for r in results)
    print(f"best {best:.3f} s, worst {max(r['wall'] for r in results):.3f} s")
    return 0 if max(r["wall"] for r in results) < 1.0 else 1


if __name__ == "__main__":
    sys.exit(main())
