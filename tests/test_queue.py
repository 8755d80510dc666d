"""TaskQueue: dependencies, leases, retries, and no double claims (also across processes)."""

from __future__ import annotations

import multiprocessing as mp
import time
from pathlib import Path

import pytest
from hypothesis import HealthCheck, settings
from hypothesis import strategies as st
from hypothesis.stateful import RuleBasedStateMachine, invariant, precondition, rule

from delm_rlm.gists import Gist
from delm_rlm.state.queue import LeaseLost, Task, TaskQueue, TaskState
from delm_rlm.state.sqlite import NotFound, RunStore
from delm_rlm.trace import Trace


class FakeClock:
    def __init__(self, t: float = 1000.0) -> None:
        self.t = t

    def __call__(self) -> float:
        return self.t

    def advance(self, dt: float) -> None:
        self.t += dt


@pytest.fixture
def clock() -> FakeClock:
    return FakeClock()


@pytest.fixture
def queue(tmp_path: Path, clock: FakeClock) -> TaskQueue:
    return TaskQueue(RunStore(tmp_path / "run.sqlite"), lease_s=10.0, max_attempts=2, clock=clock)


def _gists(store: RunStore, n: int) -> list[str]:
    return [store.add_gist(Gist(kind="partial", text=f"result {i}")).id for i in range(n)]


def test_dependencies_gate_readiness_and_order(queue: TaskQueue) -> None:
    assert _gists(queue.store, 2) == ["g1", "g2"]
    a = queue.add("count errors in doc 0")
    b = queue.add("count errors in doc 1")
    c = queue.add("sum the counts", deps=[a.id, b.id])
    assert (a.id, b.id, c.id) == ("t1", "t2", "t3")
    assert [a.state, b.state, c.state] == [TaskState.READY, TaskState.READY, TaskState.PENDING]
    first = queue.claim("x")
    second = queue.claim("y")
    assert (first.id, second.id) == ("t1", "t2")  # oldest first
    assert queue.claim("z") is None  # t3 waits for its deps
    queue.complete("t1", "x", ["g1"])
    assert queue.get("t3").state == TaskState.PENDING
    queue.complete("t2", "y", ["g2"])
    assert queue.get("t3").state == TaskState.READY
    assert queue.claim("z").id == "t3"
    assert not queue.drained()
    done = queue.complete("t3", "z")
    assert done.state == TaskState.DONE and queue.drained()
    assert queue.get("t1").gist_ids == ["g1"]


def test_failed_dependency_fails_dependents_with_reason(queue: TaskQueue) -> None:
    a = queue.add("parse the table")
    b = queue.add("use the table", deps=[a.id])
    c = queue.add("use the result", deps=[b.id])
    queue.claim("x")
    queue.fail(a.id, "x", "the table is an image")
    assert queue.get(b.id).state == TaskState.FAILED
    assert queue.get(b.id).last_error == "dependency t1 failed: the table is an image"
    assert queue.get(c.id).last_error.startswith("dependency t2 failed: dependency t1 failed")
    late = queue.add("added after the failure", deps=[a.id])
    assert late.state == TaskState.FAILED and late.last_error.startswith("dependency t1 failed")
    assert queue.drained()


def test_reject_requeues_with_reason_until_max_attempts(queue: TaskQueue) -> None:
    t = queue.add("count labels")
    queue.claim("x")
    back = queue.reject(t.id, "x", "count did not match the check")
    assert back.state == TaskState.READY and back.attempts == 1
    assert back.last_error == "rejected: count did not match the check"
    again = queue.claim("y")
    assert again.id == t.id and again.attempts == 2 and again.last_error == back.last_error
    final = queue.reject(t.id, "y", "still wrong")
    assert final.state == TaskState.FAILED
    assert final.last_error == "rejected on attempt 2/2: still wrong"
    assert final.errors == ["rejected: count did not match the check", final.last_error]


