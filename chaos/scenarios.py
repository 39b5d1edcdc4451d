"""The scenarios of the chaos suite (issue 7), one function each, returning verdicts.

Runs on the chaos driver's main thread. Each scenario starts its own Redis under test and ledger
Redis (:func:`cluster`), points the driver's Django settings at them, starts supervised workers,
disturbs them, waits for the queues to drain and tallies the ledger. Timings follow the issue;
``quick`` shortens runs (and, where a recovery must wait for PROCESS_TTL, the TTL: the verdict's
settings column says so).
"""

from __future__ import annotations

import random
import re
import signal
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path

from .cluster import RedisServer, WorkerPool, worker_env
from .ledger import KiqState, Ledger, Producer, Verdict, drain, phantoms, tally

RECOVERED = re.compile(r"recovered (\d+) in-progress job\(s\) of dead process")
PUSHED_BACK = "job pushed back to the head of"


def say(message: str) -> None:
    print(message, flush=True)


@dataclass(slots=True)
class Cluster:
    kiq: RedisServer
    ledger_server: RedisServer
    pool: WorkerPool
    ledger: Ledger
    state: KiqState
    workdir: Path


@contextmanager
def cluster(name: str, workdir: Path, *, workers: int = 3, concurrency: int = 5,
            aof: bool = False, env: dict[str, str] | None = None, args: tuple[str, ...] = (),
            start: bool = True) -> Iterator[Cluster]:
    from django.conf import settings
    from django.test import override_settings

    base = workdir / name
    (base / "logs").mkdir(parents=True, exist_ok=True)
    kiq = RedisServer(base, "redis", aof_always=aof)
    led = RedisServer(base, "ledger")
    kiq.start()
    led.start()
    override = override_settings(KIQ={**settings.KIQ, "REDIS_URL": kiq.url})
    override.enable()
    pool = WorkerPool(workers, args=["-c", str(concurrency), *args], logdir=base / "logs",
                      env=worker_env(redis_url=kiq.url, ledger_url=led.url, extra=env))
    c = Cluster(kiq=kiq, ledger_server=led, pool=pool, ledger=Ledger(led.client()),
                state=KiqState(kiq.client()), workdir=base)
    try:
        if start:
            pool.start()
        yield c
    finally:
        pool.stop()
        override.disable()
        kiq.stop()
        led.stop()


def timings(ttl: float | None, heartbeat: float | None) -> tuple[dict[str, str], str]:
    """Worker env for a TTL/heartbeat and the label the table shows (defaults: 60 s / 10 s)."""
    if ttl is None:
        return {}, "TTL 60/HB 10 (defaults)"
    return ({"KIQ_PROCESS_TTL": str(ttl), "KIQ_HEARTBEAT_INTERVAL": str(heartbeat)},
            f"TTL {ttl:g}/HB {heartbeat:g}")


def monkey(pool: WorkerPool, sig: int, duration: float, rng: random.Random,
           every: tuple[float, float] = (2.0, 4.0)) -> int:
    """Every 2-4 s send ``sig`` to one random live worker, for ``duration``; returns how many."""
    end = time.monotonic() + duration
    sent = 0
    while True:
        wait = rng.uniform(*every)
        if time.monotonic() + wait > end:
            time.sleep(max(0.0, end - time.monotonic()))
            return sent
        time.sleep(wait)
        pool.signal_random(sig, rng)
        sent += 1


def finish(v: Verdict, c: Cluster, producer: Producer, drain_timeout: float) -> str:
    """Wait for the drain, tally the ledger, note producer errors; returns the workers' logs."""
    v.drain_s = drain(c.ledger, c.state, producer.accepted, timeout=drain_timeout, progress=say)
    tally(v, c.ledger, c.state, producer.accepted)
    if producer.refused:
        ran, partial = phantoms(c.ledger, producer.refused)
        v.notes.append(f"{sum(map(len, producer.refused))} enqueue(s) refused with EnqueueError "
                       f"({len(producer.refused)} batches); {ran} of them ran anyway "
                       f"(reply lost after the write); {partial} batch(es) half-written")
        if partial:
            v.ok = False
    if producer.errors:
        v.notes.append(f"producer saw non-EnqueueError exceptions: {producer.errors[:3]}")
    if v.drain_s is None:
        v.notes.append(f"did not drain within {drain_timeout:.0f}s; "
                       f"{c.state.pending()} job(s) still pending in Redis")
    return c.pool.logs()


# -- 1 and 2: workers killed / stopped -------------------------------------------------------

