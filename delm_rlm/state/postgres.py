"""PostgresRunStore: one run's state in a PostgreSQL database (the `state.protocol` on
PostgreSQL, psycopg 3), shared by processes on many machines.

Runs. Several runs share one database: every table of the schema `delm_rlm` has a `run_id`
column (see `state.postgres_schema`). A store opens one run, named by its id: in the URL
(`postgresql://user@host/db?run=RUN_ID`) or as `run_id=`. Without one, a new run is made with
a fresh id: `store.run_id`; `store.url` is the run's URL to print (password as ***) and
`store.run_url` the one to hand to a worker on another machine (password as given; a
password from PGPASSWORD or ~/.pgpass, which libpq reads, need not be in the URL at all).

Isolation: one lock per run, shared by claims and exclusive for every other write
transaction (the rules in detail: `state.postgres_tx`). Claims run at once, each taking its
row with `SELECT ... FOR UPDATE SKIP LOCKED`, so workers never wait for one another's claims
and never get the same task; every other write of a run waits its turn, as under SQLite's
BEGIN IMMEDIATE, so nothing a transaction has read changes before it commits. Why not row
locks on every read instead: the queue reads in orders no lock order can fix (`_settle`
reads the pending tasks, then their dependencies), so two completions of tasks that feed one
pending task would deadlock. Why not SERIALIZABLE with retries: the body of `with
store.transaction()` is the caller's code, which the store cannot run again, so a
serialization failure could only surface as an error. Runs have their own locks: runs
sharing a database never wait for each other. Reads (`reading()`) take no lock: one
REPEATABLE READ snapshot.

Ids: "g<n>"/"t<n>" come from per-run counter rows updated inside the inserting transaction,
so a rollback uses none up (a sequence would).

Connections: one per store per process (a forked child opens its own), guarded by a
re-entrant lock like `RunStore`'s. A server restart or a dropped connection is noticed at the
next transaction's first round trip, which reconnects (waiting up to `reconnect_wait_s` for
the server) and goes on, since nothing of that transaction had reached the server. A
transaction cut in the middle raises StoreError (the server undid it; retry the operation),
and one cut during COMMIT says it may or may not have committed.
"""

from __future__ import annotations

import asyncio
import json
import os
import threading
import time
from collections.abc import Iterator
from contextlib import contextmanager
from datetime import datetime, timezone
from typing import TYPE_CHECKING, Any

from pydantic import ValidationError

from delm_rlm.errors import ConfigError, RunNotFound, RunStateError, StoreError
from delm_rlm.gists import Gist
from delm_rlm.state.postgres_conn import (
    check_run_id,
    connect,
    connect_patiently,
    connection_lost,
    first_line,
    load_psycopg,
    parse_postgres_url,
    translate_error,
)
from delm_rlm.state.postgres_schema import LOCK_SPACE, SCHEMA_VERSION, ensure_schema
from delm_rlm.state.postgres_tx import PostgresTx
from delm_rlm.state.protocol import (
    BlobInfo,
    ClassificationRecord,
    KindFilter,
    RunMeta,
    StatusFilter,
    StoreSnapshot,
    utc_now_iso,
)

if TYPE_CHECKING:
    import psycopg

__all__ = ["SCHEMA_VERSION", "PostgresRunStore", "PostgresTx", "delete_run", "list_runs", "new_run_id"]

_START_ATTEMPTS = 3  # first round trips of one transaction, reconnecting between them


def new_run_id() -> str:
    """A fresh run id: UTC time, then random hex ('20250101-120000-3fa9c1d2')."""
    return f"{datetime.now(timezone.utc).strftime('%Y%m%d-%H%M%S')}-{os.urandom(4).hex()}"


