"""Team: parallel agents that share only verified progress (DeLM), each an RLM (hybrid mode).

One run, in a run directory holding `store.sqlite` (gists, tasks, meta), `trace.jsonl` (the
event stream), `corpus.json` / `corpus.parquet` (the context, so the run can be resumed) and
`run.pid` (which process is working on it):

1. initialize: one task per document or line-aligned chunk (`delm_rlm.chunking`, size set by
   `chunk_chars` / `chunk_tokens`), or a plan the model proposes (`plan="model"`);
2. N agents (asyncio tasks) claim tasks under leases renewed in the background. In
   "hybrid" mode each agent is an RLM loop in its own sandbox, whose REPL also offers
   `gists()`, `unfold()`, `propose()` (answered synchronously with the verifier's verdict)
   and `add_task()`, plus the task's slice as `chunk`, `chunk_doc`, `chunk_start`,
   `chunk_end`. In "delm" mode (the DeLM paper's setting, no code execution) an agent reads
   its chunk in the prompt and answers with JSON gists (one retry on a parse failure),
   verified by quotes and the judge. An answer with no proposal becomes a PARTIAL gist
   checked by the judge against the chunk;
3. when no task is left, one agent finalizes (role "finalizer"): it reads the admitted gists
   and answers (hybrid: aggregating their values with code in its REPL) or adds tasks, up to
   `max_finalize_rounds` rounds.

The budget covers the whole team (one gateway session); BudgetExceeded ends the run with
status "budget" and the best partial answer. `Team.resume(run_dir, lm=...)` continues a
stopped run: admitted gists stay, DONE tasks are not redone, tasks that were claimed go back
to the queue, proposals left unverified are rejected as interrupted.
"""

from __future__ import annotations

import ast
import asyncio
import json
import math
import os
import re
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from datetime import datetime, timezone
from pathlib import Path
from typing import Any, Literal

import pandas as pd
from pydantic import BaseModel, Field, ValidationError

from delm_rlm import prompts
from delm_rlm.chunking import Chunk, SplitBy, split_corpus
from delm_rlm.classify import ClassificationLog
from delm_rlm.state.context import SharedContext
from delm_rlm.corpus import Corpus
from delm_rlm.gists import Gist, GistKind, GistStatus, Provenance
from delm_rlm.llm import LM, Budget, BudgetExceeded, LMError, Usage
from delm_rlm.state.queue import LeaseLost, Task, TaskQueue, TaskState
from delm_rlm.result import Result
from delm_rlm.rlm import RLM, Cell
from delm_rlm.state.sqlite import RunStore, utc_now_iso
from delm_rlm.trace import Trace, observe_model_calls
from delm_rlm.verify import Verdict, Verifier, named_labels

TeamMode = Literal["hybrid", "delm"]
PlanMode = Literal["split", "model"]
SandboxSpec = str | Callable[[], Any]

STORE_FILE = "store.sqlite"
TRACE_FILE = "trace.jsonl"
PID_FILE = "run.pid"
MAX_GISTS_PER_REPLY = 8
FINAL_TASK_ID = "final"


class TeamConfig(BaseModel):
    """Everything that shapes a run; stored in the run's meta so `resume` runs the same way."""

    agents: int = Field(default=4, ge=1, le=256)
    mode: TeamMode = "hybrid"
    plan: PlanMode = "split"
    sandbox: str = "local"
    chunk_chars: int | None = Field(default=20_000, ge=1)
    chunk_tokens: int | None = Field(default=None, ge=1)
    split_by: SplitBy = "auto"
    max_iterations: int = Field(default=8, ge=1)
    cell_timeout: float | None = Field(default=None, gt=0)
    lease_s: float = Field(default=60.0, gt=0)
    max_attempts: int = Field(default=3, ge=1)
    judge: bool = True
    check_timeout: float = Field(default=30.0, gt=0)
    gist_tokens: int = Field(default=800, ge=0)
    final_gist_tokens: int | None = Field(default=None, ge=0)  # None: 4 x gist_tokens
    max_finalize_rounds: int = Field(default=3, ge=1)
    max_plan_tasks: int = Field(default=16, ge=1)
    max_added_tasks: int = Field(default=32, ge=0)
    budget: Budget | None = None


def default_runs_dir() -> Path:
    """$DELM_RLM_RUNS_DIR, else <cache dir>/runs ($DELM_RLM_CACHE_DIR or ~/.cache/delm-rlm)."""
    if os.environ.get("DELM_RLM_RUNS_DIR"):
        return Path(os.environ["DELM_RLM_RUNS_DIR"]).expanduser()
    base = os.environ.get("DELM_RLM_CACHE_DIR") or "~/.cache/delm-rlm"
    return Path(base).expanduser() / "runs"


# ---------------------------------------------------------------------------------------
# Per-run and per-agent state
# ---------------------------------------------------------------------------------------


@dataclass
class _AgentState:
    """What the REPL tools of one agent need to know about its current task."""

    agent_id: str
    task: Task | None = None
    chunk: Chunk | None = None
    finalizing: bool = False
    last_round: bool = False
    verdicts: list[Verdict] = field(default_factory=list)
    added_tasks: list[str] = field(default_factory=list)
    read_ids: list[str] = field(default_factory=list)
    cells: list[Cell] = field(default_factory=list)  # the current task's cells (hybrid)


@dataclass
class _Run:
    run_dir: Path
    store: RunStore
    corpus: Corpus
    docs: list[str]
    question: str
    description: str
    trace: Trace
    queue: TaskQueue
    context: SharedContext
    verifier: Verifier
    lm: LM
    chunks: dict[str, Chunk]
    done: asyncio.Event = field(default_factory=asyncio.Event)
    finalize_lock: asyncio.Lock = field(default_factory=asyncio.Lock)
    answer: str | None = None
    answer_gist_ids: list[str] = field(default_factory=list)
    status: str = "answered"
    error: str | None = None
    exceeded: BudgetExceeded | None = None
    finalize_round: int = 0
    added_tasks: int = 0
    agent_errors: list[str] = field(default_factory=list)
    # Usage of the run's earlier sessions (a resumed run), read back from its trace.
    prior_usage: Usage = field(default_factory=Usage)
    prior_usage_by_role: dict[str, Usage] = field(default_factory=dict)
    # The agents' classify() results, replayed by the verifier when it re-runs their code.
    classifications: ClassificationLog = field(default_factory=ClassificationLog)


class _DelmGist(BaseModel):
    kind: str = "partial"
    text: str
    value: Any = None
    quotes: list[str] = Field(default_factory=list)


