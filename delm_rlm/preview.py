"""What a run will cost, known before it starts: tasks, estimated tokens and dollars, the plan.

`preview_cost(method, lm, corpus, ...)` splits the corpus the way the team will
(`chunking.team_split`) and estimates input tokens as the corpus once (what the agents'
code and their `classify` / `llm_query` calls may read of it) plus a prompt overhead per
task (system prompt, task message and REPL history, a few model calls per task) times the
tasks, and output tokens per call. It is an estimate, stated as one: a run reads more when
agents retry or classify line by line, less when code alone answers. Dollars come from the
model's price (`LM.price`); unknown when the model has none.

`CostPreview.needs_confirmation(max_tokens=..., max_usd=...)` says why a run is above the
threshold a caller asks a person to confirm (the CLI asks on a terminal; `--yes` skips it).
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

from delm_rlm import prompts
from delm_rlm.chunking import DEFAULT_MAX_TASKS, Chunk, task_label, team_split
from delm_rlm.corpus import Corpus

if TYPE_CHECKING:
    from delm_rlm.llm import LM, Budget

# Above either, the CLI asks before it starts (a terminal) or refuses without --yes.
CONFIRM_TOKENS = 2_000_000
CONFIRM_USD = 1.00
# Model calls an agent makes on one task (look, compute and propose, a retry now and then)
# and tokens a reply has: rough means of the team runs in the README's benchmarks.
CALLS_PER_TASK = 3
OUTPUT_TOKENS_PER_CALL = 250
# What a team agent's task message, the gist view and the REPL history add per call.
TASK_MESSAGE_TOKENS = 600
# Past this size a corpus is measured at ~4 characters per token (counting it all is slow).
EXACT_COUNT_CHARS = 2_000_000
TEAM_METHODS = ("hybrid", "delm")


@dataclass
class CostPreview:
    """The expected size of one run (see the module docstring for how it is estimated)."""

    method: str
    model: str
    agents: int
    tasks: int
    corpus_tokens: int
    prompt_tokens_per_task: int
    input_tokens: int
    output_tokens: int
    usd: float | None
    chunks: list[Chunk] = field(default_factory=list)
    plan: list[str] = field(default_factory=list)
    budget: Any = None  # a delm_rlm.llm.Budget

    @property
    def price_known(self) -> bool:
        return self.usd is not None

    def lines(self) -> list[str]:
        """The preview as a person reads it."""
        usd = "unknown (the model has no price: pass --price IN,OUT per million tokens)" if self.usd is None \
            else f"${self.usd:,.4f}"
        out = [
            f"plan: {self.plan[0]}" if self.plan else f"plan: {self.method}",
            *(f"  {line}" for line in self.plan[1:]),
            f"tasks: {self.tasks:,}",
            f"input tokens (estimate): ~{self.input_tokens:,} = corpus {self.corpus_tokens:,} "
            f"+ ~{self.prompt_tokens_per_task:,} prompt tokens per task x {self.tasks:,}",
            f"output tokens (estimate): ~{self.output_tokens:,}",
            f"cost (estimate): {usd} with {self.model}",
        ]
        if self.budget is not None and not self.budget.unlimited:
            limits = [f"{name.removeprefix('max_')} {value:g}" for name, value in self.budget.model_dump().items()
                      if value is not None]
            out.append(f"budget: {', '.join(limits)} (the run stops there; it can be resumed)")
        return out

    def needs_confirmation(self, *, max_tokens: int | None = None, max_usd: float | None = None) -> str | None:
        """Why this run is above the threshold (default CONFIRM_TOKENS, CONFIRM_USD), or None."""
        max_tokens = CONFIRM_TOKENS if max_tokens is None else max_tokens
        max_usd = CONFIRM_USD if max_usd is None else max_usd
        reasons = []
        if self.input_tokens > max_tokens:
            reasons.append(f"~{self.input_tokens:,} input tokens (over {max_tokens:,})")
        if self.usd is not None and self.usd > max_usd:
            reasons.append(f"~${self.usd:,.2f} (over ${max_usd:,.2f})")
        return " and ".join(reasons) or None

    def as_dict(self) -> dict[str, Any]:
        return {
            "method": self.method, "model": self.model, "agents": self.agents, "tasks": self.tasks,
            "corpus_tokens": self.corpus_tokens, "prompt_tokens_per_task": self.prompt_tokens_per_task,
            "input_tokens": self.input_tokens, "output_tokens": self.output_tokens, "usd": self.usd,
            "estimate": True, "plan": self.plan,
        }


def preview_cost(
    method: str,
    lm: LM,
    corpus: Corpus,
    *,
    agents: int = 2,
    chunk_chars: int | None = None,
    chunk_tokens: int | None = None,
    split_by: str | None = None,
    max_tasks: int | None = DEFAULT_MAX_TASKS,
    max_iterations: int | None = None,
    budget: Budget | None = None,
) -> CostPreview:
    """The expected tasks, tokens and dollars of `method` over `corpus` with `lm`; team
    settings left None are the team's defaults."""
    model = lm.model_for("root")
    corpus_tokens = _corpus_tokens(lm, corpus)
    chunks: list[Chunk] = []
    if method in TEAM_METHODS:
        from delm_rlm.team.config import TeamConfig

        defaults = TeamConfig()
        chunks = team_split(
            corpus.docs, chunk_chars=chunk_chars if chunk_chars is not None else defaults.chunk_chars,
            chunk_tokens=chunk_tokens if chunk_tokens is not None else defaults.chunk_tokens,
            split_by=split_by or defaults.split_by,  # type: ignore[arg-type]
            max_tasks=max_tasks, count_tokens=lm.count_tokens, table=corpus.table,
        )
        tasks = len(chunks) + 1  # the finalizer's round is a task of its own
        calls = CALLS_PER_TASK if method == "hybrid" else 1
        system = prompts.RLM_SYSTEM + prompts.TEAM_TOOLS_DOC if method == "hybrid" else prompts.DELM_AGENT_SYSTEM
        per_task = calls * (lm.count_tokens(system) + TASK_MESSAGE_TOKENS)
        plan = [f"{method} team of {agents} agent{'s' if agents != 1 else ''}: {len(chunks):,} task"
                f"{'s' if len(chunks) != 1 else ''}, then a finalizer", *_chunk_lines(chunks, corpus.names)]
    elif method == "direct":
        tasks, calls = 1, 1
        kept = min(corpus_tokens, lm.context_window)
        per_task = lm.count_tokens(prompts.DIRECT_PROMPT)
        plan = ["direct: one model call with the whole corpus in its prompt"
                + (f" (cut to the model's {lm.context_window:,}-token window)" if kept < corpus_tokens else "")]
        corpus_tokens = kept
    else:
        tasks = 1
        calls = min(max_iterations or 8, CALLS_PER_TASK + 1)
        per_task = calls * (lm.count_tokens(prompts.RLM_SYSTEM) + TASK_MESSAGE_TOKENS)
        steps = f"up to {max_iterations} steps" if max_iterations else "its default step limit"
        plan = [f"{method}: one agent with a REPL ({steps})"]
    input_tokens = corpus_tokens + per_task * tasks
    output_tokens = OUTPUT_TOKENS_PER_CALL * calls * tasks
    price = lm.price(model)
    usd = None if price is None else price.cost(input_tokens, output_tokens)
    return CostPreview(method=method, model=model, agents=agents, tasks=tasks, corpus_tokens=corpus_tokens,
                       prompt_tokens_per_task=per_task, input_tokens=input_tokens, output_tokens=output_tokens,
                       usd=usd, chunks=chunks, plan=plan, budget=budget)


def _corpus_tokens(lm: LM, corpus: Corpus) -> int:
    text = corpus.text
    return lm.count_tokens(text) if len(text) <= EXACT_COUNT_CHARS else (len(text) + 3) // 4


def _chunk_lines(chunks: Sequence[Chunk], names: Sequence[str], shown: int = 4) -> list[str]:
    lines = [task_label(c.describe(len(chunks), names), names) for c in chunks[:shown]]
    if len(chunks) > shown:
        lines.append(f"... and {len(chunks) - shown:,} more")
    return lines


__all__ = ["CONFIRM_TOKENS", "CONFIRM_USD", "CostPreview", "preview_cost"]
