"""Conflicts: two admitted claims about the same thing that disagree are settled, not ignored.

After each admission the gate asks `ConflictResolver.resolve` whether the new claim disagrees
with one already admitted. Two claims are about the same thing (`about_the_same`) when:

- two PARTIALs come from one task (one chunk) and either say the same thing up to their
  values (`claim_subject`: the text's words without the value's own words, taken from the
  end) or both are count dicts sharing a key;
- two FACTs say the same thing up to their values;

and they disagree when their values differ (`delm_rlm.values.values_equal`, within the larger
tolerance). Labels for one item that disagree are settled the same way, by votes, in the
spot check (`verify.spot_check`).

How it ends:

- both carry checks: both are run again in the verifier's sandbox (the run's classify log may
  have moved on since the older one was admitted); when exactly one still prints its value,
  it wins ("re-execution");
- otherwise `votes` independent verifier calls (an odd number) each say which claim the data
  supports, the claims shown in swapped order on every other call; a majority wins, and with
  none the earlier admitted claim stands ("vote");
- with no model to vote (or every vote failed), both stay admitted and the conflict is
  traced as "unresolved".

The loser becomes SUPERSEDED, pointing at the winner (`superseded_by`), and a FAILURE gist
records why (same transaction, `SharedContext.supersede`); nothing is overwritten. Every
conflict is a `conflict_resolved` trace event (the report shows it) and counts in the
verifier's stats; the votes are model calls under role "verifier".
"""

from __future__ import annotations

import asyncio
import json
import re
import time
from collections import Counter
from collections.abc import Mapping
from typing import TYPE_CHECKING, Any

from delm_rlm import prompts
from delm_rlm.errors import ConfigError, LMError
from delm_rlm.gists import CodeEvidence, Gist, GistKind, GistStatus, Provenance, QuoteEvidence, normalize_text
from delm_rlm.state.context import SharedContext
from delm_rlm.trace import Trace
from delm_rlm.values import collapse_whitespace, values_equal
from delm_rlm.verify.code_check import CheckRunner
from delm_rlm.verify.judge import cut_middle, neutralize
from delm_rlm.verify.verdict import ConflictOutcome, Rejection, VerificationStats

if TYPE_CHECKING:
    from delm_rlm.llm.gateway import LM

DEFAULT_VOTES = 3  # independent verifier calls that settle a conflict or a label dispute
CONFLICT_SOURCE_CHARS = 4000  # of the source text one vote is shown
CLAIM_CHARS = 1500  # of each claim's description one vote is shown
VOTE_MAX_TOKENS = 80  # one line

CONFLICT_KINDS = frozenset({GistKind.PARTIAL, GistKind.FACT})
_CHOICE = re.compile(r"^(?i:claim\s*|answer\s*[:\-]?\s*)?([AB])\b")  # "A: ..." (a lone "a" is an article)


def check_vote_count(votes: Any) -> int:
    """`votes` when it is an odd whole number >= 1 (a majority always exists between two
    claims); else ConfigError."""
    if isinstance(votes, bool) or not isinstance(votes, int) or votes < 1 or votes % 2 == 0:
        raise ConfigError(f"votes must be an odd whole number >= 1 (e.g. 3), got {votes!r}")
    return votes


def claim_subject(gist: Gist) -> tuple[str, ...]:
    """What a claim is about: its normalized words without the words of its own value,
    each removed once, from the end ("the meeting is on Friday" -> "the meeting is on";
    "chunk 3 has 3 lines", value 3 -> "chunk 3 has lines")."""
    words = normalize_text(gist.text).split()
    if gist.value is None:
        return tuple(words)
    value_words = Counter(normalize_text(json.dumps(gist.value, ensure_ascii=False)).split())
    kept: list[str] = []
    for word in reversed(words):
        if value_words[word] > 0:
            value_words[word] -= 1
        else:
            kept.append(word)
    return tuple(reversed(kept))


def about_the_same(a: Gist, b: Gist) -> bool:
    """Whether two claims are about the same thing (see the module docstring)."""
    if a.kind != b.kind or a.kind not in CONFLICT_KINDS or a.value is None or b.value is None:
        return False
    subject = claim_subject(a)
    same_subject = bool(subject) and subject == claim_subject(b)
    if a.kind == GistKind.FACT:
        return same_subject
    task = a.provenance.task_id
    if task is None or task != b.provenance.task_id:
        return False
    shared_key = (isinstance(a.value, dict) and isinstance(b.value, dict)
                  and bool({str(k) for k in a.value} & {str(k) for k in b.value}))
    return same_subject or shared_key


def disagree(a: Gist, b: Gist) -> bool:
    return not values_equal(a.value, b.value, max(a.tolerance, b.tolerance))


