"""``kiq_worker --processes N`` (worker/supervisor.py): real supervisors, real forked children,
real signals. Short heartbeats (0.5 s) and a long PROCESS_TTL where a test shows that the
supervisor, not the heartbeat's expiry, recovered a dead child's jobs.
"""

from __future__ import annotations

import json
import os
import signal
import time

import pytest
from django.core.checks import run_checks
from django.test import override_settings

from django_kiq.worker.supervisor import (MAX_RESTART_DELAY, Recycle, parse_processes,
                                          restart_delay, usable_cores)
from tests import jobs, supervisor_jobs
from tests.conftest import wait_for
from django_kiq.storage import Heartbeat
from tests.test_admin import url

IMPORTS = {"KIQ_IMPORTS": "tests.jobs,tests.supervisor_jobs"}


def children(redis_client) -> dict[str, dict]:
    """identity -> process info of the live worker processes."""
    out = {}
    for ident in redis_client.smembers("processes"):
        info = redis_client.hget(ident, "info")
        if info:
            out[ident.decode()] = json.loads(info)
    return out


def gone(pid: int) -> bool:
    """Not running (exited, or a zombie nobody reaped yet: not our child)."""
    try:
        with open(f"/proc/{pid}/stat") as f:
            return f.read().rsplit(")", 1)[1].split()[0] == "Z"
    except FileNotFoundError:
        return True


def start(worker_factory, *args: str, ttl: str = "3", **env: str):
    worker = worker_factory("--processes", *args, env={**IMPORTS, "KIQ_PROCESS_TTL": ttl, **env})
    return worker


def wait_children(redis_client, worker, count: int, exclude=()) -> dict[str, dict]:
    return wait_for(lambda: (lambda c: c if len(c) == count and not set(c) & set(exclude)
                             else None)(children(redis_client)),
                    timeout=20, message=worker.output)


def beat(store, identity: str, **info) -> None:
    host, pid, _ = identity.split(":")
    store.heartbeat(Heartbeat(
        identity=identity, info=json.dumps({"hostname": host, "pid": int(pid), **info}), busy=0,
        quiet=False, rss_kb=1024, rtt_us=50, work={}, ttl=60, processed=0, failed=0))


# -- pure parts ---------------------------------------------------------------------------------

def test_processes_restart_delay_and_recycle_rules():
    assert parse_processes("auto") == usable_cores() == len(os.sched_getaffinity(0))
    assert parse_processes("3") == parse_processes(3) == 3
    for bad in ("0", 0, "two", 1.5, True, -1):
        with pytest.raises(ValueError):
            parse_processes(bad)
    assert [restart_delay(n) for n in range(5)] == [0, 0, 0.5, 1, 2]
    assert restart_delay(50) == MAX_RESTART_DELAY
    rules = Recycle(max_rss_mb=100, max_jobs=10)
    assert rules and not Recycle()
    assert rules.reason({"jobs": 9, "rss_kb": 99 * 1024, "stuck": 0}) is None
    assert "max-jobs 10" in rules.reason({"jobs": 10, "rss_kb": 0})
    assert "max-rss 100" in rules.reason({"jobs": 0, "rss_kb": 100 * 1024})
    assert "stuck" in Recycle().reason({"stuck": 1})  # replaced without any limit set


def test_checks_reject_bad_processes_and_limits(redis_url):
    with override_settings(KIQ={"REDIS_URL": redis_url, "PROCESSES": 0, "MAX_RSS": "big",
                                "MAX_JOBS": 0}):
        ids = {e.id for e in run_checks(tags=["django_kiq"])}
    assert {"django_kiq.E030", "django_kiq.E031", "django_kiq.E032"} <= ids
    with override_settings(KIQ={"REDIS_URL": redis_url, "PROCESSES": "auto", "MAX_RSS": 512,
                                "MAX_JOBS": 1000}):
        assert not [e for e in run_checks(tags=["django_kiq"]) if e.id.startswith("django_kiq.E03")]


