"""The ways to answer one question over one corpus, by name: one registry for `delm-rlm ask`
and for the evaluation harness (`evals.methods` adapts a benchmark Task to it).

Each method is a thin adapter over the library, never a second implementation of it:

- `direct`: one call with the whole context, middle-truncated to fit the model's window with
  room left for the answer (the question's `direct_prompt` lays it out; by default the
  context, then the question).
- `rlm`: one `delm_rlm.rlm.RLM` agent with a REPL.
- `delm`: `Team(mode="delm")`, agents sharing verified natural-language gists, no REPL code.
- `orchestrator`: the baseline DeLM argues against, small and honest: a central manager
  splits the context into chunks (the library's deterministic split, same chunk size as the
  team), one worker call (role "sub") per chunk reports on the question, and the manager
  reads every report in its own prompt (role "root") and answers.
- `hybrid`: `Team(mode="hybrid")`, this project: RLM agents with verified shared context.

`get_method(name)(options).answer(question, lm, budget=..., run_dir=..., subscribers=...)`
returns a `MethodRun`: the run's `Result` and what the method reports about how it worked.
With `run_dir` the run's files go there (`trace.jsonl`; the team adds its store and corpus)
and `subscribers` see every trace event.
"""

from __future__ import annotations

import asyncio
import time
from abc import ABC, abstractmethod
from collections.abc import Callable, Sequence
from contextlib import nullcontext
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any, ClassVar

from pydantic import BaseModel, Field

from delm_rlm import prompts
from delm_rlm.corpus import Corpus
from delm_rlm.errors import BudgetExceeded, ConfigError

if TYPE_CHECKING:
    from delm_rlm.llm import LM, Budget
    from delm_rlm.result import Result
    from delm_rlm.state.protocol import ClassificationRecord
    from delm_rlm.trace import Trace, TraceEvent

METHOD_NAMES: tuple[str, ...] = ("direct", "rlm", "delm", "orchestrator", "hybrid")
TRACE_FILE = "trace.jsonl"  # the name the team gives its run's trace, for every method alike
DEFAULT_ANSWER_TOKENS = 256

TraceSubscriber = Callable[["TraceEvent"], None]


class MethodOptions(BaseModel):
    """Settings shared by every method, so a comparison is one set of knobs."""

    agents: int = Field(default=3, ge=1, description="team size for delm and hybrid")
    max_iterations: int | None = Field(
        default=8, ge=1, description="REPL steps per RLM agent (rlm, hybrid); None: the library's own default"
    )
    sandbox: str = Field(default="local", description="sandbox kind for rlm and hybrid")
    answer_tokens: int | None = Field(
        default=None,
        ge=16,
        description="tokens kept free for the answer (direct, orchestrator merge); default 256 "
        "(evals: 128 for LongBench-v2, the official harness's max_new_tokens)",
    )
    report_tokens: int = Field(default=256, ge=16, description="max tokens of one orchestrator worker report")
    chunk_chars: int | None = Field(
        default=None, ge=200, description="split size of the team and the orchestrator; default: the team's (20,000 chars)"
    )
    budget: dict[str, float | int | None] | None = Field(
        default=None, description="per-run Budget fields (max_usd, max_tokens, max_seconds, max_calls); "
        "evals.run_method applies them to the run's session"
    )
    team: dict[str, Any] = Field(default_factory=dict, description="extra Team(...) keyword arguments")
    rlm: dict[str, Any] = Field(default_factory=dict, description="extra RLM(...) keyword arguments")


@dataclass(frozen=True)
class Question:
    """What a method is asked: the question, the corpus it is about, and (for `direct`) how
    the one prompt lays out the context and the question."""

    text: str
    corpus: Corpus
    direct_prompt: Callable[[str], str] | None = None

    @classmethod
    def of(cls, text: str, context: Corpus | str | Sequence[str] | Any, **kwargs: Any) -> Question:
        return cls(text, Corpus.coerce(context), **kwargs)

    def prompt_with(self, context: str) -> str:
        """The `direct` prompt over ``context`` (the corpus text, perhaps truncated)."""
        if self.direct_prompt is not None:
            return self.direct_prompt(context)
        return prompts.DIRECT_PROMPT.format(context=context, question=self.text)


