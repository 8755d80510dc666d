"""The run-state conformance suite: what every backend of `delm_rlm.state.protocol` must do.

Each test runs once per backend in tests/state_backends.py (today: SQLite). The tests use
only the protocol (`RunState`, `StateTransaction`) and the layers on top of it (`TaskQueue`,
`SharedContext`, `ClassificationLog`), never a backend's own API, so a new backend passes
them unchanged. Backend-specific behaviour (file formats, WAL, SQLite migrations) is tested
in tests/test_store.py.
"""

from __future__ import annotations

import hashlib
import multiprocessing as mp
import threading
from collections.abc import Callable, Iterator
from typing import Any

import pytest

from delm_rlm.classify import ClassificationLog
from delm_rlm.errors import ConfigError, LeaseLost, NotFound, RunStateError
from delm_rlm.gists import Gist, GistKind, GistStatus, dedupe_key
from delm_rlm.state.context import SharedContext
from delm_rlm.state.protocol import (
    BlobInfo,
    ClassificationRecord,
    RunState,
    StateTransaction,
    Task,
    TaskState,
)
from delm_rlm.state.queue import TaskQueue
from state_backends import BACKENDS, StateBackend


class Boom(Exception):
    pass


@pytest.fixture(params=BACKENDS)
def backend(request: pytest.FixtureRequest, tmp_path: Any) -> Iterator[StateBackend]:
    made: StateBackend = request.param(tmp_path)
    yield made
    made.close_all()


@pytest.fixture
def store(backend: StateBackend) -> RunState:
    return backend.open()


def _fact(text: str, **kw: Any) -> Gist:
    return Gist(kind=GistKind.FACT, text=text, **kw)


