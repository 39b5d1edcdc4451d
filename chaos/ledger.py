"""What a scenario checks: the producer's record of what it enqueued, the jobs' ledger of what
ran, and the state left in Redis; from them the :class:`Verdict`.

The producer runs on a thread of the chaos driver; everything else runs on its main thread. The
verdict never reads django-kiq's counters: "completed" comes from the ledger the jobs write to a
Redis server of its own (see ``chaos/jobs.py``), "dead" from the dead set's payloads.
"""

from __future__ import annotations

import json
import random
import threading
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field

import redis

CHUNK = 1000


@dataclass(slots=True, kw_only=True)
class Verdict:
    scenario: str
    settings: str
    enqueued: int = 0
    completed: int = 0  # distinct jobs with at least one completed run
    lost: int = 0  # enqueued, never completed, not dead
    duplicates: int = 0  # completed runs beyond the first
    dead: int = 0
    drain_s: float | None = None  # end of the disturbance -> every job accounted for
    expectation: str = ""
    ok: bool = False
    notes: list[str] = field(default_factory=list)


class Ledger:
    """Reads the jobs' ledger (``c:start:<token>`` / ``c:done:<token>`` sets)."""

    def __init__(self, client: redis.Redis):
        self.client = client

    def counts(self, kind: str, tokens: Sequence[str]) -> dict[str, int]:
        out: dict[str, int] = {}
        for start in range(0, len(tokens), CHUNK):
            chunk = tokens[start:start + CHUNK]
            pipe = self.client.pipeline(transaction=False)
            for token in chunk:
                pipe.scard(f"c:{kind}:{token}")
            out.update(zip(chunk, pipe.execute()))
        return out


class KiqState:
    """Raw reads of the Redis under test (the suite checks it from outside, like tests do)."""

    def __init__(self, client: redis.Redis):
        self.client = client

    def dead_count(self) -> int:
        return self.client.zcard("dead")

    def dead_jobs(self) -> list[dict]:
        return [json.loads(raw) for raw in self.client.zrange("dead", 0, -1)]

    def dead_tokens(self) -> set[str]:
        return {str(j["args"][0]) for j in self.dead_jobs() if j.get("args")}

    def pending(self) -> int:
        """Jobs still in a queue, an in-progress list, or the retry/schedule sets."""
        lists = list(self.client.scan_iter("queue:*", count=1000))
        lists += list(self.client.scan_iter("kiq:wip:*", count=1000))
        pipe = self.client.pipeline(transaction=False)
        for key in lists:
            pipe.llen(key)
        pipe.zcard("retry")
        pipe.zcard("schedule")
        return sum(pipe.execute())


class Producer:
    """Enqueues ``total`` jobs evenly over ``duration`` seconds, in batches, from a thread.

    A batch refused with ``EnqueueError`` (Redis down, connection killed) is replaced by a new
    batch with new tokens, so ``accepted`` reaches ``total``; the refused tokens are kept to check
    that a refused batch was written entirely or not at all (``phantoms``).
    """

    def __init__(self, *, total: int, duration: float, batch: int = 10,
                 rng: random.Random | None = None, ms: tuple[int, int] = (5, 50)):
        self.total = total
        self.duration = duration
        self.batch = batch
        self.rng = rng or random.Random(1)
        self.ms = ms
        self.accepted: list[str] = []
        self.refused: list[list[str]] = []
        self.errors: list[str] = []  # exceptions other than EnqueueError: a bug
        self._thread = threading.Thread(target=self._run, name="chaos-producer", daemon=True)
        self._next = 0

    def start(self) -> None:
        self._thread.start()

    def join(self, timeout: float | None = None) -> None:
        self._thread.join(timeout)

    def _run(self) -> None:
        from django_kiq import EnqueueError

        from .jobs import work

        begin = time.monotonic()
        while len(self.accepted) < self.total:
            target = begin + self.duration * len(self.accepted) / self.total
            delay = target - time.monotonic()
            if delay > 0:
                time.sleep(delay)
            size = min(self.batch, self.total - len(self.accepted))
            tokens = [f"t{self._next + i}" for i in range(size)]
            self._next += size
            try:
                work.enqueue_many([(t, self.rng.randint(*self.ms)) for t in tokens])
            except EnqueueError:
                self.refused.append(tokens)
                time.sleep(0.05)
                continue
            except Exception as exc:  # noqa: BLE001 - reported in the verdict
                self.errors.append(f"{type(exc).__name__}: {exc}")
                self.refused.append(tokens)
                time.sleep(0.05)
                continue
            self.accepted.extend(tokens)


def drain(ledger: Ledger, state: KiqState, tokens: Sequence[str], *, timeout: float,
          progress: Callable[[str], None] | None = None) -> float | None:
    """Seconds until every token completed or is dead and nothing is pending; None on timeout."""
    begin = time.monotonic()
    missing = list(tokens)
    last_report = begin
    while True:
        done = ledger.counts("done", missing)
        dead = state.dead_tokens() if state.dead_count() else set()
        missing = [t for t in missing if not done[t] and t not in dead]
        if not missing and state.pending() == 0:
            return time.monotonic() - begin
        now = time.monotonic()
        if now - begin > timeout:
            return None
        if progress and now - last_report > 10:
            progress(f"  draining: {len(missing)} job(s) not done yet, "
                     f"{state.pending()} pending in Redis ({now - begin:.0f}s)")
            last_report = now
        time.sleep(0.25)


def tally(verdict: Verdict, ledger: Ledger, state: KiqState, tokens: Sequence[str]) -> dict:
    """Fill enqueued/completed/lost/duplicates/dead from the ledger and the dead set."""
    done = ledger.counts("done", tokens)
    dead = state.dead_tokens()
    verdict.enqueued = len(tokens)
    verdict.completed = sum(1 for t in tokens if done[t])
    verdict.duplicates = sum(max(0, done[t] - 1) for t in tokens)
    verdict.dead = len(dead & set(tokens))
    verdict.lost = sum(1 for t in tokens if not done[t] and t not in dead)
    return done


def phantoms(ledger: Ledger, refused: list[list[str]]) -> tuple[int, int]:
    """(refused tokens that ran anyway, refused batches written only in part)."""
    ran, partial = 0, 0
    for batch in refused:
        done = ledger.counts("done", batch)
        count = sum(1 for t in batch if done[t])
        ran += count
        partial += 0 < count < len(batch)
    return ran, partial
