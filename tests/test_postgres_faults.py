"""PostgresRunStore under faults: the server restarted (scripts/pg-test-server restart) while
stores are idle, inside a transaction and under a working worker; and `check_store`, what
`delm-rlm doctor --store` reports, on good, unreachable and under-privileged stores.
"""

from __future__ import annotations

import os
import socket
import sqlite3
import threading
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from delm_rlm.errors import StoreError
from delm_rlm.gists import Gist, GistStatus, Provenance
from delm_rlm.state.check import check_store
from delm_rlm.state.context import SharedContext
from delm_rlm.state.postgres import PostgresRunStore, delete_run
from delm_rlm.state.protocol import TaskState
from delm_rlm.state.queue import TaskQueue
from delm_rlm.state.sqlite import SCHEMA_VERSION as SQLITE_SCHEMA_VERSION
from delm_rlm.state.sqlite import RunStore

@pytest.fixture
def store(postgres_url: str) -> Iterator[PostgresRunStore]:
    made = PostgresRunStore(postgres_url)
    yield made
    made.close()
    delete_run(postgres_url, made.run_id)


# -- restarts ---------------------------------------------------------------------------------


def test_an_idle_store_reconnects_after_a_restart(store: PostgresRunStore, restart_server: Any) -> None:
    kept = store.add_gist(Gist(kind="fact", text="written before the restart"))
    restart_server()
    after = store.add_gist(Gist(kind="fact", text="written after it"))  # no error: it reconnects
    assert after.id == "g2" and [g.id for g in store.list_gists()] == [kept.id, after.id]
    assert store.stats["reconnects"] == 1


def test_a_transaction_cut_by_a_restart_fails_clearly_and_leaves_nothing(
    store: PostgresRunStore, restart_server: Any
) -> None:
    store.add_gist(Gist(kind="fact", text="committed"))
    with pytest.raises(StoreError, match="nothing of it was committed"):
        with store.transaction() as tx:
            tx.add_gist(Gist(kind="fact", text="cut half-way"))
            restart_server()
            tx.add_gist(Gist(kind="fact", text="never reaches the server"))
    assert [g.text for g in store.list_gists()] == ["committed"]
    assert store.add_gist(Gist(kind="fact", text="next")).id == "g2"  # the cut one used no id


def test_a_worker_finishes_across_a_restart_and_keeps_every_admission(
    store: PostgresRunStore, restart_server: Any
) -> None:
    n_tasks = 40
    queue = TaskQueue(store, lease_s=600.0)
    with store.transaction():
        for i in range(n_tasks):
            queue.add(f"count chunk {i}")
    worker_store = PostgresRunStore(store.url)
    done: list[str] = []
    errors: list[str] = []
    failures: list[BaseException] = []

    def work() -> None:
        # An at-least-once worker: after any StoreError it reads the state again and goes on
        # from there (its own claimed task, its own proposed gist), so a cut step is redone.
        wq, context = TaskQueue(worker_store, lease_s=600.0), SharedContext(worker_store)
        deadline = time.monotonic() + 120
        while time.monotonic() < deadline:
            try:
                mine = [t for t in wq.all() if t.state == TaskState.CLAIMED and t.lease_holder == "w"]
                task = mine[0] if mine else wq.claim("w")
                if task is None:
                    return
                ours = [g for g in worker_store.list_gists() if g.provenance.task_id == task.id]
                gist = ours[0] if ours else context.add_pending(Gist(
                    kind="partial", text=f"{task.goal} gives 1", value=1,
                    provenance=Provenance(task_id=task.id, agent_id="w")))
                if gist.status == GistStatus.PENDING:
                    gist = context.admit(gist.id, note="checked")
                wq.complete(task.id, "w", [gist.id])
                done.append(task.id)
            except StoreError as exc:
                errors.append(str(exc))
                time.sleep(0.05)
            except BaseException as exc:
                failures.append(exc)
                return
        failures.append(TimeoutError("the worker did not finish within 120 s"))

    worker = threading.Thread(target=work)
    worker.start()
    while len(done) < n_tasks // 3 and worker.is_alive():
        time.sleep(0.01)
    restarted_at = len(done)
    restart_server()
    worker.join(timeout=180)
    worker_store.close()
    assert not failures, failures
    assert restarted_at < n_tasks  # the restart came in the middle of the work
    tasks = queue.all()
    assert all(t.state == TaskState.DONE and len(t.gist_ids) == 1 for t in tasks)
    admitted = store.list_gists(status=GistStatus.ADMITTED)
    assert sorted(g.id for g in admitted) == sorted(t.gist_ids[0] for t in tasks)  # one each
    assert len(store.list_gists()) == n_tasks  # no gist proposed twice
    assert worker_store.stats["reconnects"] >= 1
    assert all("PostgreSQL store" in e or "COMMIT" in e for e in errors), errors


