"""Grounded summaries: the first, query-independent level of the reading hierarchy.

A chunk is read in slices of about SUMMARY_SLICE_CHARS (cut at paragraph, line or sentence
ends). For each slice the model (role "reader") lists up to MAX_POINTS_PER_SLICE key points,
each with an anchor: a short quote copied from the slice. Each anchor is located in the
slice (word for word, or as the span a near copy paraphrases, `verify.fuzzy`), its span is
checked by the quote verifier (`verify.quotes.check_quote`), and the slice's summary is
admitted only when every anchor passes. A slice summary with an invented anchor gets one
repair round showing what was wrong (with the closest text); still wrong, it is rejected
and the slice has no summary. A chunk's summary is its admitted slices' anchors, numbered
a1, a2, ... in text order.

A question need not pay for reading every slice: with `max_slices`, a chunk's slices are
ranked by how much they share with the question (`rank_slices`: BM25 over content-word stems,
the slices as the collection) and only the top ones are summarized; the others are kept as
`unread` spans that a later task (a goal the finalizer adds) or an agent's own `llm_query`
can still read. Which slices are read depends on the question; what a slice's summary says
does not.

Summaries do not depend on the question, so they are cached per slice and reused by every
question on the same corpus: `SummaryCache`, one SQLite file beside the LM's response cache
(outside every sandbox's reach), keyed by the slice text's SHA-256, the summarizer model,
its endpoint and SUMMARY_VERSION; no disk cache when the LM's response cache is off.
"""

from __future__ import annotations

import asyncio
import hashlib
import json
import math
import re
import sqlite3
import threading
import time
from collections import Counter
from collections.abc import Callable, Sequence
from contextlib import closing
from pathlib import Path
from typing import Any

from pydantic import BaseModel

from delm_rlm import prompts
from delm_rlm.errors import LMError
from delm_rlm.gists import QuoteEvidence
from delm_rlm.llm import LM, register_role
from delm_rlm.team.replies import load_json_object
from delm_rlm.trace import Trace
from delm_rlm.verify.fuzzy import SpanMatch, closest_span, map_quote
from delm_rlm.verify.quotes import check_quote
from delm_rlm.verify.support import STEM_CHARS, content_words

SUMMARY_SLICE_CHARS = 8000
MAX_POINTS_PER_SLICE = 5
MAX_POINT_CHARS = 200
MAX_ANCHOR_CHARS = 200  # an anchor is a short quote: a longer copy is cut (still verbatim)
CONTEXT_REACH_CHARS = 300  # how far an anchor's context reaches past its quote, each side
SUMMARY_TOKENS = 600  # the most a slice summary's reply may take
SUMMARY_VERSION = 2  # in the cache key: a new prompt or rule makes cached summaries stale
SUMMARY_CACHE_FILE = "summaries.sqlite"
BM25_K1, BM25_B = 1.2, 0.75  # the usual Okapi constants

register_role("reader", "reads documents: the grounded summary of each slice (team reading path)")


class Anchor(BaseModel):
    """One point of a summary and the verbatim span of the corpus it rests on."""

    id: str = ""  # "a3": its place in the chunk's summary
    point: str
    quote: str
    doc: int
    start: int
    end: int
    mapped: bool = False  # the model's quote was a near copy, mapped to this span
    # The quote widened to the sentences it stands in (verbatim, at most CONTEXT_REACH_CHARS
    # further each side): `docs[doc][start - lead : start - lead + len(context)]`. A claim
    # is checked against this passage, not against a quote the model cut mid-sentence.
    context: str = ""
    lead: int = 0

    @property
    def passage(self) -> str:
        """The verbatim text a claim about this anchor may rest on: its context, or its quote."""
        return self.context or self.quote

    def evidence(self) -> QuoteEvidence:
        if self.context:
            start = self.start - self.lead
            return QuoteEvidence(doc=self.doc, start=start, end=start + len(self.context), quote=self.context)
        return QuoteEvidence(doc=self.doc, start=self.start, end=self.end, quote=self.quote)

    def line(self, quote_chars: int = 90) -> str:
        quote = self.quote if len(self.quote) <= quote_chars else self.quote[: quote_chars - 3] + "..."
        return f'[{self.id}] {self.point} (quote: "{quote}")'


class TextSpan(BaseModel):
    """`docs[doc][start:end]`: a slice left unread, with its opening words (verbatim, one
    line) to find it by."""

    doc: int
    start: int
    end: int
    opening: str = ""

    @property
    def key(self) -> tuple[int, int, int]:
        return (self.doc, self.start, self.end)