class _DelmReply(BaseModel):
    answer: str | int | float | bool | None = None
    gists: list[_DelmGist] = Field(default_factory=list)


class _DelmFinal(BaseModel):
    answer: str | int | float | bool | None = None
    tasks: list[str] = Field(default_factory=list)


# ---------------------------------------------------------------------------------------
# The team
# ---------------------------------------------------------------------------------------


class Team:
    """A team of agents answering one question over a corpus (see the module docstring).

    sandbox: "local" (isolated Jupyter kernels), "e2b", or a zero-argument factory returning
    a `sandbox.Sandbox` (used for the agents and for the verifier's check sandbox).
    chunk_chars / chunk_tokens: the split size (tokens win when both are given).
    """

    def __init__(
        self,
        lm: LM,
        *,
        agents: int = 4,
        sandbox: SandboxSpec = "local",
        chunk_chars: int | None = 20_000,
        chunk_tokens: int | None = None,
        split_by: SplitBy = "auto",
        max_iterations: int = 8,
        budget: Budget | None = None,
        run_dir: str | Path | None = None,
        mode: TeamMode = "hybrid",
        plan: PlanMode = "split",
        lease_s: float = 60.0,
        max_attempts: int = 3,
        judge: bool = True,
        check_timeout: float = 30.0,
        cell_timeout: float | None = None,
        gist_tokens: int = 800,
        final_gist_tokens: int | None = None,
        max_finalize_rounds: int = 3,
        max_plan_tasks: int = 16,
        max_added_tasks: int = 32,
        trace_subscribers: list[Callable[[Any], None]] | None = None,
    ) -> None:
        if not isinstance(lm, LM):
            raise TypeError(f"lm must be a delm_rlm.LM (or ScriptedLM); got {type(lm).__name__}")
        if isinstance(sandbox, str) and sandbox not in ("local", "e2b"):
            raise ValueError(f"sandbox must be 'local', 'e2b' or a factory; got {sandbox!r}")
        if not isinstance(sandbox, str) and not callable(sandbox):
            raise TypeError("sandbox must be 'local', 'e2b' or a zero-argument factory returning a Sandbox")
        if chunk_chars is None and chunk_tokens is None:
            raise ValueError("give a chunk size: chunk_chars=... or chunk_tokens=...")
        try:
            self.config = TeamConfig(
                agents=agents, mode=mode, plan=plan,
                sandbox=sandbox if isinstance(sandbox, str) else "custom",
                chunk_chars=chunk_chars, chunk_tokens=chunk_tokens, split_by=split_by,
                max_iterations=max_iterations, cell_timeout=cell_timeout, lease_s=lease_s,
                max_attempts=max_attempts, judge=judge, check_timeout=check_timeout,
                gist_tokens=gist_tokens, final_gist_tokens=final_gist_tokens,
                max_finalize_rounds=max_finalize_rounds,
                max_plan_tasks=max_plan_tasks, max_added_tasks=max_added_tasks, budget=budget,
            )
        except ValidationError as exc:
            raise ValueError(f"bad Team settings: {exc}") from exc
        self.lm = lm
        self.sandbox = sandbox
        self.run_dir = Path(run_dir).expanduser() if run_dir is not None else None
        self.trace_subscribers = list(trace_subscribers or [])
        # The running agents by id (asyncio tasks): for live views and fault tests.
        self.workers: dict[str, asyncio.Task[None]] = {}
        self.verifier: Verifier | None = None
        self._run: _Run | None = None

    # -- public entry points ------------------------------------------------------------

    async def run(self, question: str, context: Any) -> Result:
        """Answer `question` over `context` (str, list of str, DataFrame, Corpus or Path)."""
        if not isinstance(question, str) or not question.strip():
            raise ValueError("question must be a non-empty str")
        corpus = Corpus.coerce(context)
        run_dir = self.run_dir or default_runs_dir() / _new_run_id()
        run_dir.mkdir(parents=True, exist_ok=True)
        store_path = run_dir / STORE_FILE
        if store_path.exists() and _stored_question(store_path) is not None:
            raise ValueError(
                f"{run_dir} already holds a run; continue it with Team.resume({str(run_dir)!r}, lm=...) "
                "or give a new run_dir"
            )
        _save_corpus(run_dir, corpus)
        store = RunStore(store_path)
        store.set_meta(
            question=question.strip(),
            method=self.config.mode,
            config=self.config.model_dump(mode="json"),
            status="running",
        )
        return await self._execute(run_dir, store, corpus, question.strip(), fresh=True)

    def run_sync(self, question: str, context: Any) -> Result:
        """`run` for code without an event loop."""
        try:
            asyncio.get_running_loop()
        except RuntimeError:
            return asyncio.run(self.run(question, context))
        raise RuntimeError("run_sync() was called inside a running event loop; use `await team.run(...)`")

    @classmethod
    async def resume(
        cls, run: str | Path, *, lm: LM, sandbox: SandboxSpec | None = None, **overrides: Any
    ) -> Result:
        """Continue a stopped run from its directory (or its store file). Settings come from
        the run's meta; `overrides` (e.g. agents=2, budget=...) replace some of them. A run
        that already answered returns its stored answer without running anything."""
        path = Path(run).expanduser()
        store_path = path / STORE_FILE if path.is_dir() else path
        if not store_path.exists():
            raise FileNotFoundError(
                f"no run store at {store_path}: give the run directory (holding {STORE_FILE}) "
                "or the store file itself"
            )
        run_dir = store_path.parent
        store = RunStore(store_path)
        meta = store.meta()
        if meta.question is None:
            raise ValueError(f"{store_path} holds no started run (no question in its meta)")
        if meta.status == "answered":
            return Result(
                answer=meta.answer, status="answered", store_path=str(store_path),
                trace_path=str(run_dir / TRACE_FILE), method=meta.method or "hybrid",
                gist_ids=list(getattr(meta, "gist_ids", None) or []), finished_by="state",
            )
        _check_not_running(run_dir)
        settings = dict(meta.config)
        settings.update(overrides)
        sandbox_spec = sandbox if sandbox is not None else settings.pop("sandbox", "local")
        settings.pop("sandbox", None)
        if sandbox_spec == "custom":
            raise ValueError("this run used a custom sandbox factory: pass sandbox=<the factory> to resume")
        budget = settings.pop("budget", None)
        team = cls(
            lm, sandbox=sandbox_spec, run_dir=run_dir,
            budget=Budget.model_validate(budget) if isinstance(budget, dict) else budget,
            **settings,
        )
        corpus = _load_corpus(run_dir)
        store.set_meta(status="running", config=team.config.model_dump(mode="json"))
        return await team._execute(run_dir, store, corpus, meta.question, fresh=False)

    # -- one run ------------------------------------------------------------------------

    async def _execute(self, run_dir: Path, store: RunStore, corpus: Corpus, question: str, *, fresh: bool) -> Result:
        cfg = self.config
        started = time.monotonic()
        (run_dir / PID_FILE).write_text(str(os.getpid()))
        trace_path = run_dir / TRACE_FILE
        earlier = Trace.load(trace_path) if not fresh and trace_path.exists() else []
        trace = Trace(trace_path)
        for subscriber in self.trace_subscribers:
            trace.subscribe(subscriber)
        run_lm = self.lm.session(cfg.budget)
        observe_model_calls(run_lm, trace)
        docs = corpus.docs
        context = SharedContext(store, docs)
        queue = TaskQueue(store, lease_s=cfg.lease_s, max_attempts=cfg.max_attempts, trace=trace)
        classifications = ClassificationLog()
        verifier = Verifier(
            context, docs, lm=run_lm, replay_tools={"classify": classifications.replay},
            sandbox_factory=self._sandbox_factory() if cfg.mode == "hybrid" else None,
            corpus_value=corpus.value, trace=trace, judge=cfg.judge,
            check_timeout=cfg.check_timeout, require_check_for_values=cfg.mode == "hybrid",
            # The question's labels, else the ones the corpus's opening names (OOLONG windows
            # list their categories in the first line, not in every question).
            label_hint=named_labels(question) or named_labels(docs[0][:4000] if docs else ""),
        )
        self.verifier = verifier
        description = prompts.describe_context(corpus.value)
        run = _Run(
            run_dir=run_dir, store=store, corpus=corpus, docs=docs, question=question,
            description=description, trace=trace, queue=queue, context=context,
            verifier=verifier, lm=run_lm, chunks={}, classifications=classifications,
        )
        run.prior_usage, run.prior_usage_by_role = usage_from_trace(earlier)
        self._run = run
        trace.emit(
            "run_started", question=question, method=cfg.mode, corpus=description,
            config={**cfg.model_dump(mode="json"), "resumed": not fresh, "run_dir": str(run_dir)},
        )
        try:
            try:
                if fresh:
                    await self._initialize(run)
                else:
                    self._recover(run)
                run.chunks = {k: Chunk.model_validate(v) for k, v in (store.get_meta("chunks") or {}).items()}
                run.finalize_round = int(store.get_meta("finalize_rounds") or 0)
                run.added_tasks = int(store.get_meta("added_tasks") or 0)
                await self._run_agents(run)
            except BudgetExceeded as exc:
                run.exceeded = exc
            except Exception as exc:
                run.status, run.error = "error", f"{type(exc).__name__}: {exc}"
                trace.emit("error", message=run.error)
            finally:
                try:
                    await verifier.close()
                except Exception as exc:  # closing must not hide the run's outcome
                    trace.emit("error", message=f"verifier sandbox close failed: {exc}")
            return self._finish(run, started)
        finally:
            trace.close()
            try:
                (run_dir / PID_FILE).unlink()
            except FileNotFoundError:
                pass

    def _finish(self, run: _Run, started: float) -> Result:
        if run.exceeded is not None:
            exc = run.exceeded
            run.status = "budget"
            run.error = f"budget exceeded: {exc.limit} used {exc.used:g} of {exc.allowed:g}"
            run.trace.emit("budget_exceeded", limit=exc.limit, used=exc.used, allowed=exc.allowed)
            if run.answer is None:
                run.answer = exc.partial_answer or self._partial_answer(run)
        elif run.answer is None and run.status == "answered":
            run.status = "error"
            run.error = run.error or "; ".join(run.agent_errors[-3:]) or "the team stopped without an answer"
        for gist in run.store.list_gists(status=GistStatus.PENDING):
            # Proposals cut off by the end of the run (budget, an agent stopped mid-check).
            run.context.reject(gist.id, "the run ended before this proposal was verified")
        stats = run.verifier.stats
        # The whole run's usage: earlier sessions (before a resume) plus this one.
        usage = run.prior_usage + run.lm.usage.total
        by_role = dict(run.prior_usage_by_role)
        for role, used in run.lm.usage.by_role.items():
            by_role[role] = by_role.get(role, Usage()) + used
        run.store.set_meta(
            status=run.status, answer=run.answer, finished_at=utc_now_iso(),
            gist_ids=run.answer_gist_ids, verification=stats.model_dump(mode="json"),
            error=run.error,
        )
        run.trace.emit(
            "run_finished", status=run.status, answer=run.answer, usage=usage,
            verification=stats, gist_ids=run.answer_gist_ids,
        )
        return Result(
            answer=run.answer,
            status=run.status,  # type: ignore[arg-type]
            error=run.error,
            usage=usage,
            usage_by_role=by_role,
            gist_ids=run.answer_gist_ids,
            store_path=str(run.store.path),
            trace_path=str(run.trace.path),
            trace=list(run.trace.events),
            seconds=round(time.monotonic() - started, 3),
            method=self.config.mode,
            finished_by="state" if run.status == "answered" else ("partial" if run.answer else None),
            iterations=run.finalize_round,
        )

    @staticmethod
    def _partial_answer(run: _Run) -> str | None:
        view = run.context.prompt_view(2000)
        return None if view.startswith("(no verified") else f"Verified so far:\n{view}"

    # -- initialization and recovery ----------------------------------------------------

    async def _initialize(self, run: _Run) -> None:
        cfg = self.config
        goals: list[str] = []
        if cfg.plan == "model":
            goals = await self._model_plan(run)
        chunks: dict[str, dict[str, Any]] = {}
        if goals:
            for goal in goals:
                run.queue.add(goal, created_by="planner")
        else:
            if cfg.chunk_tokens is not None:
                split = split_corpus(run.docs, size=cfg.chunk_tokens, unit="tokens",
                                     by=cfg.split_by, count_tokens=run.lm.count_tokens)
            else:
                split = split_corpus(run.docs, size=cfg.chunk_chars or 20_000, by=cfg.split_by)
            for chunk in split:
                goal = (
                    f"Work on {chunk.describe(len(split))} for the team question; "
                    "propose your chunk's result as a PARTIAL gist."
                )
                task = run.queue.add(goal, created_by="split")
                chunks[task.id] = chunk.model_dump()
        run.store.set_meta(chunks=chunks, finalize_rounds=0, added_tasks=0)

    async def _model_plan(self, run: _Run) -> list[str]:
        cfg = self.config
        messages = [
            {"role": "system", "content": prompts.TEAM_PLAN_SYSTEM.format(max_tasks=cfg.max_plan_tasks)},
            {"role": "user", "content": prompts.TEAM_PLAN_USER.format(question=run.question, description=run.description)},
        ]
        completion = await run.lm.complete(messages, role="root", tags={"agent": "planner"})
        goals = []
        for line in completion.text.splitlines():
            m = re.match(r"^\s*(?:\d+[.)]|[-*])\s+(.+?)\s*$", line)
            if m and m.group(1).strip():
                goals.append(m.group(1).strip()[:1000])
        goals = goals[: cfg.max_plan_tasks]
        if not goals:
            run.trace.emit("error", agent="planner",
                           message="the model's plan had no numbered subtasks; splitting the corpus instead")
        return goals

    def _recover(self, run: _Run) -> None:
        """After a stop: unverified proposals are rejected as interrupted; tasks the stopped
        process held go back to the queue (its leases are void: that process is gone)."""
        for gist in run.store.list_gists(status=GistStatus.PENDING):
            run.context.reject(gist.id, "the run stopped before this proposal was verified")
        # Reap with a clock past every lease the stopped process could have issued.
        horizon = time.time() + self.config.lease_s + 1.0
        stale = TaskQueue(run.store, lease_s=self.config.lease_s, max_attempts=self.config.max_attempts,
                          trace=run.trace, clock=lambda: horizon)
        stale.reap()

    # -- agents -------------------------------------------------------------------------

    async def _run_agents(self, run: _Run) -> None:
        self.workers = {
            f"a{i}": asyncio.create_task(self._agent(run, f"a{i}"), name=f"delm-agent-a{i}")
            for i in range(1, self.config.agents + 1)
        }
        done_wait = asyncio.create_task(run.done.wait())
        pending: set[asyncio.Task[Any]] = set(self.workers.values())
        try:
            while pending and not run.done.is_set():
                finished, pending = await asyncio.wait(
                    pending | {done_wait}, return_when=asyncio.FIRST_COMPLETED
                )
                pending.discard(done_wait)
                for t in finished:
                    if t is done_wait or t.cancelled():
                        continue
                    exc = t.exception()
                    if isinstance(exc, BudgetExceeded):
                        run.exceeded = run.exceeded or exc
                        run.done.set()
                    elif exc is not None:
                        run.agent_errors.append(f"{t.get_name()}: {type(exc).__name__}: {exc}")
                        run.trace.emit("error", agent=t.get_name().removeprefix("delm-agent-"),
                                       message=f"agent stopped: {type(exc).__name__}: {exc}")
        finally:
            done_wait.cancel()
            for t in self.workers.values():
                t.cancel()
            await asyncio.gather(*self.workers.values(), done_wait, return_exceptions=True)

    async def _agent(self, run: _Run, agent_id: str) -> None:
        state = _AgentState(agent_id)
        sb = None
        try:
            if self.config.mode == "hybrid":
                sb = self._sandbox_factory()()
                await sb.start()
                await sb.load_context(run.corpus.value)
                self._register_tools(run, sb, state)
            while not run.done.is_set():
                task = run.queue.claim(agent_id)
                if task is None:
                    if run.queue.drained() and not run.finalize_lock.locked():
                        await self._finalize(run, state, sb)
                        continue
                    await asyncio.sleep(self._idle_wait(run))
                    continue
                await self._work(run, state, task, sb)
        finally:
            if sb is not None:
                try:
                    await sb.close()
                except Exception:  # a dying kernel must not mask why the agent stopped
                    pass

    def _idle_wait(self, run: _Run) -> float:
        expiry = run.queue.next_lease_expiry()
        if expiry is None:
            return 0.05
        return min(0.25, max(0.02, expiry - time.time()))

    async def _renew_lease(self, run: _Run, task: Task, agent_id: str) -> None:
        period = max(0.05, self.config.lease_s / 3)
        while True:
            await asyncio.sleep(period)
            if not run.queue.renew(task.id, agent_id):
                run.trace.emit("agent_step", agent=agent_id, task=task.id,
                               action="lease lost: another agent may redo this task")
                return

    async def _work(self, run: _Run, state: _AgentState, task: Task, sb: Any) -> None:
        state.task = task
        state.chunk = run.chunks.get(task.id)
        state.verdicts = []
        state.cells = []
        state.finalizing = False
        renewer = asyncio.create_task(self._renew_lease(run, task, state.agent_id))
        try:
            if self.config.mode == "hybrid":
                answer, failure = await self._work_hybrid(run, state, task, sb)
            else:
                answer, failure = await self._work_delm(run, state, task)
            admitted = [v.admitted_id for v in state.verdicts if v.ok and v.admitted_id]
            if not state.verdicts and answer is not None and failure is None:
                verdict = await self._propose_answer(run, state, task, answer)
                if verdict.ok and verdict.admitted_id:
                    admitted.append(verdict.admitted_id)
                else:
                    failure = verdict.reason
            try:
                if admitted:
                    run.queue.complete(task.id, state.agent_id, list(dict.fromkeys(admitted)))
                else:
                    rejected = [v.reason for v in state.verdicts if not v.ok]
                    reason = failure or (rejected[-1] if rejected else "no result was proposed")
                    run.queue.reject(task.id, state.agent_id, reason)
            except LeaseLost as exc:
                run.trace.emit("agent_step", agent=state.agent_id, task=task.id, action=str(exc))
        finally:
            renewer.cancel()
            state.task = None

    def _chunk_text(self, run: _Run, chunk: Chunk | None) -> str:
        return chunk.text(run.docs) if chunk is not None else run.corpus.value if isinstance(run.corpus.value, str) else "\n\n".join(run.docs)

    def _chunk_desc(self, run: _Run, chunk: Chunk | None) -> str:
        if chunk is None:
            return "the whole corpus (chunk == context)"
        return chunk.describe(len(run.chunks) or 1)

    async def _work_hybrid(self, run: _Run, state: _AgentState, task: Task, sb: Any) -> tuple[str | None, str | None]:
        chunk = state.chunk
        if chunk is not None:
            setup = (f"chunk_doc, chunk_start, chunk_end = {chunk.doc}, {chunk.start}, {chunk.end}\n"
                     "chunk = docs[chunk_doc][chunk_start:chunk_end]")
        else:
            setup = "chunk_doc = chunk_start = chunk_end = None\nchunk = context"
        setup += f"\ntask_id = {task.id!r}"
        result = await sb.execute(setup, timeout=60)
        if not result.ok:
            return None, f"could not set the task's variables in the REPL: {result.error}"
        sb = _TaskSandbox(sb, setup)
        retry = prompts.TEAM_RETRY.format(reason=task.last_error) if task.last_error else ""
        message = prompts.TEAM_TASK.format(
            agent=state.agent_id, task_id=task.id, goal=task.goal, question=run.question,
            chunk_desc=self._chunk_desc(run, chunk),
            chunk_lines=prompts.sample_lines(self._chunk_text(run, chunk)),
            gists=run.context.prompt_view(self.config.gist_tokens), retry=retry,
        )
        answer_verdicts: list[Verdict] = []

        async def accept(answer: str, cells: Sequence[Cell]) -> str | None:
            # An answer set without propose() is verified before the agent stops, so a
            # rejection reaches it while its REPL still holds its work.
            if len(state.verdicts) > len(answer_verdicts):
                return None  # it proposed: those verdicts decide the task
            state.cells = list(cells)
            verdict = await self._propose_answer(run, state, task, answer)
            answer_verdicts.append(verdict)
            state.verdicts.append(verdict)
            return None if verdict.ok else verdict.reason

        outcome = await self._rlm(run).loop(
            sb, question=message, context_description=run.description,
            extra_tools_doc=prompts.TEAM_TOOLS_DOC, lm=run.lm, agent_id=state.agent_id,
            task_id=task.id, role="root", trace=run.trace, accept=accept,
        )
        if outcome.status == "budget" and outcome.exceeded is not None:
            raise outcome.exceeded
        if outcome.status == "error":
            return outcome.answer, outcome.error or "the agent stopped with an error"
        state.cells = outcome.cells
        return outcome.answer, None

    def _rlm(self, run: _Run) -> RLM:
        return RLM(
            run.lm, sandbox=self._sandbox_factory(), max_iterations=self.config.max_iterations,
            trace=run.trace, cell_timeout=self.config.cell_timeout, classifications=run.classifications,
        )

    async def _propose_answer(self, run: _Run, state: _AgentState, task: Task, answer: str) -> Verdict:
        """An answer with no proposal becomes a PARTIAL gist. When the agent computed it in
        code that needs no team tools, that code is the check: the verifier replays it in a
        fresh REPL and the answer must come out again. Otherwise the gist is judged against
        the chunk (small models often set the answer and skip propose(); a judge cannot
        confirm a computed count from quotes, a replay can)."""
        text = " ".join(str(answer).split())
        value: Any = _answer_value(text)
        # A multi-line answer would print over several lines and never match its one-line value.
        check = replay_check(state.cells) if "\n" not in str(answer).strip() else None
        shown = text if len(text) <= 240 else text[:237] + "..."
        gist = Gist(
            kind=GistKind.PARTIAL,
            text=f"{task.id}: {shown}",
            summary=text[:4000] if len(text) > 240 else None,
            value=value,
            check=check,
            provenance=self._provenance(run, state),
        )
        chunk = state.chunk
        check_vars = (
            {"chunk_doc": chunk.doc, "chunk_start": chunk.start, "chunk_end": chunk.end}
            if check is not None and chunk is not None else None
        )
        return await run.verifier.verify(
            gist, source=self._chunk_text(run, chunk), check_vars=check_vars, require_check=False,
            reject_empty=self._first_attempt(state),
        )

    @staticmethod
    def _first_attempt(state: _AgentState) -> bool:
        """An empty partial gets one second look: rejected (with a hint) on the task's first
        attempt, accepted on a retry, so a chunk that truly holds nothing costs one retry."""
        return state.task is not None and state.task.attempts <= 1

    def _provenance(self, run: _Run, state: _AgentState) -> Provenance:
        return Provenance(
            task_id=state.task.id if state.task else FINAL_TASK_ID,
            agent_id=state.agent_id,
            model=run.lm.model_for("finalizer" if state.finalizing else "root"),
        )

    # -- REPL tools ---------------------------------------------------------------------

    def _register_tools(self, run: _Run, sb: Any, state: _AgentState) -> None:
        def gists(kind: str | None = None) -> list[dict[str, Any]]:
            try:
                found = run.context.admitted(kinds=kind)
            except ValidationError as exc:
                raise ValueError(f"unknown kind {kind!r}: use partial, fact, failure, constraint, evidence or question") from exc
            state.read_ids.extend(g.id for g in found if g.id)
            return [
                {"id": g.id, "kind": g.kind.value, "text": g.text, "value": g.value, "support": g.support}
                for g in found
            ]

        def unfold(id: str, level: int = 1) -> str:  # noqa: A002 - the REPL name agents use
            state.read_ids.append(str(id))
            return run.context.unfold(str(id), int(level))

        async def propose(
            kind: str, text: str, value: Any = None, check: str | None = None,
            evidence: Any = None, summary: str | None = None, tolerance: float = 0.0,
        ) -> dict[str, Any]:
            if state.task is None and not state.finalizing:
                return {"status": "rejected", "reason": "no task is claimed: nothing to propose for"}
            try:
                gist = Gist(
                    kind=kind,
                    text=self._tag_text(state, str(text), kind),
                    summary=summary,
                    value=value,
                    check=check,
                    tolerance=tolerance,
                    evidence=self._evidence(run, state.chunk, evidence),
                    provenance=self._provenance(run, state),
                )
            except (ValidationError, ValueError, TypeError) as exc:
                reason = _validation_message(exc)
                run.trace.emit("gist_rejected", agent=state.agent_id,
                               task=state.task.id if state.task else FINAL_TASK_ID,
                               gist_id=None, reason=f"bad proposal: {reason}", failure_gist_id=None)
                return {"status": "rejected", "reason": f"bad proposal: {reason}"}
            chunk = state.chunk
            check_vars = (
                {"chunk_doc": chunk.doc, "chunk_start": chunk.start, "chunk_end": chunk.end}
                if chunk is not None else {}
            )
            verdict = await run.verifier.verify(
                gist, source=self._chunk_text(run, chunk) if chunk is not None else None,
                check_vars=check_vars, reject_empty=self._first_attempt(state),
            )
            state.verdicts.append(verdict)
            return verdict.for_agent()

        def add_task(goal: str, deps: list[str] | None = None) -> str:
            if state.last_round:
                raise RuntimeError("this is the last round: no more tasks can be added; answer now")
            if run.added_tasks >= self.config.max_added_tasks:
                raise RuntimeError(
                    f"the team already added {run.added_tasks} tasks (the limit); answer with what is verified"
                )
            task = run.queue.add(str(goal), deps=list(deps or []), created_by=state.agent_id)
            run.added_tasks += 1
            run.store.set_meta(added_tasks=run.added_tasks)
            state.added_tasks.append(task.id)
            return task.id

        sb.register("gists", gists)
        sb.register("unfold", unfold)
        sb.register("propose", propose)
        sb.register("add_task", add_task)

    @staticmethod
    def _tag_text(state: _AgentState, text: str, kind: Any) -> str:
        """PARTIAL gists are per task: the task id in the text keeps chunk 3's count from
        merging with chunk 4's equal count."""
        text = " ".join(text.split())
        is_partial = str(getattr(kind, "value", kind)).strip().lower() == "partial"
        if is_partial and state.task is not None and not text.startswith(f"{state.task.id}:"):
            text = f"{state.task.id}: {text}"
        return text

    @staticmethod
    def _evidence(run: _Run, chunk: Chunk | None, evidence: Any) -> list[Any]:
        """Accept evidence as dicts ({"doc", "start", "end", "quote"} or {"code", "output"})
        or bare quote strings, which are located in the task's chunk (or the corpus): an
        agent need not compute offsets, and a string not found there keeps the chunk's span
        so the verifier rejects it with the reason."""
        if evidence is None:
            return []
        if isinstance(evidence, (str, dict)):
            evidence = [evidence]
        if not isinstance(evidence, list):
            raise TypeError("evidence must be a list of quotes (str) or dicts")
        out: list[Any] = []
        for item in evidence:
            if isinstance(item, str):
                out.append(_locate_quote(run.docs, chunk, item))
            elif isinstance(item, dict):
                if "quote" in item and ("start" not in item or "end" not in item):
                    located = _locate_quote(run.docs, chunk, str(item["quote"]), item.get("doc"))
                    out.append(located)
                else:
                    out.append(item if "type" in item else {**item, "type": "code" if "code" in item else "quote"})
            else:
                raise TypeError(f"an evidence item must be a quote (str) or a dict, not {type(item).__name__}")
        return out

    # -- delm mode ----------------------------------------------------------------------

    async def _ask_json(self, run: _Run, messages: list[dict[str, str]], model: type[BaseModel],
                        *, role: str, tags: dict[str, Any], example: str) -> tuple[BaseModel | None, str | None]:
        """One call, strictly parsed; one retry with the parse error; (parsed, error)."""
        completion = await run.lm.complete(messages, role=role, tags=tags)
        parsed, error = _parse_json_reply(completion.text, model)
        if parsed is not None:
            return parsed, None
        retry = messages + [
            {"role": "assistant", "content": completion.text},
            {"role": "user", "content": prompts.DELM_BAD_JSON.format(error=error, example=example)},
        ]
        completion = await run.lm.complete(retry, role=role, tags={**tags, "retry": True})
        return _parse_json_reply(completion.text, model)

    async def _work_delm(self, run: _Run, state: _AgentState, task: Task) -> tuple[str | None, str | None]:
        chunk = state.chunk
        text = self._chunk_text(run, chunk)
        limit = (self.config.chunk_chars or (self.config.chunk_tokens or 5000) * 4) * 2
        text = prompts.truncate_middle(text, limit)
        retry = prompts.TEAM_RETRY.format(reason=task.last_error) if task.last_error else ""
        messages = [
            {"role": "system", "content": prompts.DELM_AGENT_SYSTEM},
            {"role": "user", "content": prompts.DELM_AGENT_USER.format(
                question=run.question, task_id=task.id, goal=task.goal,
                gists=run.context.prompt_view(self.config.gist_tokens), retry=retry,
                chunk_desc=self._chunk_desc(run, chunk), chunk=text)},
        ]
        run.trace.emit("agent_step", agent=state.agent_id, task=task.id, action="reading its chunk")
        try:
            parsed, error = await self._ask_json(
                run, messages, _DelmReply, role="root", tags={"agent": state.agent_id, "task": task.id},
                example='{"answer": "2", "gists": [{"kind": "partial", "text": "...", "value": 2, "quotes": ["..."]}]}',
            )
        except LMError as exc:  # as in hybrid mode: the task is retried, the agent goes on
            run.trace.emit("error", agent=state.agent_id, task=task.id, message=f"model call failed: {exc}")
            return None, f"model call failed: {exc}"
        if parsed is None:
            return None, f"the reply was not valid JSON: {error}"
        assert isinstance(parsed, _DelmReply)
        for item in parsed.gists[:MAX_GISTS_PER_REPLY]:
            gist_text = self._tag_text(state, item.text, item.kind)
            if item.value is not None:
                # The prompt view shows text only; the finalizer must see the value.
                gist_text = f"{gist_text} (value {json.dumps(item.value)[:40]})"
            try:
                gist = Gist(
                    kind=item.kind, text=gist_text, value=item.value,
                    evidence=[_locate_quote(run.docs, chunk, q) for q in item.quotes if q.strip()],
                    provenance=self._provenance(run, state),
                )
            except (ValidationError, ValueError) as exc:
                state.verdicts.append(Verdict(status="rejected", reason=f"bad gist: {_validation_message(exc)}"))
                continue
            verdict = await run.verifier.verify(gist, source=self._chunk_text(run, chunk), require_check=False)
            state.verdicts.append(verdict)
        answer = None if parsed.answer is None else str(parsed.answer)
        return answer, None

    # -- finalizing ---------------------------------------------------------------------

    async def _finalize(self, run: _Run, state: _AgentState, sb: Any) -> None:
        async with run.finalize_lock:
            if run.done.is_set() or not run.queue.drained():
                return
            cfg = self.config
            run.finalize_round += 1
            run.store.set_meta(finalize_rounds=run.finalize_round)
            last = run.finalize_round >= cfg.max_finalize_rounds or run.added_tasks >= cfg.max_added_tasks
            state.finalizing, state.last_round = True, last
            state.added_tasks, state.read_ids = [], []
            run.trace.emit("agent_step", agent=state.agent_id, task=FINAL_TASK_ID,
                           action=f"finalizing (round {run.finalize_round} of {cfg.max_finalize_rounds})")
            failed = [t for t in run.queue.all() if t.state == TaskState.FAILED]
            failed_note = ""
            if failed:
                failed_note = "Failed tasks: " + "; ".join(f"{t.id} ({(t.last_error or '')[:120]})" for t in failed[:8]) + "\n"
            try:
                if cfg.mode == "hybrid":
                    answer, added = await self._finalize_hybrid(run, state, sb, failed_note, last)
                else:
                    answer, added = await self._finalize_delm(run, state, failed_note, last)
            finally:
                state.finalizing = False
            if added and not last:
                run.trace.emit("agent_step", agent=state.agent_id, task=FINAL_TASK_ID,
                               action=f"added {len(added)} task(s): {', '.join(added)}")
                return
            if answer is None:
                run.status = "error"
                run.error = run.error or "the finalizer gave no answer"
                run.done.set()
                return
            ids = self._answer_gist_ids(run, state)
            run.answer, run.answer_gist_ids = answer, ids
            run.trace.emit("finalize", agent=state.agent_id, task=FINAL_TASK_ID, answer=answer, gist_ids=ids)
            run.done.set()

    def _answer_gist_ids(self, run: _Run, state: _AgentState) -> list[str]:
        """The gists the answer rests on: those the finalizer read (not FAILURE records);
        when it read none through the tools, every admitted PARTIAL and FACT it was shown."""
        admitted = {g.id: g for g in run.context.admitted()}
        read = [i for i in dict.fromkeys(state.read_ids) if i in admitted and admitted[i].kind != GistKind.FAILURE]
        if read:
            return read
        return [g.id for g in admitted.values() if g.kind in (GistKind.PARTIAL, GistKind.FACT) and g.id]

    async def _finalize_hybrid(self, run: _Run, state: _AgentState, sb: Any, failed_note: str, last: bool) -> tuple[str | None, list[str]]:
        cfg = self.config
        setup = "chunk_doc = chunk_start = chunk_end = None\nchunk = context\ntask_id = None\n" + prompts.ADD_UP_CODE
        await sb.execute(setup, timeout=60)
        message = prompts.TEAM_FINALIZE.format(
            round=run.finalize_round, rounds=cfg.max_finalize_rounds, question=run.question,
            gists=run.context.prompt_view(self._final_tokens()), failed=failed_note,
            more=prompts.TEAM_FINALIZE_LAST if last else prompts.TEAM_FINALIZE_MORE,
        )
        outcome = await self._rlm(run).loop(
            _TaskSandbox(sb, setup), question=message, context_description=run.description,
            extra_tools_doc=prompts.TEAM_TOOLS_DOC, lm=run.lm, agent_id=state.agent_id,
            task_id=FINAL_TASK_ID, role="finalizer", trace=run.trace,
        )
        if outcome.status == "budget" and outcome.exceeded is not None:
            raise outcome.exceeded
        if outcome.status == "error" and not state.added_tasks:
            run.error = outcome.error
        return outcome.answer, list(state.added_tasks)

    async def _finalize_delm(self, run: _Run, state: _AgentState, failed_note: str, last: bool) -> tuple[str | None, list[str]]:
        cfg = self.config
        for g in run.context.admitted():
            state.read_ids.append(g.id)
        messages = [
            {"role": "system", "content": prompts.DELM_FINAL_SYSTEM},
            {"role": "user", "content": prompts.DELM_FINAL_USER.format(
                question=run.question, round=run.finalize_round, rounds=cfg.max_finalize_rounds,
                gists=run.context.prompt_view(self._final_tokens()), failed=failed_note,
                last=prompts.TEAM_FINALIZE_LAST + "\n" if last else "")},
        ]
        run.trace.emit("agent_step", agent=state.agent_id, task=FINAL_TASK_ID, action="combining the verified gists")
        parsed, error = await self._ask_json(
            run, messages, _DelmFinal, role="finalizer",
            tags={"agent": state.agent_id, "task": FINAL_TASK_ID}, example='{"answer": "3"}',
        )
        if parsed is None:
            run.error = f"the finalizer's reply was not valid JSON: {error}"
            return None, []
        assert isinstance(parsed, _DelmFinal)
        added: list[str] = []
        if parsed.tasks and not last:
            for goal in parsed.tasks[: max(0, cfg.max_added_tasks - run.added_tasks)]:
                if goal.strip():
                    added.append(run.queue.add(goal.strip()[:1000], created_by=state.agent_id).id)
            run.added_tasks += len(added)
            run.store.set_meta(added_tasks=run.added_tasks)
        answer = None if parsed.answer is None else str(parsed.answer)
        return answer, added

    def _final_tokens(self) -> int:
        """The finalizer's gist view: wider than an agent's, since it reads the whole result
        (in hybrid mode it also reads every gist through gists() in code)."""
        cfg = self.config
        return cfg.final_gist_tokens if cfg.final_gist_tokens is not None else 4 * cfg.gist_tokens

    # -- sandboxes ----------------------------------------------------------------------

    def _sandbox_factory(self) -> Callable[[], Any]:
        if callable(self.sandbox):
            return self.sandbox
        kind = self.sandbox

        def make() -> Any:
            from sandbox import make_sandbox

            return make_sandbox(kind)

        return make


