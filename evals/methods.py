"""The methods compared: same model, same tasks, one uniform result.

Each method is a thin adapter over the library, never a second implementation of it:

- `direct`: the benchmark's official-style single prompt (LongBench-v2: the official
  template; OOLONG: the window text followed by the question), the context middle-truncated
  to fit the model's window with room left for the answer.
- `rlm`: one `delm_rlm.RLM` agent with a REPL.
- `delm`: `Team(mode="delm")`, agents sharing verified natural-language gists, no REPL code.
- `orchestrator`: the baseline DeLM argues against, small and honest: a central manager
  splits the context into chunks (the library's deterministic split, same chunk size as the
  team), one worker call (role "sub") per chunk reports on the question, and the manager
  reads every report in its own prompt (role "root") and answers.
- `hybrid`: `Team(mode="hybrid")`, this project: RLM agents with verified shared context.

`run_method(name, task, lm)` runs one of them in its own `lm.session()` and returns a
`MethodResult` whose usage is exactly that session's (every call any agent, worker or
verifier made), whatever happened: a failure is a result with its error, not an exception.
The answer is the method's raw final text; scoring is the official scorer's business.
"""

from __future__ import annotations

import asyncio
import time
from abc import ABC, abstractmethod
from collections.abc import Sequence
from typing import TYPE_CHECKING, Any, ClassVar, Literal

from pydantic import BaseModel, Field

if TYPE_CHECKING:
    from delm_rlm.llm.gateway import LM, Usage
    from tasks.model import Task

METHOD_NAMES: tuple[str, ...] = ("direct", "rlm", "delm", "orchestrator", "hybrid")

Status = Literal["answered", "budget", "error"]


class MethodOptions(BaseModel):
    """Settings shared by every method, so a comparison is one set of knobs."""

    agents: int = Field(default=3, ge=1, description="team size for delm and hybrid")
    max_iterations: int = Field(default=8, ge=1, description="REPL steps per RLM agent (rlm, hybrid)")
    sandbox: str = Field(default="local", description="sandbox kind for rlm and hybrid")
    answer_tokens: int | None = Field(
        default=None,
        ge=16,
        description="tokens kept free for the answer (direct, orchestrator merge); default: "
        "128 for LongBench-v2 (the official harness's max_new_tokens), 256 otherwise",
    )
    report_tokens: int = Field(default=256, ge=16, description="max tokens of one orchestrator worker report")
    chunk_chars: int | None = Field(
        default=None, ge=200, description="split size of the team and the orchestrator; default: the team's (20,000 chars)"
    )
    budget: dict[str, float | int | None] | None = Field(
        default=None, description="per-run Budget fields (max_usd, max_tokens, max_seconds, max_calls)"
    )
    team: dict[str, Any] = Field(default_factory=dict, description="extra Team(...) keyword arguments")
    rlm: dict[str, Any] = Field(default_factory=dict, description="extra RLM(...) keyword arguments")


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
    """What a method's `solve` hands back; run_method adds usage and timing."""

    answer: str | None
    status: Status = "answered"
    error: str | None = None
    detail: dict[str, Any] = Field(default_factory=dict)


class Method(ABC):
    name: ClassVar[str]

    def __init__(self, options: MethodOptions | None = None) -> None:
        self.options = options or MethodOptions()

    @abstractmethod
    async def solve(self, task: Task, lm: LM) -> Outcome: ...


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


# ------------------------------------------------------------------ direct


class Direct(Method):
    """One prompt with the whole (middle-truncated) context, as the official harnesses do."""

    name = "direct"
    # count_tokens is an estimate (about 15% off at worst): keep this share of the window spare.
    SAFETY = 0.12

    async def solve(self, task: Task, lm: LM) -> Outcome:
        from tasks.longbench import truncate_middle

        context = task.get_context()
        answer_tokens = default_answer_tokens(task, self.options)
        frame = self.prompt(task, "")
        room = int(lm.context_window * (1 - self.SAFETY)) - answer_tokens - lm.count_tokens(frame)
        if room < 256:
            raise ValueError(
                f"the model's context window ({lm.context_window} tokens) leaves no room for the "
                f"context after the prompt and {answer_tokens} answer tokens"
            )
        tokens = lm.count_tokens(context)
        truncated = tokens > room
        if truncated:
            context = truncate_middle(context, room, lm.count_tokens)
        completion = await lm.complete(self.prompt(task, context), role="root", max_tokens=answer_tokens)
        return Outcome(
            answer=completion.text,
            detail={"truncated": truncated, "context_tokens_kept": min(tokens, room), "finish_reason": completion.finish_reason},
        )

    @staticmethod
    def prompt(task: Task, context: str) -> str:
        if task.scorer == "longbench":
            from tasks.longbench import PROMPT_TEMPLATE, build_prompt

            if task.raw is not None:
                return build_prompt(task, context=context)
            # A task built by hand: its question is the official question block already.
            head = PROMPT_TEMPLATE[: PROMPT_TEMPLATE.index("$DOC$")]
            return f"{head}{context.strip()}\n</text>\n\n{task.question}"
        return f"{context}\n\n{task.question}"


