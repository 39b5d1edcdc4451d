"""Scenario 7 (producers while Redis is down) and the memory scenario.

Run on the chaos driver's main thread; scenario 7 adds three producer threads. Scenario 7 checks
the *client* side: every enqueue either returns (and the job then runs) or raises
``EnqueueError``; inside ``transaction.atomic()`` the failed on-commit push is logged with its jid
and raised from the commit; a refused ``enqueue_many`` is written entirely or not at all.
"""

from __future__ import annotations

import logging
import threading
import time
from pathlib import Path

from bench.infra import rss_kb

from .ledger import Verdict, drain, phantoms, tally
from .scenarios import cluster, say


class _Capture(logging.Handler):
    def __init__(self) -> None:
        super().__init__(logging.ERROR)
        self.messages: list[str] = []

    def emit(self, record: logging.LogRecord) -> None:
        self.messages.append(record.getMessage())


class _Producers:
    """Three threads enqueueing in three ways until ``stop`` is set."""

    def __init__(self) -> None:
        self.accepted: list[str] = []
        self.refused: list[list[str]] = []
        self.atomic_failures: list[tuple[str, str | None]] = []  # (jid enqueue returned, exc.jid)
        self.other: list[str] = []
        self.slowest_refusal = 0.0
        self.stop = threading.Event()
        self._lock = threading.Lock()
        self._n = 0
        self.threads = [threading.Thread(target=self._loop, args=(mode,), daemon=True,
                                         name=f"producer-{mode}")
                        for mode in ("single", "many", "atomic")]

    def _tokens(self, n: int) -> list[str]:
        with self._lock:
            self._n += n
            return [f"t{i}" for i in range(self._n - n, self._n)]

    def _loop(self, mode: str) -> None:
        from django.db import transaction

        from django_kiq import EnqueueError

        from .jobs import work

        while not self.stop.is_set():
            tokens = self._tokens(5 if mode == "many" else 1)
            begin = time.monotonic()
            jid = None
            try:
                if mode == "single":
                    work.enqueue(tokens[0], 5)
                elif mode == "many":
                    work.enqueue_many([(t, 5) for t in tokens])
                else:
                    with transaction.atomic():
                        jid = work.enqueue(tokens[0], 5)
            except EnqueueError as exc:
                with self._lock:
                    self.refused.append(tokens)
                    self.slowest_refusal = max(self.slowest_refusal, time.monotonic() - begin)
                    if mode == "atomic":
                        self.atomic_failures.append((jid, exc.jid))
            except Exception as exc:  # noqa: BLE001 - any other type is a finding
                with self._lock:
                    self.other.append(f"{mode}: {type(exc).__name__}: {exc}")
                    self.refused.append(tokens)
            else:
                with self._lock:
                    self.accepted.extend(tokens)
            time.sleep(0.02)


