"""RunStore: everything one run writes, in one SQLite file (the `state.protocol` on SQLite).

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
- Ids ("g1", "t1") come from a sequence row updated inside the same transaction that inserts.
- The schema has a version (`PRAGMA user_version`); older files are migrated on open, one
  step at a time, inside the opening transaction.

All of the project's SQL for a run lives here: the queue's and the report reader's too.
"""

from __future__ import annotations

import asyncio
import json
import os
import sqlite3
import threading
import time
from collections.abc import Callable, Iterable, Iterator, Sequence
from contextlib import contextmanager
from pathlib import Path
from typing import Any

from pydantic import ValidationError

from delm_rlm.errors import ConfigError, NotFound, RunNotFound, RunStateError, StoreError
from delm_rlm.gists import Gist, GistStatus, dedupe_key, parse_kind
from delm_rlm.state import sqlite_blobs, sqlite_classifications
from delm_rlm.state.protocol import (
    check_task_changes,
    BlobInfo,
    ClassificationRecord,
    KindFilter,
    RunMeta,
    StatusFilter,
    StoreSnapshot,
    Task,
    TaskState,
    utc_now_iso,
)

SCHEMA_VERSION = 5  # v2: gists.dedupe_key (indexed duplicates); v3: run_counters, classifications; v4: blobs;
# v5: classifications.items

_V3_TABLES = """
CREATE TABLE IF NOT EXISTS run_counters (
    name  TEXT PRIMARY KEY,           -- e.g. 'finalize_rounds', 'added_tasks'
    value INTEGER NOT NULL
);
CREATE TABLE IF NOT EXISTS classifications (
    seq         INTEGER PRIMARY KEY,  -- append order
    key         TEXT NOT NULL,        -- ClassificationLog.key(items, labels, instruction)
    labels      TEXT NOT NULL,        -- JSON list
    instruction TEXT NOT NULL,
    result      TEXT NOT NULL         -- JSON list: one label (or null) per item
);
"""

_SCHEMA = """
CREATE TABLE IF NOT EXISTS meta (
    key   TEXT PRIMARY KEY,
    value TEXT NOT NULL               -- JSON
);
CREATE TABLE IF NOT EXISTS counters (
    name TEXT PRIMARY KEY,            -- id sequences: 'g' for gists, 't' for tasks
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
""" + _V3_TABLES + sqlite_blobs.BLOBS_TABLE + sqlite_classifications.ITEMS_COLUMN

_OWN_TABLES = {"meta", "counters", "gists", "tasks", "run_counters", "classifications", "blobs"}
# v2 runs kept these team counters in meta; v3 copies them into run_counters.
_V2_META_COUNTERS = ("finalize_rounds", "added_tasks")

_TASK_COLUMNS = (
    "id", "goal", "deps", "state", "lease_holder", "lease_expires", "attempts", "max_attempts",
    "gist_ids", "created_by", "last_error", "errors", "created_at", "updated_at",
)
_TASK_SELECT = ", ".join(_TASK_COLUMNS)
_TASK_JSON_COLUMNS = ("deps", "gist_ids", "errors")


def _task_from_row(row: Sequence[Any]) -> Task:
    data = dict(zip(_TASK_COLUMNS, row))
    for key in _TASK_JSON_COLUMNS:
        data[key] = json.loads(data[key])
    return Task.model_validate(data)


def _as_list(value: Any) -> list[Any]:
    if isinstance(value, (str, bytes)) or not isinstance(value, Iterable):
        return [value]
    return list(value)


def _check_counter(name: str, delta: int = 0) -> None:
    if not isinstance(name, str) or not name.strip():
        raise ConfigError(f"a counter needs a name (a non-empty string), got {name!r}")
    if isinstance(delta, bool) or not isinstance(delta, int):
        raise ConfigError(f"counters add whole numbers; got delta {delta!r}")


