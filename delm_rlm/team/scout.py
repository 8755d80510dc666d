"""The scout: before the team splits its corpus, decide whether decomposing pays.

"whole": one agent, one verified program over the whole corpus (the RLM's own prompts, its
answer checked by replaying its code: no more than RLM alone costs); "split": one task per
chunk, where every record needs the model (labels the text does not state: `classify`) or
documents must be read, because that is where parallel agents and shared progress pay.

Deterministic signals, in this order (no model call):
  1. the role runs no code (mode "delm") -> split;
  2. `needs_reading(question, corpus)` says the corpus must be read (documents, not
     records) -> split;
  3. the records and their fields: the corpus's non-empty lines (a table's rows), sampled
     evenly up to SAMPLE_LINES. A field is a key that at least FIELD_SHARE of them carry
     ("key: value" opening a `|`, `||`, tab or `;` separated segment, `key=value` tokens,
     JSON object keys, a CSV header, a table's columns). The records are the lines that
     carry a field, or every line when none does; the other lines (a preamble) are the header;
  4. the values the question names: its quoted terms before the answer-format clause
     ("Give your final answer in the form ...") and the labels it lists ("one of the
     labels: a, b"). A value is stated when it is a field's whole value in some record, or,
     unless the question asks for a property (label, category, class, sentiment, topic,
     intent), a whole word of some record. Every named value stated -> whole; one not stated
     -> split (no program can read it from the text: the records need the model);
  5. nothing named: a property word -> whole when a field of that name exists, else split;
     a question word naming a field (user -> User) -> whole; a question word that is a whole
     word of some record -> whole;
  6. otherwise split (nothing the question names was found in the records).
"""

from __future__ import annotations

import json
import math
import re
from collections import Counter
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any, Literal

import pandas as pd

from delm_rlm.corpus import Corpus

PlanKind = Literal["whole", "split"]
# Decides that a corpus must be read (documents, not records): (question, corpus) -> bool.
NeedsReading = Callable[[str, Corpus], bool]

SAMPLE_LINES = 20_000
FIELD_SHARE = 0.3
HEADER_LINES = 50  # the opening lines searched for a header that lists the corpus's labels

_SEGMENT = re.compile(r"\s*(?:\|\||\||\t|;)\s*")
_KEYED = re.compile(r"^([A-Za-z_][\w .\-]{0,30}?)\s*[:=]\s*(.*)$")
_PAIR = re.compile(r"(?:^|\s)([A-Za-z_][\w.\-]{0,30})=(\"[^\"]*\"|\S+)")
_QUOTED = re.compile(r"(?<![\w'])'([^'\n]{1,80}?)'(?!\w)|\"([^\"\n]{1,80})\"|\u201c([^\u201d\n]{1,80})\u201d")
_ANSWER_FORM = re.compile(
    r"\b(?:give|write|provide|state|put|return)\b[^.?!]{0,40}\b(?:answer|result|reply)\b"
    r"|\bin the (?:form|format)\b|\banswer (?:in|with|as)\b|\brespond\b|\breply with\b",
    re.IGNORECASE,
)
_LABEL_LIST = re.compile(
    r"one of (?:the |\d+ )?(?:labels|categories|classes)\s*:\s*([^\n]+)", re.IGNORECASE
)
_WORD = re.compile(r"[A-Za-z][\w\-]{2,}")
# A property a question may ask about; the field names that state it.
PROPERTY_FIELDS: dict[str, tuple[str, ...]] = {
    "label": ("label",), "labels": ("label",), "labelled": ("label",), "labeled": ("label",),
    "classified": ("label", "class", "categor"), "classification": ("label", "class", "categor"),
    "category": ("categor",), "categories": ("categor",), "class": ("class",), "classes": ("class",),
    "sentiment": ("sentiment",), "topic": ("topic",), "topics": ("topic",), "intent": ("intent",),
}
GENERIC_WORDS = frozenset("""
how many much what which who whom whose when where why the and for are was were this that these
those there with from into over under than then more most less least often common frequent
frequently times number count counts total line lines record records row rows entry entries item
items data point points above below following give final answer form format should would could
can all any each every per only consider subset instance instances among associated represented
appear appears appearing occur occurs occurring mention mentions mentioned contain contains
containing same exactly between not yes your you one two has have had does did being been its
their they them text corpus question questions value values many
""".split())


def named_labels(text: str) -> list[str]:
    """The labels a text lists ("... where answer is one of the labels: a, b, c." or "one of
    6 categories: 'a', 'b', ..."), in its order; [] when it lists fewer than two."""
    found = _LABEL_LIST.search(text)
    if not found:
        return []
    items = [item.strip().rstrip(".").strip().strip("'\"").strip() for item in found.group(1).split(",")]
    items = list(dict.fromkeys(item for item in items if item))
    return items if len(items) >= 2 else []


