"""The form stage: size limits, provenance, the evidence a kind needs, and what no
proposal may carry.

Run before a proposal is stored: a malformed proposal is an input error, not a claim, so
it is answered to the agent without a FAILURE gist (it says nothing about the corpus).

Refused outright: a FAILURE gist (only the verifier records those, one per rejection); a
`tolerance` (how values compare is the verifier's setting: ints exactly, floats within a
small relative slack); a non-finite number (inf, nan) anywhere in the value (JSON has none:
stored, it would read back as null); a QUESTION with a value or a check (it claims nothing)."""

from __future__ import annotations

import json
from typing import NoReturn

from delm_rlm.gists import Gist, GistKind, QuoteEvidence
from delm_rlm.values import non_finite_path
from delm_rlm.verify.verdict import Rejection

MAX_SUMMARY_CHARS = 4000
MAX_CHECK_CHARS = 6000
MAX_EVIDENCE_ITEMS = 20
MAX_QUOTE_CHARS = 4000
MAX_VALUE_CHARS = 20_000

# Kinds that state something about the corpus, so they need evidence or a check.
CLAIM_KINDS = frozenset({GistKind.FACT, GistKind.PARTIAL, GistKind.CONSTRAINT})


def check_form(gist: Gist, source: str | None, needs_check: bool) -> None:
    """Raise a `Rejection` (not recorded) saying what to fix when `gist` cannot be verified
    as proposed. `source`: the text the claim is about (a claim with one can be judged);
    `needs_check`: a claimed value must come with check code."""

    def bad(reason: str) -> NoReturn:
        raise Rejection("form", reason, record=False)

    if gist.id is not None or gist.status.value != "pending":
        bad("propose a new gist: no id and status pending (the store assigns both)")
    if gist.provenance.task_id is None and gist.provenance.agent_id is None:
        bad("provenance is missing: a gist must name the task or agent that proposed it")
    if gist.kind == GistKind.FAILURE:
        bad(
            "only the verifier records FAILURE gists (one for every rejected proposal): propose "
            "what you found as a FACT, or what is still open as a QUESTION"
        )
    if not isinstance(gist.tolerance, (int, float)) or gist.tolerance != 0:
        bad(
            "tolerance is not the proposer's to set: the verifier compares ints exactly and floats "
            "within its own small relative tolerance; propose without tolerance (round in the check "
            "if the value is a rounded float)"
        )
    where = non_finite_path(gist.value)
    if where is not None:
        bad(f"the value has a non-finite number (inf or nan) at {where}: claim finite numbers only")
    if gist.kind == GistKind.QUESTION and (gist.value is not None or gist.check is not None):
        bad("a QUESTION claims nothing: give it no value and no check (propose a FACT to claim one)")
    if gist.summary is not None and len(gist.summary) > MAX_SUMMARY_CHARS:
        bad(f"summary is {len(gist.summary)} chars; the limit is {MAX_SUMMARY_CHARS}")
    if gist.check is not None:
        if not gist.check.strip():
            bad("check is empty: give code that prints the claimed value, or no check")
        if len(gist.check) > MAX_CHECK_CHARS:
            bad(f"check is {len(gist.check)} chars; the limit is {MAX_CHECK_CHARS}")
        if gist.value is None:
            bad("a check needs the claimed value: pass value=... (what the check prints)")
    if len(gist.evidence) > MAX_EVIDENCE_ITEMS:
        bad(f"{len(gist.evidence)} evidence items; the limit is {MAX_EVIDENCE_ITEMS}")
    for ev in gist.evidence:
        if isinstance(ev, QuoteEvidence) and len(ev.quote) > MAX_QUOTE_CHARS:
            bad(f"a quote is {len(ev.quote)} chars; quote at most {MAX_QUOTE_CHARS}")
    try:
        value_chars = len(json.dumps(gist.value, allow_nan=False))
    except (TypeError, ValueError) as exc:
        bad(f"the value must be plain JSON (number, string, bool, list, dict, null): {exc}")
    if gist.value is not None and value_chars > MAX_VALUE_CHARS:
        bad(f"value is over {MAX_VALUE_CHARS} chars of JSON; store less, or several gists")
    if needs_check and gist.value is not None and gist.check is None:
        bad(
            "a claimed value needs check code that recomputes it from the corpus and "
            "prints it (check='print(...)')"
        )
    if gist.kind == GistKind.EVIDENCE and not gist.evidence and gist.check is None:
        bad("an EVIDENCE gist needs evidence: a quote or a check")
    if gist.kind in CLAIM_KINDS and not gist.evidence and gist.check is None and not source:
        bad("no evidence: add a quote (evidence=[...]) or check code, so it can be verified")