class Tx:
    """The operations of one open transaction (see `RunStore.transaction`): the protocol's
    `StateTransaction` on SQLite."""

    def __init__(self, conn: sqlite3.Connection) -> None:
        self._conn = conn

    def _next_id(self, prefix: str) -> str:
        row = self._conn.execute(
            "UPDATE counters SET last = last + 1 WHERE name = ? RETURNING last", (prefix,)
        ).fetchone()
        if row is None:
            self._conn.execute("INSERT INTO counters(name, last) VALUES (?, 1)", (prefix,))
            return f"{prefix}1"
        return f"{prefix}{row[0]}"

    # -- gists --------------------------------------------------------------------------------

    def add_gist(self, gist: Gist) -> Gist:
        if gist.id is not None:
            raise ConfigError(
                f"gist already has id {gist.id}; the store assigns ids, pass a gist with id=None"
            )
        gid = self._next_id("g")
        stored = gist.model_copy(update={"id": gid})
        self._conn.execute(
            "INSERT INTO gists(seq, id, kind, status, data, dedupe_key) VALUES (?, ?, ?, ?, ?, ?)",
            (int(gid[1:]), gid, stored.kind.value, stored.status.value, stored.model_dump_json(),
             dedupe_key(stored.kind, stored.text)),
        )
        return stored

    def get_gist(self, gist_id: str) -> Gist:
        row = self._conn.execute("SELECT data FROM gists WHERE id = ?", (gist_id,)).fetchone()
        if row is None:
            raise NotFound(f"no gist {gist_id!r} in this run; gist ids look like 'g1', 'g2'")
        return Gist.model_validate_json(row[0])

    def update_gist(self, gist_id: str, **changes: Any) -> Gist:
        if "id" in changes:
            raise ConfigError("a gist's id never changes")
        current = self.get_gist(gist_id)
        merged = current.model_dump()
        merged.update(changes)
        updated = Gist.model_validate(merged)  # re-validates the whole gist
        self._conn.execute(
            "UPDATE gists SET kind = ?, status = ?, data = ?, dedupe_key = ? WHERE id = ?",
            (updated.kind.value, updated.status.value, updated.model_dump_json(),
             dedupe_key(updated.kind, updated.text), gist_id),
        )
        return updated

    def list_gists(
        self, status: StatusFilter = None, kinds: KindFilter = None, dedupe_key: str | None = None
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
        return [Gist.model_validate_json(r[0]) for r in self._conn.execute(sql, args)]

    # -- tasks --------------------------------------------------------------------------------

    def add_task(
        self, goal: str, deps: Sequence[str], max_attempts: int, created_by: str | None, now: float
    ) -> Task:
        task_id = self._next_id("t")
        row = self._conn.execute(
            "INSERT INTO tasks(seq, id, goal, deps, state, max_attempts, created_by, created_at, "
            f"updated_at) VALUES (?, ?, ?, ?, 'pending', ?, ?, ?, ?) RETURNING {_TASK_SELECT}",
            (int(task_id[1:]), task_id, goal, json.dumps(list(deps)), max_attempts, created_by,
             now, now),
        ).fetchone()
        return _task_from_row(row)

    def get_task(self, task_id: str) -> Task:
        row = self._conn.execute(
            f"SELECT {_TASK_SELECT} FROM tasks WHERE id = ?", (task_id,)
        ).fetchone()
        if row is None:
            raise NotFound(f"no task {task_id!r} in this run; task ids look like 't1', 't2'")
        return _task_from_row(row)

    def list_tasks(
        self,
        states: Iterable[TaskState] | None = None,
        ids: Iterable[str] | None = None,
        lease_expires_by: float | None = None,
    ) -> list[Task]:
        where: list[str] = []
        args: list[Any] = []
        if states is not None:
            values = [TaskState(s).value for s in _as_list(states)]
            if not values:
                return []
            where.append(f"state IN ({','.join('?' * len(values))})")
            args += values
        if ids is not None:
            wanted = [str(i) for i in _as_list(ids)]
            if not wanted:
                return []
            where.append("id IN (SELECT value FROM json_each(?))")  # any number of ids
            args.append(json.dumps(wanted))
        if lease_expires_by is not None:
            where.append("lease_expires <= ?")
            args.append(lease_expires_by)
        sql = f"SELECT {_TASK_SELECT} FROM tasks"
        if where:
            sql += " WHERE " + " AND ".join(where)
        return [_task_from_row(r) for r in self._conn.execute(sql + " ORDER BY seq", args)]

    def task_counts(self) -> dict[TaskState, int]:
        counts = {state: 0 for state in TaskState}
        for state, n in self._conn.execute("SELECT state, count(*) FROM tasks GROUP BY state"):
            counts[TaskState(state)] = n
        return counts

    def claim_ready_task(self, holder: str, lease_expires: float, now: float) -> Task | None:
        row = self._conn.execute(
            "UPDATE tasks SET state = 'claimed', lease_holder = ?, lease_expires = ?, "
            "attempts = attempts + 1, updated_at = ? "
            "WHERE seq = (SELECT seq FROM tasks WHERE state = 'ready' ORDER BY seq LIMIT 1) "
            f"RETURNING {_TASK_SELECT}",
            (holder, lease_expires, now),
        ).fetchone()
        return None if row is None else _task_from_row(row)

    def update_task(
        self,
        task_id: str,
        *,
        if_state: TaskState | None = None,
        if_holder: str | None = None,
        **changes: Any,
    ) -> Task | None:
        check_task_changes(changes)
        sets: list[str] = []
        args: list[Any] = []
        for name, value in changes.items():
            if name in _TASK_JSON_COLUMNS:
                value = json.dumps(list(value))
            elif name == "state":
                value = TaskState(value).value
            sets.append(f"{name} = ?")
            args.append(value)
        where = ["id = ?"]
        args.append(task_id)
        if if_state is not None:
            where.append("state = ?")
            args.append(TaskState(if_state).value)
        if if_holder is not None:
            where.append("lease_holder = ?")
            args.append(if_holder)
        row = self._conn.execute(
            f"UPDATE tasks SET {', '.join(sets)} WHERE {' AND '.join(where)} RETURNING {_TASK_SELECT}",
            args,
        ).fetchone()
        if row is None:
            self.get_task(task_id)  # an unknown id is NotFound, not a failed condition
            return None
        return _task_from_row(row)

    # -- counters -----------------------------------------------------------------------------

    def add_to_counter(self, name: str, delta: int = 1) -> int:
        _check_counter(name, delta)
        row = self._conn.execute(
            "INSERT INTO run_counters(name, value) VALUES (?, ?) "
            "ON CONFLICT(name) DO UPDATE SET value = value + excluded.value RETURNING value",
            (name, delta),
        ).fetchone()
        return int(row[0])

    def counter(self, name: str) -> int:
        _check_counter(name)
        row = self._conn.execute("SELECT value FROM run_counters WHERE name = ?", (name,)).fetchone()
        return 0 if row is None else int(row[0])


class RunStore:
    """One run's SQLite (WAL) file: meta, gists, tasks, counters and the classification log.
    Opening an existing file resumes it (an older schema is migrated first).

    Safe to share between threads and asyncio tasks of one process, and to open from several
    processes at once (each opens its own `RunStore(path)`).
    """

    def __init__(self, path: str | Path, *, busy_timeout_s: float = 30.0) -> None:
        self.path = Path(path)
        self.busy_timeout_s = busy_timeout_s
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

    def _check_owner(self) -> None:
        if _current_task() is not self._owner_task:
            raise RunStateError(
                "a store transaction was left open across an await; transactions must be synchronous"
            )

    @contextmanager
    def transaction(self) -> Iterator[Tx]:
        """A write transaction (BEGIN IMMEDIATE). Re-entrant within one thread.

        Never `await` inside: other asyncio tasks of the thread would enter it.
        """
        waited_from = time.perf_counter()
        with self._lock:
            conn = self._connection()
            if self._depth > 0:
                self._check_owner()
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
            self._depth, self._owner_task = 1, _current_task()
            try:
                yield Tx(conn)
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
                self._check_owner()
                yield Tx(conn)
                return
            conn.execute("BEGIN")
            try:
                yield Tx(conn)
            finally:
                conn.execute("COMMIT")

    def _init_schema(self) -> None:
        with self.transaction() as tx:
            conn = tx._conn
            version = conn.execute("PRAGMA user_version").fetchone()[0]
            if version > SCHEMA_VERSION:
                raise StoreError(
                    f"{self.path} has store schema v{version}; this delm-rlm reads up to "
                    f"v{SCHEMA_VERSION}. Upgrade delm-rlm to open it."
                )
            if version == 0:
                foreign = [
                    r[0]
                    for r in conn.execute("SELECT name FROM sqlite_master WHERE type='table'")
                    if r[0] not in _OWN_TABLES
                ]
                if foreign:
                    raise StoreError(
                        f"{self.path} is an SQLite file of something else (tables {foreign}); "
                        "give a new path for the run store"
                    )
                _run_script(conn, _SCHEMA)
                conn.execute(f"PRAGMA user_version = {SCHEMA_VERSION}")
                _write_meta(conn, {"schema_version": SCHEMA_VERSION, "created_at": utc_now_iso()})
            elif version < SCHEMA_VERSION:
                for step in range(version, SCHEMA_VERSION):
                    _MIGRATIONS[step](conn)
                conn.execute(f"PRAGMA user_version = {SCHEMA_VERSION}")
                _write_meta(conn, {"schema_version": SCHEMA_VERSION})

    def location(self) -> str:
        return str(self.path)

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

    def meta(self) -> RunMeta:
        with self.reading() as tx:
            rows = tx._conn.execute("SELECT key, value FROM meta").fetchall()
        return RunMeta.model_validate({k: json.loads(v) for k, v in rows})

    def get_meta(self, key: str, default: Any = None) -> Any:
        with self.reading() as tx:
            row = tx._conn.execute("SELECT value FROM meta WHERE key = ?", (key,)).fetchone()
        return default if row is None else json.loads(row[0])

    def set_meta(self, **values: Any) -> RunMeta:
        """Set meta keys (question, method, config, status, answer, finished_at, or any
        JSON-serializable extra key). Known keys are type-checked."""
        if "schema_version" in values:
            raise ConfigError("schema_version is written by the store itself")
        with self.transaction() as tx:
            rows = tx._conn.execute("SELECT key, value FROM meta").fetchall()
            current = {k: json.loads(v) for k, v in rows}
            try:
                meta = RunMeta.model_validate({**current, **values})
            except ValidationError as exc:
                raise ConfigError(f"bad run meta value: {exc}") from exc
            try:
                dumped = meta.model_dump(mode="json")
                _write_meta(tx._conn, {k: dumped[k] for k in values})
            except (TypeError, ValueError) as exc:
                raise ConfigError(f"run meta values must be JSON-serializable: {exc}") from exc
        return meta

    # -- gists and counters, each in its own transaction -------------------------------------

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
        self, status: StatusFilter = None, kinds: KindFilter = None, dedupe_key: str | None = None
    ) -> list[Gist]:
        """Gists in id order, optionally filtered by status(es), kind(s) and duplicate key
        (`delm_rlm.gists.dedupe_key`)."""
        with self.reading() as tx:
            return tx.list_gists(status, kinds, dedupe_key)

    def add_to_counter(self, name: str, delta: int = 1) -> int:
        """Add `delta` to the run counter `name` (atomically); returns its new value."""
        with self.transaction() as tx:
            return tx.add_to_counter(name, delta)

    def counter(self, name: str) -> int:
        """The run counter's value (0 when never added to)."""
        with self.reading() as tx:
            return tx.counter(name)

    # -- the classification log (its SQL: state/sqlite_classifications.py) ----------------------

    def append_classification(self, record: ClassificationRecord) -> None:
        with self.transaction() as tx:
            sqlite_classifications.append_classification(tx._conn, record)

    def classifications(self) -> list[ClassificationRecord]:
        with self.reading() as tx:
            return sqlite_classifications.classifications(tx._conn)

    # -- blobs (their SQL: state/sqlite_blobs.py) ------------------------------------------------

    def put_blob(self, name: str, data: bytes) -> BlobInfo:
        with self.transaction() as tx:
            return sqlite_blobs.put_blob(tx._conn, name, data)

    def get_blob(self, name: str) -> bytes:
        with self.reading() as tx:
            return sqlite_blobs.get_blob(tx._conn, name, self.path)

    def blob_info(self, name: str) -> BlobInfo:
        with self.reading() as tx:
            return sqlite_blobs.blob_info(tx._conn, name)

    # -- reports -------------------------------------------------------------------------------

    def snapshot(self) -> StoreSnapshot:
        with self.reading() as tx:
            return _snapshot_of(tx._conn)


