"""TaskQueue: the run's subtasks, claimed by agents under expiring leases.

States: PENDING (waiting for dependencies) -> READY -> CLAIMED -> DONE | FAILED, and back
to READY when a result is rejected or a lease expires, until `max_attempts` claims are used.

Leases. `claim` hands an agent a READY task with a lease of `lease_s` seconds; the agent
calls `renew` while it works. A lease stays its holder's until it has expired AND another
`claim` has reclaimed the task (reclaiming happens inside the claim transaction). So a late
but not yet reclaimed holder may still renew or complete; once reclaimed, it gets `LeaseLost`.
Because every operation is one `BEGIN IMMEDIATE` transaction on the run's SQLite file, no
task is ever held by two agents, whatever the timing, across threads and processes.

Stale leases raise `LeaseLost` from `complete`/`reject`/`fail` (an exception rather than a
False return, so lost work is never silently dropped); `renew` returns False instead, since
a failed renewal is an ordinary signal to stop working on the task.

Attempts count claims: a task is claimed at most `max_attempts` times. A rejection or an
expired lease on the last attempt fails the task, and a failed task fails every task that
depends on it with "dependency tX failed: <reason>".
"""

from __future__ import annotations

from delm_rlm.errors import LeaseLost

import json
import sqlite3
import time
from collections.abc import Callable, Iterable
from enum import Enum
from typing import Any

from pydantic import BaseModel, Field

from delm_rlm.state.sqlite import NotFound, RunStore, Tx
from delm_rlm.trace import Trace

MAX_GOAL_CHARS = 4000
# (trace event kind, task id, data) collected inside a transaction, emitted after COMMIT.
_Events = list[tuple[str, str, dict[str, Any]]]
_MAX_REASON_CHARS = 1000


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


def _row_to_task(row: sqlite3.Row | tuple[Any, ...], columns: list[str]) -> Task:
    data = dict(zip(columns, row))
    data.pop("seq", None)
    for key in ("deps", "gist_ids", "errors"):
        data[key] = json.loads(data[key])
    return Task.model_validate(data)