def kill9(workdir: Path, quick: bool) -> list[Verdict]:
    """1. SIGKILL a random worker of 3 every 2-4 s for 60 s while 10,000 jobs flow."""
    total, duration = (2_000, 20) if quick else (10_000, 60)
    env, label = timings(*((10, 2) if quick else (None, None)))
    v = Verdict(scenario="1 kill -9", settings=f"3 workers x 5 threads, {label}")
    rng = random.Random(11)
    with cluster("kill9", workdir, env=env) as c:
        producer = Producer(total=total, duration=duration * 0.9, rng=rng)
        producer.start()
        kills = monkey(c.pool, signal.SIGKILL, duration, rng)
        producer.join()
        say(f"  {kills} SIGKILLs sent; waiting for recovery and drain")
        ttl = float(env.get("KIQ_PROCESS_TTL", 60))
        logs = finish(v, c, producer, drain_timeout=2 * ttl + 120)
    recovered = sum(int(n) for n in RECOVERED.findall(logs))
    bound = kills * 5
    v.expectation = f"lost 0, dead 0, duplicates <= in flight at a kill (<= {kills} kills x 5)"
    v.ok = v.lost == 0 and v.dead == 0 and v.duplicates <= bound and v.drain_s is not None
    v.notes.append(f"{kills} kills; {recovered} in-progress job(s) recovered from dead "
                   "processes (fetched or running at a kill)")
    return [v]


def term(workdir: Path, quick: bool) -> list[Verdict]:
    """2. Like 1 with SIGTERM and ``--timeout 1``."""
    total, duration = (2_000, 20) if quick else (10_000, 60)
    v = Verdict(scenario="2 TERM, --timeout 1",
                settings="3 workers x 5 threads, TTL 60/HB 10 (defaults)")
    rng = random.Random(12)
    with cluster("term", workdir, args=("--timeout", "1")) as c:
        producer = Producer(total=total, duration=duration * 0.9, rng=rng)
        producer.start()
        stops = monkey(c.pool, signal.SIGTERM, duration, rng)
        producer.join()
        logs = finish(v, c, producer, drain_timeout=180)
        # A TERM that arrives while Django is still starting ends the process with -15: the
        # worker installs its handlers first thing in Launcher.run(), before it registers or
        # takes a job, so a -15 exit proves it held none. Harmless; counted apart.
        early = [w for w in c.pool.retired if w.proc.returncode == -signal.SIGTERM]
        codes = [w.proc.returncode for w in c.pool.retired if w not in early]
    cut_off = logs.count(PUSHED_BACK)
    stranded = logs.count("could not be given back")
    v.expectation = "lost 0, dead 0, duplicates <= jobs cut off by the 1 s timeout"
    v.ok = (v.lost == 0 and v.dead == 0 and v.duplicates <= cut_off and v.drain_s is not None
            and all(code == 0 for code in codes))
    v.notes.append(f"{stops} TERMs; exit codes of stopped workers: {sorted(set(codes))} "
                   f"({len(codes)} exits) + {len(early)} TERMed during start-up (-15, before "
                   f"taking any job); {cut_off} job(s) cut off by the timeout and pushed back; "
                   f"{stranded} 'could not be given back' line(s)")
    return [v]


# -- 3, 4, 5: Redis restarts, dropped connections, stalls ----------------------------------------

def redis_restart(workdir: Path, quick: bool) -> list[Verdict]:
    """3. Redis (AOF appendfsync always) killed and restarted three times during the run."""
    total, duration = (2_000, 20) if quick else (6_000, 40)
    v = Verdict(scenario="3 Redis restarted x3",
                settings="AOF always, SIGKILL + 1 s down; 3 workers x 5, defaults")
    with cluster("restart", workdir, aof=True) as c:
        producer = Producer(total=total, duration=duration * 0.9, rng=random.Random(13))
        producer.start()
        for _ in range(3):
            time.sleep(duration / 4)
            c.kiq.restart(down_for=1.0)
            say("  redis-server killed and restarted")
        time.sleep(duration / 4)
        producer.join()
        logs = finish(v, c, producer, drain_timeout=180)
        restarts = len(c.pool.retired)
    v.expectation = "lost 0, dead 0 (duplicates 0 expected: no heartbeat expires)"
    v.ok = v.lost == 0 and v.dead == 0 and v.drain_s is not None and restarts == 0
    v.notes.append(f"worker processes that exited: {restarts}; 'Redis is back' log lines: "
                   f"{logs.count('Redis is back')}; recovered lines: "
                   f"{len(RECOVERED.findall(logs))}")
    return [v]


