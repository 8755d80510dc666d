"""The live view of a run, fed by its trace.

`LiveView` subscribes to a `Trace` and shows, while a run goes: each agent with its task,
its turn and its last action; the task queue (pending / ready / claimed / done / failed);
the newest admitted and rejected gists with the verifier's reason; usage against the
budget. On a terminal it is a rich `Live` display; elsewhere (CI logs, pipes) it prints one
plain line per notable event instead, so logs stay readable.

All state is derived from trace events (`LiveState.apply`), so the view needs nothing from
the run but its trace, and shows the same thing for a team, a single RLM or a replayed file.
Given the corpus's document names, split tasks are shown by file name ("chunk 2/5:
notes/b.md") instead of by document index.

`ProgressLines(callback)` is the same summary for the Python API: a trace subscriber that
hands `callback` one plain line per notable event (what the view prints off a terminal).
"""

from __future__ import annotations

import threading
import time
from collections import deque
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

from rich.console import Console, Group, RenderableType
from rich.live import Live
from rich.table import Table
from rich.text import Text

from delm_rlm.chunking import task_label
from delm_rlm.trace import Trace, TraceEvent

if TYPE_CHECKING:
    from delm_rlm.llm import Budget

QUEUE_STATES = ("pending", "ready", "claimed", "done", "failed")


@dataclass
class AgentStatus:
    agent: str
    task: str | None = None
    turn: int = 0
    action: str = "starting"


@dataclass
class GistLine:
    gist_id: str | None
    kind: str
    text: str
    reason: str = ""


@dataclass
class Usage:
    calls: int = 0
    cached_calls: int = 0
    input_tokens: int = 0
    output_tokens: int = 0
    cost_usd: float | None = 0.0  # None once any call had no known price

    @property
    def tokens(self) -> int:
        return self.input_tokens + self.output_tokens


