"""RunStore: everything one run writes, in one SQLite file.

Design choices (why):
- WAL journal: readers never block the writer and a killed process loses nothing committed.
  `synchronous=NORMAL` (the WAL default recommendation): committed transactions survive a
  process crash; only an OS crash / power loss may drop the last few.
- Every write runs in `BEGIN IMMEDIATE ... COMMIT`: the write lock is taken at the start, so
  read-then-write sequences (assign the next id, claim a task) cannot interleave with another
  writer, in this process or another one. `busy_timeout` makes a waiting writer sleep instead
  of failing.
- One connection per process, guarded by a re-entrant lock: threads and asyncio tasks of a
  process take turns (a transaction never awaits), processes are serialized by SQLite.
- Ids ("g1", "t1") come from a counter row updated inside the same transaction that inserts.
"""

from __future__ import annotations

from delm_rlm.errors import NotFound, StoreError

import asyncio
import json
import os
import sqlite3
import threading
import time
from collections.abc import Callable, Iterable, Iterator
from contextlib import contextmanager
from datetime import datetime, timezone
from pathlib import Path
from typing import Any

from pydantic import BaseModel, ConfigDict, Field, ValidationError

from delm_rlm.gists import Gist, GistKind, GistStatus, dedupe_key, parse_kind

SCHEMA_VERSION = 2  # v2: gists.dedupe_key (indexed duplicate candidates)

_SCHEMA = """
CREATE TABLE IF NOT EXISTS meta (
    key   TEXT PRIMARY KEY,
    value TEXT NOT NULL               -- JSON
);
CREATE TABLE IF NOT EXISTS counters (
    name TEXT PRIMARY KEY,            -- 'g' for gists, 't' for tasks
    last INTEGER NOT NULL
);
CREATE TABLE IF NOT EXISTS gists (
    seq    INTEGER PRIMARY KEY,       -- the number in the id: g17 -> 17
    id     TEXT NOT NULL UNIQUE,
    kind   TEXT NOT NULL,
    status TEXT NOT NULL,
    data   TEXT NOT NULL,             -- the whole Gist as JSON
    dedupe_key TEXT NOT NULL DEFAULT ''  -- gists.dedupe_key(kind, text)
);
CREATE INDEX IF NOT EXISTS gists_status_kind ON gists(status, kind);
CREATE INDEX IF NOT EXISTS gists_dedupe ON gists(status, dedupe_key);
CREATE TABLE IF NOT EXISTS tasks (
    seq           INTEGER PRIMARY KEY,
    id            TEXT NOT NULL UNIQUE,
    goal          TEXT NOT NULL,
    deps          TEXT NOT NULL,      -- JSON list of task ids
    state         TEXT NOT NULL,
    lease_holder  TEXT,
    lease_expires REAL,
    attempts      INTEGER NOT NULL DEFAULT 0,
    max_attempts  INTEGER NOT NULL,
    gist_ids      TEXT NOT NULL DEFAULT '[]',
    created_by    TEXT,
    last_error    TEXT,
    errors        TEXT NOT NULL DEFAULT '[]',
    created_at    REAL NOT NULL,
    updated_at    REAL NOT NULL
);
CREATE INDEX IF NOT EXISTS tasks_state ON tasks(state, seq);
"""


class RunMeta(BaseModel):
    """The run's meta table. Unknown keys are kept (extra='allow')."""

    model_config = ConfigDict(extra="allow")

    schema_version: int = SCHEMA_VERSION
    question: str | None = None
    method: str | None = None
    config: dict[str, Any] = Field(default_factory=dict)
    status: str = "created"
    answer: str | None = None
    created_at: str | None = None  # ISO 8601 UTC
    finished_at: str | None = None


def utc_now_iso() -> str:
    return datetime.now(timezone.utc).isoformat(timespec="milliseconds")