def test_expired_lease_returns_task_and_stale_holder_loses(queue: TaskQueue, clock: FakeClock) -> None:
    t = queue.add("slow task")
    assert queue.claim("x").lease_expires == clock.t + 10
    clock.advance(5)
    assert queue.renew(t.id, "x")  # renewed: expires at +15
    clock.advance(9)
    assert queue.claim("y") is None  # not expired yet
    clock.advance(2)
    # Expired but nobody reclaimed it: still x's (late but not too late).
    assert queue.renew(t.id, "x")
    clock.advance(11)
    got = queue.claim("y")
    assert got is not None and got.id == t.id and got.attempts == 2
    assert "lease of x expired" in got.last_error
    assert not queue.renew(t.id, "x")
    with pytest.raises(LeaseLost, match="y holds it now"):
        queue.complete(t.id, "x", [])
    with pytest.raises(LeaseLost):
        queue.reject(t.id, "x", "too late")
    assert queue.complete(t.id, "y").state == TaskState.DONE
    with pytest.raises(LeaseLost, match="is done now"):
        queue.fail(t.id, "y", "again")


def test_lease_expiry_on_last_attempt_fails_task(queue: TaskQueue, clock: FakeClock) -> None:
    t = queue.add("crashes every time")
    dep = queue.add("after it", deps=[t.id])
    for agent in ("a", "b"):
        assert queue.claim(agent).id == t.id
        clock.advance(11)
    assert queue.reap() == [t.id, dep.id]
    assert queue.get(t.id).state == TaskState.FAILED
    assert queue.get(dep.id).last_error.startswith(f"dependency {t.id} failed: lease of b expired")


def test_bad_input_is_refused_clearly(queue: TaskQueue) -> None:
    with pytest.raises(ValueError, match="unknown dependency t9"):
        queue.add("x", deps=["t9"])
    with pytest.raises(ValueError, match="needs a goal"):
        queue.add("   ")
    with pytest.raises(ValueError, match="max_attempts"):
        queue.add("x", max_attempts=0)
    with pytest.raises(NotFound, match="no task 't7'"):
        queue.renew("t7", "a")
    t = queue.add("x")
    queue.claim("a")
    with pytest.raises(ValueError, match="give a reason"):
        queue.reject(t.id, "a", "")
    with pytest.raises(ValueError, match="unknown gist\\(s\\) g5"):
        queue.complete(t.id, "a", ["g5"])
    assert queue.counts()[TaskState.CLAIMED] == 1  # the refused call changed nothing


def test_queue_survives_reopen_and_reports_to_trace(tmp_path: Path, clock: FakeClock) -> None:
    path = tmp_path / "run.sqlite"
    trace = Trace()
    q = TaskQueue(RunStore(path), clock=clock, trace=trace)
    a = q.add("first", created_by="root")
    q.add("second", deps=[a.id])
    q.claim("x")
    q.complete(a.id, "x", _gists(q.store, 1))
    q.store.close()
    resumed = TaskQueue(RunStore(path), clock=clock)
    assert [(t.id, t.state) for t in resumed.all()] == [("t1", TaskState.DONE), ("t2", TaskState.READY)]
    assert resumed.get("t1").gist_ids == ["g1"]
    assert resumed.add("third").id == "t3"  # ids continue, never reused
    kinds = [(e.kind, e.task) for e in trace.events]
    assert kinds == [("task_created", "t1"), ("task_created", "t2"), ("task_claimed", "t1"),
                     ("task_done", "t1")]


# ---------------------------------------------------------------------------------------------
# Model-based test: a reference model of the queue, agents claiming/renewing/finishing at
# random while the clock moves. Every step compares the store with the model.

AGENTS = ("a0", "a1", "a2")
LEASE = 10.0


