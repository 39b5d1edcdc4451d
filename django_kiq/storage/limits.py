"""Storage verbs of flow control: take and give back room in a limiter, read and reset them.

A mixin of :class:`~django_kiq.storage.store.Storage` (methods use ``self.client``,
``self.keys`` and ``self._script``). Called from any thread that uses a limiter (a job's
processor thread, a web request), from the worker's heartbeat thread (orphan recovery releases a
dead process's leases) and from the read/manage API (the admin's Limits page). It holds no
state. An acquisition is one script call (``limit_acquire.lua``, Redis's clock); a release is
one more (``limit_release.lua``). Times cross this boundary in seconds; Redis holds milliseconds.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, cast

from .base import StorageBase

if TYPE_CHECKING:
    from redis.client import Pipeline

META_TTL_MS = 25 * 3600 * 1000  # a limiter unused for a day leaves the admin's list, then Redis
REGISTRY_HORIZON_MS = 24 * 3600 * 1000


@dataclass(frozen=True, slots=True, kw_only=True)
class Grant:
    """The answer to an acquisition: taken, or the seconds until room is expected."""

    allowed: bool
    wait: float
    at: float  # Redis's clock when the script ran, epoch seconds (ms precision)


@dataclass(frozen=True, slots=True, kw_only=True)
class LimitState:
    """One limiter as Redis holds it (decoded; ``state`` as ``limit_rules.usage`` takes it)."""

    name: str
    last_used: float
    kind: str
    size: int
    span: float  # seconds: lock_timeout (concurrent) or the interval
    acquired: int
    throttled: int
    rescheduled: int
    state: Any


class LimitOps(StorageBase):
    def _register_limit_scripts(self) -> None:
        """Called by ``Storage.__init__``: register this mixin's Lua scripts."""
        self._limit_acquire = self._script("limit_acquire")
        self._limit_reap = self._script("limit_reap")
        self._limit_release = self._script("limit_release")

    def limit_acquire(self, *, kind: str, name: str, size: int, span: float, member: str = "",
                      holder: str = "", note: bool = True, reuse: float = 0.0) -> Grant:
        """Take room in limiter ``name`` (``span``: lock_timeout or interval, seconds).

        ``member`` is the lease (concurrent) or a unique token (bucket); ``holder`` the
        identity of the process taking a lease; ``note`` records the use for the admin;
        ``reuse``: seconds a lease outlives ``span``, the window in which its process may
        reuse it (``limit_leases.py``).
        """
        state = self.keys.limit(name)
        holds = self.keys.limit_holds(holder) if kind == "concurrent" else state
        allowed, wait_ms, now_ms = self._limit_acquire(
            keys=[state, self.keys.limit(name, "meta"), self.keys.limits, holds],
            args=[kind, size, repr(span * 1000.0), member, name, "1" if note else "0",
                  META_TTL_MS, REGISTRY_HORIZON_MS, repr(reuse * 1000.0)])
        return Grant(allowed=allowed == 1, wait=int(wait_ms) / 1000.0, at=int(now_ms) / 1000.0)

    def limit_release(self, name: str, member: str, reused: int = 0) -> bool:
        """Give a concurrent lease back, adding the ``reused`` blocks it also served to the
        limiter's count of uses; False if it was no longer held (expired, reset or reaped)."""
        return self._limit_release(keys=[self.keys.limit(name), self.keys.limit(name, "meta")],
                                   args=[member, reused]) == 1

    def limit_count_reschedule(self, name: str) -> None:
        self.client.hincrby(self.keys.limit(name, "meta"), "rescheduled", 1)

    def limit_reap(self, identity: str) -> int:
        """Release every lease of dead process ``identity``; -1 if it turned out to be alive."""
        holds = self.keys.limit_holds(identity)
        names = [_text(n) for n in cast("list[bytes]", self.client.zrange(holds, 0, -1))]
        return int(self._limit_reap(
            keys=[self.keys.process(identity), holds, *(self.keys.limit(n) for n in names)],
            args=[f"{identity}|"]))

    def limit_names(self, since: float) -> list[tuple[str, float]]:
        """(name, last used) of the limiters used since ``since`` (epoch seconds), by name."""
        rows = cast("list[tuple[bytes, float]]",
                    self.client.zrangebyscore(self.keys.limits, since * 1000.0, "+inf",
                                              withscores=True))
        return sorted((_text(name), score / 1000.0) for name, score in rows)

    def limit_states(self, names: Sequence[tuple[str, float]]) -> tuple[float, list[LimitState]]:
        """Redis's clock and the state of each named limiter (two round trips)."""
        pipe = self.client.pipeline(transaction=False)
        pipe.time()
        for name, _ in names:
            pipe.hgetall(self.keys.limit(name, "meta"))
        (seconds, micros), *metas = pipe.execute()
        return seconds + micros / 1e6, self._limit_states_of(names, metas)

    def _limit_states_of(self, names: Sequence[tuple[str, float]],
                         metas: Sequence[dict]) -> list[LimitState]:
        """Each named limiter's state, from its meta hash as read (one more round trip)."""
        texts = [{_text(k): _text(v) for k, v in m.items()} for m in metas]
        pipe = self.client.pipeline(transaction=False)
        for (name, _), meta in zip(names, texts):
            _read_state(pipe, meta.get("kind", ""), self.keys.limit(name))
        out = []
        for (name, last), meta, raw in zip(names, texts, pipe.execute()):
            kind = meta.get("kind", "")
            out.append(LimitState(
                name=name, last_used=last, kind=kind, size=_int(meta.get("size")),
                span=_int(meta.get("span")) / 1000.0, acquired=_int(meta.get("acquired")),
                throttled=_int(meta.get("throttled")), rescheduled=_int(meta.get("rescheduled")),
                state=_decode_state(kind, raw)))
        return out

    def limit_reset(self, name: str) -> None:
        """Empty a limiter (its leases, window or log) and zero its counters."""
        pipe = self.client.pipeline(transaction=True)
        pipe.delete(self.keys.limit(name))
        pipe.hdel(self.keys.limit(name, "meta"), "acquired", "throttled", "rescheduled")
        pipe.execute()


def _read_state(pipe: Pipeline, kind: str, key: str) -> None:
    if kind in ("concurrent", "bucket"):
        pipe.zrange(key, 0, -1, withscores=True)
    elif kind == "window":
        pipe.hmget(key, "w", "n")
    else:  # leaky, or a meta hash that expired: GET answers nil for both
        pipe.get(key) if kind == "leaky" else pipe.echo("")


def _decode_state(kind: str, raw: Any) -> Any:
    """What limit_rules.usage takes, in seconds; values read from Redis are checked."""
    try:
        if kind in ("concurrent", "bucket"):
            return [score / 1000.0 for _, score in raw]
        if kind == "window":
            return (int(float(raw[0])), int(raw[1])) if raw[0] is not None else None
        if kind == "leaky":
            return float(raw) / 1000.0 if raw is not None else None
    except (TypeError, ValueError):
        pass
    return None


def _int(value: Any) -> int:
    try:
        return int(float(value))
    except (TypeError, ValueError):
        return 0


def _text(value: bytes | str) -> str:
    return value.decode("utf-8", "replace") if isinstance(value, bytes) else value
