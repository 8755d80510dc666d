"""Chunking: the deterministic split of a corpus into the team's initial subtasks.

Rules (the same input and settings always give the same chunks, so a resumed run and a
re-run agree on what task t3 covers):
- `by="documents"`: one chunk per non-empty document, whatever its size.
- `by="lines"`: every document is cut into line-aligned chunks of at most `size` (characters,
  or tokens when `unit="tokens"`); a chunk never spans two documents.
- `by="auto"` (default): one chunk per document when every document fits in `size`;
  documents that do not fit are cut into line-aligned chunks, the others stay whole.
- `by="pack"`: consecutive documents that fit are packed into one chunk up to `size`
  (joined by a blank line, as the REPL's `context` joins them); a document that does not
  fit is cut into line-aligned chunks of its own.
A single line longer than `size` is cut at the size boundary (the only case where a chunk
does not end at a line end). Offsets are character offsets into the document, `[start, end)`,
so `docs[chunk.doc][chunk.start:chunk.end] == chunk.text(docs)` holds for every chunk of
one document.

A table (`table=` the corpus's DataFrame, `docs` its rows): rows are packed into chunks up
to `size` (unless `by="documents"`: one row per chunk); a chunk of rows is those rows with
every column, one row per line (`col: value | col: value`), and `chunk_df` in the REPL. A
row longer than `size` is a chunk of its own, never cut (cutting it would lose columns).

`max_tasks`: the most chunks a split may give. Over it, the split packs with a chunk size
grown until the chunks fit (logged), so a corpus of many small documents or rows never
becomes hundreds of tasks. `team_split` applies the team's settings (chars or tokens, the
task cap): the team's planner and the CLI's cost preview call it alike.

In a REPL, `Chunk.repl_setup()` defines the task's slice: `chunk` (its text), `chunk_doc`,
`chunk_start`, `chunk_end`, `chunk_doc_end` (the last document), `chunk_rows`, `chunk_docs`
(the document indexes it covers) and `chunk_df` (the rows, for a chunk of a table; else
None). `CHUNK_SETUP_CODE` rebuilds them from `Chunk.repl_variables()` wherever a REPL holds
the corpus (an agent's, the verifier's).
"""

from __future__ import annotations

import logging
import math
import re
from collections.abc import Callable, Sequence
from typing import Any, Literal

from pydantic import BaseModel, Field

from delm_rlm.errors import ConfigError, CorpusError

DEFAULT_CHUNK_CHARS = 20_000
DEFAULT_MAX_TASKS = 64
SplitBy = Literal["auto", "documents", "lines", "pack"]
SizeUnit = Literal["chars", "tokens"]
# Between packed documents: the REPL's `context` joins documents the same way.
PACK_SEPARATOR = "\n\n"
ROW_SEPARATOR = "\n"

logger = logging.getLogger(__name__)

# Defines the chunk's variables in a REPL namespace holding `context`, `docs` and `df` plus
# the variables of `Chunk.repl_variables()` (chunk_doc None: the whole corpus). A row is
# rendered as the REPL's loader renders `docs` for a table without a text column.
CHUNK_SETUP_CODE = '''\
if chunk_doc is None:
    chunk, chunk_docs, chunk_df = context, list(range(len(docs))), None
elif chunk_rows:
    chunk_df = df.iloc[chunk_doc:chunk_doc_end + 1]
    chunk = "\\n".join(
        " | ".join(f"{c}: {v}" for c, v in zip([str(c) for c in chunk_df.columns], row))
        for row in chunk_df.itertuples(index=False, name=None)
    )
    chunk_docs = list(range(chunk_doc, chunk_doc_end + 1))
elif chunk_doc_end == chunk_doc:
    chunk, chunk_docs, chunk_df = docs[chunk_doc][chunk_start:chunk_end], [chunk_doc], None
else:
    chunk = "\\n\\n".join([docs[chunk_doc][chunk_start:], *docs[chunk_doc + 1:chunk_doc_end], docs[chunk_doc_end][:chunk_end]])
    chunk_docs, chunk_df = list(range(chunk_doc, chunk_doc_end + 1)), None
'''


