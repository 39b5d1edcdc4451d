#!/usr/bin/env python
"""What each optional feature costs on a no-op job: the drain with it off and on, side by side.

    .venv/bin/python bench/features_bench.py [--n 30000] [--reps 3] [--only a,b] [--json PATH]

One ``manage.py kiq_worker`` (default settings: ``-c 5``, reliable fetch, ``KIQ_LOG_LEVEL``
WARNING) drains ``n`` pre-filled jobs per run, as scenario 2 of bench/run.py does. Each
repetition runs the plain no-op (every feature off) and then each feature on, so a busy
neighbour slows them alike; the table gives each one's median rate with the lowest-highest,
its ratio to the plain drain of the same repetitions, the worker's CPU per job, and the
highest 1-minute load average seen during its drains. The features (docs/execution.md,
docs/limits.md, docs/workflows.md, docs/observability.md):

- ``timeout``: a time limit per job (``@job(timeout=60)``): the watchdog tracks each job;
- ``limits``: a concurrent limiter never full (``@job(concurrency=1000)``);
- ``results``: a result record per job (``@job(result_ttl=600)``);
- ``batch``: every job in one batch (``with batch():``), counted at its settle;
- ``async``: an ``async def`` job, run on the worker's event loop;
- ``metrics``: Prometheus metrics served (``KIQ["METRICS_PORT"]``);
- ``tracing``: OpenTelemetry spans (``KIQ["OPENTELEMETRY"]``) recorded by the SDK's
  ``TracerProvider`` (no exporter: the cost of the spans, not of shipping them).

"Off" is the plain no-op job with nothing configured: the worker then runs none of these
features' code but a check per job (a field of the job hash or a setting read once). Starts its
own ``redis-server`` (like bench/run.py) unless ``--redis`` names an empty database.
"""

from __future__ import annotations

import argparse
import json
import os
import socket
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

IMPORTS = "bench.kiq_bench_jobs,bench.features_bench"

if os.environ.get("BENCH_OTEL_SDK") == "1":  # in the worker of the tracing run only
    from opentelemetry import trace
    from opentelemetry.sdk.trace import TracerProvider

    trace.set_tracer_provider(TracerProvider())


def _noop() -> None:
    now = time.time()
    jobs.REPORTER.started(now)
    jobs.REPORTER.done(now)


@job(timeout=60, name="bench.features_bench.timed_noop")
def timed_noop(i):
    _noop()


@job(concurrency=1000, name="bench.features_bench.limited_noop")
def limited_noop(i):
    _noop()


@job(result_ttl=600, name="bench.features_bench.result_noop")
def result_noop(i):
    _noop()


# Registered in the bench process (it enqueues it) and in the async run's worker only: a worker
# with an async job registered starts an event-loop runner, and the other runs must not pay it.
if os.environ.get("BENCH_ASYNC_JOB", "1") == "1":
    @job(name="bench.features_bench.async_noop")
    async def async_noop(i):
        _noop()


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def features() -> dict[str, tuple]:
    """name -> (job, worker environment, fill in a batch?)."""
    return {
        "off (plain no-op)": (jobs.noop, {}, False),
        "timeout": (timed_noop, {}, False),
        "limits": (limited_noop, {}, False),
        "results": (result_noop, {}, False),
        "batch": (jobs.noop, {}, True),
        "async": (async_noop, {"BENCH_ASYNC_JOB": "1"}, False),
        "metrics": (jobs.noop, {"KIQ_METRICS_PORT": str(_free_port())}, False),
        "tracing": (jobs.noop, {"KIQ_OPENTELEMETRY": "1", "BENCH_OTEL_SDK": "1"}, False),
    }


def run_one(target, logdir: Path, loads, fn, env: dict[str, str], in_batch: bool, n: int,
            tag: str) -> tuple[float, float | None, float]:
    """(rate, CPU µs per job, highest load seen) of one drain of ``n`` jobs."""
    from django_kiq import batch
    from bench.drain import Watch, fill
    from bench.infra import KiqWorker

    target.reset()
    if in_batch:
        with batch(description="features bench"):
            fill(fn, n)
    else:
        fill(fn, n)
    loads.mark()
    worker = KiqWorker(target.url, logdir, tag=tag,
                       env={"KIQ_IMPORTS": IMPORTS, "BENCH_ASYNC_JOB": "0", **env})
    watch = Watch(target, worker, n, tag, None)
    try:
        watch.until_done()
        first = float(target.client.get(jobs.FIRST_KEY))
        last = float(target.client.get(jobs.LAST_KEY))
    finally:
        worker.stop()
    return n / (last - first), watch.cpu_us_per_job(), loads.peak()


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--n", type=int, default=30_000, help="jobs per drain")
    parser.add_argument("--reps", type=int, default=3, help="drains of each kind (median)")
    parser.add_argument("--only", help="comma-separated features (the plain drain always runs)")
    parser.add_argument("--redis", metavar="URL", help="an EMPTY database to use instead")
    parser.add_argument("--json", metavar="PATH", help="also write the results here")
    args = parser.parse_args(argv)

    from bench import infra
    from bench.run import setup_django

    workdir = Path(tempfile.mkdtemp(prefix="kiq-features-bench-"))
    target = infra.RedisTarget(args.redis, workdir)
    runs: dict[str, list[tuple[float, float | None, float]]] = {}
    try:
        setup_django(target.url, workdir)
        loads = infra.LoadSampler().start()
        chosen = features()
        if args.only:
            wanted = set(args.only.split(","))
            chosen = {k: v for i, (k, v) in enumerate(chosen.items()) if i == 0 or k in wanted}
        for rep in range(args.reps):
            for name, (fn, env, in_batch) in chosen.items():
                tag = f"{name.split()[0]}-{rep}"
                runs.setdefault(name, []).append(
                    run_one(target, workdir, loads, fn, env, in_batch, args.n, tag))
                print(f"  {tag}: {runs[name][-1][0]:,.0f} jobs/s", flush=True)
    finally:
        target.close()
        infra.cleanup()
    report(runs, args)
    return 0


def report(runs: dict[str, list[tuple[float, float | None, float]]], args) -> None:
    plain = [rate for rate, _, _ in runs["off (plain no-op)"]]
    rows = {}
    print(f"\n{args.n:,} no-op jobs per drain, {args.reps} drain(s) each, one worker (-c 5), "
          "WARNING; feature on vs the plain drains of the same repetitions")
    print("| feature | jobs/s (median, lowest-highest) | vs off | CPU µs/job | load |")
    print("|---|---:|---:|---:|---:|")
    for name, values in runs.items():
        rates = [r for r, _, _ in values]
        cpus = [c for _, c, _ in values if c is not None]
        median = statistics.median(rates)
        ratio = median / statistics.median(plain)
        cpu = statistics.median(cpus) if cpus else None
        load = max(x for _, _, x in values)
        rows[name] = {"rates": rates, "median": median, "ratio_to_off": ratio,
                      "cpu_us_per_job": cpu, "peak_load": load}
        print(f"| {name} | {median:,.0f} ({min(rates):,.0f}-{max(rates):,.0f}) | "
              f"{ratio:.0%} | {cpu if cpu is not None else '-'} | {load:.1f} |")
    if args.json:
        Path(args.json).write_text(json.dumps(rows, indent=2))


if __name__ == "__main__":
    raise SystemExit(main())