# ---------------------------------------------------------------------------------------
# Helpers (module-private)
# ---------------------------------------------------------------------------------------


class _TaskSandbox:
    """The agent's sandbox as one task sees it: after a kernel crash (the sandbox restarts
    it and reloads the corpus and tools) the task's own variables (`chunk`, ...) are set
    again, so the agent's next cell finds them."""

    def __init__(self, sb: Any, setup: str) -> None:
        self._sb = sb
        self._setup = setup

    def __getattr__(self, name: str) -> Any:
        return getattr(self._sb, name)

    async def execute(self, code: str, timeout: float | None = None) -> Any:
        result = await self._sb.execute(code, timeout)
        if result.restarted:
            await self._sb.execute(self._setup, timeout=60)
        return result


def _stored_question(store_path: Path) -> str | None:
    with RunStore(store_path) as store:
        return store.meta().question


def _new_run_id() -> str:
    stamp = datetime.now(timezone.utc).strftime("%Y%m%d-%H%M%S")
    return f"{stamp}-{os.getpid()}-{os.urandom(3).hex()}"


def _check_not_running(run_dir: Path) -> None:
    pid_file = run_dir / PID_FILE
    if not pid_file.exists():
        return
    try:
        pid = int(pid_file.read_text().strip())
    except ValueError:
        return
    if pid == os.getpid():
        return
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return
    except PermissionError:
        pass
    raise RuntimeError(
        f"process {pid} is still working on {run_dir}; stop it first (or delete {pid_file} "
        "if you are sure it is not a delm-rlm run)"
    )


