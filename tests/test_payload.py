"""The wire format: strict JSON-native args and decoding of untrusted payloads."""

import datetime as dt
import decimal

import pytest

from django_kiq import payload
from django_kiq.exceptions import MalformedPayload


@pytest.mark.parametrize("value", [None, True, 1, 1.5, "s", [1, [2]], {"a": {"b": [None]}}])
def test_json_native_accepted(value):
    payload.check_args((value,), {"k": value})


@pytest.mark.parametrize("value, where", [
    (dt.datetime(2026, 1, 1), "argument 0"),
    (decimal.Decimal("1"), "argument 0"),
    ((1, 2), "argument 0"),
    ({1: "x"}, "argument 0"),
    ([1, {"a": {1, 2}}], "argument 0[1]['a']"),
    (float("nan"), "argument 0"),
])
def test_non_native_rejected_naming_the_argument(value, where):
    with pytest.raises(TypeError) as info:
        payload.check_args((value,), {})
    assert str(info.value).startswith(where)


def test_kwargs_named_in_error():
    with pytest.raises(TypeError, match="argument 'when'"):
        payload.check_args((), {"when": dt.date.today()})


def test_build_and_round_trip():
    job = payload.build(name="X", args=[1], kwargs={"a": 2}, queue="q", now=10.5,
                        options={"retry": 3})
    assert len(job["jid"]) == 24 and int(job["jid"], 16) >= 0
    assert payload.decode(payload.encode(job)) == job
    assert "kwargs" not in payload.build(name="X", args=[], kwargs={}, queue="q", now=1)


@pytest.mark.parametrize("raw, reason", [
    (b"{not json", "not valid JSON"),
    (b"[1, 2]", "not an object"),
    (b'{"args": []}', "no 'class'"),
    (b'{"class": "X"}', "no 'args'"),
    (b'{"class": "X", "args": {}}', "no 'args'"),
    (b'{"class": "X", "args": [], "kwargs": []}', "'kwargs'"),
    (b'\xff\xfe{"class"', "not valid JSON"),
    (b"[" * 100_000 + b"]" * 100_000, "nested too deeply"),
])
def test_malformed_payloads(raw, reason):
    with pytest.raises(MalformedPayload, match=reason):
        payload.decode(raw)


def test_malformed_record_keeps_raw_text():
    record = payload.malformed_record(b"\xffoops", queue="q", reason="bad", now=5.0)
    assert record["raw_payload"] == "\\xffoops"
    assert record["error_message"] == "bad"
    assert payload.decode(payload.encode(record))["class"] == "django_kiq.MalformedPayload"
