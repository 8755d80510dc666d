"""The protocols a run's state lives behind: what the queue, the shared context, the
classification log and the report read and write, and nothing about how it is stored.

`RunState` is one run's store; `StateTransaction` is what its `transaction()` and `reading()`
hand out. `delm_rlm.state.sqlite.RunStore` implements both on one SQLite file,
`delm_rlm.state.postgres.PostgresRunStore` on a PostgreSQL database. Another
backend implements the same methods and passes tests/test_state_conformance.py (add its
fixture to tests/state_backends.py).

What every backend guarantees (the queue's lease rules and the verifier's merges read, then
write, inside one transaction, and rely on it):
- `transaction()` is all-or-nothing, and nothing another writer commits changes what it has
  read before it commits (SQLite: BEGIN IMMEDIATE; a server database: lock the rows it reads,
  or SERIALIZABLE with retries). It is re-entrant within one thread: an inner
  `transaction()` joins the outer one, and an exception leaving the outer one undoes both.
  It never spans an `await` (a backend refuses that with `RunStateError`).
- `reading()` sees one consistent state across several reads (call only its reads);
  inside a `transaction()` it reads through that transaction.
- The store assigns ids: "g<n>" for gists, "t<n>" for tasks, n = 1, 2, ... in insertion order,
  never reused, and a rolled-back transaction uses none up.
- Lists come back in id order; unknown ids raise `NotFound`.
- Blobs (named byte strings, e.g. the corpus a worker on another machine reads) are
  write-once and come back checked against their SHA-256.
"""

from __future__ import annotations

import hashlib
import json
from collections.abc import Iterable, Sequence
from contextlib import AbstractContextManager
from dataclasses import dataclass, field
from datetime import datetime, timezone
from enum import Enum
from typing import Any, Protocol

from pydantic import BaseModel, ConfigDict, Field

from delm_rlm.errors import ConfigError
from delm_rlm.gists import Gist, GistKind, GistStatus

StatusFilter = GistStatus | str | Iterable[GistStatus | str] | None
KindFilter = GistKind | str | Iterable[GistKind | str] | None


def utc_now_iso() -> str:
    return datetime.now(timezone.utc).isoformat(timespec="milliseconds")


class RunMeta(BaseModel):
    """The run's meta record. Unknown keys are kept (extra='allow')."""

    model_config = ConfigDict(extra="allow")

    schema_version: int = 0  # written by the store: the backend's schema version
    question: str | None = None
    method: str | None = None
    config: dict[str, Any] = Field(default_factory=dict)
    status: str = "created"
    answer: str | None = None
    created_at: str | None = None  # ISO 8601 UTC
    finished_at: str | None = None


class TaskState(str, Enum):
    PENDING = "pending"
    READY = "ready"
    CLAIMED = "claimed"
    DONE = "done"
    FAILED = "failed"


class Task(BaseModel):
    id: str
    goal: str
    deps: list[str] = Field(default_factory=list)
    state: TaskState
    lease_holder: str | None = None
    lease_expires: float | None = None  # in the queue's clock (epoch seconds by default)
    attempts: int = 0  # claims so far
    max_attempts: int
    gist_ids: list[str] = Field(default_factory=list)
    created_by: str | None = None
    last_error: str | None = None  # the latest rejection / failure / expiry reason
    errors: list[str] = Field(default_factory=list)  # every such reason, oldest first
    created_at: float
    updated_at: float

    def reasons(self) -> list[str]:
        """Why earlier attempts failed, oldest first (`last_error` alone where a caller set
        only it)."""
        return list(self.errors) or ([self.last_error] if self.last_error else [])


# The task fields `update_task` may change; id, goal, deps and the rest are fixed at insert.
TASK_UPDATABLE_FIELDS = frozenset(
    {"state", "lease_holder", "lease_expires", "attempts", "gist_ids", "last_error", "errors",
     "updated_at"}
)