@dataclass
class LiveState:
    """What the view knows about a run, rebuilt event by event."""

    budget: Any = None  # a delm_rlm.llm.Budget (duck-typed: max_usd, max_tokens, max_seconds, max_calls)
    names: Sequence[str] | None = None  # the corpus's document names, for task labels
    question: str = ""
    method: str = ""
    status: str = "running"
    answer: str | None = None
    elapsed: float = 0.0
    agents: dict[str, AgentStatus] = field(default_factory=dict)
    tasks: dict[str, dict[str, Any]] = field(default_factory=dict)
    gists: dict[str, GistLine] = field(default_factory=dict)  # by id, from proposals
    admitted: deque[GistLine] = field(default_factory=lambda: deque(maxlen=5))
    rejected: deque[GistLine] = field(default_factory=lambda: deque(maxlen=4))
    usage: Usage = field(default_factory=Usage)

    # ---- event handling -----------------------------------------------------------------

    def apply(self, event: TraceEvent) -> str | None:
        """Update the state; return the plain progress line for this event (or None)."""
        self.elapsed = max(self.elapsed, event.t)
        d = event.data
        who = _who(event)
        kind = event.kind
        if event.agent and kind not in ("run_started", "run_finished"):
            agent = self.agents.setdefault(event.agent, AgentStatus(event.agent))
            if event.task:
                agent.task = event.task
        else:
            agent = None

        if kind == "run_started":
            self.question = str(d.get("question", ""))
            self.method = str(d.get("method", ""))
            return f"run started ({self.method or 'run'}): {_clip(self.question, 160)}"
        if kind == "task_created":
            task_id = event.task or str(d.get("task_id", "?"))
            deps = list(d.get("deps") or [])
            self.tasks[task_id] = {"goal": str(d.get("goal", "")), "deps": deps, "state": "pending"}
            self._release_ready()
            return f"{task_id} created: {_clip(self.task_label(task_id), 120)}" + (f" (after {', '.join(deps)})" if deps else "")
        if kind == "task_claimed":
            self._set_task(event.task, "claimed")
            if agent:
                agent.turn = 0
                agent.action = "claimed task"
            return f"{who} claimed (attempt {d.get('attempt', 1)}): {_clip(self.task_label(event.task), 120)}"
        if kind == "task_done":
            self._set_task(event.task, "done")
            self._release_ready()
            if agent:
                agent.action = "task done"
            gist_ids = d.get("gist_ids") or []
            return f"{who} done" + (f" -> {', '.join(map(str, gist_ids))}" if gist_ids else "") + f" | {self.usage_line()}"
        if kind == "task_failed":
            self._set_task(event.task, "failed")
            if agent:
                agent.action = "task failed"
            return f"{who} failed: {_clip(str(d.get('reason', '')), 160)}"
        if kind == "task_requeued":
            self._set_task(event.task, "ready")
            if agent:
                agent.action = "task requeued"
            return f"{who} requeued: {_clip(str(d.get('reason', '')), 160)}"
        if kind == "agent_step":
            action = str(d.get("action", ""))
            if agent:
                agent.turn = int(d.get("iteration") or agent.turn)
                agent.action = action
            turn = f" turn {d['iteration']}" if d.get("iteration") is not None else ""
            return f"{who}{turn}: {_clip(action, 140)}"
        if kind == "code_cell":
            if agent:
                agent.turn = int(d.get("iteration", agent.turn) or 0)
                agent.action = _cell_action(d)
            return None  # agent_step carries the readable line; cells are in the trace
        if kind == "model_call":
            self.usage.calls += 1
            self.usage.cached_calls += 1 if d.get("cached") else 0
            self.usage.input_tokens += int(d.get("input_tokens") or 0)
            self.usage.output_tokens += int(d.get("output_tokens") or 0)
            cost = d.get("cost_usd")
            if cost is None or self.usage.cost_usd is None:
                self.usage.cost_usd = None
            else:
                self.usage.cost_usd += float(cost)
            if agent:
                agent.action = f"{d.get('role', 'model')} call: {int(d.get('output_tokens') or 0)} tokens out"
            return (
                f"{who} {d.get('role', 'model')} call: {int(d.get('input_tokens') or 0):,} in / "
                f"{int(d.get('output_tokens') or 0):,} out tokens, {float(d.get('seconds') or 0):.1f}s"
                + (" (cached)" if d.get("cached") else "")
            )
        if kind == "model_call_failed":
            if agent:
                agent.action = f"{d.get('role', 'model')} call failed"
            return f"{who} {d.get('role', 'model')} call failed: {_clip(str(d.get('error', '')), 160)}"
        if kind == "gist_proposed":
            gist = d.get("gist") or {}
            line = GistLine(gist.get("id"), str(gist.get("kind", "?")), str(gist.get("text", "")))
            if line.gist_id:
                self.gists[line.gist_id] = line
            if agent:
                agent.action = f"proposed {line.kind}"
            return f"{who} proposed [{line.kind.upper()}] {_clip(line.text, 140)}"
        if kind == "gist_admitted":
            line = self._gist(d)
            line.reason = str(d.get("note") or "")
            self.admitted.appendleft(line)
            checks = d.get("checks") or []
            return f"{line.gist_id} admitted [{line.kind.upper()}] {_clip(line.text, 120)}" + (f" (checks: {', '.join(checks)})" if checks else "")
        if kind == "gist_rejected":
            line = self._gist(d)
            line.reason = str(d.get("reason") or "")
            self.rejected.appendleft(line)
            return f"{line.gist_id or 'gist'} rejected: {_clip(line.reason, 160)}"
        if kind == "gist_merged":
            return f"{d.get('gist_id')} merged into {d.get('into')}"
        if kind == "finalize":
            self.answer = None if d.get("answer") is None else str(d.get("answer"))
            if agent:
                agent.action = "finalized"
            return f"{who} finalize: {_clip(str(self.answer), 160)}"
        if kind == "budget_exceeded":
            self.status = "budget"
            return f"budget exceeded: {d.get('limit')} used {d.get('used')} of {d.get('allowed')}"
        if kind == "error":
            if agent:
                agent.action = "error"
            return f"{who} error: {_clip(str(d.get('message', '')), 200)}"
        if kind == "run_finished":
            self.status = str(d.get("status", "finished"))
            if d.get("answer") is not None:
                self.answer = str(d.get("answer"))
            return f"run finished ({self.status}): {_clip(str(self.answer), 160)} | {self.usage_line()}"
        return None

    def task_label(self, task_id: str | None) -> str:
        """A task's goal, short: a split task by the documents it covers (by name when known)."""
        goal = str(self.tasks.get(task_id or "", {}).get("goal", ""))
        return task_label(goal, self.names)

    def _set_task(self, task_id: str | None, state: str) -> None:
        if task_id is None:
            return
        self.tasks.setdefault(task_id, {"goal": "", "deps": [], "state": state})["state"] = state

    def _release_ready(self) -> None:
        done = {t for t, v in self.tasks.items() if v["state"] == "done"}
        for task in self.tasks.values():
            if task["state"] == "pending" and all(dep in done for dep in task["deps"]):
                task["state"] = "ready"

    def _gist(self, d: dict[str, Any]) -> GistLine:
        gist_id = d.get("gist_id")
        known = self.gists.get(str(gist_id)) if gist_id else None
        text = str(d.get("text") or (known.text if known else ""))
        kind = str(d.get("kind") or (known.kind if known else "gist"))
        return GistLine(gist_id, kind, text)

    # ---- derived views ------------------------------------------------------------------

    def queue_counts(self) -> dict[str, int]:
        counts = dict.fromkeys(QUEUE_STATES, 0)
        for task in self.tasks.values():
            counts[task["state"]] = counts.get(task["state"], 0) + 1
        return counts

    def usage_line(self) -> str:
        u, b = self.usage, self.budget
        # Unknown (a call had no price), not zero: "$?" with the word, as every report says it.
        cost = "$? (cost unknown)" if u.cost_usd is None else f"${u.cost_usd:.4f}"
        parts = [
            f"calls {u.calls}" + (f" ({u.cached_calls} cached)" if u.cached_calls else "") + _of(getattr(b, "max_calls", None)),
            f"tokens {u.tokens:,}" + _of(getattr(b, "max_tokens", None), "{:,}"),
            cost + _of(getattr(b, "max_usd", None), "${:.2f}"),
            f"{self.elapsed:.0f}s" + _of(getattr(b, "max_seconds", None), "{:.0f}s"),
        ]
        return ", ".join(parts)


