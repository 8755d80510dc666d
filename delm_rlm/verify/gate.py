"""Verifier: the admission gate of the shared context.

A proposed gist is stored as PENDING (so every proposal is inspectable), then checked in
order, cheapest first; it is ADMITTED only if every applicable stage passes:

1. form: size limits, provenance, the evidence a kind needs. A gist that is an exact or near
   duplicate of an admitted one (`SharedContext.find_duplicate`: same kind, same value,
   same normalized text or token Jaccard >= 0.9 with the same numbers) is MERGED into it:
   the existing gist's support grows, the trace records `gist_merged`.
2. quotes: every `QuoteEvidence` must occur in document `doc` at `[start, end)`, compared
   whitespace-normalized. Offsets may be off by up to `quote_slack` characters (default 16:
   enough for a newline counted differently or a stripped line, far too little to point at
   another line). A quote found elsewhere is rejected with the place where it does occur,
   so the agent can fix its offsets. A whitespace-only quote is rejected.
3. code: `check` runs in the verifier's own sandbox, which holds the corpus and nothing of
   the proposer. Each check runs in a fresh namespace (`context`, a fresh list `docs`, a
   copy of `df`, a fresh builtins dict, plus the task's slice variables `chunk`,
   `chunk_doc`, `chunk_start`, `chunk_end` when the team passes them), so checks cannot
   see each other's variables; a check that errors, times out or crashes the kernel gets
   the kernel restarted before the next one (its state may be half-changed). Reusing one
   kernel between checks keeps a check at a few milliseconds instead of ~0.5 s.
   The printed output must equal the claimed value (see `compare_printed`); the output
   is stored on the admitted gist as `CodeEvidence`.
4. judge: claims that carry no check (FACT, PARTIAL, CONSTRAINT) go to the model (role
   "verifier"), which answers one line: `ADMIT: why` or `REJECT: why`. Everything from the
   corpus or from agents is wrapped in <data> blocks the prompt declares to be data, and the
   tags are neutralized inside the data, so a corpus line cannot close the block and speak
   as the system. Anything but a clear ADMIT is a rejection.

A rejection at the quote, code or judge stage records an admitted FAILURE gist (what was
claimed, why it failed, the check's output) in the same transaction, so no agent repeats
it; identical failures merge. Form problems are answered to the agent without a FAILURE
gist (they say nothing about the corpus).

Concurrency: proposals are verified concurrently (code checks take turns on the one
verifier kernel); the duplicate search is repeated under a lock before admitting when
another admission happened meanwhile, so two agents proposing the same claim at once end as
one admitted gist and one merge. (Verifiers in separate processes do not see each other's
in-flight proposals: there, near-simultaneous duplicates may both be admitted.)

Cost: judge calls go through the gateway with role "verifier" (so `usage.by_role`
separates them); `Verifier.stats` adds wall seconds per stage and counts of checks run.
"""

from __future__ import annotations

import ast
import asyncio
import json
import math
import re
import time
from collections.abc import Callable, Mapping, Sequence
from typing import TYPE_CHECKING, Any, Literal

from pydantic import BaseModel, Field

from delm_rlm.state.context import SharedContext
from delm_rlm.gists import CodeEvidence, Gist, GistKind, Provenance, QuoteEvidence
from delm_rlm.trace import Trace

if TYPE_CHECKING:
    from delm_rlm.llm.gateway import LM
    from sandbox import Sandbox

QUOTE_SLACK_CHARS = 16
MAX_SUMMARY_CHARS = 4000
MAX_CHECK_CHARS = 6000
MAX_EVIDENCE_ITEMS = 20
MAX_QUOTE_CHARS = 4000
MAX_VALUE_CHARS = 20_000
MAX_OUTPUT_KEPT = 2000
JUDGE_SOURCE_CHARS = 6000

# Kinds that state something about the corpus, so they need evidence or a check.
CLAIM_KINDS = frozenset({GistKind.FACT, GistKind.PARTIAL, GistKind.CONSTRAINT})