class PostgresRunStore:
    """One run's state in a PostgreSQL database (see the module docstring).

    `PostgresRunStore(url)` makes a new run with a fresh id; `PostgresRunStore(url, run_id)`
    (or `?run=RUN_ID` in the URL) opens an existing one (RunNotFound when there is none);
    `create=True` with a run id makes a run of that id (StoreError when it exists). Safe to
    share between threads and asyncio tasks of one process, and to open from any number of
    processes and machines at once (each opens its own store).
    """

    def __init__(
        self,
        url: str,
        run_id: str | None = None,
        *,
        create: bool = False,
        reconnect_wait_s: float = 30.0,
    ) -> None:
        self.pg = load_psycopg()
        self.target = parse_postgres_url(url)
        if run_id is not None and self.target.run_id is not None and run_id != self.target.run_id:
            raise ConfigError(f"two run ids given: {run_id!r} and ?run={self.target.run_id} in the URL")
        wanted = run_id if run_id is not None else self.target.run_id
        self.run_id = check_run_id(wanted) if wanted is not None else new_run_id()
        self.url = self.target.shown_with_run(self.run_id)  # printable: no password
        self.run_url = self.target.conninfo_with_run(self.run_id)  # reopens it; not for logs
        self.reconnect_wait_s = reconnect_wait_s
        self.lock_key = 0
        self.stats: dict[str, float] = {"commits": 0, "rollbacks": 0, "lock_wait_s": 0.0, "reconnects": 0}
        self._lock = threading.RLock()
        self._conn: psycopg.Connection[Any] | None = None
        self._pid = -1
        self._tx: PostgresTx | None = None
        self._depth = 0
        self._owner_task: object | None = None
        self._ever_connected = False
        conn = self._connection()
        try:
            ensure_schema(conn, self.target.shown)
            if wanted is None or create:
                self._create_run(conn, explicit=wanted is not None)
            else:
                self._load_run(conn)
        except BaseException as exc:
            conn.close()
            self._conn = None
            if isinstance(exc, (self.pg.Error, ValueError)) and not isinstance(exc, ConfigError):
                raise translate_error(self.pg, exc, self.url, in_transaction=False) from exc
            raise

    # -- the run's row -------------------------------------------------------------------------

    def _create_run(self, conn: psycopg.Connection[Any], *, explicit: bool) -> None:
        while True:
            conn.execute("BEGIN")
            row = conn.execute(
                "INSERT INTO delm_rlm.runs(run_id) VALUES (%s) ON CONFLICT DO NOTHING RETURNING lock_key",
                (self.run_id,),
            ).fetchone()
            if row is not None:
                break
            conn.execute("ROLLBACK")
            if explicit:
                raise StoreError(
                    f"run {self.run_id!r} already exists in {self.target.shown}; open it with "
                    "create=False (or ?run= in the URL), or give a new run id"
                )
            self.run_id = new_run_id()
            self.url = self.target.shown_with_run(self.run_id)
            self.run_url = self.target.conninfo_with_run(self.run_id)
        self.lock_key = int(row[0])
        for key, value in (("schema_version", SCHEMA_VERSION), ("created_at", utc_now_iso())):
            conn.execute(
                "INSERT INTO delm_rlm.meta(run_id, key, value) VALUES (%s, %s, %s)",
                (self.run_id, key, json.dumps(value)),
            )
        conn.execute("COMMIT")

    def _load_run(self, conn: psycopg.Connection[Any]) -> None:
        row = conn.execute("SELECT lock_key FROM delm_rlm.runs WHERE run_id = %s", (self.run_id,)).fetchone()
        if row is None:
            raise RunNotFound(
                f"no run {self.run_id!r} in {self.target.shown}; check the run id "
                "(delm_rlm.state.postgres.list_runs(url) lists them), or leave ?run= out to start a new run"
            )
        self.lock_key = int(row[0])

    # -- connection and transactions -----------------------------------------------------------

    def _forget_parent(self) -> None:
        if self._pid not in (-1, os.getpid()):
            # A forked child: the parent's connection and transaction are neither used nor
            # closed here (psycopg leaves a connection of another process alone).
            self._conn, self._tx, self._depth, self._pid = None, None, 0, -1

    def _connection(self) -> psycopg.Connection[Any]:
        self._forget_parent()
        pid = os.getpid()
        if self._conn is None or self._conn.closed or self._conn.broken:
            if self._ever_connected:
                self._conn = connect_patiently(self.pg, self.target, self.reconnect_wait_s)
                self.stats["reconnects"] += 1
            else:
                self._conn = connect(self.pg, self.target)
            self._pid, self._ever_connected = pid, True
        return self._conn

    def start_transaction(self, first_sql: str) -> psycopg.Connection[Any]:
        """Send a transaction's first round trip (BEGIN and its lock). Nothing of the
        transaction has reached the server before it, so a lost connection is replaced and
        the round trip sent again."""
        for attempt in range(1, _START_ATTEMPTS + 1):
            conn = self._connection()
            try:
                conn.execute(first_sql)
                return conn
            except (self.pg.OperationalError, self.pg.InterfaceError) as exc:
                if not connection_lost(conn) or attempt == _START_ATTEMPTS:
                    raise translate_error(self.pg, exc, self.url, in_transaction=False) from exc
                self._conn = None  # gone (the server restarted): reconnect and send it again
            except self.pg.Error as exc:
                raise translate_error(self.pg, exc, self.url, in_transaction=False) from exc
        raise AssertionError("unreachable")

    def _end(self, tx: PostgresTx, *, commit: bool) -> None:
        conn = tx.connection
        if not tx.began or conn is None:
            return
        sql = "COMMIT" if commit else "ROLLBACK"
        if tx.holds_shared:
            sql += f"; SELECT pg_advisory_unlock_shared({LOCK_SPACE}, {self.lock_key})"
        try:
            conn.execute(sql)
        except (self.pg.Error, ValueError) as exc:
            lost = connection_lost(conn)
            if not lost and tx.holds_shared:
                self._release_shared(conn)
            if not commit:
                return  # undoing: the server undoes a transaction whose connection is gone
            if lost:
                raise StoreError(
                    f"lost the connection to {self.url} during COMMIT ({first_line(exc)}); the "
                    "transaction may or may not have been committed: read the state again "
                    "before repeating it"
                ) from exc
            raise translate_error(self.pg, exc, self.url, in_transaction=True) from exc

    def _release_shared(self, conn: psycopg.Connection[Any]) -> None:
        try:
            if conn.info.transaction_status != self.pg.pq.TransactionStatus.IDLE:
                conn.execute("ROLLBACK")
            conn.execute(f"SELECT pg_advisory_unlock_shared({LOCK_SPACE}, {self.lock_key})")
        except self.pg.Error:
            self._conn = None  # a fresh connection holds no lock

    def _check_owner(self) -> None:
        if _current_task() is not self._owner_task:
            raise RunStateError(
                "a store transaction was left open across an await; transactions must be synchronous"
            )

    @contextmanager
    def transaction(self) -> Iterator[PostgresTx]:
        """A write transaction under the run lock. Re-entrant within one thread.

        Never `await` inside: other asyncio tasks of the thread would enter it.
        """
        waited_from = time.perf_counter()
        with self._lock:
            self._forget_parent()
            if self._tx is not None:
                self._check_owner()
                if self._tx.read_only:
                    raise RunStateError("a write transaction cannot start inside reading(); "
                                        "open store.transaction() first and read through it")
                self._depth += 1
                try:
                    yield self._tx
                finally:
                    self._depth -= 1
                return
            self.stats["lock_wait_s"] += time.perf_counter() - waited_from
            self._connection()  # a forked child forgets the parent's transaction here
            tx = PostgresTx(self, read_only=False)
            self._tx, self._depth, self._owner_task = tx, 1, _current_task()
            try:
                try:
                    yield tx
                except BaseException:
                    self.stats["rollbacks"] += 1
                    self._end(tx, commit=False)
                    raise
                self._end(tx, commit=True)
                self.stats["commits"] += 1
            finally:
                self._tx, self._depth, self._owner_task = None, 0, None

    @contextmanager
    def reading(self) -> Iterator[PostgresTx]:
        """Consistent reads over several statements (one REPEATABLE READ snapshot, no lock);
        inside a transaction, reads through it."""
        with self._lock:
            self._forget_parent()
            if self._tx is not None:
                self._check_owner()
                yield self._tx
                return
            self._connection()
            tx = PostgresTx(self, read_only=True)
            self._tx, self._owner_task = tx, _current_task()
            try:
                try:
                    yield tx
                except BaseException:
                    self._end(tx, commit=False)
                    raise
                self._end(tx, commit=True)
            finally:
                self._tx, self._owner_task = None, None

    def location(self) -> str:
        return self.url

    def close(self) -> None:
        with self._lock:
            if self._conn is not None and self._pid == os.getpid():
                self._conn.close()
            self._conn = None

    def __enter__(self) -> PostgresRunStore:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def __repr__(self) -> str:
        return f"PostgresRunStore({self.url!r})"

    # -- meta --------------------------------------------------------------------------------

    def meta(self) -> RunMeta:
        with self.reading() as tx:
            return RunMeta.model_validate(tx.meta_values())

    def get_meta(self, key: str, default: Any = None) -> Any:
        with self.reading() as tx:
            row = tx.execute(
                "SELECT value FROM delm_rlm.meta WHERE run_id = %s AND key = %s", (self.run_id, key)
            ).fetchone()
        return default if row is None else json.loads(row[0])

    def set_meta(self, **values: Any) -> RunMeta:
        """Set meta keys (question, method, config, status, answer, finished_at, or any
        JSON-serializable extra key). Known keys are type-checked."""
        if "schema_version" in values:
            raise ConfigError("schema_version is written by the store itself")
        with self.transaction() as tx:
            try:
                meta = RunMeta.model_validate({**tx.meta_values(), **values})
            except ValidationError as exc:
                raise ConfigError(f"bad run meta value: {exc}") from exc
            try:
                dumped = meta.model_dump(mode="json")
                json.dumps({k: dumped[k] for k in values}, allow_nan=False)
            except (TypeError, ValueError) as exc:
                raise ConfigError(f"run meta values must be JSON-serializable: {exc}") from exc
            tx.write_meta({k: dumped[k] for k in values})
        return meta

    # -- gists and counters, each in its own transaction -------------------------------------

    def add_gist(self, gist: Gist) -> Gist:
        with self.transaction() as tx:
            return tx.add_gist(gist)

    def get_gist(self, gist_id: str) -> Gist:
        with self.reading() as tx:
            return tx.get_gist(gist_id)

    def update_gist(self, gist_id: str, **changes: Any) -> Gist:
        with self.transaction() as tx:
            return tx.update_gist(gist_id, **changes)

    def list_gists(
        self, status: StatusFilter = None, kinds: KindFilter = None, dedupe_key: str | None = None
    ) -> list[Gist]:
        with self.reading() as tx:
            return tx.list_gists(status, kinds, dedupe_key)

    def add_to_counter(self, name: str, delta: int = 1) -> int:
        with self.transaction() as tx:
            return tx.add_to_counter(name, delta)

    def counter(self, name: str) -> int:
        with self.reading() as tx:
            return tx.counter(name)

    # -- the classification log, blobs, the report snapshot ------------------------------------

    def append_classification(self, record: ClassificationRecord) -> None:
        with self.transaction() as tx:
            tx.append_classification(record)

    def classifications(self) -> list[ClassificationRecord]:
        with self.reading() as tx:
            return tx.classifications()

    def put_blob(self, name: str, data: bytes) -> BlobInfo:
        with self.transaction() as tx:
            return tx.put_blob(name, data)

    def get_blob(self, name: str) -> bytes:
        with self.reading() as tx:
            return tx.get_blob(name)

    def blob_info(self, name: str) -> BlobInfo:
        with self.reading() as tx:
            return tx.blob_info(name)

    def snapshot(self) -> StoreSnapshot:
        with self.reading() as tx:
            return tx.snapshot()