def line_fields(line: str) -> dict[str, str]:
    """The fields a line carries: a JSON object's keys, "key: value" segments, key=value
    tokens (see the module doc)."""
    text = line.strip()
    if text.startswith("{"):
        try:
            obj = json.loads(text)
        except ValueError:
            obj = None
        if isinstance(obj, dict):
            return {str(k): v if isinstance(v, str) else json.dumps(v) for k, v in obj.items()}
    out: dict[str, str] = {}
    for segment in _SEGMENT.split(text):
        keyed = _KEYED.match(segment)
        if keyed:
            out[keyed.group(1).strip()] = keyed.group(2).strip()
    for key, value in _PAIR.findall(text):
        out[key] = value.strip('"')
    return out


_CELL = re.compile(r"\s*(?:\|\||[|,;\t])\s*")
_AFTER_KEY = re.compile(r"^[^:=]{1,40}[:=]\s*")


def stated_values(text: str) -> set[str]:
    """What the records of `text` state as values, folded (case and runs of spaces ignored):
    their fields' values (`line_fields`) and their whole delimited cells, with and without a
    leading "key: " (CSV rows, rendered table rows). A category a count is keyed by is one of
    these when it is not a label."""
    out: set[str] = set()
    for line in text.splitlines():
        if not line.strip():
            continue
        cells = [c for c in _CELL.split(line.strip()) if c]
        found = [*line_fields(line).values(), *cells, *(_AFTER_KEY.sub("", c) for c in cells)]
        out.update(" ".join(str(v).casefold().split()) for v in found)
    out.discard("")
    return out


@dataclass
class RecordProfile:
    """What the scout saw of a corpus: sampled records with their fields, and the header."""

    records: list[str]
    record_fields: list[dict[str, str]]
    fields: list[str]
    header: list[str]
    total_lines: int

    def stated_as_value(self, term: str) -> int:
        """Records in which `term` is a field's whole value (case-insensitive)."""
        want = " ".join(term.casefold().split())
        return sum(1 for f in self.record_fields
                   if any(" ".join(str(v).casefold().split()) == want for v in f.values()))

    def stated_as_word(self, term: str) -> int:
        """Records in which `term` is a whole word or phrase (case-insensitive)."""
        pattern = re.compile(rf"(?<!\w){re.escape(term.casefold())}(?!\w)")
        return sum(1 for r in self.records if pattern.search(r.casefold()))

    def field_named(self, stems: tuple[str, ...]) -> str | None:
        for name in self.fields:
            parts = re.split(r"[\s_.\-]+", name.casefold())
            if any(p.startswith(stem) for p in parts for stem in stems):
                return name
        return None


def _sample(lines: list[str]) -> list[str]:
    step = max(1, math.ceil(len(lines) / SAMPLE_LINES))
    return lines[::step]


def profile_records(corpus: Corpus) -> RecordProfile:
    """The corpus's records, fields and header (see the module doc, signal 3)."""
    if isinstance(corpus.value, pd.DataFrame):
        frame = corpus.value
        rows = frame.head(SAMPLE_LINES).astype(str).to_dict(orient="records")
        fields = [str(c) for c in frame.columns]
        records = [", ".join(f"{k}: {v}" for k, v in row.items()) for row in rows]
        return RecordProfile(records, [{str(k): v for k, v in row.items()} for row in rows], fields, [], len(frame))
    all_lines = [line for doc in corpus.docs for line in doc.splitlines() if line.strip()]
    lines = _sample(all_lines)
    per_line = [line_fields(line) for line in lines]
    header_csv = _csv_header(lines)
    if header_csv is not None:
        delimiter, names = header_csv
        per_line = [dict(zip(names, (c.strip() for c in line.split(delimiter)))) for line in lines]
        per_line[0] = {}
    seen = Counter(k for f in per_line for k in f)
    fields = [k for k, n in seen.most_common() if n >= FIELD_SHARE * max(1, len(lines))]
    if fields:
        keep = [i for i, f in enumerate(per_line) if any(k in f for k in fields)]
    else:
        keep = list(range(len(lines)))
    kept = set(keep)
    header = [line for i, line in enumerate(lines[:HEADER_LINES]) if i not in kept]
    return RecordProfile([lines[i] for i in keep], [per_line[i] for i in keep], fields, header, len(all_lines))


def _csv_header(lines: list[str]) -> tuple[str, list[str]] | None:
    """(delimiter, column names) when the lines read as CSV with a header row."""
    if len(lines) < 3:
        return None
    for delimiter in (",", "\t", ";"):
        width = lines[0].count(delimiter)
        if width < 1:
            continue
        same = sum(1 for line in lines[1:] if line.count(delimiter) == width)
        names = [c.strip().strip('"') for c in lines[0].split(delimiter)]
        if same >= 0.8 * (len(lines) - 1) and all(n and not n.replace(".", "").isdigit() for n in names):
            return delimiter, names
    return None


