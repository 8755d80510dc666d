"""Reading or counting: which path a question over a corpus takes, decided without a model.

Two kinds of questions reach a team. A counting question over records (many short lines,
rows or entries sharing one layout: "Date: .. || User: .. || Instance: ..", CSV rows,
"label: text") is answered exactly by code over the records (the counting path: the team's
REPL templates, partials added up in code). A reading question over documents (prose:
contracts, reports, papers, news; multiple-choice questions in the LongBench style) has
nothing to count: its answer must be read, so it takes the reading path (grounded summaries,
query-aware gists, the answer gate; team/reading_roles.py), and no counting template is ever
shown to its agents.

`route_question(question, docs)` says which, with the signals and a one-line reason;
`needs_reading(question, docs)` is its yes/no. The rule, in order:

1. a multiple-choice question (lines "(A) ..", "(B) ..", or "The correct answer is") is read;
2. a question that counts ("how many", "count", "most common", "most often", "frequency",
   "classified as", ...) over records is counted;
3. a question that counts a literal over prose ("how many times", "how many lines",
   "occurrences", "mentions", or a quoted term) is counted: code finds every occurrence;
4. otherwise records are counted and prose is read.

The corpus is records when it has at least MIN_RECORD_LINES non-empty lines (a sample of
up to SAMPLE_LINES spread over the corpus), the lines are short (median under
RECORD_MEDIAN_CHARS characters), and either RECORD_SHARE of them share one field layout (the
same field separators, or a short "key:" prefix) or ENTRY_SHARE of them end as a complete
entry does (., ?, !, a closing quote or bracket: one question or message a line). A few
lines (under MIN_RECORD_LINES) count as records when the question counts, else as prose.
Hard-wrapped prose (short lines, most ending mid-sentence) is prose: 12-27% of the lines of
LongBench-v2's multi-document texts end as entries, 100% of TREC question lines do.
"""

from __future__ import annotations

import re
from collections import Counter
from collections.abc import Sequence
from statistics import median
from typing import Any, Literal

from pydantic import BaseModel, Field

SAMPLE_LINES = 2000
MIN_RECORD_LINES = 8
RECORD_SHARE = 0.6
ENTRY_SHARE = 0.8
RECORD_MEDIAN_CHARS = 200

Path = Literal["reading", "counting"]

_CHOICE_LINE = re.compile(r"^\s*\(?([A-D])[).]\s+\S", re.MULTILINE)
_ANSWER_FORMAT = re.compile(r"the correct answer is", re.IGNORECASE)
_COUNTING = re.compile(
    r"\b(how many|how often|count(?:s|ing)?|number of|most (?:common|frequent|often)|"
    r"least (?:common|frequent|often)|frequency|more common|less common|classified as|"
    r"appears? most|represented (?:most|exactly)|total (?:number|count))\b",
    re.IGNORECASE,
)
_LITERAL_COUNT = re.compile(
    r"\b(how many (?:times|lines|rows|records|entries|items|instances|occurrences|mentions|data points)|"
    r"occurrences?|mentions?|mentioned)\b|'[^']+'|\"[^\"]+\"",
    re.IGNORECASE,
)
_KEY_PREFIX = re.compile(r"^\s*[\w][\w .#/-]{0,24}?:\s")
_SEPARATORS = (" || ", "\t", " | ", ";")
_ENTRY_END = re.compile(r"[.?!\"')\]\u201d]\s*$")


class Routing(BaseModel):
    """Which path a question takes, and why (see the module docstring for the rule)."""

    path: Path
    reason: str
    signals: dict[str, Any] = Field(default_factory=dict)

    @property
    def reading(self) -> bool:
        return self.path == "reading"


def _sample(docs: Sequence[str]) -> list[str]:
    lines = [line for doc in docs for line in doc.splitlines() if line.strip()]
    if len(lines) <= SAMPLE_LINES:
        return lines
    step = len(lines) / SAMPLE_LINES
    return [lines[int(i * step)] for i in range(SAMPLE_LINES)]


