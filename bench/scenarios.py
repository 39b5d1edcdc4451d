"""django-kiq's side of the benchmark: scenarios 1-6, each appending :class:`Result` rows.

Runs in the ``bench/run.py`` process after Django is set up against the benchmark's Redis. Each
scenario starts from an empty DB (:meth:`RedisTarget.reset`), starts the worker subprocesses it
needs and stops them before it returns. Scenarios 5 and 6 call the other benchmark scripts
(``bench/scheduled_precision.py``, ``bench/api_ops.py``) rather than re-implementing them.
"""

from __future__ import annotations

import re
import statistics
import subprocess
import sys
import time
from collections import defaultdict
from dataclasses import dataclass, field
from pathlib import Path

import redis

from bench import kiq_bench_jobs as jobs
from bench.drain import drain
from bench.infra import ROOT, KiqWorker, LoadSampler, RedisTarget, rss_kb

KIQ = "django-kiq"


@dataclass(frozen=True, slots=True, kw_only=True)
class Result:
    """One line of the results table."""

    scenario: str
    system: str
    value: float
    unit: str
    higher_is_better: bool = True
    note: str = ""
    runs: tuple[float, ...] | list[float] = ()  # every repetition (value is their median)
    load: float | None = None  # the highest 1-minute load average sampled while it ran


@dataclass(kw_only=True)
class Context:
    """What every scenario gets: the Redis, sizes, options; where rows and details go."""

    target: RedisTarget
    logdir: Path
    quick: bool
    profile_dir: Path | None = None
    noop_n: int | None = None
    reps: int = 1
    log_levels: tuple[str, ...] = ("WARNING",)
    results: list[Result] = field(default_factory=list)
    details: dict = field(default_factory=dict)
    load: LoadSampler = field(default_factory=lambda: LoadSampler().start())

    def add(self, scenario: str, value: float, unit: str, *, system: str = KIQ,
            higher_is_better: bool = True, note: str = "", runs=()) -> None:
        self.results.append(Result(scenario=scenario, system=system, value=value, unit=unit,
                                   higher_is_better=higher_is_better, note=note,
                                   runs=[round(r, 2) for r in runs], load=self.load.peak()))

    def size(self, quick: int, full: int) -> int:
        return quick if self.quick else full


def level_label(scenario: str, level: str) -> str:
    """Rows measured at a log level other than WARNING say so in their scenario name."""
    return scenario if level == "WARNING" else f"{scenario}, {level} logging"


def percentile(values: list[float], pct: int) -> float:
    return statistics.quantiles(values, n=100, method="inclusive")[pct - 1]


# -- 1. enqueue ---------------------------------------------------------------------------------

