"""``--peers``: scenarios 1-3 for Sidekiq and the Python peers, on the benchmark's own Redis.

Two halves in one file:

- imported by ``bench/run.py`` (the project's virtualenv): :func:`run` finds the shared peers
  harness (``../shared/bench/peers`` beside the repository, or ``$KIQ_PEERS_DIR``), makes sure
  its virtualenv exists (``$PB_HOME``, default ``/tmp/kiq-peerbench``, built by the harness's own
  ``setup.sh`` with the pinned versions: the peers never enter the project's dependencies), then
  runs this file as a script with that virtualenv's Python and reads back its rows.
- run as a script there (the driver): loads the harness's ``bench.py`` and calls its
  ``test_enqueue``/``test_process`` (fill the queue, start the peer's worker under
  ``/usr/bin/time -v``, poll ``pb:done``, sample the worker tree's RSS), after adding the
  concurrency-50 configurations and a Sidekiq adapter (``bench/sidekiq_jobs.rb``).

The harness FLUSHDBs db 0 of the Redis it is given before and after every run, which is why
``--peers`` only runs against the private Redis ``run.py`` starts.
"""

from __future__ import annotations

import argparse
import contextlib
import importlib.util
import io
import json
import os
import shutil
import subprocess
import tempfile
from pathlib import Path

HERE = Path(__file__).resolve().parent
PB_HOME = Path(os.environ.get("PB_HOME", "/tmp/kiq-peerbench"))
SIDEKIQ_RB = HERE / "sidekiq_jobs.rb"
ORDER = ("sidekiq", "dramatiq", "huey", "celery", "rq")
# (configuration in the harness, jobs full run, jobs --quick); None: not run.
NOOP = {"sidekiq": ("c10", 20_000, 2_000), "dramatiq": ("p1t8", 20_000, 2_000),
        "huey": ("w1thread", 20_000, 2_000), "celery": ("prefork2", 10_000, 1_000),
        "rq": ("simple", 3_000, 300)}
IO = {10: {"sidekiq": "c10", "dramatiq": "p1t10", "huey": "w10thread", "celery": "threads10",
           "rq": "pool10-simple"},
      50: {"sidekiq": "c50", "dramatiq": "p1t50", "huey": "w50thread", "celery": "threads50"}}


# -- the run.py side ---------------------------------------------------------------------------

def shared_dir() -> Path:
    root = HERE.parent
    path = Path(os.environ.get("KIQ_PEERS_DIR") or root.parent / "shared" / "bench" / "peers")
    if not (path / "bench.py").exists() or not (path / "setup.sh").exists():
        raise SystemExit(
            f"--peers needs the shared peers harness at {path} (bench.py, setup.sh, apps/); "
            "it lives beside the repository as ../shared/bench/peers, or set KIQ_PEERS_DIR")
    return path


def ensure_venv(peers: Path, port: int) -> Path:
    python = PB_HOME / "venv" / "bin" / "python"
    probe = [str(python), "-c", "import rq, celery, dramatiq, huey, redis"]
    if python.exists() and subprocess.run(probe, capture_output=True).returncode == 0:
        return python
    print(f"setting up the peers' virtualenv in {PB_HOME} (pip, a few minutes)...", flush=True)
    # PB_REDIS_PORT points at our running Redis, so setup.sh starts no server of its own.
    subprocess.run(["bash", str(peers / "setup.sh")], check=True,
                   env={**os.environ, "PB_HOME": str(PB_HOME), "PB_REDIS_PORT": str(port)})
    return python


def run(ctx, port: int, scenario: str) -> list[str]:
    """Run the driver for one scenario (enqueue, noop or io); add its rows to ``ctx``.

    Returns the errors the driver reported (a peer that failed is skipped, not fatal).
    """
    from bench.scenarios import Result

    peers = shared_dir()
    python = ensure_venv(peers, port)
    with tempfile.NamedTemporaryFile(suffix=".json", delete=False) as out:
        out_path = Path(out.name)
    argv = [str(python), str(Path(__file__)), "--port", str(port), "--out", str(out_path),
            "--only", scenario, "--reps", str(ctx.reps)] + (["--quick"] if ctx.quick else [])
    env = {k: v for k, v in os.environ.items()  # nothing of our Django project leaks in
           if not k.startswith(("KIQ_", "DJANGO_"))}
    env.update(KIQ_PEERS_DIR=str(peers), PB_HOME=str(PB_HOME))
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

