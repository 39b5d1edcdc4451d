"""Storage verbs of periodic (cron) jobs: tick claims, pause state, last/next run.

A mixin of :class:`~django_kiq.storage.store.Storage`: methods use ``self.client`` and
``self.keys``. One HASH (``kiq:periodic``) holds the state of every entry, as fields
``<kind>:<entry name>``: ``tick`` (the last scheduled time handled, run or skipped while paused),
``paused`` ("1"), ``last_run`` (when it was last enqueued) and ``last_jid``. Tick claims are
short-lived STRING keys (``kiq:periodic:tick:<name>:<tick>``) written by ``periodic_fire.lua``.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass
from typing import cast

from .base import ScriptArg, StorageBase

FIELD_KINDS = ("tick", "paused", "last_run", "last_jid")


def _field(kind: str, name: str) -> str:
    return f"{kind}:{name}"


def _float(value: bytes | None) -> float | None:
    return None if value is None else float(value)


@dataclass(frozen=True, slots=True, kw_only=True)
class PeriodicState:
    """What Redis knows about one periodic entry."""

    tick: float | None = None  # scheduled time of the last tick handled (run or paused)
    paused: bool = False
    last_run: float | None = None  # when it was last enqueued (by a tick or by hand)
    last_jid: str | None = None


class PeriodicOps(StorageBase):
    def _register_periodic_scripts(self) -> None:
        """Called by ``Storage.__init__``: register this mixin's Lua scripts."""
        self._periodic_fire = self._script("periodic_fire")

    def periodic_fire(self, *, name: str, tick: float, identity: str, claim_ttl: float,
                      queue: str, raw: bytes, jid: str, now: float) -> int:
        """Claim ``tick`` of entry ``name`` and push ``raw`` if we won (``periodic_fire.lua``).

        Returns 1 pushed, 0 another process (or an earlier call) handled this tick, -1 claimed
        but the entry is paused.
        """
        k = self.keys
        keys = [k.periodic_tick(name, tick), k.periodic_state(), k.queue(queue), k.queues]
        args: list[ScriptArg] = [identity, max(1, math.ceil(claim_ttl)), repr(float(tick)), queue,
                                 raw, jid, repr(now), *(_field(kind, name) for kind in FIELD_KINDS)]
        return int(self._periodic_fire(keys=keys, args=args))

    def periodic_states(self, names: Sequence[str]) -> dict[str, PeriodicState]:
        """The stored state of each named entry (defaults for names never seen)."""
        if not names:
            return {}
        fields = [_field(kind, name) for name in names for kind in FIELD_KINDS]
        values = cast("list[bytes | None]", self.client.hmget(self.keys.periodic_state(), fields))
        states = {}
        for i, name in enumerate(names):
            tick, paused, last_run, last_jid = values[i * 4:i * 4 + 4]
            states[name] = PeriodicState(
                tick=_float(tick), paused=paused == b"1", last_run=_float(last_run),
                last_jid=None if last_jid is None else last_jid.decode())
        return states

    def periodic_set_paused(self, name: str, paused: bool) -> None:
        key, field = self.keys.periodic_state(), _field("paused", name)
        if paused:
            self.client.hset(key, field, "1")
        else:
            self.client.hdel(key, field)

    def periodic_record_run(self, name: str, jid: str, now: float) -> None:
        """Record a run enqueued outside the ticks (``enqueue_now``); the tick cursor stays."""
        self.client.hset(self.keys.periodic_state(), mapping={
            _field("last_run", name): repr(now), _field("last_jid", name): jid})
