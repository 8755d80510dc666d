"""The quote stage: does each quoted span occur in its document where the gist says?

Quotes are compared whitespace-collapsed. Offsets may be off by up to `quote_slack`
characters (default 16: enough for a newline counted differently or a stripped line, far
too little to point at another line). A quote found elsewhere is rejected with the place
where it does occur, so the agent can fix its offsets; a quote found nowhere is rejected with
the closest text near its stated place (`verify.fuzzy`), so the agent can copy that."""

from __future__ import annotations

from collections.abc import Sequence

from delm_rlm.gists import QuoteEvidence
from delm_rlm.values import collapse_whitespace
from delm_rlm.verify.fuzzy import closest_span

QUOTE_SLACK_CHARS = 16
# How far around its stated span a quote found nowhere is compared, for the closest text.
CLOSEST_SEARCH_CHARS = 2000


def check_quote(ev: QuoteEvidence, docs: Sequence[str], slack: int = QUOTE_SLACK_CHARS) -> str | None:
    """None when the quote occurs at its stated place; else the reason, with a hint."""
    if ev.doc >= len(docs):
        return f"quote cites doc {ev.doc}, but the corpus has docs 0..{len(docs) - 1}"
    wanted = collapse_whitespace(ev.quote)
    if not wanted:
        return "quote is empty (only whitespace): quote the exact words that support the claim"
    doc = docs[ev.doc]
    lo, hi = max(0, ev.start - slack), min(len(doc), ev.end + slack)
    if wanted in collapse_whitespace(doc[lo:hi]):
        return None
    short = ev.quote.strip()[:60]
    found = doc.find(ev.quote.strip())
    if found >= 0:
        return (
            f"quote {short!r} is in doc {ev.doc} at [{found}:{found + len(ev.quote.strip())}], "
            f"not at the stated [{ev.start}:{ev.end}]: give the right offsets"
        )
    if wanted in collapse_whitespace(doc):
        return (
            f"quote {short!r} occurs in doc {ev.doc} but not near [{ev.start}:{ev.end}]: "
            "locate it with docs[doc].find(...) and give those offsets"
        )
    near = closest_span(doc, ev.quote, ev.start - CLOSEST_SEARCH_CHARS, ev.end + CLOSEST_SEARCH_CHARS)
    closest = (
        f"; the closest text is [{near.start}:{near.end}] {doc[near.start:near.end][:100]!r} "
        f"(similarity {near.similarity:.2f})" if near is not None else ""
    )
    return f"quote {short!r} does not occur in doc {ev.doc}{closest}: quote the source word for word"