@dataclass
class MethodRun:
    """What a method hands back: the run's Result, and what the method reports about how it
    worked (truncation, chunk count, how the answer was reached) for comparisons."""

    result: Result
    detail: dict[str, Any] = field(default_factory=dict)
    # Every classify() call the run's agents made, items and labels (what label audits read).
    classifications: list[ClassificationRecord] = field(default_factory=list)


class Method(ABC):
    name: ClassVar[str]

    def __init__(self, options: MethodOptions | None = None) -> None:
        self.options = options or MethodOptions()

    @abstractmethod
    async def answer(
        self,
        question: Question,
        lm: LM,
        *,
        budget: Budget | None = None,
        run_dir: Path | None = None,
        subscribers: Sequence[TraceSubscriber] = (),
    ) -> MethodRun: ...

    def answer_tokens(self) -> int:
        return self.options.answer_tokens if self.options.answer_tokens is not None else DEFAULT_ANSWER_TOKENS


def result_detail(result: Result, **detail: Any) -> dict[str, Any]:
    """A run's detail from its Result: `detail` and how the run went, where known."""
    extra = {k: v for k, v in detail.items() if v is not None}
    for name in ("finished_by", "iterations", "store_path", "trace_path"):
        value = getattr(result, name, None)
        if value is not None:
            extra[name] = value
    return extra


def stored_classifications(store_target: str | None) -> list[ClassificationRecord]:
    """The classification log of the run store a Result names (none without one)."""
    if store_target is None:
        return []
    from delm_rlm.state.opener import open_state

    store = open_state(store_target)
    try:
        return store.classifications()
    finally:
        store.close()


def _open_trace(run_dir: Path | None, subscribers: Sequence[TraceSubscriber]) -> Any:
    """The run's trace file in run_dir with the subscribers attached; no trace without run_dir."""
    if run_dir is None:
        return nullcontext(None)
    from delm_rlm.trace import Trace

    trace = Trace(Path(run_dir) / TRACE_FILE)
    for subscriber in subscribers:
        trace.subscribe(subscriber)
    return trace


class _OneShotMethod(Method):
    """A method made of plain model calls (no agents): it keeps its own session, trace and
    Result, the way an agent does, and a budget stop is a result, not an exception."""

    async def answer(
        self,
        question: Question,
        lm: LM,
        *,
        budget: Budget | None = None,
        run_dir: Path | None = None,
        subscribers: Sequence[TraceSubscriber] = (),
    ) -> MethodRun:
        from delm_rlm.result import Result
        from delm_rlm.trace import observe_model_calls

        session = lm.session(budget)
        with _open_trace(run_dir, subscribers) as trace:
            if trace is not None:
                observe_model_calls(session, trace)
                trace.emit("run_started", question=question.text, method=self.name, corpus=question.corpus.describe(),
                           config={"model": lm.model_for("root"), "budget": budget.model_dump() if budget else None})
            started = time.monotonic()
            detail: dict[str, Any] = {}
            try:
                answer, detail = await self.complete(question, session)
                status, error = "answered", None
            except BudgetExceeded as exc:
                if trace is not None:
                    trace.emit("budget_exceeded", limit=exc.limit, used=exc.used, allowed=exc.allowed)
                answer, status, error, detail = exc.partial_answer, "budget", str(exc), {}
            usage = session.usage.total
            if trace is not None:
                trace.emit("run_finished", status=status, answer=answer, usage=usage)
            result = Result(answer=answer, status=status, error=error, usage=usage,  # type: ignore[arg-type]
                            usage_by_role=dict(session.usage.by_role),
                            trace_path=str(trace.path) if trace is not None else None,
                            seconds=round(time.monotonic() - started, 3), method=self.name)
        return MethodRun(result, detail)

    @abstractmethod
    async def complete(self, question: Question, lm: LM) -> tuple[str, dict[str, Any]]:
        """The answer text and the run's detail."""


