"""``manage.py kiq``: each subcommand run as a subprocess against the claimed Redis DB.

The tests fill Redis through the storage verbs in this process, run the command the way an
operator would (no TTY: stdin is a pipe), and check its table, its ``--json`` document, its exit
status and what really changed in Redis.
"""

from __future__ import annotations

import json
import os
import pty
import subprocess
import sys
import time

import pytest

from django_kiq import api, payload
from django_kiq.storage import Heartbeat
from tests.conftest import ROOT



def kiq(*args: str, url: str, stdin: str = "", env: dict | None = None
        ) -> subprocess.CompletedProcess:
    full_env = {**os.environ, "KIQ_REDIS_URL": url, "KIQ_IMPORTS": "tests.jobs",
                "DJANGO_SETTINGS_MODULE": "testproject.settings", **(env or {})}
    return subprocess.run([sys.executable, str(ROOT / "manage.py"), "kiq", *args], cwd=ROOT,
                          env=full_env, input=stdin, capture_output=True, text=True, timeout=60)


def make(i: int, *, name: str = "tests.jobs.record", queue: str = "default", **extra) -> bytes:
    job = payload.build(name=name, args=[f"t{i}"], kwargs={}, queue=queue, now=time.time() - 50,
                        jid=f"{i:024x}")
    job.update(extra)
    return payload.encode(job)


def fill(store, set_name: str, count: int, **extra) -> list[bytes]:
    raws = [make(i, **extra) for i in range(count)]
    store.schedule([(time.time() + 60 + i, raw) for i, raw in enumerate(raws)], set_name)
    return raws


def beat(store, identity: str, *, hostname: str = "host1", work: dict | None = None) -> None:
    info = {"hostname": hostname, "started_at": time.time() - 60, "pid": 4242, "tag": "web",
            "concurrency": 5, "queues": ["default"], "identity": identity, "version": "x"}
    store.heartbeat(Heartbeat(identity=identity, info=json.dumps(info), busy=len(work or {}),
                              quiet=False, rss_kb=2048, rtt_us=1, work=work or {}, ttl=60,
                              processed=0, failed=0))


# -- reads ------------------------------------------------------------------------------------

def test_stats_table_and_json(store, redis_url):
    store.push([("default", make(i)) for i in range(3)])
    fill(store, "retry", 2, error_class="ValueError", error_message="boom")
    out = kiq("stats", url=redis_url)
    assert out.returncode == 0, out.stderr
    lines = dict(line.rsplit(None, 1) for line in out.stdout.splitlines())
    assert lines["enqueued"] == "3" and lines["retries"] == "2" and lines["dead"] == "0"
    data = json.loads(kiq("stats", "--json", url=redis_url).stdout)
    assert list(data) == ["processed", "failed", "busy", "enqueued", "scheduled", "retries",
                          "dead", "processes", "default_queue_latency"]
    assert (data["enqueued"], data["retries"]) == (3, 2)
    assert data["default_queue_latency"] > 40


def test_queues_and_processes(store, redis_url):
    store.push([("default", make(1)), ("mail", make(2)), ("mail", make(3))])
    api.Queue("mail").pause()
    beat(store, "host1:42:abc")
    out = kiq("queues", url=redis_url)
    assert out.returncode == 0, out.stderr
    header, *rows = out.stdout.splitlines()
    assert header.split() == ["QUEUE", "SIZE", "LATENCY", "PAUSED"]
    assert rows[0].split()[:2] == ["default", "1"] and rows[1].split()[-1] == "paused"
    data = json.loads(kiq("queues", "--json", url=redis_url).stdout)
    assert data["queues"][1] == {"name": "mail", "size": 2, "latency": data["queues"][1]["latency"],
                                 "paused": True}
    out = kiq("processes", url=redis_url)
    assert "host1:42:abc" in out.stdout and "0/5" in out.stdout and "running" in out.stdout
    data = json.loads(kiq("processes", "--json", url=redis_url).stdout)
    (proc,) = data["processes"]
    assert (proc["identity"], proc["hostname"], proc["pid"], proc["busy"]) == (
        "host1:42:abc", "host1", 4242, 0)


# -- the job sets -----------------------------------------------------------------------------

def test_set_lists_a_page_with_aligned_columns_and_truncated_cells(store, redis_url):
    fill(store, "retry", 30, error_class="ValueError", error_message="x" * 300)
    out = kiq("retries", "--limit", "10", "--offset", "5", url=redis_url)
    assert out.returncode == 0, out.stderr
    header, *rows, footer = out.stdout.splitlines()
    assert header.split() == ["WHEN", "JID", "JOB", "QUEUE", "ARGS", "RETRIES", "ERROR"]
    assert len(rows) == 10 and f"{5:024x}" in rows[0] and f"{14:024x}" in rows[-1]
    assert all(row.index(f"{i + 5:024x}") == header.index("JID") for i, row in enumerate(rows))
    assert rows[0].endswith("…") and max(map(len, rows)) < 200
    assert footer == "6-15 of 30 (next page: --offset 15)"
    data = json.loads(kiq("retries", "--json", "--limit", "2", url=redis_url).stdout)
    assert (data["set"], data["size"], data["offset"], data["limit"]) == ("retry", 30, 0, 2)
    assert list(data["jobs"][0]) == [
        "key", "jid", "name", "display_name", "queue", "args", "kwargs", "at", "created_at",
        "enqueued_at", "failed_at", "retry_count", "error_class", "error_message", "malformed"]
    assert data["jobs"][0]["error_message"] == "x" * 300  # JSON keeps values whole


