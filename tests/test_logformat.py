"""``KIQ["LOG_FORMAT"] = "json"``: the formatter, the job fields the processor's log lines carry,
what the worker command does to handlers, and a real worker's output.
"""

import io
import json
import logging
import time

import pytest
from django.conf import settings
from django.test import override_settings

from django_kiq import payload
from django_kiq.checks import check_settings
from django_kiq.conf import get_settings
from django_kiq.observability import logformat
from django_kiq.observability.logformat import JsonFormatter
from django_kiq.stats import Counters
from django_kiq.worker.processor import Processor
from tests import jobs
from tests.conftest import wait_for

server = pytest.mark.django_db(transaction=True)


def _kiq(**changes):
    return override_settings(KIQ={**settings.KIQ, **changes})


def _record(msg="hello %s", args=("you",), level=logging.INFO, **extra):
    record = logging.LogRecord("django_kiq.job", level, __file__, 1, msg, args, None)
    record.__dict__.update(extra)
    return record


def test_one_json_object_per_line_with_the_basics():
    line = JsonFormatter().format(_record())
    assert "\n" not in line
    data = json.loads(line)
    assert data["level"] == "INFO" and data["logger"] == "django_kiq.job"
    assert data["message"] == "hello you"
    assert data["ts"].endswith("Z") and data["ts"][:2] == "20"
    assert set(data) == {"ts", "level", "logger", "message"}


def test_job_fields_exceptions_and_odd_values():
    try:
        raise ValueError("bad\nthing")
    except ValueError:
        import sys
        exc_info = sys.exc_info()
    record = _record(jid="abc", job="tests.jobs.noop", queue="default", elapsed=0.25,
                     outcome="fail", error="ValueError")
    record.exc_info = exc_info
    data = json.loads(JsonFormatter().format(record))
    assert {k: data[k] for k in ("jid", "job", "queue", "elapsed", "outcome", "error")} == {
        "jid": "abc", "job": "tests.jobs.noop", "queue": "default", "elapsed": 0.25,
        "outcome": "fail", "error": "ValueError"}
    assert "ValueError: bad\nthing" in data["exc_info"]
    odd = json.loads(JsonFormatter().format(_record(jid=object(), outcome=None)))
    assert odd["jid"].startswith("<object") and "outcome" not in odd


def test_trace_ids_of_the_current_span():
    from opentelemetry import trace
    from opentelemetry.sdk.trace import TracerProvider

    tracer = TracerProvider().get_tracer("tests")
    with trace.use_span(tracer.start_span("job"), end_on_exit=True) as span:
        data = json.loads(JsonFormatter().format(_record()))
    context = span.get_span_context()
    assert data["trace_id"] == f"{context.trace_id:032x}"
    assert data["span_id"] == f"{context.span_id:016x}"


@pytest.fixture
def job_log():
    """The ``django_kiq.job`` logger's lines, as a JSON handler writes them."""
    stream = io.StringIO()
    handler = logging.StreamHandler(stream)
    handler.setFormatter(JsonFormatter())
    logger = logging.getLogger("django_kiq.job")
    old_level = logger.level
    logger.addHandler(handler)
    logger.setLevel(logging.DEBUG)  # the start line is DEBUG
    yield lambda: [json.loads(line) for line in stream.getvalue().splitlines()]
    logger.removeHandler(handler)
    logger.setLevel(old_level)


def _process(job_obj, *args, **fields):
    job = payload.build(name=job_obj.name, args=args, kwargs={}, queue="default",
                        now=time.time(), options=job_obj.options.payload_fields())
    job.update(fields)
    return Processor(settings=get_settings(), counters=Counters()).process(
        "default", payload.encode(job), "t"), job["jid"]