def test_busy_page_groups_children_under_their_supervisor(admin_client, store):
    parent = {"identity": "box:100:ab", "pid": 100, "index": 0, "processes": 2}
    beat(store, "box:101:c1", supervisor=parent)
    beat(store, "box:102:c2", supervisor={**parent, "index": 1})
    beat(store, "other:7:zz")
    text = admin_client.get(url("busy")).text
    group = text.index("supervisor box:100")
    assert group < text.index("box:101:c1") and group < text.index("box:102:c2")
    assert "2 processes" in text[group:text.index("box:101:c1")]
    assert "worker 1 of 2" in text and "worker 2 of 2" in text
    assert "other:7:zz" in text


# -- real supervisors ---------------------------------------------------------------------------

def test_children_share_the_work_show_their_parent_and_stop_on_term(worker_factory,
                                                                    redis_client):
    worker = start(worker_factory, "2", "-c", "2")
    found = wait_children(redis_client, worker, 2)
    assert "2 processes" in worker.output()
    parents = {info["supervisor"]["identity"] for info in found.values()}
    assert len(parents) == 1 and parents.pop().split(":")[1] == str(worker.pid)
    assert {info["supervisor"]["pid"] for info in found.values()} == {worker.pid}
    assert sorted(info["supervisor"]["index"] for info in found.values()) == [0, 1]
    pids = [info["pid"] for info in found.values()]
    assert worker.pid not in pids
    for i in range(40):
        supervisor_jobs.pid_of.enqueue(f"t{i}")
    wait_for(lambda: redis_client.hlen("test:pids") == 40, message=worker.output)
    assert {int(p) for p in redis_client.hvals("test:pids")} <= set(pids)
    worker.send(signal.SIGTERM)
    assert worker.wait(timeout=20) == 0, worker.output()
    assert all(gone(pid) for pid in pids)
    assert redis_client.scard("processes") == 0 and not redis_client.hkeys("kiq:wip")


def test_a_killed_child_is_replaced_and_its_job_recovered_at_once(worker_factory, redis_client):
    # PROCESS_TTL 60: only the supervisor, which saw the death, can bring the job back in time.
    worker = start(worker_factory, "2", "-c", "1", ttl="60")
    first = wait_children(redis_client, worker, 2)
    supervisor_jobs.hold.enqueue("victim")
    pid = int(wait_for(lambda: redis_client.hget("test:pids", "victim"), message=worker.output))
    redis_client.delete("test:pids")
    os.kill(pid, signal.SIGKILL)
    killed = [i for i, info in first.items() if info["pid"] == pid]
    started = time.monotonic()
    # The job runs again (in any child) within seconds, not after 60 s of TTL.
    again = int(wait_for(lambda: redis_client.hget("test:pids", "victim"), timeout=15,
                         message=worker.output))
    assert again != pid and time.monotonic() - started < 10
    wait_children(redis_client, worker, 2, exclude=killed)  # replaced
    redis_client.set("test:release", 1)
    wait_for(lambda: redis_client.hget("test:runs", "victim") == b"1", message=worker.output)
    assert "signal SIGKILL" in worker.output() and "recovered 1 job(s) of worker" in worker.output()
    worker.send(signal.SIGTERM)
    assert worker.wait(timeout=20) == 0, worker.output()


def test_a_child_stopped_from_the_busy_page_is_replaced(worker_factory, redis_client):
    from django_kiq import api

    worker = start(worker_factory, "2", "-c", "1")
    first = wait_children(redis_client, worker, 2)
    stopped = sorted(first)[0]
    api.ProcessSet().stop(stopped)  # what the Busy page's Stop button sends
    wait_children(redis_client, worker, 2, exclude=[stopped])
    assert worker.proc.poll() is None and "exit status 0" in worker.output()
    worker.send(signal.SIGTERM)
    assert worker.wait(timeout=20) == 0, worker.output()


