#!/usr/bin/env python
"""``kiq_worker --processes 2`` against two independently started workers and one worker.

    .venv/bin/python bench/processes_bench.py [--n 100000] [--reps 3] [-c 10] [--redis URL]

In one run, alternated ``reps`` times, each drains ``n`` no-op jobs from a pre-filled queue:

- ``one``: one ``kiq_worker -c C``;
- ``two``: two ``kiq_worker -c C`` started independently (each loads Django itself);
- ``processes2``: one ``kiq_worker --processes 2 -c C`` (a supervisor and two forked workers).

Two rates: **steady**, the jobs done from the moment every process of the kind had registered
(about to fetch: the harness polls the ``processes`` set with the completion counter) to the
n-th completion, over that time; and **from the first job**, n over the time from the first
job's start (stamped by the job) to the n-th completion, which also counts how long the last
process took to start after the first (independent workers each import Django; forked ones
do not). The median of each kind is printed with its runs. After each drain, with the workers
idle, the memory of the kind's processes is summed: PSS from ``/proc/<pid>/smaps_rollup``
(shared pages divided among the processes sharing them, so the sum is what they cost the
machine together) and RSS (what each process shows alone). The supervisor's own process is
counted in ``processes2``. Starts its own ``redis-server`` (like bench/run.py) unless
``--redis`` names an empty database; the machine's load average is printed with the results.
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

KINDS = ("one", "two", "processes2")


def smaps_kb(pid: int, field: str) -> int:
    """A ``Pss:`` or ``Rss:`` total of ``/proc/<pid>/smaps_rollup`` in kB (0 if gone)."""
    try:
        for line in Path(f"/proc/{pid}/smaps_rollup").read_text().splitlines():
            if line.startswith(field + ":"):
                return int(line.split()[1])
    except OSError:
        pass
    return 0


def children_of(pid: int) -> list[int]:
    out = []
    for entry in Path("/proc").iterdir():
        if entry.name.isdigit():
            try:
                stat = (entry / "stat").read_text()
            except OSError:
                continue
            if int(stat.rsplit(")", 1)[1].split()[1]) == pid:
                out.append(int(entry.name))
    return out


def start(kind: str, target, logdir: Path, threads: int, rep: int) -> list:
    from bench.infra import KiqWorker

    args = ("-c", str(threads))
    if kind == "one":
        return [KiqWorker(target.url, logdir, *args, tag=f"one-{rep}")]
    if kind == "two":
        return [KiqWorker(target.url, logdir, *args, tag=f"two-{rep}-{i}") for i in range(2)]
    return [KiqWorker(target.url, logdir, "--processes", "2", *args, tag=f"processes2-{rep}")]


def drain(kind: str, target, logdir: Path, n: int, threads: int, rep: int) -> dict:
    from bench import kiq_bench_jobs as jobs
    from bench.drain import fill

    target.reset()
    fill(jobs.noop, n)
    workers = start(kind, target, logdir, threads, rep)
    expected = 1 if kind == "one" else 2  # worker processes (the supervisor registers none)
    all_up: tuple[float, int] | None = None  # (time, jobs done) when every process registered
    try:
        deadline = time.monotonic() + 120 + n / 200
        while True:
            pipe = target.client.pipeline(transaction=False)
            pipe.get(jobs.DONE_KEY)
            pipe.scard("processes")
            done, up = pipe.execute()
            now, done = time.time(), int(done or 0)
            if all_up is None and up >= expected:
                all_up = (now, done)
            if done >= n:
                break
            if time.monotonic() > deadline or not all(w.alive() for w in workers):
                raise RuntimeError(f"{kind}: the drain did not end:\n{workers[0].tail()}")
            time.sleep(0.01)
        end = now
        first = float(target.client.get(jobs.FIRST_KEY))
        assert all_up is not None
        time.sleep(1.0)  # idle: the fetchers and waiters settle
        pids = [w.pid for w in workers]
        if kind == "processes2":
            pids += children_of(workers[0].pid)
        memory = {"pids": len(pids),
                  "pss_mb": sum(smaps_kb(p, "Pss") for p in pids) / 1024,
                  "rss_mb": sum(smaps_kb(p, "Rss") for p in pids) / 1024}
    finally:
        for worker in workers:
            worker.stop()
    return {"rate": (n - all_up[1]) / (end - all_up[0]), "rate_from_first": n / (end - first),
            "start_skew_s": max(0.0, all_up[0] - first), **memory}


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--n", type=int, default=100_000, help="jobs per drain")
    parser.add_argument("--reps", type=int, default=3, help="drains of each kind (median)")
    parser.add_argument("-c", "--concurrency", type=int, default=10, help="threads per process")
    parser.add_argument("--redis", metavar="URL", help="an EMPTY database to use instead")
    parser.add_argument("--json", metavar="PATH", help="also write the results here")
    args = parser.parse_args(argv)

    from bench import infra
    from bench.run import setup_django

    workdir = Path(tempfile.mkdtemp(prefix="kiq-processes-bench-"))
    target = infra.RedisTarget(args.redis, workdir)
    runs: dict[str, list[dict]] = {kind: [] for kind in KINDS}
    load = [os.getloadavg()[0]]
    try:
        setup_django(target.url, workdir)
        machine = infra.machine(target)
        for rep in range(args.reps):
            for kind in KINDS:
                runs[kind].append(drain(kind, target, workdir, args.n, args.concurrency, rep))
            load.append(os.getloadavg()[0])
    finally:
        target.close()
        infra.cleanup()
    medians = {kind: {key: statistics.median(r[key] for r in runs[kind])
                      for key in ("rate", "rate_from_first", "pss_mb", "rss_mb")}
               for kind in KINDS}
    print(f"{machine['cores']} cores ({machine['cpu_model']}), Python {machine['python']}, "
          f"Redis {machine['redis_server']}, code {machine['code']}")
    print(f"{args.n:,} no-op jobs per drain, -c {args.concurrency} per process, {args.reps} "
          f"drain(s) of each kind, alternated")
    for kind in KINDS:
        m = medians[kind]
        print(f"  {kind:<11} steady {m['rate']:7,.0f} jobs/s (runs: "
              f"{', '.join(f'{r['rate']:,.0f}' for r in runs[kind])}), from the first job "
              f"{m['rate_from_first']:7,.0f} (last process up "
              f"{', '.join(f'{r['start_skew_s']:.2f}' for r in runs[kind])} s after the first "
              f"job); PSS {m['pss_mb']:5.1f} MB, RSS {m['rss_mb']:5.1f} MB, "
              f"{runs[kind][0]['pids']} process(es)")
    two, sup = medians["two"], medians["processes2"]
    print(f"  --processes 2 / two workers: steady rate {sup['rate'] / two['rate']:.0%}, from the "
          f"first job {sup['rate_from_first'] / two['rate_from_first']:.0%}, PSS "
          f"{two['pss_mb'] - sup['pss_mb']:+.1f} MB saved "
          f"({(two['pss_mb'] - sup['pss_mb']) / two['pss_mb']:.0%})")
    print(f"  --processes 2 / one worker:  steady rate {sup['rate'] / medians['one']['rate']:.0%}")
    print(f"  load average (1 min) during the run: {', '.join(f'{x:.2f}' for x in load)}")
    if args.json:
        Path(args.json).write_text(json.dumps({"runs": runs, "medians": medians, "load": load,
                                               "machine": machine}, indent=2))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
