"""Result: what one run hands back to its caller (every method returns one)."""

from __future__ import annotations

from typing import Literal

from pydantic import BaseModel, Field

from delm_rlm.llm.usage import Usage
from delm_rlm.trace import TraceEvent

Status = Literal["answered", "budget", "error"]

# How an answer was reached, for readers who must tell a code-set answer from a fallback:
#   "state"      the agent set answer["content"] and answer["ready"] = True in its REPL
#   "final_call" out of iterations, the answer is the model's plain-text reply to one last
#                "give your best answer" call (no code ran to produce it)
#   "partial"    the run stopped early (budget, errors) and the answer is what it had so far
#   "prose"      the model replied without a code block twice in a row (shown the block
#                format in between): its second reply's text is the answer, no code ran for it
FinishedBy = Literal["state", "final_call", "partial", "prose"]


class Result(BaseModel):
    """The outcome of one run: the answer, how it ended, what it cost, and its trace."""

    answer: str | None
    status: Status
    error: str | None = None
    usage: Usage = Field(default_factory=Usage)
    usage_by_role: dict[str, Usage] = Field(default_factory=dict)
    gist_ids: list[str] = Field(default_factory=list)
    store_path: str | None = None
    trace_path: str | None = None
    trace: list[TraceEvent] = Field(default_factory=list)
    seconds: float = 0.0
    method: str = "rlm"
    finished_by: FinishedBy | None = None
    iterations: int = 0

    @property
    def ok(self) -> bool:
        """True when the run produced an answer it stands behind."""
        return self.status == "answered" and self.answer is not None