def _save_corpus(run_dir: Path, corpus: Corpus) -> None:
    """Keep the context beside the store: a resumed run must see the very same corpus."""
    if corpus.kind == "table":
        corpus.value.to_parquet(run_dir / "corpus.parquet", index=False)  # type: ignore[union-attr]
        meta = {"kind": "table", "names": corpus.names, "source": corpus.source}
    else:
        meta = {"kind": corpus.kind, "value": corpus.value, "names": corpus.names, "source": corpus.source}
    tmp = run_dir / "corpus.json.tmp"
    tmp.write_text(json.dumps(meta), encoding="utf-8")
    tmp.replace(run_dir / "corpus.json")


def _load_corpus(run_dir: Path) -> Corpus:
    path = run_dir / "corpus.json"
    if not path.exists():
        raise FileNotFoundError(f"{path} is missing: this run directory cannot be resumed without its corpus")
    meta = json.loads(path.read_text(encoding="utf-8"))
    if meta["kind"] == "table":
        value: Any = pd.read_parquet(run_dir / "corpus.parquet")
    else:
        value = meta["value"]
    return Corpus(value, names=meta.get("names"), source=meta.get("source"))


def _locate_quote(docs: list[str], chunk: Chunk | None, quote: str, doc: Any = None) -> dict[str, Any]:
    """A quote pointer for `quote`: searched in the chunk first, then in the named doc, then
    in every doc. Not found: the chunk's span (the verifier then rejects it, saying why)."""
    needle = quote.strip()
    if chunk is not None and doc in (None, chunk.doc):
        at = docs[chunk.doc].find(needle, chunk.start, chunk.end)
        if at >= 0:
            return {"type": "quote", "doc": chunk.doc, "start": at, "end": at + len(needle), "quote": quote}
    candidates = [int(doc)] if isinstance(doc, int) and 0 <= doc < len(docs) else range(len(docs))
    for d in candidates:
        at = docs[d].find(needle)
        if at >= 0:
            return {"type": "quote", "doc": d, "start": at, "end": at + len(needle), "quote": quote}
    if chunk is not None:
        return {"type": "quote", "doc": chunk.doc, "start": chunk.start, "end": chunk.end, "quote": quote}
    d = int(doc) if isinstance(doc, int) and 0 <= doc < len(docs) else 0
    return {"type": "quote", "doc": d, "start": 0, "end": len(docs[d]) if docs else 0, "quote": quote}


