"""Reaching a PostgreSQL server for a run's state: the store URL, psycopg, connections and
what their errors mean.

A store URL is a libpq URI with one extra query parameter, `run`:

    postgresql://user[:password]@host[:port]/dbname[?libpq-params][&run=RUN_ID]

`run` names the run inside the database (several runs share one database); it is taken out
before the URI reaches libpq. Every other parameter (sslmode, connect_timeout, ...) is
libpq's. Messages show the URL with its password replaced by `***`.

psycopg 3 is imported on first use, so the rest of the library works without it.
"""

from __future__ import annotations

import importlib
import re
import time
from dataclasses import dataclass
from types import ModuleType
from typing import TYPE_CHECKING, Any
from urllib.parse import parse_qsl, quote, urlencode, urlsplit, urlunsplit

from delm_rlm.errors import ConfigError, StoreError

if TYPE_CHECKING:
    import psycopg

URL_SCHEMES = ("postgresql", "postgres")
INSTALL_HINT = "pip install 'delm-rlm[postgres]'"
RUN_ID_PATTERN = re.compile(r"[A-Za-z0-9][A-Za-z0-9._:-]{0,99}")
# libpq settings a store connection gets unless the URL sets them: fail fast on a wrong host,
# notice a vanished server (another machine) within about a minute, name ourselves in
# pg_stat_activity.
CONNECTION_DEFAULTS = {
    "connect_timeout": "5",
    "application_name": "delm-rlm",
    "keepalives": "1",
    "keepalives_idle": "30",
    "keepalives_interval": "10",
    "keepalives_count": "3",
}


def load_psycopg() -> ModuleType:
    """psycopg 3, or a StoreError saying how to install it."""
    try:
        return importlib.import_module("psycopg")
    except ImportError as exc:
        raise StoreError(
            f"PostgreSQL run stores need psycopg 3, which is not installed ({exc}); "
            f"install it with: {INSTALL_HINT}"
        ) from exc


def is_postgres_url(target: object) -> bool:
    return isinstance(target, str) and target.split("://", 1)[0].lower() in URL_SCHEMES and "://" in target


def check_run_id(run_id: str) -> str:
    if not isinstance(run_id, str) or not RUN_ID_PATTERN.fullmatch(run_id):
        raise ConfigError(
            f"bad run id {run_id!r}: use 1-100 letters, digits, '.', '_', ':' or '-', "
            "starting with a letter or digit"
        )
    return run_id


@dataclass(frozen=True)
class PostgresTarget:
    """A parsed store URL: what libpq gets, the run it names (if any), and a printable form."""

    conninfo: str  # the URL without `run`, password included: for libpq only
    shown: str  # the URL without `run`, password as ***: for messages and logs
    run_id: str | None

    def shown_with_run(self, run_id: str) -> str:
        """The printable URL of one run (password as ***)."""
        return _with_run(self.shown, run_id)

    def conninfo_with_run(self, run_id: str) -> str:
        """The URL of one run as given, password included: to hand to a worker, not to print."""
        return _with_run(self.conninfo, run_id)


def _with_run(url: str, run_id: str) -> str:
    sep = "&" if urlsplit(url).query else "?"
    return f"{url.rstrip('?')}{sep}run={quote(run_id, safe='._:-')}"


def parse_postgres_url(url: str) -> PostgresTarget:
    if not is_postgres_url(url):
        raise ConfigError(f"not a PostgreSQL store URL: {url!r}; write postgresql://user@host/dbname")
    parts = urlsplit(url)
    query = parse_qsl(parts.query, keep_blank_values=True)
    runs = [value for key, value in query if key == "run"]
    if len(runs) > 1:
        raise ConfigError(f"the store URL names {len(runs)} runs; give one ?run=RUN_ID")
    run_id = check_run_id(runs[0]) if runs else None
    kept = [(key, value) for key, value in query if key != "run"]
    conninfo = urlunsplit(parts._replace(query=urlencode(kept)))
    shown_query = urlencode([(k, "***" if k == "password" else v) for k, v in kept])
    userinfo, at, hostinfo = parts.netloc.rpartition("@")
    if at and ":" in userinfo:
        userinfo = userinfo.split(":", 1)[0] + ":***"
    shown = urlunsplit(parts._replace(netloc=f"{userinfo}{at}{hostinfo}", query=shown_query))
    return PostgresTarget(conninfo=conninfo, shown=shown, run_id=run_id)


