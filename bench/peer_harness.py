"""The peers' side of ``bench/run.py --peers``: adapters, worker processes, enqueue and drain tests.

Runs only in the peers' own virtualenv (``bench/peers.py`` builds it and runs its driver there), so
none of rq, celery, dramatiq or huey ever becomes a project dependency. Adapted from the shared
harness first used on 2026-11-27 (its method and numbers are the ones docs/performance.md compares
with): one adapter per system says how to enqueue (single calls, its bulk API) and which command
line starts a worker; :func:`test_process` fills the queue, starts the worker under
``/usr/bin/time -v``, polls the completion counter every 5 ms (the jobs in ``peer_apps/`` and
``sidekiq_jobs.rb`` count without a round trip per job), samples the worker tree's RSS and the
machine's load, and stops the worker by pid.

Every measurement is returned as a dict; nothing is written outside the temporary directory the
caller gives. The Redis is the benchmark's private server: :func:`flush` empties its db 0.
"""
from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from importlib.metadata import version as pkg_version
from pathlib import Path

HERE = Path(__file__).resolve().parent
APPS = HERE / "peer_apps"
SIDEKIQ_RB = HERE / "sidekiq_jobs.rb"
VENV_BIN = Path(sys.executable).parent
sys.path.insert(0, str(APPS))

import redis  # noqa: E402
from common import DONE_KEY, LOG_LEVEL, REDIS_URL  # noqa: E402

R = redis.Redis.from_url(REDIS_URL)


def flush() -> None:
    R.flushdb()


def bin_(name: str) -> str:
    return str(VENV_BIN / name)


class Adapter:
    name = pkg = ""
    bulk_label = ""
    configs: dict[str, dict] = {}

    def version(self) -> str:
        return pkg_version(self.pkg)

    def fill(self, task: str, n: int) -> None:
        self.enqueue_single(task, n)

    def enqueue_single(self, task: str, n: int) -> None:
        raise NotImplementedError

    def enqueue_bulk(self, task: str, n: int) -> None:
        raise NotImplementedError


class RQ(Adapter):
    name = pkg = "rq"
    bulk_label = "Queue.enqueue_many (one pipeline)"

    def _queue(self):
        from rq import Queue
        return Queue("default", connection=redis.Redis.from_url(REDIS_URL))

    def enqueue_single(self, task, n):
        import rq_app
        queue, func = self._queue(), getattr(rq_app, task)
        for i in range(n):
            queue.enqueue(func, i)

    def enqueue_bulk(self, task, n):
        from rq import Queue
        import rq_app
        func = getattr(rq_app, task)
        self._queue().enqueue_many([Queue.prepare_data(func, (i,)) for i in range(n)])

    fill = enqueue_bulk

    @property
    def configs(self):
        w = [bin_("rq"), "worker", "-u", REDIS_URL, "--logging_level", LOG_LEVEL]
        pool = [bin_("rq"), "worker-pool", "-u", REDIS_URL, "-l", LOG_LEVEL]
        return {
            "simple": dict(argv=w + ["-w", "rq.worker.SimpleWorker", "default"],
                           desc="rq worker -w SimpleWorker (no fork)"),
            "pool10-simple": dict(argv=pool + ["-n", "10", "-w", "rq.worker.SimpleWorker",
                                               "default"],
                                  desc="rq worker-pool -n 10 -w SimpleWorker (10 processes)"),
        }


class Celery(Adapter):
    name = pkg = "celery"
    bulk_label = "group(...).apply_async()"

    def enqueue_single(self, task, n):
        import cel_app
        func = getattr(cel_app, task)
        for i in range(n):
            func.delay(i)

    def enqueue_bulk(self, task, n):
        from celery import group
        import cel_app
        func = getattr(cel_app, task)
        group(func.s(i) for i in range(n)).apply_async()

    @property
    def configs(self):
        c = [bin_("celery"), "-A", "cel_app", "worker", "-l", LOG_LEVEL]
        return {
            "prefork2": dict(argv=c + ["-c", "2"],
                             desc="celery worker (default prefork, -c 2 = ncpu)"),
            "threads10": dict(argv=c + ["--pool", "threads", "-c", "10"],
                              desc="celery worker --pool threads -c 10"),
            "threads50": dict(argv=c + ["--pool", "threads", "-c", "50"],
                              desc="celery worker --pool threads -c 50"),
        }


