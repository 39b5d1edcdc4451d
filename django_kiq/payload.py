"""The wire format: Sidekiq's job hash as a JSON object, and strict argument checking.

A job hash holds ``class`` (the registered job name), ``args`` (JSON array), ``jid`` (24 hex
chars), ``queue``, ``retry``, ``created_at`` and ``enqueued_at`` (epoch seconds as floats), plus
``kwargs`` (django-kiq's keyword arguments, omitted when empty) and the failure fields written
by the retry machinery. Only JSON-native values are accepted, so what a job receives is exactly
what its caller passed, in Python or Ruby. Pure functions: no Redis, no settings.

JSON is written and read by orjson when it is installed (``pip install django-kiq[orjson]``;
decided once, at import), else by the standard library: the same bytes either way (compact
separators, UTF-8 rather than ``\\u`` escapes, keys in insertion order, shortest float digits;
only an exponent's leading zero differs, ``1e-7`` against ``1e-07``, and both parse to the same
float in Python and Ruby), and the same values read back. Both refuse NaN and infinities when
reading; orjson reads an integer wider than 64 bits as a float, so such a payload is read
again by the standard library, and orjson refuses to write one, so that hash is written by it
too. What orjson would write but the standard library refuses (datetimes, dataclasses, UUIDs,
subclasses of str/int) also falls back, so it fails the same way.
"""

from __future__ import annotations

import json
import math
import os
import secrets
from collections.abc import Iterator
from typing import Any

from .exceptions import MalformedPayload

try:
    import orjson
except ImportError:  # the stdlib path: same bytes, a few µs more per job
    orjson = None  # type: ignore[assignment]

_NATIVE_SCALARS = (str, int, bool, type(None))
_FLAT = frozenset(_NATIVE_SCALARS)  # exact types: an int subclass still gets the full check
# Lists/dicts nested deeper than this inside one argument are refused at enqueue. It bounds the
# check's recursion (a 100,000-deep list would otherwise end in RecursionError), and with the
# job hash and its args array around the argument the payload nests at most 100 levels: the
# default max_nesting of Ruby's JSON, so a Sidekiq process can parse every job we push.
MAX_NESTING = 98


# Jids handed out from one read of the random source per 256 (a syscall per enqueue was 1-2%
# of a single enqueue). next() on a list iterator is atomic; two threads refilling at once
# just read twice. A forked child starts a pool of its own, or it would repeat its parent's.
_JID_POOL = 256
_jid_pool: list[Iterator[str]] = [iter(())]


def new_jid() -> str:
    jid = next(_jid_pool[0], None)
    if jid is None:
        _jid_pool[0] = iter(new_jids(_JID_POOL))
        jid = next(_jid_pool[0])
    return jid


def _reset_jid_pool() -> None:
    _jid_pool[0] = iter(())


os.register_at_fork(after_in_child=_reset_jid_pool)


def new_jids(count: int) -> list[str]:
    """``count`` jids from one read of the system's random source (a syscall per job adds up
    in ``enqueue_many``)."""
    pool = secrets.token_hex(12 * count)
    return [pool[i:i + 24] for i in range(0, 24 * count, 24)]


def check_json_native(value: Any, where: str, _depth: int = 0) -> None:
    """Raise TypeError naming the first value that JSON would not give back unchanged
    (ValueError if lists/dicts nest deeper than ``MAX_NESTING``)."""
    if isinstance(value, _NATIVE_SCALARS):
        return
    if isinstance(value, float):
        if not math.isfinite(value):
            raise TypeError(f"{where} is {value!r}; NaN and infinity are not valid JSON")
        return
    if isinstance(value, (list, dict)) and _depth >= MAX_NESTING:
        raise ValueError(f"{where.partition('[')[0]} nests lists/dicts more than {MAX_NESTING} "
                         "levels deep; pass a flatter structure (or a reference to the data)")
    if isinstance(value, list):
        for i, item in enumerate(value):
            check_json_native(item, f"{where}[{i}]", _depth + 1)
        return
    if isinstance(value, dict):
        for key, item in value.items():
            if not isinstance(key, str):
                raise TypeError(f"{where} has a non-string key {key!r}; JSON keys are strings")
            check_json_native(item, f"{where}[{key!r}]", _depth + 1)
        return
    raise TypeError(
        f"{where} is a {type(value).__name__} ({value!r:.80}); job arguments must be JSON-native "
        "(None, bool, int, float, str, list, dict with str keys): pass an id or a string instead"
    )


def check_args(args: tuple | list, kwargs: dict) -> None:
    for i, value in enumerate(args):
        if type(value) not in _FLAT:  # most arguments are ids and strings: skip the call
            check_json_native(value, f"argument {i}")
    for name, value in kwargs.items():
        if type(value) not in _FLAT:
            check_json_native(value, f"argument {name!r}")


def build(*, name: str, args: tuple | list, kwargs: dict, queue: str, now: float,
          options: dict[str, Any] | None = None, jid: str | None = None) -> dict[str, Any]:
    """A new job hash; ``options`` are extra Sidekiq fields (retry, backtrace, dead, tags...)."""
    job: dict[str, Any] = {"class": name, "args": list(args)}
    if kwargs:
        job["kwargs"] = dict(kwargs)
    job["jid"] = jid or new_jid()
    job["queue"] = queue
    job["created_at"] = now
    if options:
        job.update(options)
    return job


