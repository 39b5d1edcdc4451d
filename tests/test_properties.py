"""Property-based tests: the payload codec, and the delivery invariant against the real Redis.

The state machine drives the storage verbs (push, schedule, fetch with acks, settle to retry /
dead / queue / discard), the poller (claim + settle, and a poller that dies between the two) and
orphan recovery (a process whose heartbeat vanished), and mirrors every Redis list in Python.
After each step every job id must be in exactly one place (a queue, an in-progress list, the
retry/schedule/dead set, or acknowledged/discarded) and every list must match the mirror, order
included. Each example runs under a namespace of its own in the claimed test DB.
"""

from __future__ import annotations

import itertools
import json
import secrets
import time

from hypothesis import given, settings, strategies as st
from hypothesis.stateful import (RuleBasedStateMachine, initialize, invariant, precondition,
                                 rule, run_state_machine_as_test)

from django_kiq import payload
from django_kiq.conf import get_settings
from django_kiq.storage import Keys, Settle, Storage
from django_kiq.worker.fetcher import APART, Fetcher, QueueOrder, recover_orphans
from django_kiq.worker.scheduler import Poller

# -- the codec -----------------------------------------------------------------------------------

scalars = st.none() | st.booleans() | st.integers() | st.text() | st.floats(
    allow_nan=False, allow_infinity=False)
json_values = st.recursive(scalars, lambda inner: st.lists(inner, max_size=4) | st.dictionaries(
    st.text(max_size=8), inner, max_size=4), max_leaves=20)
job_hashes = st.fixed_dictionaries(
    {"class": st.text(min_size=1), "args": st.lists(json_values, max_size=5),
     "jid": st.text(alphabet="0123456789abcdef", min_size=24, max_size=24)},
    optional={"kwargs": st.dictionaries(st.text(max_size=8), json_values, max_size=3),
              "queue": st.text(max_size=10), "retry": st.booleans() | st.integers(0, 25),
              "created_at": st.floats(0, 2e9), "tags": st.lists(st.text(max_size=5))},
).flatmap(lambda base: st.dictionaries(st.text(max_size=10), json_values, max_size=3).map(
    lambda extra: {**extra, **base}))


@settings(max_examples=300, deadline=None)
@given(job_hashes)
def test_any_json_job_hash_round_trips(job):
    raw = payload.encode(job)
    assert isinstance(raw, bytes)
    assert payload.decode(raw) == job
    assert payload.decode(raw.decode()) == job
    assert json.loads(raw) == job  # the wire format is plain JSON, readable by Ruby


@settings(max_examples=200, deadline=None)
@given(json_values)
def test_json_native_values_pass_the_check_and_survive_json(value):
    payload.check_json_native(value, "argument 0")
    assert json.loads(payload.encode({"v": value}))["v"] == value


# -- the delivery state machine ------------------------------------------------------------------

QUEUES = ("a", "b")
WORKERS = ("w1", "w2")
POLLER = "p1"
_examples = itertools.count()


