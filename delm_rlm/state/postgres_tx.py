"""PostgresTx: the operations of one open transaction of a `PostgresRunStore` (the
protocol's `StateTransaction` on PostgreSQL), and the run lock they take.

Every write transaction takes its run's advisory lock (key: the run's `lock_key`) with its
first statement, in one of two modes:
- SHARED for claims (`claim_ready_task`) and the lease-expiry scan before them (`list_tasks`
  of CLAIMED tasks by `lease_expires_by`): any number of workers claim at once, each locking
  the row it takes with `SELECT ... FOR UPDATE SKIP LOCKED`, so two never get the same task
  and none waits for another's row. Claims only turn READY rows into CLAIMED ones with leases
  in the future, so nothing a shared transaction reads can be changed by another one.
- EXCLUSIVE for everything else (as SQLite's BEGIN IMMEDIATE): it waits for the claims in
  flight and keeps every other writer of the run out until it commits, so nothing it has
  read changes before then.
A scan that finds expired leases (they are about to be changed) turns exclusive before
anything else has been read: it gives the shared lock up first, so claimers that all see
the same expired lease do not deadlock. A transaction that claimed a task and then does
more turns exclusive in place; two doing that at once can deadlock (PostgreSQL undoes one,
StoreError). The queue never does it: its claim is the last step of its transaction.
Reads in `reading()` take no lock: one REPEATABLE READ, READ ONLY snapshot.
"""

from __future__ import annotations

import json
import time
from collections.abc import Iterable, Sequence
from typing import TYPE_CHECKING, Any

from delm_rlm.errors import ConfigError, NotFound, StoreError
from delm_rlm.gists import Gist, GistStatus, dedupe_key, parse_kind
from delm_rlm.state.postgres_conn import translate_error
from delm_rlm.state.postgres_schema import LOCK_SPACE
from delm_rlm.state.protocol import (
    check_task_changes,
    BlobInfo,
    ClassificationRecord,
    KindFilter,
    StatusFilter,
    StoreSnapshot,
    Task,
    TaskState,
    blob_bytes,
    check_blob_name,
)

if TYPE_CHECKING:
    import psycopg

    from delm_rlm.state.postgres import PostgresRunStore

TASK_COLUMNS = (
    "id", "goal", "deps", "state", "lease_holder", "lease_expires", "attempts", "max_attempts",
    "gist_ids", "created_by", "last_error", "errors", "created_at", "updated_at",
)
_TASK_SELECT = ", ".join(TASK_COLUMNS)
_LIST_COLUMNS = ("deps", "gist_ids", "errors")
_SHARED, _EXCLUSIVE = "shared", "exclusive"


def _task_from_row(row: Sequence[Any]) -> Task:
    return Task.model_validate(dict(zip(TASK_COLUMNS, row)))


def _as_list(value: Any) -> list[Any]:
    if isinstance(value, (str, bytes)) or not isinstance(value, Iterable):
        return [value]
    return list(value)


def _check_counter(name: str, delta: int = 0) -> None:
    if not isinstance(name, str) or not name.strip():
        raise ConfigError(f"a counter needs a name (a non-empty string), got {name!r}")
    if isinstance(delta, bool) or not isinstance(delta, int):
        raise ConfigError(f"counters add whole numbers; got delta {delta!r}")


