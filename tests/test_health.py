"""``manage.py kiq_health``: the verdict (pure) and the exit statuses against real workers."""

from __future__ import annotations

import json
import os
import signal
import socket
import subprocess
import sys
import time

from django_kiq import api
from django_kiq.cli.health import judge
from django_kiq.records import process_record
from django_kiq.storage import Heartbeat
from tests.conftest import ROOT, wait_for

NOW = 1_800_000_000.0


def proc(identity: str, beat: float | None, hostname: str = "h1"):
    state = {"info": json.dumps({"hostname": hostname, "identity": identity})}
    if beat is not None:
        state["beat"] = repr(beat)
    return process_record(identity, state, {})


# -- the verdict ------------------------------------------------------------------------------

def test_fresh_stale_and_missing():
    procs = [proc("h1:1:a", NOW - 2), proc("h2:2:b", NOW - 100, hostname="h2")]
    assert judge(procs, now=NOW, max_age=60, offsets={}).healthy
    assert judge(procs, now=NOW, max_age=60, offsets={}, identity="h1:1:a").healthy
    assert judge(procs, now=NOW, max_age=60, offsets={}, identity="h1:1:").healthy  # host:pid:
    stale = judge(procs, now=NOW, max_age=60, offsets={}, identity="h2:2:b")
    assert not stale.healthy and stale.reason == (
        "stale heartbeat from process h2:2:b: h2:2:b last beat 2m ago (limit 1m)")
    assert not judge(procs, now=NOW, max_age=60, offsets={}, hostname="h2").healthy
    assert judge(procs, now=NOW, max_age=60, offsets={}, hostname="h1").reason == (
        "ok: h1:1:a beat 2s ago")
    missing = judge(procs, now=NOW, max_age=60, offsets={}, hostname="h3")
    assert missing.reason.startswith("no live heartbeat from any worker on host h3")
    assert not judge([], now=NOW, max_age=60, offsets={}).healthy
    assert not judge([proc("h1:1:a", None)], now=NOW, max_age=60, offsets={}).healthy


def test_ages_are_on_redis_clock_using_the_published_offset():
    # The worker's clock runs 300 s ahead of Redis's: its beat "NOW + 298" is 2 s old.
    ahead = [proc("h1:1:a", NOW + 298)]
    assert judge(ahead, now=NOW, max_age=10, offsets={"h1:1:a": 300.0}).healthy
    behind = [proc("h1:1:a", NOW - 302)]
    assert judge(behind, now=NOW, max_age=10, offsets={"h1:1:a": -300.0}).healthy
    assert not judge(behind, now=NOW, max_age=10, offsets={}).healthy


# -- the command ------------------------------------------------------------------------------

def health(*args: str, url: str) -> subprocess.CompletedProcess:
    env = {**os.environ, "KIQ_REDIS_URL": url, "KIQ_IMPORTS": "tests.jobs",
           "KIQ_PROCESS_TTL": "3", "DJANGO_SETTINGS_MODULE": "testproject.settings"}
    return subprocess.run([sys.executable, str(ROOT / "manage.py"), "kiq_health", *args],
                          cwd=ROOT, env=env, capture_output=True, text=True, timeout=60)


def live_identity() -> str:
    return wait_for(lambda: [p.identity for p in api.ProcessSet().list()], timeout=20,
                    message="the worker never registered")[0]


def test_up_then_stopped_with_term(worker_factory, redis_url):
    assert health(url=redis_url).returncode == 3  # nobody yet
    worker = worker_factory("-c", "2")
    identity = live_identity()
    pid_prefix = f"{socket.gethostname()}:{identity.split(':')[1]}:"  # as systemd can say it
    for args in ([], ["--this-host"], ["--process", identity], ["--process", pid_prefix]):
        out = health(*args, url=redis_url)
        assert out.returncode == 0, (args, out.stderr)
        assert out.stdout.startswith(f"ok: {identity} beat ")
    out = health("--process", identity + "x", url=redis_url)
    assert out.returncode == 3 and out.stderr.count("\n") == 1
    assert out.stderr.startswith(f"Error: no live heartbeat from process {identity}x")
    worker.send(signal.SIGTERM)
    assert worker.wait(timeout=20) == 0
    out = health("--this-host", url=redis_url)
    assert out.returncode == 3 and out.stderr.strip() == (
        f"Error: no live heartbeat from any worker on host {socket.gethostname()} (stopped, or "
        "never started)")


def test_sigkilled_worker_turns_unhealthy_after_process_ttl(worker_factory, redis_url):
    worker = worker_factory("-c", "2")
    identity = live_identity()
    worker.send(signal.SIGKILL)
    worker.wait(timeout=10)
    killed = time.monotonic()
    calls = []  # (started, took) of each health command, whose start-up is slow under load

    def unhealthy() -> bool:
        asked = time.monotonic()
        code = health("--process", identity, url=redis_url).returncode
        calls.append((asked, time.monotonic() - asked))
        return code == 3

    wait_for(unhealthy, timeout=15, interval=0.2, message="a SIGKILLed worker still looked healthy")
    # The first command to say so started within PROCESS_TTL (3 s) of the kill, plus one
    # command's run (the one before it may have started just inside the TTL) and a poll step.
    asked, _ = calls[-1]
    previous_took = calls[-2][1] if len(calls) > 1 else 0.0
    assert asked - killed < 3 + previous_took + 0.5, calls


def test_a_hash_kept_alive_without_beats_is_stale(store, redis_url):
    info = json.dumps({"hostname": socket.gethostname(), "identity": "me:1:a"})
    store.heartbeat(Heartbeat(identity="me:1:a", info=info, busy=0, quiet=False, rss_kb=0,
                              rtt_us=0, work={}, ttl=60, processed=0, failed=0),
                    now=time.time() - 10)
    out = health("--this-host", url=redis_url)
    assert out.returncode == 3 and "stale heartbeat" in out.stderr and "limit 3s" in out.stderr
    assert health("--this-host", "--max-age", "30", url=redis_url).returncode == 0
    assert health("--max-age", "0", url=redis_url).returncode == 2
    assert health("--process", "x", "--this-host", url=redis_url).returncode == 2


def test_redis_down_is_status_1(redis_url):
    out = health(url="redis://127.0.0.1:1/0")
    assert out.returncode == 1 and out.stderr.startswith("Error: Redis at 127.0.0.1:1/0: ")
    assert out.stderr.count("\n") == 1
