"""The judge stage: a model (role "verifier") decides claims that carry no check.

It answers one line, `ADMIT: why` or `REJECT: why`; anything but a clear ADMIT is a
rejection. Everything from the corpus or from agents is wrapped in <data> blocks the prompt
(`prompts.judge_messages`) declares to be data, and the tags are neutralized inside the
data, so a corpus line cannot close the block and speak as the system."""

from __future__ import annotations

import json
import re
from typing import TYPE_CHECKING

from delm_rlm import prompts
from delm_rlm.errors import LMError
from delm_rlm.gists import Gist, QuoteEvidence
from delm_rlm.values import collapse_whitespace
from delm_rlm.verify.verdict import Rejection

if TYPE_CHECKING:
    from delm_rlm.llm.gateway import LM

JUDGE_SOURCE_CHARS = 6000
JUDGE_MAX_TOKENS = 80  # one line

_DATA_TAG = re.compile(r"<\s*(/?)\s*(data|claim)\b", re.IGNORECASE)
_VERDICT = re.compile(r"^(ADMIT|REJECT)\b\s*[:\-\u2013\u2014.,]?\s*(.*)$", re.IGNORECASE)


def neutralize(text: str) -> str:
    """Data may not open or close the prompt's <data>/<claim> blocks."""
    return _DATA_TAG.sub(lambda m: f"\u2039{m.group(1)}{m.group(2)}", text)


def parse_judge_reply(reply: str) -> tuple[bool, str]:
    """(admit, reason) from the judge's first non-empty line. Strict: anything that does not
    start with ADMIT or REJECT is a rejection."""
    for raw in reply.splitlines():
        line = raw.strip().strip("*_#>`\"' ").strip()
        if not line:
            continue
        if line.lower().startswith("verdict"):
            line = line[7:].lstrip(" :*").strip()
        m = _VERDICT.match(line)
        if m is None:
            return False, f"judge reply not understood ({collapse_whitespace(raw)[:80]!r}); not admitted"
        reason = collapse_whitespace(m.group(2)).strip("*_` ") or "no reason given"
        return m.group(1).upper() == "ADMIT", reason[:300]
    return False, "judge gave an empty reply; not admitted"


def cut_middle(text: str, limit: int) -> str:
    """The head and tail of `text` within about `limit` characters, saying how much was cut."""
    if len(text) <= limit:
        return text
    head = limit // 2
    return f"{text[:head]}\n[... {len(text) - limit:,} chars cut ...]\n{text[-(limit - head):]}"


def judge_prompt(gist: Gist, source: str | None, source_chars: int = JUDGE_SOURCE_CHARS) -> list[dict[str, str]]:
    """The judge's messages for `gist`: the claim, its evidence and (cut to `source_chars`)
    the text it is about, each neutralized."""
    evidence_lines: list[str] = []
    for n, ev in enumerate(gist.evidence, start=1):
        if isinstance(ev, QuoteEvidence):
            evidence_lines.append(f"quote {n} (doc {ev.doc} [{ev.start}:{ev.end}]): {ev.quote}")
        else:
            evidence_lines.append(f"code {n}:\n{ev.code}\noutput:\n{ev.output}")
    if gist.summary:
        evidence_lines.insert(0, f"summary: {gist.summary}")
    value = "" if gist.value is None else f"\nclaimed value: {json.dumps(gist.value)}"
    return prompts.judge_messages(
        claim=neutralize(f"[{gist.kind.name}] {gist.text}{value}"),
        evidence=neutralize("\n".join(evidence_lines)) if evidence_lines else "(none)",
        source=neutralize(cut_middle(source, source_chars)) if source else None,
    )


async def judge_claim(
    lm: LM | None, gist: Gist, source: str | None, source_chars: int = JUDGE_SOURCE_CHARS
) -> str:
    """The judge's reason for admitting `gist`; raises a `Rejection` when it does not admit
    it (recorded), or when there is no judge or the judge model failed (not recorded: that
    says nothing about the claim)."""
    if lm is None:
        raise Rejection("judge", "this claim needs the model judge, and none is set", record=False)
    try:
        completion = await lm.complete(
            judge_prompt(gist, source, source_chars),
            role="verifier",
            max_tokens=JUDGE_MAX_TOKENS,
            tags={"agent": "verifier", "task": gist.provenance.task_id},
        )
    except LMError as exc:
        raise Rejection("judge", f"the judge model failed ({exc}); not admitted", record=False) from exc
    admit, reason = parse_judge_reply(completion.text)
    if not admit:
        raise Rejection("judge", f"judge: {reason}")
    return reason
