"""`check_store`: can this machine use a run store? For `delm-rlm doctor --store TARGET`.

It opens nothing for writing and creates nothing: it connects (PostgreSQL) or reads the file
read-only (SQLite), and reports whether the store is reachable, its schema version against
the one this delm-rlm writes, and whether the user has the privileges a run needs. Every
problem comes with what to do about it; `ok` is True when there is none.
"""

from __future__ import annotations

import os
import sqlite3
from pathlib import Path
from typing import Any, Literal

from pydantic import BaseModel, Field, computed_field

from delm_rlm.errors import ConfigError, StoreError
from delm_rlm.state import postgres_schema
from delm_rlm.state.opener import STORE_FILE_NAME
from delm_rlm.state.postgres_conn import connect, is_postgres_url, load_psycopg, parse_postgres_url
from delm_rlm.state.sqlite import SCHEMA_VERSION as SQLITE_SCHEMA_VERSION

TABLE_PRIVILEGES = ("SELECT", "INSERT", "UPDATE", "DELETE")


class StoreCheck(BaseModel):
    """What `check_store` found. `privileges` maps what a run needs ("connect",
    "create schema", "usage on schema delm_rlm", "SELECT on delm_rlm.tasks", "write file",
    ...) to whether the user has it."""

    target: str  # printable (no password)
    backend: Literal["sqlite", "postgresql"]
    reachable: bool = False
    server: str | None = None  # e.g. "PostgreSQL 15.5", "SQLite 3.40.1"
    user: str | None = None
    schema_version: int | None = None  # None: no store there yet (the first open makes one)
    code_schema_version: int
    privileges: dict[str, bool] = Field(default_factory=dict)
    runs: int | None = None  # runs the database holds (PostgreSQL)
    run_id: str | None = None  # the run the URL names, if any
    run_found: bool | None = None
    problems: list[str] = Field(default_factory=list)  # each says what to do

    @computed_field  # type: ignore[prop-decorator]
    @property
    def ok(self) -> bool:
        return not self.problems


def check_store(target: str | os.PathLike[str]) -> StoreCheck:
    """Check the run store `target` names (a path or a postgresql:// URL)."""
    if is_postgres_url(target):
        return _check_postgres(str(target))
    return _check_sqlite(Path(target).expanduser())


def _check_postgres(url: str) -> StoreCheck:
    try:
        parsed = parse_postgres_url(url)
    except ConfigError as exc:
        return StoreCheck(target="postgresql://(unparsable URL)", backend="postgresql",
                          code_schema_version=postgres_schema.SCHEMA_VERSION, problems=[str(exc)])
    report = StoreCheck(target=parsed.shown_with_run(parsed.run_id) if parsed.run_id else parsed.shown,
                        backend="postgresql", code_schema_version=postgres_schema.SCHEMA_VERSION,
                        run_id=parsed.run_id)
    try:
        pg = load_psycopg()
        conn = connect(pg, parsed)
    except (StoreError, ConfigError) as exc:
        report.problems.append(str(exc))
        report.privileges["connect"] = False
        return report
    with conn:
        report.reachable = True
        report.privileges["connect"] = True
        version = conn.info.server_version  # e.g. 150005
        report.server = f"PostgreSQL {version // 10000}.{version % 10000}"
        report.user = conn.execute("SELECT current_user").fetchone()[0]
        try:
            _postgres_details(conn, report, parsed.shown)
        except StoreError as exc:
            report.problems.append(str(exc))
        except pg.Error as exc:
            report.problems.append(f"{parsed.shown}: the check failed: {exc}")
    return report


