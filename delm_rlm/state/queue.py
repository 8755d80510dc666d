"""TaskQueue: the run's subtasks, claimed by agents under expiring leases.

States: PENDING (waiting for dependencies) -> READY -> CLAIMED -> DONE | FAILED, and back
to READY when a result is rejected or a lease expires, until `max_attempts` claims are used.

Leases. `claim` hands an agent a READY task with a lease of `lease_s` seconds; the agent
calls `renew` while it works. A lease stays its holder's until it has expired AND another
`claim` has reclaimed the task (reclaiming happens inside the claim transaction). So a late
but not yet reclaimed holder may still renew or complete; once reclaimed, it gets `LeaseLost`.
Every operation is one transaction of the run's store (`state.protocol.RunState`), which
never lets another writer change what the transaction read, and every lease change is a
conditional update: no task is ever held by two agents, whatever the timing, across threads,
processes or machines.

Stale leases raise `LeaseLost` from `complete`/`reject`/`fail` (an exception rather than a
False return, so lost work is never silently dropped); `renew` returns False instead, since
a failed renewal is an ordinary signal to stop working on the task.

Attempts count claims: a task is claimed at most `max_attempts` times. A rejection or an
expired lease on the last attempt fails the task, and a failed task fails every task that
depends on it with "dependency tX failed: <reason>".
"""

from __future__ import annotations

import time
from collections.abc import Callable, Iterable
from typing import Any

from delm_rlm.errors import ConfigError, LeaseLost, NotFound
from delm_rlm.state.protocol import RunState, StateTransaction, Task, TaskState
from delm_rlm.trace import Trace

__all__ = ["MAX_GOAL_CHARS", "LeaseLost", "Task", "TaskQueue", "TaskState"]

MAX_GOAL_CHARS = 4000
# (trace event kind, task id, data) collected inside a transaction, emitted after COMMIT.
_Events = list[tuple[str, str, dict[str, Any]]]
_MAX_REASON_CHARS = 1000
_OPEN_STATES = (TaskState.PENDING, TaskState.READY, TaskState.CLAIMED)


