"""The agreement stage: the partials of one question must agree with each other.

A check that reprints its own value proves self-consistency, not agreement between chunks
(issue 12: three chunks counted `{'': 27}` beside label-keyed partials and were added up
without a word). These rules compare a partial with the partials already admitted for the
run's chunk tasks, and with its own chunk. They are deterministic and read values only.

Count shapes. A partial's value is "counts" (a non-empty dict whose values are all numbers:
counts or measures per key) or "number" (one int or float). Anything else (text, a list, a
dict holding non-numbers, an empty value) has no count shape: these rules leave it to the
other stages, and the finalizer's `add_up` skips it, saying so.

Schema, against the admitted count partials of the run's chunk tasks (their keys: K):
  S1 a blank key ('' or spaces) names no value: rejected, saying which keys the others use;
  S2 the shape must be theirs: counts beside counts, numbers beside numbers;
  S3 a key spelled like a key of K but not the same ('Numeric Value' for 'numeric value')
     is rejected, naming K's spelling;
  S4 when K is a closed vocabulary (3 or more admitted count partials and some keys in every
     one of them, as labels are), a partial sharing no key with K is rejected.
  A key of K that a partial lacks is an explicit zero: the partial's coverage (C1) says it
  counted every record of its chunk, so a key it lacks has none there.

Coverage, for counts of whole numbers over a chunk of records (its non-empty lines):
  C1 the counts must add up to at least `records - max(2, ceil(tolerance * records))`
     (tolerance 10% by default: headers, blank-ish lines); records without a value are
     counted under None (`Counter(value or None ...)`). A single number is not held to
     coverage: it may count a subset ("how many are X" -> 27 of 160). Coverage is off
     (tolerance None) for corpora that must be read (documents, not records).

Labels, where the plan says no record states what is asked (the records must be labelled,
`labelling`), for counts over a chunk with the labels the question or corpus names (2 or more):
  L1 each key other than None must be one of those labels or a value one of the chunk's records
     states in a field (`field_values`, e.g. a user id): a fragment of a record's text
     (`line.split("abbreviation")[1]`) is neither;
  L2 counts keyed by labels must label the chunk's records: those under None (no label) may
     be at most the coverage slack (C1's).

Finalization (team/finalizer.py) repeats S1, S2 and S4 over every admitted partial with
`disagreement`, and refuses a count read of a key that partials lack without accounting for
all their records (C1 failing or unknown): `lacking_keys` names them.
"""

from __future__ import annotations

import math
from collections import Counter
from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any, Literal

from delm_rlm import prompts
from delm_rlm.gists import Gist, GistKind
from delm_rlm.state.context import SharedContext
from delm_rlm.verify.verdict import Rejection

CountShape = Literal["counts", "number"]
COVERAGE_TOLERANCE = 0.10
COVERAGE_SLACK_RECORDS = 2  # the least slack, for small chunks
CLOSED_VOCABULARY_PARTIALS = 3
KEYS_SHOWN = 8


def is_number(value: Any) -> bool:
    return isinstance(value, (int, float)) and not isinstance(value, bool)


def count_shape(value: Any) -> CountShape | None:
    """"counts", "number", or None for a value with no count shape (see the module doc)."""
    if is_number(value):
        return "number"
    if isinstance(value, dict) and value and all(is_number(v) for v in value.values()):
        return "counts"
    return None


def key_name(key: Any) -> str:
    """A key as partials compare it: JSON turns a None key into "null", a printout into
    None; all three are "None"."""
    return "None" if key is None or key in ("null", "None") else str(key)


def keys_of(value: Mapping[Any, Any]) -> list[str]:
    return [key_name(k) for k in value]


def count_records(text: str | None) -> int:
    """A chunk's records: its non-empty lines."""
    return sum(1 for line in (text or "").splitlines() if line.strip())


def coverage_floor(records: int, tolerance: float) -> int:
    """The least a chunk's counts must add up to (rule C1)."""
    slack = max(COVERAGE_SLACK_RECORDS, math.ceil(tolerance * records))
    return max(0, records - slack)


def covers_records(value: Any, records: int, tolerance: float) -> bool | None:
    """Whether counts of whole numbers account for `records` (C1); None when the rule does
    not apply (not counts of whole numbers, or no records)."""
    if count_shape(value) != "counts" or records <= 0:
        return None
    if not all(isinstance(v, int) and not isinstance(v, bool) for v in value.values()):
        return None  # measures per key (averages, sums of amounts) count no records
    return sum(value.values()) >= coverage_floor(records, tolerance)