def test_filter_is_a_bounded_search_and_actions_act_on_the_matches(store, redis_client, redis_url):
    fill(store, "retry", 5)
    store.schedule([(time.time() + 5, make(99, name="tests.jobs.noop"))], "retry")
    data = json.loads(kiq("retries", "--filter", "noop", "--json", url=redis_url).stdout)
    assert [j["jid"] for j in data["jobs"]] == [f"{99:024x}"]
    assert data["complete"] and data["cursor"] == 0 and data["filter"] == "noop"
    out = kiq("retries", "--filter", "noop", "--retry", url=redis_url)
    assert out.returncode == 0 and out.stdout.strip() == "Retried 1 job.", out.stderr
    assert redis_client.zcard("retry") == 5
    assert json.loads(redis_client.lindex("queue:default", 0))["jid"] == f"{99:024x}"


def test_destructive_actions_refuse_without_a_tty_or_yes(store, redis_client, redis_url):
    fill(store, "retry", 3)
    for args in (["retries", "--delete"], ["retries", "--kill", "--all"],
                 ["retries", "--retry", "--all"], ["dead", "--delete", "--all"]):
        out = kiq(*args, url=redis_url)
        assert out.returncode == 4, args
        assert "pass --yes" in out.stderr and out.stderr.count("\n") == 1 and not out.stdout
    assert redis_client.zcard("retry") == 3


def test_confirmation_on_a_terminal(store, redis_client, redis_url):
    fill(store, "retry", 3)
    for answer, code, left in ((b"n\n", 4, 3), (b"y\n", 0, 0)):
        pid, fd = pty.fork()
        if pid == 0:  # the child: stdin, stdout and stderr are the terminal
            os.environ.update(KIQ_REDIS_URL=redis_url, KIQ_IMPORTS="tests.jobs",
                              DJANGO_SETTINGS_MODULE="testproject.settings")
            os.chdir(ROOT)
            os.execv(sys.executable, [sys.executable, "manage.py", "kiq", "retries", "--delete",
                                      "--all"])
        seen = b""
        while b"[y/N]" not in seen:
            seen += os.read(fd, 1024)
        assert b"Delete all 3 jobs of the retry set? This cannot be undone." in seen
        os.write(fd, answer)
        _, status = os.waitpid(pid, 0)
        os.close(fd)
        assert os.waitstatus_to_exitcode(status) == code
        assert redis_client.zcard("retry") == left


def test_whole_set_actions_with_yes(store, redis_client, redis_url):
    fill(store, "retry", 4)
    out = kiq("retries", "--kill", "--all", "--yes", "--json", url=redis_url)
    assert json.loads(out.stdout) == {"action": "kill", "selected": None, "done": 4}
    assert (redis_client.zcard("retry"), redis_client.zcard("dead")) == (0, 4)
    out = kiq("dead", "--retry", "--all", "--yes", url=redis_url)
    assert out.stdout.strip() == "Retried 4 jobs." and redis_client.llen("queue:default") == 4
    fill(store, "schedule", 3)
    store.schedule([(time.time() + 9, make(50, name="tests.jobs.noop"))], "schedule")
    out = kiq("scheduled", "--filter", "noop", "--delete", "--all", "-y", url=redis_url)
    assert out.stdout.strip() == "Deleted 1 job." and redis_client.zcard("schedule") == 3
    assert kiq("dead", "--kill", url=redis_url).returncode == 2  # dead has no kill
    out = kiq("retries", "--all", url=redis_url)
    assert out.returncode == 2 and "--all needs an action" in out.stderr


def test_bad_paging_is_a_usage_error(redis_client, redis_url):
    for args in (["--limit", "0"], ["--limit", "5000"], ["--offset", "-1"], ["--limit", "x"]):
        assert kiq("retries", *args, url=redis_url).returncode == 2, args


# -- queue, process -------------------------------------------------------------------------