class ChunkSummary(BaseModel):
    """A chunk's grounded summary: its admitted anchors, why any slice was rejected, and the
    slices it did not read (ranked below `max_slices` for the question)."""

    where: str
    anchors: list[Anchor]
    rejected: list[str] = []
    unread: list[TextSpan] = []
    from_cache: int = 0  # slices served from the cache

    def unread_note(self) -> str:
        """One line for an agent: what of its part was not summarized, and how to find it."""
        if not self.unread:
            return ""
        openings = "; ".join(repr(s.opening) for s in self.unread[:4])
        return (f"({len(self.unread)} slice(s) of this part were not summarized: they share the fewest words with "
                f"the question. They open with {openings}; read one with llm_query on chunk[i:i+8000], i = "
                "chunk.find(opening), if the question needs it.)")

    def anchor(self, anchor_id: str) -> Anchor | None:
        return next((a for a in self.anchors if a.id == anchor_id.strip().lower()), None)

    def render(self, limit: int, quote_chars: int = 90) -> str:
        """The summary as '[a1] point (quote: "...")' lines within `limit` characters."""
        lines: list[str] = []
        used = 0
        for n, anchor in enumerate(self.anchors):
            line = anchor.line(quote_chars)
            more = f"(+{len(self.anchors) - n} more points)"
            if used + len(line) + 1 + len(more) > limit:
                lines.append(more)
                break
            lines.append(line)
            used += len(line) + 1
        return "\n".join(lines)


