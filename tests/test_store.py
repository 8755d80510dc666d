"""RunStore: one SQLite file per run; every write all-or-nothing; reopening resumes."""

from __future__ import annotations

import multiprocessing as mp
import os
import sqlite3
import tempfile
from pathlib import Path

import pytest
from hypothesis import HealthCheck, settings
from hypothesis import strategies as st
from hypothesis.stateful import RuleBasedStateMachine, invariant, precondition, rule

from delm_rlm.state.context import SharedContext
from delm_rlm.gists import CodeEvidence, Gist, GistKind, GistStatus, QuoteEvidence
from delm_rlm.state.protocol import ClassificationRecord
from delm_rlm.state.queue import TaskQueue
from delm_rlm.errors import RunNotFound
from delm_rlm.state.sqlite import SCHEMA_VERSION, NotFound, RunStore, StoreError, read_snapshot
from store_faults import fail_before_commit


class Boom(Exception):
    pass


def _raise() -> None:
    raise Boom("injected failure before COMMIT")


def _fact(text: str, value: object = None) -> Gist:
    return Gist(kind=GistKind.FACT, text=text, value=value)


def test_new_store_records_schema_and_wal(tmp_path: Path) -> None:
    path = tmp_path / "runs" / "r1.sqlite"
    store = RunStore(path)
    meta = store.meta()
    assert meta.schema_version == SCHEMA_VERSION and meta.status == "created" and meta.created_at
    raw = sqlite3.connect(path)
    assert raw.execute("PRAGMA journal_mode").fetchone()[0] == "wal"
    assert raw.execute("PRAGMA user_version").fetchone()[0] == SCHEMA_VERSION


def test_meta_roundtrip_and_validation(tmp_path: Path) -> None:
    store = RunStore(tmp_path / "r.sqlite")
    store.set_meta(question="How many?", method="hybrid", config={"agents": 4}, seed=7)
    store.set_meta(status="answered", answer="12", finished_at="2025-01-01T00:00:00+00:00")
    store.close()
    meta = RunStore(tmp_path / "r.sqlite").meta()
    assert (meta.question, meta.method, meta.config, meta.answer) == ("How many?", "hybrid", {"agents": 4}, "12")
    assert meta.model_extra == {"seed": 7}
    with pytest.raises(ValueError, match="bad run meta value"):
        store.set_meta(config="not a dict")
    with pytest.raises(ValueError, match="JSON-serializable"):
        store.set_meta(extra_thing=object())


def test_gist_ids_are_stable_and_validated(tmp_path: Path) -> None:
    store = RunStore(tmp_path / "r.sqlite")
    ids = [store.add_gist(_fact(f"claim {i}")).id for i in range(3)]
    assert ids == ["g1", "g2", "g3"]
    with pytest.raises(ValueError, match="store assigns ids"):
        store.add_gist(_fact("x").model_copy(update={"id": "g9"}))
    with pytest.raises(NotFound, match="no gist 'g42'"):
        store.get_gist("g42")
    with pytest.raises(ValueError, match="300"):
        store.update_gist("g1", text="y" * 301)
    assert store.get_gist("g1").text == "claim 0"  # the refused update changed nothing
    assert [g.id for g in store.list_gists(kinds="FACT", status=["pending"])] == ids


def test_gist_model_errors_say_what_to_do() -> None:
    with pytest.raises(ValueError, match="limit is 300"):
        Gist(kind="fact", text="x" * 301)
    with pytest.raises(ValueError, match="unknown gist kind 'guess'"):
        Gist(kind="guess", text="x")
    with pytest.raises(ValueError, match="plain JSON"):
        Gist(kind="fact", text="x", value={1, 2})
    with pytest.raises(ValueError, match="before start"):
        QuoteEvidence(doc=0, start=5, end=2, quote="x")
    with pytest.raises(ValueError, match="must name the gist"):
        Gist(kind="fact", text="x", status=GistStatus.MERGED)
    g = Gist(kind="PARTIAL", text="  doc 3 has 4 errors ", value=4,
             evidence=[{"type": "code", "code": "print(4)", "output": "4"}])
    assert g.kind == GistKind.PARTIAL and g.text == "doc 3 has 4 errors"
    assert isinstance(g.evidence[0], CodeEvidence)
    assert Gist.model_validate_json(g.model_dump_json()) == g


