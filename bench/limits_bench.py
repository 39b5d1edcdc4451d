#!/usr/bin/env python
"""Flow control's cost (docs/limits.md): per acquisition, and on a no-op job's rate.

    .venv/bin/python bench/limits_bench.py [--n 100000] [--reps 3] [--redis URL]

1. In this process: the cost of one block of an unsaturated concurrent limiter, with a lease
   taken from Redis and given back each time (lock_timeout < 2 s: no lease kept) and on the
   lease the process keeps for reuse (limit_leases.py), of one acquisition of each rate style,
   and of a bare PING for scale (µs per call, one thread).
2. With worker subprocesses (``-c 10``, one process): drains of ``n`` no-op jobs, the same job
   unlimited and under ``@job(concurrency=1000)`` (never saturated), alternated ``reps`` times;
   the median rate of each, the spread, the ratio of medians and of each pair (the goal:
   limited >= 70% of unlimited), and the load average during the drains (a shared machine).

Starts its own ``redis-server`` (like bench/run.py) unless ``--redis`` names an empty database.
The workers import this module (``KIQ_IMPORTS``) for the limited job; both jobs report through
bench/kiq_bench_jobs.py's in-process reporter, so the measurement adds no round trip per job.
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
if str(ROOT) not in sys.path:
    sys.path.insert(0, str(ROOT))

from django_kiq import job  # noqa: E402
from bench import kiq_bench_jobs as jobs  # noqa: E402

LIMITED_SIZE = 1000  # far above the worker's 10 threads: the limiter is never full


@job(concurrency=LIMITED_SIZE, name="bench.limits_bench.limited_noop")
def limited_noop(i):
    """The bench's no-op inside a concurrent limiter (one acquisition and one release)."""
    now = time.time()
    jobs.REPORTER.started(now)
    jobs.REPORTER.done(now)


def per_call_us(fn, n: int) -> float:
    for _ in range(min(200, n)):  # warm the connection and the script cache
        fn()
    start = time.perf_counter()
    for _ in range(n):
        fn()
    return (time.perf_counter() - start) / n * 1e6


def acquisition_costs(n: int) -> dict[str, float]:
    from django_kiq import limits, storage

    client = storage.get_default().client
    fresh = limits.concurrent("bench-fresh", 10_000, lock_timeout=1.5)  # keeps no lease
    kept = limits.concurrent("bench-kept", 10_000)
    # Rate styles sized so the bench never meets a full one.
    window = limits.window("bench-window", 10**9, "hour")
    bucket = limits.bucket("bench-bucket", 10**9, 0.05)
    leaky = limits.leaky("bench-leaky", 10**9, "second")

    def enter_exit(limiter):
        def run():
            with limiter:
                pass
        return run

    return {"ping": per_call_us(client.ping, n),
            "concurrent acquire + release": per_call_us(enter_exit(fresh), n),
            "concurrent block, kept lease": per_call_us(enter_exit(kept), n),
            "window acquire": per_call_us(enter_exit(window), n),
            "bucket acquire": per_call_us(enter_exit(bucket), n),
            "leaky acquire": per_call_us(enter_exit(leaky), n)}


def drain(target, logdir: Path, fn, n: int, tag: str) -> float:
    from bench.drain import Watch, fill
    from bench.infra import KiqWorker

    target.reset()
    fill(fn, n)
    worker = KiqWorker(target.url, logdir, "-c", "10", tag=tag,
                       env={"KIQ_IMPORTS": "bench.kiq_bench_jobs,bench.limits_bench"})
    try:
        Watch(target, worker, n, tag, None).until_done()
        first = float(target.client.get(jobs.FIRST_KEY))
        last = float(target.client.get(jobs.LAST_KEY))
    finally:
        worker.stop()
    return n / (last - first)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--n", type=int, default=100_000, help="jobs per drain")
    parser.add_argument("--reps", type=int, default=3, help="drains of each kind (median)")
    parser.add_argument("--calls", type=int, default=5_000, help="acquisitions timed")
    parser.add_argument("--redis", metavar="URL", help="an EMPTY database to use instead")
    parser.add_argument("--json", metavar="PATH", help="also write the results here")
    args = parser.parse_args(argv)

    from bench import infra
    from bench.run import setup_django

    workdir = Path(tempfile.mkdtemp(prefix="kiq-limits-bench-"))
    target = infra.RedisTarget(args.redis, workdir)
    try:
        setup_django(target.url, workdir)
        costs = acquisition_costs(args.calls)
        rates: dict[str, list[float]] = {"unlimited": [], "limited": []}
        load = [os.getloadavg()[0]]
        for rep in range(args.reps):
            rates["unlimited"].append(drain(target, workdir, jobs.noop, args.n, f"plain-{rep}"))
            rates["limited"].append(drain(target, workdir, limited_noop, args.n, f"lim-{rep}"))
            load.append(os.getloadavg()[0])
    finally:
        target.close()
        infra.cleanup()
    medians = {k: statistics.median(v) for k, v in rates.items()}
    ratio = medians["limited"] / medians["unlimited"]
    pairs = [lim / plain for plain, lim in zip(rates["unlimited"], rates["limited"])]
    print(f"redis {target.url}; {args.calls:,} calls per cost, {args.n:,} jobs per drain, "
          f"{args.reps} drain(s) each, worker -c 10")
    for name, us in costs.items():
        print(f"  {name:<32} {us:8.1f} µs")
    for name, values in rates.items():
        runs = ", ".join(f"{v:,.0f}" for v in values)
        print(f"  no-op {name:<26} {medians[name]:8,.0f} jobs/s  (runs: {runs})")
    print(f"  limited / unlimited               {ratio:8.1%}  (goal >= 70%; pairs: "
          f"{', '.join(f'{p:.0%}' for p in pairs)})")
    print(f"  load average (1 min) during the drains: "
          f"{', '.join(f'{x:.2f}' for x in load)}")
    if args.json:
        Path(args.json).write_text(json.dumps({"costs_us": costs, "rates": rates,
                                               "medians": medians, "ratio": ratio,
                                               "pairs": pairs, "load": load}, indent=2))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