def check_task_changes(changes: dict[str, object]) -> None:
    """The rule every backend's `update_task` applies first: some changes, all updatable."""
    unknown = sorted(set(changes) - TASK_UPDATABLE_FIELDS)
    if unknown or not changes:
        raise ConfigError(
            f"update_task changes {', '.join(sorted(TASK_UPDATABLE_FIELDS))}; "
            f"got {', '.join(unknown) or 'nothing'}"
        )


class ClassificationRecord(BaseModel):
    """One `classify` call an agent made: what the verifier's replay answers from.

    `key` is `ClassificationLog.key(items, labels, instruction)`, what a replay looks up;
    `items` are the texts labelled, one per result, so a report or an evaluation can read
    what the model said about each (None in records stored before they were kept)."""

    key: str
    labels: list[str]
    instruction: str
    result: list[str | None]
    items: list[str] | None = None

    def stored_columns(self) -> tuple[str, str, str, str, str | None]:
        """(key, labels, instruction, result, items) as every store keeps them: the lists as
        JSON text, items NULL where they were not kept."""
        items = None if self.items is None else json.dumps(self.items, ensure_ascii=False)
        return (self.key, json.dumps(self.labels, ensure_ascii=False), self.instruction,
                json.dumps(self.result, ensure_ascii=False), items)

    @classmethod
    def from_stored(cls, key: str, labels: str, instruction: str, result: str,
                    items: str | None) -> ClassificationRecord:
        """The record back from the columns `stored_columns` wrote."""
        return cls(key=key, labels=json.loads(labels), instruction=instruction,
                   result=json.loads(result), items=None if items is None else json.loads(items))


MAX_BLOB_NAME_CHARS = 200


class BlobInfo(BaseModel):
    """What the store knows of one blob without reading it: its name, the SHA-256 of its
    bytes (hex) and its size in bytes."""

    name: str
    sha256: str
    size: int

    @classmethod
    def of(cls, name: str, data: bytes) -> BlobInfo:
        """The info of `data` stored under `name` (the name checked)."""
        return cls(name=check_blob_name(name), sha256=hashlib.sha256(data).hexdigest(), size=len(data))


def check_blob_name(name: str) -> str:
    if not isinstance(name, str) or not name.strip() or len(name) > MAX_BLOB_NAME_CHARS:
        raise ConfigError(
            f"a blob needs a name (a non-empty string of at most {MAX_BLOB_NAME_CHARS} "
            f"characters, e.g. 'corpus'); got {name!r}"
        )
    return name


def blob_bytes(data: bytes | bytearray | memoryview) -> bytes:
    if not isinstance(data, (bytes, bytearray, memoryview)):
        raise ConfigError(f"a blob holds bytes; got {type(data).__name__} (encode text first)")
    return bytes(data)


@dataclass
class StoreSnapshot:
    """What a run's store holds, as plain JSON-like values, for reports: the meta record, every
    gist (its JSON form) and every task (its fields; deps, gist_ids and errors as lists), in id
    order. Independent of the model classes, so a report still reads a damaged store."""

    meta: dict[str, Any] = field(default_factory=dict)
    gists: list[dict[str, Any]] = field(default_factory=list)
    tasks: list[dict[str, Any]] = field(default_factory=list)


class GistOperations(Protocol):
    def add_gist(self, gist: Gist) -> Gist:
        """Insert a gist that has no id yet; returns it with its new id."""
        ...

    def get_gist(self, gist_id: str) -> Gist: ...

    def update_gist(self, gist_id: str, **changes: Any) -> Gist:
        """Change fields (never the id), validated as a whole gist; returns the new gist."""
        ...

    def list_gists(
        self, status: StatusFilter = None, kinds: KindFilter = None, dedupe_key: str | None = None
    ) -> list[Gist]:
        """Gists filtered by status(es), kind(s) and `delm_rlm.gists.dedupe_key`."""
        ...


