"""Run traces: one event stream per run, written as JSONL next to the run's store.

Every part of a run (the gateway, agents, the queue, the verifier) reports what it does as
a `TraceEvent`. The same stream feeds its readers: the JSONL file (kept after the run),
subscribers (the live terminal view, `delm_rlm.otel`'s OpenTelemetry export, a caller's own
progress callback) and the HTML run report (`delm-rlm trace`).

A progress callback is any callable taking a `TraceEvent` (`TraceSubscriber`):
`Team(lm, trace_subscribers=[callback])`, or `Trace(path, subscribers=[callback])` handed
to an `RLM(lm, trace=...)`. `delm_rlm.live.ProgressLines` turns events into the live view's
one-line summaries. A callback that raises never breaks the run; its first failure is logged.
"""

from __future__ import annotations

import json
import logging
import threading
import time
from collections.abc import Callable, Iterable
from datetime import datetime, timezone
from pathlib import Path
from typing import Any

from pydantic import BaseModel, Field

logger = logging.getLogger(__name__)

# The event vocabulary. Readers (live view, HTML report) rely on these names and fields;
# add new kinds rather than changing the meaning of existing ones.
EVENT_KINDS: dict[str, str] = {
    "run_started": "question, method, corpus (description), config",
    "task_created": "goal, deps, created_by",
    "task_claimed": "attempt, lease_s",
    "task_done": "gist_ids",
    "task_failed": "reason",
    "task_requeued": "reason",
    "model_call": "role, model, input_tokens, output_tokens, seconds, cached, cost_usd, prompt (tail), response",
    "model_call_failed": "role, model, error, seconds, prompt (tail)",
    "code_cell": "iteration, code, stdout, stderr, error, timed_out, duration_s",
    "agent_step": "iteration, action (short text for live views)",
    "gist_proposed": "gist (full Gist as JSON)",
    "gist_admitted": "gist_id, note, checks (list of check names that ran)",
    "gist_rejected": "gist_id, reason, failure_gist_id",
    "gist_merged": "gist_id, into",
    "labels_checked": "gist_id, sample, given, relabelled, labels, agreement, settled_agreement, "
                      "min_agreement, passed, disputes, rule_ids (a spot check of model-given labels)",
    "conflict_resolved": "gist_ids, method (re-execution / vote / unresolved), winner, loser, reason, "
                         "votes, reexecution, failure_gist_id",
    "finalize": "answer, gist_ids",
    "plan_chosen": "plan (whole or split), reason, signals (what the scout saw)",
    "method_applied": "method_id, version, gist_id (a chunk's partial computed by a method, no model)",
    "method_failed": "method_id, version, reason (the chunk goes to an agent)",
    "budget_exceeded": "limit, used, allowed",
    "error": "message",
    "run_finished": "status, answer, usage",
}


class TraceEvent(BaseModel):
    """One thing that happened in a run."""

    seq: int
    t: float = Field(description="seconds since the run started")
    ts: str = Field(description="wall-clock time, ISO 8601 UTC")
    kind: str
    agent: str | None = None
    task: str | None = None
    data: dict[str, Any] = Field(default_factory=dict)


TraceSubscriber = Callable[[TraceEvent], None]


