"""`open_state`: the run store a target names, on whichever backend it names.

- a path of a run file (`runs/r1/store.sqlite`) or of a run directory (its `store.sqlite`):
  the SQLite `RunStore` (created when missing, resumed when there);
- a PostgreSQL URL, `postgresql://user[:password]@host[:port]/dbname`: a run in that
  database. The run id comes from `?run=RUN_ID` in the URL or from `run_id=`; without one, a
  new run is made with a fresh id. `store.run_id` holds the id, `store.url` the run's URL to
  print (password as ***) and `store.run_url` the one that reopens the run on any machine.
  `create=True` with a run id makes a run of that id instead of opening one.

psycopg is imported only for a PostgreSQL URL, so SQLite users need nothing more.
"""

from __future__ import annotations

import os
from pathlib import Path

from delm_rlm.errors import ConfigError
from delm_rlm.state.postgres_conn import is_postgres_url, parse_postgres_url
from delm_rlm.state.protocol import RunState
from delm_rlm.state.sqlite import RunStore

STORE_FILE_NAME = "store.sqlite"  # a run directory's store file (as `Team` writes it)


def open_state(
    target: str | os.PathLike[str], *, run_id: str | None = None, create: bool = False
) -> RunState:
    """The run store `target` names (see the module docstring)."""
    if is_postgres_url(target):
        from delm_rlm.state.postgres import PostgresRunStore  # psycopg only when needed

        return PostgresRunStore(str(target), run_id, create=create)
    if isinstance(target, str) and "://" in target:
        raise ConfigError(
            f"unknown store URL {target!r}: give a path (SQLite) or postgresql://user@host/dbname"
        )
    if run_id is not None or create:
        raise ConfigError(
            "run_id and create name runs in a PostgreSQL database; an SQLite store file holds "
            "one run: give its path (a new path makes a new run)"
        )
    path = Path(target).expanduser()
    return RunStore(path / STORE_FILE_NAME if path.is_dir() else path)


def describe_target(target: str | os.PathLike[str]) -> str:
    """The target as it may be printed: a PostgreSQL URL without its password."""
    if is_postgres_url(target):
        parsed = parse_postgres_url(str(target))
        return parsed.shown_with_run(parsed.run_id) if parsed.run_id else parsed.shown
    return str(target)
