"""Near-miss quotes: the span of a source text that a close-but-not-exact quote paraphrases.

Small models copy a quote almost word for word: a changed article, "percent" for "%", a
dropped comma. Such a quote is mapped to the source span it copies when the two are similar
enough, and then stands for that verbatim span; otherwise it is rejected with that closest
span shown, so the agent can copy it.

The rule, deterministic: both texts are case-folded with whitespace collapsed and curly
quotes made straight; similarity is difflib's ratio (2 * matched characters / total
characters) of the quote against candidate spans of the source; a quote is mapped when the
best span's similarity is at least FUZZY_QUOTE_THRESHOLD (0.85). Candidate spans are word
windows of half to all the quote's words (+2) starting where the most quote words occur, so
a search over a whole chunk costs one pass over its words and about a hundred ratios.
"""

from __future__ import annotations

import re
from collections import Counter
from difflib import SequenceMatcher
from typing import NamedTuple

FUZZY_QUOTE_THRESHOLD = 0.85
# Window starts (best word overlap first) whose spans are compared character by character.
CANDIDATE_STARTS = 8
# Words a window may have beyond the quote's own number.
LENGTH_SLACK_WORDS = 2

_WORD = re.compile(r"\S+")
_STRAIGHT = str.maketrans({"\u201c": '"', "\u201d": '"', "\u2018": "'", "\u2019": "'", "\u00a0": " "})


class SpanMatch(NamedTuple):
    """The source span [start, end) most like a quote, and how alike they are (0..1)."""

    start: int
    end: int
    similarity: float


def fold(text: str) -> str:
    """Case-folded, whitespace-collapsed, straight quotes: the form quotes are compared in."""
    return " ".join(text.translate(_STRAIGHT).casefold().split())


def _token(word: str) -> str:
    return word.translate(_STRAIGHT).casefold().strip(".,;:!?\"'()[]{}")


def closest_span(text: str, quote: str, lo: int = 0, hi: int | None = None) -> SpanMatch | None:
    """The span of `text[lo:hi]` (offsets into `text`) most like `quote`; None when either
    has no words. Ties go to the earliest span."""
    hi = len(text) if hi is None else min(hi, len(text))
    lo = max(0, lo)
    words = [(m.start() + lo, m.end() + lo, _token(m.group())) for m in _WORD.finditer(text[lo:hi])]
    wanted = [_token(w) for w in _WORD.findall(quote)]
    if not words or not wanted:
        return None
    size = len(wanted)
    need = Counter(wanted)
    have: Counter[str] = Counter()
    overlap = 0

    def add(tok: str, step: int) -> None:
        nonlocal overlap
        if step < 0:
            have[tok] -= 1
        if have[tok] < need[tok]:
            overlap += step
        if step > 0:
            have[tok] += 1

    for _, _, tok in words[:size]:
        add(tok, 1)
    scores: list[tuple[int, int]] = [(-overlap, 0)]  # (-overlap of words[i:i+size], i)
    for i in range(1, len(words)):
        add(words[i - 1][2], -1)
        if i + size - 1 < len(words):
            add(words[i + size - 1][2], 1)
        scores.append((-overlap, i))
    target = fold(quote)
    best: SpanMatch | None = None
    for _, first in sorted(scores)[:CANDIDATE_STARTS]:
        for length in range(max(1, min(size // 2, len(words) - first)), size + LENGTH_SLACK_WORDS + 1):
            last = first + length - 1
            if last >= len(words):
                break
            start, end = _trim(text, quote, words[first][0], words[last][1])
            ratio = SequenceMatcher(None, target, fold(text[start:end]), autojunk=False).ratio()
            if best is None or ratio > best.similarity or (ratio == best.similarity and start < best.start):
                best = SpanMatch(start, end, ratio)
    return best


def _trim(text: str, quote: str, start: int, end: int) -> tuple[int, int]:
    """Drop punctuation a word window carries at its edges that the quote does not have."""
    q = quote.strip()
    while end - start > 1 and text[end - 1] in ",;:.!?)\"'" and not q.endswith(text[end - 1]):
        end -= 1
    while end - start > 1 and text[start] in "(\"'" and not q.startswith(text[start]):
        start += 1
    return start, end


def map_quote(text: str, quote: str, lo: int = 0, hi: int | None = None,
              threshold: float = FUZZY_QUOTE_THRESHOLD) -> SpanMatch | None:
    """The span `quote` copies in `text[lo:hi]`: where it occurs (whitespace and case aside),
    else the closest span when it is at least `threshold` alike; None otherwise."""
    hi = len(text) if hi is None else min(hi, len(text))
    match = closest_span(text, quote, lo, hi)
    if match is None or match.similarity < threshold:
        return None
    return match


__all__ = ["CANDIDATE_STARTS", "FUZZY_QUOTE_THRESHOLD", "SpanMatch", "closest_span", "fold", "map_quote"]