def test_not_a_run_store_is_refused(tmp_path: Path) -> None:
    junk = tmp_path / "junk.sqlite"
    junk.write_bytes(b"this is not sqlite" * 100)
    with pytest.raises(StoreError, match="cannot be opened as a run store"):
        RunStore(junk)
    other = tmp_path / "other.sqlite"
    sqlite3.connect(other).execute("CREATE TABLE users(id)")
    with pytest.raises(StoreError, match="something else"):
        RunStore(other)
    newer = tmp_path / "newer.sqlite"
    RunStore(newer).close()
    conn = sqlite3.connect(newer)
    conn.execute(f"PRAGMA user_version = {SCHEMA_VERSION + 1}")
    conn.close()
    with pytest.raises(StoreError, match="Upgrade delm-rlm"):
        RunStore(newer)


def test_a_v1_store_is_migrated_and_its_gists_are_found_as_duplicates(tmp_path: Path) -> None:
    """Runs stored before the duplicate index (schema v1) open, keep every gist, and their
    admitted gists are found as duplicates of new proposals (what a resumed run needs)."""
    path = tmp_path / "v1.sqlite"
    store = RunStore(path)
    ctx = SharedContext(store)
    kept = ctx.record(Gist(kind="partial", text="chunk 2 has 7 spam lines", value=7))
    ctx.add_pending(Gist(kind="fact", text="doc 1 is a letter"))
    store.close()
    conn = sqlite3.connect(path)  # rewrite the file as v1 wrote it: no dedupe_key column
    conn.execute("DROP INDEX gists_dedupe")
    conn.execute("ALTER TABLE gists DROP COLUMN dedupe_key")
    conn.execute("PRAGMA user_version = 1")
    conn.commit()
    conn.close()

    reopened = RunStore(path)
    assert reopened.meta().schema_version == SCHEMA_VERSION
    assert [g.text for g in reopened.list_gists()] == ["chunk 2 has 7 spam lines", "doc 1 is a letter"]
    found = SharedContext(reopened).find_duplicate(Gist(kind="partial", text="Chunk 2 has 7 SPAM lines.", value=7))
    assert found is not None and found.id == kept.id
    raw = sqlite3.connect(path)
    assert raw.execute("PRAGMA user_version").fetchone()[0] == SCHEMA_VERSION
    assert "gists_dedupe" in {r[0] for r in raw.execute("SELECT name FROM sqlite_master WHERE type='index'")}


def _rewrite_as_v2(path: Path) -> None:
    """Rewrite a run file as schema v2 wrote it: no run counters, no classification log."""
    conn = sqlite3.connect(path)
    conn.execute("DROP TABLE run_counters")
    conn.execute("DROP TABLE classifications")
    conn.execute("PRAGMA user_version = 2")
    conn.commit()
    conn.close()


def test_a_v2_store_is_migrated_and_its_meta_counters_count_on(tmp_path: Path) -> None:
    """A v2 run kept the team's round and added-task counts in meta; opened by v3 they are
    counters, and the classification log starts empty."""
    path = tmp_path / "v2.sqlite"
    store = RunStore(path)
    store.set_meta(question="q", finalize_rounds=2, added_tasks=1)
    store.add_gist(_fact("kept"))
    store.close()
    _rewrite_as_v2(path)
    assert read_snapshot(path).meta["finalize_rounds"] == 2  # the report reads it as it is
    assert sqlite3.connect(path).execute("PRAGMA user_version").fetchone()[0] == 2  # unchanged

    reopened = RunStore(path)
    assert reopened.meta().schema_version == SCHEMA_VERSION
    assert (reopened.counter("finalize_rounds"), reopened.counter("added_tasks")) == (2, 1)
    assert reopened.add_to_counter("finalize_rounds") == 3
    assert reopened.classifications() == []
    assert [g.text for g in reopened.list_gists()] == ["kept"] and reopened.meta().question == "q"
    reopened.close()
    assert RunStore(path).counter("finalize_rounds") == 3  # migrated once, not on every open


def test_a_v3_store_is_migrated_and_holds_blobs_checked_by_sha256(tmp_path: Path) -> None:
    path = tmp_path / "v3.sqlite"
    store = RunStore(path)
    store.add_gist(_fact("kept"))
    store.close()
    conn = sqlite3.connect(path)  # as schema v3 wrote it: no blob table
    conn.execute("DROP TABLE blobs")
    conn.execute("ALTER TABLE classifications DROP COLUMN items")
    conn.execute("PRAGMA user_version = 3")
    conn.commit()
    conn.close()
    reopened = RunStore(path)
    assert reopened.meta().schema_version == SCHEMA_VERSION
    assert [g.text for g in reopened.list_gists()] == ["kept"]
    assert reopened.put_blob("corpus", b"the documents").size == 13
    assert reopened.get_blob("corpus") == b"the documents"
    raw = sqlite3.connect(path)
    raw.execute("UPDATE blobs SET data = ? WHERE name = 'corpus'", (b"tampered",))
    raw.commit()
    raw.close()
    with pytest.raises(StoreError, match="no longer matches its SHA-256"):
        reopened.get_blob("corpus")


