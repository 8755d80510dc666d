"""Conflicting claims resolved, not ignored (issue 14): two admitted claims about one thing
that disagree are settled by re-running their checks or by independent verifier votes; the
loser is SUPERSEDED with a pointer to the winner and a FAILURE gist saying why.

Real kernels for the checks, real SQLite stores; ScriptedLM plays the judge and the voters
(what each vote says is fixed by the test: these tests check the mechanics).
"""

from __future__ import annotations

import re
from collections import Counter
from pathlib import Path

import pytest

from delm_rlm import ScriptedLM
from delm_rlm.classify import ClassificationLog
from delm_rlm.errors import ConfigError
from delm_rlm.gists import Gist, GistKind, GistStatus, Provenance, QuoteEvidence
from delm_rlm.state.context import SharedContext
from delm_rlm.state.sqlite import RunStore
from delm_rlm.trace import Trace
from delm_rlm.verify import Verifier, about_the_same, claim_subject
from delm_rlm.verify.conflicts import check_vote_count, parse_vote
from sandbox import make_sandbox

LABELS = ["spam", "ham"]
DOC = "win money now\nlunch at noon\ncheap pills\nsee you\n"
CHUNK_VARS = {"chunk_doc": 0, "chunk_start": 0, "chunk_end": len(DOC)}
CHECK = """
from collections import Counter
print(dict(Counter(classify(chunk.splitlines(), ["spam", "ham"]))))
"""


def partial(value: object, task: str = "t1", text: str = "count per label", check: str | None = CHECK) -> Gist:
    return Gist(kind="partial", text=f"{task}: {text}", value=value, check=check,
                provenance=Provenance(task_id=task, agent_id="a1"))


def fact(text: str, value: object, **kw: object) -> Gist:
    return Gist(kind="fact", text=text, value=value, provenance=Provenance(task_id="t1", agent_id="a1"), **kw)


async def test_a_conflict_between_two_checked_partials_is_resolved_by_re_execution(tmp_path: Path) -> None:
    """Two agents labelled chunk t1 (a lease ran out and the task was done twice): both
    partials passed their checks when proposed, but the run's classify log holds the later
    labelling now. Re-running both checks decides, with no model call: the earlier claim no
    longer prints its value and is superseded by the later one."""
    store = RunStore(tmp_path / "store.sqlite")
    trace = Trace(tmp_path / "trace.jsonl")
    context = SharedContext(store, [DOC])
    log = ClassificationLog(store)
    verifier = Verifier(context, [DOC], judge=False, trace=trace, sandbox_factory=lambda: make_sandbox("local"),
                        replay_tools={"classify": log.replay})
    items = DOC.splitlines()
    async with verifier:
        first_labels = ["spam", "spam", "spam", "ham"]
        log.record(items, LABELS, "", first_labels)
        first = await verifier.verify(partial(dict(Counter(first_labels))), source=DOC, check_vars=CHUNK_VARS)
        later_labels = ["spam", "ham", "spam", "ham"]
        log.record(items, LABELS, "", later_labels)
        later = await verifier.verify(partial(dict(Counter(later_labels))), source=DOC, check_vars=CHUNK_VARS)

    assert first.status == "admitted" and first.conflicts == []
    assert later.status == "admitted" and later.admitted_id == later.id, later.reason
    (outcome,) = later.conflicts
    assert outcome.method == "re-execution" and outcome.votes == []
    assert (outcome.winner, outcome.loser) == (later.id, first.id)
    assert outcome.reexecution[later.id] == "still prints its value"
    assert "claimed value" in outcome.reexecution[first.id]  # what its check printed instead
    loser = store.get_gist(first.id)
    assert loser.status == GistStatus.SUPERSEDED and loser.superseded_by == later.id
    assert loser.value == {"spam": 3, "ham": 1}  # kept as it was: nothing overwritten
    failure = store.get_gist(outcome.failure_gist_id)
    assert failure.kind == GistKind.FAILURE and failure.status == GistStatus.ADMITTED
    assert failure.text.startswith(f"Superseded PARTIAL 't1: count per label' by {later.id}: re-running both checks")
    # Agents and the finalizer see only the winner; the trace shows the conflict and its end.
    assert [g.id for g in context.admitted(kinds="partial")] == [later.id]
    (event,) = trace.of_kind("conflict_resolved")
    assert event.data["method"] == "re-execution" and event.data["loser"] == first.id
    assert later.for_agent()["note"] == f"it disagreed with {first.id}, and won: {first.id} is superseded"
    assert (verifier.stats.conflicts, verifier.stats.superseded, verifier.stats.checks_run["conflicts"]) == (1, 1, 1)