def client_kill(workdir: Path, quick: bool) -> list[Verdict]:
    """4. ``CLIENT KILL TYPE normal`` every second for 30 s."""
    total, duration = (2_000, 15) if quick else (5_000, 30)
    v = Verdict(scenario="4 CLIENT KILL every 1 s", settings="3 workers x 5 threads, defaults")
    with cluster("clientkill", workdir) as c:
        admin = c.kiq.client()
        producer = Producer(total=total, duration=duration * 0.9, rng=random.Random(14))
        producer.start()
        killed = 0
        end = time.monotonic() + duration
        while time.monotonic() < end:
            time.sleep(1.0)
            killed += admin.client_kill_filter(_type="normal", skipme=True)
        producer.join()
        logs = finish(v, c, producer, drain_timeout=180)
        exits = len(c.pool.retired)
    reconciled = len(re.findall(r"reconciled \d+ job", logs))
    outages = logs.count("Redis unavailable")
    v.expectation = "lost 0, duplicates 0, dead 0"
    v.ok = (v.lost == 0 and v.duplicates == 0 and v.dead == 0 and v.drain_s is not None
            and exits == 0)
    v.notes.append(f"{killed} connections killed; {outages} command(s) cut off in flight "
                   f"(worker threads backed off); {reconciled} fetch reply(ies) lost and "
                   f"reconciled; worker exits: {exits}")
    return [v]


def _pause_once(workdir: Path, quick: bool, ttl: float | None, heartbeat: float | None,
                ) -> Verdict:
    env, label = timings(ttl, heartbeat)
    total, duration = (1_500, 20) if quick else (3_000, 30)
    v = Verdict(scenario="5 CLIENT PAUSE 5000 x3", settings=f"3 workers x 5 threads, {label}")
    name = "pause" if ttl is None else f"pause-ttl{ttl:g}"
    with cluster(name, workdir, env=env) as c:
        admin = c.kiq.client()
        pids = sorted(w.pid for w in c.pool.slots)
        producer = Producer(total=total, duration=duration * 0.9, rng=random.Random(15))
        producer.start()
        for _ in range(3):
            time.sleep(duration / 6)
            admin.execute_command("CLIENT", "PAUSE", 5000)
            time.sleep(5.0)
        producer.join()
        logs = finish(v, c, producer, drain_timeout=240)
        exits = len(c.pool.retired)
        alive = sorted(w.pid for w in c.pool.slots if w.alive())
    recovered = RECOVERED.findall(logs)
    v.expectation = "no crash, no live peer recovered, lost 0, duplicates 0"
    v.ok = (v.lost == 0 and v.duplicates == 0 and not recovered and exits == 0
            and alive == pids and v.drain_s is not None)
    v.notes.append(f"[{label}] worker exits: {exits}; 'recovered ... of dead process' lines: "
                   f"{len(recovered)} ({sum(map(int, recovered))} jobs)")
    return v


def pause(workdir: Path, quick: bool) -> list[Verdict]:
    """5. Three 5 s stalls, with the default PROCESS_TTL."""
    return [_pause_once(workdir, quick, None, None)]


def pause_edge(workdir: Path, quick: bool) -> list[Verdict]:
    """5b. The same stalls with shorter TTLs, to find where a stall is taken for a death."""
    return [_pause_once(workdir, quick, ttl, hb)
            for ttl, hb in ((10, 2), (6, 2), (4, 1), (3, 1), (2, 1), (1, 0.5))]


def stall(workdir: Path, quick: bool) -> list[Verdict]:
    """5c. A worker *process* stalls (SIGSTOP) longer than PROCESS_TTL, then resumes (SIGCONT).

    The case a Redis stall never produced: its peers take it for dead and recover its jobs
    while it still holds them, so the jobs it was running run twice. Nothing may be lost, and the
    resumed worker must carry on (and may not ack what was recovered from it into oblivion).
    """
    env, label = timings(6, 2)
    total, duration = (1_500, 20) if quick else (3_000, 30)
    v = Verdict(scenario="5c worker SIGSTOPped > TTL", settings=f"3 workers x 5 threads, {label}")
    with cluster("stall", workdir, env=env) as c:
        producer = Producer(total=total, duration=duration * 0.9, ms=(50, 200),
                            rng=random.Random(17))
        producer.start()
        time.sleep(duration / 3)
        victim = c.pool.slots[0]
        victim.send(signal.SIGSTOP)
        time.sleep(6 + 2 * 2 + 2)  # TTL + two heartbeats + margin: peers recover its jobs
        victim.send(signal.SIGCONT)
        producer.join()
        logs = finish(v, c, producer, drain_timeout=120)
        exits = len(c.pool.retired)
    recovered = sum(int(n) for n in RECOVERED.findall(logs))
    v.expectation = ("lost 0; duplicates <= jobs recovered from the stalled worker; it resumes "
                     "without crashing")
    v.ok = (v.lost == 0 and v.dead == 0 and v.duplicates <= recovered and exits == 0
            and v.drain_s is not None)
    v.notes.append(f"{recovered} in-progress job(s) recovered from the stalled (live) worker; "
                   f"worker exits: {exits}")
    return [v]


