"""Chunking: the deterministic split of a corpus into the team's initial subtasks.

Rules (the same input and settings always give the same chunks, so a resumed run and a
re-run agree on what task t3 covers):
- `by="documents"`: one chunk per non-empty document, whatever its size.
- `by="lines"`: every document is cut into line-aligned chunks of at most `size` (characters,
  or tokens when `unit="tokens"`); a chunk never spans two documents.
- `by="auto"` (default): one chunk per document when every document fits in `size`;
  documents that do not fit are cut into line-aligned chunks, the others stay whole.
A single line longer than `size` is cut at the size boundary (the only case where a chunk
does not end at a line end). Offsets are character offsets into the document, `[start, end)`,
so `docs[chunk.doc][chunk.start:chunk.end] == chunk.text` always holds.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from typing import Literal

from pydantic import BaseModel, Field

from delm_rlm.errors import ConfigError, CorpusError

DEFAULT_CHUNK_CHARS = 20_000
SplitBy = Literal["auto", "documents", "lines"]
SizeUnit = Literal["chars", "tokens"]


class Chunk(BaseModel):
    """One slice of one document: what a split task covers."""

    index: int = Field(ge=0, description="position in the split, 0-based")
    doc: int = Field(ge=0, description="document index in the corpus")
    start: int = Field(ge=0, description="first character (inclusive)")
    end: int = Field(ge=0, description="last character (exclusive)")
    lines: int = Field(ge=0, description="number of lines in the chunk")

    def text(self, docs: Sequence[str]) -> str:
        return docs[self.doc][self.start : self.end]

    def describe(self, total: int) -> str:
        return (
            f"chunk {self.index + 1} of {total}: doc {self.doc}, characters "
            f"{self.start}-{self.end} ({self.lines} lines)"
        )


def approx_tokens(text: str) -> int:
    """About 4 characters per token: the usual rule of thumb when no tokenizer is given."""
    return (len(text) + 3) // 4


def split_corpus(
    docs: Sequence[str],
    *,
    size: int = DEFAULT_CHUNK_CHARS,
    unit: SizeUnit = "chars",
    by: SplitBy = "auto",
    count_tokens: Callable[[str], int] | None = None,
) -> list[Chunk]:
    """Split `docs` into chunks (see the module docstring for the rules)."""
    if isinstance(docs, str):
        raise TypeError("split_corpus takes a list of documents; wrap one text as [text]")
    if any(not isinstance(d, str) for d in docs):
        raise TypeError("every document must be a str")
    if not isinstance(size, int) or isinstance(size, bool) or size < 1:
        raise ConfigError(f"chunk size must be a positive integer ({unit}), got {size!r}")
    if unit not in ("chars", "tokens"):
        raise ConfigError(f"unit must be 'chars' or 'tokens', got {unit!r}")
    if by not in ("auto", "documents", "lines"):
        raise ConfigError(f"by must be 'auto', 'documents' or 'lines', got {by!r}")
    measure: Callable[[str], int] = len if unit == "chars" else (count_tokens or approx_tokens)

    spans: list[tuple[int, int, int, int]] = []  # doc, start, end, lines
    for d, text in enumerate(docs):
        if not text:
            continue  # an empty document has nothing to ask about
        whole = by == "documents" or (by == "auto" and measure(text) <= size)
        if whole:
            spans.append((d, 0, len(text), _count_lines(text)))
        else:
            spans.extend((d, s, e, n) for s, e, n in _line_chunks(text, size, measure))
    if not spans:
        raise CorpusError("the corpus is empty: every document has zero characters")
    return [Chunk(index=i, doc=d, start=s, end=e, lines=n) for i, (d, s, e, n) in enumerate(spans)]


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