def list_runs(url: str) -> list[dict[str, Any]]:
    """The runs a database holds, oldest first: run_id, created_at (ISO 8601), question and
    status from their meta. Empty when the database has no delm-rlm schema yet."""
    pg = load_psycopg()
    target = parse_postgres_url(url)
    with connect(pg, target) as conn:
        if conn.execute("SELECT to_regclass('delm_rlm.runs')").fetchone()[0] is None:
            return []
        rows = conn.execute(
            "SELECT r.run_id, r.created_at, q.value, s.value FROM delm_rlm.runs r "
            "LEFT JOIN delm_rlm.meta q ON q.run_id = r.run_id AND q.key = 'question' "
            "LEFT JOIN delm_rlm.meta s ON s.run_id = r.run_id AND s.key = 'status' "
            "ORDER BY r.lock_key"
        ).fetchall()
    return [
        {"run_id": run_id, "created_at": created.isoformat(),
         "question": json.loads(question) if question else None,
         "status": json.loads(status) if status else "created"}
        for run_id, created, question, status in rows
    ]


def delete_run(url: str, run_id: str) -> bool:
    """Delete one run and everything it stored; False when there was no such run."""
    pg = load_psycopg()
    target = parse_postgres_url(url)
    with connect(pg, target) as conn:
        if conn.execute("SELECT to_regclass('delm_rlm.runs')").fetchone()[0] is None:
            return False
        deleted = conn.execute(
            "DELETE FROM delm_rlm.runs WHERE run_id = %s RETURNING run_id", (check_run_id(run_id),)
        ).fetchone()
    return deleted is not None


def _current_task() -> object | None:
    try:
        return asyncio.current_task()
    except RuntimeError:  # no running event loop in this thread
        return None