def parse_vote(reply: str) -> str | None:
    """"A" or "B" from a vote's first non-empty line; None when it names neither."""
    for raw in reply.splitlines():
        line = raw.strip().strip("*_#>`\"' ").strip()
        if line:
            found = _CHOICE.match(line)
            return found.group(1).upper() if found else None
    return None


def describe_claim(gist: Gist) -> str:
    """A claim as one vote sees it: kind, text, value, quotes and the check with its output."""
    parts = [f"[{gist.kind.name}] {gist.text}"]
    if gist.value is not None:
        parts.append(f"claimed value: {json.dumps(gist.value, ensure_ascii=False)}")
    for ev in gist.evidence:
        if isinstance(ev, QuoteEvidence):
            parts.append(f"quote (doc {ev.doc}): {ev.quote}")
        elif isinstance(ev, CodeEvidence):
            parts.append(f"code:\n{ev.code}\nprinted: {ev.output}")
    if gist.check and not any(isinstance(ev, CodeEvidence) and ev.code == gist.check for ev in gist.evidence):
        parts.append(f"check code:\n{gist.check}")
    return neutralize(cut_middle("\n".join(parts), CLAIM_CHARS))


class ConflictResolver:
    """Finds and settles conflicts between admitted claims of a shared context (see the
    module docstring), the context given with each call.

    `checks` re-runs checks (the gate's `CheckRunner`); `lm` votes (None: conflicts that need
    a vote stay unresolved); `votes`: an odd number; `enabled=False` looks for nothing."""

    def __init__(
        self,
        checks: CheckRunner,
        *,
        lm: LM | None = None,
        votes: int = DEFAULT_VOTES,
        trace: Trace | None = None,
        stats: VerificationStats | None = None,
        enabled: bool = True,
        source_chars: int = CONFLICT_SOURCE_CHARS,
    ) -> None:
        self.checks = checks
        self.lm = lm
        self.votes = check_vote_count(votes)
        self.trace = trace
        self.stats = stats if stats is not None else VerificationStats()
        self.enabled = enabled
        self.source_chars = source_chars
        self._check_vars: dict[str, dict[str, Any]] = {}  # gist id -> the slice its check ran on
        self._lock = asyncio.Lock()

    def rivals(self, context: SharedContext, gist: Gist) -> list[Gist]:
        """The admitted claims of `context` that `gist` conflicts with, oldest first."""
        if gist.kind not in CONFLICT_KINDS or gist.value is None:
            return []
        return [
            other for other in context.store.list_gists(status=GistStatus.ADMITTED, kinds=gist.kind)
            if other.id != gist.id and about_the_same(gist, other) and disagree(gist, other)
        ]

    async def resolve(
        self, context: SharedContext, gist: Gist, check_vars: Mapping[str, Any] | None = None,
        source: str | None = None,
    ) -> list[ConflictOutcome]:
        """Settle every conflict of the just-admitted `gist` (its check ran on `check_vars`,
        about `source`), oldest rival first, until it loses one."""
        if not self.enabled or gist.id is None or gist.kind not in CONFLICT_KINDS or gist.value is None:
            return []
        self._check_vars[gist.id] = dict(check_vars or {})
        if not self.rivals(context, gist):
            return []
        outcomes: list[ConflictOutcome] = []
        async with self._lock:  # two conflicting admissions at once settle one after the other
            for rival in self.rivals(context, gist):
                if context.store.get_gist(gist.id).status != GistStatus.ADMITTED:
                    break
                started = time.perf_counter()
                outcome = await self._settle(context, rival, gist, source)
                self.stats.checks_run["conflicts"] += 1
                self.stats.seconds_by_stage["conflicts"] += time.perf_counter() - started
                outcomes.append(outcome)
                if outcome.loser == gist.id:
                    break
        return outcomes

    async def _settle(self, context: SharedContext, old: Gist, new: Gist, source: str | None) -> ConflictOutcome:
        ids = [str(old.id), str(new.id)]
        same_task = old.provenance.task_id is not None and old.provenance.task_id == new.provenance.task_id
        self.stats.conflicts += 1
        reexecution: dict[str, str] = {}
        winner: Gist | None = None
        reason = ""
        if old.check and new.check:
            passed: dict[str, bool] = {}
            for g in (old, new):
                known = self._check_vars.get(str(g.id))
                check_vars = known if known is not None else (self._check_vars.get(str(new.id)) if same_task else None)
                if check_vars is None:
                    reexecution[str(g.id)] = "not re-run: the slice its check ran on is unknown here"
                    continue
                try:
                    await self.checks.run(g, check_vars)
                    passed[str(g.id)], reexecution[str(g.id)] = True, "still prints its value"
                except Rejection as rej:
                    reexecution[str(g.id)] = rej.reason
                    if rej.record:  # a verdict on the claim, not the verifier's own failure
                        passed[str(g.id)] = False
            if sorted(passed.values()) == [False, True]:
                winner = old if passed[str(old.id)] else new
                loser = new if winner is old else old
                reason = (f"re-running both checks: {winner.id}'s still prints its value, "
                          f"{loser.id}'s does not ({reexecution[str(loser.id)]})")
                return self._finish(context, ids, "re-execution", winner, loser, reason, [], reexecution)
        if self.lm is None:
            reason = "the claims disagree and there is no model to vote: both stay admitted"
            return self._finish(context, ids, "unresolved", None, None, reason, [], reexecution)
        cast = await asyncio.gather(*(self._vote(old, new, source if same_task else None, v) for v in range(self.votes)))
        if all(failed for _, failed in cast):
            reason = "the claims disagree and every vote failed (the model did not answer): both stay admitted"
            return self._finish(context, ids, "unresolved", None, None, reason, [], reexecution)
        said = [choice for choice, _ in cast]
        tally = Counter(s for s in said if s is not None)
        top = tally.most_common(1)
        if top and top[0][1] * 2 > self.votes:
            winner = old if top[0][0] == old.id else new
            reason = f"{top[0][1]} of {self.votes} independent votes found {winner.id} right"
        else:
            winner = old
            reason = f"no majority in {self.votes} independent votes ({dict(tally)}): the earlier claim {old.id} stands"
        loser = new if winner is old else old
        return self._finish(context, ids, "vote", winner, loser, reason, list(said), reexecution)

    async def _vote(self, old: Gist, new: Gist, source: str | None, vote: int) -> tuple[str | None, bool]:
        """One vote: (the id of the claim it found right, or None when the reply named
        neither; whether the call failed)."""
        first, second = (old, new) if vote % 2 == 0 else (new, old)
        messages = prompts.conflict_messages(
            a=describe_claim(first), b=describe_claim(second),
            source=neutralize(cut_middle(source, self.source_chars)) if source else None,
            vote=vote + 1, votes=self.votes,
        )
        assert self.lm is not None
        try:
            completion = await self.lm.complete(
                messages, role="verifier", max_tokens=VOTE_MAX_TOKENS,
                tags={"agent": "verifier", "task": new.provenance.task_id, "purpose": "conflict vote",
                      "prompt_tail": messages[-1]["content"][-500:]},
            )
        except LMError:
            return None, True
        choice = parse_vote(completion.text)
        return (None if choice is None else str((first if choice == "A" else second).id)), False

    def _finish(
        self, context: SharedContext, ids: list[str], method: str, winner: Gist | None, loser: Gist | None, reason: str,
        votes: list[str | None], reexecution: dict[str, str],
    ) -> ConflictOutcome:
        failure_id: str | None = None
        if winner is not None and loser is not None:
            try:
                _, failure = context.supersede(
                    str(loser.id), str(winner.id), note=f"conflict with {winner.id}: {reason}",
                    failure=self._failure(loser, winner, reason),
                )
            except ConfigError as exc:  # another process decided one of them meanwhile
                method, winner, loser, reason = "unresolved", None, None, f"{reason}; not applied: {exc}"
            else:
                failure_id = failure.id if failure is not None else None
                self.stats.superseded += 1
        outcome = ConflictOutcome(
            gist_ids=ids, method=method,  # type: ignore[arg-type]
            winner=winner.id if winner is not None and loser is not None else None,
            loser=loser.id if winner is not None and loser is not None else None,
            reason=reason, votes=votes, reexecution=reexecution, failure_gist_id=failure_id,
        )
        if self.trace is not None:
            task = (loser or winner).provenance.task_id if (loser or winner) is not None else None
            self.trace.emit("conflict_resolved", agent="verifier", task=task, **outcome.model_dump(mode="json"))
        return outcome

    @staticmethod
    def _failure(loser: Gist, winner: Gist, reason: str) -> Gist:
        claim = collapse_whitespace(loser.text)
        claim = claim if len(claim) <= 110 else claim[:107] + "..."
        text = prompts.CONFLICT_LOST.format(kind=loser.kind.name, claim=claim, winner=winner.id, reason=reason)
        summary = (f"{loser.id} ({json.dumps(loser.value, ensure_ascii=False)[:200]}) and {winner.id} "
                   f"({json.dumps(winner.value, ensure_ascii=False)[:200]}) disagreed: {reason}")
        return Gist(
            kind=GistKind.FAILURE,
            text=text if len(text) <= 300 else text[:297] + "...",
            summary=summary,
            provenance=Provenance(task_id=loser.provenance.task_id, agent_id="verifier"),
        )