class Tx:
    """Operations inside one open transaction (see `RunStore.transaction`)."""

    def __init__(self, conn: sqlite3.Connection) -> None:
        self.conn = conn

    def next_id(self, prefix: str) -> str:
        row = self.conn.execute(
            "UPDATE counters SET last = last + 1 WHERE name = ? RETURNING last", (prefix,)
        ).fetchone()
        if row is None:
            self.conn.execute("INSERT INTO counters(name, last) VALUES (?, 1)", (prefix,))
            return f"{prefix}1"
        return f"{prefix}{row[0]}"

    def add_gist(self, gist: Gist) -> Gist:
        if gist.id is not None:
            raise ValueError(
                f"gist already has id {gist.id}; the store assigns ids, pass a gist with id=None"
            )
        gid = self.next_id("g")
        stored = gist.model_copy(update={"id": gid})
        self.conn.execute(
            "INSERT INTO gists(seq, id, kind, status, data, dedupe_key) VALUES (?, ?, ?, ?, ?, ?)",
            (int(gid[1:]), gid, stored.kind.value, stored.status.value, stored.model_dump_json(),
             dedupe_key(stored.kind, stored.text)),
        )
        return stored

    def get_gist(self, gist_id: str) -> Gist:
        row = self.conn.execute("SELECT data FROM gists WHERE id = ?", (gist_id,)).fetchone()
        if row is None:
            raise NotFound(f"no gist {gist_id!r} in this run; gist ids look like 'g1', 'g2'")
        return Gist.model_validate_json(row[0])

    def update_gist(self, gist_id: str, **changes: Any) -> Gist:
        if "id" in changes:
            raise ValueError("a gist's id never changes")
        current = self.get_gist(gist_id)
        merged = current.model_dump()
        merged.update(changes)
        updated = Gist.model_validate(merged)  # re-validates the whole gist
        self.conn.execute(
            "UPDATE gists SET kind = ?, status = ?, data = ?, dedupe_key = ? WHERE id = ?",
            (updated.kind.value, updated.status.value, updated.model_dump_json(),
             dedupe_key(updated.kind, updated.text), gist_id),
        )
        return updated

    def list_gists(
        self,
        status: GistStatus | str | Iterable[GistStatus | str] | None = None,
        kinds: GistKind | str | Iterable[GistKind | str] | None = None,
        dedupe_key: str | None = None,
    ) -> list[Gist]:
        sql = "SELECT data FROM gists"
        where: list[str] = []
        args: list[str] = []
        if status is not None:
            values = [GistStatus(s).value for s in _as_list(status)]
            where.append(f"status IN ({','.join('?' * len(values))})")
            args += values
        if kinds is not None:
            values = [parse_kind(k).value for k in _as_list(kinds)]
            where.append(f"kind IN ({','.join('?' * len(values))})")
            args += values
        if dedupe_key is not None:
            where.append("dedupe_key = ?")
            args.append(dedupe_key)
        if where:
            sql += " WHERE " + " AND ".join(where)
        sql += " ORDER BY seq"
        return [Gist.model_validate_json(r[0]) for r in self.conn.execute(sql, args)]


def _as_list(value: Any) -> list[Any]:
    if isinstance(value, (str, bytes)) or not isinstance(value, Iterable):
        return [value]
    return list(value)