# ------------------------------------------------------------------ rlm, delm, hybrid


def _from_result(result: Any, **detail: Any) -> Outcome:
    """Map a delm_rlm Result onto an Outcome (usage comes from the session, not from here)."""
    extra = {k: v for k, v in detail.items() if v is not None}
    for name in ("finished_by", "iterations", "store_path", "trace_path"):
        value = getattr(result, name, None)
        if value is not None:
            extra[name] = value
    return Outcome(answer=result.answer, status=result.status, error=result.error, detail=extra)


class RLMMethod(Method):
    """One RLM agent: the context lives in its REPL, never in its prompt."""

    name = "rlm"

    async def solve(self, task: Task, lm: LM) -> Outcome:
        from delm_rlm.rlm import RLM

        agent = RLM(lm, sandbox=self.options.sandbox, max_iterations=self.options.max_iterations, **self.options.rlm)
        result = await agent.run(agent_question(task), task.get_context())
        return _from_result(result)


class TeamMethod(Method):
    mode: ClassVar[str]

    async def solve(self, task: Task, lm: LM) -> Outcome:
        from delm_rlm.team import Team

        kwargs = dict(self.options.team)
        kwargs.setdefault("sandbox", self.options.sandbox)  # delm mode: only the verifier's
        kwargs.setdefault("max_iterations", self.options.max_iterations)
        if self.options.chunk_chars is not None:  # one split size for team and orchestrator
            kwargs.setdefault("chunk_chars", self.options.chunk_chars)
        team = Team(lm, agents=self.options.agents, mode=self.mode, **kwargs)
        result = await team.run(agent_question(task), task.get_context())
        return _from_result(result, gists=len(result.gist_ids) or None)


class DeLMMethod(TeamMethod):
    """The DeLM team: parallel agents, verified natural-language gists, no REPL code."""

    name = "delm"
    mode = "delm"


class HybridMethod(TeamMethod):
    """This project: a team of RLM agents sharing verified context."""

    name = "hybrid"
    mode = "hybrid"


# ------------------------------------------------------------------ orchestrator

# The baseline's own prompts live with it: they are part of the method being compared.
WORKER_PROMPT = """\
You are a worker. A manager split a long text into {total} parts and gave you part {index}. \
Other workers read the other parts; the manager will combine all the reports.

Part {index} of {total}:
<part>
{chunk}
</part>

Question about the whole text: {question}

Report what part {index} contains that helps answer the question: the relevant facts and \
short quotes, and exact counts for this part only where the question needs counting. Do not \
guess about the other parts. Be brief."""

MERGE_PROMPT = """\
You are the manager. You split a long text into {total} parts; each worker read one part \
and reported on the question. Here are all {total} reports.

{reports}

Question: {question}

Combine the reports into one answer to the question about the whole text (for totals, add \
up the parts' counts). Give your final answer in exactly the form the question asks for."""

REPORT_BLOCK = "Report on part {index} of {total}:\n{text}"


