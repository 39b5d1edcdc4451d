"""``--peers``: scenarios 1-3 for Sidekiq and the Python peers, on the benchmark's own Redis.

Everything it needs is in the repository (``bench/peer_harness.py``, ``bench/peer_apps/``,
``bench/sidekiq_jobs.rb``, ``bench/plot.py``). Two halves in one file:

- imported by ``bench/run.py`` (the project's virtualenv): :func:`run` makes sure the peers'
  virtualenv exists (``$KIQ_PEERS_HOME``, default ``<tmp>/kiq-peerbench-<python version>``:
  ``python3 -m venv`` and pip with the pinned versions in :data:`PINNED`, plus matplotlib for the
  plot; the peers never enter the project's dependencies), then runs this file as a script with
  that virtualenv's Python and reads back its rows.
- run as a script there (the driver): calls ``peer_harness.test_enqueue``/``test_process`` for
  each peer, ``--reps`` times, and writes rows with the median, every repetition and the load.

Sidekiq comes from Debian's ``ruby-sidekiq`` (6.4.1); without ``sidekiq``/``ruby`` it is skipped
with a note. The harness FLUSHDBs db 0 of the Redis it is given, which is why ``--peers`` only
runs against the private Redis ``run.py`` starts.
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import statistics
import subprocess
import sys
import tempfile
from pathlib import Path

HERE = Path(__file__).resolve().parent
PINNED = ("rq==3.0.0", "celery[redis]==5.7.0", "dramatiq[redis]==2.2.1", "huey==3.5.4",
          "redis==8.1.0", "hiredis==3.5.0", "matplotlib==3.10.7")
ORDER = ("sidekiq", "dramatiq", "huey", "celery", "rq")
# (configuration in peer_harness, jobs full run, jobs --quick)
NOOP = {"sidekiq": ("c10", 20_000, 2_000), "dramatiq": ("p1t8", 20_000, 2_000),
        "huey": ("w1thread", 20_000, 2_000), "celery": ("prefork2", 10_000, 1_000),
        "rq": ("simple", 3_000, 300)}
IO = {10: {"sidekiq": "c10", "dramatiq": "p1t10", "huey": "w10thread", "celery": "threads10",
           "rq": "pool10-simple"},
      50: {"sidekiq": "c50", "dramatiq": "p1t50", "huey": "w50thread", "celery": "threads50"}}


# -- the run.py side ---------------------------------------------------------------------------

def home() -> Path:
    default = Path(tempfile.gettempdir()) / f"kiq-peerbench-py{sys.version_info[0]}"
    return Path(os.environ.get("KIQ_PEERS_HOME") or default)


def ensure_venv() -> Path:
    """The peers' virtualenv's Python, created and filled with :data:`PINNED` on first use."""
    venv = home() / "venv"
    python = venv / "bin" / "python"
    stamp = venv / "kiq-pinned.txt"
    wanted = "\n".join(PINNED)
    if python.exists() and stamp.exists() and stamp.read_text() == wanted:
        return python
    base = shutil.which("python3") or sys.executable
    print(f"setting up the peers' virtualenv in {venv} (pip, a few minutes)...", flush=True)
    subprocess.run([base, "-m", "venv", str(venv)], check=True)
    subprocess.run([str(python), "-m", "pip", "install", "-q", *PINNED], check=True)
    stamp.write_text(wanted)
    return python


def run(ctx, port: int, scenario: str, log_level: str = "WARNING", systems: str = "") -> list[str]:
    """Run the driver for one scenario (enqueue, noop or io); add its rows to ``ctx``.

    Returns the errors the driver reported (a peer that failed is skipped, not fatal).
    """
    from bench.scenarios import Result

    python = ensure_venv()
    with tempfile.NamedTemporaryFile(suffix=".json", delete=False) as out:
        out_path = Path(out.name)
    argv = [str(python), str(Path(__file__)), "--out", str(out_path), "--logdir", str(ctx.logdir),
            "--only", scenario, "--reps", str(ctx.reps), "--systems", systems or ",".join(ORDER)]
    argv += ["--quick"] if ctx.quick else []
    env = {k: v for k, v in os.environ.items()  # nothing of our Django project leaks in
           if not k.startswith(("KIQ_", "DJANGO_", "PYTHON"))}
    env.update(PB_REDIS_PORT=str(port), PB_LOG_LEVEL=log_level,
               REDIS_URL=f"redis://127.0.0.1:{port}/0")
    proc = subprocess.run(argv, env=env)
    data = json.loads(out_path.read_text()) if out_path.stat().st_size else {}
    out_path.unlink(missing_ok=True)
    for row in data.get("rows", []):
        ctx.results.append(Result(**row))
    errors = data.get("errors", []) + ([f"driver exited with {proc.returncode}"]
                                       if proc.returncode else [])
    for note in data.get("notes", []):
        print(f"  peers: {note}")
    details = ctx.details.setdefault("peers", {"raw": [], "errors": [], "versions": {}})
    details["raw"].extend(data.get("raw", []))
    details["errors"].extend(errors)
    details["versions"].update(data.get("versions", {}))
    return errors


# -- the driver (runs in the peers' virtualenv) -------------------------------------------------

class Driver:
    def __init__(self, harness, logdir: Path, quick: bool, reps: int):
        self.h = harness
        self.logdir = logdir
        self.quick = quick
        self.reps = reps
        self.level = harness.LOG_LEVEL
        self.rows: list[dict] = []
        self.raw: list[dict] = []
        self.errors: list[str] = []
        self.versions: dict[str, str] = {}
        self.notes: list[str] = []

    def row(self, scenario: str, fw: str, runs: list[float], unit: str, note: str,
            loads: list[float], higher_is_better: bool = True) -> None:
        how = f"median of {len(runs)}" if len(runs) > 1 else "1 run"
        self.rows.append(dict(scenario=scenario, system=self.label(fw),
                              value=statistics.median(runs), unit=unit, note=f"{note}, {how}",
                              higher_is_better=higher_is_better, runs=[round(r, 2) for r in runs],
                              load=round(max(loads), 2) if loads else None))

    def label(self, fw: str) -> str:
        if fw not in self.versions:
            self.versions[fw] = self.h.ADAPTERS[fw].version()
        return f"{fw} {self.versions[fw]}"

    def enqueue(self, fw: str) -> None:
        n = 1_000 if self.quick else 10_000
        adapter = self.h.ADAPTERS[fw]
        runs = []
        for _ in range(self.reps):
            if fw == "sidekiq":  # timed inside Ruby: no interpreter start-up in the number
                self.h.flush()
                rates = adapter.enqueue_rates(n)
                runs += [dict(method=m, rate=rates[m], load1=os.getloadavg()[0])
                         for m in ("single", "bulk")]
            else:
                runs += self.h.test_enqueue(fw, n)
        self.h.flush()
        self.raw.extend({"test": "enqueue", "fw": fw, **r} for r in runs)
        for method, scenario, what in (
                ("single", "1 enqueue: single", "single call loop"),
                ("bulk", "1 enqueue: bulk", adapter.bulk_label)):
            picked = [r for r in runs if r["method"] == method]
            self.row(scenario, fw, [r["rate"] for r in picked], "jobs/s", f"{what}, n={n:,}",
                     [r["load1"] for r in picked])

    def process(self, fw: str, config: str, task: str, n: int, scenario: str,
                ideal: float | None = None) -> None:
        expected = 200 if fw == "rq" else 400
        records = [self.h.test_process(fw, config, task, n, self.logdir, rep, 60 + n / expected)
                   for rep in range(self.reps)]
        self.raw.extend(records)
        good = [r for r in records if r.get("rate_steady")]
        self.errors.extend(f"{fw} {config} {task}: {r.get('error', 'no rate')}"
                           for r in records if not r.get("rate_steady"))
        if not good:
            return
        rates = [r["rate_steady"] for r in good]
        note = f"{good[0]['desc']}, n={n:,}"
        if task == "noop":
            note += f", {statistics.median(r['cpu_us_per_job'] for r in good):.1f} µs CPU/job"
        if ideal:
            note += f"; efficiency {statistics.median(rates) / ideal:.1%}"
        loads = [r["load1"] for r in good]
        self.row(scenario, fw, rates, "jobs/s", note, loads)
        if task == "noop":
            self.row(f"{scenario} CPU per job", fw, [r["cpu_us_per_job"] for r in good], "µs",
                     note.split(",")[0], loads, higher_is_better=False)
            if self.level == "WARNING":
                self.row("2 worker RSS: peak while draining", fw,
                         [r["peak_tree_rss_kb"] / 1024 for r in good], "MB",
                         f"whole worker tree; {good[0]['desc']}", loads, higher_is_better=False)

    def steps(self, scenarios: list[str]):
        for fw in [fw for fw in ORDER if fw in self.h.ADAPTERS]:
            if "enqueue" in scenarios:
                yield fw, "enqueue", lambda fw=fw: self.enqueue(fw)
            if "noop" in scenarios and fw in NOOP:
                config, full, quick = NOOP[fw]
                name = "2 no-op processing" + ("" if self.level == "WARNING"
                                               else f", {self.level} logging")
                yield fw, "noop", lambda fw=fw, c=config, n=(quick if self.quick else full), \
                    s=name: self.process(fw, c, "noop", n, s)
            if "io" in scenarios:
                for conc, configs in IO.items():
                    if fw in configs:
                        n = 500 if self.quick else 5_000
                        yield fw, f"io-c{conc}", lambda fw=fw, c=configs[fw], n=n, k=conc: \
                            self.process(fw, c, "sleep10", n, f"3 sleep 10 ms @ -c {k}",
                                         ideal=k / 0.010)

    def run(self, scenarios: list[str]) -> None:
        if not (shutil.which("sidekiq") and shutil.which("ruby")):
            self.h.ADAPTERS.pop("sidekiq", None)
            self.notes.append("sidekiq not run: `sidekiq`/`ruby` not found "
                              "(apt-get install ruby-sidekiq)")
        for fw, what, step in self.steps(scenarios):
            print(f"  peers: {fw} {what} ({self.level})", flush=True)
            try:
                step()
            except Exception as exc:  # noqa: BLE001 - one peer failing must not hide the rest
                self.errors.append(f"{fw} {what}: {type(exc).__name__}: {exc}")
                self.h.flush()


def main() -> None:
    parser = argparse.ArgumentParser(description="peers driver (run by bench/run.py --peers)")
    parser.add_argument("--out", required=True)
    parser.add_argument("--logdir", required=True, type=Path)
    parser.add_argument("--only", default="enqueue,noop,io")
    parser.add_argument("--quick", action="store_true")
    parser.add_argument("--reps", type=int, default=1)
    parser.add_argument("--systems", default=",".join(ORDER))
    args = parser.parse_args()
    sys.path.insert(0, str(HERE))
    import peer_harness as harness

    for name in set(harness.ADAPTERS) - set(args.systems.split(",")):
        del harness.ADAPTERS[name]
    driver = Driver(harness, args.logdir, args.quick, args.reps)
    try:
        driver.run(args.only.split(","))
    finally:
        versions = {fw: driver.label(fw) for fw in ORDER if fw in harness.ADAPTERS}
        Path(args.out).write_text(json.dumps({"rows": driver.rows, "raw": driver.raw,
                                              "errors": driver.errors, "notes": driver.notes,
                                              "versions": versions}))


if __name__ == "__main__":
    main()
