"""PostgresRunStore beyond the conformance suite: runs sharing a database, URLs and run ids,
the run lock (claims at once, everything else in turn), claim races, schema versions,
missing psycopg. Restarts and the doctor check: tests/test_postgres_faults.py.

Every test makes its own runs (fresh ids) and deletes them; tests that change the schema
version use a database of their own.
"""

from __future__ import annotations

import multiprocessing as mp
import os
import pickle
import subprocess
import sys
import threading
import time
from collections.abc import Iterator
from functools import partial
from pathlib import Path
from typing import Any

import pytest

from delm_rlm.errors import ConfigError, NotFound, RunNotFound, StoreError
from delm_rlm.gists import Gist
from delm_rlm.state.opener import describe_target, open_state
from delm_rlm.state.protocol import ClassificationRecord, RunState, TaskState
from delm_rlm.state.queue import TaskQueue
from delm_rlm.state.sqlite import RunStore
from delm_rlm.state import postgres_schema
from delm_rlm.state.postgres import PostgresRunStore, delete_run, list_runs
from delm_rlm.state.postgres_conn import parse_postgres_url


def admin(url: str) -> Any:
    """A plain psycopg connection, for what the store never does (drop a database, tamper)."""
    import psycopg  # present: the postgres_url fixture skipped the test otherwise

    return psycopg.connect(url, autocommit=True)


@pytest.fixture
def runs(postgres_url: str) -> Iterator[list[PostgresRunStore]]:
    """Stores made in a test (`runs.append(...)`); closed and their runs deleted afterwards."""
    made: list[PostgresRunStore] = []
    yield made
    for store in made:
        store.close()
        delete_run(postgres_url, store.run_id)


@pytest.fixture
def own_database(postgres_url: str) -> Iterator[str]:
    """The URL of a database of this test's own (dropped afterwards): for schema versions."""
    name = f"delm_own_{os.urandom(4).hex()}"
    with admin(postgres_url) as conn:
        conn.execute(f"CREATE DATABASE {name}")
    parts = postgres_url.rsplit("/", 1)
    yield f"{parts[0]}/{name}"
    with admin(postgres_url) as conn:
        conn.execute(f"DROP DATABASE {name} WITH (FORCE)")


def _ready_tasks(store: RunState, n: int) -> None:
    queue = TaskQueue(store, lease_s=600.0)
    with store.transaction():
        for i in range(n):
            queue.add(f"task {i}")


# -- runs, URLs and run ids -------------------------------------------------------------------


def test_runs_in_one_database_are_kept_apart(postgres_url: str, runs: list[PostgresRunStore]) -> None:
    a, b = PostgresRunStore(postgres_url), PostgresRunStore(postgres_url)
    runs += [a, b]
    assert a.run_id != b.run_id
    assert a.add_gist(Gist(kind="fact", text="in a")).id == "g1"
    assert b.add_gist(Gist(kind="fact", text="in b")).id == "g1"  # ids count per run
    TaskQueue(a).add("only in a")
    b.set_meta(question="b's question")
    b.add_to_counter("rounds", 2)
    assert [g.text for g in b.list_gists()] == ["in b"] and TaskQueue(b).all() == []
    assert a.meta().question is None and a.counter("rounds") == 0
    listed = {r["run_id"]: r for r in list_runs(postgres_url)}
    assert listed[b.run_id]["question"] == "b's question" and listed[a.run_id]["status"] == "created"
    assert delete_run(postgres_url, a.run_id) and not delete_run(postgres_url, a.run_id)
    assert [g.text for g in b.list_gists()] == ["in b"]  # the other run is untouched


def test_a_run_is_reopened_by_its_url_or_id_and_unknown_ids_are_refused(
    postgres_url: str, runs: list[PostgresRunStore]
) -> None:
    store = PostgresRunStore(postgres_url)
    runs.append(store)
    store.set_meta(question="q")
    assert store.url == store.run_url == f"{postgres_url}?run={store.run_id}"  # no password here
    for again in (open_state(store.url), open_state(postgres_url, run_id=store.run_id),
                  pickle.loads(pickle.dumps(partial(PostgresRunStore, postgres_url, store.run_id)))()):
        assert isinstance(again, PostgresRunStore) and again.meta().question == "q"
        again.close()
    with pytest.raises(RunNotFound, match="no run 'no-such-run'"):
        PostgresRunStore(postgres_url, "no-such-run")
    with pytest.raises(StoreError, match="already exists"):
        PostgresRunStore(postgres_url, store.run_id, create=True)
    chosen = PostgresRunStore(postgres_url, f"chosen-{os.urandom(3).hex()}", create=True)
    runs.append(chosen)
    assert chosen.meta().status == "created"
    with pytest.raises(ConfigError, match="two run ids"):
        PostgresRunStore(store.url, "another")
    with pytest.raises(ConfigError, match="bad run id"):
        PostgresRunStore(postgres_url, "no spaces/slashes")