def read_snapshot(path: str | Path) -> StoreSnapshot:
    """What the run file at `path` holds, read in SQLite's read-only mode (so a report never
    changes the run it describes, and a file of an older schema is read as it is)."""
    uri = f"file:{Path(path).resolve()}?mode=ro"
    try:
        conn = sqlite3.connect(uri, uri=True)
    except sqlite3.Error as exc:
        raise RunNotFound(f"{path}: cannot open the run store read-only: {exc}") from exc
    try:
        return _snapshot_of(conn)
    except sqlite3.DatabaseError as exc:
        raise RunNotFound(f"{path}: not a delm-rlm run store ({exc})") from exc
    finally:
        conn.close()


def _snapshot_of(conn: sqlite3.Connection) -> StoreSnapshot:
    # Tolerant by design: missing tables read as empty, text that is not JSON stays text.
    tables = {r[0] for r in conn.execute("SELECT name FROM sqlite_master WHERE type='table'")}
    snap = StoreSnapshot()
    if "meta" in tables:
        snap.meta = {k: _loose_json(v) for k, v in conn.execute("SELECT key, value FROM meta")}
    if "gists" in tables:
        snap.gists = [_loose_json(r[0]) for r in conn.execute("SELECT data FROM gists ORDER BY seq")]
    if "tasks" in tables:
        cursor = conn.execute("SELECT * FROM tasks ORDER BY seq")
        columns = [c[0] for c in cursor.description]
        for row in cursor:
            task = dict(zip(columns, row))
            task.pop("seq", None)
            for key in _TASK_JSON_COLUMNS:
                if isinstance(task.get(key), str):
                    task[key] = _loose_json(task[key])
            snap.tasks.append(task)
    return snap


