"""Decoded views of what Redis holds: job records, processes, metrics, search pages.

Pure data and decoding (frozen dataclasses), shared by ``django_kiq.api`` and the admin. A
:class:`JobRecord` keeps the exact member bytes beside the decoded fields, so an action on it
targets that very member.
"""

from __future__ import annotations

import base64
import hashlib
import json
import math
import zlib
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

from . import payload
from .exceptions import MalformedPayload
from .stats import HISTOGRAM_MS

DEFAULT_QUEUE = "default"
STANDIN_PREFIX = "raw-"  # jid of a member that has none (malformed): a digest of its bytes


@dataclass(frozen=True, slots=True, kw_only=True)
class JobRecord:
    """One job as found in Redis. ``key`` identifies the entry: ``f"{score!r}|{jid}"`` in a
    sorted set; ``f"{position}|{digest}"`` in a queue (its run-order position when read, a hint,
    and the digest of its exact bytes, so two jobs sharing a jid are told apart), or the jid for
    a record decoded on its own. Malformed members have ``malformed=True``, ``fields={}`` and a
    stand-in jid ``raw-<digest of the bytes>``."""

    jid: str
    name: str
    args: list
    kwargs: dict
    queue: str
    enqueued_at: float | None
    created_at: float | None
    retry_count: int | None
    error_class: str | None
    error_message: str | None
    error_backtrace: list[str] | None
    failed_at: float | None
    score: float | None
    fields: dict
    raw: bytes
    malformed: bool
    key: str

    @property
    def display_name(self) -> str:
        if self.malformed:
            return "(malformed payload)"
        for field_name in ("display_class", "wrapped"):
            value = self.fields.get(field_name)
            if isinstance(value, str) and value:
                return value
        return self.name


def decode_record(raw: bytes, score: float | None = None) -> JobRecord:
    try:
        job = payload.decode(raw)
    except MalformedPayload:
        jid = _standin_jid(raw)
        return JobRecord(jid=jid, name="", args=[], kwargs={}, queue="", enqueued_at=None,
                         created_at=None, retry_count=None, error_class=None, error_message=None,
                         error_backtrace=None, failed_at=None, score=score, fields={}, raw=raw,
                         malformed=True, key=_entry_key(score, jid))
    found = job.get("jid")
    jid = found if isinstance(found, str) and found else _standin_jid(raw)
    return JobRecord(
        jid=jid, name=job["class"], args=job["args"], kwargs=job.get("kwargs", {}),
        queue=_str(job.get("queue")) or DEFAULT_QUEUE, enqueued_at=_epoch(job.get("enqueued_at")),
        created_at=_epoch(job.get("created_at")), retry_count=_int(job.get("retry_count")),
        error_class=_str(job.get("error_class")), error_message=_str(job.get("error_message")),
        error_backtrace=_backtrace(job.get("error_backtrace")),
        failed_at=_epoch(job.get("failed_at")), score=score, fields=job, raw=raw,
        malformed=False, key=_entry_key(score, jid))


def member_digest(raw: bytes) -> str:
    """16 hex digits naming a member's exact bytes (two jobs differing anywhere differ here)."""
    return hashlib.blake2b(raw, digest_size=8).hexdigest()


def _standin_jid(raw: bytes) -> str:
    return STANDIN_PREFIX + member_digest(raw)


def _entry_key(score: float | None, jid: str) -> str:
    return jid if score is None else f"{score!r}|{jid}"


def parse_key(key: str) -> tuple[float, str]:
    """(score, jid) of a job set key; ValueError for anything else, NaN included (Redis refuses
    a NaN score range, and no member can have one)."""
    score, sep, jid = key.partition("|")
    try:
        if sep and jid and not math.isnan(value := float(score)):
            return value, jid
    except ValueError:
        pass
    raise ValueError(f"{key!r} is not a job set key ('<score>|<jid>')")


def queue_key(position: int, raw: bytes) -> str:
    """The key of a queue entry: run-order position when read (0 = next to run) and digest."""
    return f"{position}|{member_digest(raw)}"


def parse_queue_key(key: str) -> tuple[int, str]:
    """(position, digest) of a queue entry key; ValueError for anything else."""
    position, sep, digest = key.partition("|")
    if (sep and position.isascii() and position.isdigit() and len(digest) == 16
            and all(c in "0123456789abcdef" for c in digest)):
        return int(position), digest
    raise ValueError(f"{key!r} is not a queue entry key ('<position>|<digest>')")


def jid_needle(jid: str) -> bytes | None:
    """Bytes a member holding ``jid`` surely contains, or None when there are none to rely on.

    A JSON writer may escape ``"``, ``\\``, ``/``, control and non-ASCII characters (Ruby writes
    ``\\u`` escapes), so such a jid, and a stand-in jid (not in the bytes at all), can only be
    found by decoding every member.
    """
    plain = all(" " <= c <= "~" and c not in '"\\/' for c in jid)
    return jid.encode() if plain and not jid.startswith(STANDIN_PREFIX) else None


def _epoch(value: Any) -> float | None:
    """Epoch seconds from a float (Sidekiq <= 7) or integer milliseconds (Sidekiq 8)."""
    if isinstance(value, bool) or not isinstance(value, (int, float)):
        return None
    return value / 1000 if value > 1e11 else float(value)


