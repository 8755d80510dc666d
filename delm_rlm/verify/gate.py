"""Verifier: the admission gate of the shared context.

A proposed gist is stored as PENDING (so every proposal is inspectable), then checked in
order, cheapest first; it is ADMITTED only if every applicable stage passes:

1. form (`verify.form`): size limits, provenance, the evidence a kind needs; refused
   outright: FAILURE gists (only the verifier writes those), a proposer's `tolerance`,
   non-finite numbers, a QUESTION with a value. A gist that is an exact or near duplicate
   of an admitted one (`SharedContext.find_duplicate`: same kind, same value by
   `delm_rlm.values.values_equal`, same normalized text or token Jaccard >= 0.9 with the
   same numbers) is MERGED into it: the existing gist's support grows, the trace records
   `gist_merged`. When the team asks, an empty PARTIAL about a chunk with text is sent back
   with a hint (`verify.empty_result`).
2. quotes (`verify.quotes`): every `QuoteEvidence` must occur in document `doc` at
   `[start, end)`, give or take `quote_slack` characters. A whitespace-only quote is
   rejected.
3. code (`verify.code_check`): `check` runs in the verifier's own sandbox, in a fresh
   forked interpreter that holds the corpus and nothing of the proposer or of any other
   check. Its whole printed output must be the claimed value, and must change when the
   corpus is emptied (unless the value is a "nothing found" one); code given as evidence
   is re-run the same way and the verifier's output is what is kept. The check's output
   is stored on the admitted gist as `CodeEvidence`.
   When the check replayed `classify`, the labels stage (`verify.spot_check`) re-labels a
   sample of those items independently and rejects the claim when they disagree too much;
   decided disagreements become labelling rules (`verify.label_rules`).
4. substance (`verify.substance`): a claim with quotes and no check or value must share
   its numbers, names and most content words with its evidence, before any judge is asked.
5. judge (`verify.judge`): claims that carry no check (FACT, PARTIAL, CONSTRAINT) go to the
   model (role "verifier"), which answers one line: `ADMIT: why` or `REJECT: why`. A
   labelling rule the spot check made from a dispute its votes decided, quoting its item,
   is admitted on the quote and the votes instead (they were the independent check).
   Anything but a clear ADMIT is a rejection. With the judge off, a claimed value without a
   check is rejected (nothing can verify it), and a quote-only claim is admitted on
   stages 2 and 4.
6. conflicts (`verify.conflicts`), after admission: an admitted claim about the same thing
   with another value is settled by re-running both checks or by votes; the loser becomes
   SUPERSEDED.

QUESTION gists are admitted as open questions (quotes checked, nothing claimed); the prompt
view shows them apart from the verified gists.

A rejection at the empty, quote, code or judge stage records an admitted FAILURE gist
(what was claimed, why it failed, the check's output) in the same transaction, so no agent
repeats it; identical failures merge. Form problems are answered to the agent without a
FAILURE gist (they say nothing about the corpus).

Concurrency: proposals are verified concurrently (code checks take turns on the one
verifier kernel); the duplicate search is repeated under a lock before admitting when
another admission happened meanwhile, so two agents proposing the same claim at once end as
one admitted gist and one merge. (Verifiers in separate processes do not see each other's
in-flight proposals: there, near-simultaneous duplicates may both be admitted.)

Cost: judge calls go through the gateway with role "verifier" (so `usage.by_role`
separates them); `Verifier.stats` adds wall seconds per stage and counts of checks run.
"""

from __future__ import annotations

import asyncio
import json
import time
from collections.abc import Callable, Iterator, Mapping, Sequence
from contextlib import contextmanager
from typing import TYPE_CHECKING, Any

from delm_rlm.errors import ConfigError, RunStateError
from delm_rlm.gists import CodeEvidence, Gist, GistKind, Provenance, QuoteEvidence
from delm_rlm.state.context import SharedContext
from delm_rlm.trace import Trace
from delm_rlm.values import collapse_whitespace
from delm_rlm.verify.agreement import AgreementRules
from delm_rlm.verify.code_check import CHECK_TIMEOUT_SECONDS, FLOAT_TOLERANCE, CheckRunner
from delm_rlm.verify.conflicts import DEFAULT_VOTES, ConflictResolver, check_vote_count
from delm_rlm.verify.empty_result import check_empty_result
from delm_rlm.verify.form import CLAIM_KINDS, MAX_SUMMARY_CHARS, check_form
from delm_rlm.verify.judge import JUDGE_SOURCE_CHARS, judge_claim
from delm_rlm.verify.label_rules import label_rules
from delm_rlm.verify.quotes import QUOTE_SLACK_CHARS, check_quote
from delm_rlm.verify.spot_check import (
    DEFAULT_MAX_RULES,
    DEFAULT_MIN_AGREEMENT,
    ReplayedLabels,
    ReplayWatcher,
    SpotChecker,
)
from delm_rlm.verify.substance import ground_quoted, unsupported
from delm_rlm.verify.verdict import Rejection, Verdict, VerificationStats

