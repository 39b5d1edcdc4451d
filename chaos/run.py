#!/usr/bin/env python
"""Run the chaos suite: ``python chaos/run.py [scenario ...] [--quick]``.

Scenarios (issue 7; names or numbers): 1 kill9, 2 term, 3 redis-restart, 4 client-kill,
5 pause (+ pause-edge: shorter TTLs; stall: a worker process SIGSTOPped past its TTL), 6 poison,
7 redis-down, memory, peers-kill (the peer benchmark's kill -9 protocol). Without names, all.
Each starts its own ``redis-server`` processes on free ports and its own workers, so it needs
only ``redis-server`` on the PATH; logs stay in the printed work directory. Not run in CI.
"""

from __future__ import annotations

import argparse
import os
import platform
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))  # `python chaos/run.py` puts chaos/, not the root, on the path


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("scenarios", nargs="*", help="names or numbers (default: all)")
    parser.add_argument("--quick", action="store_true", help="shorter runs (minutes, not tens)")
    parser.add_argument("--workdir", help="where servers and logs go (default: a temp dir)")
    opts = parser.parse_args(argv)
    workdir = Path(opts.workdir or tempfile.mkdtemp(prefix="kiq-chaos-"))
    workdir.mkdir(parents=True, exist_ok=True)
    _setup_django(workdir)

    from chaos.cluster_failover import cluster_failover
    from chaos.outage import memory, redis_down
    from chaos.scenarios import ALIASES, SCENARIOS, say

    registry = {**SCENARIOS, "redis-down": redis_down, "memory": memory,
                "cluster-failover": cluster_failover}
    order = ["kill9", "term", "redis-restart", "client-kill", "pause", "pause-edge", "stall",
             "poison", "redis-down", "memory", "peers-kill", "cluster-failover"]
    names = [ALIASES.get(n, n) for n in opts.scenarios] or order
    unknown = [n for n in names if n not in registry]
    if unknown:
        parser.error(f"unknown scenario(s) {unknown}; choose from {order} or 1-7")
    say(f"chaos suite{' (quick)' if opts.quick else ''}: {', '.join(names)}; work dir {workdir}")
    verdicts = []
    for name in names:
        say(f"== {name}")
        begin = time.monotonic()
        for verdict in registry[name](workdir, opts.quick):
            verdicts.append(verdict)
            say(f"  {'PASS' if verdict.ok else 'FAIL'} in {time.monotonic() - begin:.0f}s: "
                + "; ".join(verdict.notes))
    print(table(verdicts))
    print(machine())
    return 0 if all(v.ok for v in verdicts) else 1


def _setup_django(workdir: Path) -> None:
    os.environ.setdefault("DJANGO_SETTINGS_MODULE", "testproject.settings")
    os.environ["KIQ_DEMO_DB"] = str(workdir / "driver.sqlite3")  # scenario 7 opens transactions
    os.environ.setdefault("KIQ_LOG_LEVEL", "CRITICAL")  # the driver's expected enqueue errors
    import django

    django.setup()
    import chaos.jobs  # noqa: F401 - registers the jobs the driver enqueues


def table(verdicts) -> str:
    head = ("| scenario | settings | enqueued | completed | lost | duplicates | dead | drain s "
            "| verdict |\n|---|---|---:|---:|---:|---:|---:|---:|---|")
    rows = []
    for v in verdicts:
        drain = "-" if v.drain_s is None else f"{v.drain_s:.1f}"
        rows.append(f"| {v.scenario} | {v.settings} | {v.enqueued:,} | {v.completed:,} | "
                    f"{v.lost} | {v.duplicates} | {v.dead} | {drain} | "
                    f"{'PASS' if v.ok else 'FAIL'} |")
    notes = [f"- {v.scenario} ({v.settings}): expected {v.expectation}. " + "; ".join(v.notes)
             for v in verdicts]
    return "\n" + head + "\n" + "\n".join(rows) + "\n\n" + "\n".join(notes) + "\n"


def machine() -> str:
    import django
    import redis

    server = os.popen("redis-server --version").read().split()
    version = next((p.split("=")[1] for p in server if p.startswith("v=")), "?")
    when = time.strftime("%Y-%m-%d %H:%M UTC", time.gmtime())
    return (f"Machine: {platform.platform()}, {os.cpu_count()} CPU(s), Python "
            f"{platform.python_version()}, Django {django.get_version()}, redis-py "
            f"{redis.__version__}, redis-server {version}; {when}")


if __name__ == "__main__":
    sys.exit(main())