class Chunk(BaseModel):
    """One slice of the corpus: what a split task covers. Most chunks are one slice of one
    document; a packed chunk covers whole documents `doc`..`doc_end`; a chunk of a table
    (`rows`) covers rows `doc`..`doc_end` with every column."""

    index: int = Field(ge=0, description="position in the split, 0-based")
    doc: int = Field(ge=0, description="document index in the corpus (the first one)")
    start: int = Field(ge=0, description="first character (inclusive) in the first document")
    end: int = Field(ge=0, description="last character (exclusive) in the last document")
    lines: int = Field(ge=0, description="number of lines in the chunk")
    doc_end: int | None = Field(default=None, ge=0, description="the last document (inclusive); None: `doc` only")
    rows: bool = Field(default=False, description="the documents are rows of the corpus's table")

    @property
    def last_doc(self) -> int:
        return self.doc if self.doc_end is None else self.doc_end

    @property
    def documents(self) -> range:
        """The indexes of the documents (or rows) the chunk covers."""
        return range(self.doc, self.last_doc + 1)

    def text(self, docs: Sequence[str], table: Any = None) -> str:
        """The chunk's text, the same text `chunk` holds in the REPL. A chunk of rows needs
        the corpus's table (`table`) to show every column; without it, its rows' documents."""
        if self.rows:
            if table is not None:
                return ROW_SEPARATOR.join(row_lines(table, self.doc, self.last_doc + 1))
            return ROW_SEPARATOR.join(docs[self.doc : self.last_doc + 1])
        if self.last_doc == self.doc:
            return docs[self.doc][self.start : self.end]
        middle = list(docs[self.doc + 1 : self.last_doc])
        return PACK_SEPARATOR.join([docs[self.doc][self.start :], *middle, docs[self.last_doc][: self.end]])

    def describe(self, total: int, names: Sequence[str] | None = None) -> str:
        """What the chunk covers, for a task's goal: documents by index (what `docs[i]`
        means in the REPL) and, given the corpus's `names`, by name."""
        def named(i: int) -> str:
            return f"doc {i} ({names[i]})" if names is not None and 0 <= i < len(names) else f"doc {i}"

        head = f"chunk {self.index + 1} of {total}: "
        if self.rows:
            count = self.last_doc - self.doc + 1
            return head + f"rows {self.doc}-{self.last_doc} of the table ({count:,} row{'s' if count != 1 else ''})"
        if self.last_doc != self.doc:
            count = self.last_doc - self.doc + 1
            return head + f"{named(self.doc)} to {named(self.last_doc)} ({count:,} documents, {self.lines:,} lines)"
        return head + f"{named(self.doc)}, characters {self.start}-{self.end} ({self.lines} lines)"

    def repl_variables(self) -> dict[str, Any]:
        """JSON values from which `CHUNK_SETUP_CODE` rebuilds the chunk in a REPL."""
        return {"chunk_doc": self.doc, "chunk_start": self.start, "chunk_end": self.end,
                "chunk_doc_end": self.last_doc, "chunk_rows": self.rows}

    def repl_setup(self) -> str:
        """Code that defines the chunk's variables in a REPL holding the corpus."""
        v = self.repl_variables()
        return (f"chunk_doc, chunk_start, chunk_end, chunk_doc_end, chunk_rows = "
                f"{v['chunk_doc']}, {v['chunk_start']}, {v['chunk_end']}, {v['chunk_doc_end']}, {v['chunk_rows']}\n"
                + CHUNK_SETUP_CODE)


def whole_corpus_setup() -> str:
    """Code that makes `chunk` the whole corpus (a task without a chunk, the finalizer)."""
    return "chunk_doc = chunk_start = chunk_end = chunk_doc_end = None\nchunk_rows = False\n" + CHUNK_SETUP_CODE


def approx_tokens(text: str) -> int:
    """About 4 characters per token: the usual rule of thumb when no tokenizer is given."""
    return (len(text) + 3) // 4


def row_lines(table: Any, start: int = 0, stop: int | None = None) -> list[str]:
    """Rows `start`..`stop` of a DataFrame, one line each with every column (`col: value |
    col: value`), the way the REPL renders rows (the same loop as `CHUNK_SETUP_CODE`)."""
    part = table.iloc[start:stop]
    columns = [str(c) for c in part.columns]
    return [" | ".join(f"{c}: {v}" for c, v in zip(columns, row)) for row in part.itertuples(index=False, name=None)]


