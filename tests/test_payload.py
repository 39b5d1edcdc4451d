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


# -- the JSON backends: orjson when installed (the dev extra has it), the stdlib otherwise --------

BACKENDS = [pytest.param((payload.encode_stdlib, payload.decode_json_stdlib), id="stdlib")]
if payload.orjson is not None:
    BACKENDS.append(pytest.param((payload.encode_orjson, payload.decode_json_orjson), id="orjson"))


@pytest.fixture(params=BACKENDS)
def backend(request, monkeypatch):
    """payload.encode/decode running on one backend, as if it had been chosen at import."""
    encode, decode_json = request.param
    monkeypatch.setattr(payload, "encode", encode)
    monkeypatch.setattr(payload, "decode_json", decode_json)
    return encode


def test_dev_extra_installs_orjson():
    # CI runs with the dev extra: the fast path is the one the suite exercises by default.
    assert payload.BACKEND == "orjson" and payload.encode is payload.encode_orjson


WIRE = {"class": "X", "args": [1, -2, 2 ** 63 - 1, -2 ** 63, 2 ** 64 - 1, 0.1, 1e-7, 1e20,
                               1.0, -0.0, "é ☃ 𝄞", "\u2028\x7f\x00\n\"\\/", True, None,
                               {"z": 1, "a": [{}], "ü": []}],
        "kwargs": {"b": 1, "a": 2}, "jid": "a" * 24, "queue": "q", "created_at": 1764500000.1234567}


def test_backends_write_the_same_bytes():
    stdlib = payload.encode_stdlib(WIRE)
    assert stdlib.startswith(b'{"class":"X","args":[1,-2,')  # key order kept, compact
    assert "é ☃ 𝄞".encode() in stdlib  # UTF-8, not \\u escapes
    if payload.orjson is not None:
        fast = payload.encode_orjson(WIRE)
        # Only the exponent's leading zero differs (1e-07 / 1e-7): the same float either way.
        assert fast == stdlib.replace(b"1e-07", b"1e-7")
        assert payload.decode_json_orjson(fast) == payload.decode_json_stdlib(stdlib) == WIRE


def test_round_trip_on_each_backend(backend):
    raw = payload.encode(WIRE)
    assert payload.decode(raw) == WIRE
    assert [type(v) for v in payload.decode(raw)["args"]] == [type(v) for v in WIRE["args"]]


@pytest.mark.parametrize("big", [2 ** 64, -(2 ** 63) - 1, 10 ** 40, -(10 ** 40)])
def test_integers_wider_than_64_bits_survive_on_each_backend(backend, big):
    # orjson refuses to write them and reads them as floats: both fall back to the stdlib,
    # so the job gets back exactly the int it was given (Ruby reads them as Bignums).
    job = {"class": "X", "args": [big, [{"n": big}]], "jid": "j", "queue": "q"}
    raw = payload.encode(job)
    assert str(big).encode() in raw
    back = payload.decode(raw)
    assert back == job and type(back["args"][0]) is int and type(back["args"][1][0]["n"]) is int


def test_large_floats_stay_floats_on_each_backend(backend):
    job = {"class": "X", "args": [1e20, -1e300, 1.8446744073709552e19], "jid": "j"}
    back = payload.decode(payload.encode(job))
    assert back == job and all(type(v) is float for v in back["args"])


@pytest.mark.parametrize("raw", [b'{"class":"X","args":[NaN]}', b'{"class":"X","args":[Infinity]}',
                                 b'{"class":"X","args":[-Infinity]}', b'{"class":"X","args":[1e400]}'])
def test_non_finite_numbers_refused_when_read_on_each_backend(backend, raw):
    with pytest.raises(MalformedPayload, match="not valid JSON"):
        payload.decode(raw)


def test_nan_refused_at_enqueue_whatever_the_backend(backend):
    # The argument check runs before any encoding, so it is the same with either library.
    with pytest.raises(TypeError, match="NaN and infinity"):
        payload.check_args((), {"x": [float("nan")]})


def test_stdlib_encoder_refuses_nan():
    with pytest.raises(ValueError):
        payload.encode_stdlib({"class": "X", "args": [float("inf")]})


@pytest.mark.parametrize("value", [dt.datetime(2026, 1, 1), decimal.Decimal("1"), {1, 2}])
def test_values_json_refuses_are_refused_on_each_backend(backend, value):
    # orjson would write a datetime as a string; here it fails like the stdlib does.
    with pytest.raises(TypeError):
        payload.encode({"class": "X", "args": [value]})


def test_malformed_payloads_on_each_backend(backend):
    for raw, reason in [(b"{not json", "not valid JSON"), (b'\xff\xfe{"class"', "not valid JSON"),
                        (b"[" * 100_000 + b"]" * 100_000, "nested too deeply")]:
        with pytest.raises(MalformedPayload, match=reason):
            payload.decode(raw)
