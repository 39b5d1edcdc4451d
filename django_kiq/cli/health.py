"""``manage.py kiq_health``: is a worker alive? For container probes and service monitors.

A worker is alive when its process hash exists (it expires PROCESS_TTL after the last write) and
the ``beat`` time in it is younger than PROCESS_TTL (or ``--max-age``): the hash alone is not
enough, because between beats the work refresh extends its TTL without a new ``beat``, so a
worker whose heartbeat is stuck could keep the hash alive. Ages are measured on Redis's clock:
``beat`` is written with the worker's clock, which runs ``offset`` seconds ahead of Redis's (the
offset the worker's poller publishes; 0 when none is published), so a skewed clock on either
host does not make a live worker look dead. :func:`judge` decides, from what was read; it is
pure, so tests give it any ``now``.
"""

from __future__ import annotations

import socket
from collections.abc import Mapping, Sequence
from dataclasses import dataclass

from .. import storage
from ..records import ProcessRecord, process_record
from .output import duration


@dataclass(frozen=True, slots=True, kw_only=True)
class Verdict:
    healthy: bool
    reason: str  # one line, for the probe's log


def judge(processes: Sequence[ProcessRecord], *, now: float, max_age: float,
          offsets: Mapping[str, float], identity: str | None = None,
          hostname: str | None = None) -> Verdict:
    """Healthy if one of the processes meant (those whose identity, or whose supervisor's,
    starts with ``identity``, else those on ``hostname``, else any) has a beat younger than
    ``max_age`` seconds at Redis time ``now``."""
    if identity is not None:  # an identity, or a prefix of one such as "host:pid:"
        meant = [p for p in processes if _named(p, identity)]
        who = f"process {identity}"
    elif hostname is not None:
        meant = [p for p in processes if p.hostname == hostname]
        who = f"any worker on host {hostname}"
    else:
        meant, who = list(processes), "any worker"
    if not meant:
        return Verdict(healthy=False, reason=f"no live heartbeat from {who} (stopped, or "
                                             "never started)")
    ages = {p.identity: _age(p, now, offsets) for p in meant}
    fresh = sorted((age, ident) for ident, age in ages.items() if age < max_age)
    if fresh:
        age, ident = fresh[0]
        others = f" (+{len(fresh) - 1} more)" if len(fresh) > 1 else ""
        return Verdict(healthy=True, reason=f"ok: {ident} beat {duration(age)} ago{others}")
    age, ident = min((age, ident) for ident, age in ages.items())
    last = f"last beat {duration(age)} ago" if age != float("inf") else "no readable beat"
    return Verdict(healthy=False, reason=f"stale heartbeat from {who}: {ident} {last} "
                                         f"(limit {duration(max_age)})")


def _named(p: ProcessRecord, prefix: str) -> bool:
    """Whether ``p``'s identity, or that of the ``kiq_worker --processes`` supervisor that
    forked it (in its info, read from Redis: checked), starts with ``prefix``."""
    if p.identity.startswith(prefix):
        return True
    parent = p.info.get("supervisor")
    identity = parent.get("identity") if isinstance(parent, dict) else None
    return isinstance(identity, str) and identity.startswith(prefix)


def _age(p: ProcessRecord, now: float, offsets: Mapping[str, float]) -> float:
    if p.beat is None:
        return float("inf")  # no readable beat: not a sign of life
    return now - (p.beat - offsets.get(p.identity, 0.0))


def check(store: storage.Storage, *, max_age: float, identity: str | None = None,
          this_host: bool = False) -> Verdict:
    """Read the live processes, their clock offsets and Redis's clock; raises RedisError."""
    processes = [process_record(*state) for state in store.process_states()]
    return judge(processes, now=store.server_time(), max_age=max_age,
                 offsets=store.clock_offsets(), identity=identity,
                 hostname=socket.gethostname() if this_host else None)