if TYPE_CHECKING:
    from delm_rlm.llm.gateway import LM
    from sandbox import Sandbox

MAX_OUTPUT_KEPT = 2000  # characters of a check's output stored as evidence
MAX_FAILURE_TEXT = 300  # a FAILURE gist's text: one prompt-view line
MAX_FAILURE_CLAIM = 110  # of which the rejected claim, quoted
# Kinds whose text must say what their quotes say (stage 4).
# A CONSTRAINT says how to read items (a labelling rule), not what they state: its words need
# not be the quoted item's, so the substance rule leaves it to the judge.
SUBSTANCE_KINDS = (CLAIM_KINDS | {GistKind.EVIDENCE}) - {GistKind.CONSTRAINT}


class Verifier:
    """Admits, merges or rejects proposed gists (see the module docstring).

    `sandbox_factory` builds the verifier's own sandbox (started lazily, on the first
    check); `corpus_value` is what it loads (default: `docs`); `lm` is the judge (None:
    claims that need the judge are rejected, unless `judge=False`, which admits quote-backed
    claims without a value on their quotes and the substance rule alone, for benchmarks and
    for users who accept that); `replay_tools` are host functions a check may call (see
    `CheckRunner`); `label_hint` the labels the question or corpus names, for the
    empty-result hint; `float_tolerance` the relative slack within which a float printed by a
    check states a claimed number (ints compare exactly; no proposer sets a tolerance).

    Labels and conflicts: `spot_check_sample` items of a claim resting on `classify` are
    re-labelled by `lm` (0, the default: no spot checks; 8 is `DEFAULT_SPOT_CHECK_SAMPLE`);
    `spot_check_agreement` (0.75) is the settled agreement a claim needs; `max_label_rules`
    (3) rules one spot check may propose; `votes` (3, odd) independent verifier calls settle
    each label dispute and each conflict; `resolve_conflicts` (True) looks for conflicts
    after every admission; `on_labels_rejected` is told each classification a claim the
    spot check rejected rests on.
    """

    # The agreement stage (verify.agreement: partials agree on schema and cover their
    # chunk), set by a team once it has planned its chunk tasks; None: off.
    agreement: AgreementRules | None = None

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
        check_timeout: float = CHECK_TIMEOUT_SECONDS,
        quote_slack: int = QUOTE_SLACK_CHARS,
        require_check_for_values: bool = True,
        judge_source_chars: int = JUDGE_SOURCE_CHARS,
        replay_tools: Mapping[str, Callable[..., Any]] | None = None,
        label_hint: Sequence[str] = (),
        spot_check_sample: int = 0,
        spot_check_agreement: float = DEFAULT_MIN_AGREEMENT,
        max_label_rules: int = DEFAULT_MAX_RULES,
        votes: int = DEFAULT_VOTES,
        resolve_conflicts: bool = True,
        float_tolerance: float = FLOAT_TOLERANCE,
        on_labels_rejected: Callable[[ReplayedLabels], None] | None = None,
    ) -> None:
        if quote_slack < 0:
            raise ConfigError(f"quote_slack must be >= 0 characters, got {quote_slack!r}")
        if judge_source_chars < 1:
            raise ConfigError(f"judge_source_chars must be >= 1, got {judge_source_chars!r}")
        self.context = context
        self.docs = list(docs)
        self.lm = lm
        self.trace = trace
        self.judge = judge
        self.quote_slack = quote_slack
        self.require_check_for_values = require_check_for_values
        self.judge_source_chars = judge_source_chars
        self.label_hint = list(label_hint)
        self.stats = VerificationStats()
        self.checks = CheckRunner(
            sandbox_factory,
            corpus_value if corpus_value is not None else self.docs,
            timeout=check_timeout,
            replay_tools=self._watch_replays(replay_tools),
            stats=self.stats,
            float_tolerance=float_tolerance,
        )
        self.spot_checks = SpotChecker(
            lm, self.docs, sample=spot_check_sample, min_agreement=spot_check_agreement,
            votes=check_vote_count(votes), max_rules=max_label_rules,
            rules=lambda: label_rules(self.context)(),  # the context this verifier writes now
            propose=lambda rule, source, decided: self.verify(rule, source=source, decided=decided),
            trace=trace, stats=self.stats,
            on_rejected=on_labels_rejected,
        )
        self.conflicts = ConflictResolver(
            self.checks, lm=lm, votes=votes, trace=trace, stats=self.stats, enabled=resolve_conflicts,
        )
        self._admit_lock = asyncio.Lock()
        self._admissions = 0  # admissions by this verifier (other processes: see docstring)

    def _watch_replays(self, replay_tools: Mapping[str, Callable[..., Any]] | None) -> dict[str, Callable[..., Any]]:
        """The replay tools with `classify` watched, so the labels stage sees what a check replayed."""
        self.replays = ReplayWatcher()
        return self.replays.wrap(replay_tools)

    # -- lifecycle ----------------------------------------------------------------------

    async def close(self) -> None:
        await self.checks.close()

    async def __aenter__(self) -> Verifier:
        return self

    async def __aexit__(self, *exc: object) -> None:
        await self.close()

    # -- the gate -----------------------------------------------------------------------

    async def verify(
        self,
        gist: Gist,
        *,
        source: str | None = None,
        check_vars: dict[str, Any] | None = None,
        require_check: bool | None = None,
        reject_empty: bool = False,
        support: Callable[[Gist], str | None] | None = None,
        decided: str | None = None,
    ) -> Verdict:
        """Decide one proposal. `source`: text the claim is about (the task's chunk), shown
        to the judge; `check_vars`: the task's slice (`Chunk.repl_variables()`)
        exposed to the check; `require_check`: a claimed value must come with a check
        (default: the verifier's setting); `reject_empty`: a PARTIAL whose value is empty
        ({}, [], "") about a `source` with text is rejected as counting nothing (the team
        asks this on a task's first attempt only, so a truly empty chunk still gets in);
        `support`: a rule the gist must meet after its quotes check (the reason when it does
        not), stage "support" (team reading path: `verify.support`); `decided`: for the
        spot check's own labelling rules only, how independent votes decided it: a rule whose
        item is quoted from the corpus is then admitted on its quote and those votes, without
        a judge (the same model asked a fourth time, about the whole chunk)."""
        started = time.perf_counter()
        self.stats.proposed += 1
        agent = gist.provenance.agent_id
        task = gist.provenance.task_id
        checks: list[str] = []
        pending: Gist | None = None
        replay_mark = self.replays.mark()
        try:
            # 1. form (before storing: a malformed proposal is an input error, not a claim)
            with self._stage("form", checks):
                needs_check = self.require_check_for_values if require_check is None else require_check
                check_form(gist, source, needs_check)
            # Code given as evidence is stored only as the verifier re-ran it (stage 3).
            given_code = [e for e in gist.evidence if isinstance(e, CodeEvidence)]
            quotes = [e for e in gist.evidence if isinstance(e, QuoteEvidence)]
            pending = self.context.add_pending(gist.model_copy(update={"evidence": quotes}))
            self._emit("gist_proposed", agent, task, gist=pending)
            admissions_seen = self._admissions
            duplicate = self.context.find_duplicate(pending)
            if duplicate is not None:
                return self._merge(pending, duplicate.id, checks)
            if reject_empty:
                check_empty_result(gist, source, self.label_hint)
            if self.agreement is not None:
                self.agreement.check(gist, source)

            # 2. quotes
            if quotes:
                with self._stage("quotes", checks):
                    for ev in quotes:
                        problem = check_quote(ev, self.docs, self.quote_slack)
                        if problem is not None:
                            raise Rejection("quotes", problem)
            if support is not None:  # 2b. support: a reading gist rests on its cited anchors
                with self._stage("support", checks):
                    problem = support(gist)
                    if problem is not None:
                        raise Rejection("support", problem)

            # 3. code: evidence code re-run, then the check
            added: list[CodeEvidence | QuoteEvidence] = []
            output: str | None = None
            spot = None
            if gist.check is not None or given_code:
                with self._stage("code", checks):
                    for ev in given_code:
                        rerun = await self.checks.rerun_evidence(ev, check_vars or {})
                        added.append(CodeEvidence(code=rerun.code, output=rerun.output[:MAX_OUTPUT_KEPT]))
                    if gist.check is not None:
                        output = await self.checks.run(
                            gist, check_vars or {}, source=source, labels=self.label_hint)
                        added.append(CodeEvidence(code=gist.check, output=output[:MAX_OUTPUT_KEPT]))
                if gist.check is not None:
                    replayed = self.replays.since(replay_mark, source)
                    if self.spot_checks.applies(pending, replayed):
                        with self._stage("labels", checks):
                            spot = await self.spot_checks.check(pending, replayed, source)

            # 4. substance: a claim resting on its evidence's words must share them
            if gist.check is None and gist.value is None and quotes and gist.kind in SUBSTANCE_KINDS:
                cited = {q.doc for q in quotes}
                grounded = ground_quoted(gist.text, [q.quote for q in quotes], self.docs, cited)
                problem = unsupported(
                    gist.text, [q.quote for q in [*quotes, *grounded]] + [e.output for e in added],
                    cited_docs=cited,
                )
                if problem is not None:
                    raise Rejection("quotes", problem)
                added = [*grounded, *added]  # kept with the gist and shown to the judge

            # 5. judge, for claims nothing above could check
            note = "verified: " + ", ".join(checks[1:]) if len(checks) > 1 else "form only"
            if gist.kind == GistKind.QUESTION:
                note = "an open question: asked, not verified"
            if gist.check is None and gist.kind in CLAIM_KINDS:
                if decided is not None and quotes and gist.kind == GistKind.CONSTRAINT:
                    note = f"quoted item verified; its label {decided}"
                elif self.judge:
                    shown = pending.model_copy(update={"evidence": [*pending.evidence, *added]})
                    with self._stage("judge", checks):
                        note = "judge: " + await judge_claim(self.lm, shown, source, self.judge_source_chars)
                elif gist.value is not None:
                    raise Rejection(
                        "form",
                        "no check and no judge: cannot verify the claimed value; pass check=... with "
                        "code that computes it from the corpus and prints it",
                        record=False,
                    )
                elif not quotes:
                    raise Rejection(
                        "form",
                        "no check, no quotes and the model judge is off: nothing can verify it",
                        record=False,
                    )
                else:
                    note = "quotes verified and they state it (model judge off)"

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
            conflicts = await self.conflicts.resolve(self.context, admitted, check_vars, source)
            lost_to = next((c.winner for c in conflicts if c.loser == admitted.id), None)
            return Verdict(
                status="admitted", id=admitted.id, admitted_id=lost_to or admitted.id, reason=note,
                checks=checks, output=output, spot_check=spot, conflicts=conflicts, superseded_by=lost_to,
            )
        except Rejection as rej:
            return self._reject(gist, pending, rej, checks)
        finally:
            self.stats.seconds += time.perf_counter() - started

    @contextmanager
    def _stage(self, stage: str, checks: list[str]) -> Iterator[None]:
        """Count a stage as run and add its wall time to the stats, whatever its outcome."""
        started = time.perf_counter()
        self.stats.checks_run[stage] += 1
        checks.append(stage)
        try:
            yield
        finally:
            self.stats.seconds_by_stage[stage] += time.perf_counter() - started

    # -- outcomes -----------------------------------------------------------------------

    def _merge(self, pending: Gist, into: str | None, checks: list[str], output: str | None = None) -> Verdict:
        if pending.id is None or into is None:
            raise RunStateError("a merge needs two stored gists (both with ids)")
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

    def _reject(self, gist: Gist, pending: Gist | None, rej: Rejection, checks: list[str]) -> Verdict:
        self.stats.rejected += 1
        agent, task = gist.provenance.agent_id, gist.provenance.task_id
        if pending is None or pending.id is None:
            # Rejected on form before it was stored: answered to the agent, traced, not kept.
            self._emit("gist_rejected", agent, task, gist_id=None, reason=rej.reason, failure_gist_id=None)
            return Verdict(status="rejected", reason=rej.reason, stage=rej.stage, checks=checks)
        failure = failure_gist(pending, rej) if rej.record else None
        failure_id: str | None = None
        if failure is not None:
            existing = self.context.find_duplicate(failure)
            if existing is not None and existing.id is not None:
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
            output=rej.output, failure_gist_id=failure_id, spot_check=rej.spot_check,
        )

    def _emit(self, kind: str, agent: str | None, task: str | None, **data: Any) -> None:
        if self.trace is not None:
            self.trace.emit(kind, agent=agent, task=task, **data)


def failure_gist(gist: Gist, rej: Rejection) -> Gist:
    """The FAILURE gist recording why `gist` was rejected: one line saying what was claimed
    and why it failed, the whole story (and the check's output) in summary and evidence."""
    claim = collapse_whitespace(gist.text)
    if len(claim) > MAX_FAILURE_CLAIM:
        claim = claim[: MAX_FAILURE_CLAIM - 3] + "..."
    value = "" if gist.value is None else f" (value {json.dumps(gist.value)[:30]})"
    text = f"Rejected {gist.kind.name} '{claim}'{value}: {collapse_whitespace(rej.reason)}"
    if len(text) > MAX_FAILURE_TEXT:
        text = text[: MAX_FAILURE_TEXT - 3] + "..."
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
        provenance=Provenance(task_id=gist.provenance.task_id, agent_id="verifier", model=None),
    )