def _read_question(url: str, out: Any) -> None:
    store = open_state(url)  # as a worker on another machine would: the URL alone
    out.put(store.meta().question)
    store.close()


def test_another_process_opens_the_run_from_its_url(postgres_url: str, runs: list[PostgresRunStore]) -> None:
    store = PostgresRunStore(postgres_url)
    runs.append(store)
    store.set_meta(question="from the coordinator")
    ctx = mp.get_context("spawn")
    out = ctx.Queue()
    proc = ctx.Process(target=_read_question, args=(store.url, out))
    proc.start()
    assert out.get(timeout=60) == "from the coordinator"
    proc.join(timeout=30)
    assert proc.exitcode == 0


def test_urls_hide_passwords_and_keep_libpq_parameters() -> None:
    parsed = parse_postgres_url("postgresql://ann:s3cret@db.example:6543/runs?sslmode=require&run=r-1")
    assert parsed.run_id == "r-1" and "run=" not in parsed.conninfo
    assert parsed.conninfo == "postgresql://ann:s3cret@db.example:6543/runs?sslmode=require"
    assert parsed.shown == "postgresql://ann:***@db.example:6543/runs?sslmode=require"
    assert parsed.shown_with_run("r-1").endswith("?sslmode=require&run=r-1")
    assert parsed.conninfo_with_run("r-2") == "postgresql://ann:s3cret@db.example:6543/runs?sslmode=require&run=r-2"
    assert parse_postgres_url("postgresql://h/db").shown_with_run("r") == "postgresql://h/db?run=r"
    assert "s3cret" not in describe_target("postgres://ann:s3cret@h/db?password=s3cret")
    with pytest.raises(ConfigError, match="runs"):
        parse_postgres_url("postgresql://h/db?run=a&run=b")


def test_open_state_picks_the_backend(tmp_path: Path, postgres_url: str, runs: list[PostgresRunStore]) -> None:
    file_store = open_state(tmp_path / "one.sqlite")
    assert isinstance(file_store, RunStore) and file_store.path == tmp_path / "one.sqlite"
    (tmp_path / "run_dir").mkdir()
    dir_store = open_state(tmp_path / "run_dir")
    assert isinstance(dir_store, RunStore) and dir_store.path == tmp_path / "run_dir" / "store.sqlite"
    with pytest.raises(ConfigError, match="PostgreSQL"):
        open_state(tmp_path / "two.sqlite", run_id="r1")
    with pytest.raises(ConfigError, match="unknown store URL"):
        open_state("mysql://h/db")
    fresh = open_state(postgres_url)
    assert isinstance(fresh, PostgresRunStore)
    runs.append(fresh)
    for store in (file_store, dir_store):
        store.close()


def test_unreachable_server_is_a_clear_error_naming_the_url_without_password(postgres_url: str) -> None:
    import socket

    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        port = probe.getsockname()[1]  # nothing listens here once the probe is closed
    started = time.monotonic()
    with pytest.raises(StoreError) as err:
        PostgresRunStore(f"postgresql://ann:s3cret@127.0.0.1:{port}/nowhere")
    message = str(err.value)
    assert f"postgresql://ann:***@127.0.0.1:{port}/nowhere" in message and "s3cret" not in message
    assert "cannot reach" in message and "doctor" in message
    assert time.monotonic() - started < 10  # a first open fails fast; only reconnects wait


def test_without_psycopg_a_postgres_url_says_how_to_install_it(tmp_path: Path) -> None:
    code = (
        "import sys; sys.modules['psycopg'] = None\n"
        "from delm_rlm.state.opener import open_state\n"
        f"open_state({str(tmp_path / 'ok.sqlite')!r}).close()  # SQLite needs no psycopg\n"
        "try:\n"
        "    open_state('postgresql://nobody@127.0.0.1:1/none')\n"
        "except Exception as exc:\n"
        "    print(type(exc).__name__, exc)\n"
    )
    env = {**os.environ, "PYTHONPATH": str(Path(__file__).resolve().parent.parent)}
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, env=env, timeout=120)
    assert out.returncode == 0, out.stderr
    assert out.stdout.startswith("StoreError") and "pip install 'delm-rlm[postgres]'" in out.stdout


# -- the run lock and claims ------------------------------------------------------------------