def shown_keys(keys: Iterable[str]) -> str:
    ordered = list(dict.fromkeys(keys))
    text = ", ".join(repr(k) for k in ordered[:KEYS_SHOWN])
    return text + (f" and {len(ordered) - KEYS_SHOWN} more" if len(ordered) > KEYS_SHOWN else "")


def describe_shape(value: Any) -> str:
    shape = count_shape(value)
    if shape == "counts":
        return f"counts per key ({shown_keys(keys_of(value))})"
    if shape == "number":
        return "a single number"
    return "no count"


def _fold(key: str) -> str:
    """A key as spellings, labels and field values compare: case and runs of spaces ignored."""
    return " ".join(key.casefold().split())


def schema_problem(value: Any, reference: Sequence[Any]) -> str | None:
    """Why `value` breaks rules S1-S4 against the admitted values `reference`, or None."""
    shape = count_shape(value)
    if shape is None:
        return None
    counted = [v for v in reference if count_shape(v) is not None]
    others = [v for v in counted if count_shape(v) == "counts"]
    used = [k for v in others for k in keys_of(v)]
    if shape == "counts":
        blank = [k for k in keys_of(value) if not k.strip()]
        if blank:
            where = prompts.VERIFY_OTHERS_USE.format(keys=shown_keys(used)) if used else ""
            return prompts.VERIFY_BLANK_KEY.format(key=blank[0], others=where)
    if counted:
        shapes = Counter(count_shape(v) for v in counted)
        theirs = max(shapes, key=lambda s: (shapes[s], s == count_shape(counted[0])))
        if shape != theirs:
            example = next(v for v in counted if count_shape(v) == theirs)
            return prompts.VERIFY_OTHER_SHAPE.format(
                mine=describe_shape(value), n=len(counted), theirs=describe_shape(example))
    if shape != "counts" or not others:
        return None
    known = set(used)
    spelled = {_fold(k): k for k in used}
    for key in keys_of(value):
        same = spelled.get(_fold(key))
        if key not in known and same is not None and key != "None":
            return prompts.VERIFY_KEY_SPELLING.format(key=key, spelling=same)
    if len(others) >= CLOSED_VOCABULARY_PARTIALS:
        core = set.intersection(*(set(keys_of(v)) for v in others))
        mine = set(keys_of(value)) - {"None"}
        if core and mine and not mine & known:
            return prompts.VERIFY_OUTSIDE_VOCABULARY.format(
                mine=shown_keys(sorted(mine)), n=len(others), keys=shown_keys(used))
    return None


def coverage_problem(value: Any, records: int, tolerance: float | None) -> str | None:
    """Why `value`'s counts do not account for `records` (rule C1), or None."""
    if tolerance is None or covers_records(value, records, tolerance) is not False:
        return None
    counted = sum(value.values())
    return prompts.VERIFY_LOW_COVERAGE.format(
        counted=counted, records=records, floor=coverage_floor(records, tolerance),
        percent=f"{tolerance * 100:g}", slack=COVERAGE_SLACK_RECORDS,
    )


def labelling_problem(value: Any, records: int, labels: Sequence[str], stated: Callable[[], set[str]],
                      tolerance: float) -> str | None:
    """Why counts over a chunk whose records must be labelled break L1 or L2, or None.
    `stated()` gives the chunk's field values, folded (asked for only when a key needs it)."""
    if len(labels) < 2 or count_shape(value) != "counts":
        return None
    allowed = {_fold(label) for label in labels}
    keys = [k for k in keys_of(value) if k != "None"]
    odd = [k for k in keys if _fold(k) not in allowed]
    if odd:
        values = stated()
        odd = [k for k in odd if _fold(k) not in values]
        if odd:
            return prompts.VERIFY_NOT_LABELS.format(
                keys=shown_keys(odd), labels=shown_keys(labels), lines=records)
    unlabelled = sum(int(v) for k, v in value.items() if key_name(k) == "None")
    slack = records - coverage_floor(records, tolerance)
    if keys and all(_fold(k) in allowed for k in keys) and unlabelled > slack:
        return prompts.VERIFY_UNLABELLED.format(unlabelled=unlabelled, records=records, slack=slack)
    return None