VerdictStatus = Literal["admitted", "rejected", "merged"]


class Verdict(BaseModel):
    """What happened to one proposal. `id` is the stored proposal; `admitted_id` the gist it
    counts as now (itself when admitted, the target when merged, None when rejected)."""

    status: VerdictStatus
    id: str | None = None
    admitted_id: str | None = None
    reason: str = ""
    stage: str | None = Field(default=None, description="the stage that decided a rejection")
    checks: list[str] = Field(default_factory=list)
    output: str | None = None
    failure_gist_id: str | None = None

    @property
    def ok(self) -> bool:
        return self.status != "rejected"

    def for_agent(self) -> dict[str, Any]:
        """The JSON an agent's `propose()` returns."""
        out: dict[str, Any] = {"status": self.status}
        if self.admitted_id:
            out["id"] = self.admitted_id
        if self.status == "rejected":
            out["reason"] = self.reason
        elif self.status == "merged":
            out["note"] = f"same as {self.admitted_id}, which is already verified"
        if self.output is not None:
            out["check_output"] = self.output[:500]
        return out


class VerificationStats(BaseModel):
    """The verifier's own cost, next to the judge's model usage (role 'verifier')."""

    proposed: int = 0
    admitted: int = 0
    rejected: int = 0
    merged: int = 0
    checks_run: dict[str, int] = Field(
        default_factory=lambda: {"form": 0, "quotes": 0, "code": 0, "judge": 0}
    )
    kernel_restarts: int = 0
    seconds: float = 0.0
    seconds_by_stage: dict[str, float] = Field(
        default_factory=lambda: {"form": 0.0, "quotes": 0.0, "code": 0.0, "judge": 0.0}
    )


EMPTY_RESULT = (
    "the result is empty although the chunk has {lines} non-empty lines: the code matched "
    "nothing, e.g. a field these lines do not have. Match what the lines contain; if they "
    "do not state what the question is about (such as a label), label them first and count "
    "the labels:\n"
    "```repl\n"
    "from collections import Counter\n"
    "{labels_code}"
    "counts = Counter(labels)\n"
    "print(dict(counts))\n"
    'answer["content"] = str(dict(counts))\n'
    'answer["ready"] = True\n'
    "```"
)
# Without labels named in the question the hint has a placeholder that fails if copied as it
# is ([...] is not a label), instead of one that runs and counts made-up labels.
LABELS_PLACEHOLDER = (
    "LABELS = [...]  # every label the question (or the text) names, written exactly as there\n"
    "labels = classify(chunk.splitlines(), LABELS)\n"
)


# `for line in chunk` walks a str character by character, so no "line" holds a field: the
# most common cause of an empty count we saw from small models (benchmark, issue 4).
_ITERATES_CHARACTERS = re.compile(r"\bfor\s+\w+\s+in\s+chunk\b(?!\s*[.\[(])")
ITERATES_CHARACTERS = (
    "your code loops `for ... in chunk`: chunk is one str, so that loop goes character by "
    "character and no line ever matches; loop over chunk.splitlines() instead. "
)


def empty_result_reason(lines: int, labels: Sequence[str] = (), check: str | None = None) -> str:
    """Why an empty partial is sent back, with a classify example over `labels` (the ones
    the question lists) or, when it lists none, over a placeholder to fill in. A `check`
    that loops over the chunk's characters is told so first."""
    code = (
        f"labels = classify(chunk.splitlines(), {json.dumps(list(labels), ensure_ascii=False)})\n"
        if len(labels) >= 2 else LABELS_PLACEHOLDER
    )
    cause = ITERATES_CHARACTERS if check and _ITERATES_CHARACTERS.search(check) else ""
    return cause + EMPTY_RESULT.format(lines=lines, labels_code=code)


