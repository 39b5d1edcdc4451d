"""Reading a ``py-spy record --format raw --threads`` profile: where the worker's time goes.

Runs in the ``bench/run.py`` process after a profiled drain (``--profile DIR``). The raw format
is one line per distinct stack, ``thread (tid);outermost (file:line);...;innermost (file:line)
count``; py-spy leaves idle (blocked) threads out by default, so the samples are time spent
running or runnable. Functions are grouped by name and file, ignoring the line.
"""

from __future__ import annotations

import re
import shutil
import sys
from collections import Counter
from pathlib import Path

FRAME = re.compile(r"^(?P<func>.+?) \((?P<file>.+?)(?::\d+)?\)$")
# The loop each worker thread runs, recognised by a frame on its stack.
ROLES = (
    ("_process_loop", "processor threads"),
    ("_fetch_loop", "fetcher thread"),
    ("_wait_loop", "queue waiter"),
    ("_heartbeat_loop", "heartbeat"),
    ("Reporter._loop", "bench reporter (harness)"),
    ("Poller.", "scheduler poller"),
    ("Launcher.run", "main thread"),
)
# Buckets by file: how much is redis-py, json, logging, Django, django_kiq itself.
AREAS = (
    ("redis/", "redis-py (client side of round trips)"),
    ("hiredis", "redis-py (client side of round trips)"),
    ("socket", "redis-py (client side of round trips)"),
    ("json/", "json"),
    ("logging/", "logging"),
    ("django/db", "django.db (close_old_connections)"),
    ("django/", "django (other)"),
    ("threading.py", "threading (locks, conditions, events)"),
    ("django_kiq/", "django_kiq"),
    ("bench/", "bench harness"),
)


def py_spy() -> str | None:
    """py-spy from the project's virtualenv, the PATH, or the benchmark's own (peers')
    virtualenv (``<peers venv>/bin/pip install py-spy`` keeps it out of the project's)."""
    from bench import peers

    for local in (Path(sys.executable).with_name("py-spy"),
                  peers.home() / "venv" / "bin" / "py-spy"):
        if local.exists():
            return str(local)
    return shutil.which("py-spy")


def short(file: str) -> str:
    for marker in ("site-packages/", "lib/python3", "/work/main/"):
        if marker in file:
            file = file.split(marker, 1)[1]
    return file


def parse(path: Path) -> list[tuple[list[tuple[str, str]], int]]:
    stacks = []
    for line in path.read_text(errors="replace").splitlines():
        body, _, count = line.rpartition(" ")
        if not body or not count.isdigit():
            continue
        frames = []
        for part in body.split(";")[1:]:  # the first element is "thread (tid)"
            match = FRAME.match(part)
            if match:
                frames.append((match["func"], short(match["file"])))
        stacks.append((frames, int(count)))
    return stacks


def role(frames: list[tuple[str, str]]) -> str:
    names = [func for func, _ in frames]
    for marker, label in ROLES:
        if any(marker in name for name in names):
            return label
    return "other (start-up, imports)"


def area(file: str) -> str:
    for marker, label in AREAS:
        if marker in file:
            return label
    return "other"


def summarize(path: Path, top: int = 20) -> dict:
    stacks = parse(path)
    total = sum(count for _, count in stacks) or 1
    own: Counter = Counter()
    inclusive: Counter = Counter()
    roles: Counter = Counter()
    areas: Counter = Counter()
    for frames, count in stacks:
        if not frames:
            continue
        func, file = frames[-1]
        own[f"{func} ({file})"] += count
        areas[area(file)] += count
        roles[role(frames)] += count
        for name in {f"{f} ({p})" for f, p in frames}:
            inclusive[name] += count

    def share(counter: Counter, n: int) -> list[tuple[str, float]]:
        return [(name, round(100 * count / total, 1)) for name, count in counter.most_common(n)]

    return {"samples": total, "by_thread": share(roles, 10), "by_area_self": share(areas, 12),
            "top_self": share(own, top), "top_inclusive": share(inclusive, top)}