class QueueMachine(RuleBasedStateMachine):
    def __init__(self) -> None:
        super().__init__()
        import tempfile

        self.dir = tempfile.TemporaryDirectory()
        self.clock = FakeClock()
        self.queue = TaskQueue(
            RunStore(Path(self.dir.name) / "run.sqlite"), lease_s=LEASE, clock=self.clock
        )
        _gists(self.queue.store, 1)  # g1: what completed tasks cite
        # model: id -> dict(state, deps, holder, expires, attempts, max)
        self.model: dict[str, dict] = {}
        self.held: dict[str, set[str]] = {a: set() for a in AGENTS}  # what agents believe

    def teardown(self) -> None:
        self.queue.store.close()
        self.dir.cleanup()

    # -- the reference model ------------------------------------------------------------------

    def _settle(self) -> None:
        for tid in sorted(self.model, key=lambda t: int(t[1:])):
            m = self.model[tid]
            if m["state"] != "pending":
                continue
            if any(self.model[d]["state"] == "failed" for d in m["deps"]):
                m["state"] = "failed"
            elif all(self.model[d]["state"] == "done" for d in m["deps"]):
                m["state"] = "ready"

    def _release(self, tid: str, state: str) -> None:
        m = self.model[tid]
        m.update(state=state, holder=None, expires=None)
        if state == "failed":
            self._settle()

    def _reap(self) -> None:
        for tid, m in sorted(self.model.items(), key=lambda kv: int(kv[0][1:])):
            if m["state"] == "claimed" and m["expires"] <= self.clock.t:
                self._release(tid, "failed" if m["attempts"] >= m["max"] else "ready")

    def _holds(self, tid: str, agent: str) -> bool:
        m = self.model[tid]
        return m["state"] == "claimed" and m["holder"] == agent

    # -- rules --------------------------------------------------------------------------------

    @rule(data=st.data(), max_attempts=st.integers(1, 3))
    def add(self, data: st.DataObject, max_attempts: int) -> None:
        existing = sorted(self.model)
        deps = data.draw(st.lists(st.sampled_from(existing), max_size=3) if existing else st.just([]))
        task = self.queue.add(f"goal {len(existing)}", deps=deps, max_attempts=max_attempts)
        self.model[task.id] = dict(state="pending", deps=list(dict.fromkeys(deps)), holder=None,
                                   expires=None, attempts=0, max=max_attempts)
        self._settle()

    @rule(agent=st.sampled_from(AGENTS))
    def claim(self, agent: str) -> None:
        self._reap()
        ready = [t for t, m in self.model.items() if m["state"] == "ready"]
        got = self.queue.claim(agent)
        if not ready:
            assert got is None
            return
        expected = min(ready, key=lambda t: int(t[1:]))
        assert got is not None and got.id == expected
        # Claimed only when every dependency is done (checked in the store itself).
        assert all(self.queue.get(d).state == TaskState.DONE for d in got.deps)
        m = self.model[expected]
        m.update(state="claimed", holder=agent, expires=self.clock.t + LEASE,
                 attempts=m["attempts"] + 1)
        self.held[agent].add(expected)

    @rule(dt=st.sampled_from([0.5, 3.0, LEASE - 0.5, LEASE, LEASE + 1.0, 2 * LEASE]))
    def advance(self, dt: float) -> None:
        self.clock.advance(dt)

    def _pick(self, data: st.DataObject) -> tuple[str, str]:
        agent = data.draw(st.sampled_from(AGENTS))
        # Mostly act on a task the agent believes it holds (possibly stale), sometimes any task.
        pool = sorted(self.held[agent]) or sorted(self.model)
        if data.draw(st.booleans()) and self.model:
            pool = sorted(self.model)
        return agent, data.draw(st.sampled_from(pool))

    @precondition(lambda self: self.model)
    @rule(data=st.data())
    def renew(self, data: st.DataObject) -> None:
        agent, tid = self._pick(data)
        ok = self.queue.renew(tid, agent)
        assert ok == self._holds(tid, agent)
        if ok:
            self.model[tid]["expires"] = self.clock.t + LEASE

    @precondition(lambda self: self.model)
    @rule(data=st.data(), outcome=st.sampled_from(["complete", "reject", "fail"]))
    def finish(self, data: st.DataObject, outcome: str) -> None:
        agent, tid = self._pick(data)
        self.held[agent].discard(tid)
        if not self._holds(tid, agent):
            with pytest.raises(LeaseLost):
                getattr(self.queue, outcome)(tid, agent, *(["why"] if outcome != "complete" else []))
            return
        m = self.model[tid]
        if outcome == "complete":
            task = self.queue.complete(tid, agent, ["g1"])
            self._release(tid, "done")
            self._settle()
        elif outcome == "reject":
            task = self.queue.reject(tid, agent, "wrong")
            self._release(tid, "failed" if m["attempts"] >= m["max"] else "ready")
        else:
            task = self.queue.fail(tid, agent, "impossible")
            self._release(tid, "failed")
        assert task.state.value == m["state"]

    # -- invariants -----------------------------------------------------------------------------

    @invariant()
    def store_matches_model(self) -> None:
        tasks = {t.id: t for t in self.queue.all()}
        assert sorted(tasks) == sorted(self.model)
        for tid, m in self.model.items():
            t = tasks[tid]
            assert (t.state.value, t.lease_holder, t.attempts) == (m["state"], m["holder"], m["attempts"]), tid
            assert t.attempts <= t.max_attempts
            if t.state == TaskState.CLAIMED:
                assert t.lease_holder is not None
                assert all(tasks[d].state == TaskState.DONE for d in t.deps)
            else:
                assert t.lease_holder is None
            if t.state in (TaskState.READY, TaskState.CLAIMED, TaskState.DONE):
                assert all(tasks[d].state == TaskState.DONE for d in t.deps)
            failed_deps = [d for d in t.deps if tasks[d].state == TaskState.FAILED]
            if failed_deps:
                assert t.state == TaskState.FAILED
                if t.attempts == 0:  # failed by propagation, never claimed: names its cause
                    assert any(t.last_error.startswith(f"dependency {d} failed:") for d in failed_deps)
        active = any(m["state"] in ("pending", "ready", "claimed") for m in self.model.values())
        assert self.queue.drained() == (not active)


