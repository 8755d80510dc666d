"""The role interface: how one agent of a team works a task and finalizes a round.

The team (team/team.py) schedules: it claims tasks, renews leases, settles each task from
its verdicts and decides when a round is finalized. A role does the work in between, one
instance per agent. A new way of working is a new file with a `Role` subclass, named in
`team.team.ROLES` under its mode.
"""

from __future__ import annotations

from abc import ABC, abstractmethod
from dataclasses import dataclass
from typing import Any, ClassVar, NamedTuple

from delm_rlm import prompts
from delm_rlm.gists import Gist, GistKind
from delm_rlm.state.queue import Task
from delm_rlm.team.replies import answer_value
from delm_rlm.team.run import AgentState, TeamRun
from delm_rlm.verify import Verdict
from delm_rlm.verify.replay import replay_check


class TaskOutcome(NamedTuple):
    """An agent's answer for a task, and why it failed (None: it did not)."""

    answer: str | None
    failure: str | None


class RoundOutcome(NamedTuple):
    """The finalizer's answer (None: it gave none) and the tasks it added."""

    answer: str | None
    added: list[str]


class AnswerRefusal(NamedTuple):
    """Why the answer gate refused the finalizer's answer, and the tasks queued to find what
    it lacks (none: the run ends without an answer)."""

    reason: str
    added: list[str]


@dataclass(frozen=True)
class FinalRound:
    """One finalization round as the finalizer is told about it."""

    number: int  # 1-based
    rounds: int  # the most rounds the run allows
    last: bool  # no more tasks may be added
    failed_note: str  # "Failed tasks: ...\n", or "" when none failed


class Role(ABC):
    """One agent's way of working. `start` runs before the agent's first task and `close`
    after its last (even when it stopped on an error)."""

    # True: the agents compute values in code, so the verifier replays checks in its own
    # sandbox and a claimed value must come with a check.
    runs_code: ClassVar[bool] = False

    def __init__(self, run: TeamRun, state: AgentState) -> None:
        self.run = run
        self.state = state

    async def start(self) -> None:
        """Set the agent up (a sandbox, tools) before its first task."""

    async def close(self) -> None:
        """Release what `start` set up; must not raise."""

    @abstractmethod
    async def work(self, task: Task) -> TaskOutcome:
        """Work on `task` (already set in `self.state`); proposals go through the verifier
        and their verdicts into `self.state.verdicts`."""

    @abstractmethod
    async def finalize(self, final: FinalRound) -> RoundOutcome:
        """Combine the admitted gists into the answer, or add tasks (unless `final.last`)."""

    def refuse_answer(self, answer: str, gist_ids: list[str], last: bool) -> AnswerRefusal | None:
        """The answer gate: why the finalizer's `answer`, resting on `gist_ids`, may not end
        the run (None: it may). `last`: no tasks may be added. Here (records, computed over
        chunks): every chunk needs a verified partial, else a total would leave its records out
        (the issue-14 run answered `Answer: 0` from no partial at all); those chunks are
        queued again unless `last`. The reading roles require evidence read from the corpus
        instead (team/reading_steps.py): an answer there may rest on one part."""
        run = self.run
        missing = run.chunks_without_partial()
        if not missing:
            return None
        named = ", ".join(missing[:6]) + (f" and {len(missing) - 6} more" if len(missing) > 6 else "")
        reason = prompts.TEAM_UNCOVERED.format(tasks=named)
        if last:
            return AnswerRefusal(reason, [])
        errors = {t.id: t.last_error or "" for t in run.queue.all()}
        return AnswerRefusal(reason, run.requeue_chunks(
            missing, lambda chunk: prompts.TEAM_REDO_GOAL.format(
                chunk_desc=run.chunk_desc(chunk), reason=next(
                    (errors[t][:200] for t, c in run.chunks.items() if c == chunk and errors.get(t)), "it failed")),
            created_by=self.state.agent_id))

    async def propose_answer(self, task: Task, answer: str) -> Verdict:
        """An answer with no proposal becomes a PARTIAL gist. When the agent computed it in
        code that needs no team tools, that code is the check: the verifier replays it in a
        fresh REPL and the answer must come out again. Otherwise the gist is judged against
        the chunk (small models often set the answer and skip propose(); a judge cannot
        confirm a computed count from quotes, a replay can)."""
        run, state = self.run, self.state
        text = " ".join(str(answer).split())
        value: Any = answer_value(text)
        # A multi-line answer would print over several lines and never match its one-line value.
        check = replay_check(state.cells) if "\n" not in str(answer).strip() else None
        shown = text if len(text) <= 240 else text[:237] + "..."
        gist = Gist(
            kind=GistKind.PARTIAL,
            text=f"{task.id}: {shown}",
            summary=text[:4000] if len(text) > 240 else None,
            value=value,
            check=check,
            provenance=run.provenance(state),
        )
        chunk = state.chunk
        check_vars = chunk.repl_variables() if check is not None and chunk is not None else None
        return await run.verifier.verify(
            gist, source=run.chunk_text(chunk), check_vars=check_vars, require_check=False,
            reject_empty=run.rejects_empty(state),
        )
