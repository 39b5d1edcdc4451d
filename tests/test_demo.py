"""The demo project's sample jobs (testproject/demo): ``manage.py kiq_demo`` enqueues every kind
the admin shows, workflows included, and a real worker runs them to their end."""

import json

from django.core.management import call_command

from django_kiq import api, batches, results
from tests.conftest import wait_for


def _results(redis_client) -> list[tuple[str, object]]:
    """(job class, value) of every result record in this run's database."""
    found = []
    for key in redis_client.scan_iter("kiq:result:*"):
        if key.endswith(b":done"):
            continue
        record = results.get(key.decode().removeprefix("kiq:result:"))
        if record is not None and record.status == "succeeded":
            found.append((redis_client.hget(key, "class").decode(), record.value))
    return found


def test_the_demo_enqueues_workflows_that_a_worker_runs_to_their_end(redis_client,
                                                                     worker_factory, capsys):
    call_command("kiq_demo", fast=3, slow=0, flaky=0, failing=0, scheduled=0, rows=30,
                 crunch_steps=1)
    out = capsys.readouterr().out
    assert "batch" in out and "a chain, a chord" in out
    _, found = batches.recent(0, 10)
    described = {b.description: b for b in found}
    assert "Demo import: 30 rows" in described and described["Demo import: 30 rows"].total == 30
    assert any(d.startswith("Demo chord") for d in described)
    worker = worker_factory("-c", "5", "-q", "default", "-q", "slow")
    importing = described["Demo import: 30 rows"]
    # Row 24 fails and is retried once about half a minute later (then dies): the batch is
    # complete with one failure, never succeeded; the other workflows end meanwhile.
    wanted = {("testproject.demo.jobs.total", 30),  # the chord: 2 + 4 + 6 + 8 + 10
              ("testproject.demo.jobs.double", 8),  # the chain: 1 doubled three times
              ("testproject.demo.jobs.crunch", '{"steps": 1}')}

    def finished() -> bool:
        return wanted <= {(name, json.dumps(value) if isinstance(value, dict) else value)
                          for name, value in _results(redis_client)}

    try:
        wait_for(finished, timeout=30)
    except AssertionError:
        raise AssertionError(f"results: {_results(redis_client)}\n"
                             f"{worker.output()[-3000:]}") from None
    wait_for(lambda: api.Batch(importing.bid).complete, timeout=20,
             message="the import batch never completed")
    status = api.Batch(importing.bid)
    assert (status.failures, status.pending, status.succeeded) == (1, 1, False)
    assert json.loads(redis_client.hget(f"kiq:batch:{importing.bid}", "cb_death"))["class"] == (
        "testproject.demo.jobs.import_finished")