def test_sigkill_of_the_parent_stops_the_children_gracefully(worker_factory, redis_client):
    worker = start(worker_factory, "2", "-c", "1")
    pids = [info["pid"] for info in wait_children(redis_client, worker, 2).values()]
    worker.send(signal.SIGKILL)
    worker.wait(timeout=10)
    wait_for(lambda: all(gone(pid) for pid in pids), timeout=15, message=worker.output)
    # Graceful: each unregistered itself (no heartbeat left to expire).
    assert redis_client.scard("processes") == 0, worker.output()
    assert worker.output().count("stopped (0 job(s) pushed back)") == 2, worker.output()


def test_tstp_quiets_and_ttin_dumps_every_child(worker_factory, redis_client):
    worker = start(worker_factory, "2", "-c", "1")
    found = wait_children(redis_client, worker, 2)
    worker.send(signal.SIGTTIN)
    wait_for(lambda: worker.output().count("thread kiq-heartbeat") >= 2, message=worker.output)
    worker.send(signal.SIGTSTP)
    wait_for(lambda: all(redis_client.hget(i, "quiet") == b"true" for i in found),
             message=worker.output)
    worker.send(signal.SIGINT)
    assert worker.wait(timeout=20) == 0, worker.output()


def test_a_second_int_stops_the_workers_at_once(worker_factory, redis_client):
    worker = start(worker_factory, "2", "-c", "1", "--timeout", "30")
    wait_children(redis_client, worker, 2)
    supervisor_jobs.hold.enqueue("long")
    wait_for(lambda: redis_client.hget("test:pids", "long"), message=worker.output)
    worker.send(signal.SIGINT)
    wait_for(lambda: "stopping: waiting up to 30.0s for 1 running job(s)" in worker.output(),
             message=worker.output)
    started = time.monotonic()
    worker.send(signal.SIGINT)  # the terminal's second Ctrl-C: no 30 s wait
    assert worker.wait(timeout=15) == 0, worker.output()
    assert time.monotonic() - started < 10
    [raw] = redis_client.lrange("queue:default", 0, -1)  # pushed back, not lost
    assert json.loads(raw)["args"] == ["long"]
    assert redis_client.scard("processes") == 0


def test_max_jobs_recycles_one_child_at_a_time(worker_factory, redis_client):
    worker = start(worker_factory, "2", "-c", "2", "--max-jobs", "10")
    wait_children(redis_client, worker, 2)
    for wave in range(3):  # each wave takes a child past 10 jobs: recycled, then the next
        for i in range(25):
            supervisor_jobs.pid_of.enqueue(f"w{wave}-{i}")
        wait_for(lambda: redis_client.hlen("test:pids") == 25 * (wave + 1),
                 message=worker.output)
        wait_for(lambda: worker.output().count("recycling worker") > wave, timeout=15,
                 message=worker.output)
    ran_in = {int(p) for p in redis_client.hvals("test:pids")}
    assert len(ran_in) >= 3, worker.output()  # replacements ran jobs too
    assert_one_at_a_time(worker.output())
    worker.send(signal.SIGTERM)
    assert worker.wait(timeout=20) == 0, worker.output()


def test_max_rss_recycles_one_child_at_a_time(worker_factory, redis_client):
    worker = start(worker_factory, "2", "-c", "1", "--max-rss", "1")  # every worker is over
    wait_for(lambda: worker.output().count("MB resident (--max-rss 1)") >= 3, timeout=20,
             message=worker.output)
    assert_one_at_a_time(worker.output())
    worker.send(signal.SIGTERM)
    assert worker.wait(timeout=20) == 0, worker.output()