def line_layout(line: str) -> tuple[Any, ...] | None:
    """A line's field layout: its separator counts, a CSV comma count, and whether it opens
    with a short "key:" prefix; None for a line with no fields (prose has none)."""
    counts = tuple(line.count(sep) for sep in _SEPARATORS)
    commas = line.count(",")
    csv = commas if commas >= 2 and len(line) / (commas + 1) < 40 else 0
    keyed = bool(_KEY_PREFIX.match(line))
    if not any(counts) and not csv and not keyed:
        return None
    return (*counts, csv, keyed)


def corpus_signals(docs: Sequence[str]) -> dict[str, Any]:
    """What the router reads off a corpus: line count, median line length, the share of
    lines in the most common field layout (with that layout), the share ending as entries."""
    lines = _sample(docs)
    layouts = Counter(layout for layout in map(line_layout, lines) if layout is not None)
    top, top_n = layouts.most_common(1)[0] if layouts else (None, 0)
    return {
        "lines": len(lines),
        "median_line_chars": int(median(len(line) for line in lines)) if lines else 0,
        "layout_share": round(top_n / len(lines), 3) if lines else 0.0,
        "layout": list(top) if top is not None else None,
        "entry_share": round(sum(bool(_ENTRY_END.search(line)) for line in lines) / len(lines), 3) if lines else 0.0,
    }


def question_signals(question: str) -> dict[str, Any]:
    """What the router reads off a question: multiple choice, a counting cue, a literal to count."""
    counting = _COUNTING.search(question)
    literal = _LITERAL_COUNT.search(question) if counting else None
    return {
        "multiple_choice": len(set(_CHOICE_LINE.findall(question))) >= 2 or bool(_ANSWER_FORMAT.search(question)),
        "counting_cue": counting.group(0) if counting else None,
        "literal_cue": literal.group(0) if literal else None,
    }


def route_question(question: str, docs: Sequence[str] | str) -> Routing:
    """The path `question` over `docs` (a list of documents, or one text) takes."""
    docs = [docs] if isinstance(docs, str) else list(docs)
    q, c = question_signals(question), corpus_signals(docs)
    signals = {**q, **c}
    short = c["median_line_chars"] < RECORD_MEDIAN_CHARS
    laid_out = short and c["layout_share"] >= RECORD_SHARE
    entries = short and c["entry_share"] >= ENTRY_SHARE
    records = (laid_out or entries) and c["lines"] >= MIN_RECORD_LINES
    if laid_out:
        shape = f"{c['layout_share']:.0%} of {c['lines']} lines share one field layout"
    elif entries:
        shape = f"{c['entry_share']:.0%} of {c['lines']} short lines are one entry each"
    else:
        shape = (f"{c['lines']} lines, median {c['median_line_chars']} chars, {c['layout_share']:.0%} in one "
                 f"field layout, {c['entry_share']:.0%} ending as entries")
    if q["multiple_choice"]:
        return Routing(path="reading", reason="a multiple-choice question: its answer is read, not counted",
                       signals=signals)
    if q["counting_cue"] and (records or short or c["lines"] < MIN_RECORD_LINES):
        # Short lines (log lines, rows in a format no layout rule knows) are records too
        # when the question counts: code counts them exactly; prose lines run long.
        return Routing(path="counting", reason=f"a counting question ({q['counting_cue']!r}) over records ({shape})",
                       signals=signals)
    if q["counting_cue"] and q["literal_cue"]:
        return Routing(path="counting", reason=f"a question counting a literal ({q['literal_cue']!r}): code finds "
                       "every occurrence", signals=signals)
    if records:
        return Routing(path="counting", reason=f"records ({shape})", signals=signals)
    return Routing(path="reading", reason=f"documents to read ({shape})", signals=signals)


def needs_reading(question: str, docs: Sequence[str] | str) -> bool:
    """True when `question` over `docs` takes the reading path (see `route_question`)."""
    return route_question(question, docs).reading


__all__ = [
    "ENTRY_SHARE",
    "MIN_RECORD_LINES",
    "RECORD_MEDIAN_CHARS",
    "RECORD_SHARE",
    "Routing",
    "corpus_signals",
    "line_layout",
    "needs_reading",
    "question_signals",
    "route_question",
]