class Orchestrator(Method):
    """Central manager: chunk, delegate every chunk, merge every report in one prompt."""

    name = "orchestrator"

    async def solve(self, task: Task, lm: LM) -> Outcome:
        from delm_rlm.chunking import DEFAULT_CHUNK_CHARS, split_corpus
        from delm_rlm.team import TeamConfig
        from tasks.longbench import truncate_middle

        context = task.get_context()
        question = agent_question(task)
        window = lm.context_window_for("sub")
        frame_tokens = lm.count_tokens(WORKER_PROMPT.format(total=99, index=99, chunk="", question=question))
        chars_per_token = len(context) / max(1, lm.count_tokens(context))
        # A chunk must fit a worker's window with its report; past that, the team's size.
        fit_tokens = int(window * (1 - Direct.SAFETY)) - frame_tokens - self.options.report_tokens
        if fit_tokens < 256:
            raise ValueError(f"the model's context window ({window} tokens) is too small for a worker prompt")
        team_chunk = TeamConfig().chunk_chars or DEFAULT_CHUNK_CHARS  # the team's split size
        chunk_chars = min(self.options.chunk_chars or team_chunk, int(fit_tokens * chars_per_token))
        chunks = split_corpus([context], size=max(1, chunk_chars), by="lines")
        texts = [c.text([context]) for c in chunks]
        total = len(texts)

        async def work(i: int, text: str) -> str:
            completion = await lm.complete(
                WORKER_PROMPT.format(total=total, index=i + 1, chunk=text, question=question),
                role="sub",
                max_tokens=self.options.report_tokens,
                tags={"agent": f"worker{i + 1}", "task": f"chunk{i + 1}"},
            )
            return completion.text.strip()

        reports = await asyncio.gather(*(work(i, t) for i, t in enumerate(texts)))

        # The manager must read every report; if together they overflow its window, each is
        # cut in the middle to an equal share (recorded in the detail: it is this design's cost).
        answer_tokens = default_answer_tokens(task, self.options)
        merge_frame = MERGE_PROMPT.format(total=total, reports="", question=question)
        room = int(lm.context_window * (1 - Direct.SAFETY)) - answer_tokens - lm.count_tokens(merge_frame)
        share = max(32, room // max(1, total) - 16)
        cut = sum(1 for r in reports if lm.count_tokens(r) > share)
        if cut:
            reports = [truncate_middle(r, share, lm.count_tokens) if lm.count_tokens(r) > share else r for r in reports]
        blocks = "\n\n".join(REPORT_BLOCK.format(index=i + 1, total=total, text=r) for i, r in enumerate(reports))
        completion = await lm.complete(
            MERGE_PROMPT.format(total=total, reports=blocks, question=question),
            role="root",
            max_tokens=answer_tokens,
            tags={"agent": "manager"},
        )
        return Outcome(answer=completion.text, detail={"chunks": total, "reports_cut": cut})


# ------------------------------------------------------------------ registry and runner

METHODS: dict[str, type[Method]] = {
    "direct": Direct,
    "rlm": RLMMethod,
    "delm": DeLMMethod,
    "orchestrator": Orchestrator,
    "hybrid": HybridMethod,
}


def parse_methods(methods: Sequence[str] | str) -> list[str]:
    """`"direct,rlm"` or `["direct", "rlm"]` -> checked, de-duplicated names in order."""
    items = methods.split(",") if isinstance(methods, str) else list(methods)
    names: list[str] = []
    for item in (m.strip() for m in items):
        if not item:
            continue
        get_method(item)
        if item not in names:
            names.append(item)
    if not names:
        raise ValueError(f"no methods given: choose from {', '.join(METHOD_NAMES)}")
    return names


def get_method(name: str) -> type[Method]:
    try:
        return METHODS[name]
    except KeyError:
        raise ValueError(f"unknown method {name!r}: choose from {', '.join(METHOD_NAMES)}") from None


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
    from delm_rlm.llm.gateway import Budget, BudgetExceeded

    options = options or MethodOptions()
    method = get_method(name)(options)
    session = lm.session(Budget(**options.budget) if options.budget else None)
    try:
        context_tokens: int | None = lm.count_tokens(task.get_context())
    except Exception:  # a missing context file is reported by solve() below
        context_tokens = None
    t0 = time.monotonic()
    try:
        if timeout_s is not None:
            outcome = await asyncio.wait_for(method.solve(task, session), timeout_s)
        else:
            outcome = await method.solve(task, session)
    except BudgetExceeded as exc:
        outcome = Outcome(answer=exc.partial_answer, status="budget", error=str(exc))
    except TimeoutError:
        outcome = Outcome(answer=None, status="error", error=f"timed out after {timeout_s:g} s")
    except Exception as exc:  # any failure of one task becomes that task's error
        outcome = Outcome(answer=None, status="error", error=f"{type(exc).__name__}: {exc}")
    seconds = time.monotonic() - t0
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