class Voters:
    """Judge: admits. Votes: reviewers 1 and 2 find the Friday claim right, reviewer 3 the
    Tuesday one (the letter depends on the order each vote shows the claims in)."""

    def __init__(self) -> None:
        self.votes: list[str] = []

    def __call__(self, messages: list[dict], role: str) -> str:
        assert role == "verifier"
        if messages[0]["content"].startswith("You check one claim"):
            return "ADMIT: the quote says so"
        prompt = messages[-1]["content"]
        self.votes.append(prompt)
        claims = re.findall(r"Claim ([AB]):\n<data>(.*?)</data>", prompt, re.DOTALL)
        wanted = "Tuesday" if "(reviewer 3 of 3)" in prompt else "Friday"
        letter = next(letter for letter, text in claims if wanted in text.split("\n")[0])
        return f"{letter}: the later memo corrects the date"


async def test_a_conflict_between_two_unchecked_facts_is_resolved_by_a_3_vote(tmp_path: Path) -> None:
    doc = "Memo 1: the meeting is on Tuesday.\nMemo 2: correction, the meeting is on Friday.\n"
    store = RunStore(tmp_path / "store.sqlite")
    trace = Trace(tmp_path / "trace.jsonl")
    context = SharedContext(store, [doc])
    voters = Voters()
    lm = ScriptedLM(voters)
    verifier = Verifier(context, [doc], lm=lm, trace=trace, require_check_for_values=False)

    def quoted(text: str) -> QuoteEvidence:
        at = doc.index(text)
        return QuoteEvidence(doc=0, start=at, end=at + len(text), quote=text)

    async with verifier:
        tuesday = await verifier.verify(fact("The meeting is on Tuesday", "Tuesday", evidence=[quoted("the meeting is on Tuesday")]), source=doc)
        friday = await verifier.verify(fact("The meeting is on Friday", "Friday", evidence=[quoted("the meeting is on Friday")]), source=doc)

    assert tuesday.status == "admitted" and friday.status == "admitted", (tuesday.reason, friday.reason)
    (outcome,) = friday.conflicts
    assert outcome.method == "vote" and outcome.reexecution == {}
    assert outcome.votes == [friday.id, friday.id, tuesday.id]
    assert (outcome.winner, outcome.loser) == (friday.id, tuesday.id)
    assert outcome.reason == f"2 of 3 independent votes found {friday.id} right"
    # Three calls, the claims in swapped order on the second.
    assert len(voters.votes) == 3
    in_order = sorted(voters.votes, key=lambda p: re.search(r"reviewer (\d) of 3", p).group(1))  # type: ignore[union-attr]
    first_shown = [re.search(r"Claim A:\n<data>\[FACT\] (.*)", p).group(1) for p in in_order]  # type: ignore[union-attr]
    assert first_shown == ["The meeting is on Tuesday", "The meeting is on Friday", "The meeting is on Tuesday"]
    assert lm.usage.by_role["verifier"].calls == 2 + 3  # two judge calls, three votes
    loser = store.get_gist(tuesday.id)
    assert loser.status == GistStatus.SUPERSEDED and loser.superseded_by == friday.id
    assert "2 of 3 independent votes" in store.get_gist(outcome.failure_gist_id).text
    assert f"superseded by {friday.id}" in context.unfold(tuesday.id, 0)
    assert [e.data["winner"] for e in trace.of_kind("conflict_resolved")] == [friday.id]


