"""The reading roles: how a team's agents work when the question is about documents that must
be read (team/reading.py routes; team/reading_steps.py holds the steps both roles share).

- `DelmReadingRole` (mode "delm", no REPL): per task, the chunk's grounded summary, then one
  JSON call for the query-aware gist, proposed with its cited anchors.
- `HybridReadingRole` (mode "hybrid"): an RLM agent in its sandbox with the reading prompt
  (no counting template): `read_summary()` reads its part through the summary step (the
  sub-model on slices), `llm_query` on slices of `chunk` for detail, and `propose_gist(text,
  anchors, choices)` shares the same gists; an answer set without a proposal is proposed as
  its gist.

Both finalize by comparing the question (and its choices) with the admitted gists in one
JSON call, and both apply the answer gate: an answer must rest on evidence read from the
corpus.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any, ClassVar

from delm_rlm import prompts
from delm_rlm.chunking import whole_corpus_setup
from delm_rlm.errors import LMError, RunStateError
from delm_rlm.rlm import CHARS_PER_TOKEN, RLM, Cell
from delm_rlm.state.queue import Task
from delm_rlm.team.delm import DelmRole
from delm_rlm.team.hybrid import HybridRole, TaskSandbox
from delm_rlm.team.reading import Routing, route_question
from delm_rlm.team.reading_steps import ReadingSteps, cited_anchor_ids
from delm_rlm.team.role import AnswerRefusal, FinalRound, Role, RoundOutcome, TaskOutcome
from delm_rlm.team.summaries import ChunkSummary
from delm_rlm.verify import Verdict
from delm_rlm.verify.form import MAX_SUMMARY_CHARS
from sandbox import Sandbox


class DelmReadingRole(DelmRole):
    """A no-REPL reading agent: summary, gist, proposal."""

    runs_code: ClassVar[bool] = False

    async def work(self, task: Task) -> TaskOutcome:
        run, state = self.run, self.state
        steps = ReadingSteps.of(run)
        run.trace.emit("agent_step", agent=state.agent_id, task=task.id, action="reading its part")
        try:
            summary = await steps.summary_for(task, state)
            if not summary.anchors:
                return TaskOutcome(None, "no grounded summary: " + ("; ".join(summary.rejected)[:400] or "no text"))
            reply, error = await steps.write_gist(task, summary, state)
        except LMError as exc:  # as in the other roles: the task is retried, the agent goes on
            run.trace.emit("error", agent=state.agent_id, task=task.id, message=f"model call failed: {exc}")
            return TaskOutcome(None, f"model call failed: {exc}")
        if reply is None:
            return TaskOutcome(None, f"the gist reply was not valid JSON: {error}")
        state.verdicts.append(await steps.propose_gist(state, summary, reply.gist, reply.anchors, reply.choices))
        return TaskOutcome(None, None)

    async def propose_answer(self, task: Task, answer: str) -> Verdict:
        steps = ReadingSteps.of(self.run)
        return await steps.propose_gist(self.state, await steps.summary_for(task, self.state), answer)

    async def finalize(self, final: FinalRound) -> RoundOutcome:
        return await ReadingSteps.of(self.run).finalize(self.state, final)

    def refuse_answer(self, answer: str, gist_ids: list[str], last: bool) -> AnswerRefusal | None:
        return ReadingSteps.of(self.run).answer_refusal(self.state, answer, gist_ids, last)


class HybridReadingRole(HybridRole):
    """An RLM reading agent in its own sandbox (started once, reused for every task)."""

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self.summary: ChunkSummary | None = None  # the current task's, read on first use

    async def start(self) -> None:
        await super().start()
        if self.sandbox is None:
            raise RunStateError("the agent's sandbox did not start")
        self.register_reading_tools(self.sandbox)

    async def current_summary(self) -> ChunkSummary:
        task = self.state.task
        if task is None:
            raise RunStateError("no task is claimed: there is nothing to read")
        if self.summary is None:
            self.summary = await ReadingSteps.of(self.run).summary_for(task, self.state)
        return self.summary

    def register_reading_tools(self, sb: Sandbox) -> None:
        state, steps = self.state, ReadingSteps.of(self.run)

        async def read_summary() -> str:
            summary = await self.current_summary()
            if not summary.anchors:
                return ("(no grounded summary of your part: " + "; ".join(summary.rejected)[:300] +
                        "; read it with llm_query on slices of chunk)")
            note = summary.unread_note()
            return f"Points of {summary.where}:\n" + summary.render(MAX_SUMMARY_CHARS) + (f"\n{note}" if note else "")

        async def propose_gist(text: str, anchors: Any = None, choices: Any = None) -> dict[str, Any]:
            if state.task is None:
                return {"status": "rejected", "reason": "no task is claimed: nothing to propose for"}
            verdict = await steps.propose_gist(state, await self.current_summary(), str(text), anchors or [], choices)
            state.verdicts.append(verdict)
            return verdict.for_agent()

        sb.register("read_summary", read_summary)
        sb.register("propose_gist", propose_gist)

    async def work(self, task: Task) -> TaskOutcome:
        run, state = self.run, self.state
        self.summary = None
        chunk = state.chunk
        setup = chunk.repl_setup() if chunk is not None else whole_corpus_setup()
        setup += f"\ntask_id = {task.id!r}"
        if self.sandbox is None:
            raise RunStateError("the agent's sandbox is not started: call start() first")
        result = await self.sandbox.execute(setup, timeout=60)
        if not result.ok:
            return TaskOutcome(None, f"could not set the task's variables in the REPL: {result.error}")
        retry = prompts.team_retry(task.reasons())
        message = prompts.READ_TASK.format(
            agent=state.agent_id, task_id=task.id, goal=task.goal, question=run.question,
            chunk_desc=run.chunk_desc(chunk), gists=run.context.prompt_view(run.config.gist_tokens), retry=retry,
        )
        answer_verdicts: list[Verdict] = []

        async def accept(answer: str, cells: Sequence[Cell]) -> str | None:
            if len(state.verdicts) > len(answer_verdicts):
                return None  # it proposed: those verdicts decide the task
            verdict = await self.propose_answer(task, answer)
            answer_verdicts.append(verdict)
            state.verdicts.append(verdict)
            return None if verdict.ok else verdict.reason

        window = run.lm.context_window_for("sub")
        agent = RLM(run.lm, sandbox=run.sandbox_factory, max_iterations=run.config.max_iterations,
                    trace=run.trace, cell_timeout=run.config.cell_timeout, classifications=run.classifications)
        outcome = await agent.loop(
            TaskSandbox(self.sandbox, setup).as_sandbox(), question=message, context_description=run.description,
            lm=run.lm, agent_id=state.agent_id, task_id=task.id, role="root", trace=run.trace, accept=accept,
            system_prompt=prompts.READ_RLM_SYSTEM.format(
                sub_limit=f" (at most ~{window * CHARS_PER_TOKEN // 2:,} chars)" if window else ""),
        )
        if outcome.status == "budget" and outcome.exceeded is not None:
            raise outcome.exceeded
        if outcome.status == "error":
            return TaskOutcome(outcome.answer, outcome.error or "the agent stopped with an error")
        state.cells = outcome.cells
        return TaskOutcome(outcome.answer, None)

    async def propose_answer(self, task: Task, answer: str) -> Verdict:
        """The answer, as the task's gist. One that cites no point of the summary (a small
        model's bare "The correct answer is (B)") is written by the gist step from the
        summary instead, as in delm mode: the support rule would refuse it every time."""
        steps, summary = ReadingSteps.of(self.run), await self.current_summary()
        if summary.anchors and not cited_anchor_ids(answer):
            self.run.trace.emit("agent_step", agent=self.state.agent_id, task=task.id,
                                action="its answer cites no point: the gist step writes the gist from the summary")
            try:
                reply, _ = await steps.write_gist(task, summary, self.state)
            except LMError:
                reply = None
            if reply is not None:
                return await steps.propose_gist(self.state, summary, reply.gist, reply.anchors, reply.choices)
        return await steps.propose_gist(self.state, summary, answer)

    async def finalize(self, final: FinalRound) -> RoundOutcome:
        return await ReadingSteps.of(self.run).finalize(self.state, final)

    def refuse_answer(self, answer: str, gist_ids: list[str], last: bool) -> AnswerRefusal | None:
        return ReadingSteps.of(self.run).answer_refusal(self.state, answer, gist_ids, last)


# mode -> the role its agents work in on the reading path.
READING_ROLES: dict[str, type[Role]] = {"hybrid": HybridReadingRole, "delm": DelmReadingRole}


def reading_role_for(mode: str, question: str, docs: Sequence[str]) -> tuple[type[Role] | None, Routing]:
    """The reading role of `mode` when `question` over `docs` must be read (else None), and
    the routing that decided it."""
    routing = route_question(question, docs)
    return (READING_ROLES[mode] if routing.reading else None), routing


__all__ = ["READING_ROLES", "DelmReadingRole", "HybridReadingRole", "reading_role_for"]
