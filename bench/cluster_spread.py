"""How evenly a Redis Cluster's masters share the work (docs/scaling.md "Redis Cluster").

    .venv/bin/python -m bench.cluster_spread [--jobs 30000] [--workers 2] [-c 10]

Starts a local cluster of its own (6 ``redis-server`` nodes, 3 masters with a replica each:
tests/redis_cluster.py), enqueues N no-op jobs spread evenly over the queues "default",
"critical" and "low" (whose hash tags land on the three masters), drains them with W
``kiq_worker`` subprocesses, and reads ``INFO commandstats`` of each master, reset before the
run: the share of the run's commands each master served (enqueue, fetch, acknowledgement, the
heartbeats, the poller...). The goal: none above 45% (one Redis would serve 100%). Stops every
process it started by PID.
"""

from __future__ import annotations

import argparse
import os
import signal
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
QUEUES = ("default", "critical", "low")


def measure(cluster, *, jobs: int, workers: int = 2, concurrency: int = 10,
            timeout: float = 120.0) -> dict:
    """Enqueue and drain ``jobs`` jobs on ``cluster`` (the default storage must point at it);
    returns {"commands": {port: calls}, "share": {port: fraction}, "seconds": drain time}."""
    from django_kiq import storage
    from tests import cluster_jobs

    store = storage.get_default()
    cluster.flush()
    cluster.reset_commandstats()
    started = time.monotonic()
    per_queue = jobs // len(QUEUES)
    for job_fn in (cluster_jobs.nothing, cluster_jobs.nothing_critical, cluster_jobs.nothing_low):
        job_fn.enqueue_many([(i,) for i in range(per_queue)])
    env = {**os.environ, "KIQ_REDIS_CLUSTER_URL": cluster.url,
           "KIQ_IMPORTS": "tests.cluster_jobs", "DJANGO_SETTINGS_MODULE": "testproject.settings",
           "KIQ_LOG_LEVEL": "WARNING"}
    args = [sys.executable, str(ROOT / "manage.py"), "kiq_worker", "-c", str(concurrency),
            *(a for q in QUEUES for a in ("-q", q))]
    procs = [subprocess.Popen(args, cwd=ROOT, env=env, stdout=subprocess.DEVNULL,
                              stderr=subprocess.DEVNULL) for _ in range(workers)]
    try:
        deadline = time.monotonic() + timeout
        while any(store.queue_size(q) for q in QUEUES) or store.in_progress():
            if time.monotonic() > deadline:
                raise TimeoutError("the workers did not drain the queues")
            time.sleep(0.1)
        seconds = time.monotonic() - started
    finally:
        for proc in procs:
            proc.send_signal(signal.SIGTERM)
        for proc in procs:
            try:
                proc.wait(timeout=30)
            except subprocess.TimeoutExpired:
                proc.kill()
                proc.wait(timeout=10)
    commands = cluster.commandstats()
    total = sum(commands.values())
    return {"commands": commands, "share": {p: n / total for p, n in commands.items()},
            "seconds": seconds}


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--jobs", type=int, default=30_000)
    parser.add_argument("--workers", type=int, default=2)
    parser.add_argument("-c", "--concurrency", type=int, default=10)
    opts = parser.parse_args()
    sys.path.insert(0, str(ROOT))
    from tests.redis_cluster import available, local_cluster

    if available() is not None:
        raise SystemExit(available())
    with tempfile.TemporaryDirectory() as tmp, local_cluster(Path(tmp)) as cluster:
        os.environ.update(KIQ_REDIS_CLUSTER_URL=cluster.url,
                          DJANGO_SETTINGS_MODULE="testproject.settings",
                          KIQ_IMPORTS="tests.cluster_jobs")
        import django

        django.setup()
        from django_kiq.storage.keys import ClusterKeys

        where = {q: cluster.master_of(ClusterKeys().queue(q)) for q in QUEUES}
        global_master = cluster.master_of(ClusterKeys().schedule)
        result = measure(cluster, jobs=opts.jobs, workers=opts.workers,
                         concurrency=opts.concurrency)
        print(f"{opts.jobs:,} jobs over {', '.join(QUEUES)}; {opts.workers} workers x "
              f"{opts.concurrency} threads; enqueue + drain {result['seconds']:.1f} s "
              f"({opts.jobs / result['seconds']:,.0f} jobs/s)")
        for port, calls in sorted(result["commands"].items()):
            queues = [q for q, p in where.items() if p == port]
            extra = " + global keys" if port == global_master else ""
            print(f"  master :{port} ({', '.join(queues) or '-'}{extra}): {calls:,} commands, "
                  f"{100 * result['share'][port]:.1f}%")
        print(f"largest share: {100 * max(result['share'].values()):.1f}% (goal <= 45%)")


if __name__ == "__main__":
    main()
