"""Team: parallel agents that share only verified progress (DeLM), each an RLM (hybrid mode).

One run, in a run directory (team/rundir.py: the store, the trace, the corpus, the pid lock):

1. initialize (team/planner.py): the scout (team/scout.py) decides whether splitting pays:
   "whole" is one agent with one verified program over the whole corpus (RLM's prompts, its
   answer checked by replay, no finalizer; a program that is not verified falls back to the
   split); "split" is one task per document or line-aligned chunk, size set by `chunk_chars`
   / `chunk_tokens` (or a plan the model proposes, `plan="model"`);
2. N agents (asyncio tasks) claim tasks under leases renewed in the background; each works
   its task in its role (team/role.py): in "hybrid" mode (team/hybrid.py) an RLM loop in its
   own sandbox, whose REPL also offers the team's tools (team/tools.py); in "delm" mode
   (team/delm.py, the DeLM paper's setting, no code execution) JSON gists read from the
   chunk in the prompt. An answer with no proposal becomes a PARTIAL gist, checked by
   replaying the agent's code or by the judge. Chunk partials must agree (verify/agreement.py);
   an admitted METHOD serves later chunks with no model call (team/sharing.py);
3. when no task is left, one agent finalizes (team/finalizer.py, role "finalizer"): it
   reads the admitted gists and answers or adds tasks, up to `max_finalize_rounds` rounds;
   partials that disagree are refused before it starts.

This module holds the lifecycle (run, resume, execute, finish) and the scheduling (agents,
claims, idle waits, lease renewal, settling a task from its verdicts). The budget covers
the whole team (one gateway session); BudgetExceeded ends the run with status "budget" and
the best partial answer. `Team.resume(run_dir, lm=...)` continues a stopped run: admitted
gists stay, DONE tasks are not redone, tasks that were claimed go back to the queue,
proposals left unverified are rejected as interrupted. `Team.join(url, lm=...)` (the
`delm-rlm worker` command) adds a process on another machine to a run whose state is in
PostgreSQL; which process finalizes is team/coordination.py's coordinator role.
"""

from __future__ import annotations

import asyncio
import time
from pathlib import Path
from typing import Any

from pydantic import ValidationError

from delm_rlm import prompts
from delm_rlm.classify import ClassificationLog
from delm_rlm.corpus import Corpus
from delm_rlm.errors import BudgetExceeded, ConfigError, EndpointFailing, RunStateError
from delm_rlm.gists import GistStatus
from delm_rlm.llm import LM, Budget, Usage
from delm_rlm.result import Result
from delm_rlm.state.context import SharedContext
from delm_rlm.state.queue import LeaseLost, Task, TaskQueue
from delm_rlm.state.opener import open_state
from delm_rlm.state.postgres_conn import is_postgres_url, parse_postgres_url
from delm_rlm.state.protocol import RunState
from delm_rlm.state.sqlite import RunStore, utc_now_iso
from delm_rlm.team.config import CUSTOM_SANDBOX, TeamConfig
from delm_rlm.team.coordination import Coordination, worker_name
from delm_rlm.team.delm import DelmRole
from delm_rlm.team.finalizer import finalize_round
from delm_rlm.team.hybrid import HybridRole
from delm_rlm.team.planner import fall_back_to_split, plan_tasks, restore_plan
from delm_rlm.team.reading import route_question
from delm_rlm.team.reading_roles import reading_role_for
from delm_rlm.team.role import Role
from delm_rlm.team.run import FINAL_TASK_ID, AgentState, TeamRun
from delm_rlm.team.scout import NeedsReading
from delm_rlm.team.rundir import (
    STORE_FILE,
    STORE_URL_FILE,
    TRACE_FILE,
    default_runs_dir,
    holding_run,
    load_corpus,
    new_run_id,
    save_corpus,
    stored_question,
    usage_from_trace,
)
from delm_rlm.trace import Trace, TraceSubscriber, observe_model_calls
from delm_rlm.verify import MethodGate, Verifier, label_rules
from sandbox import SandboxSpec, check_sandbox_spec, sandbox_factory

