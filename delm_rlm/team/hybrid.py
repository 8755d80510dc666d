"""The hybrid role: each agent is an RLM loop in its own sandbox, whose REPL also holds the
team's tools and the task's slice (`chunk`, `chunk_doc`, ... `chunk_df`: chunking.py); the
finalizer aggregates the admitted values in code (with `add_up` or `combine`).

A chunk task is first offered to the team's newest admitted method (team/sharing.py): no
model call when it works; when it fails, the agent's prompt holds why. The whole plan's one
task is worked with the RLM's own prompts (no team tools in the prompt, so it costs what RLM
alone does), its answer verified by replaying the agent's code before the agent stops."""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any, ClassVar, cast

from delm_rlm import prompts
from delm_rlm.chunking import whole_corpus_setup
from delm_rlm.errors import RunStateError
from delm_rlm.rlm import RLM, Cell
from delm_rlm.state.queue import Task
from delm_rlm.team.finalizer import ADD_UP_CODE
from delm_rlm.team.role import FinalRound, Role, RoundOutcome, TaskOutcome
from delm_rlm.team.run import FINAL_TASK_ID, AgentState, TeamRun
from delm_rlm.team.sharing import serve_by_method
from delm_rlm.team.tools import register_team_tools
from delm_rlm.verify import Verdict
from sandbox import ExecResult, Sandbox

# The finalizer works on no chunk: its `chunk` is the whole corpus.
FINAL_SETUP = whole_corpus_setup() + "task_id = None\n" + ADD_UP_CODE


class TaskSandbox:
    """The agent's sandbox as one task sees it: after a kernel crash (the sandbox restarts
    it and reloads the corpus and tools) the task's own variables (`chunk`, ...) are set
    again, so the agent's next cell finds them. Everything but `execute` is the sandbox's."""

    def __init__(self, sb: Sandbox, setup: str) -> None:
        self._sb = sb
        self._setup = setup

    def __getattr__(self, name: str) -> Any:
        return getattr(self._sb, name)

    async def execute(self, code: str, timeout: float | None = None) -> ExecResult:
        result = await self._sb.execute(code, timeout)
        if result.restarted:
            await self._sb.execute(self._setup, timeout=60)
        return result

    def as_sandbox(self) -> Sandbox:
        """This view where a `Sandbox` is expected (it answers every call a Sandbox does)."""
        return cast(Sandbox, self)


