"""The substance rule: a claim backed by quotes (and no check) must say what its quotes say,
as far as words can show it, before it is admitted or any model judge is asked.

A quote proves only that its words are in the corpus; without the rule, "the answer is
999" quoting an unrelated line is "verified" whenever the judge is off. The rule is
deterministic and deliberately simple; it compares the claim's text with the text of its
evidence (the quoted spans, and the verifier's own output of any code evidence):

1. every number in the claim occurs in the evidence (in digits or spelled out), except numbers that say where rather
   than what: one after a word for a place in the corpus ("doc 1", "line 5", "chunk 3",
   "lines 10-20", "row 7") and one equal to a cited document's index;
2. every name in the claim occurs in the evidence: a word of two letters or more with a
   capital letter that does not open the claim or one of its sentences (one letter is a
   label, such as a choice), or a phrase the claim puts in quotes (each piece of it, when an ellipsis leaves words out);
3. at least half of the claim's other content words (three letters or more, not a common
   function word or a word about the corpus itself such as "doc", "line", "chunk") occur in
   the evidence, a word matching another when one begins with the other and the shorter has
   four letters or more ("report" / "reports");
4. a claim with none of these (no number, name or content word) says nothing a quote can
   support, and is refused.

Words are compared case-insensitively. What the rule cannot see: meaning ("not", order,
scope). A claim that passes it may still be false; with the judge on, the judge decides it.

A phrase the claim quotes that its evidence lacks but a cited document holds word for word
(`ground_quoted`) is found there by the verifier and becomes evidence of its own, at its
span: a reader's point quoting a clause from elsewhere in the document ("the expression 'In
loving memory this gift shall be known as ...'") is grounded in the text, not rejected for
citing the wrong anchor. Only whole phrases of three words or more are looked up, as literal
words with any whitespace between them.
"""

from __future__ import annotations

import re
from collections.abc import Iterable, Sequence

from delm_rlm.gists import QuoteEvidence

_NUMBER = re.compile(r"(?<![\w.])\d+(?:[.,]\d+)*(?![\w])")
_WORD = re.compile(r"[^\W\d_][^\W_]*(?:['\u2019-][^\W\d_]+)*")
_REFERENCE = re.compile(
    r"\b(?:docs?|documents?|lines?|chunks?|rows?|items?|pages?|paragraphs?|records?|entries|entry)"
    r"\s*(?:no\.?|#)?\s*(\d+)(?:\s*(?:-|\u2013|to|and)\s*(\d+))?",
    re.IGNORECASE,
)
_ELLIPSIS = re.compile(r"\[(?:\.{3}|\u2026)\]|\.{3}|\u2026")
_OPENS_SENTENCE = re.compile(r"(?:^|[.!?:]\s*)\W*$")
_QUOTED = re.compile(r"'([^']{2,})'|\"([^\"]{2,})\"|\u2018([^\u2019]{2,})\u2019|\u201c([^\u201d]{2,})\u201d")

# Function words, and words about the corpus itself: neither is substance a quote shows.
STOPWORDS = frozenset(
    """a an the and or nor but if then so than that this these those there here it its they them
    their he she his her we our you your i me my of to in on at by for with from into onto
    over under about after before between during as is are was were be been being am has have
    had do does did done can could should would will shall may might must not no yes any all
    some each every both either neither one ones which who whom whose what when where why how
    also only just very more most less least such same other another own says said say states
    stated state mentions mention mentioned contains contain contained shows show shown lists
    listed list reads read quote quoted quotes text texts corpus doc docs document documents
    chunk chunks line lines passage passages source sources given gives give""".split()
)
MIN_WORD = 3
MIN_STEM = 4


_UNITS = {w: n for n, w in enumerate(
    "zero one two three four five six seven eight nine ten eleven twelve thirteen fourteen fifteen "
    "sixteen seventeen eighteen nineteen".split())}
_TENS = {w: 10 * n for n, w in enumerate("twenty thirty forty fifty sixty seventy eighty ninety".split(), start=2)}
_SCALES = {"thousand": 1_000, "million": 1_000_000, "billion": 1_000_000_000}


def spelled_numbers(text: str) -> set[float]:
    """The values of the numbers `text` spells out ("Five Thousand Dollars" -> 5000.0, "two
    hundred and forty-one" -> 241.0): a quote states an amount in words as often as in digits."""
    values: set[float] = set()
    total = current = 0
    seen = False
    words = re.findall(r"[a-z]+", text.lower())
    for i, word in enumerate(words):
        if word in _UNITS or word in _TENS:
            current += _UNITS.get(word, 0) + _TENS.get(word, 0)
            seen = True
        elif word == "hundred" and seen:
            current = max(current, 1) * 100
        elif word in _SCALES and seen:
            total, current = total + max(current, 1) * _SCALES[word], 0
        elif word == "and" and seen and i + 1 < len(words) and words[i + 1] in {*_UNITS, *_TENS}:
            continue
        else:
            if seen:
                values.add(float(total + current))
            total = current = 0
            seen = False
    if seen:
        values.add(float(total + current))
    return values