def usage_from_trace(events: Sequence[Any]) -> tuple[Usage, dict[str, Usage]]:
    """What the model calls recorded in trace events used, in all and by role: how a resumed
    run counts the sessions before it (the trace is flushed per event, so even a killed
    session's calls are there)."""
    total = Usage()
    by_role: dict[str, Usage] = {}
    for event in events:
        d = event.data
        if event.kind == "model_call":
            cost = d.get("cost_usd")
            used = Usage(
                calls=1, cached_calls=int(bool(d.get("cached"))),
                input_tokens=int(d.get("input_tokens") or 0), output_tokens=int(d.get("output_tokens") or 0),
                seconds=float(d.get("seconds") or 0.0), cost_usd=None if cost is None else float(cost),
            )
        elif event.kind == "model_call_failed":
            used = Usage(failed_calls=1)
        else:
            continue
        role = str(d.get("role") or "?")
        total = total + used
        by_role[role] = by_role.get(role, Usage()) + used
    return total, by_role


# Names that exist only in an agent's REPL (the team's tools and the free-form sub-model
# calls): code using them cannot be replayed in the verifier's fresh REPL. `classify` can:
# the verifier answers it from the run's ClassificationLog.
_AGENT_ONLY_NAMES = frozenset(
    {"propose", "add_task", "gists", "unfold", "llm_query", "llm_query_batched", "rlm_query"}
)