class CounterOperations(Protocol):
    """Named integer counters of a run (rounds finalized, tasks added by agents, ...)."""

    def add_to_counter(self, name: str, delta: int = 1) -> int:
        """Add `delta` (may be negative) atomically; returns the new value."""
        ...

    def counter(self, name: str) -> int:
        """The counter's value; 0 for a counter never added to."""
        ...


class TaskOperations(Protocol):
    """The storage side of the task queue; the lease rules live in `state.queue.TaskQueue`."""

    def add_task(
        self, goal: str, deps: Sequence[str], max_attempts: int, created_by: str | None, now: float
    ) -> Task:
        """Insert a PENDING task with a new id (the caller has checked the deps exist)."""
        ...

    def get_task(self, task_id: str) -> Task: ...

    def list_tasks(
        self,
        states: Iterable[TaskState] | None = None,
        ids: Iterable[str] | None = None,
        lease_expires_by: float | None = None,
    ) -> list[Task]:
        """Tasks in id order, filtered by state(s), by id(s) (unknown ids are left out) and by
        lease expiry (`lease_expires <= lease_expires_by`, which only claimed tasks have)."""
        ...

    def task_counts(self) -> dict[TaskState, int]:
        """How many tasks are in each state (every state present, 0 when none)."""
        ...

    def claim_ready_task(self, holder: str, lease_expires: float, now: float) -> Task | None:
        """Atomically claim the oldest READY task: CLAIMED, leased to `holder` until
        `lease_expires`, attempts + 1. None when no task is READY. Two concurrent calls never
        get the same task."""
        ...

    def update_task(
        self,
        task_id: str,
        *,
        if_state: TaskState | None = None,
        if_holder: str | None = None,
        **changes: Any,
    ) -> Task | None:
        """Set `changes` (names from TASK_UPDATABLE_FIELDS) only if the task is in `if_state`
        and leased to `if_holder` (each when given). Returns the updated task, None when the
        condition did not hold; raises NotFound for an unknown id."""
        ...


class StateTransaction(GistOperations, TaskOperations, CounterOperations, Protocol):
    """What one open transaction of a `RunState` offers."""


class ClassificationRecords(Protocol):
    """An append-only log of `classify` results; a later record for the same key wins."""

    def append_classification(self, record: ClassificationRecord) -> None: ...

    def classifications(self) -> list[ClassificationRecord]:
        """Every record, oldest first."""
        ...


class BlobOperations(Protocol):
    """Named byte strings of a run, each written once: what a worker on another machine must
    read (the corpus) travels through the store, checked by SHA-256 on every read."""

    def put_blob(self, name: str, data: bytes) -> BlobInfo:
        """Store `data` under `name`. Storing the same bytes again is a no-op; other bytes
        under a stored name are refused (ConfigError)."""
        ...

    def get_blob(self, name: str) -> bytes:
        """The bytes stored under `name`; NotFound when there are none, StoreError when they
        no longer match their SHA-256."""
        ...

    def blob_info(self, name: str) -> BlobInfo:
        """Name, SHA-256 and size of a stored blob, without reading it; NotFound when none."""
        ...


class RunState(GistOperations, CounterOperations, ClassificationRecords, BlobOperations, Protocol):
    """One run's state. The gist and counter methods each run in their own transaction."""

    def transaction(self) -> AbstractContextManager[StateTransaction]: ...

    def reading(self) -> AbstractContextManager[StateTransaction]: ...

    def meta(self) -> RunMeta: ...

    def get_meta(self, key: str, default: Any = None) -> Any: ...

    def set_meta(self, **values: Any) -> RunMeta:
        """Set meta keys (known ones type-checked, others kept as JSON); `schema_version` is
        the store's own and is refused."""
        ...

    def snapshot(self) -> StoreSnapshot: ...

    def location(self) -> str:
        """Where the run lives, fit to print: a file path, or a URL without its password."""
        ...

    def close(self) -> None: ...
