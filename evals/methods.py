"""The methods compared, on benchmark tasks: same model, same tasks, one uniform result.

The methods themselves (`direct`, `rlm`, `delm`, `orchestrator`, `hybrid`) are the library's
registry, `delm_rlm.methods`, the one `delm-rlm ask` uses too; this module adapts a benchmark
`Task` to it: the question an agent sees, the corpus, the official `direct` prompt
(LongBench-v2's template) and the benchmark's answer length.

`run_method(name, task, lm)` runs one of them in its own `lm.session()` and returns a
`MethodResult` whose usage is exactly that session's (every call any agent, worker or
verifier made), whatever happened: a failure is a result with its error, not an exception.
The answer is the method's raw final text; scoring is the official scorer's business.
"""

from __future__ import annotations

import asyncio
import time
from functools import partial
from pathlib import Path
from typing import TYPE_CHECKING, Any, Literal

from pydantic import BaseModel, Field

from delm_rlm import prompts
from delm_rlm.errors import BudgetExceeded
from delm_rlm.methods import (
    METHOD_NAMES,
    METHODS,
    DeLMMethod,
    Direct,
    HybridMethod,
    Method,
    MethodOptions,
    Orchestrator,
    Question,
    RLMMethod,
    TeamMethod,
    get_method,
    parse_methods,
    stored_classifications,
)
from evals.evidence import answer_evidence
from evals.labels import task_label_accuracy

if TYPE_CHECKING:
    from delm_rlm.llm import LM, Usage
    from tasks.model import Task

__all__ = [
    "MERGE_PROMPT",
    "METHODS",
    "METHOD_NAMES",
    "REPORT_BLOCK",
    "WORKER_PROMPT",
    "DeLMMethod",
    "Direct",
    "HybridMethod",
    "Method",
    "MethodOptions",
    "MethodResult",
    "MethodUsage",
    "Orchestrator",
    "Outcome",
    "RLMMethod",
    "TeamMethod",
    "agent_question",
    "default_answer_tokens",
    "get_method",
    "parse_methods",
    "question_for",
    "run_method",
    "solve",
]

# The orchestrator's prompts, under the names the benchmarks first imported them by.
WORKER_PROMPT = prompts.ORCHESTRATOR_WORKER
MERGE_PROMPT = prompts.ORCHESTRATOR_MERGE
REPORT_BLOCK = prompts.ORCHESTRATOR_REPORT

Status = Literal["answered", "budget", "error"]


class MethodUsage(BaseModel):
    input_tokens: int = 0
    output_tokens: int = 0
    calls: int = 0
    dollars: float | None = 0.0  # None when some call had no known price
    seconds: float = 0.0  # wall clock (for a role: model seconds)

    @classmethod
    def of(cls, usage: Usage, seconds: float | None = None) -> MethodUsage:
        return cls(
            input_tokens=usage.input_tokens,
            output_tokens=usage.output_tokens,
            calls=usage.calls,
            dollars=usage.cost_usd,
            seconds=usage.seconds if seconds is None else seconds,
        )


class MethodResult(BaseModel):
    """What one method did on one task."""

    method: str
    answer: str | None
    status: Status
    error: str | None = None
    usage: MethodUsage = Field(default_factory=MethodUsage)
    usage_by_role: dict[str, MethodUsage] = Field(default_factory=dict)
    context_tokens: int | None = None  # the task's context, by the LM's token counter
    detail: dict[str, Any] = Field(default_factory=dict)  # e.g. truncation, chunk count


class Outcome(BaseModel):
    """What a method did on a task, before run_method adds usage and timing."""

    answer: str | None
    status: Status = "answered"
    error: str | None = None
    detail: dict[str, Any] = Field(default_factory=dict)


# ------------------------------------------------------------------ what each task asks


def agent_question(task: Task) -> str:
    """The question as an agent (or worker) sees it: everything the official prompt asks
    except the document. Both loaders put exactly that in `task.question` (LongBench-v2: the
    official question block with choices and answer format; OOLONG: the row's question,
    which carries its own answer format)."""
    return task.question


def default_answer_tokens(task: Task, options: MethodOptions) -> int:
    if options.answer_tokens is not None:
        return options.answer_tokens
    return 128 if task.scorer == "longbench" else 256


