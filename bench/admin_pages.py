"""Benchmark of the admin console's Retries page on a huge retry set (issue 4's 300 ms goal).

Usage: .venv/bin/python bench/admin_pages.py [--redis URL] [--n 1000000] [--repeat 5]

Claims an empty Redis DB like ``bench/api_ops.py`` (15 down to 1, or --redis, which must hold no
keys), fills the retry set with --n entries, and renders, through Django's test client logged in
as a superuser (a throwaway SQLite file), the whole Retries page: the first page, a middle page,
the last page, two filters (each request is one bounded search step, resumed by the next
link), and a job's detail page. Prints the median and worst of --repeat renders of each, then
empties the DB it claimed.
"""

from __future__ import annotations

import argparse
import os
import secrets
import statistics
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
if str(ROOT) not in sys.path:
    sys.path.insert(0, str(ROOT))

from bench.api_ops import CLAIM_KEY, RESET, claim, fill_retry, setup_django  # noqa: E402

GOAL_MS = 300


def login():
    from django.contrib.auth import get_user_model
    from django.core.management import call_command
    from django.test import Client

    call_command("migrate", verbosity=0)
    user = get_user_model().objects.create_superuser("bench", "bench@example.com", None)
    client = Client()
    client.force_login(user)
    return client


def measure(client, path: str, repeat: int) -> list[float]:
    times = []
    for _ in range(repeat):
        start = time.perf_counter()
        response = client.get(path)
        times.append((time.perf_counter() - start) * 1000)
        assert response.status_code == 200, (path, response.status_code)
    return times


def run(client, n: int, repeat: int) -> list[tuple[str, list[float]]]:
    from django_kiq import api

    base = "/admin/django_kiq/jobs/retries/"
    last = (n - 1) // 25 * 25
    key = api.RetrySet().jobs(n - 1, 1)[0].key
    pages = [("first page", base), ("middle page", f"{base}?offset={n // 2 // 25 * 25}"),
             ("last page", f"{base}?offset={last}"),
             ('filter "needle-found" (first step)', f"{base}?q=needle-found"),
             ('filter "no-such-text" (first step)', f"{base}?q=no-such-text"),
             ("job detail (last entry)", f"/admin/django_kiq/jobs/job/retries/{key}/")]
    client.get(base)  # warm up templates and connections
    return [(label, measure(client, path, repeat)) for label, path in pages]


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--redis", help="Redis URL of an EMPTY database to use")
    parser.add_argument("--n", type=int, default=1_000_000, help="entries in the retry set")
    parser.add_argument("--repeat", type=int, default=5, help="renders per page")
    options = parser.parse_args()

    token = secrets.token_hex(8)
    url = claim(options.redis, token)
    workdir = tempfile.TemporaryDirectory(prefix="kiq-bench-admin-")
    os.environ["KIQ_DEMO_DB"] = str(Path(workdir.name) / "db.sqlite3")
    os.environ.setdefault("DJANGO_DEBUG", "0")
    setup_django(url)
    from django_kiq import storage

    store = storage.get_default()
    try:
        start = time.perf_counter()
        fill_retry(store, options.n, marker_at=options.n // 2)
        fill_seconds = time.perf_counter() - start
        rows = run(login(), options.n, options.repeat)
    finally:
        store.client.eval(RESET, 1, CLAIM_KEY, token)  # FLUSHDB drops the claim key too
        workdir.cleanup()
    print(f"admin Retries page with {options.n:,} entries (filled in {fill_seconds:.1f} s), "
          f"{options.repeat} renders each, goal < {GOAL_MS} ms")
    print(f"{'page':<36} {'median ms':>10} {'worst ms':>9}  ok")
    failed = False
    for label, times in rows:
        worst = max(times)
        ok = worst < GOAL_MS
        failed |= not ok
        verdict = "yes" if ok else "NO"
        print(f"{label:<36} {statistics.median(times):>10.1f} {worst:>9.1f}  {verdict}")
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