def ready_for_queue(job: dict[str, Any], now: float, *,
                    default_queue: str = "default") -> dict[str, Any]:
    """The hash as it goes onto its queue: no ``at``, ``enqueued_at`` = now, a queue named.

    The one place a job is readied for its queue (client, scheduler, cron, API moves, test
    modes, the django.tasks backend), so the copies cannot disagree. Returns a new dict; like
    Sidekiq, a queued member never carries ``at`` (a Ruby poller would schedule it again).
    """
    ready = {key: value for key, value in job.items() if key != "at"}
    ready["enqueued_at"] = now
    if not isinstance(ready.get("queue"), str) or not ready["queue"]:
        ready["queue"] = default_queue
    return ready


def for_schedule(job: dict[str, Any]) -> dict[str, Any]:
    """The hash as it waits in the schedule set: its time lives in the score only."""
    return {key: value for key, value in job.items() if key != "at"}


# One shared encoder: json.dumps would build a new one per call on this hot path. allow_nan
# off: NaN and Infinity are not JSON (a Ruby process could not parse the job).
_ENCODER = json.JSONEncoder(separators=(",", ":"), ensure_ascii=False, check_circular=False,
                            allow_nan=False)


def _refuse_constant(name: str) -> None:
    raise ValueError(f"{name} is not valid JSON")


def _finite_float(text: str) -> float:
    value = float(text)
    if value - value != 0:  # 1e400 overflows to infinity
        raise ValueError(f"number {text} is out of range")
    return value


_DECODER = json.JSONDecoder(parse_constant=_refuse_constant, parse_float=_finite_float)


def encode_stdlib(job: dict[str, Any]) -> bytes:
    return _ENCODER.encode(job).encode()


def decode_json_stdlib(raw: bytes | str) -> Any:
    return _DECODER.decode(raw if isinstance(raw, str) else raw.decode())


if orjson is not None:
    # What the standard library would refuse or write differently raises here instead of being
    # written by orjson's own rules, and goes to the standard library (see the docstring).
    _OR_OPTIONS = (orjson.OPT_PASSTHROUGH_DATETIME | orjson.OPT_PASSTHROUGH_DATACLASS
                   | orjson.OPT_PASSTHROUGH_SUBCLASS)
    _OR_ENCODE_ERROR: type[Exception] = orjson.JSONEncodeError
    _OR_DECODE_ERROR: type[Exception] = orjson.JSONDecodeError
# orjson reads an integer outside [-2**63, 2**64) as a float: a float outside that range in
# its result may be one (or a float that large in the text); the stdlib reads such a payload.
_INT_LOW, _INT_HIGH = -(2.0 ** 63), 2.0 ** 64


def _exact(values: Any) -> bool:
    """False if a float among ``values`` (nested) may be a wide integer orjson read as float."""
    for value in values:
        kind = type(value)
        if kind is float:
            if not _INT_LOW < value < _INT_HIGH:
                return False
        elif kind is list:
            if not _exact(value):
                return False
        elif kind is dict and not _exact(value.values()):
            return False
    return True


def encode_orjson(job: dict[str, Any]) -> bytes:
    try:
        raw = orjson.dumps(job, option=_OR_OPTIONS)
    except _OR_ENCODE_ERROR:  # an int over 64 bits, a datetime...: the stdlib's rules
        return encode_stdlib(job)
    # orjson's bytes keep the buffer it wrote into: about a page each. A batch of them held
    # until the push (enqueue_many) faulted in a page per job (2 us here) and grew the RSS by
    # 4 KB per job; an exact-size copy costs 0.3 us.
    return bytes(memoryview(raw))


def decode_json_orjson(raw: bytes | str) -> Any:
    try:
        value = orjson.loads(raw)
    except _OR_DECODE_ERROR as exc:
        if "depth" in str(exc):  # orjson stops at 1024 levels, below Python's recursion
            raise RecursionError(str(exc)) from None
        raise
    if type(value) is dict and not _exact(value.values()):
        return decode_json_stdlib(raw)
    return value


#: The JSON backend in use: "orjson" or "json" (chosen at import).
BACKEND = "orjson" if orjson is not None else "json"
encode = encode_orjson if orjson is not None else encode_stdlib
decode_json = decode_json_orjson if orjson is not None else decode_json_stdlib


def decode(raw: bytes | str) -> dict[str, Any]:
    """Parse and validate a job hash; MalformedPayload says what is wrong with it."""
    try:
        job = decode_json(raw)
    except (ValueError, UnicodeDecodeError) as exc:
        raise MalformedPayload(f"payload is not valid JSON: {exc}") from None
    except RecursionError:
        raise MalformedPayload("payload is nested too deeply to decode") from None
    if not isinstance(job, dict):
        raise MalformedPayload(f"payload is a JSON {type(job).__name__}, not an object")
    if not isinstance(job.get("class"), str) or not job["class"]:
        raise MalformedPayload("payload has no 'class' string")
    if not isinstance(job.get("args"), list):
        raise MalformedPayload("payload has no 'args' array")
    if not isinstance(job.get("kwargs", {}), dict):
        raise MalformedPayload("payload's 'kwargs' is not an object")
    return job


def raw_text(raw: bytes | str) -> str:
    """The payload as text for a dead record, whatever bytes it holds."""
    return raw if isinstance(raw, str) else raw.decode("utf-8", errors="backslashreplace")


def malformed_record(raw: bytes, *, queue: str, reason: str, now: float) -> dict[str, Any]:
    """A dead-set entry standing in for a payload that is not a job, keeping its text."""
    return {
        "class": "django_kiq.MalformedPayload", "args": [], "jid": new_jid(), "queue": queue,
        "created_at": now, "failed_at": now, "retry": False, "retry_count": 0,
        "error_class": "django_kiq.exceptions.MalformedPayload", "error_message": reason,
        "raw_payload": raw_text(raw),
    }