def named_labels(text: str) -> list[str]:
    """The labels a text lists ("... where answer is one of the labels: a, b, c." or "one of
    6 categories: 'a', 'b', ..."), in its order; [] when it lists fewer than two."""
    found = re.search(r"one of (?:the |\d+ )?(?:labels|categories|classes)\s*:\s*([^\n]+)", text, re.IGNORECASE)
    if not found:
        return []
    items = [item.strip().rstrip(".").strip().strip("'\"").strip() for item in found.group(1).split(",")]
    items = list(dict.fromkeys(item for item in items if item))
    return items if len(items) >= 2 else []


def _is_empty(value: Any) -> bool:
    return isinstance(value, (dict, list, tuple, str)) and not (value.strip() if isinstance(value, str) else value)


class _Rejection(Exception):
    def __init__(self, stage: str, reason: str, *, record: bool = True, output: str | None = None):
        super().__init__(reason)
        self.stage = stage
        self.reason = reason
        self.record = record
        self.output = output


# ---------------------------------------------------------------------------------------
# Comparing a check's printed output with a claimed value
# ---------------------------------------------------------------------------------------


def _ws(text: str) -> str:
    return " ".join(text.split())


def parse_printed(text: str) -> Any:
    """A printed value as data: JSON first, then a Python literal (`print([1, 'a'])`),
    else the whitespace-normalized text itself."""
    s = text.strip()
    for parse in (json.loads, ast.literal_eval):
        try:
            return parse(s)
        except (ValueError, SyntaxError, TypeError, MemoryError, RecursionError):
            continue
    return _ws(s)


def _as_number(value: Any) -> float | None:
    if isinstance(value, bool):
        return None
    if isinstance(value, (int, float)):
        return float(value)
    if isinstance(value, str):
        try:
            number = float(value.strip().replace(",", ""))
        except ValueError:
            return None
        return number if math.isfinite(number) else None
    return None


def _json_key(key: Any) -> str:
    """A dict key compared as a string. A None key (e.g. Counter(classify(...)) counting
    unlabelled items) reaches a claim as "null" through JSON or "None" through pydantic, and
    a printout as None: all three compare equal."""
    return "None" if key is None or key == "null" else str(key)


def values_match(claimed: Any, printed: Any, tolerance: float = 0.0) -> bool:
    """Rules: numbers (int/float, or numeric strings) within `tolerance` absolute, plus
    1e-9 relative for float formatting; bools only equal bools; strings equal after
    whitespace normalization (case-sensitive); lists/tuples element-wise in order; dicts
    with the same keys (compared as strings; None, "None" and "null" alike) and matching values."""
    if isinstance(claimed, bool) or isinstance(printed, bool):
        if isinstance(claimed, bool) and isinstance(printed, bool):
            return claimed is printed
        if isinstance(claimed, bool) and isinstance(printed, str):
            return printed.strip().lower() == str(claimed).lower()
        return False
    a, b = _as_number(claimed), _as_number(printed)
    if a is not None and b is not None and not (isinstance(claimed, str) and isinstance(printed, str)):
        return abs(a - b) <= tolerance + 1e-9 * max(1.0, abs(a))
    if isinstance(claimed, (list, tuple)) and isinstance(printed, (list, tuple)):
        return len(claimed) == len(printed) and all(
            values_match(x, y, tolerance) for x, y in zip(claimed, printed)
        )
    if isinstance(claimed, dict) and isinstance(printed, dict):
        left = {_json_key(k): v for k, v in claimed.items()}
        right = {_json_key(k): v for k, v in printed.items()}
        return left.keys() == right.keys() and all(
            values_match(left[k], right[k], tolerance) for k in left
        )
    if isinstance(claimed, str) and isinstance(printed, str):
        if _ws(claimed) == _ws(printed):
            return True
        if a is not None and b is not None:  # "12" vs "12.0"
            return abs(a - b) <= tolerance + 1e-9 * max(1.0, abs(a))
        return False
    if isinstance(claimed, str):  # claimed "[1, 2]" as text, printed a list
        return _ws(claimed) == _ws(json.dumps(printed)) or _ws(claimed) == _ws(repr(printed))
    return claimed is None and printed is None