@server
def test_processor_lines_carry_the_job_fields(job_log):
    _, done_jid = _process(jobs.noop, 1)
    _, fail_jid = _process(jobs.fail, "boom")
    _, expired_jid = _process(jobs.noop, 2, kiq_expires_at=time.time() - 1)
    lines = job_log()
    by = {(line.get("jid"), line["message"].split()[0]): line for line in lines}
    start = by[(done_jid, "start")]
    assert start["job"] == jobs.noop.name and start["queue"] == "default"
    assert "outcome" not in start and "elapsed" not in start
    done = by[(done_jid, "done")]
    assert done["outcome"] == "done" and 0 <= done["elapsed"] < 5
    fail = by[(fail_jid, "fail")]
    assert fail["level"] == "WARNING" and fail["outcome"] == "fail"
    assert fail["error"] == "ValueError" and fail["job"] == jobs.fail.name
    assert by[(expired_jid, "expired")]["outcome"] == "expired"


# -- what the worker command does ----------------------------------------------------------------

@pytest.fixture
def loggers():
    """Save and restore the handlers and propagation of the loggers apply() may change."""
    names = ["", "django_kiq", "django_kiq.job"]
    saved = {n: (logging.getLogger(n).handlers[:], logging.getLogger(n).propagate)
             for n in names}
    formatters = {id(h): h.formatter for n in names for h in logging.getLogger(n).handlers}

    def bare():  # called in the test: pytest adds its capture handlers after fixtures start
        for n in names:
            logging.getLogger(n).handlers = []
        return {n: logging.getLogger(n) for n in names}

    yield bare
    for n, (handlers, propagate) in saved.items():
        logging.getLogger(n).handlers = handlers
        logging.getLogger(n).propagate = propagate
        for handler in handlers:
            handler.setFormatter(formatters[id(handler)])


def test_apply_text_changes_nothing(loggers):
    loggers = loggers()
    handler = logging.StreamHandler()
    loggers["django_kiq"].addHandler(handler)
    logformat.apply("text")
    assert handler.formatter is None and loggers[""].handlers == []


def test_apply_json_with_nothing_configured_installs_a_root_handler(loggers):
    loggers = loggers()
    logformat.apply("json")
    [handler] = loggers[""].handlers
    assert isinstance(handler.formatter, JsonFormatter)
    assert loggers["django_kiq"].handlers == [] and loggers["django_kiq"].propagate


def test_apply_json_reformats_the_users_kiq_handlers(loggers):
    loggers = loggers()
    root_handler, kiq_handler, job_handler = (logging.StreamHandler() for _ in range(3))
    loggers[""].addHandler(root_handler)
    loggers["django_kiq"].addHandler(kiq_handler)
    loggers["django_kiq.job"].addHandler(job_handler)
    logformat.apply("json")
    assert isinstance(kiq_handler.formatter, JsonFormatter)
    assert isinstance(job_handler.formatter, JsonFormatter)
    assert root_handler.formatter is None  # not ours: left alone


def test_apply_json_with_only_a_root_handler_gives_kiq_its_own(loggers):
    loggers = loggers()
    root_handler = logging.StreamHandler()
    loggers[""].addHandler(root_handler)
    logformat.apply("json")
    [handler] = loggers["django_kiq"].handlers
    assert isinstance(handler.formatter, JsonFormatter)
    assert not loggers["django_kiq"].propagate  # not written twice
    assert root_handler.formatter is None


def test_checks_accept_text_and_json_only():
    for value in ("text", "json"):
        with _kiq(LOG_FORMAT=value):
            assert check_settings() == []
    with _kiq(LOG_FORMAT="xml"):
        assert [e.id for e in check_settings()] == ["django_kiq.E028"]


def test_worker_writes_json_lines(worker_factory, redis_client):
    worker = worker_factory("-c", "1", env={"KIQ_LOG_FORMAT": "json"})
    jid = jobs.noop.enqueue(7)

    def done_line():
        for line in worker.output().splitlines():
            if line.startswith("{") and f'"{jid}"' in line and '"done"' in line:
                return json.loads(line)
        return None

    line = wait_for(done_line, timeout=20, message=worker.output)
    assert line["job"] == jobs.noop.name and line["queue"] == "default"
    assert line["logger"] == "django_kiq.job" and isinstance(line["elapsed"], float)
    starting = [json.loads(l) for l in worker.output().splitlines()
                if l.startswith("{") and "starting" in l]
    assert starting and starting[0]["logger"] == "django_kiq.worker"
