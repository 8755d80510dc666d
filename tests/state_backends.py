"""The run-state backends that tests/test_state_conformance.py runs its suite against.

A backend is a `StateBackend`: a picklable `opener` that opens the same run again (a new
connection, as another process or machine would; spawned test processes call it too), the
schema version the backend writes, and an optional `cleanup`. To add a backend, write a
factory `(tmp_path) -> StateBackend` that gives every test a fresh, empty run and append
`pytest.param(factory, id="<name>")` to BACKENDS.
"""

from __future__ import annotations

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