def split_corpus(
    docs: Sequence[str],
    *,
    size: int = DEFAULT_CHUNK_CHARS,
    unit: SizeUnit = "chars",
    by: SplitBy = "auto",
    count_tokens: Callable[[str], int] | None = None,
    max_tasks: int | None = None,
    table: Any = None,
) -> list[Chunk]:
    """Split `docs` into chunks (see the module docstring for the rules). `table`: the
    corpus's DataFrame when `docs` are its rows; `max_tasks`: the most chunks to give."""
    if isinstance(docs, str):
        raise TypeError("split_corpus takes a list of documents; wrap one text as [text]")
    if any(not isinstance(d, str) for d in docs):
        raise TypeError("every document must be a str")
    if not isinstance(size, int) or isinstance(size, bool) or size < 1:
        raise ConfigError(f"chunk size must be a positive integer ({unit}), got {size!r}")
    if unit not in ("chars", "tokens"):
        raise ConfigError(f"unit must be 'chars' or 'tokens', got {unit!r}")
    if by not in ("auto", "documents", "lines", "pack"):
        raise ConfigError(f"by must be 'auto', 'documents', 'lines' or 'pack', got {by!r}")
    if max_tasks is not None and (not isinstance(max_tasks, int) or isinstance(max_tasks, bool) or max_tasks < 1):
        raise ConfigError(f"max_tasks must be a positive integer, got {max_tasks!r}")
    if table is not None and len(table) != len(docs):
        raise ConfigError(f"the table has {len(table)} rows but {len(docs)} documents were given: pass the table's rows as docs")
    measure: Callable[[str], int] = len if unit == "chars" else (count_tokens or approx_tokens)
    rows = row_lines(table) if table is not None else None

    spans = _spans(docs, rows, size, by, measure)
    if not spans:
        raise CorpusError("the corpus is empty: every document has zero characters")
    if max_tasks is not None and len(spans) > max_tasks:
        first = len(spans)
        grown = size
        while len(spans) > max_tasks:
            grown = max(grown + 1, math.ceil(grown * len(spans) / max_tasks))
            spans = _spans(docs, rows, grown, "pack", measure)
        logger.info(
            "the split gave %d tasks, over the cap of %d: packed into %d chunks of up to %d %s instead "
            "(raise the cap with max_tasks=... / --max-tasks)", first, max_tasks, len(spans), grown, unit,
        )
    return [
        Chunk(index=i, doc=d, start=s, end=e, lines=n, doc_end=None if last == d else last, rows=is_rows)
        for i, (d, last, s, e, n, is_rows) in enumerate(spans)
    ]


def team_split(
    docs: Sequence[str],
    *,
    chunk_chars: int | None = DEFAULT_CHUNK_CHARS,
    chunk_tokens: int | None = None,
    split_by: SplitBy = "auto",
    max_tasks: int | None = DEFAULT_MAX_TASKS,
    count_tokens: Callable[[str], int] | None = None,
    table: Any = None,
) -> list[Chunk]:
    """The split a team makes of its corpus: by tokens when `chunk_tokens` is given (it wins
    over `chunk_chars`), else by characters; at most `max_tasks` chunks; a table's rows packed."""
    if chunk_tokens is not None:
        return split_corpus(docs, size=chunk_tokens, unit="tokens", by=split_by, count_tokens=count_tokens,
                            max_tasks=max_tasks, table=table)
    return split_corpus(docs, size=chunk_chars or DEFAULT_CHUNK_CHARS, by=split_by, max_tasks=max_tasks, table=table)


_GOAL_CHUNK = re.compile(
    r"chunk (?P<n>\d+) of (?P<total>\d+): (?:(?P<rows>rows (?P<r0>\d+)-(?P<r1>\d+))|doc (?P<d0>\d+)(?: \([^)]*\))?"
    r"(?: to doc (?P<d1>\d+))?)"
)


def task_label(goal: str, names: Sequence[str] | None = None) -> str:
    """A short label for a split task's goal ("chunk 2/5: notes/b.md"), for live views and
    reports: the documents by name where `names` are known. Other goals come back as they are."""
    m = _GOAL_CHUNK.search(goal or "")
    if m is None:
        return goal
    head = f"chunk {m['n']}/{m['total']}: "
    if m["rows"]:
        return head + f"rows {m['r0']}-{m['r1']}"

    def name(i: str) -> str:
        k = int(i)
        return names[k] if names is not None and 0 <= k < len(names) else f"doc {k}"

    if m["d1"] is not None:
        return head + f"{name(m['d0'])} .. {name(m['d1'])}"
    return head + name(m["d0"])