class RunStore:
    """One run's SQLite (WAL) file: meta, gists and tasks. Opening an existing file resumes it.

    Safe to share between threads and asyncio tasks of one process, and to open from several
    processes at once (each opens its own `RunStore(path)`).
    """

    def __init__(self, path: str | Path, *, busy_timeout_s: float = 30.0) -> None:
        self.path = Path(path)
        self.busy_timeout_s = busy_timeout_s
        # Test hook: called inside every transaction just before COMMIT. Raising from it
        # rolls the whole transaction back (used to prove nothing is half-written).
        self.before_commit: Callable[[], None] | None = None
        self._lock = threading.RLock()
        self._conn: sqlite3.Connection | None = None
        self._pid = -1
        self._depth = 0
        self._owner_task: object | None = None
        # Contention counters: write transactions committed / rolled back, and the seconds
        # spent waiting for the write lock (this process's lock plus SQLite's).
        self.stats: dict[str, float] = {"commits": 0, "rollbacks": 0, "lock_wait_s": 0.0}
        if self.path.is_dir():
            raise StoreError(f"{self.path} is a directory; give the path of a run file (*.sqlite)")
        self.path.parent.mkdir(parents=True, exist_ok=True)
        self._init_schema()

    # -- connection and transactions ------------------------------------------------------

    def _connection(self) -> sqlite3.Connection:
        pid = os.getpid()
        if self._conn is None or self._pid != pid:
            if self._pid not in (-1, pid):
                # Forked child: the parent's connection must be neither used nor closed here.
                # (Prefer the spawn start method, or open a new RunStore in the child.)
                self._conn, self._depth = None, 0
            try:
                conn = sqlite3.connect(
                    self.path,
                    timeout=self.busy_timeout_s,
                    isolation_level=None,  # we issue BEGIN/COMMIT ourselves
                    check_same_thread=False,  # guarded by self._lock
                )
                conn.execute(f"PRAGMA busy_timeout = {int(self.busy_timeout_s * 1000)}")
                mode = conn.execute("PRAGMA journal_mode = WAL").fetchone()[0]
                conn.execute("PRAGMA synchronous = NORMAL")
            except sqlite3.DatabaseError as exc:
                raise StoreError(
                    f"{self.path} cannot be opened as a run store ({exc}); "
                    "give a new path or an existing delm-rlm run file"
                ) from exc
            if str(mode).lower() != "wal":
                raise StoreError(
                    f"{self.path}: SQLite refused WAL mode (got {mode!r}); "
                    "put the run file on a local disk (WAL does not work on network filesystems)"
                )
            self._conn, self._pid = conn, pid
        return self._conn

    @contextmanager
    def transaction(self) -> Iterator[Tx]:
        """A write transaction (BEGIN IMMEDIATE). Re-entrant within one thread.

        Never `await` inside: other asyncio tasks of the thread would enter it.
        """
        waited_from = time.perf_counter()
        with self._lock:
            conn = self._connection()
            task = _current_task()
            if self._depth > 0:
                if task is not self._owner_task:
                    raise RuntimeError(
                        "a store transaction was left open across an await; "
                        "transactions must be synchronous"
                    )
                self._depth += 1
                try:
                    yield Tx(conn)
                finally:
                    self._depth -= 1
                return
            try:
                conn.execute("BEGIN IMMEDIATE")
            except sqlite3.OperationalError as exc:
                raise StoreError(
                    f"{self.path}: could not take the write lock within {self.busy_timeout_s}s "
                    f"({exc}); another process holds it too long"
                ) from exc
            self.stats["lock_wait_s"] += time.perf_counter() - waited_from
            self._depth, self._owner_task = 1, task
            try:
                yield Tx(conn)
                if self.before_commit is not None:
                    self.before_commit()
                conn.execute("COMMIT")
                self.stats["commits"] += 1
            except BaseException:
                if conn.in_transaction:
                    conn.execute("ROLLBACK")
                self.stats["rollbacks"] += 1
                raise
            finally:
                self._depth, self._owner_task = 0, None

    @contextmanager
    def reading(self) -> Iterator[Tx]:
        """Consistent reads over several statements (a deferred read transaction)."""
        with self._lock:
            conn = self._connection()
            if self._depth > 0:  # inside a write transaction: read through it
                if _current_task() is not self._owner_task:
                    raise RuntimeError(
                        "a store transaction was left open across an await; "
                        "transactions must be synchronous"
                    )
                yield Tx(conn)
                return
            conn.execute("BEGIN")
            try:
                yield Tx(conn)
            finally:
                conn.execute("COMMIT")

    def _init_schema(self) -> None:
        with self.transaction() as tx:
            version = tx.conn.execute("PRAGMA user_version").fetchone()[0]
            if version > SCHEMA_VERSION:
                raise StoreError(
                    f"{self.path} has store schema v{version}; this delm-rlm reads up to "
                    f"v{SCHEMA_VERSION}. Upgrade delm-rlm to open it."
                )
            if version == 0:
                foreign = [
                    r[0]
                    for r in tx.conn.execute("SELECT name FROM sqlite_master WHERE type='table'")
                    if r[0] not in {"meta", "counters", "gists", "tasks"}
                ]
                if foreign:
                    raise StoreError(
                        f"{self.path} is an SQLite file of something else (tables {foreign}); "
                        "give a new path for the run store"
                    )
                for statement in _SCHEMA.split(";"):
                    if statement.strip():
                        tx.conn.execute(statement)
                tx.conn.execute(f"PRAGMA user_version = {SCHEMA_VERSION}")
                self._write_meta(
                    tx, {"schema_version": SCHEMA_VERSION, "created_at": utc_now_iso()}
                )
            elif version == 1:
                self._migrate_v1(tx)

    @staticmethod
    def _migrate_v1(tx: Tx) -> None:
        """v1 -> v2: add and fill the indexed duplicate key, so runs stored by an older
        delm-rlm resume with every gist findable as a duplicate."""
        tx.conn.execute("ALTER TABLE gists ADD COLUMN dedupe_key TEXT NOT NULL DEFAULT ''")
        rows = tx.conn.execute("SELECT id, data FROM gists").fetchall()
        for gist_id, data in rows:
            gist = Gist.model_validate_json(data)
            tx.conn.execute(
                "UPDATE gists SET dedupe_key = ? WHERE id = ?", (dedupe_key(gist.kind, gist.text), gist_id)
            )
        tx.conn.execute("CREATE INDEX IF NOT EXISTS gists_dedupe ON gists(status, dedupe_key)")
        tx.conn.execute(f"PRAGMA user_version = {SCHEMA_VERSION}")
        RunStore._write_meta(tx, {"schema_version": SCHEMA_VERSION})

    def close(self) -> None:
        with self._lock:
            if self._conn is not None and self._pid == os.getpid():
                self._conn.close()
            self._conn = None

    def __enter__(self) -> RunStore:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    # -- meta --------------------------------------------------------------------------------

    @staticmethod
    def _write_meta(tx: Tx, values: dict[str, Any]) -> None:
        for key, value in values.items():
            tx.conn.execute(
                "INSERT INTO meta(key, value) VALUES (?, ?) "
                "ON CONFLICT(key) DO UPDATE SET value = excluded.value",
                (key, json.dumps(value, allow_nan=False)),
            )

    def meta(self) -> RunMeta:
        with self.reading() as tx:
            rows = tx.conn.execute("SELECT key, value FROM meta").fetchall()
        return RunMeta.model_validate({k: json.loads(v) for k, v in rows})

    def get_meta(self, key: str, default: Any = None) -> Any:
        with self.reading() as tx:
            row = tx.conn.execute("SELECT value FROM meta WHERE key = ?", (key,)).fetchone()
        return default if row is None else json.loads(row[0])

    def set_meta(self, **values: Any) -> RunMeta:
        """Set meta keys (question, method, config, status, answer, finished_at, or any
        JSON-serializable extra key). Known keys are type-checked."""
        if "schema_version" in values:
            raise ValueError("schema_version is written by the store itself")
        with self.transaction() as tx:
            rows = tx.conn.execute("SELECT key, value FROM meta").fetchall()
            current = {k: json.loads(v) for k, v in rows}
            try:
                meta = RunMeta.model_validate({**current, **values})
            except ValidationError as exc:
                raise ValueError(f"bad run meta value: {exc}") from exc
            try:
                dumped = meta.model_dump(mode="json")
                self._write_meta(tx, {k: dumped[k] for k in values})
            except (TypeError, ValueError) as exc:
                raise ValueError(f"run meta values must be JSON-serializable: {exc}") from exc
        return meta

    # -- gists ---------------------------------------------------------------------------------

    def add_gist(self, gist: Gist) -> Gist:
        """Insert a gist; returns it with its new id ('g1', 'g2', ...)."""
        with self.transaction() as tx:
            return tx.add_gist(gist)

    def get_gist(self, gist_id: str) -> Gist:
        with self.reading() as tx:
            return tx.get_gist(gist_id)

    def update_gist(self, gist_id: str, **changes: Any) -> Gist:
        """Change fields of a stored gist (validated as a whole); returns the new gist."""
        with self.transaction() as tx:
            return tx.update_gist(gist_id, **changes)

    def list_gists(
        self,
        status: GistStatus | str | Iterable[GistStatus | str] | None = None,
        kinds: GistKind | str | Iterable[GistKind | str] | None = None,
        dedupe_key: str | None = None,
    ) -> list[Gist]:
        """Gists in id order, optionally filtered by status(es), kind(s) and duplicate key
        (`delm_rlm.gists.dedupe_key`)."""
        with self.reading() as tx:
            return tx.list_gists(status, kinds, dedupe_key)


def _current_task() -> object | None:
    try:
        return asyncio.current_task()
    except RuntimeError:  # no running event loop in this thread
        return None