# ------------------------------------------------------------------ direct


class Direct(_OneShotMethod):
    """One prompt with the whole (middle-truncated) context, as the official harnesses do."""

    name = "direct"
    # count_tokens is an estimate (about 15% off at worst): keep this share of the window spare.
    SAFETY = 0.12

    async def complete(self, question: Question, lm: LM) -> tuple[str, dict[str, Any]]:
        context = question.corpus.text
        answer_tokens = self.answer_tokens()
        room = int(lm.context_window * (1 - self.SAFETY)) - answer_tokens - lm.count_tokens(question.prompt_with(""))
        if room < 256:
            raise ConfigError(
                f"the model's context window ({lm.context_window} tokens) leaves no room for the "
                f"context after the prompt and {answer_tokens} answer tokens"
            )
        tokens = lm.count_tokens(context)
        truncated = tokens > room
        if truncated:
            context = prompts.truncate_middle_tokens(context, room, lm.count_tokens)
        completion = await lm.complete(question.prompt_with(context), role="root", max_tokens=answer_tokens)
        detail = {"truncated": truncated, "context_tokens_kept": min(tokens, room), "finish_reason": completion.finish_reason}
        return completion.text, detail


# ------------------------------------------------------------------ rlm, delm, hybrid


class RLMMethod(Method):
    """One RLM agent: the context lives in its REPL, never in its prompt."""

    name = "rlm"

    async def answer(
        self,
        question: Question,
        lm: LM,
        *,
        budget: Budget | None = None,
        run_dir: Path | None = None,
        subscribers: Sequence[TraceSubscriber] = (),
    ) -> MethodRun:
        from delm_rlm.rlm import RLM

        kwargs: dict[str, Any] = {"sandbox": self.options.sandbox}
        if self.options.max_iterations is not None:
            kwargs["max_iterations"] = self.options.max_iterations
        with _open_trace(run_dir, subscribers) as trace:
            if trace is not None:
                kwargs["trace"] = trace
            agent = RLM(lm, **kwargs, **self.options.rlm)
            result = await agent.run(question.text, question.corpus.value, budget=budget)
        return MethodRun(result, result_detail(result), classifications=agent.classifications.records())


class TeamMethod(Method):
    mode: ClassVar[str]

    async def answer(
        self,
        question: Question,
        lm: LM,
        *,
        budget: Budget | None = None,
        run_dir: Path | None = None,
        subscribers: Sequence[TraceSubscriber] = (),
    ) -> MethodRun:
        from delm_rlm.team import Team

        kwargs = dict(self.options.team)
        kwargs.setdefault("sandbox", self.options.sandbox)  # delm mode: only the verifier's
        if self.options.max_iterations is not None:
            kwargs.setdefault("max_iterations", self.options.max_iterations)
        if self.options.chunk_chars is not None:  # one split size for team and orchestrator
            kwargs.setdefault("chunk_chars", self.options.chunk_chars)
        for name, value in (("budget", budget), ("run_dir", run_dir), ("trace_subscribers", list(subscribers) or None)):
            if value is not None:
                kwargs.setdefault(name, value)
        team = Team(lm, agents=self.options.agents, mode=self.mode, **kwargs)
        result = await team.run(question.text, question.corpus)
        return MethodRun(result, result_detail(result, gists=len(result.gist_ids) or None),
                         classifications=stored_classifications(result.store_path))


class DeLMMethod(TeamMethod):
    """The DeLM team: parallel agents, verified natural-language gists, no REPL code."""

    name = "delm"
    mode = "delm"


class HybridMethod(TeamMethod):
    """This project: a team of RLM agents sharing verified context."""

    name = "hybrid"
    mode = "hybrid"


# ------------------------------------------------------------------ orchestrator