def _int(value: Any) -> int | None:
    return value if isinstance(value, int) and not isinstance(value, bool) else None


def _str(value: Any) -> str | None:
    return value if isinstance(value, str) else None


def _backtrace(value: Any) -> list[str] | None:
    """A list of lines, or Ruby Sidekiq 6+'s base64 of zlib-deflated JSON."""
    if isinstance(value, list):
        return [str(line) for line in value]
    if isinstance(value, str):
        try:
            lines = json.loads(zlib.decompress(base64.b64decode(value)))
        except (ValueError, zlib.error):
            return [value]
        return [str(line) for line in lines] if isinstance(lines, list) else [value]
    return None


@dataclass(frozen=True, slots=True, kw_only=True)
class SearchPage:
    """Matches of one bounded search step; ``cursor`` 0 means the search is complete."""

    records: list[JobRecord]
    cursor: int
    scanned: int

    @property
    def complete(self) -> bool:
        return self.cursor == 0


@dataclass(frozen=True, slots=True, kw_only=True)
class QueueState:
    """A queue as one snapshot saw it: size, latency of its next job, paused or not."""

    name: str
    size: int
    latency: float
    paused: bool


@dataclass(frozen=True, slots=True, kw_only=True)
class WorkRecord:
    process: str
    thread: str
    queue: str
    run_at: float | None
    job: JobRecord
    stuck: bool = False  # past its time limit and not interruptible (blocked outside Python)
    progress: float | None = None  # current_job().progress(): percent (docs/workflows.md)
    progress_message: str = ""


@dataclass(frozen=True, slots=True, kw_only=True)
class Location:
    """Where :func:`django_kiq.api.locate` found a job: ``place`` is "queue", "busy" (running)
    or a job set's name ("schedule", "retry", "dead"); ``name`` the queue's name, the process's
    identity, or the set's name again; ``record`` the job as found there."""

    place: str
    name: str
    record: JobRecord


@dataclass(frozen=True, slots=True, kw_only=True)
class ProcessRecord:
    identity: str
    hostname: str
    pid: int | None
    tag: str
    queues: list[str]
    concurrency: int | None
    started_at: float | None
    busy: int
    beat: float | None
    quiet: bool
    rss_kb: int
    rtt_us: int
    version: str
    info: dict
    work: list[WorkRecord]


def _parse(text: str | None, cast: Callable[[str], Any]) -> Any:
    try:
        return cast(text) if text is not None else None
    except ValueError:
        return None


def _work_record(identity: str, thread: str, value: str) -> WorkRecord:
    entry = _parse(value, json.loads)
    entry = entry if isinstance(entry, dict) else {}
    job = entry.get("payload", "")
    # Sidekiq 7+ stores the job as a JSON string, Sidekiq 6 as an object.
    raw = job.encode() if isinstance(job, str) else json.dumps(job).encode()
    return WorkRecord(process=identity, thread=thread, queue=_str(entry.get("queue")) or "",
                      run_at=_epoch(entry.get("run_at")), job=decode_record(raw),
                      stuck=entry.get("stuck") is True, **_progress_of(entry))


def _progress_of(entry: dict[str, Any]) -> dict[str, Any]:
    """A work entry's progress, if it reported one (read from Redis: junk reads as none)."""
    pct: Any = entry.get("progress")
    if type(pct) not in (int, float) or not 0 <= pct <= 100:
        return {}
    return {"progress": pct, "progress_message": str(entry.get("progress_message") or "")[:200]}


def process_record(identity: str, state: dict[str, str], work: dict[str, str]) -> ProcessRecord:
    info = _parse(state.get("info"), json.loads)
    info = info if isinstance(info, dict) else {}
    return ProcessRecord(
        identity=identity, hostname=str(info.get("hostname", "")), pid=_int(info.get("pid")),
        tag=str(info.get("tag") or ""), queues=[str(q) for q in info.get("queues") or []],
        concurrency=_int(info.get("concurrency")), started_at=_epoch(info.get("started_at")),
        busy=_parse(state.get("busy"), int) or 0, beat=_parse(state.get("beat"), float),
        quiet=state.get("quiet") == "true", rss_kb=_parse(state.get("rss"), int) or 0,
        rtt_us=_parse(state.get("rtt_us"), int) or 0, version=str(info.get("version") or ""),
        info=info, work=sorted((_work_record(identity, t, v) for t, v in work.items()),
                               key=lambda w: w.thread))


@dataclass(frozen=True, slots=True, kw_only=True)
class JobMetrics:
    name: str
    processed: int
    failed: int
    total_seconds: float
    avg_seconds: float
    histogram: list[int]  # counts per bucket of stats.HISTOGRAM_MS, the last one "longer"


def job_metrics(name: str, fields: dict[str, int]) -> JobMetrics:
    processed, total = fields.get("p", 0), fields.get("ms", 0) / 1000
    return JobMetrics(name=name, processed=processed, failed=fields.get("f", 0),
                      total_seconds=total, avg_seconds=total / processed if processed else 0.0,
                      histogram=[fields.get(f"h{i}", 0) for i in range(len(HISTOGRAM_MS) + 1)])