class LiveView:
    """Shows a run as it goes; use as a context manager around the run.

    >>> with LiveView(budget=budget).attach(trace):
    ...     result = await team.run(question, context)
    """

    def __init__(
        self,
        console: Console | None = None,
        *,
        budget: Budget | None = None,
        title: str = "delm-rlm",
        refresh_per_second: float = 4.0,
        names: Sequence[str] | None = None,
    ) -> None:
        self.console = console or Console(stderr=True)
        self.state = LiveState(budget=budget, names=names)
        self.title = title
        self.refresh_per_second = refresh_per_second
        self._lock = threading.Lock()
        self._live: Live | None = None
        self._trace: Trace | None = None
        self._started = time.monotonic()

    @property
    def interactive(self) -> bool:
        return self.console.is_terminal

    def attach(self, trace: Trace) -> LiveView:
        self._trace = trace
        trace.subscribe(self)
        return self

    def __call__(self, event: TraceEvent) -> None:
        with self._lock:
            line = self.state.apply(event)
        if line is not None and not self.interactive:
            self.console.print(f"[{event.t:7.1f}s] {line}", markup=False, highlight=False, soft_wrap=True)

    def __enter__(self) -> LiveView:
        self._started = time.monotonic()
        if self.interactive:
            self._live = Live(
                console=self.console,
                get_renderable=self.render,
                refresh_per_second=self.refresh_per_second,
                transient=False,
            )
            self._live.start()
        return self

    def __exit__(self, *exc: object) -> None:
        if self._trace is not None:
            self._trace.unsubscribe(self)
        if self._live is not None:
            self._live.refresh()
            self._live.stop()
            self._live = None

    def render(self) -> RenderableType:
        with self._lock:
            s = self.state
            if self._live is not None:  # keep the clock moving between events
                s.elapsed = max(s.elapsed, time.monotonic() - self._started)
            header = Text.assemble(
                (f"{self.title} ", "bold"),
                (f"[{s.method or 'run'}] ", "cyan"),
                (f"{s.status}  ", "green" if s.status in ("running", "answered") else "red"),
                _clip(s.question, 200),
            )
            agents = Table(title="agents", title_justify="left", expand=True, show_edge=False)
            for col in ("agent", "task", "turn", "last action"):
                agents.add_column(col, overflow="fold" if col == "last action" else "ellipsis")
            for a in s.agents.values():
                task = f"{a.task}: {_clip(s.task_label(a.task), 48)}" if a.task else "-"
                agents.add_row(a.agent, task, str(a.turn), _clip(a.action, 80))
            counts = s.queue_counts()
            queue = Text("queue  " + "  ".join(f"{k} {v}" for k, v in counts.items()))
            gists = Table(title="shared context (newest first)", title_justify="left", expand=True, show_edge=False)
            gists.add_column("gist", no_wrap=True)
            gists.add_column("status", no_wrap=True)
            gists.add_column("text / verifier's reason", overflow="fold")
            for g in s.admitted:
                gists.add_row(str(g.gist_id), Text("admitted", "green"), f"[{g.kind.upper()}] {_clip(g.text, 120)}")
            for g in s.rejected:
                gists.add_row(str(g.gist_id or "-"), Text("rejected", "red"), f"{_clip(g.text, 60)} <- {_clip(g.reason, 100)}")
            usage = Text("usage  " + s.usage_line())
            parts: list[RenderableType] = [header, agents, queue, gists, usage]
            if s.answer is not None:
                parts.append(Text.assemble(("answer  ", "bold"), _clip(s.answer, 300)))
            return Group(*parts)