def enqueue(ctx: Context) -> None:
    """Single ``enqueue`` loop, ``enqueue_many``, and a bare redis-py LPUSH loop of the same
    bytes on the same Redis: the LPUSH loop is the one-round-trip-per-job floor."""
    from django_kiq import storage

    n_single, n_many = ctx.size(2_000, 20_000), ctx.size(20_000, 100_000)
    reps = ctx.size(1, 3)
    store = storage.get_default()
    queue_key = store.keys.queue("default")
    bare = redis.Redis.from_url(ctx.target.url)
    ctx.target.reset()
    jobs.noop.enqueue(0)
    raw = store.client.lindex(queue_key, 0)  # a real payload: LPUSH pushes the same bytes

    def lpush_loop(n: int) -> None:
        for _ in range(n):
            bare.lpush("bench:lpush", raw)

    def single(n: int) -> None:
        for i in range(n):
            jobs.noop.enqueue(i)

    def many(n: int) -> None:
        jobs.noop.enqueue_many([(i,) for i in range(n)])

    for func in (lpush_loop, single, many):  # warm up connections, scripts, code paths
        func(200)
    # The LPUSH floor and the enqueue loop alternate in blocks, so a noisy neighbour slows both
    # alike and their ratio holds; enqueue_many runs whole.
    block = 500
    rates: dict[str, list[float]] = defaultdict(list)
    for _ in range(reps):
        spent = {"lpush": 0.0, "single": 0.0}
        for _ in range(n_single // block):
            for label, func in (("lpush", lpush_loop), ("single", single)):
                start = time.perf_counter()
                func(block)
                spent[label] += time.perf_counter() - start
            ctx.target.reset()
        for label, seconds in spent.items():
            rates[label].append(n_single // block * block / seconds)
        start = time.perf_counter()
        many(n_many)
        rates["many"].append(n_many / (time.perf_counter() - start))
        ctx.target.reset()
    ctx.target.reset()
    bare.close()
    best = {label: statistics.median(values) for label, values in rates.items()}
    each = f"median of {reps}" if reps > 1 else "1 run"
    ctx.add("1 enqueue: single", best["single"], "jobs/s", runs=rates["single"],
            note=f"job.enqueue(i) loop, n={n_single:,}, {each}; "
                 f"{best['single'] / best['lpush']:.0%} of the bare LPUSH loop")
    ctx.add("1 enqueue: single", best["lpush"], "jobs/s", system="redis-py LPUSH loop",
            runs=rates["lpush"],
            note="the one-round-trip floor: same payload bytes, same Redis, "
                 f"alternating with the enqueue loop in blocks of {block}")
    ctx.add("1 enqueue: bulk", best["many"], "jobs/s", runs=rates["many"],
            note=f"job.enqueue_many(), n={n_many:,}, {each}")
    ctx.details["enqueue"] = {"rates": rates, "n_single": n_single, "n_many": n_many,
                              "payload_bytes": len(raw)}


# -- 2. no-op -----------------------------------------------------------------------------------

def repeated(ctx: Context, *args, **kwargs) -> tuple[dict, str]:
    """``drain`` ``ctx.reps`` times; the run with the median rate, and how it was chosen."""
    runs = [drain(ctx, *args, **kwargs) for _ in range(ctx.reps)]
    median = sorted(runs, key=lambda r: r["rate"])[len(runs) // 2]
    median["rates"] = [round(r["rate"]) for r in runs]
    median["cpu_us_runs"] = [r["cpu_us_per_job"] for r in runs]
    median["peak_rss_kb"] = max(r["peak_rss_kb"] for r in runs)
    return median, (f"median of {len(runs)}" if len(runs) > 1 else "1 run")


def noop(ctx: Context) -> None:
    n = ctx.noop_n or ctx.size(10_000, 100_000)
    for level in ctx.log_levels:
        run, how = repeated(ctx, jobs.noop, n, tag=f"noop-{level.lower()}", log_level=level,
                            idle_after=level == "WARNING", count_round_trips=True)
        ctx.details["noop" if level == "WARNING" else f"noop-{level}"] = run
        note = (f"n={n:,}, {how}, 1 process, default settings (-c 5), KIQ_LOG_LEVEL={level}; "
                f"{run['round_trips_per_job']['total']} round trips/job")
        if "problem" in run:
            note += f"; PROBLEM: {run['problem']}"
        scenario = level_label("2 no-op processing", level)
        ctx.add(scenario, run["rate"], "jobs/s", note=note, runs=run["rates"])
        cpu = [c for c in run["cpu_us_runs"] if c is not None]
        if cpu:
            ctx.add(f"{scenario} CPU per job", statistics.median(cpu), "µs", runs=cpu,
                    higher_is_better=False, note="worker user+system time, first to last job")
        if level != "WARNING":
            continue
        ctx.add("2 worker RSS: peak while draining", run["peak_rss_kb"] / 1024, "MB",
                higher_is_better=False, note=f"n={n:,}, VmRSS sampled every 100 ms")
        ctx.add("2 worker RSS: idle after the run", run["idle_rss_after_kb"] / 1024, "MB",
                higher_is_better=False, note="3 s after the last job")
    if ctx.profile_dir:
        for level in ctx.log_levels:
            profile_noop(ctx, n, level)


def profile_noop(ctx: Context, n: int, level: str) -> None:
    """The same drain again with ``py-spy record`` attached once the first job ran (so start-up
    and imports stay out); the rate of this run is not reported (the sampler costs CPU)."""
    from bench import profiling

    spy = profiling.py_spy()
    if not spy:
        ctx.details["profile"] = "py-spy not installed (pip install py-spy)"
        return
    ctx.profile_dir.mkdir(parents=True, exist_ok=True)
    raw = ctx.profile_dir / f"noop-worker-{level.lower()}.pyspy.txt"
    attach = [spy, "record", "--format", "raw", "--rate", "250", "--gil", "--threads",
              "--output", str(raw), "--pid"]
    run = drain(ctx, jobs.noop, n, tag=f"noop-profiled-{level.lower()}", attach=attach,
                log_level=level)
    key = "profile" if level == "WARNING" else f"profile-{level}"
    ctx.details[key] = {"rate_under_profiler": run["rate"], "raw": str(raw),
                        "py_spy": " ".join(attach[1:-1]), **profiling.summarize(raw)}


# -- 3. I/O-bound -------------------------------------------------------------------------------

def io(ctx: Context) -> None:
    n = ctx.size(1_000, 5_000)
    ctx.details["io"] = {}
    for concurrency in (10, 50):
        run, how = repeated(ctx, jobs.sleep10, n, "-c", str(concurrency),
                            tag=f"io-c{concurrency}")
        ideal = concurrency / 0.010
        ctx.details["io"][concurrency] = run
        ctx.add(f"3 sleep 10 ms @ -c {concurrency}", run["rate"], "jobs/s", runs=run["rates"],
                note=f"n={n:,}, {how}; ideal {ideal:,.0f}/s; "
                     f"efficiency {run['rate'] / ideal:.1%}")


# -- 4. pickup latency --------------------------------------------------------------------------

def latency(ctx: Context) -> None:
    n, gap = ctx.size(50, 200), 0.02
    target = ctx.target
    target.reset()
    worker = KiqWorker(target.url, ctx.logdir, tag="latency")
    try:
        jobs.noop.enqueue(0)  # warm-up: imports, connections, scripts
        wait_done(target, 1, worker)
        time.sleep(2)  # let it go idle: the waiter thread blocks in BLMOVE
        idle_kb = rss_kb(worker.pid)
        for _ in range(n):
            jobs.pickup.enqueue(time.time())
            time.sleep(gap)
        wait_done(target, n + 1, worker)
    finally:
        worker.stop()
    ms = sorted(float(x) * 1000 for x in target.client.lrange(jobs.LATENCY_KEY, 0, -1))
    cuts = {p: percentile(ms, p) for p in (50, 90, 99)}
    ctx.details["latency"] = {"n": n, "gap_s": gap, "ms": ms, "idle_rss_kb": idle_kb}
    for p, value in cuts.items():
        ctx.add(f"4 pickup latency p{p}", value, "ms", higher_is_better=False,
                note=f"idle worker, {n} jobs {gap * 1000:.0f} ms apart; enqueue call to job start")
    ctx.add("2 worker RSS: idle, fresh", idle_kb / 1024, "MB", higher_is_better=False,
            note="after one warm-up job, 2 s idle")


def wait_done(target: RedisTarget, n: int, worker: KiqWorker, timeout: float = 60) -> None:
    deadline = time.monotonic() + timeout
    while int(target.client.get(jobs.DONE_KEY) or 0) < n:
        if not worker.alive() or time.monotonic() > deadline:
            raise RuntimeError(f"worker did not finish {n} job(s):\n{worker.tail()}")
        time.sleep(0.005)


# -- 5. scheduled precision (bench/scheduled_precision.py) -------------------------------------

LATENESS = re.compile(r"p50 ([\d.]+) ms\s+p90 ([\d.]+) ms\s+p99 ([\d.]+) ms\s+max ([\d.]+) ms")


def scheduled(ctx: Context) -> None:
    script = ROOT / "bench" / "scheduled_precision.py"
    if not script.exists():
        ctx.details["scheduled"] = "bench/scheduled_precision.py is missing"
        return
    sizes = ["--jobs", "200", "--spread", "4", "--retry-filler", "10000"] if ctx.quick else []
    ctx.target.reset()
    proc = subprocess.run([sys.executable, str(script), "--redis", ctx.target.url, *sizes],
                          cwd=ROOT, capture_output=True, text=True, timeout=600)
    match = LATENESS.search(proc.stdout)
    ctx.details["scheduled"] = {"argv": sizes, "stdout": proc.stdout[-2000:],
                                "stderr": proc.stderr[-2000:]}
    if proc.returncode or not match:
        raise RuntimeError(f"scheduled_precision.py failed (exit {proc.returncode}):\n"
                           f"{proc.stdout[-1500:]}\n{proc.stderr[-1500:]}")
    what = proc.stdout.splitlines()[0]
    for label, value in zip(("p50", "p90", "p99", "max"), match.groups()):
        if label in ("p50", "p99"):
            ctx.add(f"5 scheduled lateness {label}", float(value), "ms", higher_is_better=False,
                    note=what)


# -- 6. bulk admin operations (bench/api_ops.py) ------------------------------------------------

def api(ctx: Context) -> None:
    """``bench/api_ops.py`` (the API behind the admin), then ``bench/admin_pages.py`` (the
    Retries page rendered through Django's test client) on a retry set of 1,000,000."""
    from bench import api_ops
    from django_kiq import storage

    n, big = ctx.size(5_000, 100_000), ctx.size(50_000, 1_000_000)
    store = storage.get_default()
    ctx.target.reset()
    try:
        rows = api_ops.run(store, n, big)
    finally:
        ctx.target.reset()
    ctx.details["api"] = [{"operation": label, "seconds": s, "rate": rate}
                          for label, s, rate in rows]
    for label, seconds, _ in rows:
        if label.startswith("fill"):
            continue
        if "_all" in label:  # bulk operations: seconds
            ctx.add(f"6 {label}", seconds, "s", higher_is_better=False)
        else:
            ctx.add(f"6 {label}", seconds * 1000, "ms", higher_is_better=False,
                    note=f"API call, retry set of {big:,}")
    admin_pages(ctx, store, big)


def admin_pages(ctx: Context, store, big: int) -> None:
    from bench import admin_pages as pages

    repeat = ctx.size(3, 5)
    try:
        pages.fill_retry(store, big, marker_at=big // 2)
        rows = pages.run(pages.login(), big, repeat)
    finally:
        ctx.target.reset()
    ctx.details["admin_pages"] = {label: times for label, times in rows}
    for label, times in rows:
        ctx.add(f"6 admin page: {label}", statistics.median(times), "ms",
                higher_is_better=False,
                note=f"median of {repeat} renders (worst {max(times):,.0f} ms), "
                     f"retry set of {big:,}")


SCENARIOS = {"enqueue": enqueue, "noop": noop, "io": io, "latency": latency,
             "scheduled": scheduled, "api": api}
