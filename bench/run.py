#!/usr/bin/env python
"""django-kiq's benchmark suite: one entry point, a table, and JSON. See docs/performance.md.

    .venv/bin/python bench/run.py [--quick] [--json out.json] [--redis URL] [--peers]
                                  [--only enqueue,noop,io,latency,scheduled,api] [--profile DIR]

Starts its own ``redis-server`` on a free port (``--save '' --appendonly no``) unless ``--redis``
names an empty database, runs the scenarios (bench/scenarios.py) against ``manage.py kiq_worker``
subprocesses of the demo project, optionally the peers (bench/peers.py), prints the results with
the machine they ran on and the issue-6 targets, and stops everything it started.
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import signal
import subprocess
import sys
import tempfile
import time
import traceback
from dataclasses import asdict
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
if str(ROOT) not in sys.path:
    sys.path.insert(0, str(ROOT))

from bench import infra  # noqa: E402
from bench.targets import print_targets, targets  # noqa: E402

ORDER = ("enqueue", "noop", "io", "latency", "scheduled", "api")
PEER_SCENARIOS = ("enqueue", "noop", "io")
KIQ = "django-kiq"


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true",
                        help="small sizes (a smoke run, under ~2 minutes without --peers)")
    parser.add_argument("--json", metavar="PATH", help="also write every result and detail here")
    parser.add_argument("--redis", metavar="URL",
                        help="use this EMPTY database instead of starting a redis-server")
    parser.add_argument("--peers", action="store_true",
                        help="also run scenarios 1-3 for Sidekiq, Dramatiq, Huey, Celery and RQ")
    parser.add_argument("--only", metavar="NAMES", default=",".join(ORDER),
                        help=f"comma-separated subset of: {', '.join(ORDER)}")
    parser.add_argument("--noop-n", metavar="N", type=int,
                        help="jobs in the no-op drain (default 100,000; --quick 10,000); "
                             "1000000 is the leak check of issue 6")
    parser.add_argument("--reps", type=int, default=1,
                        help="run each drain (no-op, I/O; ours and the peers') N times and report "
                             "the median; 3 for published numbers")
    parser.add_argument("--profile", metavar="DIR", type=Path,
                        help="also profile a no-op drain with py-spy; raw stacks go to DIR")
    parser.add_argument("--log-levels", metavar="LEVELS", default="WARNING",
                        help="the no-op drain (ours and the peers') at each of these log levels, "
                             "e.g. WARNING,INFO (default WARNING)")
    parser.add_argument("--peer-systems", metavar="NAMES", default="",
                        help="with --peers: only these (e.g. sidekiq,dramatiq); default all")
    parser.add_argument("--plot", metavar="PNG", type=Path,
                        help="draw throughput per system (matplotlib, in the peers' virtualenv)")
    args = parser.parse_args(argv)
    args.only = [name.strip() for name in args.only.split(",") if name.strip()]
    args.log_levels = tuple(x.strip().upper() for x in args.log_levels.split(",") if x.strip())
    if set(args.log_levels) - {"WARNING", "INFO", "DEBUG"}:
        parser.error("--log-levels: WARNING, INFO or DEBUG")
    unknown = set(args.only) - set(ORDER)
    if unknown:
        parser.error(f"unknown scenario(s) {sorted(unknown)}; choose from {', '.join(ORDER)}")
    if args.peers and args.redis:
        parser.error("--peers runs on the Redis this script starts: the peers' harness FLUSHDBs "
                     "db 0 between runs, so it is not pointed at a --redis of yours")
    return args


def setup_django(url: str, workdir: Path) -> None:
    os.environ.update(DJANGO_SETTINGS_MODULE="testproject.settings", KIQ_REDIS_URL=url,
                      KIQ_LOG_LEVEL="WARNING", KIQ_DEMO_DB=str(workdir / "bench.sqlite3"),
                      DJANGO_DEBUG="0")  # admin pages are timed as in production
    import django

    django.setup()


# -- output -------------------------------------------------------------------------------------

def fmt(value: float, unit: str) -> str:
    if unit == "jobs/s":
        return f"{value:,.0f}"
    if unit == "ms":
        return f"{value:,.2f}" if value < 100 else f"{value:,.0f}"
    if unit == "s" and value < 1:
        return f"{value:.3f}"
    return f"{value:,.1f}" if unit == "MB" else f"{value:,.2f}"


def spread(row) -> str:
    """The lowest and highest of the repetitions behind a median, or nothing for one run."""
    if len(row.runs) < 2:
        return ""
    return f"{fmt(min(row.runs), row.unit)}-{fmt(max(row.runs), row.unit)}"


def advantage(row, rows) -> float | None:
    """How many times better django-kiq is than ``row`` in its scenario (>1: django-kiq wins)."""
    ours = next((r for r in rows if r.scenario == row.scenario and r.system == KIQ), None)
    if ours is None or not row.value or not ours.value:
        return None
    return ours.value / row.value if row.higher_is_better else row.value / ours.value


def table(rows) -> str:
    scenarios = sorted({r.scenario for r in rows}, key=lambda s: (s.split()[0], s))
    lines = [f"{'scenario':<50} {'system':<22} {'value':>12} {'unit':<7} {'kiq vs this':>11} "
             f"{'spread':>17} {'load':>5}  note", "-" * 150]
    for scenario in scenarios:
        group = [r for r in rows if r.scenario == scenario]
        group.sort(key=lambda r: (r.system != KIQ, -r.value if r.higher_is_better else r.value))
        for r in group:
            ratio = advantage(r, rows)
            shown = f"{ratio:.2f}x" if ratio is not None and r.system != KIQ else ""
            lines.append(f"{r.scenario:<50} {r.system:<22} {fmt(r.value, r.unit):>12} "
                         f"{r.unit:<7} {shown:>11} {spread(r):>17} "
                         f"{'' if r.load is None else f'{r.load:.1f}':>5}  {r.note}")
    return "\n".join(lines)


# -- main ---------------------------------------------------------------------------------------

def run_all(args: argparse.Namespace, target: infra.RedisTarget, workdir: Path,
            errors: list[str]):
    """Every selected scenario, then the peers; returns the filled context."""
    from bench import scenarios

    ctx = scenarios.Context(target=target, logdir=workdir, quick=args.quick,
                            profile_dir=args.profile, noop_n=args.noop_n, reps=args.reps,
                            log_levels=args.log_levels)
    for name in [n for n in ORDER if n in args.only]:
        started = time.monotonic()
        ctx.load.mark()
        print(f"- {name} ...", flush=True)
        try:
            scenarios.SCENARIOS[name](ctx)
        except Exception as exc:  # noqa: BLE001 - report and go on with the next scenario
            errors.append(f"{name}: {type(exc).__name__}: {exc}")
            traceback.print_exc()
        if args.peers and name in PEER_SCENARIOS:
            # Right after ours, so a change in the machine's load hits both sides alike.
            from bench import peers

            for level in (args.log_levels if name == "noop" else ("WARNING",)):
                target.reset()
                errors.extend(f"peers: {e}" for e in peers.run(ctx, target.port, name, level,
                                                                     args.peer_systems))
                target.client.set(infra.CLAIM_KEY, target.token)  # the harness FLUSHDBed it
        print(f"  {name} took {time.monotonic() - started:.1f}s", flush=True)
    return ctx


def report(args: argparse.Namespace, machine: dict, ctx, errors: list[str]) -> None:
    goals = targets(ctx.results, ctx.details, args.quick)
    print(f"\nmachine: {json.dumps(machine)}")
    print(table(ctx.results))
    print_targets(goals)
    noop = ctx.details.get("noop")
    if noop:
        print(f"\nno-op drain, Redis round trips per job (by thread): "
              f"{noop['round_trips_per_job']}")
        print(f"no-op drain, Redis commands per job (INFO commandstats, scripts' inner "
              f"commands included): {noop['commands_per_job']}")
    for name in ("profile", *(f"profile-{level}" for level in args.log_levels)):
        prof = ctx.details.get(name)
        if isinstance(prof, dict):
            print(f"\n{name} ({prof['samples']} samples, raw stacks {prof['raw']}):")
            for key in ("by_thread", "by_area_self", "top_self", "top_inclusive"):
                print(f"  {key}: " + "; ".join(f"{n} {p}%" for n, p in prof[key][:12]))
    for error in errors:
        print(f"ERROR {error}")
    load = [x for _, x in ctx.load.samples]
    if load:
        print(f"\nload average (1 min) during the run, sampled every second: min {min(load):.2f}, "
              f"median {sorted(load)[len(load) // 2]:.2f}, max {max(load):.2f} "
              f"on {machine['cores']} cores")
    machine["load_during_run"] = {"min": round(min(load, default=0), 2),
                                  "max": round(max(load, default=0), 2),
                                  "samples": [round(x, 2) for x in load]}
    if args.json or args.plot:
        json_path = Path(args.json or ctx.logdir / "results.json")
        json_path.write_text(json.dumps({
            "machine": machine, "args": {k: str(v) for k, v in vars(args).items()},
            "results": [asdict(r) for r in ctx.results], "targets": goals,
            "details": ctx.details, "errors": errors}, indent=1, default=str))
        if args.json:
            print(f"\nJSON written to {args.json}")
        if args.plot:
            plot(json_path, args.plot, errors)


def plot(json_path: Path, png: Path, errors: list[str]) -> None:
    """bench/plot.py in the peers' virtualenv (matplotlib stays out of the project's)."""
    from bench import peers

    proc = subprocess.run([str(peers.ensure_venv()), str(ROOT / "bench" / "plot.py"),
                           str(json_path), str(png)])
    if proc.returncode:
        errors.append(f"plot: bench/plot.py exited with {proc.returncode}")
    else:
        print(f"plot written to {png}")


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    signal.signal(signal.SIGTERM, lambda *_: sys.exit(143))  # run the finally blocks
    workdir = Path(tempfile.mkdtemp(prefix="kiq-bench-"))
    errors: list[str] = []
    target = None
    try:
        target = infra.RedisTarget(args.redis, workdir)
        setup_django(target.url, workdir)
        machine = infra.machine(target)
        print(f"django-kiq benchmark{' (quick)' if args.quick else ''} on {target.url}: "
              f"{machine['cores']} cores, {machine['cpu_model']}, Python {machine['python']}, "
              f"Redis {machine['redis_server']}, load {machine['load_at_start']}", flush=True)
        ctx = run_all(args, target, workdir, errors)
        machine["load_at_end"] = [round(x, 2) for x in os.getloadavg()]
        report(args, machine, ctx, errors)
    finally:
        infra.cleanup(keep=target.server if target else None)  # workers first
        if target is not None:
            target.close()
        infra.cleanup()
        if errors:
            print(f"worker logs kept in {workdir}")
        else:
            shutil.rmtree(workdir, ignore_errors=True)
    return 1 if errors else 0


if __name__ == "__main__":
    sys.exit(main())