# -- the doctor check -------------------------------------------------------------------------


def test_check_store_on_a_good_url(postgres_url: str, store: PostgresRunStore) -> None:
    report = check_store(postgres_url)
    assert report.ok and report.reachable and report.backend == "postgresql", report.problems
    assert report.schema_version == report.code_schema_version and report.server.startswith("PostgreSQL ")
    assert report.runs is not None and report.runs >= 1 and report.user == "delm"
    assert report.privileges and all(report.privileges.values())
    with_run = check_store(store.url)
    assert with_run.ok and with_run.run_id == store.run_id and with_run.run_found
    unknown = check_store(f"{postgres_url}?run=no-such-run")
    assert not unknown.ok and unknown.run_found is False and "no run 'no-such-run'" in unknown.problems[0]
    assert report.model_dump(mode="json")["ok"] is True  # serializable for `doctor --json`


def test_check_store_on_an_unreachable_url_names_it_without_the_password(postgres_url: str) -> None:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        port = probe.getsockname()[1]
    report = check_store(f"postgresql://ann:s3cret@127.0.0.1:{port}/nowhere?run=r1")
    assert not report.ok and not report.reachable and report.privileges == {"connect": False}
    assert report.target == f"postgresql://ann:***@127.0.0.1:{port}/nowhere?run=r1"
    assert "cannot reach" in report.problems[0] and "s3cret" not in report.model_dump_json()


def test_check_store_names_missing_privileges(postgres_url: str, store: PostgresRunStore) -> None:
    import psycopg

    role = f"delm_reader_{os.urandom(3).hex()}"
    with psycopg.connect(postgres_url, autocommit=True) as conn:
        conn.execute(f"CREATE ROLE {role} LOGIN")
        conn.execute(f"GRANT USAGE ON SCHEMA delm_rlm TO {role}")
        conn.execute(f"GRANT SELECT ON ALL TABLES IN SCHEMA delm_rlm TO {role}")
    try:
        as_reader = postgres_url.replace("//delm@", f"//{role}@")
        report = check_store(as_reader)
        assert report.reachable and not report.ok and report.user == role
        assert report.privileges["SELECT on delm_rlm.tasks"] and not report.privileges["INSERT on delm_rlm.tasks"]
        assert "INSERT on delm_rlm.gists" in report.problems[0] and "GRANT" in report.problems[0]
        reader = PostgresRunStore(as_reader, store.run_id)  # reading needs only SELECT
        assert reader.meta().schema_version == report.code_schema_version
        with pytest.raises(StoreError, match="needs USAGE on schema delm_rlm"):
            reader.add_gist(Gist(kind="fact", text="refused"))
        reader.close()
    finally:
        with psycopg.connect(postgres_url, autocommit=True) as conn:
            conn.execute(f"DROP OWNED BY {role}")
            conn.execute(f"DROP ROLE {role}")


def test_check_store_on_sqlite_paths(tmp_path: Path) -> None:
    fresh = check_store(tmp_path / "new" / "store.sqlite")
    assert fresh.ok and fresh.backend == "sqlite" and fresh.schema_version is None
    RunStore(tmp_path / "run" / "store.sqlite").close()
    existing = check_store(tmp_path / "run")  # a run directory: its store.sqlite
    assert existing.ok and existing.schema_version == SQLITE_SCHEMA_VERSION
    assert existing.target == str(tmp_path / "run" / "store.sqlite")
    newer = tmp_path / "newer.sqlite"
    conn = sqlite3.connect(newer)
    conn.execute(f"PRAGMA user_version = {SQLITE_SCHEMA_VERSION + 1}")
    conn.close()
    report = check_store(newer)
    assert not report.ok and f"v{SQLITE_SCHEMA_VERSION + 1}" in report.problems[0]


def test_a_user_who_may_not_create_the_schema_is_told_so(postgres_url: str) -> None:
    import psycopg

    suffix = os.urandom(3).hex()
    database, role = f"delm_fresh_{suffix}", f"delm_guest_{suffix}"
    with psycopg.connect(postgres_url, autocommit=True) as conn:
        conn.execute(f"CREATE DATABASE {database}")
        conn.execute(f"CREATE ROLE {role} LOGIN")
    guest_url = f"{postgres_url.rsplit('/', 1)[0]}/{database}".replace("//delm@", f"//{role}@")
    try:
        report = check_store(guest_url)
        assert report.reachable and report.schema_version is None and not report.ok
        assert report.privileges["create schema"] is False and "GRANT CREATE ON DATABASE" in report.problems[0]
        with pytest.raises(StoreError, match="may not create the delm-rlm schema"):
            PostgresRunStore(guest_url)
    finally:
        with psycopg.connect(postgres_url, autocommit=True) as conn:
            conn.execute(f"DROP DATABASE {database} WITH (FORCE)")
            conn.execute(f"DROP ROLE {role}")