def redis_down(workdir: Path, quick: bool) -> list[Verdict]:
    """7. Producers enqueue while the Redis server is down for 3 s."""
    v = Verdict(scenario="7 enqueue, Redis down 3 s",
                settings="AOF always; producers: enqueue, enqueue_many(5), atomic+on_commit")
    capture = _Capture()
    client_log = logging.getLogger("django_kiq.client")
    # Capture the client's error records here instead of printing them to the console.
    saved = client_log.level, client_log.propagate
    client_log.setLevel(logging.ERROR)
    client_log.propagate = False
    client_log.addHandler(capture)
    try:
        with cluster("down", workdir, aof=True, workers=1) as c:
            producers = _Producers()
            for thread in producers.threads:
                thread.start()
            time.sleep(2.5)
            c.kiq.kill()
            say("  redis-server killed; down for 3 s")
            time.sleep(3.0)
            c.kiq.start()
            time.sleep(2.5)
            producers.stop.set()
            for thread in producers.threads:
                thread.join(timeout=30)
            v.drain_s = drain(c.ledger, c.state, producers.accepted, timeout=120, progress=say)
            tally(v, c.ledger, c.state, producers.accepted)
            ran, partial = phantoms(c.ledger, producers.refused)
    finally:
        client_log.removeHandler(capture)
        client_log.setLevel(saved[0])
        client_log.propagate = saved[1]
    atomic = producers.atomic_failures
    logged = sum(1 for jid, _ in atomic if jid and any(jid in m for m in capture.messages))
    same_jid = sum(1 for jid, exc_jid in atomic if jid and jid == exc_jid)
    v.expectation = ("each call returns or raises EnqueueError; on-commit failures logged with "
                     "the jid and raised from the commit; nothing half-written; accepted jobs run")
    v.ok = (v.lost == 0 and not producers.other and partial == 0 and bool(producers.refused)
            and len(atomic) > 0 and logged == len(atomic) and same_jid == len(atomic)
            and v.drain_s is not None)
    v.notes.append(
        f"{sum(map(len, producers.refused))} enqueue(s) refused in {len(producers.refused)} "
        f"call(s) (slowest refusal {producers.slowest_refusal * 1000:.0f} ms); {ran} refused "
        f"job(s) ran anyway; {partial} enqueue_many call(s) half-written; atomic blocks whose "
        f"commit raised: {len(atomic)}, logged with their jid: {logged}, EnqueueError.jid "
        f"matching: {same_jid}; other exceptions: {producers.other[:3] or 'none'}")
    return [v]


def memory(workdir: Path, quick: bool) -> list[Verdict]:
    """One worker runs 1,000,000 no-op jobs: RSS stays within 10% of its level at 10,000."""
    from .jobs import noop

    total = 100_000 if quick else 1_000_000
    v = Verdict(scenario="memory: no-op jobs", settings=f"1 worker x 5 threads, {total:,} jobs")
    samples: list[tuple[int, int, float]] = []  # (processed, rss kB, seconds)
    with cluster("memory", workdir, workers=1, start=False) as c:
        say(f"  enqueueing {total:,} no-op jobs")
        for start in range(0, total, 10_000):
            noop.enqueue_many([()] * min(10_000, total - start))
        client = c.state.client
        c.pool.start()
        begin = time.monotonic()
        worker = c.pool.slots[0]
        while True:
            pipe = client.pipeline(transaction=False)
            pipe.llen("queue:default")
            for key in client.scan_iter("kiq:wip:*"):
                pipe.llen(key)
            left = sum(pipe.execute())
            processed = total - left
            samples.append((processed, rss_kb(worker.pid), time.monotonic() - begin))
            if left == 0 or not worker.alive():
                break
            if len(samples) % 30 == 0:
                say(f"  {processed:,} processed, RSS {samples[-1][1] / 1024:.1f} MiB")
            time.sleep(1.0)
        elapsed = time.monotonic() - begin
        exits = len(c.pool.retired)
    v.enqueued, v.completed, v.lost = total, processed, left
    v.drain_s = elapsed
    after = [(p, r) for p, r, _ in samples if p >= 10_000 and r]
    base = after[0][1] if after else 0
    peak = max((r for _, r in after), default=0)
    final = after[-1][1] if after else 0
    growth = (peak - base) / base * 100 if base else float("nan")
    v.expectation = "peak RSS after 10,000 jobs within +10% of the RSS at 10,000"
    v.ok = bool(base) and peak <= base * 1.10 and left == 0 and exits == 0
    marks = [m for m in (10_000, 100_000, 250_000, 500_000, 750_000, 1_000_000) if m <= total]
    series = []
    for mark in marks:
        sample = next(((p, r) for p, r, _ in samples if p >= mark and r), None)
        if sample:
            series.append(f"{mark // 1000}k: {sample[1] / 1024:.1f}")
    v.notes.append("RSS MiB at " + ", ".join(series) + f"; peak {peak / 1024:.1f}, final "
                   f"{final / 1024:.1f} ({growth:+.1f}% peak vs 10k); {total / elapsed:,.0f} "
                   f"jobs/s; completed counted from Redis (no-op jobs write no ledger)")
    return [v]
