"""worker/logsetup.py: the django_kiq loggers' lines written by one writer thread, in batches,
to the user's own handlers; nothing lost at stop; the handlers given back."""

import io
import json
import logging
import threading

import pytest

from django_kiq.observability.logformat import JsonFormatter
from django_kiq.worker import logsetup


@pytest.fixture
def loggers():
    names = ["", "django_kiq", "django_kiq.job"]
    saved = {n: (logging.getLogger(n).handlers[:], logging.getLogger(n).propagate,
                 logging.getLogger(n).level) for n in names}
    for n in names:
        logging.getLogger(n).handlers = []
    logging.getLogger("django_kiq").setLevel(logging.INFO)
    yield {n: logging.getLogger(n) for n in names}
    for n, (handlers, propagate, level) in saved.items():
        log = logging.getLogger(n)
        log.handlers, log.propagate, log.level = handlers, propagate, level


def _stream_handler(formatter=None, level=logging.NOTSET):
    stream = io.StringIO()
    handler = logging.StreamHandler(stream)
    handler.setFormatter(formatter or logging.Formatter("%(levelname)s %(name)s %(message)s"))
    handler.setLevel(level)
    return handler, stream


def test_every_line_from_many_threads_written_in_order_per_thread_at_stop(loggers):
    handler, stream = _stream_handler()
    loggers["django_kiq"].addHandler(handler)
    writer = logsetup.install()
    assert isinstance(loggers["django_kiq"].handlers[0], logsetup.QueueingHandler)
    job_log = logging.getLogger("django_kiq.job")

    def work(t):
        for i in range(500):
            job_log.info("done t=%s i=%s", t, i)

    threads = [threading.Thread(target=work, args=(t,)) for t in range(4)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    writer.stop()
    lines = stream.getvalue().splitlines()
    assert len(lines) == 2000 and lines[0].startswith("INFO django_kiq.job done t=")
    for t in range(4):
        mine = [line for line in lines if f"t={t} " in line]
        assert mine == [f"INFO django_kiq.job done t={t} i={i}" for i in range(500)]
    assert loggers["django_kiq"].handlers == [handler]  # given back
    assert loggers["django_kiq"].propagate is True


def test_handler_levels_filters_and_the_json_format_apply(loggers):
    json_handler, json_stream = _stream_handler(JsonFormatter())
    warn_handler, warn_stream = _stream_handler(level=logging.WARNING)
    json_handler.addFilter(lambda r: "secret" not in r.getMessage())
    loggers["django_kiq"].addHandler(json_handler)
    loggers["django_kiq"].addHandler(warn_handler)
    writer = logsetup.install()
    log = logging.getLogger("django_kiq.job")
    log.info("done jid=%s", "abc", extra={"jid": "abc", "outcome": "done", "elapsed": 0.001})
    log.info("a secret line")
    log.warning("fail jid=%s", "def")
    log.debug("not at INFO")
    writer.stop()
    rows = [json.loads(line) for line in json_stream.getvalue().splitlines()]
    assert [r["message"] for r in rows] == ["done jid=abc", "fail jid=def"]
    assert rows[0]["jid"] == "abc" and rows[0]["outcome"] == "done"
    assert warn_stream.getvalue() == "WARNING django_kiq.job fail jid=def\n"


def test_root_handlers_reached_once_and_other_loggers_untouched(loggers):
    handler, stream = _stream_handler()
    loggers[""].handlers = [handler]  # here: pytest adds its capture handlers after fixtures
    writer = logsetup.install()
    assert loggers["django_kiq"].propagate is False
    assert loggers[""].handlers == [handler]
    logging.getLogger("django_kiq.job").warning("from kiq")
    logging.getLogger("django_kiq_other").warning("not ours")  # direct, synchronous
    assert stream.getvalue() == "WARNING django_kiq_other not ours\n"
    writer.stop()
    assert stream.getvalue().splitlines() == ["WARNING django_kiq_other not ours",
                                              "WARNING django_kiq.job from kiq"]
    assert loggers["django_kiq"].propagate is True and loggers["django_kiq"].handlers == []


def test_child_handlers_and_mutable_arguments(loggers):
    top, top_stream = _stream_handler()
    child, child_stream = _stream_handler()
    loggers["django_kiq"].addHandler(top)
    loggers["django_kiq.job"].addHandler(child)
    writer = logsetup.install()
    items = [1]
    logging.getLogger("django_kiq.job").info("items %s", items)
    items.append(2)  # after the call: the line shows the list as it was
    writer.stop()
    assert child_stream.getvalue() == top_stream.getvalue() == "INFO django_kiq.job items [1]\n"
    assert loggers["django_kiq.job"].handlers == [child]


def test_nothing_installed_without_a_handler_on_the_way(loggers):
    loggers[""].handlers = []
    assert logsetup.install() is None
    assert loggers["django_kiq"].handlers == []


def test_exceptions_are_formatted(loggers):
    handler, stream = _stream_handler()
    loggers["django_kiq"].addHandler(handler)
    writer = logsetup.install()
    try:
        raise ValueError("boom")
    except ValueError:
        logging.getLogger("django_kiq.job").exception("fail")
    writer.stop()
    assert "ValueError: boom" in stream.getvalue()