# mode -> the role its agents work in; a new mode is a new Role subclass named here.
ROLES: dict[str, type[Role]] = {"hybrid": HybridRole, "delm": DelmRole}


class Team:
    """A team of agents answering one question over a corpus (see the module docstring).

    Team(lm, *, sandbox=None, run_dir=None, store=None, trace_subscribers=None, needs_reading=None, **settings)

    lm: the gateway every model call goes through (an `LM`, or a `ScriptedLM`).
    run_dir: the run's directory (team/rundir.py); None: a new one under `default_runs_dir()`.
    store: a PostgreSQL URL (postgresql://user@host/dbname[?run=ID]) holding the run's state
        (gists, tasks, meta) instead of the run directory's SQLite file; the directory keeps
        the trace and the corpus and records the URL (no password) in `store.url`.
    trace_subscribers: callables given every trace event as it is emitted (a live view).
    needs_reading: `(question, corpus) -> bool`, True when the corpus must be read
        (documents, not records): the scout then splits it (None: records).

    Settings, keywords validated by `TeamConfig` (the default in parentheses):
    sandbox ("local"): "local" (isolated Jupyter kernels), "e2b", or a zero-argument
        factory returning a `sandbox.Sandbox`, used for the agents and for the verifier's
        check sandbox (a run stores a factory as "custom").
    isolation ("auto"): the local kernels' isolation: "auto" (bubblewrap; refuses to run
        model-written code where there is none), "bubblewrap", "unshare" or "none" (an
        explicit opt-out: the code sees the host's files and network).
    agents (4): how many agents work in parallel (1 to 256).
    mode ("hybrid"): "hybrid" (RLM agents with a REPL each) or "delm" (no code execution:
        agents answer with JSON gists).
    plan ("auto"): "auto" (the scout decides, team/scout.py), "whole" (one agent, one
        verified program over the whole corpus), "split" (one task per chunk) or "model"
        (the model proposes subtasks).
    chunk_chars (20000): the split size in characters.
    chunk_tokens (None): the split size in tokens; wins when both sizes are given.
    split_by ("auto"): "auto", "documents", "lines" or "pack" (see `delm_rlm.chunking`);
        a table's rows are always packed into chunks up to the chunk size.
    max_tasks (64): the most chunk tasks the initial split may give; over it, small documents
        and rows are packed into bigger chunks (raise it for more, smaller tasks).
    max_iterations (8): REPL steps of one hybrid agent on one task.
    cell_timeout (None): seconds one REPL cell may run (None: the sandbox's own limit).
    lease_s (60.0): seconds a claimed task is held; renewed while its agent works, and
        taken up by another agent when its agent stops renewing.
    max_attempts (3): claims of one task before it fails.
    judge (True): let a model judge the claims no quote or code can check.
    check_timeout (30.0): seconds one of the verifier's code checks may run.
    gist_tokens (800): tokens of verified gists an agent's prompt shows.
    final_gist_tokens (None): the same for the finalizer (None: 4 x gist_tokens).
    max_finalize_rounds (3): finalization rounds (each may add tasks) before the last.
    max_plan_tasks (16): the most subtasks a model plan may have.
    max_added_tasks (32): the most tasks a run's agents and finalizer may add.
    read_slices (1): reading path: the most ~8,000-char slices one task's summary reads, the
        ones sharing most words with the question (None: all; the rest stay readable later).
    spot_check_sample (8): items of a partial resting on `classify` labels that the verifier
        re-labels independently (role "verifier"; 0: no spot checks).
    spot_check_agreement (0.75): the least agreement with the spot check a partial needs.
    max_label_rules (3): labelling rules (CONSTRAINT gists) one spot check may record.
    votes (3): independent verifier calls (odd) that settle a disputed label or a conflict
        between two unchecked claims.
    resolve_conflicts (True): settle two admitted claims about one thing that disagree
        (re-execution, else a vote); the loser is superseded.
    classify_votes (1): labellings of each item by `classify`, the majority kept (k > 1 buys
        accuracy with calls).
    coverage_tolerance (0.1): the share of its chunk's records a partial's counts may leave
        out (verify/agreement.py); None: no coverage rule.
    budget (None): a `Budget` for the whole team (one gateway session); exceeding it ends
        the run with status "budget" and the best partial answer.

    `config` holds the validated settings; `verifier`, the verifier of the latest run.
    Bad settings raise ConfigError (a ValueError), an unknown one TypeError.
    """

    def __init__(
        self,
        lm: LM,
        *,
        sandbox: SandboxSpec | None = None,
        run_dir: str | Path | None = None,
        store: str | None = None,
        trace_subscribers: list[TraceSubscriber] | None = None,
        needs_reading: NeedsReading | None = None,
        **settings: Any,
    ) -> None:
        if not isinstance(lm, LM):
            raise TypeError(f"lm must be a delm_rlm.LM (or ScriptedLM); got {type(lm).__name__}")
        spec: SandboxSpec = sandbox if sandbox is not None else TeamConfig.model_fields["sandbox"].default
        check_sandbox_spec(spec)
        unknown = sorted(set(settings) - set(TeamConfig.model_fields))
        if unknown:
            raise TypeError(
                f"Team() got unexpected settings {', '.join(unknown)}; "
                f"known: {', '.join(n for n in TeamConfig.model_fields if n != 'sandbox')}"
            )
        try:
            self.config = TeamConfig(sandbox=spec if isinstance(spec, str) else CUSTOM_SANDBOX, **settings)
        except ValidationError as exc:
            raise ConfigError(f"bad Team settings: {exc}") from exc
        lm.check_budget(self.config.budget)  # a dollar budget needs a price: refused now, not mid-run
        self.lm = lm
        self.sandbox = spec
        self.run_dir = Path(run_dir).expanduser() if run_dir is not None else None
        if store is not None and not is_postgres_url(store):
            raise ConfigError(
                f"store= takes a PostgreSQL URL (postgresql://user@host/dbname), got {store!r}; "
                "an SQLite run lives in its run_dir (leave store unset)"
            )
        self.store_url = store
        self.trace_subscribers = list(trace_subscribers or [])
        self.needs_reading = needs_reading
        self.verifier: Verifier | None = None

    # -- public entry points ------------------------------------------------------------

    async def run(self, question: str, context: Any) -> Result:
        """Answer `question` over `context` (str, list of str, DataFrame, Corpus or Path)."""
        if not isinstance(question, str) or not question.strip():
            raise ConfigError("question must be a non-empty str")
        corpus = Corpus.coerce(context)
        run_dir = self.run_dir or default_runs_dir() / new_run_id()
        with holding_run(run_dir):  # before anything is written: one of two starts refuses
            store_path = run_dir / STORE_FILE
            if (store_path.exists() and stored_question(store_path) is not None) or (run_dir / STORE_URL_FILE).exists():
                raise ConfigError(
                    f"{run_dir} already holds a run; continue it with Team.resume({str(run_dir)!r}, lm=...) "
                    "or give a new run_dir"
                )
            store = self._new_store(run_dir)
            try:
                # An SQLite run's corpus is beside its file; only a database run needs it as blobs.
                save_corpus(run_dir, corpus, None if isinstance(store, RunStore) else store)
                store.set_meta(
                    question=question.strip(),
                    method=self.config.mode,
                    config=self.config.model_dump(mode="json"),
                    status="running",
                )
                return await self._execute(run_dir, store, corpus, question.strip(), fresh=True)
            finally:
                store.close()  # a PostgreSQL run must not keep a server connection once it ends

    def _new_store(self, run_dir: Path) -> RunState:
        """The store of a new run: the run directory's SQLite file, or a run in the PostgreSQL
        database of `store=` (its URL, without the password, recorded in the directory)."""
        if self.store_url is None:
            return RunStore(run_dir / STORE_FILE)
        store = open_state(self.store_url)
        if store.meta().question is not None:
            store.close()
            raise ConfigError(
                f"{store.location()} already holds a started run; resume it with "
                "Team.resume(run_dir, lm=..., store=URL) or drop ?run= from the URL for a new run"
            )
        (run_dir / STORE_URL_FILE).write_text(store.location() + "\n")
        return store

    def run_sync(self, question: str, context: Any) -> Result:
        """`run` for code without an event loop."""
        try:
            asyncio.get_running_loop()
        except RuntimeError:
            return asyncio.run(self.run(question, context))
        raise RunStateError("run_sync() was called inside a running event loop; use `await team.run(...)`")

    @classmethod
    async def resume(
        cls, run: str | Path, *, lm: LM, sandbox: SandboxSpec | None = None, store: str | None = None,
        **overrides: Any
    ) -> Result:
        """Continue a stopped run from its directory (or its store file). Settings come from
        the run's meta; `overrides` (e.g. agents=2, budget=...) replace some of them. A run
        that already answered returns its stored answer without running anything. A run whose
        state is in PostgreSQL reopens the URL its directory records; give `store=` (the URL
        with its password; the run id is taken from the directory when the URL has none)
        when the recorded one cannot log in."""
        run_dir, state = cls._stored_run(Path(run).expanduser(), store)
        try:
            meta = state.meta()
            if meta.question is None:
                raise ConfigError(f"{state.location()} holds no started run (no question in its meta)")
            if meta.status == "answered":
                return Result(
                    answer=meta.answer, status="answered", store_path=state.location(),
                    trace_path=str(run_dir / TRACE_FILE), method=meta.method or "hybrid",
                    gist_ids=list(getattr(meta, "gist_ids", None) or []), finished_by="state",
                )
            with holding_run(run_dir):
                return await cls._resume_held(run_dir, state, meta, lm=lm, sandbox=sandbox, **overrides)
        finally:
            state.close()  # every way out, the answered one too, lets a server connection go

    @staticmethod
    def _stored_run(path: Path, store_url: str | None) -> tuple[Path, RunState]:
        """The run directory and the store of the run at `path` (a directory or its store file)."""
        url_file = path / STORE_URL_FILE
        if path.is_dir() and (url_file.exists() or store_url is not None):
            recorded = url_file.read_text().strip() if url_file.exists() else None
            target = store_url if store_url is not None else str(recorded)  # one of them is set
            if not is_postgres_url(target):
                raise ConfigError(f"store= takes a PostgreSQL URL (postgresql://user@host/dbname), got {target!r}")
            run_id = parse_postgres_url(target).run_id
            if run_id is None and recorded is not None:
                run_id = parse_postgres_url(recorded).run_id
            if run_id is None:
                raise ConfigError(f"{target} names no run: add ?run=RUN_ID (the id is in {url_file})")
            return path, open_state(target, run_id=run_id)
        store_path = path / STORE_FILE if path.is_dir() else path
        if not store_path.exists():
            raise FileNotFoundError(
                f"no run store at {store_path}: give the run directory (holding {STORE_FILE}) "
                "or the store file itself"
            )
        return store_path.parent, RunStore(store_path)

    @classmethod
    def _from_meta(cls, meta: Any, run_dir: Path, *, lm: LM, sandbox: SandboxSpec | None,
                   trace_subscribers: list[TraceSubscriber] | None = None, **overrides: Any) -> Team:
        """A team with the settings a run's meta records, `overrides` replacing some."""
        settings = dict(meta.config)
        settings.update(overrides)
        # The stored kind unless a factory is given (None: the default kind).
        sandbox_spec = sandbox if sandbox is not None else settings.pop("sandbox", None)
        settings.pop("sandbox", None)
        if sandbox_spec == CUSTOM_SANDBOX:
            raise ConfigError("this run used a custom sandbox factory: pass sandbox=<the factory> to resume or join it")
        budget = settings.pop("budget", None)
        return cls(
            lm, sandbox=sandbox_spec, run_dir=run_dir, trace_subscribers=trace_subscribers,
            budget=Budget.model_validate(budget) if isinstance(budget, dict) else budget,
            **settings,
        )

    @classmethod
    async def _resume_held(
        cls, run_dir: Path, store: RunState, meta: Any, *, lm: LM, sandbox: SandboxSpec | None, **overrides: Any
    ) -> Result:
        team = cls._from_meta(meta, run_dir, lm=lm, sandbox=sandbox, **overrides)
        corpus = load_corpus(run_dir, store)  # from the store's blobs where the directory lacks it
        store.set_meta(status="running", config=team.config.model_dump(mode="json"))
        return await team._execute(run_dir, store, corpus, meta.question, fresh=False)

    @classmethod
    async def join(
        cls, store: str, *, lm: LM, run_id: str | None = None, agents: int | None = None,
        sandbox: SandboxSpec | None = None,
        run_dir: str | Path | None = None, wait_s: float = 60.0,
        trace_subscribers: list[TraceSubscriber] | None = None,
    ) -> Result:
        """Work on a run another process started, as one more worker (`delm-rlm worker`).

        store: the run's PostgreSQL URL (postgresql://user@host/db?run=RUN_ID).
        run_id: the run's id, when the URL has none.
        agents: this worker's agents (None: the run's own team size).
        run_dir: this worker's directory (its trace, the corpus fetched from the store);
            None: a new one under `default_runs_dir()`.
        wait_s: how long to wait for the run to be planned when it is just starting.

        The worker claims ready tasks under leases, works them in its own sandboxes and
        proposes gists through the run's verifier rules; it finalizes only if the process
        that coordinates the run stops beating its heartbeat (team/coordination.py). It
        returns when the run has ended, with the run's answer and status; when the worker
        stops on its own (its budget, its endpoint), the run goes on without it."""
        if not is_postgres_url(store) or (run_id or parse_postgres_url(store).run_id) is None:
            raise ConfigError(
                f"a worker joins a run whose state is in PostgreSQL: give postgresql://user@host/db?run=RUN_ID "
                f"(or the run id apart), got {parse_postgres_url(store).shown if is_postgres_url(store) else store!r} "
                f"(the run directory's {STORE_URL_FILE} holds the URL)"
            )
        state = open_state(store, run_id=run_id)
        try:
            meta = await cls._planned_meta(state, wait_s)
            if meta.status != "running":
                return Result(answer=meta.answer, status=meta.status or "error", store_path=state.location(),
                              method=meta.method or "hybrid", gist_ids=list(getattr(meta, "gist_ids", None) or []),
                              finished_by="state" if meta.status == "answered" else None,
                              error=None if meta.status == "answered" else f"the run had already ended ({meta.status})")
            run_id = parse_postgres_url(state.location()).run_id
            worker = worker_name()
            work_dir = Path(run_dir).expanduser() if run_dir is not None else default_runs_dir() / f"{run_id}-{worker}"
            overrides = {} if agents is None else {"agents": agents}
            team = cls._from_meta(meta, work_dir, lm=lm, sandbox=sandbox, trace_subscribers=trace_subscribers,
                                  **overrides)
            with holding_run(work_dir):
                corpus = load_corpus(work_dir, state)  # from the store's blobs, SHA-256 checked
                return await team._execute(work_dir, state, corpus, meta.question, fresh=False, worker=worker)
        finally:
            state.close()

    @staticmethod
    async def _planned_meta(state: RunState, wait_s: float) -> Any:
        """The run's meta once it has a question and a plan (or has ended), waiting up to `wait_s`."""
        deadline = time.monotonic() + wait_s
        while True:
            meta = state.meta()
            started = meta.question is not None and meta.status is not None
            if started and (meta.status != "running" or state.get_meta("plan") is not None):
                return meta
            if time.monotonic() >= deadline:
                what = "no question" if meta.question is None else "no plan yet"
                raise RunStateError(
                    f"{state.location()} holds {what} after {wait_s:g} s: start the run first "
                    "(delm-rlm ask --store URL) and give the worker its ?run= id"
                )
            await asyncio.sleep(0.2)

    # -- one run ------------------------------------------------------------------------

    def _needs_reading(self, question: str, corpus: Corpus) -> bool:
        """The scout's reading test: the caller's `needs_reading`, else the reading path's own
        routing (team/reading.py), the same one that picks the reading roles."""
        if self.needs_reading is not None:
            return self.needs_reading(question, corpus)
        return route_question(question, corpus.docs).reading

    async def _execute(self, run_dir: Path, store: RunState, corpus: Corpus, question: str, *, fresh: bool,
                       worker: str | None = None) -> Result:
        """One session of a run; the caller holds the run directory (`holding_run`).
        `worker`: this process joins a run another process coordinates (`join`), as this name."""
        cfg = self.config
        role_class = ROLES[cfg.mode]
        # -- reading or counting (issue 15; the scout of issue 12 takes this over): documents
        # that must be read get the reading roles, records keep the counting ones.
        reading_role, routing = reading_role_for(cfg.mode, question, corpus.docs)
        role_class = reading_role or role_class
        # -- end of the routing
        started = time.monotonic()
        trace_path = run_dir / TRACE_FILE
        earlier = Trace.load(trace_path) if not fresh and trace_path.exists() else []
        trace = Trace(trace_path)
        try:
            for subscriber in self.trace_subscribers:
                trace.subscribe(subscriber)
            run = self._new_run(run_dir, store, corpus, question, trace, role_class)
            run.prior_usage, run.prior_usage_by_role = usage_from_trace(earlier)
            run.joined, run.agent_prefix = worker is not None, f"{worker}." if worker else ""
            run.coordination = Coordination(store, worker or worker_name(), stale_s=max(cfg.lease_s, 1.0))
            trace.emit(
                "run_started", question=question, method=cfg.mode, corpus=run.description,
                config={**cfg.model_dump(mode="json"), "resumed": not fresh, "run_dir": str(run_dir)},
            )
            trace.emit("agent_step", agent="scout", action=f"{routing.path} path: {routing.reason}"[:300],
                       route=routing.path, signals=routing.signals)
            beater = asyncio.create_task(self._beat(run))
            try:
                if worker is None:
                    run.coordination.take(force=True)  # the starting (or resuming) process coordinates
                if fresh:
                    await plan_tasks(run, runs_code=role_class.runs_code, needs_reading=self._needs_reading)
                else:
                    if worker is None:  # a joining worker must not void the live processes' leases
                        self._recover(run)
                    restore_plan(run)
                run.finalize_round = store.counter("finalize_rounds")
                run.added_tasks = store.counter("added_tasks")
                # The whole plan is one agent's work: RLM alone, verified.
                await self._run_agents(run, role_class, 1 if run.plan == "whole" else cfg.agents)
                if run.replan is not None and run.exceeded is None:
                    fall_back_to_split(run)
                    run.done = asyncio.Event()
                    await self._run_agents(run, role_class, cfg.agents)
            except BudgetExceeded as exc:
                run.exceeded = exc
            except Exception as exc:
                run.status, run.error = "error", f"{type(exc).__name__}: {exc}"
                trace.emit("error", message=run.error)
            finally:
                beater.cancel()
                for closing in (run.verifier, run.methods):
                    try:
                        if closing is not None:
                            await closing.close()
                    except Exception as exc:  # closing must not hide the run's outcome
                        trace.emit("error", message=f"verifier sandbox close failed: {exc}")
            return self._finish(run, started)
        finally:
            trace.close()

    def _new_run(self, run_dir: Path, store: RunState, corpus: Corpus, question: str,
                 trace: Trace, role_class: type[Role]) -> TeamRun:
        """The run context: the team's gateway session, queue, shared context and verifier."""
        cfg = self.config
        run_lm = self.lm.session(cfg.budget)
        observe_model_calls(run_lm, trace)
        docs = corpus.docs
        context = SharedContext(store, docs)
        queue = TaskQueue(store, lease_s=cfg.lease_s, max_attempts=cfg.max_attempts, trace=trace)
        make_sandbox = sandbox_factory(self.sandbox, isolation=cfg.isolation)
        # Every agent's classify() shows the run's admitted labelling rules (CONSTRAINT gists).
        classifications = ClassificationLog(store, rules=label_rules(context), votes=cfg.classify_votes)
        verifier = Verifier(
            context, docs, lm=run_lm, replay_tools={"classify": classifications.replay},
            sandbox_factory=make_sandbox if role_class.runs_code else None,
            corpus_value=corpus.value, trace=trace, judge=cfg.judge,
            check_timeout=cfg.check_timeout, require_check_for_values=role_class.runs_code,
            spot_check_sample=cfg.spot_check_sample, spot_check_agreement=cfg.spot_check_agreement,
            max_label_rules=cfg.max_label_rules, votes=cfg.votes, resolve_conflicts=cfg.resolve_conflicts,
            on_labels_rejected=lambda r: classifications.dispute(r.items, r.labels, r.instruction),
        )
        self.verifier = verifier
        # Methods are code: only a role that runs code shares them.
        methods = MethodGate(
            context, docs, sandbox_factory=make_sandbox, corpus_value=corpus.value, trace=trace,
            timeout=cfg.check_timeout,
        ) if role_class.runs_code else None
        return TeamRun(
            config=cfg, run_dir=run_dir, store=store, corpus=corpus, docs=docs, question=question,
            description=prompts.describe_context(corpus.value), trace=trace,
            queue=queue, context=context, verifier=verifier, lm=run_lm, sandbox_factory=make_sandbox,
            classifications=classifications, methods=methods,
        )

    def _finish(self, run: TeamRun, started: float) -> Result:
        if run.exceeded is not None:
            exc = run.exceeded
            run.status = "budget"
            run.error = f"budget exceeded: {exc.limit} used {exc.used:g} of {exc.allowed:g}"
            run.trace.emit("budget_exceeded", limit=exc.limit, used=exc.used, allowed=exc.allowed)
            if run.answer is None:
                run.answer = exc.partial_answer or run.partial_answer()
        elif run.answer is None and run.status == "answered" and not run.ended_elsewhere:
            run.status = "error"
            run.error = run.error or "; ".join(run.agent_errors[-3:]) or "the team stopped without an answer"
        # The run's ending is written by the process that coordinates it; a worker that stops
        # on its own (or found the run ended) only drops its own unverified proposals.
        writes_ending = not run.ended_elsewhere and (
            not run.joined or (run.coordination is not None and run.coordination.holds()))
        for gist in run.store.list_gists(status=GistStatus.PENDING):
            if writes_ending or gist.provenance.agent_id in run.agent_ids:
                # Proposals cut off by the end of the run (budget, an agent stopped mid-check).
                run.context.reject(gist.id, "the run ended before this proposal was verified")
        stats = run.verifier.stats
        # The whole run's usage: earlier sessions (before a resume) plus this one.
        usage = run.prior_usage + run.lm.usage.total
        by_role = dict(run.prior_usage_by_role)
        for role, used in run.lm.usage.by_role.items():
            by_role[role] = by_role.get(role, Usage()) + used
        if writes_ending:
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
            store_path=run.store.location(),
            trace_path=str(run.trace.path),
            trace=list(run.trace.events),
            seconds=round(time.monotonic() - started, 3),
            method=self.config.mode,
            finished_by="state" if run.status == "answered" else ("partial" if run.answer else None),
            iterations=run.finalize_round,
        )

    def _recover(self, run: TeamRun) -> None:
        """After a stop: unverified proposals are rejected as interrupted; tasks the stopped
        process held go back to the queue (its leases are void: that process is gone)."""
        for gist in run.store.list_gists(status=GistStatus.PENDING):
            run.context.reject(gist.id, "the run stopped before this proposal was verified")
        # Reap with a clock past every lease the stopped process could have issued.
        horizon = time.time() + self.config.lease_s + 1.0
        stale = TaskQueue(run.store, lease_s=self.config.lease_s, max_attempts=self.config.max_attempts,
                          trace=run.trace, clock=lambda: horizon)
        stale.reap()

    # -- scheduling ---------------------------------------------------------------------

    async def _run_agents(self, run: TeamRun, role_class: type[Role], count: int) -> None:
        names = [f"{run.agent_prefix}a{i}" for i in range(1, count + 1)]
        run.agent_ids.update(names)
        agents = {
            name: asyncio.create_task(self._agent(run, role_class(run, AgentState(name))), name=f"delm-agent-{name}")
            for name in names
        }
        done_wait = asyncio.create_task(run.done.wait())
        pending: set[asyncio.Task[Any]] = set(agents.values())
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
                    elif isinstance(exc, EndpointFailing):
                        # Every agent's next call would fail the same way: stop the run.
                        run.status, run.error = "error", str(exc)
                        run.trace.emit("error", message=f"run stopped: {exc}")
                        run.done.set()
                    elif exc is not None:
                        run.agent_errors.append(f"{t.get_name()}: {type(exc).__name__}: {exc}")
                        run.trace.emit("error", agent=t.get_name().removeprefix("delm-agent-"),
                                       message=f"agent stopped: {type(exc).__name__}: {exc}")
        finally:
            done_wait.cancel()
            for t in agents.values():
                t.cancel()
            await asyncio.gather(*agents.values(), done_wait, return_exceptions=True)

    async def _agent(self, run: TeamRun, role: Role) -> None:
        agent_id = role.state.agent_id
        try:
            await role.start()
            while not run.done.is_set() and not self._ended_elsewhere(run):
                task = run.queue.claim(agent_id)
                if task is None:
                    if (run.queue.drained() and not run.finalize_lock.locked()
                            and self._may_finalize(run, agent_id)):
                        await finalize_round(run, role)
                        continue
                    await asyncio.sleep(self._idle_wait(run))
                    continue
                if run.joined and task.id not in run.chunks:
                    restore_plan(run)  # the coordinator may have split the corpus since this worker read the plan
                await self._work(run, role, task)
        finally:
            await role.close()

    @staticmethod
    def _ended_elsewhere(run: TeamRun) -> bool:
        """True (and the run done, with the stored outcome) when another process of the run
        ended it: its meta no longer says "running"."""
        if run.store.get_meta("status") == "running":
            return False
        meta = run.store.meta()
        run.ended_elsewhere = True
        run.status, run.answer, run.error = meta.status or "error", meta.answer, meta.error
        run.answer_gist_ids = list(getattr(meta, "gist_ids", None) or [])
        run.done.set()
        return True

    @staticmethod
    def _may_finalize(run: TeamRun, agent_id: str) -> bool:
        """True when this process coordinates the run, or just took the role over from a
        coordinator that stopped beating its heartbeat (team/coordination.py)."""
        coordination = run.coordination
        if coordination is None or coordination.holds():
            return True
        if not coordination.take():
            return False
        run.trace.emit("agent_step", agent=agent_id, task=FINAL_TASK_ID,
                       action=f"the coordinator {coordination.seen_holder or '(unknown)'} stopped beating: "
                       "this process finalizes")
        return True

    async def _beat(self, run: TeamRun) -> None:
        """The coordinator's heartbeat, while this process holds the role."""
        coordination = run.coordination
        if coordination is None:
            return
        while True:
            await asyncio.sleep(coordination.beat_period)
            if coordination.epoch is None:
                continue
            try:
                coordination.beat()
            except Exception as exc:  # a store that is briefly away: the next beat tries again
                run.trace.emit("error", message=f"coordinator heartbeat failed: {type(exc).__name__}: {exc}")

    def _idle_wait(self, run: TeamRun) -> float:
        expiry = run.queue.next_lease_expiry()
        if expiry is None:
            return 0.05
        return min(0.25, max(0.02, expiry - time.time()))

    async def _renew_lease(self, run: TeamRun, task: Task, agent_id: str) -> None:
        period = max(0.05, self.config.lease_s / 3)
        while True:
            await asyncio.sleep(period)
            if not run.queue.renew(task.id, agent_id):
                run.trace.emit("agent_step", agent=agent_id, task=task.id,
                               action="lease lost: another agent may redo this task")
                return

    async def _work(self, run: TeamRun, role: Role, task: Task) -> None:
        """`role` works `task` under a renewed lease; the task is done when a gist was
        admitted for it, else rejected (to be retried) with the reason."""
        state = role.state
        state.begin_task(task, run.chunks.get(task.id))
        renewer = asyncio.create_task(self._renew_lease(run, task, state.agent_id))
        try:
            answer, failure = await role.work(task)
            admitted = [v.admitted_id for v in state.verdicts if v.ok and v.admitted_id]
            if not state.verdicts and answer is not None and failure is None:
                verdict = await role.propose_answer(task, answer)
                if verdict.ok and verdict.admitted_id:
                    admitted.append(verdict.admitted_id)
                else:
                    failure = verdict.reason
            try:
                if admitted:
                    if task.id == run.whole_task:
                        run.whole_answer = answer
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
