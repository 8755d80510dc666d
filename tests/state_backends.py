"""The run-state backends that tests/test_state_conformance.py runs its suite against.

A backend is a `StateBackend`: a picklable `opener` that opens the same run again (a new
connection, as another process or machine would; spawned test processes call it too), the
schema version the backend writes, and an optional `cleanup`. To add a backend, write a
factory `(tmp_path) -> StateBackend` that gives every test a fresh, empty run and append
`pytest.param(factory, id="<name>")` to BACKENDS. Today: SQLite, and PostgreSQL (a new run
per test in the database of DELM_RLM_TEST_POSTGRES_URL, deleted afterwards).
"""

from __future__ import annotations

import importlib.util
import os
from collections.abc import Callable
from dataclasses import dataclass, field
from functools import partial
from pathlib import Path

import pytest

from delm_rlm.state.protocol import RunState
from delm_rlm.state.sqlite import SCHEMA_VERSION, RunStore


@dataclass
class StateBackend:
    name: str
    opener: Callable[[], RunState]
    schema_version: int
    cleanup: Callable[[], None] | None = None
    opened: list[RunState] = field(default_factory=list)

    def open(self) -> RunState:
        """The run, opened once more (closed again at the end of the test)."""
        store = self.opener()
        self.opened.append(store)
        return store

    def close_all(self) -> None:
        for store in self.opened:
            store.close()
        if self.cleanup is not None:
            self.cleanup()


def sqlite_backend(tmp_path: Path) -> StateBackend:
    return StateBackend("sqlite", partial(RunStore, tmp_path / "run.sqlite"), SCHEMA_VERSION)


BACKENDS = [pytest.param(sqlite_backend, id="sqlite")]


# -- PostgreSQL: a fresh run per test in the database of DELM_RLM_TEST_POSTGRES_URL -----------

POSTGRES_URL_ENV = "DELM_RLM_TEST_POSTGRES_URL"


def postgres_test_url() -> str:
    """The test server's URL. Unset: the test skips, saying how to start a server; under
    CI=true it fails instead (no PostgreSQL test is skipped in CI)."""
    url = os.environ.get(POSTGRES_URL_ENV)
    problem = None
    if not url:
        problem = (f"{POSTGRES_URL_ENV} is not set: start a private server with "
                   "`eval \"$(bash scripts/pg-test-server start)\"`, or run scripts/test")
    elif importlib.util.find_spec("psycopg") is None:
        problem = "psycopg is not installed: pip install 'delm-rlm[postgres]'"
    if problem is not None:
        if os.environ.get("CI", "").lower() == "true":
            pytest.fail(f"PostgreSQL tests cannot be skipped in CI: {problem}")
        pytest.skip(problem)
    assert url is not None
    return url


def postgres_backend(tmp_path: Path) -> StateBackend:
    from delm_rlm.state.postgres import SCHEMA_VERSION as PG_SCHEMA_VERSION
    from delm_rlm.state.postgres import PostgresRunStore, delete_run

    url = postgres_test_url()
    made = PostgresRunStore(url)  # a new run with a fresh id: tests never see each other's data
    run_id = made.run_id
    made.close()
    return StateBackend(
        "postgres", partial(PostgresRunStore, url, run_id), PG_SCHEMA_VERSION,
        cleanup=partial(delete_run, url, run_id),
    )


BACKENDS.append(pytest.param(postgres_backend, id="postgres"))