QueueMachine.TestCase.settings = settings(
    max_examples=100, stateful_step_count=40, deadline=None,
    suppress_health_check=[HealthCheck.too_slow],
)
TestQueueMachine = QueueMachine.TestCase


# ---------------------------------------------------------------------------------------------
# Several processes claiming from one file at once: every task is claimed exactly once.

def _claim_all(path: str, agent: str, start: mp.Barrier, out: mp.Queue) -> None:  # type: ignore[valid-type]
    queue = TaskQueue(RunStore(path), lease_s=300.0)
    start.wait()  # all processes start claiming together
    got: list[str] = []
    while (task := queue.claim(agent)) is not None:
        got.append(task.id)
        queue.complete(task.id, agent, [])
        time.sleep(0.0005)  # an agent works between claims: the others' busy waits get the lock
    out.put((agent, got))


def test_processes_racing_claim_each_task_exactly_once(tmp_path: Path) -> None:
    path = str(tmp_path / "race.sqlite")
    queue = TaskQueue(RunStore(path))
    n_tasks, n_procs = 1500, 4  # enough work that a fast claimer cannot drain it before the others wake
    for i in range(n_tasks):
        queue.add(f"task {i}")
    ctx = mp.get_context("spawn")
    start, out = ctx.Barrier(n_procs), ctx.Queue()
    procs = [ctx.Process(target=_claim_all, args=(path, f"p{i}", start, out)) for i in range(n_procs)]
    for p in procs:
        p.start()
    results = dict(out.get(timeout=60) for _ in procs)
    for p in procs:
        p.join(timeout=30)
        assert p.exitcode == 0
    claimed = [tid for got in results.values() for tid in got]
    assert sorted(claimed) == sorted(f"t{i}" for i in range(1, n_tasks + 1))  # once each
    assert sum(1 for got in results.values() if got) >= 2  # they really raced
    tasks = queue.all()
    assert all(t.state == TaskState.DONE and t.attempts == 1 for t in tasks)
    assert queue.drained()


def test_task_model_is_plain_data() -> None:
    # Task crosses to the REPL bridge and traces as JSON.
    t = Task(id="t1", goal="g", state=TaskState.READY, max_attempts=3, created_at=0, updated_at=0)
    assert Task.model_validate_json(t.model_dump_json()) == t