async def test_without_a_majority_the_earlier_claim_stands_and_without_a_model_nothing_is_decided(tmp_path: Path) -> None:
    doc = "The count is 3. Or 4."
    ev3 = QuoteEvidence(doc=0, start=0, end=15, quote="The count is 3.")
    ev4 = QuoteEvidence(doc=0, start=16, end=21, quote="Or 4.")

    async def run(lm: ScriptedLM | None, where: Path) -> tuple[Verifier, list]:
        where.mkdir()
        context = SharedContext(RunStore(where / "store.sqlite"), [doc])
        verifier = Verifier(context, [doc], lm=lm, judge=lm is not None, require_check_for_values=False)
        async with verifier:
            out = [await verifier.verify(fact(f"The count is {n}", n, evidence=[ev]), source=doc) for n, ev in ((3, ev3), (4, ev4))]
        return verifier, out

    def garbled(messages: list[dict], role: str) -> str:
        return "ADMIT: quoted" if messages[0]["content"].startswith("You check") else "I cannot tell"

    _, (three, four) = await run(ScriptedLM(garbled), tmp_path / "garbled")
    (outcome,) = four.conflicts
    assert outcome.method == "vote" and outcome.votes == [None, None, None]
    assert (outcome.winner, outcome.loser) == (three.id, four.id)  # the earlier claim stands
    assert four.admitted_id == three.id and four.superseded_by == three.id
    assert four.for_agent()["status"] == "superseded"

    # With no model and the judge off, neither claim is admitted at all (a value with no check
    # and no judge cannot be verified: issue 13), so there is no conflict to leave undecided.
    verifier, (three, four) = await run(None, tmp_path / "no-model")
    assert three.status == four.status == "rejected" and not four.conflicts
    assert "no check" in three.reason and "no judge" in three.reason
    assert [g.status for g in verifier.context.store.list_gists(kinds="fact")] == [GistStatus.REJECTED] * 2


def test_what_counts_as_the_same_thing() -> None:
    assert claim_subject(fact("the meeting is on Friday", "Friday")) == ("the", "meeting", "is", "on")
    assert claim_subject(fact("chunk 3 has 3 lines", 3)) == ("chunk", "3", "has", "lines")
    # FACTs: the same words but the value's.
    assert about_the_same(fact("There are 5 users", 5), fact("There are 6 users", 6))
    assert not about_the_same(fact("chunk 3 has 3 lines", 3), fact("chunk 4 has 4 lines", 4))
    assert not about_the_same(fact("n is 1", None), fact("n is 2", None))  # no values: no conflict
    # PARTIALs: one task, and the same words or count dicts sharing a key.
    assert about_the_same(partial({"spam": 1}, text="labels"), partial({"spam": 2, "ham": 1}, text="counts"))
    assert not about_the_same(partial({"spam": 1}), partial({"spam": 2}, task="t2"))
    assert not about_the_same(partial(3, text="spam lines: 3"), partial(4, text="ham lines: 4"))
    assert about_the_same(partial(3, text="spam lines: 3"), partial(4, text="spam lines: 4"))


def test_votes_parse_strictly_and_come_in_odd_numbers() -> None:
    assert parse_vote("A: the quote says so") == "A"
    assert parse_vote("**B** - the later memo") == "B"
    assert parse_vote("Claim B is right") == "B"
    assert parse_vote("\n  Answer: A") == "A"
    assert parse_vote("a claim is right") is None  # an article, not a vote
    assert parse_vote("Both are right") is None and parse_vote("") is None
    assert check_vote_count(1) == 1 and check_vote_count(5) == 5
    for bad in (0, 2, -1, True, 3.0):
        with pytest.raises(ConfigError, match="odd whole number"):
            check_vote_count(bad)