def _run_threads(n: int, work: Callable[[int], None]) -> None:
    errors: list[BaseException] = []

    def guarded(i: int) -> None:
        try:
            work(i)
        except BaseException as exc:  # re-raised in the test's thread below
            errors.append(exc)

    threads = [threading.Thread(target=guarded, args=(i,)) for i in range(n)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(timeout=120)
    assert not errors, errors


# -- meta -------------------------------------------------------------------------------------


def test_a_new_run_has_created_meta_and_the_backend_schema(backend: StateBackend, store: RunState) -> None:
    meta = store.meta()
    assert meta.status == "created" and meta.created_at
    assert meta.schema_version == backend.schema_version
    assert store.get_meta("question") is None and store.get_meta("nothing", 5) == 5


def test_meta_round_trips_through_another_connection(backend: StateBackend, store: RunState) -> None:
    store.set_meta(question="How many?", method="hybrid", config={"agents": 4}, seed=7)
    written = store.set_meta(status="answered", answer="12")
    assert written.answer == "12" and written.question == "How many?"
    meta = backend.open().meta()
    assert (meta.question, meta.method, meta.config, meta.status, meta.answer) == (
        "How many?", "hybrid", {"agents": 4}, "answered", "12")
    assert meta.model_extra == {"seed": 7} and backend.open().get_meta("seed") == 7


def test_bad_meta_is_refused_and_changes_nothing(store: RunState) -> None:
    store.set_meta(question="q")
    with pytest.raises(ConfigError, match="bad run meta value"):
        store.set_meta(config="not a dict", question="changed")
    with pytest.raises(ConfigError, match="JSON-serializable"):
        store.set_meta(extra_thing=object())
    with pytest.raises(ConfigError, match="schema_version"):
        store.set_meta(schema_version=99)
    assert store.meta().question == "q" and store.get_meta("extra_thing") is None


# -- gists and transactions -------------------------------------------------------------------


def test_gist_ids_lookups_updates_and_filters(store: RunState) -> None:
    added = [store.add_gist(_fact(f"doc {i} is a letter")) for i in range(3)]
    assert [g.id for g in added] == ["g1", "g2", "g3"]
    assert store.get_gist("g2") == added[1]
    with pytest.raises(ConfigError, match="store assigns ids"):
        store.add_gist(_fact("x", id="g9"))
    with pytest.raises(NotFound):
        store.get_gist("g42")
    with pytest.raises(ValueError, match="300"):
        store.update_gist("g1", text="y" * 301)
    with pytest.raises(ConfigError, match="id never changes"):
        store.update_gist("g1", id="g7")
    assert store.get_gist("g1") == added[0]  # the refused updates changed nothing
    store.update_gist("g2", status=GistStatus.ADMITTED, note="ok")
    store.add_gist(Gist(kind="partial", text="chunk 3 has 4 errors", value=4))
    assert [g.id for g in store.list_gists(status="admitted")] == ["g2"]
    assert [g.id for g in store.list_gists(status=["pending", "admitted"], kinds="FACT")] == ["g1", "g2", "g3"]
    assert [g.id for g in store.list_gists(kinds=[GistKind.PARTIAL, "constraint"])] == ["g4"]
    key = dedupe_key("partial", "Chunk 3 has 4 ERRORS.")
    assert [g.id for g in store.list_gists(dedupe_key=key)] == ["g4"]
    assert store.list_gists(status="merged") == []


def test_a_failed_transaction_leaves_nothing_and_uses_no_id(store: RunState) -> None:
    store.add_gist(_fact("kept"))
    with pytest.raises(Boom):
        with store.transaction() as tx:
            tx.add_gist(_fact("lost"))
            tx.add_task("lost task", [], 3, None, 1.0)
            tx.add_to_counter("rounds", 5)
            with store.transaction() as inner:  # joins the outer transaction
                inner.update_gist("g1", note="lost too")
            raise Boom()
    assert [(g.id, g.note) for g in store.list_gists()] == [("g1", None)]
    assert store.counter("rounds") == 0
    with store.reading() as tx:
        assert tx.list_tasks() == []
    with store.transaction() as tx:
        assert tx.add_task("next task", [], 3, None, 1.0).id == "t1"
    assert store.add_gist(_fact("next")).id == "g2"


def test_writes_are_invisible_to_other_connections_until_commit(backend: StateBackend, store: RunState) -> None:
    other = backend.open()
    with store.transaction() as tx:
        tx.add_gist(_fact("not yet committed"))
        with store.reading() as same:  # reads through the open transaction
            assert [g.text for g in same.list_gists()] == ["not yet committed"]
        assert other.list_gists() == []
    assert [g.text for g in other.list_gists()] == ["not yet committed"]


async def test_a_transaction_held_across_an_await_is_refused(store: RunState) -> None:
    import asyncio

    entered = asyncio.Event()

    async def holder() -> None:
        with store.transaction() as tx:
            tx.add_gist(_fact("from the holder"))
            entered.set()
            await asyncio.sleep(0.05)

    async def other() -> None:
        await entered.wait()
        with pytest.raises(RunStateError, match="across an await"):
            store.add_gist(_fact("from another task"))

    await asyncio.gather(holder(), other())
    assert [g.text for g in store.list_gists()] == ["from the holder"]


# -- tasks and leases -------------------------------------------------------------------------


def _add_tasks(store: RunState, n: int, now: float = 100.0) -> list[Task]:
    with store.transaction() as tx:
        return [tx.add_task(f"task {i}", [], 3, "test", now) for i in range(n)]


def test_tasks_are_inserted_pending_and_listed_by_state_id_and_expiry(store: RunState) -> None:
    with store.transaction() as tx:
        a = tx.add_task("count errors", [], 2, "planner", 100.0)
        b = tx.add_task("sum them", ["t1"], 3, None, 101.0)
    assert (a.id, b.id) == ("t1", "t2")
    assert (a.state, a.deps, a.max_attempts, a.created_by, a.attempts) == (TaskState.PENDING, [], 2, "planner", 0)
    assert (b.deps, b.created_at, b.updated_at, b.gist_ids, b.errors) == (["t1"], 101.0, 101.0, [], [])
    with store.reading() as tx:
        assert tx.get_task("t2") == b
        with pytest.raises(NotFound):
            tx.get_task("t9")
        assert [t.id for t in tx.list_tasks(ids=["t2", "t9", "t1"])] == ["t1", "t2"]
        assert tx.list_tasks(ids=[]) == [] and tx.list_tasks(states=[]) == []
        assert tx.task_counts() == {s: (2 if s == TaskState.PENDING else 0) for s in TaskState}
    with store.transaction() as tx:
        tx.update_task("t1", state=TaskState.READY, updated_at=102.0)
        assert tx.claim_ready_task("a1", 110.0, 102.0) is not None
        tx.update_task("t2", state=TaskState.READY, updated_at=102.0)
        tx.claim_ready_task("a2", 130.0, 102.0)
    with store.reading() as tx:
        assert [t.id for t in tx.list_tasks(states=[TaskState.CLAIMED])] == ["t1", "t2"]
        assert [t.id for t in tx.list_tasks(states=[TaskState.CLAIMED], lease_expires_by=110.0)] == ["t1"]
        assert tx.list_tasks(lease_expires_by=109.9) == []
        assert [t.id for t in tx.list_tasks(states=[TaskState.READY, TaskState.CLAIMED])] == ["t1", "t2"]


def test_claim_takes_the_oldest_ready_task_and_counts_the_attempt(store: RunState) -> None:
    _add_tasks(store, 3)
    with store.transaction() as tx:
        assert tx.claim_ready_task("a1", 200.0, 150.0) is None  # all still pending
        for tid in ("t2", "t3"):
            tx.update_task(tid, state=TaskState.READY)
        got = tx.claim_ready_task("a1", 200.0, 150.0)
    assert got is not None and got.id == "t2"
    assert (got.state, got.lease_holder, got.lease_expires, got.attempts, got.updated_at) == (
        TaskState.CLAIMED, "a1", 200.0, 1, 150.0)
    with store.transaction() as tx:
        assert tx.claim_ready_task("a2", 210.0, 160.0).id == "t3"
        assert tx.claim_ready_task("a3", 210.0, 160.0) is None
        assert tx.task_counts()[TaskState.CLAIMED] == 2


def test_conditional_task_updates(store: RunState) -> None:
    _add_tasks(store, 1)
    with store.transaction() as tx:
        tx.update_task("t1", state=TaskState.READY)
        tx.claim_ready_task("a1", 200.0, 150.0)
        assert tx.update_task("t1", if_state=TaskState.READY, state=TaskState.DONE) is None
        assert tx.update_task("t1", if_holder="a2", lease_expires=999.0) is None
        assert tx.get_task("t1").lease_expires == 200.0  # the failed conditions changed nothing
        done = tx.update_task(
            "t1", if_state=TaskState.CLAIMED, if_holder="a1", state=TaskState.DONE,
            lease_holder=None, lease_expires=None, gist_ids=["g1", "g2"], errors=["first try"],
            last_error="first try", updated_at=160.0,
        )
        assert done is not None and done == tx.get_task("t1")
        assert (done.state, done.lease_holder, done.gist_ids, done.errors) == (
            TaskState.DONE, None, ["g1", "g2"], ["first try"])
        with pytest.raises(NotFound):
            tx.update_task("t9", if_state=TaskState.READY, state=TaskState.DONE)
        with pytest.raises(ConfigError, match="goal"):
            tx.update_task("t1", goal="another goal")
        with pytest.raises(ConfigError):
            tx.update_task("t1")


def test_threads_with_their_own_connections_never_claim_a_task_twice(backend: StateBackend, store: RunState) -> None:
    n_tasks, n_agents = 120, 4
    _add_tasks(store, n_tasks)
    with store.transaction() as tx:
        for task in tx.list_tasks():
            tx.update_task(task.id, state=TaskState.READY)
    claimed: dict[int, list[str]] = {i: [] for i in range(n_agents)}
    start = threading.Barrier(n_agents)

    def agent(i: int) -> None:
        mine = backend.open()
        start.wait()
        while True:
            with mine.transaction() as tx:
                task = tx.claim_ready_task(f"a{i}", 10_000.0, 200.0)
            if task is None:
                return
            claimed[i].append(task.id)

    _run_threads(n_agents, agent)
    every = [tid for got in claimed.values() for tid in got]
    assert sorted(every) == sorted(f"t{i}" for i in range(1, n_tasks + 1))  # once each
    with store.reading() as tx:
        assert all(t.attempts == 1 and t.state == TaskState.CLAIMED for t in tx.list_tasks())


def _queue_worker(opener: Callable[[], RunState], agent: str, start: Any, out: Any) -> None:
    store = opener()
    queue = TaskQueue(store, lease_s=300.0)
    start.wait()
    got: list[str] = []
    while (task := queue.claim(agent)) is not None:
        got.append(task.id)
        queue.complete(task.id, agent, [])
    store.close()
    out.put((agent, got))


def test_processes_racing_on_one_queue_do_each_task_once(backend: StateBackend, store: RunState) -> None:
    queue = TaskQueue(store)
    n_tasks, n_procs = 150, 3
    for i in range(n_tasks):
        queue.add(f"task {i}")
    ctx = mp.get_context("spawn")
    start, out = ctx.Barrier(n_procs), ctx.Queue()
    procs = [ctx.Process(target=_queue_worker, args=(backend.opener, f"p{i}", start, out)) for i in range(n_procs)]
    for p in procs:
        p.start()
    results = dict(out.get(timeout=120) for _ in procs)
    for p in procs:
        p.join(timeout=60)
        assert p.exitcode == 0
    every = [tid for got in results.values() for tid in got]
    assert sorted(every) == sorted(f"t{i}" for i in range(1, n_tasks + 1))
    assert all(t.state == TaskState.DONE and t.attempts == 1 for t in queue.all())


# -- counters ---------------------------------------------------------------------------------


def test_counters_add_read_persist_and_roll_back(backend: StateBackend, store: RunState) -> None:
    assert store.counter("finalize_rounds") == 0
    assert store.add_to_counter("finalize_rounds") == 1
    assert store.add_to_counter("finalize_rounds", 4) == 5
    assert store.add_to_counter("finalize_rounds", -2) == 3
    assert store.add_to_counter("added_tasks", 2) == 2
    with pytest.raises(Boom):
        with store.transaction() as tx:
            assert tx.add_to_counter("added_tasks", 10) == 12
            assert tx.counter("added_tasks") == 12
            raise Boom()
    other = backend.open()
    assert (other.counter("finalize_rounds"), other.counter("added_tasks")) == (3, 2)
    for bad_name in ("", "  ", None):
        with pytest.raises(ConfigError, match="name"):
            store.add_to_counter(bad_name)  # type: ignore[arg-type]
    for bad_delta in (True, 1.5, "1"):
        with pytest.raises(ConfigError, match="whole numbers"):
            store.add_to_counter("added_tasks", bad_delta)  # type: ignore[arg-type]
    assert store.counter("added_tasks") == 2


def test_concurrent_increments_are_never_lost(backend: StateBackend, store: RunState) -> None:
    target = SharedContext(store).record(Gist(kind="failure", text="tried the regex; it misses"))

    def work(i: int) -> None:
        mine = backend.open()
        context = SharedContext(mine)
        for _ in range(25):
            mine.add_to_counter("hits")
            context.add_support(target.id)

    _run_threads(4, work)
    assert store.counter("hits") == 100
    assert store.get_gist(target.id).support == 1 + 100


# -- the classification log -------------------------------------------------------------------


def test_classification_records_append_and_read_back_in_order(backend: StateBackend, store: RunState) -> None:
    first = ClassificationRecord(key="k1", labels=["spam", "ham"], instruction="", result=["spam", None])
    second = ClassificationRecord(key="k2", labels=["a", "b"], instruction="which", result=["b"], items=["an item"])
    again = ClassificationRecord(key="k1", labels=["spam", "ham"], instruction="", result=["ham", "ham"])
    assert store.classifications() == []
    for record in (first, second, again):
        store.append_classification(record)
    assert store.classifications() == [first, second, again]
    assert backend.open().classifications() == [first, second, again]


def test_classification_log_written_through_is_replayed_by_a_later_log(backend: StateBackend, store: RunState) -> None:
    items, labels = ["Where is Rome?", "Who wrote Emma?"], ["location", "human"]
    log = ClassificationLog(store)
    log.record(items, labels, "what the answer is", ["location", "human"])
    log.record(["x"], labels, "", ["human"])
    log.record(["x"], labels, "", [None])  # the later result for the same call wins
    resumed = ClassificationLog(backend.open())
    assert len(resumed) == 2
    # The store keeps what was labelled, item by item, for reports and evaluations.
    assert [(r.items, r.result) for r in backend.open().classifications()][0] == (items, ["location", "human"])
    assert resumed.replay(items, labels, "what the answer is") == ["location", "human"]
    assert resumed.replay(["x"], labels) == [None]
    # Recorded elsewhere after `log` was built: a miss reads the store again.
    ClassificationLog(backend.open()).record(["y"], labels, "", ["location"])
    assert log.replay(["y"], labels) == ["location"]
    with pytest.raises(LookupError, match="classify was not run"):
        log.replay(["z"], labels)


# -- blobs ------------------------------------------------------------------------------------


def test_blobs_are_written_once_and_read_back_checked(backend: StateBackend, store: RunState) -> None:
    data = bytes(range(256)) * 64 + "Zürich".encode()
    info = store.put_blob("corpus", data)
    assert info == BlobInfo(name="corpus", sha256=hashlib.sha256(data).hexdigest(), size=len(data))
    assert store.put_blob("corpus", bytearray(data)) == info  # the same bytes again: a no-op
    with pytest.raises(ConfigError, match="written once"):
        store.put_blob("corpus", data + b"!")
    other = backend.open()
    assert other.get_blob("corpus") == data and other.blob_info("corpus") == info
    assert store.put_blob("empty", b"").size == 0 and other.get_blob("empty") == b""
    for missing in (store.get_blob, store.blob_info):
        with pytest.raises(NotFound, match="no blob 'nothing'"):
            missing("nothing")
    for bad_name in ("", "  ", None, "x" * 201):
        with pytest.raises(ConfigError, match="name"):
            store.put_blob(bad_name, b"x")  # type: ignore[arg-type]
    with pytest.raises(ConfigError, match="bytes"):
        store.put_blob("text", "not bytes")  # type: ignore[arg-type]
    with pytest.raises(Boom):
        with store.transaction():
            store.put_blob("lost", b"rolled back")
            raise Boom()
    with pytest.raises(NotFound):
        other.blob_info("lost")


# -- the report snapshot ----------------------------------------------------------------------


def test_snapshot_holds_meta_gists_and_tasks_as_plain_values(store: RunState) -> None:
    store.set_meta(question="How many?", config={"agents": 2})
    context = SharedContext(store)
    kept = context.record(Gist(kind="partial", text="doc 0 has 2 apples", value=2))
    context.add_pending(_fact("doc 1 is a letter"))
    queue = TaskQueue(store, clock=lambda: 100.0)
    queue.add("count apples")
    queue.add("sum", deps=["t1"])
    queue.claim("a1")
    queue.reject("t1", "a1", "the check printed 3")
    snap = store.snapshot()
    assert snap.meta["question"] == "How many?" and snap.meta["config"] == {"agents": 2}
    assert snap.meta["created_at"] == store.meta().created_at  # what was written, not defaults
    assert snap.gists == [g.model_dump(mode="json") for g in store.list_gists()]
    assert snap.gists[0]["id"] == kept.id and snap.gists[0]["status"] == "admitted"
    assert [{k: t[k] for k in Task.model_fields} for t in snap.tasks] == [
        t.model_dump(mode="json") for t in queue.all()]
    first = snap.tasks[0]
    assert (first["state"], first["deps"], first["errors"]) == ("ready", [], ["rejected: the check printed 3"])
    assert snap.tasks[1]["deps"] == ["t1"]


# -- the layers on top: queue lease rules and the shared context ------------------------------


def test_queue_lease_rules_hold_on_the_backend(backend: StateBackend, store: RunState) -> None:
    now = [1000.0]
    queue = TaskQueue(store, lease_s=10.0, max_attempts=2, clock=lambda: now[0])
    gist = store.add_gist(Gist(kind="partial", text="result"))
    a, b = queue.add("first"), queue.add("second")
    c = queue.add("after both", deps=[a.id, b.id])
    assert [t.state for t in (a, b, c)] == [TaskState.READY, TaskState.READY, TaskState.PENDING]
    assert queue.claim("x").id == "t1" and queue.claim("y").id == "t2"
    now[0] += 11  # both leases expire; neither is reclaimed yet
    assert not queue.drained() and queue.next_lease_expiry() == 1010.0
    assert queue.renew("t1", "x")  # expired but not reclaimed: still x's
    got = queue.claim("z")
    assert got is not None and got.id == "t2" and got.attempts == 2 and "lease of y expired" in got.last_error
    with pytest.raises(LeaseLost, match="z holds it now"):
        queue.complete("t2", "y")
    with pytest.raises(ConfigError, match="unknown gist"):
        queue.complete("t1", "x", ["g9"])
    queue.complete("t1", "x", [gist.id])
    queue.fail("t2", "z", "the table is an image")
    assert queue.get("t3").state == TaskState.FAILED
    assert queue.get("t3").last_error == "dependency t2 failed: the table is an image"
    assert queue.drained() and queue.counts()[TaskState.FAILED] == 2
    resumed = TaskQueue(backend.open())
    assert [t.state for t in resumed.all()] == [TaskState.DONE, TaskState.FAILED, TaskState.FAILED]
    assert resumed.get("t1").gist_ids == [gist.id] and resumed.add("more").id == "t4"


def test_shared_context_decisions_hold_on_the_backend(backend: StateBackend, store: RunState) -> None:
    context = SharedContext(store)
    target = context.admit(context.add_pending(_fact("the total is 9", value=9)).id, note="checked")
    dup = context.add_pending(_fact("The total is 9.", value=9))
    assert context.find_duplicate(dup) == target
    merged = context.merge(dup.id, target.id)
    assert merged.support == 2 and store.get_gist(dup.id).merged_into == target.id
    wrong = context.add_pending(_fact("the total is 10", value=10))
    rejected, failure = context.reject(wrong.id, "the check printed 9", failure=Gist(kind="failure", text="10 is wrong"))
    assert rejected.status == GistStatus.REJECTED and failure is not None
    assert context.add_support(failure.id, 2).support == 3
    with pytest.raises(ConfigError, match="only ADMITTED"):
        context.add_support(wrong.id)
    later = SharedContext(backend.open())
    assert [g.id for g in later.admitted()] == [target.id, failure.id]
    assert later.admitted()[0].support == 2


def test_reopening_keeps_everything_and_ids_continue(backend: StateBackend, store: RunState) -> None:
    store.set_meta(question="q")
    store.add_gist(_fact("one"))
    TaskQueue(store).add("a task")
    store.add_to_counter("rounds")
    store.close()
    again = backend.open()
    assert again.meta().question == "q" and again.meta().schema_version == backend.schema_version
    assert again.add_gist(_fact("two")).id == "g2"
    assert TaskQueue(again).add("another").id == "t2" and again.counter("rounds") == 1


def test_transactions_hand_out_the_protocol(store: RunState) -> None:
    # Every operation the protocol names is there, in writes and in reads.
    names = [n for n in dir(StateTransaction) if not n.startswith("_")]
    with store.transaction() as tx:
        assert all(callable(getattr(tx, n)) for n in names)
    with store.reading() as tx:
        assert all(callable(getattr(tx, n)) for n in names)
    store_names = [n for n in dir(RunState) if not n.startswith("_")]
    assert all(callable(getattr(store, n)) for n in store_names)