class HybridRole(Role):
    """An RLM agent in its own sandbox (started once, reused for every task it claims)."""

    runs_code: ClassVar[bool] = True

    def __init__(self, run: TeamRun, state: AgentState) -> None:
        super().__init__(run, state)
        self.sandbox: Sandbox | None = None

    async def start(self) -> None:
        self.sandbox = self.run.sandbox_factory()
        await self.sandbox.start()
        await self.sandbox.load_context(self.run.corpus.value)
        # Which isolation really ran (the report shows it; "auto" is only what was asked).
        isolation = getattr(self.sandbox, "isolation", None) or type(self.sandbox).__name__
        self.run.trace.emit("agent_step", agent=self.state.agent_id,
                            action=f"sandbox started (isolation: {isolation})", isolation=isolation)
        register_team_tools(self.sandbox, self.run, self.state)

    async def close(self) -> None:
        if self.sandbox is not None:
            try:
                await self.sandbox.close()
            except Exception:  # a dying kernel must not mask why the agent stopped
                pass

    def _rlm(self) -> RLM:
        run = self.run
        return RLM(
            run.lm, sandbox=run.sandbox_factory, max_iterations=run.config.max_iterations,
            trace=run.trace, cell_timeout=run.config.cell_timeout, classifications=run.classifications,
        )

    def _sandbox(self) -> Sandbox:
        if self.sandbox is None:
            raise RunStateError("the agent's sandbox is not started: call start() first")
        return self.sandbox

    async def work(self, task: Task) -> TaskOutcome:
        run, state = self.run, self.state
        chunk = state.chunk
        served, method_note = await serve_by_method(run, state, task)
        if served is not None and served.ok:
            state.verdicts.append(served)
            run.trace.emit("agent_step", agent=state.agent_id, task=task.id,
                           action=f"served by method {state.verdicts[-1].reason} (no model call)")
            return TaskOutcome(served.output.strip() if served.output else None, None)
        setup = chunk.repl_setup() if chunk is not None else whole_corpus_setup()
        setup += f"\ntask_id = {task.id!r}"
        sb = self._sandbox()
        result = await sb.execute(setup, timeout=60)
        if not result.ok:
            return TaskOutcome(None, f"could not set the task's variables in the REPL: {result.error}")
        retry = prompts.team_retry(task.reasons())
        whole = task.id == run.whole_task
        if whole:  # RLM alone, verified: its prompts, no team tools in them
            message, tools_doc = run.question + (f"\n\n{retry}" if retry else ""), ""
        else:
            message = prompts.TEAM_TASK.format(
                agent=state.agent_id, task_id=task.id, goal=task.goal, question=run.question,
                chunk_desc=run.chunk_desc(chunk),
                chunk_lines=prompts.sample_lines(run.chunk_text(chunk)),
                gists=run.context.prompt_view(run.config.gist_tokens), retry=retry + method_note,
                how=prompts.TEAM_TASK_LABEL if run.labelling else prompts.TEAM_TASK_COUNT,
            )
            tools_doc = prompts.TEAM_TOOLS_DOC + "\n" + prompts.LABEL_RULES_TOOLS_DOC
        answer_verdicts: list[Verdict] = []

        async def accept(answer: str, cells: Sequence[Cell]) -> str | None:
            # An answer set without propose() is verified before the agent stops, so a
            # rejection reaches it while its REPL still holds its work.
            if len(state.verdicts) > len(answer_verdicts):
                return None  # it proposed: those verdicts decide the task
            state.cells = list(cells)
            verdict = await self.propose_answer(task, answer)
            answer_verdicts.append(verdict)
            state.verdicts.append(verdict)
            return None if verdict.ok else verdict.reason

        outcome = await self._rlm().loop(
            TaskSandbox(sb, setup).as_sandbox(), question=message, context_description=run.description,
            extra_tools_doc=tools_doc, lm=run.lm, agent_id=state.agent_id,
            task_id=task.id, role="root", trace=run.trace, accept=accept,
            corpus_text=run.chunk_text(chunk),
        )
        if outcome.status == "budget" and outcome.exceeded is not None:
            raise outcome.exceeded
        if outcome.status == "error":
            return TaskOutcome(outcome.answer, outcome.error or "the agent stopped with an error")
        state.cells = outcome.cells
        return TaskOutcome(outcome.answer, None)

    async def finalize(self, final: FinalRound) -> RoundOutcome:
        run, state = self.run, self.state
        sb = self._sandbox()
        await sb.execute(FINAL_SETUP, timeout=60)
        message = prompts.TEAM_FINALIZE.format(
            round=final.number, rounds=final.rounds, question=run.question,
            gists=run.context.prompt_view(run.config.final_view_tokens), failed=final.failed_note,
            more=prompts.TEAM_FINALIZE_LAST if final.last else prompts.TEAM_FINALIZE_MORE,
        )
        outcome = await self._rlm().loop(
            TaskSandbox(sb, FINAL_SETUP).as_sandbox(), question=message, context_description=run.description,
            extra_tools_doc=prompts.TEAM_TOOLS_DOC, lm=run.lm, agent_id=state.agent_id,
            task_id=FINAL_TASK_ID, role="finalizer", trace=run.trace, corpus_text=run.chunk_text(None),
        )
        if outcome.status == "budget" and outcome.exceeded is not None:
            raise outcome.exceeded
        if outcome.status == "error" and not state.added_tasks:
            run.error = outcome.error
        return RoundOutcome(outcome.answer, list(state.added_tasks))