def _postgres_details(conn: Any, report: StoreCheck, shown: str) -> None:
    schema = postgres_schema.SCHEMA
    version = postgres_schema.stored_version(conn, shown)
    report.schema_version = version or None
    if version == 0:
        may_create = bool(conn.execute(
            "SELECT has_database_privilege(current_user, current_database(), 'CREATE')"
        ).fetchone()[0])
        report.privileges["create schema"] = may_create
        if not may_create:
            report.problems.append(
                f"the database has no delm-rlm schema yet and {report.user} may not create it: "
                f"GRANT CREATE ON DATABASE to {report.user}, or open a store once as a user who may"
            )
        return
    try:
        postgres_schema.check_not_newer(version, postgres_schema.SCHEMA_VERSION, shown)
    except StoreError as exc:
        report.problems.append(str(exc))
    usage = bool(conn.execute(
        "SELECT has_schema_privilege(current_user, %s, 'USAGE')", (schema,)
    ).fetchone()[0])
    report.privileges[f"usage on schema {schema}"] = usage
    missing: list[str] = []
    for table in postgres_schema.TABLES:
        for privilege in TABLE_PRIVILEGES:
            if table == "schema_info" and privilege != "SELECT":
                continue  # only migrations write it
            name = f"{schema}.{table}"
            held = bool(conn.execute(
                "SELECT to_regclass(%s) IS NOT NULL AND has_table_privilege(current_user, %s, %s)",
                (name, name, privilege),
            ).fetchone()[0])
            report.privileges[f"{privilege} on {name}"] = held
            if not held:
                missing.append(f"{privilege} on {name}")
    if not usage or missing:
        report.problems.append(
            f"{report.user} lacks {', '.join(([f'USAGE on schema {schema}'] if not usage else []) + missing)}: "
            f"GRANT USAGE ON SCHEMA {schema} TO {report.user}; GRANT SELECT, INSERT, UPDATE, DELETE "
            f"ON ALL TABLES IN SCHEMA {schema} TO {report.user}"
        )
    if version < postgres_schema.SCHEMA_VERSION:
        report.problems.append(
            f"the store schema is v{version}; the first open migrates it to "
            f"v{postgres_schema.SCHEMA_VERSION}, which needs the owner of the {schema} tables"
        )
    if usage and report.privileges.get(f"SELECT on {schema}.runs"):
        report.runs = int(conn.execute(f"SELECT count(*) FROM {schema}.runs").fetchone()[0])
        if report.run_id is not None:
            report.run_found = conn.execute(
                f"SELECT 1 FROM {schema}.runs WHERE run_id = %s", (report.run_id,)
            ).fetchone() is not None
            if not report.run_found:
                report.problems.append(
                    f"no run {report.run_id!r} in this database; check the id (or leave ?run= out)"
                )


def _check_sqlite(path: Path) -> StoreCheck:
    if path.is_dir():
        path = path / STORE_FILE_NAME
    report = StoreCheck(target=str(path), backend="sqlite", code_schema_version=SQLITE_SCHEMA_VERSION,
                        server=f"SQLite {sqlite3.sqlite_version}")
    folder = path.parent if path.parent.exists() else next(
        (p for p in path.parents if p.exists()), Path("/"))
    report.privileges["write folder"] = os.access(folder, os.W_OK)
    if not path.exists():
        report.reachable = report.privileges["write folder"]
        if not report.reachable:
            report.problems.append(f"cannot create {path}: {folder} is not writable; choose another path")
        return report
    report.privileges["read file"] = os.access(path, os.R_OK)
    report.privileges["write file"] = os.access(path, os.W_OK)
    try:
        conn = sqlite3.connect(f"file:{path.resolve()}?mode=ro", uri=True)
        try:
            report.schema_version = int(conn.execute("PRAGMA user_version").fetchone()[0]) or None
        finally:
            conn.close()
        report.reachable = True
    except sqlite3.Error as exc:
        report.problems.append(f"{path} is not a readable SQLite run store ({exc}); give a run file")
        return report
    if report.schema_version is not None and report.schema_version > SQLITE_SCHEMA_VERSION:
        report.problems.append(
            f"{path} has store schema v{report.schema_version}; this delm-rlm reads up to "
            f"v{SQLITE_SCHEMA_VERSION}. Upgrade delm-rlm to open it"
        )
    if not (report.privileges["write file"] and report.privileges["write folder"]):
        report.problems.append(
            f"{path} or its folder is not writable (SQLite needs both for its WAL): fix the permissions"
        )
    return report