def test_a_v4_store_is_migrated_and_keeps_its_records_without_items(tmp_path: Path) -> None:
    """Records written before v5 carry no items; they replay as before, new ones keep theirs."""
    path = tmp_path / "v4.sqlite"
    store = RunStore(path)
    store.close()
    conn = sqlite3.connect(path)  # as schema v4 wrote it: classifications without items
    conn.execute("ALTER TABLE classifications DROP COLUMN items")
    conn.execute("INSERT INTO classifications(key, labels, instruction, result) VALUES ('k', '[\"a\"]', '', '[\"a\"]')")
    conn.execute("PRAGMA user_version = 4")
    conn.commit()
    conn.close()
    reopened = RunStore(path)
    assert reopened.meta().schema_version == SCHEMA_VERSION == 5
    old = ClassificationRecord(key="k", labels=["a"], instruction="", result=["a"])
    new = ClassificationRecord(key="k2", labels=["a"], instruction="", result=[None], items=["an item"])
    reopened.append_classification(new)
    assert reopened.classifications() == [old, new]
    reopened.close()
    assert RunStore(path).classifications() == [old, new]  # migrated once


def test_read_snapshot_is_read_only_and_refuses_what_is_no_store(tmp_path: Path) -> None:
    path = tmp_path / "r.sqlite"
    store = RunStore(path)
    store.add_gist(_fact("one"))
    TaskQueue(store).add("a task")
    store.close()
    before = path.read_bytes()
    snap = read_snapshot(path)
    assert [g["text"] for g in snap.gists] == ["one"] and snap.tasks[0]["deps"] == []
    assert "seq" not in snap.tasks[0] and snap.meta["schema_version"] == SCHEMA_VERSION
    assert path.read_bytes() == before
    with pytest.raises(RunNotFound, match="cannot open the run store read-only"):
        read_snapshot(tmp_path / "missing.sqlite")
    junk = tmp_path / "junk.sqlite"
    junk.write_bytes(b"this is not sqlite" * 100)
    with pytest.raises(RunNotFound, match="not a delm-rlm run store"):
        read_snapshot(junk)


def test_exception_inside_a_multi_write_transaction_leaves_nothing(tmp_path: Path) -> None:
    store = RunStore(tmp_path / "r.sqlite")
    ctx = SharedContext(store)
    target = ctx.record(_fact("the total is 9", 9))
    dup = ctx.add_pending(_fact("The total is 9.", 9))
    before = store.list_gists()
    with fail_before_commit(store, _raise):
        # merge writes two rows (the duplicate, the target's support): both or neither.
        with pytest.raises(Boom):
            ctx.merge(dup.id, target.id)
        with pytest.raises(Boom):
            ctx.reject(dup.id, "wrong", failure=Gist(kind="failure", text="tried X; wrong"))
        with pytest.raises(Boom):
            TaskQueue(store).add("a task")
    assert store.list_gists() == before
    assert TaskQueue(store).all() == []
    assert store.add_gist(_fact("next")).id == "g3"  # no id was burnt by the rollbacks


def _write_then_die(path: str, commit: bool) -> None:
    store = RunStore(path)
    store.add_gist(_fact("committed before the crash"))
    ctx = SharedContext(store)
    if commit:
        ctx.record(_fact("written by the dying process"))
    else:
        with fail_before_commit(store, lambda: os._exit(3)):  # the process dies inside the transaction
            ctx.record(_fact("written by the dying process"))
    os._exit(3)  # no close, no cleanup: like kill -9


@pytest.mark.parametrize("commit", [False, True])
def test_killed_process_keeps_committed_and_nothing_half_written(tmp_path: Path, commit: bool) -> None:
    path = str(tmp_path / "r.sqlite")
    proc = mp.get_context("spawn").Process(target=_write_then_die, args=(path, commit))
    proc.start()
    proc.join(timeout=60)
    assert proc.exitcode == 3
    texts = [g.text for g in RunStore(path).list_gists()]
    expected = ["committed before the crash"] + (["written by the dying process"] if commit else [])
    assert texts == expected


