"""The PostgreSQL schema of run stores, its version and its migrations.

Every table lives in the schema `delm_rlm` of the database the URL names, so a run store
shares a database with anything else without name clashes. Several runs share the tables:
each row carries its `run_id` (the `runs` row, deleted with `ON DELETE CASCADE`). One schema
version covers the whole database (`delm_rlm.schema_info`), since the tables are shared.

`ensure_schema` brings a database to the version this code writes: a database without the
schema gets it (the step from v0), an older one is migrated one step at a time, all in one
transaction under a database-wide advisory lock (so two processes opening a fresh database
at once do not both create it), and a newer one is refused, naming both versions.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from typing import TYPE_CHECKING, Any

from delm_rlm.errors import StoreError

if TYPE_CHECKING:
    import psycopg

SCHEMA = "delm_rlm"
SCHEMA_VERSION = 2  # v2: classifications.items
# The first key of every advisory lock the stores take ("delm"); the second is 0 for the
# schema lock and a run's `lock_key` (>= 1) for its run lock.
LOCK_SPACE = 0x64656C6D
SCHEMA_LOCK = 0
# The tables a store reads and writes, for privilege checks and for clean-up.
TABLES = (
    "schema_info", "runs", "meta", "id_counters", "gists", "tasks", "run_counters",
    "classifications", "blobs",
)

_V1 = """
CREATE SCHEMA IF NOT EXISTS delm_rlm;
CREATE TABLE delm_rlm.schema_info (
    singleton  boolean PRIMARY KEY DEFAULT true CHECK (singleton),  -- exactly one row
    version    integer NOT NULL,
    updated_at timestamptz NOT NULL DEFAULT now()
);
CREATE TABLE delm_rlm.runs (
    run_id     text PRIMARY KEY,
    lock_key   integer GENERATED ALWAYS AS IDENTITY UNIQUE,  -- the run lock's advisory key
    created_at timestamptz NOT NULL DEFAULT now()
);
CREATE TABLE delm_rlm.meta (
    run_id text NOT NULL REFERENCES delm_rlm.runs ON DELETE CASCADE,
    key    text NOT NULL,
    value  text NOT NULL,                      -- JSON
    PRIMARY KEY (run_id, key)
);
CREATE TABLE delm_rlm.id_counters (
    run_id text NOT NULL REFERENCES delm_rlm.runs ON DELETE CASCADE,
    name   text NOT NULL,                      -- 'g' for gists, 't' for tasks
    last   bigint NOT NULL,                    -- updated inside the inserting transaction
    PRIMARY KEY (run_id, name)
);
CREATE TABLE delm_rlm.gists (
    run_id     text NOT NULL REFERENCES delm_rlm.runs ON DELETE CASCADE,
    seq        bigint NOT NULL,                -- the number in the id: g17 -> 17
    id         text NOT NULL,
    kind       text NOT NULL,
    status     text NOT NULL,
    data       text NOT NULL,                  -- the whole Gist as JSON
    dedupe_key text NOT NULL,                  -- gists.dedupe_key(kind, text)
    PRIMARY KEY (run_id, seq),
    UNIQUE (run_id, id)
);
CREATE INDEX gists_status_kind ON delm_rlm.gists (run_id, status, kind, seq);
CREATE INDEX gists_dedupe ON delm_rlm.gists (run_id, status, dedupe_key);
CREATE TABLE delm_rlm.tasks (
    run_id        text NOT NULL REFERENCES delm_rlm.runs ON DELETE CASCADE,
    seq           bigint NOT NULL,
    id            text NOT NULL,
    goal          text NOT NULL,
    deps          text[] NOT NULL,             -- task ids
    state         text NOT NULL,
    lease_holder  text,
    lease_expires double precision,
    attempts      integer NOT NULL DEFAULT 0,
    max_attempts  integer NOT NULL,
    gist_ids      text[] NOT NULL DEFAULT '{}',
    created_by    text,
    last_error    text,
    errors        text[] NOT NULL DEFAULT '{}',
    created_at    double precision NOT NULL,
    updated_at    double precision NOT NULL,
    PRIMARY KEY (run_id, seq),
    UNIQUE (run_id, id)
);
CREATE INDEX tasks_state ON delm_rlm.tasks (run_id, state, seq);
-- A claim reads the oldest READY task and the reaper the expired leases: partial indexes keep
-- both reads short however many tasks are done or claimed.
CREATE INDEX tasks_ready ON delm_rlm.tasks (run_id, seq) WHERE state = 'ready';
CREATE INDEX tasks_leases ON delm_rlm.tasks (run_id, lease_expires) WHERE state = 'claimed';
CREATE TABLE delm_rlm.run_counters (
    run_id text NOT NULL REFERENCES delm_rlm.runs ON DELETE CASCADE,
    name   text NOT NULL,                      -- e.g. 'finalize_rounds', 'added_tasks'
    value  bigint NOT NULL,
    PRIMARY KEY (run_id, name)
);
CREATE TABLE delm_rlm.classifications (
    run_id      text NOT NULL REFERENCES delm_rlm.runs ON DELETE CASCADE,
    seq         bigint GENERATED ALWAYS AS IDENTITY,  -- append order
    key         text NOT NULL,
    labels      text NOT NULL,                 -- JSON list
    instruction text NOT NULL,
    result      text NOT NULL,                 -- JSON list: one label (or null) per item
    PRIMARY KEY (run_id, seq)
);
CREATE TABLE delm_rlm.blobs (
    run_id     text NOT NULL REFERENCES delm_rlm.runs ON DELETE CASCADE,
    name       text NOT NULL,                  -- e.g. 'corpus'
    sha256     text NOT NULL,                  -- hex digest of data
    size       bigint NOT NULL,
    data       bytea NOT NULL,
    created_at timestamptz NOT NULL DEFAULT now(),
    PRIMARY KEY (run_id, name)
)
"""

Migration = Callable[["psycopg.Connection[Any]"], None]


def run_script(conn: psycopg.Connection[Any], script: str) -> None:
    for statement in script.split(";"):
        if statement.strip():
            conn.execute(statement)


def _create_v1(conn: psycopg.Connection[Any]) -> None:
    run_script(conn, _V1)


def _add_classification_items(conn: psycopg.Connection[Any]) -> None:
    """v2: the items each classify call labelled (a JSON list; NULL in earlier rows)."""
    conn.execute(f"ALTER TABLE {SCHEMA}.classifications ADD COLUMN IF NOT EXISTS items text")


# From version n to n + 1, in order, inside the opening transaction. v0 is "no schema".
MIGRATIONS: dict[int, Migration] = {0: _create_v1, 1: _add_classification_items}


def stored_version(conn: psycopg.Connection[Any], shown: str) -> int:
    """The database's delm-rlm schema version; 0 when it has no delm_rlm schema."""
    # Plain reads of the catalogs (not to_regclass, whose cache may not yet know what another
    # session created while this one waited for the schema lock).
    has_schema, tables, has_info = conn.execute(
        "SELECT EXISTS (SELECT 1 FROM pg_namespace WHERE nspname = %s), "
        "(SELECT count(*) FROM pg_tables WHERE schemaname = %s), "
        "EXISTS (SELECT 1 FROM pg_tables WHERE schemaname = %s AND tablename = 'schema_info')",
        (SCHEMA, SCHEMA, SCHEMA),
    ).fetchone() or (False, 0, False)
    if not has_schema:
        return 0
    if not has_info:
        if tables:
            raise StoreError(
                f"{shown}: the schema {SCHEMA} holds tables that are not a delm-rlm store "
                f"(no {SCHEMA}.schema_info); use another database"
            )
        return 0
    row = conn.execute(f"SELECT version FROM {SCHEMA}.schema_info").fetchone()
    return 0 if row is None else int(row[0])