class PostgresTx:
    """The operations of one open transaction of a `PostgresRunStore` (the protocol's
    `StateTransaction`), plus the store's own (meta, classifications, blobs). BEGIN and the
    run lock go out with its first statement; see the module docstring for the lock rules."""

    def __init__(self, store: PostgresRunStore, *, read_only: bool) -> None:
        self._store = store
        self._run = store.run_id
        self.read_only = read_only
        self.began = False
        self.lock_mode: str | None = None
        self.holds_shared = False  # the session-level shared lock, released after COMMIT
        self.did_work = False  # a statement ran whose result the caller has seen
        self._conn: psycopg.Connection[Any] | None = None

    @property
    def connection(self) -> psycopg.Connection[Any] | None:
        """The connection the transaction runs on (None before its first statement)."""
        return self._conn

    # -- statements and locks -----------------------------------------------------------------

    def _lock_sql(self, mode: str) -> str:
        key = self._store.lock_key
        if mode == _SHARED:
            return f"SELECT pg_advisory_lock_shared({LOCK_SPACE}, {key})"
        return f"SELECT pg_advisory_xact_lock({LOCK_SPACE}, {key})"

    def _need(self, mode: str | None) -> None:
        if not self.began:
            if self.read_only:
                first = "BEGIN ISOLATION LEVEL REPEATABLE READ READ ONLY"
            else:
                first = "BEGIN" if mode is None else f"BEGIN; {self._lock_sql(mode)}"
            waited_from = time.perf_counter()
            self._conn = self._store.start_transaction(first)
            self._store.stats["lock_wait_s"] += time.perf_counter() - waited_from
            self.began = True
            if not self.read_only and mode is not None:
                self.lock_mode, self.holds_shared = mode, mode == _SHARED
            return
        if self.read_only or mode is None or self.lock_mode == _EXCLUSIVE or self.lock_mode == mode:
            return
        waited_from = time.perf_counter()
        if mode == _SHARED:  # began without a lock (an append): take the shared one now
            self._raw(self._lock_sql(_SHARED))
            self.lock_mode, self.holds_shared = _SHARED, True
        else:
            if self.holds_shared and not self.did_work:
                # Nothing read yet is kept: give the shared lock up first, so two claimers
                # turning exclusive at once cannot deadlock.
                self._raw(f"SELECT pg_advisory_unlock_shared({LOCK_SPACE}, {self._store.lock_key})")
                self.holds_shared = False
            self._raw(self._lock_sql(_EXCLUSIVE))
            self.lock_mode = _EXCLUSIVE
        self._store.stats["lock_wait_s"] += time.perf_counter() - waited_from

    def _raw(self, sql: str, params: Sequence[Any] = ()) -> Any:
        assert self._conn is not None
        pg = self._store.pg
        try:
            return self._conn.execute(sql, params)
        except (pg.Error, ValueError) as exc:
            raise translate_error(pg, exc, self._store.url, in_transaction=True) from exc

    def execute(self, sql: str, params: Sequence[Any] = (), *, lock: str | None = _EXCLUSIVE,
                keeps_result: bool = True) -> Any:
        """Run one statement under the run lock `lock` needs (None: no lock)."""
        self._need(lock)
        cursor = self._raw(sql, params)
        if keeps_result:
            self.did_work = True
        return cursor

    def _next_id(self, prefix: str) -> str:
        row = self.execute(
            "INSERT INTO delm_rlm.id_counters(run_id, name, last) VALUES (%s, %s, 1) "
            "ON CONFLICT (run_id, name) DO UPDATE SET last = id_counters.last + 1 RETURNING last",
            (self._run, prefix),
        ).fetchone()
        return f"{prefix}{row[0]}"

    # -- gists --------------------------------------------------------------------------------

    def add_gist(self, gist: Gist) -> Gist:
        if gist.id is not None:
            raise ConfigError(
                f"gist already has id {gist.id}; the store assigns ids, pass a gist with id=None"
            )
        gid = self._next_id("g")
        stored = gist.model_copy(update={"id": gid})
        self.execute(
            "INSERT INTO delm_rlm.gists(run_id, seq, id, kind, status, data, dedupe_key) "
            "VALUES (%s, %s, %s, %s, %s, %s, %s)",
            (self._run, int(gid[1:]), gid, stored.kind.value, stored.status.value,
             stored.model_dump_json(), dedupe_key(stored.kind, stored.text)),
        )
        return stored

    def get_gist(self, gist_id: str) -> Gist:
        row = self.execute(
            "SELECT data FROM delm_rlm.gists WHERE run_id = %s AND id = %s", (self._run, gist_id)
        ).fetchone()
        if row is None:
            raise NotFound(f"no gist {gist_id!r} in this run; gist ids look like 'g1', 'g2'")
        return Gist.model_validate_json(row[0])

    def update_gist(self, gist_id: str, **changes: Any) -> Gist:
        if "id" in changes:
            raise ConfigError("a gist's id never changes")
        merged = self.get_gist(gist_id).model_dump()
        merged.update(changes)
        updated = Gist.model_validate(merged)  # re-validates the whole gist
        self.execute(
            "UPDATE delm_rlm.gists SET kind = %s, status = %s, data = %s, dedupe_key = %s "
            "WHERE run_id = %s AND id = %s",
            (updated.kind.value, updated.status.value, updated.model_dump_json(),
             dedupe_key(updated.kind, updated.text), self._run, gist_id),
        )
        return updated

    def list_gists(
        self, status: StatusFilter = None, kinds: KindFilter = None, dedupe_key: str | None = None
    ) -> list[Gist]:
        where = ["run_id = %s"]
        args: list[Any] = [self._run]
        if status is not None:
            where.append("status = ANY(%s)")
            args.append([GistStatus(s).value for s in _as_list(status)])
        if kinds is not None:
            where.append("kind = ANY(%s)")
            args.append([parse_kind(k).value for k in _as_list(kinds)])
        if dedupe_key is not None:
            where.append("dedupe_key = %s")
            args.append(dedupe_key)
        sql = f"SELECT data FROM delm_rlm.gists WHERE {' AND '.join(where)} ORDER BY seq"
        return [Gist.model_validate_json(r[0]) for r in self.execute(sql, args).fetchall()]

    # -- tasks --------------------------------------------------------------------------------

    def add_task(
        self, goal: str, deps: Sequence[str], max_attempts: int, created_by: str | None, now: float
    ) -> Task:
        task_id = self._next_id("t")
        row = self.execute(
            "INSERT INTO delm_rlm.tasks(run_id, seq, id, goal, deps, state, max_attempts, "
            "created_by, created_at, updated_at) VALUES (%s, %s, %s, %s, %s::text[], 'pending', "
            f"%s, %s, %s, %s) RETURNING {_TASK_SELECT}",
            (self._run, int(task_id[1:]), task_id, goal, list(deps), max_attempts, created_by,
             now, now),
        ).fetchone()
        return _task_from_row(row)

    def get_task(self, task_id: str) -> Task:
        row = self.execute(
            f"SELECT {_TASK_SELECT} FROM delm_rlm.tasks WHERE run_id = %s AND id = %s",
            (self._run, task_id),
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
        where = ["run_id = %s"]
        args: list[Any] = [self._run]
        state_values: list[str] | None = None
        if states is not None:
            state_values = [TaskState(s).value for s in _as_list(states)]
            if not state_values:
                return []
            where.append("state = ANY(%s)")
            args.append(state_values)
        if ids is not None:
            wanted = [str(i) for i in _as_list(ids)]
            if not wanted:
                return []
            where.append("id = ANY(%s)")
            args.append(wanted)
        if lease_expires_by is not None:
            where.append("lease_expires <= %s")
            args.append(lease_expires_by)
        sql = f"SELECT {_TASK_SELECT} FROM delm_rlm.tasks WHERE {' AND '.join(where)} ORDER BY seq"
        expiry_scan = (
            state_values == [TaskState.CLAIMED.value] and ids is None and lease_expires_by is not None
        )
        if not expiry_scan or self.read_only or self.lock_mode == _EXCLUSIVE:
            return [_task_from_row(r) for r in self.execute(sql, args).fetchall()]
        # The reaper's scan, under the shared lock: usually empty, and claims in flight cannot
        # add to it. Found leases will be changed: take the exclusive lock and read again.
        # (`state = 'claimed'` spelled out, so the partial index tasks_leases serves it.)
        sql = (f"SELECT {_TASK_SELECT} FROM delm_rlm.tasks WHERE run_id = %s AND state = 'claimed' "
               "AND lease_expires <= %s ORDER BY seq")
        args = [self._run, lease_expires_by]
        rows = self.execute(sql, args, lock=_SHARED, keeps_result=False).fetchall()
        if rows:
            self._need(_EXCLUSIVE)
            rows = self._raw(sql, args).fetchall()
        self.did_work = True
        return [_task_from_row(r) for r in rows]

    def task_counts(self) -> dict[TaskState, int]:
        counts = {state: 0 for state in TaskState}
        rows = self.execute(
            "SELECT state, count(*) FROM delm_rlm.tasks WHERE run_id = %s GROUP BY state", (self._run,)
        ).fetchall()
        for state, n in rows:
            counts[TaskState(state)] = int(n)
        return counts

    def claim_ready_task(self, holder: str, lease_expires: float, now: float) -> Task | None:
        row = self.execute(
            "UPDATE delm_rlm.tasks SET state = 'claimed', lease_holder = %s, lease_expires = %s, "
            "attempts = attempts + 1, updated_at = %s WHERE run_id = %s AND seq = ("
            "SELECT seq FROM delm_rlm.tasks WHERE run_id = %s AND state = 'ready' ORDER BY seq "
            f"LIMIT 1 FOR UPDATE SKIP LOCKED) RETURNING {_TASK_SELECT}",
            (holder, lease_expires, now, self._run, self._run),
            lock=_SHARED,
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
            if name in _LIST_COLUMNS:
                sets.append(f"{name} = %s::text[]")
                value = [str(v) for v in value]
            else:
                sets.append(f"{name} = %s")
                if name == "state":
                    value = TaskState(value).value
            args.append(value)
        where = ["run_id = %s", "id = %s"]
        args += [self._run, task_id]
        if if_state is not None:
            where.append("state = %s")
            args.append(TaskState(if_state).value)
        if if_holder is not None:
            where.append("lease_holder = %s")
            args.append(if_holder)
        row = self.execute(
            f"UPDATE delm_rlm.tasks SET {', '.join(sets)} WHERE {' AND '.join(where)} "
            f"RETURNING {_TASK_SELECT}",
            args,
        ).fetchone()
        if row is None:
            self.get_task(task_id)  # an unknown id is NotFound, not a failed condition
            return None
        return _task_from_row(row)

    # -- counters -----------------------------------------------------------------------------

    def add_to_counter(self, name: str, delta: int = 1) -> int:
        _check_counter(name, delta)
        row = self.execute(
            "INSERT INTO delm_rlm.run_counters(run_id, name, value) VALUES (%s, %s, %s) "
            "ON CONFLICT (run_id, name) DO UPDATE SET value = run_counters.value + excluded.value "
            "RETURNING value",
            (self._run, name, delta),
        ).fetchone()
        return int(row[0])

    def counter(self, name: str) -> int:
        _check_counter(name)
        row = self.execute(
            "SELECT value FROM delm_rlm.run_counters WHERE run_id = %s AND name = %s", (self._run, name)
        ).fetchone()
        return 0 if row is None else int(row[0])

    # -- the store's own: meta, classifications, blobs, snapshot -------------------------------

    def meta_values(self) -> dict[str, Any]:
        rows = self.execute(
            "SELECT key, value FROM delm_rlm.meta WHERE run_id = %s", (self._run,)
        ).fetchall()
        return {key: json.loads(value) for key, value in rows}

    def write_meta(self, values: dict[str, Any]) -> None:
        for key, value in values.items():
            self.execute(
                "INSERT INTO delm_rlm.meta(run_id, key, value) VALUES (%s, %s, %s) "
                "ON CONFLICT (run_id, key) DO UPDATE SET value = excluded.value",
                (self._run, key, json.dumps(value, allow_nan=False)),
            )

    def append_classification(self, record: ClassificationRecord) -> None:
        # Appends read nothing, so they need no run lock.
        self.execute(
            "INSERT INTO delm_rlm.classifications(run_id, key, labels, instruction, result, items) "
            "VALUES (%s, %s, %s, %s, %s, %s)",
            (self._run, *record.stored_columns()),
            lock=None,
        )

    def classifications(self) -> list[ClassificationRecord]:
        rows = self.execute(
            "SELECT key, labels, instruction, result, items FROM delm_rlm.classifications "
            "WHERE run_id = %s ORDER BY seq",
            (self._run,),
        ).fetchall()
        return [ClassificationRecord.from_stored(*row) for row in rows]

    def blob_info(self, name: str) -> BlobInfo:
        row = self.execute(
            "SELECT sha256, size FROM delm_rlm.blobs WHERE run_id = %s AND name = %s",
            (self._run, check_blob_name(name)),
        ).fetchone()
        if row is None:
            raise NotFound(f"no blob {name!r} in this run")
        return BlobInfo(name=name, sha256=row[0], size=int(row[1]))

    def put_blob(self, name: str, data: bytes) -> BlobInfo:
        data = blob_bytes(data)
        info = BlobInfo.of(name, data)
        try:
            stored = self.blob_info(name)
        except NotFound:
            self.execute(
                "INSERT INTO delm_rlm.blobs(run_id, name, sha256, size, data) VALUES (%s, %s, %s, %s, %s)",
                (self._run, name, info.sha256, info.size, data),
            )
            return info
        if stored.sha256 != info.sha256:
            raise ConfigError(
                f"blob {name!r} is already stored with other bytes (sha256 {stored.sha256[:12]}...); "
                "a run's blobs are written once: store the new bytes under another name"
            )
        return stored

    def get_blob(self, name: str) -> bytes:
        row = self.execute(
            "SELECT sha256, data FROM delm_rlm.blobs WHERE run_id = %s AND name = %s",
            (self._run, check_blob_name(name)),
        ).fetchone()
        if row is None:
            raise NotFound(f"no blob {name!r} in this run")
        data = bytes(row[1])
        if BlobInfo.of(name, data).sha256 != row[0]:
            raise StoreError(
                f"blob {name!r} in {self._store.url} no longer matches its SHA-256 {row[0]}; "
                "the stored bytes are damaged: store them again under a new name"
            )
        return data

    def snapshot(self) -> StoreSnapshot:
        snap = StoreSnapshot(meta=self.meta_values())
        rows = self.execute(
            "SELECT data FROM delm_rlm.gists WHERE run_id = %s ORDER BY seq", (self._run,)
        ).fetchall()
        snap.gists = [json.loads(r[0]) for r in rows]
        rows = self.execute(
            f"SELECT {_TASK_SELECT} FROM delm_rlm.tasks WHERE run_id = %s ORDER BY seq", (self._run,)
        ).fetchall()
        snap.tasks = [dict(zip(TASK_COLUMNS, row)) for row in rows]
        return snap