def _number_value(text: str) -> float | None:
    try:
        return float(text.replace(",", ""))
    except ValueError:
        return None


def _words(text: str) -> list[str]:
    return [w.lower() for w in _WORD.findall(text)]


def _matches(word: str, pool: set[str]) -> bool:
    if word in pool:
        return True
    for other in pool:
        short, long_ = (word, other) if len(word) <= len(other) else (other, word)
        if len(short) >= MIN_STEM and long_.startswith(short):
            return True
    return False


# Quoted phrases the verifier looks up in the cited documents, and how many it adds.
MIN_GROUNDED_WORDS = 3
MAX_GROUNDED_PHRASES = 3
MAX_GROUNDED_CHARS = 400


def _quoted_pieces(claim: str) -> list[str]:
    """The phrases `claim` quotes, each cut at an ellipsis into the pieces it keeps."""
    quoted = [next(g for g in m.groups() if g) for m in _QUOTED.finditer(claim)]
    return [" ".join(p.split()) for q in quoted for p in _ELLIPSIS.split(q) if len(p.strip()) >= 2]


def ground_quoted(claim: str, evidence: Sequence[str], docs: Sequence[str],
                  cited_docs: Iterable[int]) -> list[QuoteEvidence]:
    """Spans of the cited documents that hold, word for word, a phrase `claim` quotes and
    its `evidence` lacks (see the module doc): at most `MAX_GROUNDED_PHRASES`, each of
    `MIN_GROUNDED_WORDS` words or more. Case must match; whitespace may differ."""
    have = " ".join(" ".join(evidence).split()).lower()
    found: list[QuoteEvidence] = []
    for piece in _quoted_pieces(claim):
        words = piece.split()
        if len(words) < MIN_GROUNDED_WORDS or len(piece) > MAX_GROUNDED_CHARS or piece.lower() in have:
            continue
        pattern = re.compile(r"\s+".join(re.escape(w) for w in words))  # literal words only
        for doc in sorted(set(cited_docs)):
            if not 0 <= doc < len(docs):
                continue
            match = pattern.search(docs[doc])
            if match:
                found.append(QuoteEvidence(doc=doc, start=match.start(), end=match.end(), quote=match.group()))
                have += " " + piece.lower()
                break
        if len(found) == MAX_GROUNDED_PHRASES:
            break
    return found


def unsupported(claim: str, evidence: Sequence[str], cited_docs: Iterable[int] = ()) -> str | None:
    """None when `claim` shares substance with the `evidence` texts by the rule above;
    else the reason, naming what is missing."""
    source = " ".join(evidence)
    source_lower = " ".join(source.split()).lower()
    source_numbers = {_number_value(n) for n in _NUMBER.findall(source)} | spelled_numbers(source)
    exempt = {float(d) for d in cited_docs}
    for found in _REFERENCE.finditer(claim):
        exempt.update(float(n) for n in found.groups() if n is not None)
    missing_numbers = [
        n for n in _NUMBER.findall(claim)
        if _number_value(n) not in source_numbers and _number_value(n) not in exempt
    ]
    if missing_numbers:
        return (
            f"the quotes do not contain {', '.join(missing_numbers[:3])}, which the claim states: quote "
            "the words that show it, or give the value with check code that computes it"
        )
    pool = set(_words(source))
    quoted = [next(g for g in m.groups() if g) for m in _QUOTED.finditer(claim)]
    # A quoted phrase with an ellipsis ("In memory ... Fund") leaves words out: each piece
    # must be in the evidence.
    missing_phrases = [q for q in quoted
                       if any(piece not in source_lower for piece in
                              (" ".join(p.split()).lower() for p in _ELLIPSIS.split(q)) if len(piece) >= 2)]
    if missing_phrases:
        return f"the quotes do not contain {missing_phrases[0]!r}, which the claim quotes"
    unquoted = _QUOTED.sub(" ", claim)
    tokens = _WORD.findall(unquoted)
    # A capital that opens a sentence (or follows a label such as "t1: ") is not a name; one
    # letter is a label (a choice "(B)", an option), not a name the quotes must carry.
    names = [m.group() for m in _WORD.finditer(unquoted)
             if not _OPENS_SENTENCE.search(unquoted[: m.start()]) and len(m.group()) > 1
             and any(c.isupper() for c in m.group()) and m.group().lower() not in STOPWORDS]
    missing_names = [n for n in names if not _matches(n.lower(), pool)]
    if missing_names:
        return f"the quotes do not mention {missing_names[0]!r}, which the claim names"
    content = [w for w in (t.lower() for t in tokens) if len(w) >= MIN_WORD and w not in STOPWORDS]
    content = list(dict.fromkeys(content))
    if not content and not _NUMBER.search(claim) and not names and not quoted:
        return "the claim states nothing the quotes could show: say what they say, in their words"
    found = [w for w in content if _matches(w, pool)]
    if content and 2 * len(found) < len(content):
        absent = [w for w in content if w not in found]
        return (
            f"the quotes share too few of the claim's words (not in them: {', '.join(absent[:4])}): "
            "state what the quoted text says"
        )
    return None