@dataclass
class AgreementRules:
    """The agreement stage of one run: which tasks are chunk tasks (the team sets them when
    it plans), the coverage tolerance (None: off), and the shared context to read the
    admitted partials from. `Verifier.agreement` holds it (None: the stage is off).

    `labels` (the ones the question or corpus names) and `field_values` (a chunk's text ->
    the values its records state in fields, folded) turn on rules L1-L2 for a plan whose
    records must be labelled; the team, which knows how records carry fields, gives both."""

    context: SharedContext
    chunk_tasks: set[str] = field(default_factory=set)
    tolerance: float | None = COVERAGE_TOLERANCE
    labels: Sequence[str] = ()
    field_values: Callable[[str], set[str]] | None = None

    def applies(self, task_id: str | None) -> bool:
        return task_id is not None and task_id in self.chunk_tasks

    def reference(self, exclude: str | None = None) -> list[Gist]:
        """The admitted partials of the chunk tasks (other than `exclude`), oldest first."""
        found = [g for g in self.context.admitted(kinds=GistKind.PARTIAL)
                 if g.id != exclude and self.applies(g.provenance.task_id)]
        return sorted(found, key=lambda g: int((g.id or "g0")[1:]))

    def problem(self, value: Any, source: str | None, exclude: str | None = None) -> str | None:
        """Why a chunk partial `value` about `source` does not agree (schema, then coverage)."""
        found = schema_problem(value, [g.value for g in self.reference(exclude)])
        records = count_records(source)
        found = found or coverage_problem(value, records, self.tolerance)
        if found is None and self.field_values is not None and self.tolerance is not None:
            values = self.field_values
            found = labelling_problem(value, records, self.labels, lambda: values(source or ""), self.tolerance)
        return found

    def check(self, gist: Gist, source: str | None) -> None:
        """Raise a `Rejection` (recorded as a FAILURE gist) when `gist`, a partial of a chunk
        task, does not agree with the admitted partials or with its chunk."""
        if gist.kind != GistKind.PARTIAL or not self.applies(gist.provenance.task_id):
            return
        found = self.problem(gist.value, source, exclude=gist.id)
        if found is not None:
            raise Rejection("agreement", found)


def disagreement(partials: Sequence[Gist]) -> str | None:
    """Why admitted `partials` cannot be combined (S1, S2, S4 over all of them), naming the
    gists; None when they agree. Partials with no count shape are left out."""
    counted = [g for g in partials if count_shape(g.value) is not None]
    blank = [g for g in counted if count_shape(g.value) == "counts" and any(not k.strip() for k in keys_of(g.value))]
    if blank:
        return prompts.FINAL_BLANK_KEYS.format(ids=", ".join(str(g.id) for g in blank))
    groups: dict[str, list[Gist]] = {}
    for g in counted:
        groups.setdefault(str(count_shape(g.value)), []).append(g)
    if len(groups) > 1:
        parts = []
        for gs in groups.values():
            ids, many = ", ".join(str(g.id) for g in gs), len(gs) > 1
            shape = describe_shape(gs[0].value) if count_shape(gs[0].value) == "counts" or not many else "single numbers"
            parts.append(f"{ids} {'are' if many else 'is'} {shape}")
        return prompts.FINAL_MIXED_SCHEMAS.format(parts="; ".join(parts))
    counts = groups.get("counts", [])
    if len(counts) > CLOSED_VOCABULARY_PARTIALS:
        for g in counts:
            rest = [o for o in counts if o is not g]
            core = set.intersection(*(set(keys_of(o.value)) for o in rest))
            used = {k for o in rest for k in keys_of(o.value)}
            mine = set(keys_of(g.value)) - {"None"}
            if core and mine and not mine & used:
                return prompts.FINAL_OUTSIDE_VOCABULARY.format(
                    id=g.id, mine=shown_keys(sorted(mine)), keys=shown_keys(sorted(used)))
    return None


def lacking_keys(partials: Sequence[tuple[str, Any, bool | None]]) -> dict[str, list[str]]:
    """For (gist id, value, covers all its records) triples: each key that some count
    partials lack although they do not account for all their records, with those gists.
    A partial that covers its records has an explicit zero for a key it lacks."""
    counted = [(gid, v, full) for gid, v, full in partials if count_shape(v) == "counts"]
    keys = list(dict.fromkeys(k for _, v, _ in counted for k in keys_of(v)))
    out: dict[str, list[str]] = {}
    for key in keys:
        missing = [gid for gid, v, full in counted if key not in keys_of(v) and not full]
        if missing:
            out[key] = missing
    return out