class Delivery(RuleBasedStateMachine):
    """Mirrors: lists in LRANGE order (index 0 = left end; a queue's next job is at -1)."""

    def __init__(self, base: Storage):
        super().__init__()
        self.ns = f"prop{next(_examples)}{secrets.token_hex(3)}"
        self.client = base.client
        self.store = Storage(base.client, Keys(self.ns))
        self.keys = self.store.keys
        self.poller = Poller(store=self.store, identity=POLLER, settings=get_settings())
        self.queues: dict[str, list[str]] = {q: [] for q in QUEUES}
        self.wip: dict[tuple[str, str], list[str]] = {
            (i, lane): [] for i in (*WORKERS, POLLER) for lane in ("fetch", "sched")}
        self.sets: dict[str, dict[str, float]] = {"retry": {}, "schedule": {}}
        # Times are T0 + small offsets: real enough that the dead set's age trim keeps them.
        self.dead: set[str] = set()
        self.gone: set[str] = set()  # acknowledged or discarded
        self.enqueued: list[str] = []
        self.raws: dict[str, bytes] = {}
        self.recoveries: dict[str, int] = {}
        self.poison_limit = 2
        self.t0 = float(int(time.time()))
        for identity in (*WORKERS, POLLER):
            self._start(identity)

    @initialize(limit=st.integers(1, 3))
    def choose_poison_limit(self, limit):
        self.poison_limit = limit

    def teardown(self) -> None:
        keys = list(self.client.scan_iter(f"{self.ns}:*", count=1000))
        if keys:
            self.client.delete(*keys)

    # -- helpers -------------------------------------------------------------------------------

    def _start(self, identity: str) -> None:
        """A live process: registered, with a heartbeat hash."""
        self.store.register(identity, "{}")
        self.client.hset(self.keys.process(identity), "beat", 1)

    def _new(self, queue: str, **fields) -> tuple[str, bytes]:
        job = payload.build(name="tests.jobs.record", args=[len(self.enqueued)], kwargs={},
                            queue=queue, now=1.0, options=fields)
        self.enqueued.append(job["jid"])
        self.recoveries[job["jid"]] = 0
        raw = payload.encode(job)
        self.raws[job["jid"]] = raw
        return job["jid"], raw

    def _holding(self) -> list[str]:
        return [w for w in WORKERS if self.wip[(w, "fetch")]]

    def _pick(self, data) -> tuple[str, str]:
        """A worker holding jobs, and one of its jobs."""
        worker = data.draw(st.sampled_from(self._holding()))
        return worker, data.draw(st.sampled_from(self.wip[(worker, "fetch")]))

    def _settle(self, worker: str, jid: str, entry: Settle) -> None:
        assert self.store.settle(worker, [entry]) == [1]
        self.wip[(worker, "fetch")].remove(jid)

    @staticmethod
    def _jid(raw: bytes) -> str:
        return json.loads(raw)["jid"]

    def _queue_of(self, jid: str) -> str:
        return json.loads(self.raws[jid])["queue"]

    # -- client side ---------------------------------------------------------------------------

    @rule(queue=st.sampled_from(QUEUES), n=st.integers(1, 3))
    def enqueue(self, queue, n):
        items = [self._new(queue) for _ in range(n)]
        self.store.push([(queue, raw) for _, raw in items])
        for jid, _ in items:
            self.queues[queue].insert(0, jid)  # LPUSH

    @rule(queue=st.sampled_from(QUEUES), at=st.integers(0, 100))
    def schedule(self, queue, at):
        jid, raw = self._new(queue, at=self.t0 + at)
        self.store.schedule([(self.t0 + at, raw)])
        self.sets["schedule"][jid] = self.t0 + at

    # -- worker: fetch and settle --------------------------------------------------------------

    @rule(worker=st.sampled_from(WORKERS), count=st.integers(0, 3),
          order=st.permutations(QUEUES), data=st.data())
    def fetch(self, worker, count, order, data):
        wip = self.wip[(worker, "fetch")]
        acks = data.draw(st.lists(st.sampled_from(wip), unique=True, max_size=3)) if wip else []
        for jid in acks:
            wip.remove(jid)
            self.gone.add(jid)
        expected = []
        for queue in order:
            while len(expected) < count and self.queues[queue]:
                jid = self.queues[queue].pop()  # LMOVE RIGHT ... LEFT
                wip.insert(0, jid)
                expected.append((queue, jid))
        fetcher = Fetcher(self.store, worker, QueueOrder([(q, 1) for q in order], strict=True))
        got = fetcher.fetch(count, [self.raws[j] for j in acks])
        assert [(q, self._jid(raw)) for q, raw in got] == expected

    @precondition(lambda self: self._holding())
    @rule(at=st.integers(0, 100), data=st.data())
    def retry(self, at, data):
        worker, jid = self._pick(data)
        job = json.loads(self.raws[jid])
        job["retry_count"] = job.get("retry_count", -1) + 1
        self._settle(worker, jid, Settle(kind="z", old=self.raws[jid], new=payload.encode(job),
                                         dest="retry", score=self.t0 + at))
        self.sets["retry"][jid] = self.t0 + at

    @precondition(lambda self: self._holding())
    @rule(data=st.data())
    def kill(self, data):
        worker, jid = self._pick(data)
        job = {**json.loads(self.raws[jid]), "error_class": "RuntimeError"}
        self._settle(worker, jid, Settle(kind="d", old=self.raws[jid], new=payload.encode(job),
                                         score=self.t0 + 50))
        self.dead.add(jid)

    @precondition(lambda self: self._holding())
    @rule(data=st.data())
    def requeue(self, data):
        worker, jid = self._pick(data)
        queue = self._queue_of(jid)
        self._settle(worker, jid, Settle(kind="q", old=self.raws[jid], new=self.raws[jid],
                                         dest=queue))
        self.queues[queue].append(jid)  # RPUSH: the head, runs next

    @precondition(lambda self: self._holding())
    @rule(data=st.data())
    def discard(self, data):
        worker, jid = self._pick(data)
        self._settle(worker, jid, Settle(kind="x", old=self.raws[jid]))
        self.gone.add(jid)

    # -- poller and recovery -------------------------------------------------------------------

    def _due(self, set_name: str, now: int) -> list[str]:
        """ZRANGE BYSCORE order: score, then member bytes."""
        due = [(score, self.raws[jid], jid) for jid, score in self.sets[set_name].items()
               if score <= self.t0 + now]
        return [jid for _, _, jid in sorted(due)]

    @rule(now=st.integers(0, 100))
    def poll(self, now):
        expected = 0
        for set_name in ("schedule", "retry"):
            for jid in self._due(set_name, now):
                del self.sets[set_name][jid]
                self.queues[self._queue_of(jid)].insert(0, jid)  # LPUSH: the tail
                expected += 1
        assert self.poller.poll_once(now=self.t0 + now) == expected

    @precondition(lambda self: self.sets["schedule"] or self.sets["retry"])
    @rule(now=st.integers(0, 100), set_name=st.sampled_from(("schedule", "retry")))
    def poller_dies_after_claiming(self, now, set_name):
        due = self._due(set_name, now)
        claimed = self.store.claim_due(set_name, POLLER, self.t0 + now, 500)
        assert [self._jid(raw) for raw in claimed] == due
        for jid in due:
            del self.sets[set_name][jid]
            self.wip[(POLLER, "sched")].insert(0, jid)

    @rule(data=st.data(), now=st.integers(0, 100))
    def process_dies_and_is_recovered(self, data, now):
        holders = [i for (i, _), wip in self.wip.items() if wip]
        identity = data.draw(st.sampled_from(holders or [*WORKERS, POLLER]))
        self.client.delete(self.keys.process(identity))  # its heartbeat expired
        expected = 0
        for jid in list(self.wip[(identity, "sched")]):  # LRANGE order; LPUSH to the tail
            self.queues[self._queue_of(jid)].insert(0, jid)
            expected += 1
        fetched = list(self.wip[(identity, "fetch")])
        apart = 0
        for jid in fetched:  # RPUSH each: the oldest ends at the head
            self.recoveries[jid] += 1
            if self.recoveries[jid] >= self.poison_limit:
                self.dead.add(jid)
            elif len(fetched) > 1 and self.recoveries[jid] == self.poison_limit - 1:
                apart += 1  # a last chance after dying in company: run apart, via retry
                self.sets["retry"][jid] = self.t0 + now + apart * APART
            else:
                self.queues[self._queue_of(jid)].append(jid)
            expected += 1
        self.wip[(identity, "sched")].clear()
        self.wip[(identity, "fetch")].clear()
        moved = recover_orphans(self.store, poison_limit=self.poison_limit, now=self.t0 + now)
        assert moved == expected
        assert not self.client.hexists(self.keys.wip_registry, identity)
        self._start(identity)  # a new process takes the name

    @rule()
    def recovery_leaves_live_processes_alone(self):
        assert recover_orphans(self.store, poison_limit=self.poison_limit) == 0

    # -- the invariant -------------------------------------------------------------------------

    @invariant()
    def every_job_is_in_exactly_one_place(self):
        k, seen = self.keys, []
        pipe = self.client.pipeline(transaction=False)
        for queue in QUEUES:
            pipe.lrange(k.queue(queue), 0, -1)
        for identity, lane in self.wip:
            pipe.lrange(k.wip(identity, lane), 0, -1)
        for name in ("retry", "schedule"):
            pipe.zrange(k.sorted_set(name), 0, -1, withscores=True)
        pipe.zrange(k.dead, 0, -1)
        results = pipe.execute()
        lists = results[:len(QUEUES) + len(self.wip)]
        retry, schedule, dead = results[len(lists):]
        for raw in itertools.chain(*lists, (m for m, _ in retry), (m for m, _ in schedule), dead):
            jid = self._jid(raw)
            seen.append(jid)
            self.raws[jid] = raw
        assert sorted(seen + list(self.gone)) == sorted(self.enqueued)  # none lost, none twice
        for queue, raws in zip(QUEUES, lists):
            assert [self._jid(r) for r in raws] == self.queues[queue]
        for key, raws in zip(self.wip, lists[len(QUEUES):]):
            assert [self._jid(r) for r in raws] == self.wip[key]
        assert {self._jid(m): s for m, s in retry} == self.sets["retry"]
        assert {self._jid(m): s for m, s in schedule} == self.sets["schedule"]
        assert {self._jid(m) for m in dead} == self.dead
        for raw in dead:
            job = json.loads(raw)
            if self.recoveries[job["jid"]] >= self.poison_limit:
                assert job["error_class"] == "django_kiq.PoisonJob"


def test_no_operation_sequence_loses_or_duplicates_a_job(store):
    run_state_machine_as_test(
        lambda: Delivery(store),
        settings=settings(max_examples=60, stateful_step_count=50, deadline=None))