def load_harness(peers: Path, port: int, results: Path):
    os.environ.update(PB_REDIS_PORT=str(port), PB_RESULTS=str(results),
                      REDIS_URL=f"redis://127.0.0.1:{port}/0")
    spec = importlib.util.spec_from_file_location("peer_bench", peers / "bench.py")
    harness = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(harness)
    extend(harness, peers)
    return harness


def extend(harness, peers: Path) -> None:
    """Concurrency-50 configurations for the I/O test, and Sidekiq as one more adapter."""
    adapters = harness.ADAPTERS
    adapters["dramatiq"].configs["p1t50"] = dict(
        argv=adapters["dramatiq"].D + ["--processes", "1", "--threads", "50"],
        desc="dramatiq --processes 1 --threads 50")
    adapters["huey"].configs["w50thread"] = dict(
        argv=adapters["huey"].H + ["-w", "50", "-k", "thread"], desc="huey_consumer -w 50 -k thread")
    adapters["celery"].configs["threads50"] = dict(
        argv=adapters["celery"].C + ["--pool", "threads", "-c", "50"],
        desc="celery worker --pool threads -c 50")
    if shutil.which("sidekiq") and shutil.which("ruby"):
        adapters["sidekiq"] = sidekiq_adapter(harness, peers)


def sidekiq_adapter(harness, peers: Path):
    env = {"KIQ_PEERS_DIR": str(peers)}

    class Sidekiq(harness.Adapter):
        name, pkg = "sidekiq", "sidekiq"
        bulk_label = "Sidekiq::Client.push_bulk, 1,000 jobs per call"
        configs = {f"c{c}": dict(argv=["sidekiq", "-r", str(SIDEKIQ_RB), "-c", str(c), "-q",
                                       "default"], env=env,
                                 desc=f"sidekiq -c {c} (one process{', default' if c == 10 else ''})")
                   for c in (10, 50)}

        def version(self) -> str:
            return subprocess.run(["ruby", "-e", 'require "sidekiq"; print Sidekiq::VERSION'],
                                  capture_output=True, text=True).stdout.strip() or "?"

        def fill(self, task, n):
            subprocess.run(["ruby", str(SIDEKIQ_RB), "fill", task, str(n)], check=True,
                           env={**os.environ, **env})

        def enqueue_rates(self, n: int) -> dict:
            proc = subprocess.run(["ruby", str(SIDEKIQ_RB), "enqueue", str(n)], check=True,
                                  capture_output=True, text=True, env={**os.environ, **env})
            return json.loads(proc.stdout.strip().splitlines()[-1])

    return Sidekiq()