class Dramatiq(Adapter):
    name = pkg = "dramatiq"
    bulk_label = "dramatiq.group([...]).run() (a loop of enqueues)"

    def enqueue_single(self, task, n):
        import dr_app
        func = getattr(dr_app, task)
        for i in range(n):
            func.send(i)

    def enqueue_bulk(self, task, n):
        import dramatiq
        import dr_app
        func = getattr(dr_app, task)
        dramatiq.group([func.message(i) for i in range(n)]).run()

    configs = {f"p1t{t}": dict(argv=[bin_("dramatiq"), "dr_app", "--processes", "1",
                                     "--threads", str(t)],
                               desc=f"dramatiq --processes 1 --threads {t}")
               for t in (8, 10, 50)}


class Huey(Adapter):
    name = pkg = "huey"
    bulk_label = "task.map(range(n)) (a loop of enqueues)"

    def enqueue_single(self, task, n):
        import hu_app
        func = getattr(hu_app, task)
        for i in range(n):
            func(i)

    def enqueue_bulk(self, task, n):
        import hu_app
        getattr(hu_app, task).map(range(n))

    @property
    def configs(self):
        h = [bin_("huey_consumer"), "hu_app.huey"] + (["-q"] if LOG_LEVEL != "INFO" else [])
        return {"w1thread": dict(argv=h, desc="huey_consumer (default: -w 1 -k thread)"),
                **{f"w{w}thread": dict(argv=h + ["-w", str(w), "-k", "thread"],
                                       desc=f"huey_consumer -w {w} -k thread") for w in (10, 50)}}


class Sidekiq(Adapter):
    """Debian's ruby-sidekiq; the jobs, the filler and the timed enqueue are bench/sidekiq_jobs.rb."""

    name = pkg = "sidekiq"
    bulk_label = "Sidekiq::Client.push_bulk, 1,000 jobs per call"
    configs = {f"c{c}": dict(argv=["sidekiq", "-r", str(SIDEKIQ_RB), "-c", str(c), "-q", "default"],
                             desc=f"sidekiq -c {c} (one process{', default' if c == 10 else ''})")
               for c in (10, 50)}

    def version(self):
        return subprocess.run(["ruby", "-e", 'require "sidekiq"; print Sidekiq::VERSION'],
                              capture_output=True, text=True).stdout.strip() or "?"

    def fill(self, task, n):
        subprocess.run(["ruby", str(SIDEKIQ_RB), "fill", task, str(n)], check=True)

    def enqueue_rates(self, n: int) -> dict:
        import json
        out = subprocess.run(["ruby", str(SIDEKIQ_RB), "enqueue", str(n)], check=True,
                             capture_output=True, text=True).stdout
        return json.loads(out.strip().splitlines()[-1])


ADAPTERS = {a.name: a for a in (RQ(), Celery(), Dramatiq(), Huey(), Sidekiq())}


# -- processes ----------------------------------------------------------------------------------

def children_map() -> dict[int, list[int]]:
    out: dict[int, list[int]] = {}
    for d in os.listdir("/proc"):
        if not d.isdigit():
            continue
        try:
            stat = Path(f"/proc/{d}/stat").read_text()
            ppid = int(stat[stat.rindex(")") + 2:].split()[1])
        except (OSError, ValueError, IndexError):
            continue
        out.setdefault(ppid, []).append(int(d))
    return out


def descendants(pid: int) -> list[int]:
    tree, out, stack = children_map(), [], [pid]
    while stack:
        for child in tree.get(stack.pop(), []):
            out.append(child)
            stack.append(child)
    return out


def rss_kb(pid: int) -> int:
    try:
        for line in Path(f"/proc/{pid}/status").read_text().splitlines():
            if line.startswith("VmRSS:"):
                return int(line.split()[1])
    except OSError:
        pass
    return 0


def start_worker(fw: str, config: str, logdir: Path, tag: str):
    cfg = ADAPTERS[fw].configs[config]
    env = {**os.environ, "PYTHONPATH": str(APPS)}
    timef = logdir / f"{tag}.time"
    with open(logdir / f"{tag}.log", "w") as log:
        proc = subprocess.Popen(["/usr/bin/time", "-v", "-o", str(timef)] + cfg["argv"],
                                cwd=APPS, env=env, stdout=log, stderr=subprocess.STDOUT,
                                start_new_session=True)
    return proc, timef