class Trace:
    """An append-only event stream for one run.

    Events are kept in memory, appended to `path` (JSONL, flushed per event so a killed run
    keeps its trace) and passed to subscribers. Thread-safe: the sandbox bridge may report
    from its own thread.
    """

    def __init__(self, path: str | Path | None = None, *, subscribers: Iterable[TraceSubscriber] = ()) -> None:
        self.path = Path(path) if path is not None else None
        self.events: list[TraceEvent] = []
        self._subscribers: list[TraceSubscriber] = list(subscribers)
        self._broken: set[int] = set()  # subscribers whose failure was logged already
        self._lock = threading.Lock()
        self._start = time.monotonic()
        self._file = None
        if self.path is not None:
            self.path.parent.mkdir(parents=True, exist_ok=True)
            # Append: a resumed run continues the same trace.
            self._file = self.path.open("a", encoding="utf-8")
            existing = self.load(self.path) if self.path.stat().st_size else []
            self._seq = existing[-1].seq + 1 if existing else 0
        else:
            self._seq = 0

    def subscribe(self, callback: TraceSubscriber) -> None:
        self._subscribers.append(callback)

    def unsubscribe(self, callback: TraceSubscriber) -> None:
        if callback in self._subscribers:
            self._subscribers.remove(callback)

    def emit(
        self, kind: str, *, agent: str | None = None, task: str | None = None, **data: Any
    ) -> TraceEvent:
        if kind not in EVENT_KINDS:
            raise ValueError(f"unknown trace event kind {kind!r}; known: {sorted(EVENT_KINDS)}")
        with self._lock:
            event = TraceEvent(
                seq=self._seq,
                t=round(time.monotonic() - self._start, 4),
                ts=datetime.now(timezone.utc).isoformat(timespec="milliseconds"),
                kind=kind,
                agent=agent,
                task=task,
                data=_jsonable(data),
            )
            self._seq += 1
            self.events.append(event)
            if self._file is not None:
                self._file.write(event.model_dump_json() + "\n")
                self._file.flush()
            subscribers = list(self._subscribers)
        for callback in subscribers:
            try:
                callback(event)
            except Exception:  # a broken viewer must never break a run; say so once
                if id(callback) not in self._broken:
                    self._broken.add(id(callback))
                    logger.warning("trace subscriber %r failed on a %s event (its later failures are not logged)",
                                   callback, kind, exc_info=True)
        return event

    def of_kind(self, *kinds: str) -> list[TraceEvent]:
        return [e for e in self.events if e.kind in kinds]

    def close(self) -> None:
        with self._lock:
            if self._file is not None:
                self._file.close()
                self._file = None

    def __enter__(self) -> Trace:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    @staticmethod
    def load(path: str | Path) -> list[TraceEvent]:
        """Read a trace file. A last line cut short by a killed run is skipped."""
        events: list[TraceEvent] = []
        lines = Path(path).read_text(encoding="utf-8").splitlines()
        for number, line in enumerate(lines, start=1):
            if not line.strip():
                continue
            try:
                events.append(TraceEvent.model_validate_json(line))
            except ValueError as exc:
                if number == len(lines):
                    break
                raise ValueError(f"{path}: line {number} is not a trace event: {exc}") from exc
        return events


def _jsonable(value: Any) -> Any:
    """Turn pydantic models, paths and other objects into JSON-safe values."""
    if isinstance(value, BaseModel):
        return value.model_dump(mode="json")
    if isinstance(value, dict):
        return {str(k): _jsonable(v) for k, v in value.items()}
    if isinstance(value, (list, tuple, set)):
        return [_jsonable(v) for v in value]
    if value is None or isinstance(value, (str, int, float, bool)):
        return value
    try:
        json.dumps(value)
        return value
    except TypeError:
        return str(value)


def model_call_observer(trace: Trace) -> Callable[[Any, dict[str, Any]], None]:
    """An `LM.on_call` observer that records every model call as a `model_call` event.

    Takes any object with the gateway's `Completion` fields, so this module needs no import
    of the gateway. Agents pass `agent`, `task` and `prompt_tail` in the call's tags.
    """

    def observe(completion: Any, tags: dict[str, Any]) -> None:
        trace.emit(
            "model_call",
            agent=tags.get("agent"),
            task=tags.get("task"),
            role=completion.role,
            model=completion.model,
            input_tokens=completion.input_tokens,
            output_tokens=completion.output_tokens,
            seconds=completion.seconds,
            cached=completion.cached,
            cost_usd=completion.cost_usd,
            call_key=(getattr(completion, "request_key", None) or "")[:16] or None,
            prompt=tags.get("prompt_tail", ""),
            response=completion.text,
        )

    return observe


def iter_kinds(events: Iterable[TraceEvent], *kinds: str) -> Iterable[TraceEvent]:
    return (e for e in events if e.kind in kinds)


def model_failure_observer(trace: Trace) -> Callable[[Any, dict[str, Any]], None]:
    """An `LM.on_failure` observer that records every failed model call as a
    `model_call_failed` event (takes any object with `CallFailure`'s fields)."""

    def observe(failure: Any, tags: dict[str, Any]) -> None:
        trace.emit(
            "model_call_failed",
            agent=tags.get("agent"),
            task=tags.get("task"),
            role=failure.role,
            model=failure.model,
            error=failure.error,
            seconds=failure.seconds,
            prompt=tags.get("prompt_tail", ""),
        )

    return observe


def observe_model_calls(lm: Any, trace: Trace) -> None:
    """Record every model call of `lm` (an LM view) in `trace`: answered and failed."""
    lm.on_call(model_call_observer(trace))
    lm.on_failure(model_failure_observer(trace))
