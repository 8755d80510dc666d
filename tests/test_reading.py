"""The reading path (issue 15): routing, grounded summaries, query-aware gists, unfolding,
the reading finalizer and the answer gate; ScriptedLM for the model, real kernels for hybrid.

The scripted readers copy sentences of the text they are shown as their anchors and build
gists from the points they are shown: the tests check the mechanics (what is verified,
admitted, refused, cached, unfolded, routed), never a model's reading.
"""

from __future__ import annotations

import json
import re
from pathlib import Path

import pytest
from hypothesis import given
from hypothesis import strategies as st

from delm_rlm import RunStore, ScriptedLM, Team, Trace
from delm_rlm.prompts import READ_GIST_SYSTEM
from delm_rlm.state.context import SharedContext
from delm_rlm.state.queue import TaskQueue
from delm_rlm.team.reading import needs_reading, route_question
from delm_rlm.team.reading_steps import choice_letter, choice_verdict
from delm_rlm.team.summaries import SummaryCache, pick_slices, rank_slices, slice_spans, summarize_chunk
from delm_rlm.verify.support import support_problem
from tasks import longbench, oolong

LEASE = (
    "LEASE AGREEMENT\n\n"
    "This lease is made on 1 March 2020 between Harbor Properties Ltd, the landlord, and Mira Chen, the tenant, "
    "for the flat at 12 Quay Street.\n"
    "The tenant shall pay a monthly rent of 1,450 euros on the first day of each month. The deposit is two months "
    "of rent and is held by the landlord in a separate account.\n"
    "The lease runs for three years. Either party may end the lease early with ninety days of written notice, "
    "but the tenant then forfeits half of the deposit.\n"
    "The landlord is responsible for repairs to the roof, the heating and the plumbing. The tenant is "
    "responsible for damage caused by guests.\n"
)
AMENDMENT = (
    "AMENDMENT No. 1\n\n"
    "On 15 January 2022 the parties agreed to change the lease of the flat at 12 Quay Street.\n"
    "From 1 February 2022 the monthly rent is 1,520 euros. All other terms of the lease remain in force.\n"
    "The notice period for ending the lease early is shortened from ninety days to sixty days. The forfeit of "
    "half of the deposit still applies.\n"
)
DOCS = [LEASE, AMENDMENT]
QUESTION = (
    "What is the correct answer to this question: What notice must the tenant give to end the lease early "
    "after the amendment?\nChoices:\n(A) Ninety days\n(B) Sixty days\n(C) Thirty days\n(D) No notice\n\n"
    'Format your response as follows: "The correct answer is (insert answer here)".'
)
# What the counting path shows its agents; none of it may reach an agent reading a contract.
COUNTING_TEMPLATES = ("Counter(", "add_up(", 'field = "', "classify(")
INVENTED = "The tenant may leave at any time without notice or penalty"


def sentences(text: str) -> list[str]:
    return [s.strip() + "." for s in re.split(r"\.\s", text) if len(s.strip()) > 30 and "\n\n" not in s.strip()]


def reader(messages: list[dict], *, invent: bool = False) -> str:
    """A reader: its points are sentences copied from the text (one invented on request)."""
    text = messages[1]["content"].split("<text>\n", 1)[1].rsplit("\n</text>", 1)[0]
    points = [{"point": s, "quote": s} for s in sentences(text)[:4]]
    if invent:
        points.append({"point": "The tenant can leave freely.", "quote": INVENTED})
    return json.dumps({"points": points})


def points_of(text: str) -> list[tuple[str, str]]:
    return re.findall(r"\[(a\d+)\] (.+?) \(quote: ", text)


def gist_from(points: list[tuple[str, str]]) -> dict:
    """The gist a competent reader writes: the notice point, with its choice marks."""
    aid, point = next(((a, p) for a, p in points if "notice" in p), points[0])
    choices = {"B": "supported", "A": "contradicted"} if "sixty" in point else {"A": "supported"}
    return {"gist": f"{point} [{aid}]", "anchors": [aid], "choices": choices}