class TaskQueue:
    def __init__(
        self,
        store: RunState,
        *,
        lease_s: float = 120.0,
        max_attempts: int = 3,
        clock: Callable[[], float] = time.time,
        trace: Trace | None = None,
    ) -> None:
        if lease_s <= 0:
            raise ConfigError(f"lease_s must be > 0 seconds, got {lease_s}")
        if max_attempts < 1:
            raise ConfigError(f"max_attempts must be >= 1, got {max_attempts}")
        self.store = store
        self.lease_s = lease_s
        self.max_attempts = max_attempts
        self.clock = clock
        self.trace = trace

    # -- reads ---------------------------------------------------------------------------------

    def get(self, task_id: str) -> Task:
        with self.store.reading() as tx:
            return tx.get_task(task_id)

    def all(self) -> list[Task]:
        with self.store.reading() as tx:
            return tx.list_tasks()

    def counts(self) -> dict[TaskState, int]:
        with self.store.reading() as tx:
            return tx.task_counts()

    def drained(self) -> bool:
        """True when no task is ready, claimed (even with an expired lease) or pending.

        Dependencies always name earlier tasks, so a PENDING task implies some READY or
        CLAIMED task upstream: drained means the team has nothing left to do or wait for.
        """
        counts = self.counts()
        return sum(counts[state] for state in _OPEN_STATES) == 0

    def next_lease_expiry(self) -> float | None:
        """The earliest expiry among claimed tasks (when an idle agent should look again)."""
        with self.store.reading() as tx:
            expiries = [t.lease_expires for t in tx.list_tasks(states=[TaskState.CLAIMED])]
        return min((e for e in expiries if e is not None), default=None)

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
            raise ConfigError("a task needs a goal: a non-empty sentence saying what to do")
        goal = goal.strip()
        if len(goal) > MAX_GOAL_CHARS:
            raise ConfigError(
                f"task goal is {len(goal)} characters; keep it under {MAX_GOAL_CHARS} "
                "(put data in the corpus or in gists, not in the goal)"
            )
        if isinstance(deps, str):
            deps = [deps]
        dep_list = list(dict.fromkeys(deps))  # de-duplicated, order kept
        if any(not isinstance(d, str) for d in dep_list):
            raise ConfigError(f"deps must be task ids like 't1'; got {dep_list!r}")
        attempts_cap = self.max_attempts if max_attempts is None else max_attempts
        if attempts_cap < 1:
            raise ConfigError(f"max_attempts must be >= 1, got {attempts_cap}")
        now = self.clock()
        events: _Events = []
        with self.store.transaction() as tx:
            if dep_list:
                found = {t.id for t in tx.list_tasks(ids=dep_list)}
                missing = [d for d in dep_list if d not in found]
                if missing:
                    raise ConfigError(
                        f"unknown dependency {', '.join(missing)}: a task can only depend on "
                        "tasks that already exist (add those first)"
                    )
            task = tx.add_task(goal, dep_list, attempts_cap, created_by, now)
            events.append(("task_created", task.id,
                           {"goal": goal, "deps": dep_list, "created_by": created_by}))
            events += self._settle(tx, now)
            task = tx.get_task(task.id)
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
            task = tx.claim_ready_task(agent_id, now + self.lease_s, now)
        if task is not None:
            events.append(("task_claimed", task.id,
                           {"attempt": task.attempts, "lease_s": self.lease_s, "agent": agent_id}))
        self._emit(events)
        return task

    def renew(self, task_id: str, agent_id: str) -> bool:
        """Extend the lease by `lease_s` from now. False when the agent no longer holds it."""
        now = self.clock()
        with self.store.transaction() as tx:
            renewed = tx.update_task(  # an unknown id raises NotFound rather than a quiet False
                task_id, if_state=TaskState.CLAIMED, if_holder=agent_id,
                lease_expires=now + self.lease_s, updated_at=now,
            )
        return renewed is not None

    def complete(self, task_id: str, agent_id: str, gist_ids: Iterable[str] = ()) -> Task:
        """Mark the task DONE with the gists it produced; dependents become READY."""
        ids = list(dict.fromkeys(gist_ids))
        now = self.clock()
        with self.store.transaction() as tx:
            self._held(tx, task_id, agent_id)
            if unknown := [g for g in ids if not _gist_exists(tx, g)]:
                raise ConfigError(
                    f"task {task_id} cannot cite unknown gist(s) {', '.join(unknown)}; "
                    "pass the ids the store returned for this task's gists"
                )
            task = self._release(tx, task_id, agent_id, state=TaskState.DONE, gist_ids=ids, updated_at=now)
            events: _Events = [("task_done", task_id, {"gist_ids": ids, "agent": agent_id})]
            events += self._settle(tx, now)  # changes only PENDING tasks, never this one
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
            task = tx.get_task(task_id)
        self._emit(events)
        return task

    def fail(self, task_id: str, agent_id: str, reason: str) -> Task:
        """Give the task up for good (no retry); its dependents fail with the reason."""
        reason = _reason(reason)
        now = self.clock()
        with self.store.transaction() as tx:
            task = self._held(tx, task_id, agent_id)
            events = self._set_failed(tx, task, reason, now)
            task = tx.get_task(task_id)
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

    @staticmethod
    def _held(tx: StateTransaction, task_id: str, agent_id: str) -> Task:
        task = tx.get_task(task_id)
        if task.state != TaskState.CLAIMED:
            raise LeaseLost(task_id, agent_id, f"the task is {task.state.value} now")
        if task.lease_holder != agent_id:
            raise LeaseLost(
                task_id, agent_id,
                f"its lease expired and {task.lease_holder} holds it now",
            )
        return task

    @staticmethod
    def _release(tx: StateTransaction, task_id: str, holder: str | None, **changes: Any) -> Task:
        """End the lease of `holder` with `changes`; only while `holder` still holds it."""
        released = tx.update_task(
            task_id, if_state=TaskState.CLAIMED, if_holder=holder,
            lease_holder=None, lease_expires=None, **changes,
        )
        if released is None:  # only a store that breaks its isolation promise gets here
            raise LeaseLost(task_id, str(holder), "another writer changed the task meanwhile")
        return released

    def _requeue(self, tx: StateTransaction, task: Task, reason: str, now: float) -> _Events:
        self._release(tx, task.id, task.lease_holder, state=TaskState.READY, last_error=reason,
                      errors=[*task.errors, reason], updated_at=now)
        return [("task_requeued", task.id, {"reason": reason})]

    def _set_failed(self, tx: StateTransaction, task: Task, reason: str, now: float) -> _Events:
        self._release(tx, task.id, task.lease_holder, state=TaskState.FAILED, last_error=reason,
                      errors=[*task.errors, reason], updated_at=now)
        return [("task_failed", task.id, {"reason": reason}), *self._settle(tx, now)]

    def _reap(self, tx: StateTransaction, now: float) -> _Events:
        events: _Events = []
        for task in tx.list_tasks(states=[TaskState.CLAIMED], lease_expires_by=now):
            reason = f"lease of {task.lease_holder} expired (attempt {task.attempts}/{task.max_attempts})"
            if task.attempts >= task.max_attempts:
                events += self._set_failed(tx, task, reason, now)
            else:
                events += self._requeue(tx, task, reason, now)
        return events

    @staticmethod
    def _settle(tx: StateTransaction, now: float) -> _Events:
        """Promote PENDING tasks whose deps are all DONE; fail those with a FAILED dep.

        Dependencies always have smaller ids, so one pass in id order settles whole chains.
        """
        pending = tx.list_tasks(states=[TaskState.PENDING])
        if not pending:
            return []
        known = {t.id: t for t in pending}
        wanted = {d for t in pending for d in t.deps} - known.keys()
        known.update({t.id: t for t in tx.list_tasks(ids=sorted(wanted))})
        state = {tid: t.state for tid, t in known.items()}
        error = {tid: t.last_error for tid, t in known.items()}
        events: _Events = []
        for task in pending:
            failed = next((d for d in task.deps if state[d] == TaskState.FAILED), None)
            if failed is not None:
                reason = _reason(f"dependency {failed} failed: {error[failed]}")
                tx.update_task(task.id, if_state=TaskState.PENDING, state=TaskState.FAILED,
                               last_error=reason, errors=[*task.errors, reason], updated_at=now)
                state[task.id], error[task.id] = TaskState.FAILED, reason
                events.append(("task_failed", task.id, {"reason": reason}))
            elif all(state[d] == TaskState.DONE for d in task.deps):
                tx.update_task(task.id, if_state=TaskState.PENDING, state=TaskState.READY,
                               updated_at=now)
                state[task.id] = TaskState.READY
        return events

    def _emit(self, events: _Events) -> None:
        # Emitted only after COMMIT, so the trace never reports what was rolled back.
        if self.trace is None:
            return
        for kind, task_id, data in events:
            data = dict(data)
            agent = data.pop("agent", None)
            self.trace.emit(kind, task=task_id, agent=agent, **data)


def _gist_exists(tx: StateTransaction, gist_id: str) -> bool:
    try:
        tx.get_gist(gist_id)
    except NotFound:
        return False
    return True


def _check_agent(agent_id: str) -> None:
    if not isinstance(agent_id, str) or not agent_id:
        raise ConfigError(f"agent_id must be a non-empty string, got {agent_id!r}")


def _reason(reason: str) -> str:
    if not isinstance(reason, str) or not reason.strip():
        raise ConfigError("give a reason (a short sentence) so the next attempt can avoid it")
    reason = reason.strip()
    if len(reason) > _MAX_REASON_CHARS:
        reason = reason[: _MAX_REASON_CHARS - 3] + "..."
    return reason