def stop_worker(proc: subprocess.Popen, wait: float = 20.0) -> None:
    """SIGTERM the worker (the child of /usr/bin/time), then SIGKILL what is left, pid by pid."""
    kids = descendants(proc.pid)
    for pid in children_map().get(proc.pid, []):
        try:
            os.kill(pid, signal.SIGTERM)
        except ProcessLookupError:
            pass
    try:
        proc.wait(timeout=wait)
    except subprocess.TimeoutExpired:
        pass
    for pid in descendants(proc.pid) + kids:
        try:
            os.kill(pid, signal.SIGKILL)
        except ProcessLookupError:
            pass
    try:
        proc.wait(timeout=5)
    except subprocess.TimeoutExpired:
        proc.kill()
        proc.wait()


def parse_time(timef: Path) -> dict:
    out = {}
    try:
        for line in timef.read_text().splitlines():
            line = line.strip()
            if line.startswith("User time"):
                out["user_s"] = float(line.rsplit(":", 1)[1])
            elif line.startswith("System time"):
                out["sys_s"] = float(line.rsplit(":", 1)[1])
    except OSError:
        pass
    return out


def cpu_seconds(pids: list[int]) -> float:
    total = 0
    for pid in pids:
        try:
            fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
            total += int(fields[11]) + int(fields[12])
        except (OSError, IndexError, ValueError):
            pass
    return total / os.sysconf("SC_CLK_TCK")


# -- tests --------------------------------------------------------------------------------------

def test_enqueue(fw: str, n: int, task: str = "noop") -> list[dict]:
    """One repetition: the single-call loop and the bulk API, each on an empty queue."""
    adapter = ADAPTERS[fw]
    out = []
    for method, func in (("single", adapter.enqueue_single), ("bulk", adapter.enqueue_bulk)):
        flush()
        func(task, 50)  # warm-up: imports, connections, scripts
        flush()
        start = time.perf_counter()
        func(task, n)
        seconds = time.perf_counter() - start
        out.append(dict(test="enqueue", fw=fw, method=method, n=n, rate=n / seconds,
                        load1=os.getloadavg()[0]))
    flush()
    return out


def test_process(fw: str, config: str, task: str, n: int, logdir: Path, rep: int,
                 timeout: float) -> dict:
    """One drain of ``n`` pre-queued jobs by one worker: rate, CPU per job, peak RSS, load."""
    adapter = ADAPTERS[fw]
    flush()
    adapter.fill(task, n)
    tag = f"{fw}-{config}-{task}-{LOG_LEVEL.lower()}-{rep}"
    t0 = time.perf_counter()
    proc, timef = start_worker(fw, config, logdir, tag)
    t_first = t_end = None
    cpu_first = cpu_end = 0.0
    peak = 0
    next_sample = 0.0
    loads = []
    done = 0
    while True:
        now = time.perf_counter()
        done = int(R.get(DONE_KEY) or 0)
        if done >= 1 and t_first is None:
            t_first, first_done = now, done
            cpu_first = cpu_seconds(descendants(proc.pid))
        if done >= n:
            t_end = now
            cpu_end = cpu_seconds(descendants(proc.pid))
            break
        if now >= next_sample:
            peak = max(peak, sum(rss_kb(p) for p in descendants(proc.pid)))
            loads.append(os.getloadavg()[0])
            next_sample = now + 0.1
        if now - t0 > timeout or proc.poll() is not None:
            break
        time.sleep(0.005)
    peak = max(peak, sum(rss_kb(p) for p in descendants(proc.pid)))
    stop_worker(proc)
    res = dict(test="process", fw=fw, config=config, desc=adapter.configs[config]["desc"],
               task=task, n=n, rep=rep, completed=done, log_level=LOG_LEVEL,
               peak_tree_rss_kb=peak, load1=max(loads, default=os.getloadavg()[0]),
               **parse_time(timef))
    if t_end is not None and t_end > t_first:
        res["rate_steady"] = (n - first_done) / (t_end - t_first)
        res["cpu_us_per_job"] = (cpu_end - cpu_first) / max(1, n - first_done) * 1e6
    else:
        res["error"] = "timeout" if proc.returncode is None or done < n else "exited"
    flush()
    return res