def test_two_workers_racing_for_one_ready_task_1000_times_never_both_get_it(
    postgres_url: str, runs: list[PostgresRunStore]
) -> None:
    rounds = 1000
    coordinator = PostgresRunStore(postgres_url)
    workers = [PostgresRunStore(coordinator.url) for _ in range(2)]  # a connection each
    runs += [coordinator, *workers]
    feed = TaskQueue(coordinator, lease_s=600.0)
    got: list[list[str | None]] = [[], []]
    start, done = threading.Barrier(3), threading.Barrier(3)
    failures: list[BaseException] = []

    def worker(i: int) -> None:
        queue = TaskQueue(workers[i], lease_s=600.0)
        try:
            for _ in range(rounds):
                start.wait(timeout=30)
                task = queue.claim(f"w{i}")
                got[i].append(None if task is None else task.id)
                done.wait(timeout=30)
        except BaseException as exc:  # reported below; the barrier breaks for the others
            failures.append(exc)
            start.abort()
            done.abort()

    threads = [threading.Thread(target=worker, args=(i,)) for i in range(2)]
    for t in threads:
        t.start()
    started = time.monotonic()
    for n in range(1, rounds + 1):
        assert feed.add(f"round {n}").id == f"t{n}"  # exactly one READY task per round
        start.wait(timeout=30)
        done.wait(timeout=30)
    for t in threads:
        t.join(timeout=30)
    assert not failures, failures
    winners = [[g for g in pair if g is not None] for pair in zip(*got)]
    assert all(len(w) == 1 for w in winners), [w for w in winners if len(w) != 1][:5]
    assert [w[0] for w in winners] == [f"t{n}" for n in range(1, rounds + 1)]
    tasks = feed.all()
    assert all(t.state == TaskState.CLAIMED and t.attempts == 1 for t in tasks)
    assert {got[0].count(None), got[1].count(None)} != {0}  # both workers won some rounds
    assert time.monotonic() - started < 60


def test_claims_do_not_wait_for_each_other_but_other_writes_wait_for_claims(
    postgres_url: str, runs: list[PostgresRunStore]
) -> None:
    a = PostgresRunStore(postgres_url)
    b, c = PostgresRunStore(a.url), PostgresRunStore(a.url)  # three connections to one run
    runs += [a, b, c]
    _ready_tasks(a, 3)
    holding, release = threading.Event(), threading.Event()

    def slow_claim() -> None:
        with a.transaction() as tx:
            assert tx.claim_ready_task("slow", 1e12, 1.0).id == "t1"
            holding.set()
            release.wait(timeout=30)

    holder = threading.Thread(target=slow_claim)
    holder.start()
    assert holding.wait(timeout=30)
    started = time.monotonic()
    with b.transaction() as tx:  # a second claimer skips the locked row, without waiting
        assert tx.claim_ready_task("fast", 1e12, 1.0).id == "t2"
    assert time.monotonic() - started < 2
    written: list[float] = []

    def write() -> None:
        c.add_gist(Gist(kind="fact", text="written after the claim"))
        written.append(time.monotonic())

    writer = threading.Thread(target=write)
    writer.start()
    time.sleep(0.5)
    assert not written  # a write that is not a claim waits for the claim in flight
    released_at = time.monotonic()
    release.set()
    holder.join(timeout=30)
    writer.join(timeout=30)
    assert written and written[0] >= released_at
    with c.reading() as tx:
        assert [(t.id, t.lease_holder) for t in tx.list_tasks(states=[TaskState.CLAIMED])] == [
            ("t1", "slow"), ("t2", "fast")]


def test_many_claimers_meeting_one_expired_lease_reap_it_once_without_deadlock(
    postgres_url: str, runs: list[PostgresRunStore]
) -> None:
    now = [1000.0]
    first = PostgresRunStore(postgres_url)
    runs.append(first)
    queue = TaskQueue(first, lease_s=10.0, max_attempts=5, clock=lambda: now[0])
    queue.add("the one task")
    assert queue.claim("gone").id == "t1"
    now[0] += 60  # the lease of "gone" has expired
    claimers = [PostgresRunStore(first.url) for _ in range(8)]
    runs += claimers
    start = threading.Barrier(len(claimers))
    results: list[Any] = []

    def claim(i: int) -> None:
        start.wait(timeout=30)
        try:
            task = TaskQueue(claimers[i], lease_s=10.0, max_attempts=5, clock=lambda: now[0]).claim(f"c{i}")
            results.append(task.id if task else None)
        except BaseException as exc:
            results.append(exc)

    threads = [threading.Thread(target=claim, args=(i,)) for i in range(len(claimers))]
    for t in threads:
        t.start()
    for t in threads:
        t.join(timeout=60)
    assert results.count("t1") == 1 and results.count(None) == len(claimers) - 1, results
    task = queue.get("t1")
    assert task.attempts == 2 and task.errors == ["lease of gone expired (attempt 1/5)"]


# -- schema versions --------------------------------------------------------------------------


