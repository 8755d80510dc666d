"""The support stage of reading gists, and what the answer gate asks of a gist.

A query-aware gist (team reading path) says what one part of the documents says about the
question, citing anchors of that part's grounded summary (points with verbatim quotes). It
is admitted only if its claims are supported by the anchors it cites: this deterministic
rule first (`support_problem`, run as the gate's "support" stage), the model judge second.

The rule:
1. the gist cites at least one anchor, and every anchor it cites exists in the summary;
2. every number it states (2019, 2.4, 40%) occurs in a cited anchor's point or quote, or in
   the question and its choices;
3. when it has at least MIN_CONTENT_WORDS content words (4+ letters, not stopwords), at
   least MIN_SUPPORTED_SHARE of them occur, compared by their first STEM_CHARS letters, in
   the cited anchors, the question, or the few words a gist uses to talk about the text
   ("part", "mentions", "supported", ...).

`corpus_quotes(gist, docs)`: the quotes of a gist that are found in the corpus where they
point; an answer about documents must rest on at least one gist that has one.
"""

from __future__ import annotations

import re
from collections.abc import Sequence

from delm_rlm.gists import Gist, QuoteEvidence
from delm_rlm.verify.quotes import check_quote

MIN_SUPPORTED_SHARE = 0.6
MIN_CONTENT_WORDS = 3
STEM_CHARS = 5

_NUMBER = re.compile(r"(?<![\w.])\d+(?:[.,]\d+)*")
_WORD = re.compile(r"[^\W\d_]{4,}")
_ANCHOR_MARK = re.compile(r"\[\s*a\d+(?:\s*,\s*a\d+)*\s*\]", re.IGNORECASE)
# Function words, and the words a gist uses to talk about the text rather than its content.
_STOPWORDS = frozenset("""
about above after again against also among because been before being below between both
could does doing down during each either every from further have having here however into
itself just later less more most much must neither other only over same should since some
such than that their them then there these they this those through thus under until upon
very were what when where whether which while whom whose will with within without would
your yours part parts text texts document documents section passage says said states stated
state mention mentions mentioned mentioning describe describes described discuss discusses
discussed note notes noted report reports reported nothing anything something relevant
question questions choice choices option options answer supported supports support
contradicted contradicts contradict correct incorrect true false given shows show shown
according regarding concerning related specific information details detail point points
""".split())


def numbers(text: str) -> set[str]:
    return {n.replace(",", "") for n in _NUMBER.findall(text)}


def stems(text: str) -> set[str]:
    return {w.casefold()[:STEM_CHARS] for w in _WORD.findall(text)}


def content_words(text: str) -> list[str]:
    return [w for w in _WORD.findall(_ANCHOR_MARK.sub(" ", text)) if w.casefold() not in _STOPWORDS]


def support_problem(text: str, cited: Sequence[tuple[str, str]], allowed: str = "",
                    unknown: Sequence[str] = (), known: Sequence[str] = ()) -> str | None:
    """Why gist `text` is not supported by its `cited` anchors ((point, quote) pairs), given
    the question and choices in `allowed`; None when it is. `unknown`: cited ids the
    summary does not have."""
    if unknown:
        has = f": its points are {'; '.join(known)}" if known else ": cite its anchors (a1, a2, ...)"
        return f"the gist cites {', '.join(unknown)}, which the summary does not have{has}"
    if not cited:
        listed = f": its points are {'; '.join(known)}" if known else ", like [a2]"
        return f"the gist cites no anchor of the summary: cite the points it rests on{listed}"
    basis = " ".join(f"{point} {quote}" for point, quote in cited)
    claimed = numbers(_ANCHOR_MARK.sub(" ", text)) - numbers(basis) - numbers(allowed)
    if claimed:
        return (f"the gist states {', '.join(sorted(claimed))}, which none of its cited anchors says: "
                "state only what the cited points and quotes say")
    words = content_words(text)
    if len(words) >= MIN_CONTENT_WORDS:
        known = stems(basis) | stems(allowed)
        unsupported = [w for w in words if w.casefold()[:STEM_CHARS] not in known]
        share = 1 - len(unsupported) / len(words)
        if share < MIN_SUPPORTED_SHARE:
            shown = ", ".join(dict.fromkeys(unsupported[:8]))
            return (f"only {share:.0%} of the gist's words are in its cited anchors (at least "
                    f"{MIN_SUPPORTED_SHARE:.0%} must be); not in them: {shown}")
    return None


def corpus_quotes(gist: Gist, docs: Sequence[str]) -> list[QuoteEvidence]:
    """The quotes of `gist` found in `docs` where they point (the quote verifier's rule)."""
    return [ev for ev in gist.evidence if isinstance(ev, QuoteEvidence) and check_quote(ev, docs) is None]


__all__ = ["MIN_CONTENT_WORDS", "MIN_SUPPORTED_SHARE", "STEM_CHARS", "content_words", "corpus_quotes",
           "numbers", "stems", "support_problem"]