def question_for(task: Task) -> Question:
    """The task as a method's question: its agent question over its context, with the
    benchmark's own `direct` prompt (LongBench-v2: the official template)."""
    direct_prompt = None
    if task.scorer == "longbench":
        from tasks.longbench import direct_prompt as longbench_prompt

        direct_prompt = partial(longbench_prompt, task)
    return Question.of(agent_question(task), task.get_context(), direct_prompt=direct_prompt)


async def solve(name: str, task: Task, lm: LM, options: MethodOptions | None = None,
                run_dir: Path | None = None) -> Outcome:
    """Method `name` on `task` through `lm` as it is (no session of its own, no timeout).
    The run writes its directory `run_dir` (None: a new one under
    `delm_rlm.runs.default_runs_dir()`); the detail says where."""
    from delm_rlm.runs import new_run_dir

    options = options or MethodOptions()
    method = get_method(name)(options.model_copy(update={"answer_tokens": default_answer_tokens(task, options)}))
    run_dir = run_dir if run_dir is not None else new_run_dir()
    question = question_for(task)
    run = await method.answer(question, lm, run_dir=run_dir)
    detail = {**run.detail, "run_dir": str(run_dir)}
    if task.scorer == "longbench":  # reading questions: did the answer rest on text it read?
        evidence = answer_evidence(name, run.result.trace, question.corpus.docs)
        if evidence is not None:
            detail["evidence"] = evidence
    labels = task_label_accuracy(task, run.classifications)
    if labels is not None:  # the run labelled with classify(): how right those labels were
        detail["labels"] = labels
    return Outcome(answer=run.result.answer, status=run.result.status, error=run.result.error, detail=detail)


def stopped_run_detail(task: Task, run_dir: Path) -> dict[str, Any]:
    """What a run cut off by its timeout left to measure: its directory, and how right the
    labels its classify calls had given were (a team's store keeps its classification log)."""
    from delm_rlm.team.rundir import STORE_FILE

    detail: dict[str, Any] = {"run_dir": str(run_dir)} if run_dir.exists() else {}
    store = run_dir / STORE_FILE
    if store.exists():
        labels = task_label_accuracy(task, stored_classifications(str(store)))
        if labels is not None:
            detail["labels"] = labels
    return detail


# ------------------------------------------------------------------ runner


async def run_method(
    name: str,
    task: Task,
    lm: LM,
    *,
    options: MethodOptions | None = None,
    timeout_s: float | None = None,
) -> MethodResult:
    """Run method `name` on `task` in a fresh session of `lm`; never raises for a task's
    failure (the error is in the result), only for an unknown method name."""
    from delm_rlm.llm import Budget

    options = options or MethodOptions()
    get_method(name)  # an unknown name is the caller's error, raised before anything runs
    session = lm.session(Budget(**options.budget) if options.budget else None)
    try:
        context_tokens: int | None = lm.count_tokens(task.get_context())
    except Exception:  # a missing context file is reported by solve() below
        context_tokens = None
    from delm_rlm.runs import new_run_dir

    run_dir = new_run_dir()
    t0 = time.monotonic()
    ended: float | None = None  # set where the run's time ends before this function returns
    try:
        if timeout_s is not None:
            outcome = await asyncio.wait_for(solve(name, task, session, options, run_dir), timeout_s)
        else:
            outcome = await solve(name, task, session, options, run_dir)
    except BudgetExceeded as exc:
        outcome = Outcome(answer=exc.partial_answer, status="budget", error=str(exc))
    except TimeoutError:
        outcome = Outcome(answer=None, status="error", error=f"timed out after {timeout_s:g} s")
        ended = time.monotonic()
        # Calls the cancelled run left going are drained here, outside its and the next task's
        # time (their tokens stay this task's: its method spent them).
        drained = await session.settle(timeout=max(60.0, timeout_s or 0.0))
        outcome.detail["drained_s"] = round(drained, 1)
        outcome.detail["still_in_flight"] = session.in_flight
        outcome.detail.update(stopped_run_detail(task, run_dir))
    except Exception as exc:  # any failure of one task becomes that task's error
        outcome = Outcome(answer=None, status="error", error=f"{type(exc).__name__}: {exc}")
    seconds = (ended or time.monotonic()) - t0
    ledger = session.usage
    return MethodResult(
        method=name,
        answer=outcome.answer,
        status=outcome.status,
        error=outcome.error,
        usage=MethodUsage.of(ledger.total, seconds=round(seconds, 3)),
        usage_by_role={role: MethodUsage.of(u) for role, u in ledger.by_role.items()},
        context_tokens=context_tokens,
        detail=outcome.detail,
    )