def test_threads_share_one_store(tmp_path: Path) -> None:
    import threading

    store = RunStore(tmp_path / "r.sqlite")

    def work(n: int) -> None:
        for i in range(50):
            store.add_gist(_fact(f"thread {n} claim {i}"))
            store.list_gists(status="pending")

    threads = [threading.Thread(target=work, args=(n,)) for n in range(4)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    ids = [g.id for g in store.list_gists()]
    assert ids == [f"g{i}" for i in range(1, 201)]


async def test_transaction_held_across_await_is_refused(tmp_path: Path) -> None:
    import asyncio

    store = RunStore(tmp_path / "r.sqlite")
    entered = asyncio.Event()

    async def bad() -> None:
        with store.transaction() as tx:
            tx.add_gist(_fact("from the bad task"))
            entered.set()
            await asyncio.sleep(0.05)

    async def other() -> None:
        await entered.wait()
        with pytest.raises(RuntimeError, match="across an await"):
            store.add_gist(_fact("from another task"))

    await asyncio.gather(bad(), other())
    assert [g.text for g in store.list_gists()] == ["from the bad task"]


# ---------------------------------------------------------------------------------------------
# State machine: random verifier decisions and meta writes, some of them failing before
# COMMIT, and reopens. The store always equals the model of what committed.

texts = st.text(alphabet="abcdefgh 0123456789", min_size=1, max_size=40).filter(str.strip)


class StoreMachine(RuleBasedStateMachine):
    def __init__(self) -> None:
        super().__init__()
        self.dir = tempfile.TemporaryDirectory()
        self.path = Path(self.dir.name) / "run.sqlite"
        self._open()
        self.model: dict[str, dict] = {}  # id -> status, support, merged_into, text
        self.meta: dict[str, object] = {}

    def _open(self) -> None:
        self.store = RunStore(self.path)
        self.ctx = SharedContext(self.store)

    def teardown(self) -> None:
        self.store.close()
        self.dir.cleanup()

    def _ids(self, status: str) -> list[str]:
        return sorted(i for i, m in self.model.items() if m["status"] == status)

    def _run(self, crash: bool, fn, *args):  # type: ignore[no-untyped-def]
        """Run a write; when `crash`, fail it just before COMMIT. True if it committed."""
        if not crash:
            return fn(*args)
        with fail_before_commit(self.store, _raise):
            with pytest.raises(Boom):
                fn(*args)
        return None

    @rule(text=texts, kind=st.sampled_from(list(GistKind)), crash=st.booleans())
    def propose(self, text: str, kind: GistKind, crash: bool) -> None:
        g = self._run(crash, self.ctx.add_pending, Gist(kind=kind, text=text))
        if g is not None:
            assert g.id == f"g{len(self.model) + 1}"
            self.model[g.id] = dict(status="pending", support=1, merged_into=None, text=g.text)

    @precondition(lambda self: self._ids("pending"))
    @rule(data=st.data(), crash=st.booleans())
    def admit(self, data: st.DataObject, crash: bool) -> None:
        gid = data.draw(st.sampled_from(self._ids("pending")))
        if self._run(crash, self.ctx.admit, gid, "ok") is not None:
            self.model[gid]["status"] = "admitted"

    @precondition(lambda self: self._ids("pending"))
    @rule(data=st.data(), crash=st.booleans())
    def reject(self, data: st.DataObject, crash: bool) -> None:
        gid = data.draw(st.sampled_from(self._ids("pending")))
        failure = Gist(kind="failure", text=f"tried {gid}; wrong")
        if self._run(crash, self.ctx.reject, gid, "wrong", failure) is not None:
            self.model[gid]["status"] = "rejected"
            fid = f"g{len(self.model) + 1}"
            self.model[fid] = dict(status="admitted", support=1, merged_into=None, text=failure.text)

    @precondition(lambda self: self._ids("pending") and self._ids("admitted"))
    @rule(data=st.data(), crash=st.booleans())
    def merge(self, data: st.DataObject, crash: bool) -> None:
        gid = data.draw(st.sampled_from(self._ids("pending")))
        into = data.draw(st.sampled_from(self._ids("admitted")))
        if self._run(crash, self.ctx.merge, gid, into) is not None:
            self.model[gid].update(status="merged", merged_into=into)
            self.model[into]["support"] += self.model[gid]["support"]

    @rule(answer=texts, crash=st.booleans())
    def set_meta(self, answer: str, crash: bool) -> None:
        if self._run(crash, lambda: self.store.set_meta(answer=answer, status="answered")) is not None:
            self.meta.update(answer=answer, status="answered")

    @rule()
    def reopen(self) -> None:
        self.store.close()
        self._open()

    @invariant()
    def store_equals_committed_model(self) -> None:
        got = {
            g.id: dict(status=g.status.value, support=g.support, merged_into=g.merged_into, text=g.text)
            for g in self.store.list_gists()
        }
        assert got == self.model
        meta = self.store.meta()
        for key, value in self.meta.items():
            assert getattr(meta, key) == value


StoreMachine.TestCase.settings = settings(
    max_examples=60, stateful_step_count=30, deadline=None,
    suppress_health_check=[HealthCheck.too_slow],
)
TestStoreMachine = StoreMachine.TestCase