def finalizer(messages: list[dict]) -> str:
    view = messages[-1]["content"]
    ids = re.findall(r"\[(g\d+) PARTIAL\][^\n]*B supported", view)
    return json.dumps({"answer": "B" if ids else "C", "gists": ids})


class DelmReaders:
    """delm mode on the reading path; `invent` makes the reader invent an anchor in the
    amendment's first summary (repaired on the second) or, with "always", in every one."""

    def __init__(self, invent: str = "") -> None:
        self.invent = invent
        self.seen: list[str] = []
        self.amendment_summaries = 0

    def __call__(self, messages: list[dict], role: str) -> str:
        self.seen.extend(str(m["content"]) for m in messages)
        if role == "reader":
            first = "AMENDMENT" in messages[1]["content"] and self.amendment_summaries == 0
            if "AMENDMENT" in messages[1]["content"]:
                self.amendment_summaries += 1
            return reader(messages, invent=self.invent == "always" or (self.invent == "once" and first))
        if role == "verifier":
            return "ADMIT: the quotes say so"
        if role == "finalizer":
            return finalizer(messages)
        return json.dumps(gist_from(points_of(messages[-1]["content"])))


@pytest.fixture(autouse=True)
def private_summary_cache(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("DELM_RLM_CACHE_DIR", str(tmp_path / "cache"))


# -- routing ----------------------------------------------------------------------------


def test_routing_sends_prose_to_reading_and_records_to_counting(longbench_sample: Path, trec_pool: Path) -> None:
    task = longbench.load(longbench_sample)[0]
    assert needs_reading(task.question, [task.context])  # LongBench-style: multiple choice over prose
    routed = route_question(task.metadata["raw_question"], [task.context])  # no choices: prose alone
    assert routed.reading and "documents to read" in routed.reason
    assert needs_reading("Who is the tenant?", DOCS)
    row = oolong.generate(trec_pool, 4096, seed=1, windows=1)[0]
    routed = route_question(row["question"], [row["context_window_text"]])
    assert not routed.reading and "field layout" in routed.reason
    assert not needs_reading("How many lines are spam?", ["spam: win money\nham: lunch?\n" * 5])
    questions = "\n".join(line.split(" ", 1)[1] for line in trec_pool.read_text(encoding="latin-1").splitlines()[:300])
    assert not needs_reading("Which label is most common?", [questions])  # one question a line: records
    # A question counting a literal over prose is counted: code finds every occurrence.
    assert not needs_reading("How many times is 'deposit' mentioned?", DOCS)


async def test_the_team_routes_a_contract_to_the_reading_path_and_records_to_counting(tmp_path: Path) -> None:
    script = DelmReaders()
    result = await Team(ScriptedLM(script), agents=2, mode="delm", run_dir=tmp_path / "read").run(QUESTION, DOCS)
    steps = [e.data["action"] for e in result.trace if e.kind == "agent_step" and e.agent == "scout"]
    assert steps and steps[0].startswith("reading path: a multiple-choice question")
    assert not any(t in text for text in script.seen for t in COUNTING_TEMPLATES)

    counted = await Team(ScriptedLM(lambda m, r: '{"answer": "1"}'), agents=1, mode="delm", max_attempts=1,
                         run_dir=tmp_path / "count").run("How many lines are spam?", ["spam: a\nham: b\n" * 5])
    steps = [e.data["action"] for e in counted.trace if e.kind == "agent_step" and e.agent == "scout"]
    assert steps[0].startswith("counting path: a counting question ('How many') over records")


# -- grounded summaries -----------------------------------------------------------------


async def test_summaries_with_anchors_are_admitted_and_one_with_an_invented_anchor_rejected() -> None:
    text = LEASE * 15 + AMENDMENT * 12  # two slices: the first all lease, the second with the amendment
    spans = slice_spans(text)
    assert len(spans) == 2 and spans[0][0] == 0 and spans[1] == (spans[0][1], len(text))
    assert text[spans[0][1] - 1] == "\n" and "AMENDMENT" not in text[: spans[0][1]]
    repairs: list[str] = []

    def script(messages: list[dict], role: str) -> str:
        if len(messages) > 2:  # the repair round shows what was wrong
            repairs.append(messages[-1]["content"])
        return reader(messages, invent="AMENDMENT" in messages[1]["content"])

    trace = Trace()
    docs = [text]
    summary = await summarize_chunk(ScriptedLM(script), docs, 0, 0, len(text), cache=None, trace=trace,
                                    tags={"agent": "a1"}, where="doc 0")
    assert summary.anchors and [a.id for a in summary.anchors] == [f"a{i}" for i in range(1, len(summary.anchors) + 1)]
    for anchor in summary.anchors:  # every admitted anchor is verbatim at its span
        assert text[anchor.start:anchor.end] == anchor.quote and not anchor.mapped
        assert anchor.end <= spans[0][1] and anchor.quote in LEASE  # the first slice's only
    assert summary.rejected and all(INVENTED[:40] in r for r in summary.rejected)
    assert repairs and "is not in the text; the closest text is" in repairs[0]
    actions = [e.data["action"] for e in trace.events]
    assert any("rejected" in a for a in actions) and any("anchors admitted" in a for a in actions)


async def test_a_near_copy_anchor_is_mapped_to_the_span_it_copies() -> None:
    near = "Either party may end the lease early with 90 days of written notice"

    def script(messages: list[dict], role: str) -> str:
        return json.dumps({"points": [{"point": "Notice to end early.", "quote": near},
                                      {"point": "Rent.", "quote": "the tenant shall pay a monthly rent of 1,450 euros"}]})

    summary = await summarize_chunk(ScriptedLM(script), [LEASE], 0, 0, len(LEASE), cache=None, trace=None,
                                    tags={}, where="doc 0")
    notice, rent = summary.anchors
    assert notice.mapped and notice.quote == "Either party may end the lease early with ninety days of written notice"
    assert LEASE[notice.start:notice.end] == notice.quote
    assert rent.mapped and rent.quote == "The tenant shall pay a monthly rent of 1,450 euros"  # case aside


async def test_summaries_are_cached_per_slice_and_reused_by_another_question(tmp_path: Path) -> None:
    lm = ScriptedLM(DelmReaders(), cache=tmp_path / "responses")
    first = await Team(lm, agents=2, mode="delm", run_dir=tmp_path / "one").run(QUESTION, DOCS)
    assert first.status == "answered", first.error
    assert (tmp_path / "responses" / "summaries.sqlite").exists()
    other = QUESTION.replace("What notice must the tenant give", "What notice, in days, ends")
    second = await Team(lm, agents=2, mode="delm", run_dir=tmp_path / "two").run(other, DOCS)
    assert second.status == "answered", second.error
    assert [e for e in first.trace if e.kind == "model_call" and e.data["role"] == "reader"]
    assert not [e for e in second.trace if e.kind == "model_call" and e.data["role"] == "reader"]
    assert any("(cached)" in e.data.get("action", "") for e in second.trace if e.kind == "agent_step")
    assert isinstance(SummaryCache.beside(lm), SummaryCache) and SummaryCache.beside(ScriptedLM([])) is None


# -- gists: the support rule, the team end to end, unfolding ------------------------------


def test_the_support_rule() -> None:
    notice = ("The notice period is shortened from ninety days to sixty days.",
              "The notice period for ending the lease early is shortened from ninety days to sixty days")
    allowed = QUESTION
    assert support_problem("The notice is now sixty days [a3].", [notice], allowed) is None
    assert "cites no anchor" in support_problem("The notice is sixty days.", [], allowed)
    assert "a9, which the summary does not have" in support_problem("x [a9]", [notice], allowed, unknown=["a9"])
    # Told which anchors there are: a small model citing a2..a5 of a one-point summary kept guessing.
    told = support_problem("x [a2]", [], allowed, unknown=["a2"], known=["[a1] The notice is sixty days."])
    assert told == "the gist cites a2, which the summary does not have: its points are [a1] The notice is sixty days."
    assert "states 45" in support_problem("The notice is 45 days [a3].", [notice], allowed)
    problem = support_problem("The landlord must repaint every kitchen cupboard yearly [a3].", [notice], allowed)
    assert problem is not None and "repaint" in problem
    assert choice_verdict("not mentioned") is None and choice_verdict("does not support it") is None
    assert choice_verdict("Supported") == "supported" and choice_verdict("contradicts") == "contradicted"
    assert [choice_letter(a) for a in ("B", "(C) Thirty days", "The answer is D", "**A**", "none")] == ["B", "C", "D", "A", None]


async def test_delm_reading_team_end_to_end_and_unfold_from_gist_to_summary_to_raw_span(tmp_path: Path) -> None:
    script = DelmReaders(invent="once")
    result = await Team(ScriptedLM(script), agents=2, mode="delm", run_dir=tmp_path).run(QUESTION, DOCS)
    assert result.status == "answered", result.error
    assert result.answer == "The correct answer is (B)"
    store = RunStore(result.store_path)
    partials = store.list_gists(status="admitted", kinds="partial")
    assert len(partials) == 2 and set(result.gist_ids) <= {g.id for g in partials}
    amended = next(g for g in partials if "sixty" in g.text)
    assert amended.text.endswith("(A contradicted; B supported)")
    context = SharedContext(store, DOCS)
    line, summary, raw = (context.unfold(amended.id, level) for level in (0, 1, 2))
    assert line.startswith(f"[{amended.id} PARTIAL] t2: ")
    assert "Grounded summary of chunk 2 of 2: doc 1" in summary and "[a1]" in summary and "(quote: " in summary
    quote = amended.evidence[0]
    assert f"source: {DOCS[quote.doc][quote.start:quote.end]!r}" in raw and "DIFFERS" not in raw
    # The invented anchor was rejected and repaired: the first amendment summary had a repair round.
    assert script.amendment_summaries == 2
    gate = [e.data["action"] for e in result.trace if e.kind == "agent_step" and "rests on evidence" in e.data["action"]]
    assert gate and amended.id in gate[0]
    assert set(result.usage_by_role) >= {"reader", "root", "verifier", "finalizer"}
    assert not any(t in text for text in script.seen for t in COUNTING_TEMPLATES)


class OverclaimingReaders(DelmReaders):
    """Every gist about the amendment claims a figure no quote holds, and is rejected."""

    def __init__(self) -> None:
        super().__init__()
        self.amendment_gist_prompts: list[str] = []

    def __call__(self, messages: list[dict], role: str) -> str:
        if role == "root" and "1,520 euros" in messages[-1]["content"]:
            self.amendment_gist_prompts.append(messages[-1]["content"])
            aid = points_of(messages[-1]["content"])[0][0]
            return json.dumps({"gist": f"The notice is 45 days [{aid}].", "anchors": [aid]})
        return super().__call__(messages, role)


async def test_a_rejected_gist_is_retried_with_a_prompt_that_differs_each_time(tmp_path: Path) -> None:
    """At temperature 0 (or from the response cache) the prompt just rejected gives the
    rejected reply again: every retry's note changes with the rejections so far."""
    script = OverclaimingReaders()
    await Team(ScriptedLM(script), agents=1, mode="delm", max_attempts=3, run_dir=tmp_path).run(QUESTION, DOCS)
    prompts_sent = script.amendment_gist_prompts
    assert len(prompts_sent) >= 3
    assert len(set(prompts_sent)) == len(prompts_sent)
    assert "states 45" in prompts_sent[1] and "rejected 2 times for that reason" in prompts_sent[2]


# -- the answer gate ----------------------------------------------------------------------


async def test_an_answer_resting_on_nothing_read_is_refused_and_the_parts_read_again(tmp_path: Path) -> None:
    """Every summary invents an anchor, so nothing is admitted; the finalizer guesses anyway
    (the 804-token guess). The gate refuses it, queues both documents again, and at the last
    round ends the run without an answer."""
    script = DelmReaders(invent="always")
    team = Team(ScriptedLM(script), agents=2, mode="delm", max_attempts=1, max_finalize_rounds=2, run_dir=tmp_path)
    result = await team.run(QUESTION, DOCS)
    assert result.status == "error" and result.answer is None
    assert "was refused: the answer rests on no evidence read from the documents" in (result.error or "")
    store = RunStore(result.store_path)
    again = [t for t in TaskQueue(store).all() if t.goal.startswith("Read chunk")]
    assert len(again) == 2 and all("again" in t.goal for t in again)
    assert store.list_gists(status="admitted", kinds="partial") == []


async def test_a_gist_citing_nothing_from_the_corpus_is_refused_at_the_answer_gate(tmp_path: Path) -> None:
    """A hybrid reading agent (real kernel) shares a claim with no quote, which the judge
    admits; the finalizer's answer rests on it alone and is refused."""
    code = ('```repl\nprint(propose("fact", "The lease can be ended without notice"))\n'
            'answer["content"] = "done"\nanswer["ready"] = True\n```')

    def script(messages: list[dict], role: str) -> str:
        if role == "verifier":
            return "ADMIT: plausible"
        if role == "finalizer":
            ids = re.findall(r"\[(g\d+) FACT\]", messages[-1]["content"])
            return json.dumps({"answer": "D", "gists": ids})
        return code

    result = await Team(ScriptedLM(script), agents=1, max_finalize_rounds=1, run_dir=tmp_path).run(QUESTION, DOCS[:1])
    facts = RunStore(result.store_path).list_gists(status="admitted", kinds="fact")
    assert len(facts) == 1 and not facts[0].evidence
    assert result.status == "error" and result.answer is None
    assert f"its gists {facts[0].id} quote nothing found in them" in (result.error or "")


async def test_hybrid_reading_agents_read_in_their_repl_and_share_the_same_gists(tmp_path: Path) -> None:
    seen: list[str] = []

    def script(messages: list[dict], role: str) -> str:
        seen.extend(str(m["content"]) for m in messages)
        if role == "reader":
            return reader(messages)
        if role == "verifier":
            return "ADMIT: the quotes say so"
        if role == "finalizer":
            return finalizer(messages)
        last = messages[-1]["content"]
        if "Points of" not in last:
            return "Let me read my part.\n```repl\nprint(read_summary())\n```"
        gist = gist_from(points_of(last))
        return (f"```repl\nprint(propose_gist({gist['gist']!r}, {gist['anchors']!r}, choices={gist['choices']!r}))\n"
                f"answer['content'] = {gist['gist']!r}\nanswer['ready'] = True\n```")

    result = await Team(ScriptedLM(script), agents=2, run_dir=tmp_path).run(QUESTION, DOCS)
    assert result.status == "answered", result.error
    assert result.answer == "The correct answer is (B)"
    partials = RunStore(result.store_path).list_gists(status="admitted", kinds="partial")
    assert len(partials) == 2 and all(g.evidence and g.summary for g in partials)
    for g in partials:
        for ev in g.evidence:
            assert DOCS[ev.doc][ev.start:ev.end] == ev.quote
    assert any(e.kind == "code_cell" and "read_summary()" in e.data["code"] for e in result.trace)
    assert "read_summary()" in seen[0]  # the reading system prompt, not the counting one
    assert not any(t in text for text in seen for t in COUNTING_TEMPLATES)


async def test_a_task_the_finalizer_adds_reads_the_anchors_related_to_its_goal(tmp_path: Path) -> None:
    """A finalizer-added task has no chunk: it reads the run's anchors most related to its
    goal (here the deposit), and its gist is verified like any other."""
    script = DelmReaders()
    finals = [json.dumps({"tasks": ["What do the documents say about the deposit?"]})]

    def with_a_question(messages: list[dict], role: str) -> str:
        if role == "finalizer" and finals:
            return finals.pop(0)
        if role == "root" and "deposit?" in messages[-1]["content"]:
            points = points_of(messages[-1]["content"])
            aid, point = next((a, p) for a, p in points if "deposit" in p)
            return json.dumps({"gist": f"{point} [{aid}]", "anchors": [aid]})
        return script(messages, role)

    result = await Team(ScriptedLM(with_a_question), agents=1, mode="delm", run_dir=tmp_path).run(QUESTION, DOCS)
    assert result.status == "answered", result.error
    store = RunStore(result.store_path)
    added = next(t for t in TaskQueue(store).all() if t.created_by == "a1")
    assert added.goal == "What do the documents say about the deposit?" and added.state.value == "done"
    gist = next(g for g in store.list_gists(status="admitted", kinds="partial") if g.provenance.task_id == added.id)
    assert "deposit" in gist.text and "most related to this task" in (gist.summary or "")
    assert all(DOCS[ev.doc][ev.start:ev.end] == ev.quote for ev in gist.evidence)


GRANT = (
    "The council met on 4 June 2019 in the old town hall. After hearing the residents of the northern districts, "
    "the planning officers and the two engineering firms that had surveyed the harbour wall through the winter "
    "storms of the previous years, the council approved a repair grant of 5,000 euros. The work starts in autumn.\n"
)
GRANT_QUESTION = ("What is the correct answer to this question: How large was the repair grant?\nChoices:\n"
                  "(A) 500 euros\n(B) 5,000 euros\n(C) 50,000 euros\n(D) No grant\n\n"
                  'Format your response as follows: "The correct answer is (insert answer here)".')


def grant_readers(gist: str) -> ScriptedLM:
    """A reader whose first quote is the 280-character grant sentence (an anchor keeps 200 of
    it, so the amount falls outside the quote) and whose points add a name the text lacks."""
    sentence = GRANT[GRANT.index("After"):GRANT.index(" The work")]

    def script(messages: list[dict], role: str) -> str:
        if role == "reader":
            return json.dumps({"points": [
                {"point": "The council approved a repair grant of 5,000 euros.", "quote": sentence},
                {"point": "Mayor Olsen chaired the council meeting in June 2019.", "quote": "The council met on 4 June 2019"},
            ]})
        if role == "verifier":
            return "ADMIT: the quotes say so"
        if role == "finalizer":
            ids = re.findall(r"\[(g\d+) PARTIAL\]", messages[-1]["content"])
            return json.dumps({"answer": "B", "gists": ids} if ids else {"answer": None, "gists": []})
        return json.dumps({"gist": gist, "anchors": []})

    return ScriptedLM(script)


async def test_a_gist_is_checked_against_the_sentence_its_anchor_stands_in(tmp_path: Path) -> None:
    """The amount is in the anchor's sentence but past its 200-character quote: the gist is
    checked against the sentence (verbatim from the corpus) and admitted. A name that only
    the reader's point gives, not the text, is refused whatever the point says."""
    team = Team(grant_readers("The council approved a repair grant of 5,000 euros [a1]."), agents=1, mode="delm",
                run_dir=tmp_path / "amount")
    result = await team.run(GRANT_QUESTION, [GRANT])
    assert result.status == "answered", result.error
    assert result.answer == "The correct answer is (B)"
    gist = RunStore(result.store_path).list_gists(status="admitted", kinds="partial")[0]
    (quote,) = gist.evidence
    assert GRANT[quote.start:quote.end] == quote.quote and quote.quote.startswith("After hearing")
    assert quote.quote.endswith("repair grant of 5,000 euros.") and len(quote.quote) > 200

    team = Team(grant_readers("Mayor Olsen chaired the meeting on 4 June 2019 [a2]."), agents=1, mode="delm",
                max_attempts=2, max_finalize_rounds=1, run_dir=tmp_path / "name")
    result = await team.run(GRANT_QUESTION, [GRANT])
    assert result.status == "error" and result.answer is None
    reasons = [e.data["reason"] for e in result.trace if e.kind == "gist_rejected"]
    assert reasons and all("do not mention 'Olsen'" in r for r in reasons)
    assert result.error.startswith("the finalizer gave no answer: no gist was verified (the failed tasks: t1: ")


async def test_a_model_plan_on_the_reading_path_reads_the_corpus_before_its_tasks(tmp_path: Path) -> None:
    script = DelmReaders()

    def planned(messages: list[dict], role: str) -> str:
        if messages[0]["content"].startswith("Split a question"):
            return "1. Find the notice period the amendment sets."
        return script(messages, role)

    result = await Team(ScriptedLM(planned), agents=1, mode="delm", plan="model", run_dir=tmp_path).run(QUESTION, DOCS)
    assert result.status == "answered", result.error
    assert result.answer == "The correct answer is (B)"
    readers = [e for e in result.trace if e.kind == "model_call" and e.data["role"] == "reader"]
    assert len(readers) == len(DOCS)  # each document's chunk read once, for the one planned task


# -- reading what the question needs first ------------------------------------------------


def section(topic: str, sentence: str, chars: int = 7600) -> str:
    """A section of distinct sentences about `topic`, about `chars` long; its only blank line
    ends it, so the summary's slices (cut at paragraph ends) are the sections."""
    lines, n = [f"{topic.upper()}\n"], 0
    while sum(map(len, lines)) < chars:
        n += 1
        lines.append(sentence.format(n=n) + (" " if n % 6 else "\n"))
    return "".join(lines) + "\n"


GARDEN = section("Gardens", "Flower bed number {n} beside the courtyard holds roses and tulips planted each spring.")
NOTICE = section("Ending the lease", "Clause {n}: a tenant who ends the lease early must give sixty days of written notice.")
PARKING = section("Parking", "Parking bay number {n} behind the building is reserved for bicycles and small cars.")
LONG_LEASE = GARDEN + NOTICE + PARKING


def test_pick_slices_reads_the_slices_the_question_shares_words_with() -> None:
    texts = [GARDEN, NOTICE, PARKING]
    assert pick_slices(texts, QUESTION, 1) == {1}
    assert pick_slices(texts, "Where may small cars park?", 1) == {2}
    assert pick_slices(texts, "zzz qqq", 2) == {0, 1}  # nothing shared: the earliest slices
    assert pick_slices(texts, QUESTION, None) == {0, 1, 2}
    scores = rank_slices(texts, QUESTION)
    assert scores[1] > 0 and scores[0] == scores[2] == 0


@given(st.lists(st.text(alphabet="abcdef xyz", max_size=60), max_size=8), st.text(alphabet="abcdef xyz", max_size=30),
       st.one_of(st.none(), st.integers(min_value=1, max_value=10)))
def test_pick_slices_picks_at_most_its_limit_and_only_real_slices(texts: list[str], query: str, limit: int | None) -> None:
    chosen = pick_slices(texts, query, limit)
    assert chosen <= set(range(len(texts)))
    assert len(chosen) == (len(texts) if limit is None else min(limit, len(texts)))


async def test_a_long_part_is_read_where_the_question_points_and_the_rest_when_a_task_asks(tmp_path: Path) -> None:
    """read_slices=1: of three slices only the one about notice is summarized; the finalizer
    is told two are unread, adds a goal about parking, and that task reads the parking slice."""
    script = DelmReaders()
    shown: list[str] = []
    finals = [json.dumps({"tasks": ["Where may small cars park?"]})]

    def reading(messages: list[dict], role: str) -> str:
        if role == "reader":
            shown.append(messages[1]["content"])
        if role == "finalizer":
            if "Not read yet: " in messages[-1]["content"]:
                shown.append(messages[-1]["content"])
            if finals:
                return finals.pop(0)
        if role == "root" and "park?" in messages[-1]["content"]:
            aid, point = next((a, p) for a, p in points_of(messages[-1]["content"]) if "Parking" in p)
            return json.dumps({"gist": f"{point} [{aid}]", "anchors": [aid]})
        return script(messages, role)

    team = Team(ScriptedLM(reading), agents=1, mode="delm", chunk_chars=30000, read_slices=1, run_dir=tmp_path)
    result = await team.run(QUESTION, [LONG_LEASE])
    assert result.status == "answered", result.error
    assert result.answer == "The correct answer is (B)"
    summaries = [s for s in shown if s.startswith("Text:")]
    assert len(summaries) == 2  # the notice slice, then (for the added task) the parking slice
    assert "sixty days of written notice" in summaries[0] and "Parking bay" in summaries[1]
    assert not any("Flower bed" in s for s in summaries)  # the garden slice was never read
    note = next(s for s in shown if "Not read yet: " in s)
    assert "Not read yet: 2 slice(s)" in note
    steps = [e.data["action"] for e in result.trace if e.kind == "agent_step"]
    # What a hybrid agent is told of its unread slices finds them in its chunk.
    summary = await summarize_chunk(ScriptedLM(reading), [LONG_LEASE], 0, 0, len(LONG_LEASE), cache=None, trace=None,
                                    tags={}, where="the lease", read=lambda texts: {1})
    assert [LONG_LEASE.find(s.opening) for s in summary.unread] == [s.start for s in summary.unread] == [0, len(GARDEN) + len(NOTICE)]
    assert "2 slice(s) of this part were not summarized" in summary.unread_note()
    assert any(a.startswith("reads 1 of 3 slices") for a in steps)
    store = RunStore(result.store_path)
    added = next(t for t in TaskQueue(store).all() if t.created_by == "a1")
    gist = next(g for g in store.list_gists(status="admitted", kinds="partial") if g.provenance.task_id == added.id)
    assert "Parking bay" in gist.text and all(LONG_LEASE[e.start:e.end] == e.quote for e in gist.evidence)


async def test_a_hybrid_answer_citing_no_point_is_written_as_a_gist_from_the_summary(tmp_path: Path) -> None:
    """A small model sets answer = "The correct answer is (B)" without reading or citing: the
    gist step writes the task's gist from the summary (one JSON call), and that is verified."""
    gist_calls: list[str] = []

    def script(messages: list[dict], role: str) -> str:
        if role == "reader":
            return reader(messages)
        if role == "verifier":
            return "ADMIT: the quotes say so"
        if role == "finalizer":
            return finalizer(messages)
        last = messages[-1]["content"]
        if messages[0]["content"].startswith(READ_GIST_SYSTEM[:40]):
            gist_calls.append(last)
            return json.dumps(gist_from(points_of(last)))
        return "```repl\nanswer['content'] = 'The correct answer is (B)'\nanswer['ready'] = True\n```"

    result = await Team(ScriptedLM(script), agents=2, run_dir=tmp_path).run(QUESTION, DOCS)
    assert result.status == "answered", result.error
    assert result.answer == "The correct answer is (B)"
    assert len(gist_calls) == len(DOCS)  # one per task, from its summary's points
    partials = RunStore(result.store_path).list_gists(status="admitted", kinds="partial")
    assert len(partials) == 2 and all(re.search(r"\[a\d+\]", g.text) for g in partials)
    steps = [e.data["action"] for e in result.trace if e.kind == "agent_step"]
    assert sum("its answer cites no point" in a for a in steps) == len(DOCS)