class Orchestrator(_OneShotMethod):
    """Central manager: chunk, delegate every chunk, merge every report in one prompt."""

    name = "orchestrator"

    async def complete(self, question: Question, lm: LM) -> tuple[str, dict[str, Any]]:
        from delm_rlm.chunking import DEFAULT_CHUNK_CHARS, split_corpus
        from delm_rlm.team import TeamConfig

        context = question.corpus.text
        text = question.text
        window = lm.context_window_for("sub")
        frame_tokens = lm.count_tokens(prompts.ORCHESTRATOR_WORKER.format(total=99, index=99, chunk="", question=text))
        chars_per_token = len(context) / max(1, lm.count_tokens(context))
        # A chunk must fit a worker's window with its report; past that, the team's size.
        fit_tokens = int(window * (1 - Direct.SAFETY)) - frame_tokens - self.options.report_tokens
        if fit_tokens < 256:
            raise ConfigError(f"the model's context window ({window} tokens) is too small for a worker prompt")
        team_chunk = TeamConfig().chunk_chars or DEFAULT_CHUNK_CHARS  # the team's split size
        chunk_chars = min(self.options.chunk_chars or team_chunk, int(fit_tokens * chars_per_token))
        chunks = split_corpus([context], size=max(1, chunk_chars), by="lines")
        texts = [c.text([context]) for c in chunks]
        total = len(texts)

        async def work(i: int, part: str) -> str:
            completion = await lm.complete(
                prompts.ORCHESTRATOR_WORKER.format(total=total, index=i + 1, chunk=part, question=text),
                role="sub",
                max_tokens=self.options.report_tokens,
                tags={"agent": f"worker{i + 1}", "task": f"chunk{i + 1}"},
            )
            return completion.text.strip()

        reports = await asyncio.gather(*(work(i, t) for i, t in enumerate(texts)))

        # The manager must read every report; if together they overflow its window, each is
        # cut in the middle to an equal share (recorded in the detail: it is this design's cost).
        answer_tokens = self.answer_tokens()
        merge_frame = prompts.ORCHESTRATOR_MERGE.format(total=total, reports="", question=text)
        room = int(lm.context_window * (1 - Direct.SAFETY)) - answer_tokens - lm.count_tokens(merge_frame)
        share = max(32, room // max(1, total) - 16)
        cut = sum(1 for r in reports if lm.count_tokens(r) > share)
        if cut:
            reports = [prompts.truncate_middle_tokens(r, share, lm.count_tokens) if lm.count_tokens(r) > share else r
                       for r in reports]
        blocks = "\n\n".join(prompts.ORCHESTRATOR_REPORT.format(index=i + 1, total=total, text=r) for i, r in enumerate(reports))
        completion = await lm.complete(
            prompts.ORCHESTRATOR_MERGE.format(total=total, reports=blocks, question=text),
            role="root",
            max_tokens=answer_tokens,
            tags={"agent": "manager"},
        )
        return completion.text, {"chunks": total, "reports_cut": cut}


# ------------------------------------------------------------------ registry

METHODS: dict[str, type[Method]] = {
    "direct": Direct,
    "rlm": RLMMethod,
    "delm": DeLMMethod,
    "orchestrator": Orchestrator,
    "hybrid": HybridMethod,
}


def get_method(name: str) -> type[Method]:
    try:
        return METHODS[name]
    except KeyError:
        raise ConfigError(f"unknown method {name!r}: choose from {', '.join(METHOD_NAMES)}") from None


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
        raise ConfigError(f"no methods given: choose from {', '.join(METHOD_NAMES)}")
    return names


__all__ = [
    "DEFAULT_ANSWER_TOKENS",
    "METHODS",
    "METHOD_NAMES",
    "TRACE_FILE",
    "DeLMMethod",
    "Direct",
    "HybridMethod",
    "Method",
    "MethodOptions",
    "MethodRun",
    "Orchestrator",
    "Question",
    "RLMMethod",
    "TeamMethod",
    "get_method",
    "parse_methods",
    "result_detail",
]