def compare_printed(claimed: Any, output: str, tolerance: float = 0.0) -> tuple[bool, Any]:
    """Does the printed `output` state `claimed`? The whole output is tried first, then its
    last non-empty line (a check may print progress before the value). Returns (match, the
    value read from the output)."""
    whole = parse_printed(output)
    if values_match(claimed, whole, tolerance):
        return True, whole
    lines = [line for line in output.strip().splitlines() if line.strip()]
    if len(lines) > 1:
        last = parse_printed(lines[-1])
        if values_match(claimed, last, tolerance):
            return True, last
        return False, last
    return False, whole


# ---------------------------------------------------------------------------------------
# Quote check
# ---------------------------------------------------------------------------------------


def check_quote(ev: QuoteEvidence, docs: Sequence[str], slack: int = QUOTE_SLACK_CHARS) -> str | None:
    """None when the quote occurs at its stated place; else the reason, with a hint."""
    if ev.doc >= len(docs):
        return f"quote cites doc {ev.doc}, but the corpus has docs 0..{len(docs) - 1}"
    wanted = _ws(ev.quote)
    if not wanted:
        return "quote is empty (only whitespace): quote the exact words that support the claim"
    doc = docs[ev.doc]
    lo, hi = max(0, ev.start - slack), min(len(doc), ev.end + slack)
    if wanted in _ws(doc[lo:hi]):
        return None
    short = ev.quote.strip()[:60]
    found = doc.find(ev.quote.strip())
    if found >= 0:
        return (
            f"quote {short!r} is in doc {ev.doc} at [{found}:{found + len(ev.quote.strip())}], "
            f"not at the stated [{ev.start}:{ev.end}]: give the right offsets"
        )
    if wanted in _ws(doc):
        return (
            f"quote {short!r} occurs in doc {ev.doc} but not near [{ev.start}:{ev.end}]: "
            "locate it with docs[doc].find(...) and give those offsets"
        )
    return f"quote {short!r} does not occur in doc {ev.doc}: quote the source word for word"


# ---------------------------------------------------------------------------------------
# Judge prompt helpers
# ---------------------------------------------------------------------------------------

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
            return False, f"judge reply not understood ({_ws(raw)[:80]!r}); not admitted"
        reason = _ws(m.group(2)).strip("*_` ") or "no reason given"
        return m.group(1).upper() == "ADMIT", reason[:300]
    return False, "judge gave an empty reply; not admitted"


def _truncate_middle(text: str, limit: int) -> str:
    if len(text) <= limit:
        return text
    head = limit // 2
    return f"{text[:head]}\n[... {len(text) - limit:,} chars cut ...]\n{text[-(limit - head):]}"


# ---------------------------------------------------------------------------------------
# The check runner sent to the verifier kernel with every check
# ---------------------------------------------------------------------------------------

# Defined afresh in every cell, so a restart never loses it. The check gets copies of the
# corpus containers and its own builtins dict: a check cannot leave state for the next one
# through its globals, `docs.append(...)`, `df.drop(..., inplace=True)` or `__builtins__`.
_RUNNER = '''
def __delm_check(__code, __vars):
    import builtins as __b
    __ns = {"__name__": "__check__", "__builtins__": dict(__b.__dict__)}
    __g = globals()
    if "context" in __g: __ns["context"] = __g["context"]
    if "docs" in __g: __ns["docs"] = list(__g["docs"])
    if "df" in __g: __ns["df"] = __g["df"].copy()
    if "chunk_doc" in __vars:
        __d, __s, __e = __vars["chunk_doc"], __vars["chunk_start"], __vars["chunk_end"]
        __ns["chunk"] = __ns["docs"][__d][__s:__e]
    elif "context" in __ns:
        __ns["chunk"] = __ns["context"]
    for __t in __vars.pop("__replay_tools", []):
        if __t in __g: __ns[__t] = __g[__t]
    __ns.update(__vars)
    exec(compile(__code, "<check>", "exec"), __ns)
'''