# -- 6: a poison job -------------------------------------------------------------------------

def poison(workdir: Path, quick: bool) -> list[Verdict]:
    """6. A job that SIGKILLs its own process: dead after POISON_LIMIT, the rest completes."""
    from .jobs import poison as poison_job

    total, duration = (1_500, 15) if quick else (3_000, 30)
    env, label = timings(*((5, 1) if quick else (None, None)))
    ttl = float(env.get("KIQ_PROCESS_TTL", 60))
    v = Verdict(scenario="6 poison job", settings=f"3 workers x 5, POISON_LIMIT 3, {label}")
    with cluster("poison", workdir, env=env) as c:
        producer = Producer(total=total, duration=duration * 0.9, rng=random.Random(16))
        producer.start()
        time.sleep(duration / 5)
        poison_job.enqueue("pill")
        producer.join()
        logs = finish(v, c, producer, drain_timeout=4 * ttl + 120)
        deadline = time.monotonic() + 4 * ttl + 60
        while "pill" not in c.state.dead_tokens() and time.monotonic() < deadline:
            time.sleep(0.5)
        dead = [j for j in c.state.dead_jobs() if j.get("args") == ["pill"]]
        pill_starts = c.ledger.counts("start", ["pill"])["pill"]
        collateral = [j for j in c.state.dead_jobs() if j.get("args") != ["pill"]]
        exits = len(c.pool.retired)
    v.expectation = "the pill dead after 3 runs (PoisonJob); every other job completes"
    pill_ok = (len(dead) == 1 and dead[0].get("error_class") == "django_kiq.PoisonJob"
               and pill_starts == 3)
    v.ok = pill_ok and v.lost == 0 and v.dead == 0 and v.drain_s is not None
    v.notes.append(f"pill: {'dead as PoisonJob' if dead else 'NOT dead'} "
                   f"(kiq_recoveries {dead[0].get('kiq_recoveries') if dead else '-'}), "
                   f"started {pill_starts} time(s); worker processes killed: {exits}; "
                   f"innocent jobs sent to dead with it: {len(collateral)}; recovered lines: "
                   f"{len(RECOVERED.findall(logs))}")
    return [v]


# -- the peers' kill -9 protocol (../shared/bench/peers, RESULTS-2026-11-27.md) -----------------

def peers_kill(workdir: Path, quick: bool) -> list[Verdict]:
    """The peer benchmark's kill test, for a row beside theirs: 200 jobs of 0.5 s, one worker at
    concurrency 10, SIGKILL 1 s after the first job started, restarted at once; defaults."""
    from .jobs import work

    v = Verdict(scenario="peers' kill -9 protocol",
                settings="200 x 0.5 s, 1 worker x 10 threads, TTL 60/HB 10 (defaults)")
    tokens = [f"p{i}" for i in range(200)]
    with cluster("peerskill", workdir, workers=1, concurrency=10, start=False) as c:
        work.enqueue_many([(t, 500) for t in tokens])
        c.pool.start()
        first = time.monotonic() + 30
        while not any(c.ledger.counts("start", tokens).values()) and time.monotonic() < first:
            time.sleep(0.01)
        time.sleep(1.0)
        c.pool.signal_random(signal.SIGKILL, random.Random(0))  # the supervisor restarts it
        begin = time.monotonic()
        # Read at once: the killed process can add nothing, its successor needs ~1 s to start.
        at_kill = c.ledger.counts("start", tokens), c.ledger.counts("done", tokens)
        v.drain_s = drain(c.ledger, c.state, tokens, timeout=180, progress=say)
        tally(v, c.ledger, c.state, tokens)
        starts = sum(c.ledger.counts("start", tokens).values())
    started, done = (sum(1 for n in counts.values() if n) for counts in at_kill)
    v.expectation = "200/200, the jobs in flight at the kill run again"
    v.ok = v.lost == 0 and v.completed == 200 and v.drain_s is not None
    v.notes.append(f"started/done at the kill: {started}/{done}; job starts in all: {starts}; "
                   f"all 200 done {time.monotonic() - begin:.0f}s after the kill")
    return [v]


SCENARIOS: dict[str, Callable[[Path, bool], list[Verdict]]] = {
    "kill9": kill9,
    "term": term,
    "redis-restart": redis_restart,
    "client-kill": client_kill,
    "pause": pause,
    "pause-edge": pause_edge,
    "stall": stall,
    "poison": poison,
    "peers-kill": peers_kill,
}
ALIASES = {"1": "kill9", "2": "term", "3": "redis-restart", "4": "client-kill", "5": "pause",
           "6": "poison", "7": "redis-down"}