def check_not_newer(version: int, known: int, shown: str) -> None:
    if version > known:
        raise StoreError(
            f"{shown} has delm-rlm store schema v{version}; this delm-rlm reads up to "
            f"v{known}. Upgrade delm-rlm on this machine to use that database"
        )


def ensure_schema(
    conn: psycopg.Connection[Any],
    shown: str,
    *,
    migrations: Mapping[int, Migration] = MIGRATIONS,
    target: int = SCHEMA_VERSION,
) -> int:
    """Bring the database to schema `target` (see the module docstring); returns the version
    it had before. `conn` must be an autocommit connection with no transaction open."""
    from psycopg import errors  # a connection came from psycopg, so it is installed

    found = stored_version(conn, shown)
    check_not_newer(found, target, shown)
    if found == target:
        return found
    conn.execute("BEGIN")
    try:
        conn.execute("SELECT pg_advisory_xact_lock(%s, %s)", (LOCK_SPACE, SCHEMA_LOCK))
        found = stored_version(conn, shown)  # another process may have done it meanwhile
        check_not_newer(found, target, shown)
        for step in range(found, target):
            if step not in migrations:
                raise StoreError(f"{shown}: no migration from store schema v{step} to v{step + 1}")
            try:
                migrations[step](conn)
            except errors.InsufficientPrivilege as exc:
                what = "create" if step == 0 else f"migrate it from v{step}"
                raise StoreError(
                    f"{shown}: this database user may not {what} the delm-rlm schema ({exc}); "
                    "GRANT CREATE ON DATABASE to it, or open the store once as the owner"
                ) from exc
        if found < target:
            conn.execute(
                f"INSERT INTO {SCHEMA}.schema_info(version) VALUES (%s) ON CONFLICT (singleton) "
                "DO UPDATE SET version = excluded.version, updated_at = now()",
                (target,),
            )
            conn.execute(
                f"UPDATE {SCHEMA}.meta SET value = %s WHERE key = 'schema_version'", (str(target),)
            )
        conn.execute("COMMIT")
    except BaseException:
        if not conn.closed:
            conn.execute("ROLLBACK")
        raise
    return found