def replay_check(cells: Sequence[Cell]) -> str | None:
    """A check that replays an agent's cells and prints the answer they set, or None when
    the cells cannot run without the agent's REPL (a team tool or a sub-model call, or no
    cell ran cleanly). Failed cells are left out: they changed nothing the answer used, or
    the answer would not have been set."""
    codes = [c.code for c in cells if c.error is None and not c.timed_out and c.code.strip()]
    if not codes:
        return None
    for code in codes:
        try:
            tree = ast.parse(code)
        except SyntaxError:
            return None
        if any(isinstance(n, ast.Name) and n.id in _AGENT_ONLY_NAMES for n in ast.walk(tree)):
            return None
    return "\n".join(
        ['answer = {"content": None, "ready": False}', *codes, 'print(answer["content"])']
    )


def _answer_value(text: str) -> Any:
    """The value of a plain answer: a number when it is one ("12", "3.5"), a dict or list
    when it is one written as a literal ("{'spam': 3}"), else the text."""
    s = text.strip().rstrip(".")
    if s[:1] in "{[":
        try:
            parsed = ast.literal_eval(s)
        except (ValueError, SyntaxError, TypeError, MemoryError, RecursionError):
            parsed = None
        if isinstance(parsed, (dict, list)):
            return parsed
    try:
        return int(s.replace(",", ""))
    except ValueError:
        pass
    try:
        number = float(s.replace(",", ""))
        return number if math.isfinite(number) else s
    except ValueError:
        return s


def _parse_json_reply(text: str, model: type[BaseModel]) -> tuple[BaseModel | None, str | None]:
    """The first JSON object in `text` (code fences allowed around it), validated by `model`."""
    s = text.strip()
    fence = re.search(r"```(?:json)?\s*(.*?)```", s, re.DOTALL)
    if fence:
        s = fence.group(1).strip()
    start = s.find("{")
    if start < 0:
        return None, "no JSON object found"
    try:
        obj, _ = json.JSONDecoder().raw_decode(s[start:])
    except json.JSONDecodeError as exc:
        return None, f"{exc.msg} at character {exc.pos}"
    if not isinstance(obj, dict):
        return None, "the JSON is not an object"
    try:
        return model.model_validate(obj), None
    except ValidationError as exc:
        return None, _validation_message(exc)


def _validation_message(exc: Exception) -> str:
    if isinstance(exc, ValidationError):
        parts = []
        for err in exc.errors()[:3]:
            where = ".".join(str(x) for x in err.get("loc", ()))
            msg = str(err.get("msg", "")).removeprefix("Value error, ")
            parts.append(f"{where}: {msg}" if where else msg)
        return "; ".join(parts)
    return str(exc)