# ---- spans -----------------------------------------------------------------------------------

# (first doc, last doc, start in the first, end in the last, lines, rows?)
_Span = tuple[int, int, int, int, int, bool]


def _spans(docs: Sequence[str], rows: list[str] | None, size: int, by: str,
           measure: Callable[[str], int]) -> list[_Span]:
    if rows is not None:
        return _row_spans(docs, rows, size, by, measure)
    spans: list[_Span] = []
    pack: list[int] = []
    used = 0

    def flush() -> None:
        nonlocal pack, used
        if pack:
            first, last = pack[0], pack[-1]
            lines = sum(_count_lines(docs[d]) for d in pack)
            spans.append((first, last, 0, len(docs[last]), lines, False))
        pack, used = [], 0

    for d, text in enumerate(docs):
        if not text:
            continue  # an empty document has nothing to ask about
        cost = measure(text)
        if by == "pack" and cost <= size:
            extra = cost + (measure(PACK_SEPARATOR) if pack else 0)
            if pack and used + extra > size:
                flush()
                extra = cost
            pack.append(d)
            used += extra
            continue
        flush()
        whole = by == "documents" or (by == "auto" and cost <= size)
        if whole:
            spans.append((d, d, 0, len(text), _count_lines(text), False))
        else:
            spans.extend((d, d, s, e, n, False) for s, e, n in _line_chunks(text, size, measure))
    flush()
    return spans


def _row_spans(docs: Sequence[str], rows: list[str], size: int, by: str,
               measure: Callable[[str], int]) -> list[_Span]:
    """Rows packed up to `size` (by="documents": one row each); an over-long row alone."""
    spans: list[_Span] = []
    first: int | None = None
    used = 0
    for i, line in enumerate(rows):
        cost = measure(line) + (measure(ROW_SEPARATOR) if first is not None else 0)
        if first is not None and (by == "documents" or used + cost > size):
            spans.append((first, i - 1, 0, len(docs[i - 1]), i - first, True))
            first, used = None, 0
            cost = measure(line)
        if first is None:
            first = i
        used += cost
        if cost > size:
            logger.info("row %d is longer than the chunk size (%d): it is a chunk of its own", i, size)
    if first is not None:
        spans.append((first, len(rows) - 1, 0, len(docs[-1]), len(rows) - first, True))
    return spans


def _count_lines(text: str) -> int:
    return text.count("\n") + (0 if text.endswith("\n") else 1)


def _line_chunks(
    text: str, size: int, measure: Callable[[str], int]
) -> list[tuple[int, int, int]]:
    """Greedy line packing: (start, end, lines) spans covering `text` exactly."""
    out: list[tuple[int, int, int]] = []
    start = pos = 0
    used = 0
    lines = 0
    for line in text.splitlines(keepends=True):
        cost = measure(line)
        if lines and used + cost > size:
            out.append((start, pos, lines))
            start, used, lines = pos, 0, 0
        if cost > size:
            # One over-long line: cut it into size-bounded pieces (by characters; for tokens
            # the piece is shrunk until it fits, so the bound holds for any tokenizer).
            piece_start = pos
            line_end = pos + len(line)
            while piece_start < line_end:
                piece_end = min(line_end, piece_start + size)
                while piece_end - piece_start > 1 and measure(text[piece_start:piece_end]) > size:
                    piece_end = piece_start + (piece_end - piece_start) // 2
                out.append((piece_start, piece_end, 1))
                piece_start = piece_end
            pos = line_end
            start, used, lines = pos, 0, 0
            continue
        used += cost
        lines += 1
        pos += len(line)
    if lines:
        out.append((start, pos, lines))
    return out


__all__ = [
    "CHUNK_SETUP_CODE",
    "DEFAULT_CHUNK_CHARS",
    "DEFAULT_MAX_TASKS",
    "PACK_SEPARATOR",
    "ROW_SEPARATOR",
    "Chunk",
    "SizeUnit",
    "SplitBy",
    "approx_tokens",
    "row_lines",
    "split_corpus",
    "task_label",
    "team_split",
    "whole_corpus_setup",
]