def connect(pg: ModuleType, target: PostgresTarget) -> psycopg.Connection[Any]:
    """One autocommit connection (the store sends BEGIN/COMMIT itself), or a StoreError that
    names the server and what to check."""
    try:
        given = pg.conninfo.conninfo_to_dict(target.conninfo)
    except pg.ProgrammingError as exc:
        raise ConfigError(f"bad PostgreSQL store URL {target.shown}: {exc}") from exc
    extra = {k: v for k, v in CONNECTION_DEFAULTS.items() if k not in given}
    try:
        return pg.connect(target.conninfo, autocommit=True, **extra)
    except pg.OperationalError as exc:
        raise StoreError(
            f"cannot reach the PostgreSQL store {target.shown}: {first_line(exc)}. "
            "Check that the server runs and accepts connections from this machine, and the "
            "URL's host, port, database, user and password; "
            "`delm-rlm doctor --store URL` tests a URL"
        ) from exc


def connect_patiently(pg: ModuleType, target: PostgresTarget, wait_s: float) -> psycopg.Connection[Any]:
    """`connect`, retried for up to `wait_s` seconds: for a server that is restarting."""
    deadline = time.monotonic() + wait_s
    delay = 0.05
    while True:
        try:
            return connect(pg, target)
        except StoreError as exc:
            if time.monotonic() + delay > deadline:
                raise StoreError(f"{exc} (gave up after retrying for {wait_s:g}s)") from exc
            time.sleep(delay)
            delay = min(delay * 2, 1.0)


def connection_lost(conn: psycopg.Connection[Any] | None) -> bool:
    """After an error: is the connection gone (server restarted or unreachable)?"""
    return conn is None or conn.closed or conn.broken


def first_line(exc: BaseException) -> str:
    text = str(exc).strip()
    return text.splitlines()[0] if text else type(exc).__name__


def translate_error(pg: ModuleType, exc: Exception, shown: str, *, in_transaction: bool) -> Exception:
    """The typed error for a psycopg error inside a store operation."""
    errors = pg.errors
    if isinstance(exc, pg.DataError) or (isinstance(exc, ValueError) and "NUL" in str(exc)):
        return ConfigError(f"PostgreSQL cannot store this value: {first_line(exc)}")
    if isinstance(exc, errors.ReadOnlySqlTransaction):
        return StoreError("reading() is for reads only; write inside store.transaction()")
    if isinstance(exc, errors.InsufficientPrivilege):
        return StoreError(
            f"{shown}: {first_line(exc)}; the database user needs USAGE on schema delm_rlm and "
            "SELECT, INSERT, UPDATE, DELETE on its tables (`delm-rlm doctor --store URL` lists "
            "what is missing)"
        )
    if isinstance(exc, errors.DeadlockDetected):
        return StoreError(
            f"{shown}: PostgreSQL broke a deadlock by undoing this transaction ({first_line(exc)}); "
            "nothing of it was committed. A transaction that claims a task and then does more "
            "can deadlock with another doing the same: claim in a transaction of its own"
        )
    if isinstance(exc, (pg.OperationalError, pg.InterfaceError)):
        where = " in the middle of a transaction; nothing of it was committed" if in_transaction else ""
        return StoreError(
            f"lost the connection to the PostgreSQL store {shown}{where} ({first_line(exc)}); "
            "the next operation reconnects: retry this one"
        )
    return StoreError(f"{shown}: {type(exc).__name__}: {first_line(exc)}")