def test_queue_shows_pauses_resumes_and_clears(store, redis_client, redis_url):
    store.push([("mail", make(i, queue="mail")) for i in range(3)])
    out = kiq("queue", "mail", url=redis_url)
    assert out.returncode == 0 and out.stdout.startswith("mail: 3 job(s)"), out.stderr
    assert out.stdout.splitlines()[1].split() == ["ENQUEUED", "JID", "JOB", "ARGS"]
    assert kiq("queue", "mail", "--pause", url=redis_url).stdout.strip() == "Queue mail paused."
    assert api.Queue("mail").paused
    data = json.loads(kiq("queue", "mail", "--json", url=redis_url).stdout)
    assert (data["name"], data["size"], data["paused"], len(data["jobs"])) == ("mail", 3, True, 3)
    kiq("queue", "mail", "--resume", url=redis_url)
    assert not api.Queue("mail").paused
    out = kiq("queue", "mail", "--clear", url=redis_url)
    assert out.returncode == 4 and redis_client.llen("queue:mail") == 3
    out = kiq("queue", "mail", "--clear", "--yes", "--json", url=redis_url)
    assert json.loads(out.stdout) == {"queue": "mail", "deleted": 3}
    assert redis_client.llen("queue:mail") == 0
    out = kiq("queue", "nosuch", url=redis_url)
    assert out.returncode == 3 and out.stderr.strip() == "Error: no queue named 'nosuch'"
    assert kiq("queue", "bad name", url=redis_url).returncode == 2


def test_process_shows_and_signals(store, redis_client, redis_url):
    raw = make(7)
    beat(store, "host1:42:abcdef", work={"kiq-processor-0": json.dumps(
        {"queue": "default", "payload": raw.decode(), "run_at": time.time() - 3})})
    beat(store, "host1:43:abcdef")
    out = kiq("process", "host1:42", url=redis_url)
    assert out.returncode == 0, out.stderr
    assert "kiq-processor-0" in out.stdout and f"{7:024x}" in out.stdout
    data = json.loads(kiq("process", "host1:42:abcdef", "--json", url=redis_url).stdout)
    assert data["work"][0]["jid"] == f"{7:024x}"
    assert kiq("process", "host1:4", url=redis_url).returncode == 2  # ambiguous prefix
    assert kiq("process", "nohost", "--stop", url=redis_url).returncode == 3
    assert kiq("process", "host1:42", "--quiet", url=redis_url).returncode == 0
    assert kiq("process", "host1:43", "--stop", url=redis_url).returncode == 0
    assert redis_client.lrange("host1:42:abcdef-signals", 0, -1) == [b"TSTP"]
    assert redis_client.lrange("host1:43:abcdef-signals", 0, -1) == [b"TERM"]


# -- enqueue, cancel --------------------------------------------------------------------------

def test_enqueue_registered_jobs_only(redis_client, redis_url):
    out = kiq("enqueue", "tests.jobs.add", "--args", "[1, 2]", "--json", url=redis_url)
    assert out.returncode == 0, out.stderr
    data = json.loads(out.stdout)
    assert (data["name"], data["queue"], data["at"]) == ("tests.jobs.add", "default", None)
    job = json.loads(redis_client.lindex("queue:default", 0))
    assert (job["jid"], job["class"], job["args"]) == (data["jid"], "tests.jobs.add", [1, 2])
    out = kiq("enqueue", "tests.jobs.record_kwargs", "--args", '["a"]', "--kwargs", '{"b": 2}',
              "--queue", "mail", "--in", "60", url=redis_url)
    assert out.returncode == 0 and "scheduled in 1m on queue mail" in out.stdout, out.stderr
    ((raw, at),) = redis_client.zrange("schedule", 0, -1, withscores=True)
    assert json.loads(raw)["queue"] == "mail" and json.loads(raw)["kwargs"] == {"b": 2}
    assert at == pytest.approx(time.time() + 60, abs=10)
    out = kiq("enqueue", "tests.jobs.ad", "--args", "[1, 2]", url=redis_url)
    assert out.returncode == 2 and "no job is registered as 'tests.jobs.ad'" in out.stderr
    assert "Did you mean tests.jobs.add" in out.stderr and out.stderr.count("\n") == 1
    for bad in (["--args", '{"a": 1}'], ["--args", "[1,"], ["--kwargs", "[]"],
                ["--queue", "bad name"], ["--in", "-1"]):
        out = kiq("enqueue", "tests.jobs.add", *bad, url=redis_url)
        assert out.returncode == 2 and out.stderr.startswith("Error: "), bad
    assert redis_client.llen("queue:default") == 1 and redis_client.zcard("schedule") == 1


def test_cancel(store, redis_client, redis_url):
    store.push([("default", make(5))])
    out = kiq("cancel", f"{5:024x}", "--json", url=redis_url)
    assert json.loads(out.stdout) == {"jid": f"{5:024x}", "where": "queue"}
    assert redis_client.llen("queue:default") == 0
    out = kiq("cancel", "f" * 24, url=redis_url)
    assert out.returncode == 3 and "not found" in out.stderr


# -- Redis unreachable ----------------------------------------------------------------------

def test_redis_unreachable_is_one_line_and_status_1(redis_url):
    for args in (["stats"], ["retries"], ["enqueue", "tests.jobs.add", "--args", "[1,2]"]):
        out = kiq(*args, url="redis://127.0.0.1:1/0")
        assert out.returncode == 1, (args, out.stderr)
        assert out.stderr.startswith("Error: Redis at 127.0.0.1:1/0: ")
        assert out.stderr.count("\n") == 1 and not out.stdout