def _loose_json(text: str) -> Any:
    try:
        return json.loads(text)
    except (TypeError, ValueError):
        return text


def _run_script(conn: sqlite3.Connection, script: str) -> None:
    # Statement by statement: executescript() would COMMIT the open transaction.
    for statement in script.split(";"):
        if statement.strip():
            conn.execute(statement)


def _write_meta(conn: sqlite3.Connection, values: dict[str, Any]) -> None:
    for key, value in values.items():
        conn.execute(
            "INSERT INTO meta(key, value) VALUES (?, ?) "
            "ON CONFLICT(key) DO UPDATE SET value = excluded.value",
            (key, json.dumps(value, allow_nan=False)),
        )


def _migrate_v1_to_v2(conn: sqlite3.Connection) -> None:
    """Add and fill the indexed duplicate key, so runs stored by an older delm-rlm resume
    with every gist findable as a duplicate."""
    conn.execute("ALTER TABLE gists ADD COLUMN dedupe_key TEXT NOT NULL DEFAULT ''")
    for gist_id, data in conn.execute("SELECT id, data FROM gists").fetchall():
        gist = Gist.model_validate_json(data)
        conn.execute(
            "UPDATE gists SET dedupe_key = ? WHERE id = ?", (dedupe_key(gist.kind, gist.text), gist_id)
        )
    conn.execute("CREATE INDEX IF NOT EXISTS gists_dedupe ON gists(status, dedupe_key)")


def _migrate_v2_to_v3(conn: sqlite3.Connection) -> None:
    """Add the run counters and the classification log. A v2 run kept its round and
    added-task counts in meta: they become counters, so a resumed run counts on."""
    _run_script(conn, _V3_TABLES)
    marks = ",".join("?" * len(_V2_META_COUNTERS))
    rows = conn.execute(f"SELECT key, value FROM meta WHERE key IN ({marks})", _V2_META_COUNTERS)
    for key, value in rows.fetchall():
        number = _loose_json(value)
        if isinstance(number, int) and not isinstance(number, bool):
            conn.execute("INSERT OR IGNORE INTO run_counters(name, value) VALUES (?, ?)", (key, number))


# From version n to n + 1, run in order inside the opening transaction.
_MIGRATIONS: dict[int, Callable[[sqlite3.Connection], None]] = {
    1: _migrate_v1_to_v2,
    2: _migrate_v2_to_v3,
    3: sqlite_blobs.migrate_v3_to_v4,
    4: sqlite_classifications.migrate_v4_to_v5,
}


def _current_task() -> object | None:
    try:
        return asyncio.current_task()
    except RuntimeError:  # no running event loop in this thread
        return None
