"""Benchmark of the read/manage API on big job sets: retry_all, kill_all, paging, find, filter.

Usage: .venv/bin/python bench/api_ops.py [--redis URL] [--n 100000] [--big 1000000]

Claims an empty Redis DB (15 down to 1 on 127.0.0.1:6379, or the --redis URL, which must hold no
keys) with a claim key, fills the retry set with --n jobs (pipelined) and times ``retry_all``,
then again for ``kill_all``; then refills it with --big jobs and times the first and last page,
``get``, ``find`` and ``filter`` (a hit and a miss, the worst case: a full ZSCAN), and
``delete_all``. Prints a table and empties the DB it claimed at the end, whatever happened.
"""

from __future__ import annotations

import argparse
import os
import secrets
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
CLAIM_KEY = "kiq:bench-claim"
FILL_CHUNK = 10_000
RESET = "if redis.call('GET', KEYS[1]) == ARGV[1] then redis.call('FLUSHDB') end return 1"


def setup_django(url: str) -> None:
    os.environ["DJANGO_SETTINGS_MODULE"] = "testproject.settings"
    os.environ["KIQ_REDIS_URL"] = url
    import django

    django.setup()


def claim(url: str | None, token: str) -> str:
    """An empty DB we own: the given URL, or the first empty DB from 15 down to 1."""
    from django_kiq.storage.connection import build_client

    candidates = [url] if url else [f"redis://127.0.0.1:6379/{db}" for db in range(15, 0, -1)]
    for candidate in candidates:
        client = build_client(candidate, None)
        try:
            if client.dbsize() == 0 and client.set(CLAIM_KEY, token, nx=True, ex=3 * 3600):
                return candidate
        finally:
            client.close()
    sys.exit(f"refusing to run: {url} is not empty" if url else "no empty Redis DB (1-15)")


def fill_retry(store, count: int, *, marker_at: int | None = None) -> None:
    """ZADD ``count`` retry entries in pipelined chunks; entry ``marker_at`` holds a needle."""
    from django_kiq import payload

    now = time.time()
    key = store.keys.retry
    for start in range(0, count, FILL_CHUNK):
        pipe = store.client.pipeline(transaction=False)
        members = {}
        for i in range(start, min(count, start + FILL_CHUNK)):
            job = payload.build(name="bench.noop", args=[i], kwargs={}, queue=f"q{i % 4}",
                                now=now, jid=f"{i:024x}",
                                options={"retry_count": 3, "error_class": "ValueError",
                                         "error_message": "needle-found" if i == marker_at
                                         else "boom"})
            members[payload.encode(job)] = now + 3600 + i
        pipe.zadd(key, members)
        pipe.execute()


def timed(rows: list, label: str, func, count: int | None = None):
    start = time.perf_counter()
    result = func()
    seconds = time.perf_counter() - start
    rate = f"{count / seconds:,.0f}/s" if count else ""
    rows.append((label, seconds, rate))
    return result


def run(store, n: int, big: int) -> list:
    from django_kiq import api

    rows: list = []
    retries = api.RetrySet(store=store)
    timed(rows, f"fill retry set ({n:,}, pipelined)", lambda: fill_retry(store, n), n)
    moved = timed(rows, f"retry_all ({n:,})", retries.retry_all, n)
    assert moved == n, (moved, n)
    for name in store.queue_names():
        api.Queue(name, store=store).clear()
    fill_retry(store, n)
    killed = timed(rows, f"kill_all ({n:,}, dead set trimmed)", retries.kill_all, n)
    assert killed == n, (killed, n)
    api.DeadSet(store=store).delete_all()
    if big:
        mid = big // 2
        timed(rows, f"fill retry set ({big:,}, pipelined)",
              lambda: fill_retry(store, big, marker_at=mid), big)
        first = timed(rows, "jobs(): first page (25)", retries.jobs)
        last = timed(rows, "jobs(): last page (25)", lambda: retries.jobs(big - 25, 25))
        assert len(first) == len(last) == 25
        found = timed(rows, "get(key) of the last entry", lambda: retries.get(last[-1].key))
        assert found is not None
        timed(rows, "find(jid) (full ZSCAN at worst)", lambda: retries.find(f"{mid:024x}"))
        hits = timed(rows, 'filter("needle-found")', lambda: retries.filter("needle-found"))
        assert len(hits) == 1, hits
        timed(rows, 'filter("no-such-text") (full ZSCAN)', lambda: retries.filter("no-such-text"))
        timed(rows, f"delete_all ({big:,}, UNLINK)", retries.delete_all)
    return rows


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--redis", help="Redis URL of an EMPTY database to use")
    parser.add_argument("--n", type=int, default=100_000, help="entries for retry_all")
    parser.add_argument("--big", type=int, default=1_000_000,
                        help="entries for the paging/filter case (0 skips it)")
    options = parser.parse_args()

    token = secrets.token_hex(8)
    sys.path.insert(0, str(ROOT))
    url = claim(options.redis, token)
    setup_django(url)
    from django_kiq import storage

    store = storage.get_default()
    try:
        rows = run(store, options.n, options.big)
    finally:
        store.client.eval(RESET, 1, CLAIM_KEY, token)  # FLUSHDB drops the claim key too
    print(f"django-kiq api benchmark on {url}")
    print(f"{'operation':<44} {'seconds':>9} {'rate':>12}")
    for label, seconds, rate in rows:
        print(f"{label:<44} {seconds:>9.4f} {rate:>12}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