def test_a_fresh_database_gets_the_schema_and_a_newer_one_is_refused(own_database: str) -> None:
    store = PostgresRunStore(own_database)
    assert store.meta().schema_version == postgres_schema.SCHEMA_VERSION
    store.close()
    with admin(own_database) as conn:
        assert postgres_schema.stored_version(conn, "db") == postgres_schema.SCHEMA_VERSION
        newer = postgres_schema.SCHEMA_VERSION + 1
        conn.execute("UPDATE delm_rlm.schema_info SET version = %s", (newer,))
    with pytest.raises(StoreError) as err:
        PostgresRunStore(own_database)
    assert f"schema v{newer}" in str(err.value) and f"up to v{postgres_schema.SCHEMA_VERSION}" in str(err.value)


def test_migrations_step_an_older_database_forward_once(own_database: str) -> None:
    old = PostgresRunStore(own_database)  # a database at today's version, with a run in it
    old.add_gist(Gist(kind="fact", text="kept across the migration"))
    old.close()
    steps: list[int] = []

    def to_next(conn: Any) -> None:
        steps.append(1)
        conn.execute("ALTER TABLE delm_rlm.gists ADD COLUMN migrated_note text")

    current = postgres_schema.SCHEMA_VERSION
    migrations = {**postgres_schema.MIGRATIONS, current: to_next}
    with admin(own_database) as conn:
        assert postgres_schema.ensure_schema(conn, "db", migrations=migrations, target=current + 1) == current
        assert postgres_schema.ensure_schema(conn, "db", migrations=migrations, target=current + 1) == current + 1
        assert steps == [1]  # the step ran once
        assert postgres_schema.stored_version(conn, "db") == current + 1
        assert conn.execute("SELECT data, migrated_note FROM delm_rlm.gists").fetchone()[1] is None
        meta = conn.execute("SELECT value FROM delm_rlm.meta WHERE key = 'schema_version'").fetchone()
        assert meta[0] == str(current + 1)  # every run's meta says the new version
        with pytest.raises(StoreError, match="no migration from store schema"):
            postgres_schema.ensure_schema(conn, "db", migrations=migrations, target=current + 2)


def test_a_v1_database_gains_classification_items_and_keeps_its_records(own_database: str) -> None:
    old = PostgresRunStore(own_database)
    run_id = old.run_id
    old.close()
    with admin(own_database) as conn:  # rewritten as v1 made it: no items column, one record
        conn.execute("ALTER TABLE delm_rlm.classifications DROP COLUMN items")
        conn.execute("UPDATE delm_rlm.schema_info SET version = 1")
        conn.execute("INSERT INTO delm_rlm.classifications(run_id, key, labels, instruction, result) "
                     "VALUES (%s, 'k', '[\"a\"]', '', '[\"a\"]')", (run_id,))
        assert postgres_schema.ensure_schema(conn, "db") == 1
    store = PostgresRunStore(own_database, run_id)
    new = ClassificationRecord(key="k2", labels=["a"], instruction="", result=[None], items=["an item"])
    store.append_classification(new)
    assert store.classifications() == [ClassificationRecord(key="k", labels=["a"], instruction="", result=["a"]), new]
    store.close()


def test_openers_racing_on_a_fresh_database_create_the_schema_once(own_database: str) -> None:
    stores: list[Any] = []

    def open_one() -> None:
        try:
            stores.append(PostgresRunStore(own_database))
        except BaseException as exc:
            stores.append(exc)

    threads = [threading.Thread(target=open_one) for _ in range(6)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(timeout=60)
    assert all(isinstance(s, PostgresRunStore) for s in stores), stores
    assert len({s.run_id for s in stores}) == 6
    for s in stores:
        s.close()


def test_text_postgres_cannot_hold_is_a_config_error_and_changes_nothing(
    postgres_url: str, runs: list[PostgresRunStore]
) -> None:
    store = PostgresRunStore(postgres_url)
    runs.append(store)
    queue = TaskQueue(store)
    with pytest.raises(ConfigError, match="cannot store"):
        queue.add("a goal with a \x00 byte")  # PostgreSQL text has no NUL; SQLite's has
    assert queue.all() == [] and queue.add("a fine goal").id == "t1"
    assert store.add_gist(Gist(kind="fact", text="JSON escapes \x00 in gists")).id == "g1"


def test_a_damaged_blob_is_refused_on_read(postgres_url: str, runs: list[PostgresRunStore]) -> None:
    store = PostgresRunStore(postgres_url)
    runs.append(store)
    store.put_blob("corpus", b"the documents")
    with admin(postgres_url) as conn:
        conn.execute("UPDATE delm_rlm.blobs SET data = 'tampered'::bytea WHERE run_id = %s", (store.run_id,))
    with pytest.raises(StoreError, match="no longer matches its SHA-256"):
        store.get_blob("corpus")
    with pytest.raises(NotFound):
        store.get_blob("other")