def _last_error_line(error: str) -> str:
    lines = [line for line in error.strip().splitlines() if line.strip()]
    first = lines[0] if lines else error
    # ExecResult.error starts with "Type: message"; keep that line, it names the cause.
    return _ws(first)[:240]


# ---------------------------------------------------------------------------------------
# The verifier
# ---------------------------------------------------------------------------------------


class Verifier:
    """Admits, merges or rejects proposed gists (see the module docstring).

    `sandbox_factory` builds the verifier's own sandbox (started lazily, on the first
    check); `lm` is the judge (None: claims that need the judge are rejected, unless
    `judge=False`, which admits quote-backed claims on their quotes alone, for benchmarks
    and for users who accept that).
    """

    def __init__(
        self,
        context: SharedContext,
        docs: Sequence[str],
        *,
        lm: LM | None = None,
        sandbox_factory: Callable[[], Sandbox] | None = None,
        corpus_value: Any = None,
        trace: Trace | None = None,
        judge: bool = True,
        check_timeout: float = 30.0,
        quote_slack: int = QUOTE_SLACK_CHARS,
        require_check_for_values: bool = True,
        judge_source_chars: int = JUDGE_SOURCE_CHARS,
        replay_tools: Mapping[str, Callable[..., Any]] | None = None,
        label_hint: Sequence[str] = (),
    ) -> None:
        self.context = context
        self.docs = list(docs)
        self.lm = lm
        self.sandbox_factory = sandbox_factory
        # What the verifier sandbox loads: the same value the agents' sandboxes load, so
        # `context`, `docs` and `df` mean the same in a check as in the agent's REPL.
        self.corpus_value = corpus_value if corpus_value is not None else self.docs
        self.trace = trace
        self.judge = judge
        self.check_timeout = check_timeout
        self.quote_slack = quote_slack
        self.require_check_for_values = require_check_for_values
        self.judge_source_chars = judge_source_chars
        # Host functions a check may call, answering from what the agents' calls recorded
        # (e.g. classify -> ClassificationLog.replay): deterministic, no model calls.
        self.replay_tools = dict(replay_tools or {})
        self.label_hint = list(label_hint)  # labels the question or corpus names, for the empty-result hint
        self.stats = VerificationStats()
        self._sandbox: Sandbox | None = None
        self._code_lock = asyncio.Lock()
        self._admit_lock = asyncio.Lock()
        self._admissions = 0  # admissions by this verifier (other processes: see docstring)
        self._closed = False

    # -- lifecycle ----------------------------------------------------------------------

    async def close(self) -> None:
        self._closed = True
        if self._sandbox is not None:
            sb, self._sandbox = self._sandbox, None
            await sb.close()

    async def __aenter__(self) -> Verifier:
        return self

    async def __aexit__(self, *exc: object) -> None:
        await self.close()

    async def _ensure_sandbox(self) -> Sandbox:
        if self._sandbox is None:
            if self.sandbox_factory is None:
                raise _Rejection(
                    "code",
                    "this verifier has no sandbox for code checks; propose the claim "
                    "with quotes instead",
                    record=False,
                )
            sb = self.sandbox_factory()
            for name, fn in self.replay_tools.items():
                sb.register(name, fn)
            await sb.start()
            await sb.load_context(self.corpus_value)
            self._sandbox = sb
        return self._sandbox

    # -- the gate -----------------------------------------------------------------------

    async def verify(
        self,
        gist: Gist,
        *,
        source: str | None = None,
        check_vars: dict[str, Any] | None = None,
        require_check: bool | None = None,
        reject_empty: bool = False,
    ) -> Verdict:
        """Decide one proposal. `source`: text the claim is about (the task's chunk), shown
        to the judge; `check_vars`: the task's slice (chunk_doc, chunk_start, chunk_end)
        exposed to the check; `require_check`: a claimed value must come with a check
        (default: the verifier's setting); `reject_empty`: a PARTIAL whose value is empty
        ({}, [], "") about a `source` with text is rejected as counting nothing (the team
        asks this on a task's first attempt only, so a truly empty chunk still gets in)."""
        started = time.perf_counter()
        self.stats.proposed += 1
        agent = gist.provenance.agent_id
        task = gist.provenance.task_id
        checks: list[str] = []
        pending: Gist | None = None
        try:
            # 1. form (before storing: a malformed proposal is an input error, not a claim)
            t0 = time.perf_counter()
            self.stats.checks_run["form"] += 1
            checks.append("form")
            try:
                self._check_form(gist, source, require_check)
            finally:
                self.stats.seconds_by_stage["form"] += time.perf_counter() - t0
            pending = self.context.add_pending(gist)
            self._emit("gist_proposed", agent, task, gist=pending)
            admissions_seen = self._admissions
            duplicate = self.context.find_duplicate(pending)
            if duplicate is not None:
                return self._merge(pending, duplicate.id, checks)
            if reject_empty and gist.kind == GistKind.PARTIAL and _is_empty(gist.value) and source:
                lines = sum(1 for line in source.splitlines() if line.strip())
                if lines:
                    # A self-consistent check of an empty count proves only that the code
                    # matched nothing (typically a field the lines do not have): recorded as
                    # a FAILURE gist, so no agent repeats it.
                    raise _Rejection("empty", empty_result_reason(lines, self.label_hint, gist.check))

            # 2. quotes
            quotes = [e for e in gist.evidence if isinstance(e, QuoteEvidence)]
            if quotes:
                t0 = time.perf_counter()
                self.stats.checks_run["quotes"] += 1
                checks.append("quotes")
                try:
                    for ev in quotes:
                        problem = check_quote(ev, self.docs, self.quote_slack)
                        if problem is not None:
                            raise _Rejection("quotes", problem)
                finally:
                    self.stats.seconds_by_stage["quotes"] += time.perf_counter() - t0

            # 3. code check
            added: list[CodeEvidence] = []
            output: str | None = None
            if gist.check is not None:
                t0 = time.perf_counter()
                self.stats.checks_run["code"] += 1
                checks.append("code")
                try:
                    output = await self._run_check(gist, check_vars or {})
                finally:
                    self.stats.seconds_by_stage["code"] += time.perf_counter() - t0
                added.append(CodeEvidence(code=gist.check, output=output[:MAX_OUTPUT_KEPT]))

            # 4. judge, for claims nothing above could check
            note = "verified: " + ", ".join(checks[1:]) if len(checks) > 1 else "form only"
            if gist.check is None and gist.kind in CLAIM_KINDS:
                if self.judge:
                    t0 = time.perf_counter()
                    self.stats.checks_run["judge"] += 1
                    checks.append("judge")
                    try:
                        note = "judge: " + await self._judge(pending, source)
                    finally:
                        self.stats.seconds_by_stage["judge"] += time.perf_counter() - t0
                elif not quotes:
                    raise _Rejection(
                        "form",
                        "no check, no quotes and the model judge is off: nothing can verify it",
                        record=False,
                    )
                else:
                    note = "quotes verified (model judge off)"

            # Admit, unless an equal gist was admitted while this one was being checked.
            async with self._admit_lock:
                # Look again only if something was admitted meanwhile (the search is a scan).
                if self._admissions != admissions_seen:
                    duplicate = self.context.find_duplicate(pending)
                    if duplicate is not None:
                        return self._merge(pending, duplicate.id, checks, output)
                admitted = self.context.admit(pending.id, note=note, evidence=added)
                self._admissions += 1
            self.stats.admitted += 1
            self._emit("gist_admitted", agent, task, gist_id=admitted.id, note=note, checks=checks)
            return Verdict(
                status="admitted", id=admitted.id, admitted_id=admitted.id, reason=note,
                checks=checks, output=output,
            )
        except _Rejection as rej:
            return self._reject(gist, pending, rej, checks)
        finally:
            self.stats.seconds += time.perf_counter() - started

    # -- stages -------------------------------------------------------------------------

    def _check_form(self, gist: Gist, source: str | None, require_check: bool | None) -> None:
        def bad(reason: str) -> None:
            raise _Rejection("form", reason, record=False)

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
        needs_check = self.require_check_for_values if require_check is None else require_check
        if needs_check and gist.value is not None and gist.check is None:
            bad(
                "a claimed value needs check code that recomputes it from the corpus and "
                "prints it (check='print(...)')"
            )
        if gist.kind == GistKind.EVIDENCE and not gist.evidence and gist.check is None:
            bad("an EVIDENCE gist needs evidence: a quote or a check")
        if (
            gist.kind in CLAIM_KINDS
            and not gist.evidence
            and gist.check is None
            and not source
        ):
            bad("no evidence: add a quote (evidence=[...]) or check code, so it can be verified")

    async def _run_check(self, gist: Gist, check_vars: dict[str, Any]) -> str:
        check_vars = {**check_vars, "__replay_tools": sorted(self.replay_tools)}
        code = f"{_RUNNER}\n__delm_check({gist.check!r}, __import__('json').loads({json.dumps(check_vars)!r}))"
        async with self._code_lock:
            try:
                sb = await self._ensure_sandbox()
                result = await sb.execute(code, timeout=self.check_timeout)
                if not result.ok or result.restarted:
                    # State may be half-changed (or the kernel is new): start the next check clean.
                    if not result.restarted:
                        await sb.restart()
                    self.stats.kernel_restarts += 1
            except _Rejection:
                raise
            except Exception as exc:
                # The verifier's own sandbox failed: not the claim's fault, so no FAILURE gist;
                # drop the sandbox so the next check starts a new one.
                broken, self._sandbox = self._sandbox, None
                if broken is not None:
                    try:
                        await broken.close()
                    except Exception:
                        pass
                raise _Rejection(
                    "code", f"the verifier's sandbox failed ({type(exc).__name__}: {str(exc)[:200]}); "
                    "propose again later", record=False,
                ) from exc
        output = result.stdout
        if result.timed_out:
            raise _Rejection(
                "code", f"check timed out after {self.check_timeout:g} s: make it faster", output=output
            )
        if result.restarted:
            raise _Rejection("code", "check crashed the verifier's REPL", output=output)
        if result.error:
            hint = ""
            if result.error.startswith("NameError"):
                replayed = "".join(f", {name}" for name in sorted(self.replay_tools))
                hint = (
                    f" (checks run in a fresh REPL: only context, docs, df, chunk{replayed} exist "
                    "there; recompute everything inside the check)"
                )
            raise _Rejection("code", f"check failed: {_last_error_line(result.error)}{hint}", output=output)
        if not output.strip():
            raise _Rejection("code", "check printed nothing: end it with print(value)", output=output)
        match, seen = compare_printed(gist.value, output, gist.tolerance)
        if not match:
            tol = f" (tolerance {gist.tolerance:g})" if gist.tolerance else ""
            raise _Rejection(
                "code",
                f"claimed value {gist.value!r} but the check printed {_ws(output)[:120]!r}{tol}",
                output=output,
            )
        return output

    async def _judge(self, gist: Gist, source: str | None) -> str:
        if self.lm is None:
            raise _Rejection("judge", "this claim needs the model judge, and none is set", record=False)
        from delm_rlm import prompts

        evidence_lines: list[str] = []
        for n, ev in enumerate(gist.evidence, start=1):
            if isinstance(ev, QuoteEvidence):
                evidence_lines.append(f"quote {n} (doc {ev.doc} [{ev.start}:{ev.end}]): {ev.quote}")
            else:
                evidence_lines.append(f"code {n}:\n{ev.code}\noutput:\n{ev.output}")
        if gist.summary:
            evidence_lines.insert(0, f"summary: {gist.summary}")
        value = "" if gist.value is None else f"\nclaimed value: {json.dumps(gist.value)}"
        messages = prompts.judge_messages(
            claim=neutralize(f"[{gist.kind.name}] {gist.text}{value}"),
            evidence=neutralize("\n".join(evidence_lines)) if evidence_lines else "(none)",
            source=neutralize(_truncate_middle(source, self.judge_source_chars)) if source else None,
        )
        from delm_rlm.errors import LMError

        try:
            completion = await self.lm.complete(
                messages,
                role="verifier",
                max_tokens=80,
                tags={"agent": "verifier", "task": gist.provenance.task_id},
            )
        except LMError as exc:
            raise _Rejection("judge", f"the judge model failed ({exc}); not admitted", record=False) from exc
        admit, reason = parse_judge_reply(completion.text)
        if not admit:
            raise _Rejection("judge", f"judge: {reason}")
        return reason

    # -- outcomes -----------------------------------------------------------------------

    def _merge(self, pending: Gist, into: str | None, checks: list[str], output: str | None = None) -> Verdict:
        assert into is not None
        self.context.merge(pending.id, into)
        self.stats.merged += 1
        self._emit(
            "gist_merged", pending.provenance.agent_id, pending.provenance.task_id,
            gist_id=pending.id, into=into,
        )
        return Verdict(
            status="merged", id=pending.id, admitted_id=into, reason=f"duplicate of {into}",
            checks=checks, output=output,
        )

    def _reject(self, gist: Gist, pending: Gist | None, rej: _Rejection, checks: list[str]) -> Verdict:
        self.stats.rejected += 1
        agent, task = gist.provenance.agent_id, gist.provenance.task_id
        if pending is None:
            # Rejected on form before it was stored: answered to the agent, traced, not kept.
            self._emit("gist_rejected", agent, task, gist_id=None, reason=rej.reason, failure_gist_id=None)
            return Verdict(status="rejected", reason=rej.reason, stage=rej.stage, checks=checks)
        failure = self._failure_gist(pending, rej) if rej.record else None
        failure_id: str | None = None
        if failure is not None:
            existing = self.context.find_duplicate(failure)
            if existing is not None:
                # The same dead end again: count it on the existing FAILURE gist.
                self.context.reject(pending.id, rej.reason)
                self.context.add_support(existing.id)
                failure_id = existing.id
            else:
                _, recorded = self.context.reject(pending.id, rej.reason, failure=failure)
                failure_id = recorded.id if recorded else None
        else:
            self.context.reject(pending.id, rej.reason)
        self._emit(
            "gist_rejected", agent, task,
            gist_id=pending.id, reason=rej.reason, failure_gist_id=failure_id,
        )
        return Verdict(
            status="rejected", id=pending.id, reason=rej.reason, stage=rej.stage, checks=checks,
            output=rej.output, failure_gist_id=failure_id,
        )

    @staticmethod
    def _failure_gist(gist: Gist, rej: _Rejection) -> Gist:
        claim = _ws(gist.text)
        claim = claim if len(claim) <= 110 else claim[:107] + "..."
        value = "" if gist.value is None else f" (value {json.dumps(gist.value)[:30]})"
        text = f"Rejected {gist.kind.name} '{claim}'{value}: {_ws(rej.reason)}"
        if len(text) > 300:
            text = text[:297] + "..."
        summary = f"Proposed by {gist.provenance.agent_id} in {gist.provenance.task_id}: {gist.text}"
        evidence: list[CodeEvidence] = []
        if gist.check is not None:
            summary += f"\nCheck code:\n{gist.check}"
            evidence.append(CodeEvidence(code=gist.check, output=(rej.output or "")[:MAX_OUTPUT_KEPT]))
        summary += f"\nRejected at the {rej.stage} stage: {rej.reason}"
        return Gist(
            kind=GistKind.FAILURE,
            text=text,
            summary=summary[:MAX_SUMMARY_CHARS],
            evidence=evidence,
            provenance=Provenance(
                task_id=gist.provenance.task_id, agent_id="verifier", model=None
            ),
        )

    def _emit(self, kind: str, agent: str | None, task: str | None, **data: Any) -> None:
        if self.trace is not None:
            self.trace.emit(kind, agent=agent, task=task, **data)
