"""Draining a pre-filled queue with one worker (scenarios 2 and 3): rate, RSS, CPU, Redis traffic.

Runs in the ``bench/run.py`` process; :func:`drain` fills the queue, starts one
``manage.py kiq_worker``, polls the jobs' completion counter, samples the worker's RSS on a
thread, and stops the worker before it returns, whatever happened.
"""

from __future__ import annotations

import re
import subprocess
import time
from collections import defaultdict

from bench import kiq_bench_jobs as jobs
from bench.infra import STARTED, KiqWorker, RedisTarget, Sampler, cpu_seconds, rss_kb

FILL_CHUNK = 10_000
POLL = 0.01
# Commands the harness itself sends during a drain (driver polling, the jobs' reporter).
HARNESS_COMMANDS = {"get", "set", "incrby", "rpush", "hset", "info", "eval"}


def fill(job, n: int) -> None:
    for start in range(0, n, FILL_CHUNK):
        job.enqueue_many([(i,) for i in range(start, min(n, start + FILL_CHUNK))])


def drain(ctx, job, n: int, *worker_args: str, tag: str, idle_after: bool = False,
          count_round_trips: bool = False, attach: list[str] | None = None,
          log_level: str = "WARNING") -> dict:
    """Fill the queue with ``n`` jobs, start one worker, wait until all are done.

    The rate is n / (last job done - first job started), both stamped by the jobs themselves.
    ``attach``: a command (``py-spy record ... --pid``) started with the worker's pid once the
    first job is done; it ends with the worker.
    """
    target = ctx.target
    target.reset()
    fill(job, n)
    before = target.commandstats()
    env = {"KIQ_LOG_LEVEL": log_level}
    if count_round_trips:
        env["BENCH_COUNT_ROUND_TRIPS"] = "1"
    worker = KiqWorker(target.url, ctx.logdir, *worker_args, env=env, tag=tag)
    sampler = Sampler(worker.pid).start()
    watch = Watch(target, worker, n, tag, attach)
    try:
        watch.until_done()
        after = target.commandstats()
        first = float(target.client.get(jobs.FIRST_KEY))
        last = float(target.client.get(jobs.LAST_KEY))
        rtt = {k.decode(): int(v) for k, v in target.client.hgetall(jobs.ROUND_TRIPS_KEY).items()}
        idle_kb = None
        if idle_after:
            time.sleep(3)  # a few idle passes of the fetcher and waiter
            idle_kb = rss_kb(worker.pid)
    finally:
        sampler.stop()
        worker.stop()
        if watch.spy is not None:
            watch.spy.wait(timeout=60)  # py-spy writes its output when the worker exits
    done = int(target.client.get(jobs.DONE_KEY) or 0)
    left = target.client.llen(jobs_queue_key())
    out = {
        "n": n, "seconds": last - first, "rate": n / (last - first), "completions": done,
        "left_in_queue": left, "peak_rss_kb": sampler.peak_kb, "idle_rss_after_kb": idle_kb,
        "cpu_us_per_job": watch.cpu_us_per_job(), "rss_timeline_kb": thin(sampler.samples),
        "rss_growth_kb": rss_growth(sampler.samples, watch.first_at, idle_kb),
        "commands_per_job": per_job(before, after, n),
        "round_trips_per_job": grouped(rtt, n) if rtt else None, "worker_log": str(worker.log),
    }
    if done != n or left:
        out["problem"] = f"{done:,} completions for {n:,} jobs, {left:,} left in the queue"
    return out


class Watch:
    """Polls the jobs' completion counter until ``n``; notes the worker's CPU time at the first
    and the last completion, and starts ``attach`` (a profiler) at the first."""

    def __init__(self, target: RedisTarget, worker: KiqWorker, n: int, tag: str,
                 attach: list[str] | None):
        self.target, self.worker, self.n, self.tag, self.attach = target, worker, n, tag, attach
        self.first_at = 0.0
        self.cpu_first: tuple[float, int] | None = None
        self.cpu_end = 0.0
        self.spy: subprocess.Popen | None = None

    def until_done(self) -> None:
        deadline = time.monotonic() + 120 + self.n / 200
        while True:
            done = int(self.target.client.get(jobs.DONE_KEY) or 0)
            if done and self.cpu_first is None:
                self._first(done)
            if done >= self.n:
                self.cpu_end = cpu_seconds(self.worker.pid)
                return
            if not self.worker.alive() or time.monotonic() > deadline:
                raise RuntimeError(f"{self.tag}: {done:,}/{self.n:,} jobs done when the worker "
                                   f"{'exited' if not self.worker.alive() else 'timed out'}:\n"
                                   f"{self.worker.tail()}")
            time.sleep(POLL)

    def _first(self, done: int) -> None:
        self.cpu_first = (cpu_seconds(self.worker.pid), done)
        self.first_at = time.monotonic()
        if self.attach:
            self.spy = subprocess.Popen([*self.attach, str(self.worker.pid)],
                                        stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
            STARTED.append(self.spy)

    def cpu_us_per_job(self) -> float | None:
        if self.cpu_first is None:
            return None
        seconds, done = self.cpu_first
        return round((self.cpu_end - seconds) / max(1, self.n - done) * 1e6, 1)


def jobs_queue_key() -> str:
    from django_kiq import storage

    return storage.get_default().keys.queue("default")


def rss_growth(samples: list[tuple[float, int]], start: float, idle_kb: int | None) -> int | None:
    """Idle RSS after the drain minus RSS halfway through it: what a leak would add.

    The first half is left out: the worker's buffers (the per-job timings kept until the next
    heartbeat, allocator arenas) reach their high-water mark there. Meaningful for long runs
    (``--noop-n 1000000``); over a few seconds it mostly shows that warm-up.
    """
    if idle_kb is None or not samples or not start:
        return None
    end = samples[-1][0]
    mark = start + 0.5 * (end - start)
    middle = next((kb for t, kb in samples if t >= mark), None)
    return idle_kb - middle if middle else None


def thin(samples: list[tuple[float, int]], keep: int = 60) -> list[tuple[float, int]]:
    if not samples:
        return []
    t0 = samples[0][0]
    step = max(1, len(samples) // keep)
    return [(round(t - t0, 1), kb) for t, kb in samples[::step]]


def per_job(before: dict[str, int], after: dict[str, int], n: int) -> dict[str, float]:
    """Redis commands per job during the drain (INFO commandstats delta; commands run inside a
    Lua script count too, under their own names)."""
    delta = {name: after.get(name, 0) - before.get(name, 0) for name in after}
    return {name: round(calls / n, 3) for name, calls in sorted(delta.items(), key=lambda x: -x[1])
            if calls and name not in HARNESS_COMMANDS}


def grouped(rtt: dict[str, int], n: int) -> dict[str, float]:
    groups: dict[str, int] = defaultdict(int)
    for name, count in rtt.items():
        groups[re.sub(r"-\d+$", "-*", name)] += count
    out = {name: round(count / n, 4) for name, count in sorted(groups.items())}
    out["total"] = round(sum(groups.values()) / n, 4)
    return out
