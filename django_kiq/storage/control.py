"""Storage verbs of execution control: unique locks, cancellations and iterable checkpoints.

A mixin of :class:`~django_kiq.storage.store.Storage` (methods use ``self.client``,
``self.keys`` and ``self._script``). Called from the enqueueing thread (unique pushes), the
read/manage API (cancel, lock release when a job is deleted) and a worker's processor and
watchdog threads (checkpoints, polling cancellations). It holds no state of its own. Outcomes
that end a lock or a checkpoint go through ``settle.lua`` so they happen in the job's own
settle step (see :class:`~django_kiq.storage.store.Settle`).
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, cast

from .base import ScriptArg, StorageBase
from .keys import Keys

if TYPE_CHECKING:
    from .batches import BatchMark, ResultWrite

#: Recent cancellations kept in Redis, so a job cancelled while in flight is still dropped.
CANCELLATIONS_KEPT = 10_000


@dataclass(frozen=True, slots=True, kw_only=True)
class UniquePush:
    """One unique job to push: where, and the lock it takes."""

    digest: str
    jid: str
    ttl_ms: int
    raw: bytes
    queue: str = ""  # for a push onto a queue
    at: float | None = None  # for a scheduled job


@dataclass(frozen=True, slots=True, kw_only=True)
class Checkpoint:
    cursor: str  # the JSON text of the last cursor the job yielded
    done: int  # items done so far
    saved_at: float


class ControlOps(StorageBase):
    def _register_control_scripts(self) -> None:
        """Called by ``Storage.__init__``: register this mixin's Lua scripts."""
        self._unique_push = self._script("unique_push")
        self._cancel = self._script("cancel")
        self._unlock = self._script("unlock")

    # -- unique jobs -------------------------------------------------------------------------

    def push_unique(self, items: Sequence[UniquePush]) -> list[str | None]:
        """Take each job's lock and push it, atomically per job, in one round trip.

        Returns, per item, None when it was pushed, or the jid of the job holding the lock.
        """
        pipe = self.client.pipeline(transaction=False)
        for item in items:
            keys, args = unique_push_call(self.keys, item)
            self._unique_push(keys=keys, args=args, client=pipe)
        return unique_holders(pipe.execute())

    def release_unique(self, pairs: Sequence[tuple[str, str]]) -> None:
        """Release (digest, jid) locks that those jids still hold (one round trip)."""
        if not pairs:
            return
        pipe = self.client.pipeline(transaction=False)
        for digest, jid in pairs:
            self._unlock(keys=[self.keys.unique(digest)], args=[jid], client=pipe)
        pipe.execute()

    def unique_holder(self, digest: str) -> tuple[str, float] | None:
        """The jid holding a lock and its remaining TTL in seconds, or None if free."""
        pipe = self.client.pipeline(transaction=False)
        pipe.get(self.keys.unique(digest))
        pipe.pttl(self.keys.unique(digest))
        holder, pttl = pipe.execute()
        if holder is None:
            return None
        return _text(holder), max(0, int(pttl)) / 1000.0

    # -- cancellation ------------------------------------------------------------------------

    def record_cancellation(self, jid: str, *, by: str = "", where: str = "",
                            member: bytes = b"", container: str = "",
                            digest: str = "", record: bool = True,
                            result: ResultWrite | None = None,
                            batch: BatchMark | None = None) -> bool:
        """Record that ``jid`` is cancelled (unless ``record`` is False); remove ``member`` from
        where it waits.

        ``where`` is "list" (``container`` a queue name) or "zset" (``container`` "schedule" or
        "retry"), "gone" (the caller removed it already), or "" when the job is not known to
        be waiting. Returns True if the waiting member was removed (and counted in
        ``stat:cancelled``, its unique lock released, ``result`` written and ``batch`` counted).
        """
        unused = self.keys.cancellations
        if where == "list":
            key = self.keys.queue(container)
        elif where == "zset":
            key = self.keys.sorted_set(container)
        else:
            key = unused
        lock = self.keys.unique(digest) if digest else unused
        more_keys, more_args, cleanups = self.workflow_settle_args(result, batch)
        removed = self._cancel(
            keys=[self.keys.cancellations, self.keys.cancellation_seq, key, lock,
                  self.keys.stat("cancelled"), *more_keys],
            args=[jid, by.replace(" ", "_"), where, member, CANCELLATIONS_KEPT,
                  "1" if record else "0", cleanups, *more_args])
        return int(removed) == 1

    def in_progress(self) -> list[bytes]:
        """Every job some process has taken and not finished (its in-progress list), live or
        dead (not recovered yet): small lists, read in one round trip after the registry."""
        identities = [i.decode()
                      for i in cast("list[bytes]", self.client.hkeys(self.keys.wip_registry))]
        if not identities:
            return []
        pipe = self.client.pipeline(transaction=False)
        for identity in identities:
            pipe.lrange(self.keys.wip(identity), 0, -1)
        return [raw for items in pipe.execute() for raw in items]

    def cancellations_since(self, seq: int, limit: int = 1000) -> tuple[int, list[tuple[str, str]]]:
        """Cancellations recorded after ``seq`` (-1: all kept): (last sequence seen, [(jid, who)])."""
        rows = cast("list[tuple[bytes, float]]",
                    self.client.zrangebyscore(self.keys.cancellations, f"({seq}", "+inf",
                                              start=0, num=limit, withscores=True))
        last = seq
        out = []
        for member, score in rows:
            jid, _, by = _text(member).partition(" ")
            out.append((jid, by))
            last = max(last, int(score))
        return last, out

    # -- iterable checkpoints ----------------------------------------------------------------

    def save_checkpoint(self, jid: str, *, cursor: str, done: int, now: float,
                        ttl: int) -> None:
        key = self.keys.cursor(jid)
        pipe = self.client.pipeline(transaction=True)
        pipe.hset(key, mapping={"cursor": cursor, "done": done, "saved_at": repr(now)})
        pipe.expire(key, ttl)
        pipe.execute()

    def load_checkpoint(self, jid: str) -> Checkpoint | None:
        values = self.client.hgetall(self.keys.cursor(jid))
        if not values or b"cursor" not in values:
            return None
        try:
            return Checkpoint(cursor=_text(values[b"cursor"]), done=int(values.get(b"done", 0)),
                              saved_at=float(values.get(b"saved_at", 0)))
        except ValueError:  # read from Redis: a damaged checkpoint restarts from the beginning
            return None


def unique_push_call(keys: Keys, item: UniquePush) -> tuple[list[str], list[ScriptArg]]:
    """``unique_push.lua``'s KEYS and ARGV for one job (shared by the sync and async clients)."""
    if item.at is None:
        return ([keys.unique(item.digest), keys.queues, keys.queue(item.queue)],
                ["q", item.jid, item.ttl_ms, item.raw, item.queue])
    return ([keys.unique(item.digest), keys.queues, keys.schedule],
            ["z", item.jid, item.ttl_ms, item.raw, repr(float(item.at))])


def unique_holders(replies: Sequence[Any]) -> list[str | None]:
    """Per job: None when ``unique_push.lua`` pushed it, else the jid holding its lock."""
    return [None if int(reply[0]) == 1 else _text(reply[1]) for reply in replies]


def _text(value: bytes | str) -> str:
    return value.decode("utf-8", "replace") if isinstance(value, bytes) else value
