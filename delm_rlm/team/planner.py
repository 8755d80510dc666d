"""A run's first tasks. The scout (team/scout.py) decides the plan first: "whole" is one task
over the whole corpus; "split" is one task per document or line-aligned chunk
(`delm_rlm.chunking`); `plan="model"` asks the model for subtasks (an empty plan falls back
to the split). The trace's `plan_chosen` event says which plan and why.

The plan also sets the verifier's agreement stage (verify/agreement.py: the chunk tasks whose
partials must agree, the coverage tolerance, off for documents that must be read) and the
labels its empty-result hint names; `restore_plan` sets both again on a resumed run."""

from __future__ import annotations

import re
from dataclasses import replace
from typing import Any

from delm_rlm import prompts
from delm_rlm.chunking import Chunk, team_split
from delm_rlm.team.run import TeamRun
from delm_rlm.team.scout import NeedsReading, PlanChoice, choose_plan, stated_values
from delm_rlm.verify import AgreementRules

WHOLE_GOAL = "Answer the team question over the whole corpus (chunk == context) with one program."


async def plan_tasks(run: TeamRun, *, runs_code: bool, needs_reading: NeedsReading | None = None) -> None:
    """Choose the plan, queue the run's first tasks, store which chunk each split task covers."""
    cfg = run.config
    choice = choose_plan(run.question, run.corpus, runs_code=runs_code, needs_reading=needs_reading)
    if cfg.plan != "auto":
        asked = "split" if cfg.plan == "model" else cfg.plan
        choice = replace(choice, plan=asked,
                         reason=f"plan={cfg.plan!r} was asked for (the scout would choose "
                                f"{choice.plan}: {choice.reason})")
    if choice.plan == "whole":
        task = run.queue.add(WHOLE_GOAL, created_by="scout")
        record_plan(run, choice, {}, whole_task=task.id)
        return
    goals = await model_plan(run) if cfg.plan == "model" else []
    if goals:
        for goal in goals:
            run.queue.add(goal, created_by="planner")
        record_plan(run, choice, {})
        return
    record_plan(run, choice, split_tasks(run, choice))


def labelling_step(choice: PlanChoice) -> str:
    """What a chunk task must do first when no record states what the question asks about
    (the scout's `labelling`): label the records with classify, over the labels it found."""
    if not choice.labelling:
        return ""
    labels = ", ".join(repr(label) for label in choice.labels) if len(choice.labels) >= 2 else None
    return " " + prompts.TEAM_LABELLING_STEP.format(
        labels=f"[{labels}]" if labels else "[every label the question names]")


def split_tasks(run: TeamRun, choice: PlanChoice) -> dict[str, dict[str, Any]]:
    """Queue one task per chunk; the chunks by task id (as stored in the run's meta)."""
    cfg = run.config
    split = team_split(run.docs, chunk_chars=cfg.chunk_chars, chunk_tokens=cfg.chunk_tokens, split_by=cfg.split_by,
                       max_tasks=cfg.max_tasks, count_tokens=run.lm.count_tokens, table=run.corpus.table)
    chunks: dict[str, dict[str, Any]] = {}
    step = labelling_step(choice)
    for chunk in split:
        goal = (
            f"Work on {chunk.describe(len(split), run.corpus.names)} for the team question; "
            f"propose your chunk's result as a PARTIAL gist.{step}"
        )
        task = run.queue.add(goal, created_by="split")
        chunks[task.id] = chunk.model_dump()
    return chunks


def record_plan(run: TeamRun, choice: PlanChoice, chunks: dict[str, dict[str, Any]],
                whole_task: str | None = None) -> None:
    """Store the plan in the run's meta, say it in the trace, and set the run up for it."""
    plan = {"plan": choice.plan, "reason": choice.reason, "whole_task": whole_task,
            "labels": choice.labels, "reading": choice.reading, "labelling": choice.labelling}
    run.store.set_meta(chunks=chunks, plan=plan)
    run.trace.emit("plan_chosen", agent="scout", plan=choice.plan, reason=choice.reason, signals=choice.signals,
                   whole_task=whole_task, tasks=len(chunks) or (1 if whole_task else None))
    restore_plan(run)


def restore_plan(run: TeamRun) -> None:
    """Set the run's plan, chunks, agreement stage and hint labels from its meta."""
    run.chunks = {k: Chunk.model_validate(v) for k, v in (run.store.get_meta("chunks") or {}).items()}
    plan = run.store.get_meta("plan") or {}
    run.plan = plan.get("plan") or "split"
    run.whole_task = plan.get("whole_task")
    run.labelling = bool(plan.get("labelling"))
    run.verifier.label_hint = list(plan.get("labels") or [])
    tolerance = None if plan.get("reading") else run.config.coverage_tolerance
    labelling = run.labelling and not plan.get("reading")
    run.verifier.agreement = AgreementRules(
        run.context, chunk_tasks=set(run.chunks), tolerance=tolerance,
        labels=list(plan.get("labels") or []) if labelling else (), field_values=stated_values if labelling else None,
    )
    if run.methods is not None:
        run.methods.agreement = run.verifier.agreement


def fall_back_to_split(run: TeamRun) -> None:
    """A whole plan whose program was not verified: split the corpus after all."""
    reason = f"the whole-corpus program was not verified ({run.replan}): splitting the corpus"
    previous = run.store.get_meta("plan") or {}
    choice = PlanChoice("split", reason, {"after": "whole"}, list(previous.get("labels") or []),
                        bool(previous.get("reading")), bool(previous.get("labelling")))
    run.replan = None
    record_plan(run, choice, split_tasks(run, choice))


async def model_plan(run: TeamRun) -> list[str]:
    """The model's numbered subtasks for the question (at most `max_plan_tasks`); [] when
    its reply has none."""
    cfg = run.config
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