def slice_spans(text: str, size: int = SUMMARY_SLICE_CHARS) -> list[tuple[int, int]]:
    """[start, end) slices of about `size` characters covering `text`, each cut at the last
    paragraph, line, sentence or word end in its second half (else at `size`)."""
    spans: list[tuple[int, int]] = []
    start = 0
    while start < len(text):
        end = min(len(text), start + size)
        if end < len(text):
            window = text[start + size // 2 : end]
            for sep in ("\n\n", "\n", ". ", " "):
                at = window.rfind(sep)
                if at >= 0:
                    end = start + size // 2 + at + len(sep)
                    break
        if text[start:end].strip():
            spans.append((start, end))
        start = end
    return spans


def term_stems(text: str) -> list[str]:
    """The content words of `text` as stems (function words and talk about the text left out)."""
    return [w.casefold()[:STEM_CHARS] for w in content_words(text)]


def rank_slices(texts: Sequence[str], query: str) -> list[float]:
    """Each text's BM25 score for `query`, the texts themselves as the collection (a stem in
    every text tells them apart by nothing and scores near zero)."""
    bags = [Counter(term_stems(t)) for t in texts]
    wanted = set(term_stems(query))
    if not bags or not wanted:
        return [0.0] * len(texts)
    mean_len = sum(sum(b.values()) for b in bags) / len(bags) or 1.0
    scores = []
    for bag in bags:
        length, score = sum(bag.values()), 0.0
        for term in wanted:
            tf = bag.get(term, 0)
            if tf:
                df = sum(1 for b in bags if term in b)
                idf = math.log(1 + (len(bags) - df + 0.5) / (df + 0.5))
                score += idf * tf * (BM25_K1 + 1) / (tf + BM25_K1 * (1 - BM25_B + BM25_B * length / mean_len))
        scores.append(score)
    return scores


def pick_slices(texts: Sequence[str], query: str, max_slices: int | None) -> set[int]:
    """The indexes of the slices to read: all of them, or the `max_slices` that score highest
    for `query` (ties, and a query that matches nothing, go to the earlier slice)."""
    if max_slices is None or len(texts) <= max_slices:
        return set(range(len(texts)))
    scores = rank_slices(texts, query)
    return set(sorted(range(len(texts)), key=lambda i: (-scores[i], i))[:max_slices])


_SENTENCE_END = re.compile(r"[.!?;:][\"')\]]*\s+|\n")


def sentence_context(text: str, start: int, end: int, reach: int = CONTEXT_REACH_CHARS) -> tuple[int, int]:
    """[lo, hi) of `text` around `text[start:end]`: widened to the sentence ends (., !, ?, ;,
    :, a line end) nearest outside it, at most `reach` characters each side (cut at a word
    end when no sentence ends within reach)."""
    before = text[max(0, start - reach): start]
    ends = list(_SENTENCE_END.finditer(before))
    if ends:
        lo = start - len(before) + ends[-1].end()
    elif start - reach <= 0:
        lo = 0
    else:
        space = before.find(" ")
        lo = start - len(before) + (space + 1 if space >= 0 else 0)
    after = text[end: end + reach]
    found = _SENTENCE_END.search(after)
    if found:
        hi = end + found.end()
    elif end + reach >= len(text):
        hi = len(text)
    else:
        space = after.rfind(" ")
        hi = end + (space if space >= 0 else len(after))
    return lo, max(end, lo + len(text[lo:hi].rstrip()))


def locate_anchors(text: str, points: Any, offset: int, doc: int, docs: Sequence[str]) -> tuple[list[Anchor], list[str]]:
    """The anchors of a slice summary's points (`text` is the slice, at `offset` in document
    `doc`), each checked by the quote verifier; and what was wrong with the others."""
    if not isinstance(points, list) or not points:
        return [], ['no points: reply {"points": [{"point": "...", "quote": "..."}]}']
    anchors: list[Anchor] = []
    problems: list[str] = []
    for n, item in enumerate(points[:MAX_POINTS_PER_SLICE], start=1):
        if not isinstance(item, dict):
            problems.append(f"point {n} is not an object with point and quote")
            continue
        point = " ".join(str(item.get("point") or item.get("text") or "").split())[:MAX_POINT_CHARS]
        quotes = item.get("quotes") if isinstance(item.get("quotes"), list) else [item.get("quote")]
        quotes = [" ".join(str(q).split()) for q in quotes if isinstance(q, str) and q.strip()]
        if not point or not quotes:
            problems.append(f"point {n} needs both a point and a quote")
            continue
        for quote in quotes[:2]:
            at = text.find(quote)
            match = SpanMatch(at, at + len(quote), 1.0) if at >= 0 else map_quote(text, quote)
            if match is None:
                near = closest_span(text, quote)
                shown = f"; the closest text is {text[near.start:near.end][:100]!r}" if near else ""
                problems.append(f"point {n}: the quote {quote[:80]!r} is not in the text{shown}")
                continue
            start, end = match.start, min(match.end, match.start + MAX_ANCHOR_CHARS)
            if end < match.end:  # cut a long copy at a word end: still verbatim
                end = start + max(1, text[start:end].rfind(" "))
            exact = text[start:end]
            lo, hi = sentence_context(text, start, end)
            anchor = Anchor(point=point, quote=exact, doc=doc, start=offset + start, end=offset + end,
                            mapped=" ".join(quote.split()) != " ".join(exact.split()),
                            context=text[lo:hi], lead=start - lo)
            problem = check_quote(anchor.evidence(), docs)
            if problem is not None:
                problems.append(f"point {n}: {problem}")
                continue
            anchors.append(anchor)
    return anchors, problems


class SummaryCache:
    """Admitted slice summaries on disk (SQLite, WAL), keyed by `SummaryCache.key`; offsets
    are relative to the slice, so a summary serves the same text wherever it occurs."""

    def __init__(self, path: str | Path) -> None:
        self.path = Path(path)
        self._lock = threading.Lock()

    @staticmethod
    def key(text: str, lm: LM) -> str:
        payload = {
            "v": SUMMARY_VERSION, "text_sha256": hashlib.sha256(text.encode("utf-8")).hexdigest(),
            "model": lm.model_for("reader"), "endpoint": lm.transport.endpoint_id,
            "slice_chars": SUMMARY_SLICE_CHARS, "points": MAX_POINTS_PER_SLICE,
        }
        return hashlib.sha256(json.dumps(payload, sort_keys=True).encode()).hexdigest()

    @classmethod
    def beside(cls, lm: LM) -> SummaryCache | None:
        """The cache next to `lm`'s response cache; None when that is off."""
        responses = lm.response_cache
        return None if responses is None else cls(responses.path.parent / SUMMARY_CACHE_FILE)

    def _execute(self, sql: str, args: tuple[Any, ...]) -> list[tuple[Any, ...]]:
        # One connection per call: a few calls per slice, and nothing left open by a run.
        with self._lock:
            self.path.parent.mkdir(parents=True, exist_ok=True)
            with closing(sqlite3.connect(self.path, timeout=30.0, isolation_level=None)) as conn:
                conn.execute("PRAGMA journal_mode=WAL")
                conn.execute("CREATE TABLE IF NOT EXISTS summaries (key TEXT PRIMARY KEY, anchors TEXT NOT NULL,"
                             " created_at REAL NOT NULL)")
                return conn.execute(sql, args).fetchall()

    def get(self, key: str) -> list[Anchor] | None:
        rows = self._execute("SELECT anchors FROM summaries WHERE key = ?", (key,))
        return [Anchor.model_validate(a) for a in json.loads(rows[0][0])] if rows else None

    def put(self, key: str, anchors: Sequence[Anchor]) -> None:
        blob = json.dumps([a.model_dump() for a in anchors])
        self._execute("INSERT OR REPLACE INTO summaries VALUES (?, ?, ?)", (key, blob, time.time()))


async def summarize_slice(lm: LM, text: str, docs: Sequence[str], doc: int, offset: int, *,
                          tags: dict[str, Any]) -> tuple[list[Anchor], str | None]:
    """The admitted anchors of one slice (offsets into document `doc`, the slice at `offset`)
    and None; or [] and why the slice's summary was rejected (after one repair round)."""
    messages = [
        {"role": "system", "content": prompts.READ_SUMMARY_SYSTEM},
        {"role": "user", "content": prompts.READ_SUMMARY_USER.format(text=text)},
    ]
    problems: list[str] = []
    for attempt in range(2):
        completion = await lm.complete(messages, role="reader", max_tokens=SUMMARY_TOKENS,
                                       tags={**tags, "repair": bool(attempt)})
        obj, error = load_json_object(completion.text)
        if obj is None:
            problems = [f"the reply was not valid JSON ({error})"]
        else:
            anchors, problems = locate_anchors(text, obj.get("points"), offset, doc, docs)
            if anchors and not problems:
                return anchors, None
        messages = messages + [
            {"role": "assistant", "content": completion.text},
            {"role": "user", "content": prompts.READ_SUMMARY_REJECTED.format(problems="; ".join(problems)[:1500])},
        ]
    return [], "; ".join(problems) or "no anchors"


async def summarize_chunk(lm: LM, docs: Sequence[str], doc: int, start: int, end: int, *,
                          cache: SummaryCache | None, trace: Trace | None, tags: dict[str, Any],
                          where: str, read: Callable[[list[str]], set[int]] | None = None) -> ChunkSummary:
    """The grounded summary of `docs[doc][start:end]`, its slices read concurrently (cached
    ones from `cache`). `read`: given the slices' texts, the indexes to read (None: all);
    the others are the summary's `unread` spans."""
    text = docs[doc][start:end]

    async def one(n: int, lo: int, hi: int) -> tuple[list[Anchor], str | None, bool]:
        piece = text[lo:hi]
        key = SummaryCache.key(piece, lm) if cache is not None else ""
        cached = cache.get(key) if cache is not None else None
        if cached is not None:
            return [a.model_copy(update={"doc": doc, "start": a.start + start + lo, "end": a.end + start + lo})
                    for a in cached], None, True
        try:
            anchors, reason = await summarize_slice(lm, piece, docs, doc, start + lo, tags={**tags, "slice": n})
        except LMError as exc:
            return [], f"the reader's model call failed: {exc}", False
        if anchors and cache is not None:
            cache.put(key, [a.model_copy(update={"start": a.start - start - lo, "end": a.end - start - lo})
                            for a in anchors])
        return anchors, reason, False

    every = slice_spans(text)
    chosen = read([text[lo:hi] for lo, hi in every]) if read is not None else set(range(len(every)))
    spans = [span for i, span in enumerate(every) if i in chosen]
    unread = [TextSpan(doc=doc, start=start + lo, end=start + hi, opening=text[lo:hi].lstrip()[:60].split("\n")[0])
              for i, (lo, hi) in enumerate(every) if i not in chosen]
    if unread and trace is not None:
        trace.emit("agent_step", agent=tags.get("agent"), task=tags.get("task"),
                   action=f"reads {len(spans)} of {len(every)} slices of {where}: those sharing most with the question"[:300])
    results = await asyncio.gather(*(one(n, lo, hi) for n, (lo, hi) in enumerate(spans, start=1)))
    anchors: list[Anchor] = []
    rejected: list[str] = []
    for n, (found, reason, cached) in enumerate(results, start=1):
        if trace is not None:
            action = (f"summary of slice {n}/{len(spans)}: " +
                      (f"{len(found)} anchors" + (" (cached)" if cached else " admitted") if found
                       else f"rejected: {reason}"))
            trace.emit("agent_step", agent=tags.get("agent"), task=tags.get("task"), action=action[:300])
        anchors.extend(found)
        if reason is not None:
            rejected.append(f"slice {n}: {reason}")
    numbered = [a.model_copy(update={"id": f"a{i}"}) for i, a in enumerate(anchors, start=1)]
    return ChunkSummary(where=where, anchors=numbered, rejected=rejected, unread=unread,
                        from_cache=sum(1 for _, _, c in results if c))


__all__ = [
    "CONTEXT_REACH_CHARS",
    "MAX_POINTS_PER_SLICE",
    "SUMMARY_SLICE_CHARS",
    "SUMMARY_VERSION",
    "Anchor",
    "ChunkSummary",
    "SummaryCache",
    "TextSpan",
    "locate_anchors",
    "pick_slices",
    "rank_slices",
    "sentence_context",
    "slice_spans",
    "summarize_chunk",
    "summarize_slice",
    "term_stems",
]