def median(values: list[float]) -> float:
    return sorted(values)[len(values) // 2]


class Driver:
    def __init__(self, harness, results: Path, quick: bool, reps: int):
        self.h = harness
        self.results = results
        self.quick = quick
        self.reps = reps
        self.seen = 0
        self.rows: list[dict] = []
        self.raw: list[dict] = []
        self.errors: list[str] = []
        self.versions: dict[str, str] = {}
        self.notes: list[str] = []

    def new_records(self) -> list[dict]:
        lines = self.results.read_text().splitlines() if self.results.exists() else []
        fresh, self.seen = lines[self.seen:], len(lines)
        records = [json.loads(line) for line in fresh]
        self.raw.extend(records)
        return records

    def row(self, scenario: str, system: str, value: float, unit: str, note: str,
            higher_is_better: bool = True) -> None:
        self.rows.append(dict(scenario=scenario, system=system, value=value, unit=unit,
                              note=note, higher_is_better=higher_is_better))

    def label(self, fw: str) -> str:
        if fw not in self.versions:
            self.versions[fw] = self.h.ADAPTERS[fw].version()
        return f"{fw} {self.versions[fw]}"

    def enqueue(self, fw: str) -> None:
        n = 1_000 if self.quick else 10_000
        adapter = self.h.ADAPTERS[fw]
        how = f"median of {self.reps}" if self.reps > 1 else "1 run"
        if fw == "sidekiq":  # timed inside Ruby: no interpreter start-up in the number
            runs = []
            for _ in range(self.reps):
                self.h.flush()
                runs.append(adapter.enqueue_rates(n))
            self.h.flush()
            self.raw.extend({"test": "enqueue", "fw": fw, **r} for r in runs)
            self.row("1 enqueue: single", self.label(fw), median([r["single"] for r in runs]),
                     "jobs/s", f"NoopJob.perform_async loop, n={n:,}, {how}")
            self.row("1 enqueue: bulk", self.label(fw), median([r["bulk"] for r in runs]),
                     "jobs/s", f"{adapter.bulk_label}, n={n:,}, {how}")
            return
        self.h.test_enqueue(fw, n, self.reps)
        by_method: dict[str, list[float]] = {}
        for rec in self.new_records():
            by_method.setdefault(rec["method"], []).append(rec["rate"])
        labels = {"single": ("1 enqueue: single", "single call loop"),
                  "bulk": ("1 enqueue: bulk", adapter.bulk_label),
                  "bulk2": ("1 enqueue: bulk", "apply_async loop sharing one producer")}
        for method, rates in by_method.items():
            scenario, what = labels[method]
            self.row(scenario, self.label(fw), median(rates), "jobs/s", f"{what}, n={n:,}, {how}")

    def process(self, fw: str, config: str, task: str, n: int, scenario: str,
                ideal: float | None = None) -> None:
        adapter = self.h.ADAPTERS[fw]
        expected = 200 if fw == "rq" else 400
        self.h.test_process(fw, config, task, n, self.reps, 60 + n / expected)
        records = self.new_records()
        good = [r for r in records if r.get("rate_steady")]
        self.errors.extend(f"{fw} {config} {task}: {r.get('error', 'no rate')}"
                           for r in records if not r.get("rate_steady"))
        if not good:
            return
        rate = median([r["rate_steady"] for r in good])
        how = f"median of {len(good)}" if len(good) > 1 else "1 run"
        note = f"{adapter.configs[config]['desc']}, n={n:,}, {how}"
        if ideal:
            note += f"; efficiency {rate / ideal:.1%}"
        self.row(scenario, self.label(fw), rate, "jobs/s", note)
        if task == "noop":
            self.row("2 worker RSS: peak while draining", self.label(fw),
                     max(r["peak_tree_rss_kb"] for r in good) / 1024, "MB",
                     f"whole worker tree; {note}", higher_is_better=False)

    def run(self, scenarios: list[str]) -> None:
        fws = [fw for fw in ORDER if fw in self.h.ADAPTERS]
        if "sidekiq" not in fws:
            self.notes.append("sidekiq not run: `sidekiq`/`ruby` not found "
                              "(apt-get install ruby-sidekiq)")
        steps = []
        for fw in fws:
            if "enqueue" in scenarios:
                steps.append((fw, "enqueue", lambda fw=fw: self.enqueue(fw)))
            if "noop" in scenarios and fw in NOOP:
                config, full, quick = NOOP[fw]
                steps.append((fw, "noop", lambda fw=fw, c=config, n=(quick if self.quick else full):
                              self.process(fw, c, "noop", n, "2 no-op processing")))
            if "io" in scenarios:
                for conc, configs in IO.items():
                    if fw in configs:
                        n = 500 if self.quick else 5_000
                        steps.append((fw, f"io-c{conc}", lambda fw=fw, c=configs[fw], n=n, k=conc:
                                      self.process(fw, c, "sleep10", n,
                                                   f"3 sleep 10 ms @ -c {k}", ideal=k / 0.010)))
        for fw, what, step in steps:
            print(f"  peers: {fw} {what}", flush=True)
            try:
                with contextlib.redirect_stdout(io.StringIO()):  # the harness prints each record
                    step()
            except Exception as exc:  # noqa: BLE001 - one peer failing must not hide the rest
                self.errors.append(f"{fw} {what}: {type(exc).__name__}: {exc}")
                self.h.flush()


def main() -> None:
    parser = argparse.ArgumentParser(description="peers driver (run by bench/run.py --peers)")
    parser.add_argument("--port", type=int, required=True)
    parser.add_argument("--out", required=True)
    parser.add_argument("--only", default="enqueue,noop,io")
    parser.add_argument("--quick", action="store_true")
    parser.add_argument("--reps", type=int, default=1)
    args = parser.parse_args()
    peers = Path(os.environ["KIQ_PEERS_DIR"])
    with tempfile.TemporaryDirectory(prefix="kiq-peers-") as tmp:
        results = Path(tmp) / "results.jsonl"
        harness = load_harness(peers, args.port, results)
        driver = Driver(harness, results, args.quick, args.reps)
        try:
            driver.run(args.only.split(","))
        finally:
            versions = {fw: driver.label(fw) for fw in ORDER if fw in harness.ADAPTERS}
            Path(args.out).write_text(json.dumps({"rows": driver.rows, "raw": driver.raw,
                                                  "errors": driver.errors, "notes": driver.notes,
                                                  "versions": versions}))


if __name__ == "__main__":
    main()