class ProgressLines:
    """A trace subscriber for the Python API: `callback(line)` gets one plain line per
    notable event, the lines the live view prints when not on a terminal.

    >>> Team(lm, trace_subscribers=[ProgressLines(print)]).run_sync(question, docs)
    """

    def __init__(self, callback: Callable[[str], None], *, budget: Budget | None = None,
                 names: Sequence[str] | None = None) -> None:
        self.callback = callback
        self.state = LiveState(budget=budget, names=names)
        self._lock = threading.Lock()

    def __call__(self, event: TraceEvent) -> None:
        with self._lock:
            line = self.state.apply(event)
        if line is not None:
            self.callback(f"[{event.t:7.1f}s] {line}")


def _who(event: TraceEvent) -> str:
    return " ".join(p for p in (event.agent, event.task) if p) or "run"


def _cell_action(d: dict[str, Any]) -> str:
    code = str(d.get("code") or "").strip().splitlines()
    first = code[0] if code else ""
    if d.get("timed_out"):
        outcome = "timed out"
    elif d.get("error"):
        outcome = "error: " + str(d["error"]).splitlines()[0]
    else:
        out = str(d.get("stdout") or "").strip().splitlines()
        outcome = "-> " + (out[-1] if out else "(no output)")
    return f"ran {len(code)} line(s) `{_clip(first, 40)}` {outcome}"


def _of(limit: float | None, fmt: str = "{}") -> str:
    return "" if limit is None else " / " + fmt.format(limit)


def _clip(text: str | None, limit: int) -> str:
    text = " ".join(str(text or "").split())
    return text if len(text) <= limit else text[: limit - 3] + "..."
