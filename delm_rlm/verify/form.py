"""The form stage: size limits, provenance, and the evidence a kind needs.

Run before a proposal is stored: a malformed proposal is an input error, not a claim, so
it is answered to the agent without a FAILURE gist (it says nothing about the corpus)."""

from __future__ import annotations

import json

from delm_rlm.gists import Gist, GistKind, QuoteEvidence
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

    def bad(reason: str) -> None:
        raise Rejection("form", reason, record=False)

    if gist.id is not None or gist.status.value != "pending":
        bad("propose a new gist: no id and status pending (the store assigns both)")
    if gist.provenance.task_id is None and gist.provenance.agent_id is None:
        bad("provenance is missing: a gist must name the task or agent that proposed it")
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
    if gist.value is not None and len(json.dumps(gist.value)) > MAX_VALUE_CHARS:
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
