"""Result: what one run hands back to its caller (every method returns one)."""

from __future__ import annotations

import html
import json
from pathlib import Path
from typing import Any, Literal

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


def format_cost(cost_usd: float | None, digits: int = 4) -> str:
    """A cost as every report shows it: "$0.0123", or "unknown" when a call had no price."""
    return "unknown" if cost_usd is None else f"${cost_usd:.{digits}f}"


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

    @property
    def run_dir(self) -> str | None:
        """The run's directory (where its store and trace are), when it wrote one."""
        path = self.store_path or self.trace_path
        return str(Path(path).parent) if path else None

    def to_json(self, *, indent: int | None = 2, with_trace: bool = False) -> str:
        """The result as JSON (what `delm-rlm ask --json` prints): the trace events only
        with `with_trace` (they are in the run's trace.jsonl anyway)."""
        exclude = None if with_trace else {"trace"}
        data: dict[str, Any] = self.model_dump(mode="json", exclude=exclude)
        data["run_dir"] = self.run_dir
        return json.dumps(data, indent=indent, ensure_ascii=False)

    def __repr__(self) -> str:
        answer = self.answer if self.answer is None or len(self.answer) <= 60 else self.answer[:57] + "..."
        u = self.usage
        cost = f"cost {format_cost(u.cost_usd)}"
        parts = [f"answer={answer!r}", f"status={self.status!r}", f"method={self.method!r}",
                 f"calls={u.calls}" + (f" ({u.cached_calls} cached)" if u.cached_calls else ""),
                 f"tokens={u.input_tokens:,}/{u.output_tokens:,}", cost, f"{self.seconds:.1f}s"]
        if self.gist_ids:
            parts.append(f"gists={self.gist_ids[:6]}" + ("..." if len(self.gist_ids) > 6 else ""))
        if self.error:
            parts.append(f"error={self.error[:80]!r}")
        return f"Result({', '.join(parts)})"

    __str__ = __repr__

    def _repr_html_(self) -> str:
        """A small card for notebooks: the answer, how it ended, what it cost, where it is."""
        e = html.escape
        u = self.usage
        cost = format_cost(u.cost_usd)
        color = "#137333" if self.ok else "#b3261e"
        rows = [
            ("status", self.status + (f" ({self.error})" if self.error else "")),
            ("method", self.method + (f", finished by {self.finished_by}" if self.finished_by else "")),
            ("usage", f"{u.calls:,} calls ({u.cached_calls:,} cached, {u.failed_calls:,} failed), "
                      f"{u.input_tokens:,} input / {u.output_tokens:,} output tokens, cost {cost}"),
            ("seconds", f"{self.seconds:.1f}"),
        ]
        if self.gist_ids:
            rows.append(("rests on", ", ".join(self.gist_ids)))
        if self.run_dir:
            rows.append(("run", f"{self.run_dir} (report: delm-rlm trace {self.run_dir} --html report.html)"))
        body = "".join(f"<tr><th style='text-align:right;padding-right:8px'>{e(k)}</th><td>{e(v)}</td></tr>" for k, v in rows)
        answer = "(no answer)" if self.answer is None else self.answer
        return (f"<div style='border-left:4px solid {color};padding:4px 10px'>"
                f"<div style='font-weight:600;white-space:pre-wrap'>{e(answer)}</div>"
                f"<table style='font-size:90%'>{body}</table></div>")