def question_subject(question: str) -> str:
    """The question without its answer-format clause (quoted templates live there)."""
    found = _ANSWER_FORM.search(question)
    return question[: found.start()] if found else question


def named_values(question: str) -> list[str]:
    """The values a question names: quoted terms before its answer-format clause, and the
    labels it lists."""
    quoted = [next(g for g in m.groups() if g is not None).strip() for m in _QUOTED.finditer(question_subject(question))]
    return list(dict.fromkeys(v for v in [*quoted, *named_labels(question)] if v))


def content_words(question: str) -> list[str]:
    words = [w.casefold() for w in _WORD.findall(question_subject(question))]
    return list(dict.fromkeys(w for w in words if w not in GENERIC_WORDS))


@dataclass(frozen=True)
class PlanChoice:
    """The scout's decision, why, and what it saw (all in the trace's plan_chosen event)."""

    plan: PlanKind
    reason: str
    signals: dict[str, Any] = field(default_factory=dict)
    labels: list[str] = field(default_factory=list)  # for the empty-result hint
    reading: bool = False  # documents to read: the coverage rule does not apply
    labelling: bool = False  # no record states what is asked: chunk tasks label with classify


def corpus_labels(question: str, profile: RecordProfile) -> list[str]:
    """The labels the question lists, else those the corpus's header lists."""
    return named_labels(question) or named_labels("\n".join(profile.header))


def choose_plan(question: str, corpus: Corpus, *, runs_code: bool = True,
                needs_reading: NeedsReading | None = None) -> PlanChoice:
    """Decide "whole" or "split" for `question` over `corpus` (signals: the module doc)."""
    if needs_reading is not None and needs_reading(question, corpus):
        return PlanChoice("split", "the corpus must be read (documents, not records): agents read the chunks",
                          {"reading": True}, named_labels(question), reading=True)
    profile = profile_records(corpus)
    labels = corpus_labels(question, profile)
    signals: dict[str, Any] = {"records": len(profile.records), "lines": profile.total_lines,
                               "fields": profile.fields[:12]}
    if not runs_code:
        return PlanChoice("split", "this mode runs no code: no program can cover the corpus", signals, labels)
    words = [w.casefold() for w in _WORD.findall(question_subject(question))]
    prop = next((w for w in words if w in PROPERTY_FIELDS), None)
    prop_field = profile.field_named(PROPERTY_FIELDS[prop]) if prop else None
    signals["property"] = prop
    named = named_values(question)
    if named:
        stated: dict[str, int] = {}
        for term in named:
            stated[term] = profile.stated_as_value(term) or (0 if prop else profile.stated_as_word(term))
        signals.update(named=named, stated=stated)
        missing = [t for t, n in stated.items() if not n]
        if not missing:
            where = f" (field {prop_field!r})" if prop_field else ""
            shown = ", ".join(f"{t!r} in {n}" for t, n in stated.items())
            return PlanChoice("whole", f"the records state what the question names{where}: {shown} of "
                              f"{len(profile.records)} records; one program over the whole corpus answers",
                              signals, labels)
        fields = ", ".join(profile.fields[:6]) or "none"
        return PlanChoice("split", f"no record states {missing[0]!r} (record fields: {fields}): every record "
                          "needs the model to label it (classify), chunk by chunk", signals, labels, labelling=True)
    if prop:
        if prop_field:
            return PlanChoice("whole", f"the records state the {prop} (field {prop_field!r}): one program "
                              "over the whole corpus answers", signals, labels)
        fields = ", ".join(profile.fields[:6]) or "none"
        return PlanChoice("split", f"the question asks for a {prop}, which no record field states (fields: "
                          f"{fields}): every record needs the model (classify), chunk by chunk", signals, labels,
                          labelling=True)
    for word in content_words(question):
        name = next((f for f in profile.fields if _names_field(word, f)), None)
        if name:
            signals["field"] = name
            return PlanChoice("whole", f"the question's {word!r} is a field of the records ({name!r}): one "
                              "program over the whole corpus answers", signals, labels)
    for word in content_words(question):
        n = profile.stated_as_word(word)
        if n:
            signals["word"] = {word: n}
            return PlanChoice("whole", f"the question's {word!r} is in {n} of {len(profile.records)} records: "
                              "one program over the whole corpus answers", signals, labels)
    return PlanChoice("split", "nothing the question names was found in the records: agents read the chunks",
                      signals, labels)


def _names_field(word: str, name: str) -> bool:
    parts = [p for p in re.split(r"[\s_.\-]+", name.casefold()) if p]
    stem = word.rstrip("s")
    return any(p == word or p.rstrip("s") == stem for p in parts)
