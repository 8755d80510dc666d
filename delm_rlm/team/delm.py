"""The delm role (the DeLM paper's setting, no code execution): an agent reads its chunk in
the prompt and answers with JSON gists, verified by quotes and the judge; the finalizer
answers in JSON from the admitted gists, or adds tasks (goals in words, never bare ids).

Robust to small models: replies are parsed leniently with one repair request
(`replies.ask_json`); a field of the wrong shape (one quote as a str, an answer as a dict,
a task as {"goal": ...}) is taken as meant; a near-copy quote is mapped to the span it copies
(`tools.locate_quote`)."""

from __future__ import annotations

import json
from typing import Any, ClassVar

from pydantic import BaseModel, Field, ValidationError, field_validator

from delm_rlm import prompts
from delm_rlm.errors import EndpointFailing, LMError
from delm_rlm.gists import Gist
from delm_rlm.state.queue import Task
from delm_rlm.team.replies import ReplyModel, ask_json, validation_message
from delm_rlm.team.role import FinalRound, Role, RoundOutcome, TaskOutcome
from delm_rlm.team.run import FINAL_TASK_ID
from delm_rlm.team.tools import add_goal_task, locate_quote, tag_partial_text
from delm_rlm.verify import Verdict

MAX_GISTS_PER_REPLY = 8


class DelmGist(BaseModel):
    """One gist in an agent's JSON reply."""

    kind: str = "partial"
    text: str
    value: Any = None
    quotes: list[str] = Field(default_factory=list)

    @field_validator("quotes", mode="before")
    @classmethod
    def _quote_list(cls, value: Any) -> Any:
        if value is None:
            return []
        if isinstance(value, str):
            return [value]
        return [str(q) for q in value] if isinstance(value, list) else value


class DelmReply(BaseModel):
    """An agent's JSON reply for its task."""

    answer: str | int | float | bool | None = None
    gists: list[DelmGist] = Field(default_factory=list)

    @field_validator("answer", mode="before")
    @classmethod
    def _answer_text(cls, value: Any) -> Any:
        return json.dumps(value) if isinstance(value, (dict, list)) else value


class DelmFinal(BaseModel):
    """The finalizer's JSON reply: the answer, or tasks to add."""

    answer: str | int | float | bool | None = None
    tasks: list[str] = Field(default_factory=list)

    @field_validator("answer", mode="before")
    @classmethod
    def _answer_text(cls, value: Any) -> Any:
        return json.dumps(value) if isinstance(value, (dict, list)) else value

    @field_validator("tasks", mode="before")
    @classmethod
    def _task_goals(cls, value: Any) -> Any:
        items = [value] if isinstance(value, (str, dict)) else value if isinstance(value, list) else []
        return [str(t.get("goal") or t.get("task") or t.get("text") or "") if isinstance(t, dict) else str(t)
                for t in items]


class DelmRole(Role):
    """A no-REPL agent: the chunk in the prompt, JSON gists out."""

    runs_code: ClassVar[bool] = False

    async def _ask_json(self, messages: list[dict[str, str]], model: type[ReplyModel], *, role: str,
                        tags: dict[str, Any], example: str) -> tuple[ReplyModel | None, str | None]:
        """One call, parsed leniently; one repair request with the parse error; (parsed, error)."""
        return await ask_json(self.run.lm, messages, model, role=role, tags=tags, example=example)

    async def work(self, task: Task) -> TaskOutcome:
        run, state, cfg = self.run, self.state, self.run.config
        chunk = state.chunk
        text = run.chunk_text(chunk)
        limit = (cfg.chunk_chars or (cfg.chunk_tokens or 5000) * 4) * 2
        text = prompts.truncate_middle(text, limit)
        retry = prompts.team_retry(task.reasons())
        messages = [
            {"role": "system", "content": prompts.DELM_AGENT_SYSTEM},
            {"role": "user", "content": prompts.DELM_AGENT_USER.format(
                question=run.question, task_id=task.id, goal=task.goal,
                gists=run.context.prompt_view(cfg.gist_tokens), retry=retry,
                chunk_desc=run.chunk_desc(chunk), chunk=text)},
        ]
        run.trace.emit("agent_step", agent=state.agent_id, task=task.id, action="reading its chunk")
        try:
            parsed, error = await self._ask_json(
                messages, DelmReply, role="root", tags={"agent": state.agent_id, "task": task.id},
                example='{"answer": "2", "gists": [{"kind": "partial", "text": "...", "value": 2, "quotes": ["..."]}]}',
            )
        except EndpointFailing:
            raise  # the endpoint is down for every agent: the team ends the run
        except LMError as exc:  # as in hybrid mode: the task is retried, the agent goes on
            run.trace.emit("error", agent=state.agent_id, task=task.id, message=f"model call failed: {exc}")
            return TaskOutcome(None, f"model call failed: {exc}")
        if parsed is None:
            return TaskOutcome(None, f"the reply was not valid JSON: {error}")
        for item in parsed.gists[:MAX_GISTS_PER_REPLY]:
            gist_text = tag_partial_text(state, item.text, item.kind)
            if item.value is not None:
                # The prompt view shows text only; the finalizer must see the value.
                gist_text = f"{gist_text} (value {json.dumps(item.value)[:40]})"
            try:
                gist = Gist(
                    kind=item.kind, text=gist_text, value=item.value,
                    evidence=[locate_quote(run.docs, chunk, q) for q in item.quotes if q.strip()],
                    provenance=run.provenance(state),
                )
            except (ValidationError, ValueError) as exc:
                state.verdicts.append(Verdict(status="rejected", reason=f"bad gist: {validation_message(exc)}"))
                continue
            verdict = await run.verifier.verify(gist, source=run.chunk_text(chunk), require_check=False)
            state.verdicts.append(verdict)
        answer = None if parsed.answer is None else str(parsed.answer)
        return TaskOutcome(answer, None)

    async def finalize(self, final: FinalRound) -> RoundOutcome:
        run, state, cfg = self.run, self.state, self.run.config
        for g in run.context.admitted():
            state.read_ids.append(g.id)
        messages = [
            {"role": "system", "content": prompts.DELM_FINAL_SYSTEM},
            {"role": "user", "content": prompts.DELM_FINAL_USER.format(
                question=run.question, round=final.number, rounds=final.rounds,
                gists=run.context.prompt_view(cfg.final_view_tokens), failed=final.failed_note,
                last=prompts.TEAM_FINALIZE_LAST + "\n" if final.last else "")},
        ]
        run.trace.emit("agent_step", agent=state.agent_id, task=FINAL_TASK_ID, action="combining the verified gists")
        parsed, error = await self._ask_json(
            messages, DelmFinal, role="finalizer",
            tags={"agent": state.agent_id, "task": FINAL_TASK_ID}, example='{"answer": "3"}',
        )
        if parsed is None:
            run.error = f"the finalizer's reply was not valid JSON: {error}"
            return RoundOutcome(None, [])
        added: list[str] = []
        if parsed.tasks and not final.last:
            for goal in parsed.tasks[: max(0, cfg.max_added_tasks - run.added_tasks)]:
                task = add_goal_task(run, goal, created_by=state.agent_id)
                if task is not None:
                    added.append(task.id)
                else:
                    run.trace.emit("agent_step", agent=state.agent_id, task=FINAL_TASK_ID,
                                   action=f"not added: {goal[:60]!r} is not a goal")
            run.count_added_tasks(len(added))
        answer = None if parsed.answer is None else str(parsed.answer)
        return RoundOutcome(answer, added)
