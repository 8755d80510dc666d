"""A run's first tasks: one per document or line-aligned chunk (`delm_rlm.chunking`), or the
subtasks the model proposes (`plan="model"`; an empty plan falls back to the split)."""

from __future__ import annotations

import re
from typing import Any

from delm_rlm import prompts
from delm_rlm.chunking import DEFAULT_CHUNK_CHARS, split_corpus
from delm_rlm.team.run import TeamRun


async def plan_tasks(run: TeamRun) -> None:
    """Queue the run's first tasks; store which chunk each split task covers."""
    cfg = run.config
    goals: list[str] = []
    if cfg.plan == "model":
        goals = await model_plan(run)
    chunks: dict[str, dict[str, Any]] = {}
    if goals:
        for goal in goals:
            run.queue.add(goal, created_by="planner")
    else:
        if cfg.chunk_tokens is not None:
            split = split_corpus(run.docs, size=cfg.chunk_tokens, unit="tokens",
                                 by=cfg.split_by, count_tokens=run.lm.count_tokens)
        else:
            split = split_corpus(run.docs, size=cfg.chunk_chars or DEFAULT_CHUNK_CHARS, by=cfg.split_by)
        for chunk in split:
            goal = (
                f"Work on {chunk.describe(len(split))} for the team question; "
                "propose your chunk's result as a PARTIAL gist."
            )
            task = run.queue.add(goal, created_by="split")
            chunks[task.id] = chunk.model_dump()
    run.store.set_meta(chunks=chunks)


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