class TaskQueue:
    def __init__(
        self,
        store: RunStore,
        *,
        lease_s: float = 120.0,
        max_attempts: int = 3,
        clock: Callable[[], float] = time.time,
        trace: Trace | None = None,
    ) -> None:
        if lease_s <= 0:
            raise ValueError(f"lease_s must be > 0 seconds, got {lease_s}")
        if max_attempts < 1:
            raise ValueError(f"max_attempts must be >= 1, got {max_attempts}")
        self.store = store
        self.lease_s = lease_s
        self.max_attempts = max_attempts
        self.clock = clock
        self.trace = trace

    # -- reads ---------------------------------------------------------------------------------

    def _select(self, tx: Tx, where: str = "", args: tuple[Any, ...] = ()) -> list[Task]:
        cur = tx.conn.execute(f"SELECT * FROM tasks {where} ORDER BY seq", args)
        columns = [c[0] for c in cur.description]
        return [_row_to_task(r, columns) for r in cur.fetchall()]

    def _get(self, tx: Tx, task_id: str) -> Task:
        found = self._select(tx, "WHERE id = ?", (task_id,))
        if not found:
            raise NotFound(f"no task {task_id!r} in this run; task ids look like 't1', 't2'")
        return found[0]

    def get(self, task_id: str) -> Task:
        with self.store.reading() as tx:
            return self._get(tx, task_id)

    def all(self) -> list[Task]:
        with self.store.reading() as tx:
            return self._select(tx)

    def counts(self) -> dict[TaskState, int]:
        with self.store.reading() as tx:
            rows = tx.conn.execute("SELECT state, count(*) FROM tasks GROUP BY state").fetchall()
        counts = {state: 0 for state in TaskState}
        for state, n in rows:
            counts[TaskState(state)] = n
        return counts

    def drained(self) -> bool:
        """True when no task is ready, claimed (even with an expired lease) or pending.

        Dependencies always name earlier tasks, so a PENDING task implies some READY or
        CLAIMED task upstream: drained means the team has nothing left to do or wait for.
        """
        with self.store.reading() as tx:
            n = tx.conn.execute(
                "SELECT count(*) FROM tasks WHERE state IN ('pending', 'ready', 'claimed')"
            ).fetchone()[0]
        return n == 0

    def next_lease_expiry(self) -> float | None:
        """The earliest expiry among claimed tasks (when an idle agent should look again)."""
        with self.store.reading() as tx:
            row = tx.conn.execute(
                "SELECT min(lease_expires) FROM tasks WHERE state = 'claimed'"
            ).fetchone()
        return row[0]

    # -- writes --------------------------------------------------------------------------------

    def add(
        self,
        goal: str,
        deps: Iterable[str] = (),
        created_by: str | None = None,
        *,
        max_attempts: int | None = None,
    ) -> Task:
        """Add a task. Every dependency must be an existing task id; the task is READY at
        once when they are all DONE, FAILED at once when one of them FAILED."""
        if not isinstance(goal, str) or not goal.strip():
            raise ValueError("a task needs a goal: a non-empty sentence saying what to do")
        goal = goal.strip()
        if len(goal) > MAX_GOAL_CHARS:
            raise ValueError(
                f"task goal is {len(goal)} characters; keep it under {MAX_GOAL_CHARS} "
                "(put data in the corpus or in gists, not in the goal)"
            )
        if isinstance(deps, str):
            deps = [deps]
        dep_list = list(dict.fromkeys(deps))  # de-duplicated, order kept
        if any(not isinstance(d, str) for d in dep_list):
            raise ValueError(f"deps must be task ids like 't1'; got {dep_list!r}")
        attempts_cap = self.max_attempts if max_attempts is None else max_attempts
        if attempts_cap < 1:
            raise ValueError(f"max_attempts must be >= 1, got {attempts_cap}")
        now = self.clock()
        events: _Events = []
        with self.store.transaction() as tx:
            if dep_list:
                marks = ",".join("?" * len(dep_list))
                found = {
                    r[0]
                    for r in tx.conn.execute(f"SELECT id FROM tasks WHERE id IN ({marks})", dep_list)
                }
                missing = [d for d in dep_list if d not in found]
                if missing:
                    raise ValueError(
                        f"unknown dependency {', '.join(missing)}: a task can only depend on "
                        "tasks that already exist (add those first)"
                    )
            task_id = tx.next_id("t")
            tx.conn.execute(
                "INSERT INTO tasks(seq, id, goal, deps, state, max_attempts, created_by, "
                "created_at, updated_at) VALUES (?, ?, ?, ?, 'pending', ?, ?, ?, ?)",
                (int(task_id[1:]), task_id, goal, json.dumps(dep_list), attempts_cap,
                 created_by, now, now),
            )
            events.append(("task_created", task_id,
                           {"goal": goal, "deps": dep_list, "created_by": created_by}))
            events += self._settle(tx, now)
            task = self._get(tx, task_id)
        self._emit(events)
        return task

    def claim(self, agent_id: str) -> Task | None:
        """Claim the oldest READY task for `agent_id`, or None when none is ready.
        Expired leases are reclaimed first, in the same transaction."""
        _check_agent(agent_id)
        now = self.clock()
        events: _Events = []
        with self.store.transaction() as tx:
            events += self._reap(tx, now)
            cur = tx.conn.execute(
                "UPDATE tasks SET state = 'claimed', lease_holder = ?, lease_expires = ?, "
                "attempts = attempts + 1, updated_at = ? "
                "WHERE seq = (SELECT seq FROM tasks WHERE state = 'ready' ORDER BY seq LIMIT 1) "
                "RETURNING *",
                (agent_id, now + self.lease_s, now),
            )
            row = cur.fetchone()
            task = None if row is None else _row_to_task(row, [c[0] for c in cur.description])
        if task is not None:
            events.append(("task_claimed", task.id,
                           {"attempt": task.attempts, "lease_s": self.lease_s, "agent": agent_id}))
        self._emit(events)
        return task

    def renew(self, task_id: str, agent_id: str) -> bool:
        """Extend the lease by `lease_s` from now. False when the agent no longer holds it."""
        now = self.clock()
        with self.store.transaction() as tx:
            cur = tx.conn.execute(
                "UPDATE tasks SET lease_expires = ?, updated_at = ? "
                "WHERE id = ? AND state = 'claimed' AND lease_holder = ?",
                (now + self.lease_s, now, task_id, agent_id),
            )
            renewed = cur.rowcount == 1
            if not renewed:
                self._get(tx, task_id)  # unknown id -> NotFound rather than a quiet False
        return renewed

    def complete(self, task_id: str, agent_id: str, gist_ids: Iterable[str] = ()) -> Task:
        """Mark the task DONE with the gists it produced; dependents become READY."""
        ids = list(dict.fromkeys(gist_ids))
        now = self.clock()
        with self.store.transaction() as tx:
            self._held(tx, task_id, agent_id)
            if ids:
                marks = ",".join("?" * len(ids))
                known = {r[0] for r in tx.conn.execute(f"SELECT id FROM gists WHERE id IN ({marks})", ids)}
                if unknown := [g for g in ids if g not in known]:
                    raise ValueError(
                        f"task {task_id} cannot cite unknown gist(s) {', '.join(unknown)}; "
                        "pass the ids the store returned for this task's gists"
                    )
            tx.conn.execute(
                "UPDATE tasks SET state = 'done', gist_ids = ?, lease_holder = NULL, "
                "lease_expires = NULL, updated_at = ? WHERE id = ?",
                (json.dumps(ids), now, task_id),
            )
            events = [("task_done", task_id, {"gist_ids": ids, "agent": agent_id})]
            events += self._settle(tx, now)
            task = self._get(tx, task_id)
        self._emit(events)
        return task

    def reject(self, task_id: str, agent_id: str, reason: str) -> Task:
        """The agent's result was rejected: back to READY with the reason attached, or
        FAILED when this was the last allowed attempt."""
        reason = _reason(reason)
        now = self.clock()
        with self.store.transaction() as tx:
            task = self._held(tx, task_id, agent_id)
            if task.attempts >= task.max_attempts:
                final = f"rejected on attempt {task.attempts}/{task.max_attempts}: {reason}"
                events = self._set_failed(tx, task, final, now)
            else:
                events = self._requeue(tx, task, f"rejected: {reason}", now)
            task = self._get(tx, task_id)
        self._emit(events)
        return task

    def fail(self, task_id: str, agent_id: str, reason: str) -> Task:
        """Give the task up for good (no retry); its dependents fail with the reason."""
        reason = _reason(reason)
        now = self.clock()
        with self.store.transaction() as tx:
            task = self._held(tx, task_id, agent_id)
            events = self._set_failed(tx, task, reason, now)
            task = self._get(tx, task_id)
        self._emit(events)
        return task

    def reap(self) -> list[str]:
        """Return tasks with expired leases to READY (or FAILED on their last attempt) now.
        `claim` does this itself; call it to tidy up before inspecting the queue."""
        now = self.clock()
        with self.store.transaction() as tx:
            events = self._reap(tx, now)
        self._emit(events)
        return [task_id for kind, task_id, _ in events if kind in ("task_requeued", "task_failed")]

    # -- inside a transaction ------------------------------------------------------------------

    def _held(self, tx: Tx, task_id: str, agent_id: str) -> Task:
        task = self._get(tx, task_id)
        if task.state != TaskState.CLAIMED:
            raise LeaseLost(task_id, agent_id, f"the task is {task.state.value} now")
        if task.lease_holder != agent_id:
            raise LeaseLost(
                task_id, agent_id,
                f"its lease expired and {task.lease_holder} holds it now",
            )
        return task

    def _requeue(self, tx: Tx, task: Task, reason: str, now: float) -> _Events:
        tx.conn.execute(
            "UPDATE tasks SET state = 'ready', lease_holder = NULL, lease_expires = NULL, "
            "last_error = ?, errors = ?, updated_at = ? WHERE id = ?",
            (reason, json.dumps([*task.errors, reason]), now, task.id),
        )
        return [("task_requeued", task.id, {"reason": reason})]

    def _set_failed(self, tx: Tx, task: Task, reason: str, now: float) -> _Events:
        tx.conn.execute(
            "UPDATE tasks SET state = 'failed', lease_holder = NULL, lease_expires = NULL, "
            "last_error = ?, errors = ?, updated_at = ? WHERE id = ?",
            (reason, json.dumps([*task.errors, reason]), now, task.id),
        )
        return [("task_failed", task.id, {"reason": reason}), *self._settle(tx, now)]

    def _reap(self, tx: Tx, now: float) -> _Events:
        events: _Events = []
        for task in self._select(tx, "WHERE state = 'claimed' AND lease_expires <= ?", (now,)):
            reason = f"lease of {task.lease_holder} expired (attempt {task.attempts}/{task.max_attempts})"
            if task.attempts >= task.max_attempts:
                events += self._set_failed(tx, task, reason, now)
            else:
                events += self._requeue(tx, task, reason, now)
        return events

    def _settle(self, tx: Tx, now: float) -> _Events:
        """Promote PENDING tasks whose deps are all DONE; fail those with a FAILED dep.

        Dependencies always have smaller ids, so one pass in id order settles whole chains.
        """
        pending = self._select(tx, "WHERE state = 'pending'")
        if not pending:
            return []
        rows = tx.conn.execute("SELECT id, state, last_error FROM tasks").fetchall()
        state = {r[0]: r[1] for r in rows}
        error = {r[0]: r[2] for r in rows}
        events: _Events = []
        for task in pending:
            failed = next((d for d in task.deps if state[d] == TaskState.FAILED.value), None)
            if failed is not None:
                reason = _reason(f"dependency {failed} failed: {error[failed]}")
                tx.conn.execute(
                    "UPDATE tasks SET state = 'failed', last_error = ?, errors = ?, "
                    "updated_at = ? WHERE id = ?",
                    (reason, json.dumps([*task.errors, reason]), now, task.id),
                )
                state[task.id], error[task.id] = TaskState.FAILED.value, reason
                events.append(("task_failed", task.id, {"reason": reason}))
            elif all(state[d] == TaskState.DONE.value for d in task.deps):
                tx.conn.execute(
                    "UPDATE tasks SET state = 'ready', updated_at = ? WHERE id = ?", (now, task.id)
                )
                state[task.id] = TaskState.READY.value
        return events

    def _emit(self, events: _Events) -> None:
        # Emitted only after COMMIT, so the trace never reports what was rolled back.
        if self.trace is None:
            return
        for kind, task_id, data in events:
            data = dict(data)
            agent = data.pop("agent", None)
            self.trace.emit(kind, task=task_id, agent=agent, **data)


def _check_agent(agent_id: str) -> None:
    if not isinstance(agent_id, str) or not agent_id:
        raise ValueError(f"agent_id must be a non-empty string, got {agent_id!r}")


def _reason(reason: str) -> str:
    if not isinstance(reason, str) or not reason.strip():
        raise ValueError("give a reason (a short sentence) so the next attempt can avoid it")
    reason = reason.strip()
    if len(reason) > _MAX_REASON_CHARS:
        reason = reason[: _MAX_REASON_CHARS - 3] + "..."
    return reason