def assert_one_at_a_time(output: str) -> None:
    """Each recycling waits until the previous one's replacement started: never two at once."""
    events = [line for line in output.splitlines()
              if "recycling worker" in line or "started: pid" in line]
    retiring = 0
    for line in events[2:]:  # after the first two starts
        retiring += 1 if "recycling worker" in line else -1
        assert retiring in (0, 1), events


def test_a_stuck_child_is_replaced_and_its_job_fails_with_job_timeout(worker_factory,
                                                                      redis_client):
    worker = start(worker_factory, "2", "-c", "2", "--timeout", "3")
    found = wait_children(redis_client, worker, 2)
    supervisor_jobs.stuck_in_c.enqueue("stuck", 120)
    pid = int(wait_for(lambda: redis_client.hget("test:pids", "stuck"), message=worker.output))
    jobs.record.enqueue("meanwhile")  # the other child keeps working
    wait_for(lambda: redis_client.hget("test:runs", "meanwhile"), message=worker.output)
    # Stuck 5 s past its 0.3 s limit (control.STUCK_AFTER), then replaced.
    retry = wait_for(lambda: redis_client.zrange("retry", 0, -1), timeout=20,
                     message=worker.output)
    job = json.loads(retry[0])
    assert job["error_class"] == "django_kiq.exceptions.JobTimeout", job
    assert "stuck past its time limit" in job["error_message"] and job["retry_count"] == 0
    assert gone(pid)  # its process ended before the job was failed: no second run alongside
    assert redis_client.hget("test:started", "stuck") == b"1"
    assert not redis_client.lrange("queue:default", 0, -1)
    killed = [i for i, info in found.items() if info["pid"] == pid]
    wait_children(redis_client, worker, 2, exclude=killed)
    assert "recycling worker" in worker.output() and "stuck" in worker.output()
    worker.send(signal.SIGTERM)
    assert worker.wait(timeout=20) == 0, worker.output()


def _port_held_with_the_next_free():
    """A listening socket on a port P whose P + 1 is free (worker 1's metrics port). Both are
    below the ephemeral range, where no outgoing connection (to Redis, say) takes a port."""
    import random
    import socket

    low = int(open("/proc/sys/net/ipv4/ip_local_port_range").read().split()[0])
    for _ in range(100):
        port = random.randrange(max(1024, low - 10_000), low - 1)
        holder, probe = socket.socket(), socket.socket()
        try:
            holder.bind(("0.0.0.0", port))
            probe.bind(("0.0.0.0", port + 1))
        except OSError:
            holder.close()
            continue
        finally:
            probe.close()
        holder.listen()
        return holder, port
    raise AssertionError("no free pair of neighbouring ports")


def test_a_child_dying_at_start_is_restarted_with_backoff(worker_factory, redis_client):
    # Worker 0 serves metrics on PORT + 0, which the test holds: it dies at every start.
    holder, port = _port_held_with_the_next_free()
    try:
        worker = start(worker_factory, "2", "-c", "1", "--metrics-port", str(port))
        wait_for(lambda: "died 3 times at start; next start in 1.0s" in worker.output(),
                 timeout=20, message=worker.output)
        assert worker.output().count("worker 0 cannot start") >= 3
        wait_for(lambda: len(children(redis_client)) == 1, message=worker.output)  # worker 1
    finally:
        holder.close()
    wait_children(redis_client, worker, 2)  # the port is free: worker 0 starts
    worker.send(signal.SIGTERM)
    assert worker.wait(timeout=20) == 0, worker.output()


def test_kiq_health_process_finds_the_workers_of_a_supervisor(store):
    from django_kiq.cli import health

    parent = {"identity": "box:100:ab", "pid": 100, "index": 0, "processes": 1}
    beat(store, "box:101:c1", supervisor=parent)
    assert health.check(store, max_age=30, identity="box:100:").healthy  # systemd's MainPID
    assert health.check(store, max_age=30, identity="box:101:").healthy
    assert not health.check(store, max_age=30, identity="box:102:").healthy
