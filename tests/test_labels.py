"""Model-given labels checked and shared (issue 14): classify's k-vote majority and rules,
the verifier's spot checks, and labelling rules that reach every agent's classify prompt.

ScriptedLM plays every model (the agents, their classify calls, the verifier): what it labels
is fixed by the test, so these tests check the mechanics (sampling, comparing, voting, rules
handed on), never a model's labelling. Code checks run in real kernels; stores are real
SQLite files.
"""

from __future__ import annotations

import asyncio
import re
import threading
from collections import Counter
from pathlib import Path
from typing import Any

import pytest

from delm_rlm import RLM, ScriptedLM, Team
from delm_rlm.classify import ClassificationLog, classify, majority
from delm_rlm.errors import ConfigError
from delm_rlm.gists import Gist, GistKind, GistStatus, Provenance
from delm_rlm.state.context import SharedContext
from delm_rlm.state.sqlite import RunStore
from delm_rlm.trace import Trace, TraceEvent
from delm_rlm.verify import Verifier, label_rules
from delm_rlm.verify.spot_check import ReplayedLabels, draw_sample
from sandbox import make_sandbox
from scripted_models import counts_finalizer

LABELS = ["location", "human being", "numeric value", "entity"]
QUESTIONS = [
    ("Where is the Eiffel Tower?", "location"),
    ("Who wrote Hamlet?", "human being"),
    ("How many legs has a spider?", "numeric value"),
    ("What is the largest planet?", "entity"),
    ("Where do pandas live?", "location"),
    ("Who painted the Mona Lisa?", "human being"),
    ("How tall is Everest?", "numeric value"),
]
GOLD = dict(QUESTIONS)
LABELS_CODE = '["location", "human being", "numeric value", "entity"]'
CHECK = f"""
from collections import Counter
labels = classify(chunk.splitlines(), {LABELS_CODE})
print(dict(Counter(labels)))
"""


def numbered_items(prompt: str) -> list[tuple[str, str]]:
    """(number, item) of a classify batch prompt."""
    return re.findall(r"^(\d+)\. (.*)$", prompt.split("Items:\n", 1)[1], re.MULTILINE)


def label_reply(prompt: str, label_of) -> str:  # type: ignore[no-untyped-def]
    """A classify reply: a batch gets one '<n>: <label>' line per item, one item its label."""
    if prompt.startswith("Give this item"):
        return label_of(prompt.rsplit("Item: ", 1)[1].strip())
    return "\n".join(f"{k}: {label_of(text)}" for k, text in numbered_items(prompt))


def is_judge(messages: list[dict]) -> bool:
    return messages[0]["content"].startswith("You check one claim")


# -- classify: k independent labellings, majority kept ---------------------------------------


async def test_majority_labelling_with_k3_counts_three_calls_per_item() -> None:
    """votes=3: every item is labelled by three calls (one item per batch here, so three
    calls per item exactly, all under the caller's role); the majority is kept, a three-way
    tie goes to the first labelling's label, and the log records the labels kept."""
    texts = [q for q, _ in QUESTIONS]
    seen: Counter[str] = Counter()
    prompts_seen: list[str] = []

    def script(messages: list[dict], role: str) -> str:
        prompt = messages[-1]["content"]
        prompts_seen.append(prompt)
        vote = int(m.group(1)) if (m := re.search(r"\(Labelling (\d) of 3", prompt)) else 1

        def label_of(item: str) -> str:
            seen[item] += 1
            if item == "Who wrote Hamlet?" and vote == 1:
                return "entity"  # outvoted by labellings 2 and 3
            if item == "What is the largest planet?":
                return ["entity", "location", "numeric value"][vote - 1]  # a three-way tie
            return GOLD[item]

        return label_reply(prompt, label_of)

    lm = ScriptedLM(script)
    log = ClassificationLog()
    labels = await classify(lm, texts, LABELS, votes=3, batch_items=1, log=log, role="sub")
    expected = [GOLD[t] for t in texts]  # the tie: "entity", labelling 1's label, is also gold
    assert labels == expected
    assert seen == Counter({t: 3 for t in texts})
    assert lm.usage.by_role["sub"].calls == 3 * len(texts) and lm.usage.total.calls == 3 * len(texts)
    assert log.replay(texts, LABELS) == expected
    # Labellings 2 and 3 are other prompts (a vote that repeated the first prompt would get
    # the first reply again from a temperature-0 model or the response cache).
    assert len(set(prompts_seen)) == len(prompts_seen)
    assert sum("(Labelling 2 of 3" in p for p in prompts_seen) == len(texts)

    # In batches, every item is still in exactly three prompts, and the later labellings
    # group the items otherwise than the first.
    seen.clear()
    prompts_seen.clear()
    await classify(ScriptedLM(script), texts, LABELS, votes=3, batch_items=3)
    assert seen == Counter({t: 3 for t in texts})
    groupings = {tuple(text for _, text in numbered_items(p)) for p in prompts_seen}
    assert len(groupings) > 3  # not the same three batches three times

    # k comes from the log when the call does not pass it; k = 1 is one call per item.
    seen.clear()
    assert await classify(ScriptedLM(script), texts, LABELS, batch_items=1, log=ClassificationLog(votes=3)) == expected
    assert seen == Counter({t: 3 for t in texts})
    seen.clear()
    await classify(ScriptedLM(script), texts, LABELS, batch_items=1)
    assert seen == Counter({t: 1 for t in texts})


def test_majority_tie_breaks_and_strict_majority() -> None:
    assert majority(["a", "b", "b"]) == "b"
    assert majority(["a", "b", "c"]) == "a"  # a tie: the earliest labelling's label
    assert majority([None, "b", "c"]) == "b"  # None votes do not count
    assert majority([None, None]) is None
    assert majority(["a", "b", "c"], strict=True) is None  # no label from more than half
    assert majority(["a", None, "a"], strict=True) == "a"
    with pytest.raises(ConfigError, match="whole number >= 1"):
        ClassificationLog(votes=0)


async def test_classify_prompts_show_the_rules_read_at_each_call() -> None:
    prompts_seen: list[str] = []

    def script(messages: list[dict], role: str) -> str:
        prompts_seen.append(messages[-1]["content"])
        return label_reply(messages[-1]["content"], lambda item: GOLD[item])

    rules: list[str] = []
    log = ClassificationLog(rules=lambda: rules)
    texts = [q for q, _ in QUESTIONS[:2]]
    await classify(ScriptedLM(script), texts, LABELS, log=log)
    assert "Rules for these labels" not in prompts_seen[-1]  # none yet: the prompt as before
    rules.append('Label rule: "Who wrote Hamlet?" is human being, not entity')
    await classify(ScriptedLM(script), texts, LABELS, log=log)
    assert 'Rules for these labels (follow them):\n- Label rule: "Who wrote Hamlet?" is human being' in prompts_seen[-1]
    # A call may pass its own rules instead of the log's.
    await classify(ScriptedLM(script), texts, LABELS, log=log, rules=["years are numeric value"])
    assert "- years are numeric value" in prompts_seen[-1] and "Hamlet" not in prompts_seen[-1].split("Items:")[0]


# -- spot checks: labels re-labelled by the verifier -----------------------------------------

DOC = "\n".join(q for q, _ in QUESTIONS)
CHUNK_VARS = {"chunk_doc": 0, "chunk_start": 0, "chunk_end": len(DOC)}
PROV = Provenance(task_id="t1", agent_id="a1")


class CheckingModel:
    """The verifier's model: re-labels by the gold labels, admits what the judge is asked."""

    def __init__(self) -> None:
        self.calls: list[str] = []

    def __call__(self, messages: list[dict], role: str) -> str:
        assert role == "verifier"
        if is_judge(messages):
            self.calls.append("judge")
            return "ADMIT: the quoted item is in the text and fits the label"
        prompt = messages[-1]["content"]
        self.calls.append("vote" if "(Labelling " in prompt else "relabel")
        return label_reply(prompt, lambda item: GOLD[item])


def spot_verifier(tmp_path: Path, model: CheckingModel, **kw: Any) -> tuple[Verifier, RunStore, Trace, ClassificationLog, ScriptedLM]:
    tmp_path.mkdir(parents=True, exist_ok=True)
    store = RunStore(tmp_path / "store.sqlite")
    trace = Trace(tmp_path / "trace.jsonl")
    context = SharedContext(store, [DOC])
    log = ClassificationLog(store, rules=label_rules(context))
    lm = ScriptedLM(model)
    verifier = Verifier(
        context, [DOC], lm=lm, trace=trace, sandbox_factory=lambda: make_sandbox("local"),
        replay_tools={"classify": log.replay}, **kw,
    )
    return verifier, store, trace, log, lm


def counted_partial(labels: list[str | None]) -> Gist:
    return Gist(kind="partial", text="t1: count per label", value=dict(Counter(labels)), check=CHECK, provenance=PROV)


async def test_a_partial_whose_labels_disagree_with_the_spot_check_is_rejected_one_that_agrees_admitted(
    tmp_path: Path,
) -> None:
    model = CheckingModel()
    verifier, store, trace, log, lm = spot_verifier(tmp_path, model, spot_check_sample=4)
    items = DOC.splitlines()
    async with verifier:
        # The agent's classify call called everything "entity": its counts follow from those
        # labels (the code stage passes), but six of the seven labels are wrong.
        careless = ["entity"] * len(items)
        log.record(items, LABELS, "", careless)
        rejected = await verifier.verify(counted_partial(careless), source=DOC, check_vars=CHUNK_VARS)
        # Labelled again (the rules now say how the disputed items read): the labels agree.
        log.record(items, LABELS, "", [GOLD[i] for i in items])
        admitted = await verifier.verify(counted_partial([GOLD[i] for i in items]), source=DOC, check_vars=CHUNK_VARS)

    assert rejected.status == "rejected" and rejected.stage == "labels", rejected.reason
    report = rejected.spot_check
    assert report is not None and len(report.sample) == 4 and set(report.sample) <= set(items)
    assert report.given == [careless[items.index(i)] for i in report.sample]
    assert report.relabelled == [GOLD[i] for i in report.sample]
    wrong = sum(1 for i in report.sample if careless[items.index(i)] != GOLD[i])
    assert wrong >= 3 and report.agreement == (4 - wrong) / 4 < 0.75 and not report.passed
    assert [d.item for d in report.disputes] == [i for i in report.sample if careless[items.index(i)] != GOLD[i]]
    assert all(d.votes == [GOLD[d.item]] * 3 and d.decided == GOLD[d.item] for d in report.disputes)
    assert "agreement" in rejected.reason and "classify again" in rejected.reason
    assert rejected.for_agent()["spot_check"]["items"] == 4
    failure = store.get_gist(rejected.failure_gist_id)
    assert failure.kind == GistKind.FAILURE and "labels" in failure.summary
    # Each decided dispute became a labelling rule, quoting its item, admitted through the gate.
    rules = store.list_gists(status="admitted", kinds="constraint")
    assert [g.id for g in rules] == report.rule_ids and len(rules) == min(3, wrong)
    for rule in rules:
        item = rule.evidence[0].quote
        assert rule.text == f'Label rule: "{item}" is {GOLD[item]}, not {careless[items.index(item)]}'
        assert DOC[rule.evidence[0].start:rule.evidence[0].end] == item
        assert rule.note == f"quoted item verified; its label decided by 3 independent votes ({', '.join([GOLD[item]] * 3)})"

    assert admitted.status == "admitted" and admitted.checks == ["form", "code", "labels"], admitted.reason
    assert admitted.spot_check is not None and admitted.spot_check.passed and admitted.spot_check.agreement == 1.0
    # The cost is the verifier's: role "verifier" calls, and the spot-check counts in its stats.
    relabels, votes, judged = (model.calls.count(k) for k in ("relabel", "vote", "judge"))
    # The disputes share each vote's call; the votes that decided a rule stand in for the judge.
    assert relabels == 2 and votes == 3 and judged == 0
    assert set(lm.usage.by_role) == {"verifier"} and lm.usage.by_role["verifier"].calls == len(model.calls)
    stats = verifier.stats
    assert (stats.spot_checks, stats.spot_check_items, stats.spot_check_rejections) == (2, 8, 1)
    assert stats.checks_run["labels"] == 2 and stats.seconds_by_stage["labels"] > 0
    events = trace.of_kind("labels_checked")
    assert [e.data["passed"] for e in events] == [False, True]
    assert events[0].data["sample"] == report.sample and events[0].data["relabelled"] == report.relabelled


async def test_no_spot_check_where_no_label_was_replayed_or_checks_are_off(tmp_path: Path) -> None:
    model = CheckingModel()
    verifier, store, _, log, lm = spot_verifier(tmp_path, model, spot_check_sample=4)
    off, _, _, off_log, off_lm = spot_verifier(tmp_path / "off", model)  # the default: sample 0
    items = DOC.splitlines()
    async with verifier, off:
        counted = await verifier.verify(
            Gist(kind="partial", text="t1: lines", value=len(items), check="print(len(chunk.splitlines()))", provenance=PROV),
            source=DOC, check_vars=CHUNK_VARS,
        )
        off_log.record(items, LABELS, "", ["entity"] * len(items))
        unchecked = await off.verify(counted_partial(["entity"] * len(items)), source=DOC, check_vars=CHUNK_VARS)
    assert counted.status == "admitted" and "labels" not in counted.checks and counted.spot_check is None
    assert unchecked.status == "admitted" and unchecked.spot_check is None
    assert model.calls == [] and lm.usage.total.calls == 0 and off_lm.usage.total.calls == 0
    with pytest.raises(ConfigError, match="between 0 and 1"):
        spot_verifier(tmp_path / "bad", model, spot_check_sample=4, spot_check_agreement=1.5)
    with pytest.raises(ConfigError, match="odd whole number"):
        spot_verifier(tmp_path / "even", model, votes=2)


def test_the_sample_is_drawn_the_same_way_for_the_same_claim() -> None:
    items = tuple(q for q, _ in QUESTIONS)
    replays = [ReplayedLabels(1, items, tuple(LABELS), "", tuple(GOLD[i] for i in items))]
    gist = counted_partial([GOLD[i] for i in items])
    first = draw_sample(gist, replays, 4)
    assert first == draw_sample(gist, replays, 4) and len(set(first)) == 4
    # Never the agent's own order (that prompt would be the agent's again).
    assert draw_sample(gist, replays, 50) != sorted(draw_sample(gist, replays, 50))
    assert sorted(draw_sample(gist, replays, 50)) == [(0, i) for i in range(len(items))]
    # A blank item was never labelled (classify does not send it): it is never drawn.
    blanks = [ReplayedLabels(1, ("", *items, "  "), tuple(LABELS), "", (None, *(GOLD[i] for i in items), None))]
    assert all(0 < i <= len(items) for _, i in draw_sample(gist, blanks, 50))


# -- rules reach every agent ----------------------------------------------------------------

DOCS = ["\n".join(q for q, _ in QUESTIONS[:4]), "\n".join(q for q, _ in QUESTIONS[4:])]


async def test_a_rule_admitted_from_one_agents_disagreement_reaches_another_agents_classify_prompt(
    tmp_path: Path,
) -> None:
    """Agent a1 (an RLM in its own kernel) labels its chunk, mislabelling 'Who wrote Hamlet?',
    and proposes its counts; the verifier's spot check disagrees on that item, the votes
    decide it, and the rule is admitted. Agent a2 (another RLM, another kernel) then labels
    its own chunk: its classify prompt carries the rule."""
    sub_prompts: dict[str, list[str]] = {"a1": [], "a2": []}
    checking = CheckingModel()

    def script(messages: list[dict], role: str) -> str:
        prompt = messages[-1]["content"]
        if role == "verifier":
            return checking(messages, role)
        if role == "sub":
            first_chunk = {q for q, _ in QUESTIONS[:4]}
            agent = "a1" if any(text in first_chunk for _, text in numbered_items(prompt)) else "a2"
            sub_prompts[agent].append(prompt)
            return label_reply(prompt, lambda item: "entity" if agent == "a1" and "Hamlet" in item else GOLD[item])
        agent = re.search(r"agent (a\d)", messages[1]["content"]).group(1)  # type: ignore[union-attr]
        return (
            "```repl\n"
            f"check = '''{CHECK}'''\n"
            "exec(check)\n"
            + ("print(propose('partial', 'count per label', value=dict(Counter(labels)), check=check))\n"
               if agent == "a1" else "")
            + 'answer["content"] = "done"\nanswer["ready"] = True\n```'
        )

    store = RunStore(tmp_path / "store.sqlite")
    context = SharedContext(store, DOCS)
    log = ClassificationLog(store, rules=label_rules(context))  # as Team wires it
    lm = ScriptedLM(script)
    verdicts = []
    async with Verifier(context, DOCS, lm=lm, sandbox_factory=lambda: make_sandbox("local"),
                        replay_tools={"classify": log.replay}, spot_check_sample=4) as verifier:

        async def run_agent(agent: str, doc: int) -> None:
            sb = make_sandbox("local")
            await sb.start()
            try:
                await sb.load_context(DOCS)

                async def propose(kind: str, text: str, value: Any = None, check: str | None = None) -> dict:
                    gist = Gist(kind=kind, text=f"t{doc + 1}: {text}", value=value, check=check,
                                provenance=Provenance(task_id=f"t{doc + 1}", agent_id=agent))
                    verdict = await verifier.verify(gist, source=DOCS[doc], check_vars={
                        "chunk_doc": doc, "chunk_start": 0, "chunk_end": len(DOCS[doc])})
                    verdicts.append(verdict)
                    return verdict.for_agent()

                sb.register("propose", propose)
                await sb.execute(f"chunk = docs[{doc}]")
                outcome = await RLM(lm, classifications=log, max_iterations=2).loop(
                    sb, question=f"You are agent {agent}: count the labels of your chunk", context_description="docs",
                    lm=lm, agent_id=agent, task_id=f"t{doc + 1}",
                )
                assert outcome.status == "answered", outcome.error
            finally:
                await sb.close()

        await run_agent("a1", 0)
        await run_agent("a2", 1)

    (verdict,) = verdicts
    assert verdict.status == "admitted" and verdict.spot_check is not None, verdict.reason
    (dispute,) = verdict.spot_check.disputes
    assert (dispute.item, dispute.given, dispute.decided) == ("Who wrote Hamlet?", "entity", "human being")
    (rule,) = store.list_gists(status="admitted", kinds="constraint")
    assert rule.id in verdict.spot_check.rule_ids and rule.provenance.task_id == "t1"
    assert rule.text == 'Label rule: "Who wrote Hamlet?" is human being, not entity'
    assert sub_prompts["a1"] and all("Rules for these labels" not in p for p in sub_prompts["a1"])
    assert sub_prompts["a2"] and all(f"- {rule.text}" in p for p in sub_prompts["a2"])
    # The prompt view lists the rule first.
    assert context.prompt_view(800).splitlines()[0] == rule.label()


async def test_a_rule_an_agent_proposes_reaches_another_team_agents_classify_prompt(tmp_path: Path) -> None:
    """In a Team (real kernels), the agent on t1 notices an ambiguous case and proposes a
    CONSTRAINT; once admitted, the classify prompt of the agent on t2 shows it."""
    rule_text = "A question asking who did something is human being"
    admitted = threading.Event()
    constraint_ids: set[str] = set()
    sub_prompts: list[str] = []

    def watch(event: TraceEvent) -> None:
        if event.kind == "gist_proposed" and (event.data.get("gist") or {}).get("kind") == "constraint":
            constraint_ids.add(event.data["gist"]["id"])
        if event.kind == "gist_admitted" and event.data.get("gist_id") in constraint_ids:
            admitted.set()

    async def script(messages: list[dict], role: str) -> str:
        text = "\n".join(str(m["content"]) for m in messages)
        if role == "finalizer":
            return counts_finalizer("Label: {total.most_common(1)[0][0]}")
        if role == "verifier":
            return "ADMIT: the quoted line shows the case"
        if role == "sub":
            sub_prompts.append(messages[-1]["content"])
            return label_reply(messages[-1]["content"], lambda item: GOLD[item])
        propose_rule = ""
        if "Your task t1" in text:
            propose_rule = f"print(propose('constraint', {rule_text!r}, evidence=['Who wrote Hamlet?']))\n"
        else:
            for _ in range(600):  # the t2 agent labels only once t1's rule is in
                if admitted.is_set():
                    break
                await asyncio.sleep(0.05)
        return (
            "```repl\n" + propose_rule + f"check = '''{CHECK}'''\nexec(check)\n"
            "print(propose('partial', f'count per label {dict(Counter(labels))}', value=dict(Counter(labels)), check=check))\n"
            'answer["content"] = "done"\nanswer["ready"] = True\n```'
        )

    team = Team(ScriptedLM(script), agents=2, run_dir=tmp_path / "run", trace_subscribers=[watch])
    result = await team.run("Which label is most common: location, human being, numeric value or entity?", DOCS)
    assert result.status == "answered", result.error
    assert admitted.is_set()
    store = RunStore(result.store_path)
    (rule,) = store.list_gists(status="admitted", kinds="constraint")
    assert rule.text == rule_text
    t2_prompts = [p for p in sub_prompts if "Where do pandas live?" in p]
    assert t2_prompts and all(f"- {rule_text}" in p for p in t2_prompts)
    assert result.answer == f"Label: {Counter(GOLD.values()).most_common(1)[0][0]}"


async def test_labels_a_spot_check_rejected_are_labelled_by_three_votes_when_asked_for_again(tmp_path: Path) -> None:
    """At temperature 0 the same classify call gets the same labels again (seen in the issue-12
    benchmark: the rejected agent called classify again and proposed the same wrong counts).
    In a Team, after a spot check rejects a partial, the agent's next classify call on the same
    items makes three labellings and keeps the majority, so the new proposal can differ."""
    sub_prompts: list[str] = []
    checking = CheckingModel()

    def script(messages: list[dict], role: str) -> str:
        if role == "finalizer":
            return counts_finalizer("Answer: {total['location']}")
        if role == "verifier":
            return checking(messages, role)
        if role == "sub":  # a careless first labelling; the later votes label right
            prompt = messages[-1]["content"]
            sub_prompts.append(prompt)
            return label_reply(prompt, lambda item: GOLD[item] if "(Labelling " in prompt else "entity")
        if "'status': 'admitted'" in messages[-1]["content"]:
            return 'Done.\n```repl\nanswer["content"] = "done"\nanswer["ready"] = True\n```'
        return ("```repl\n" + f"check = '''{CHECK}'''\nexec(check)\n"
                "print(propose('partial', f'count per label {dict(Counter(labels))}', value=dict(Counter(labels)), "
                "check=check))\n```")

    team = Team(ScriptedLM(script), agents=1, plan="split", spot_check_sample=4, max_iterations=4,
                run_dir=tmp_path / "run")
    result = await team.run("How many questions ask for a location? Answer in the form 'Answer: N'.", DOC)
    assert result.status == "answered", result.error
    store = RunStore(result.store_path)
    (partial,) = store.list_gists(status="admitted", kinds="partial")
    assert partial.value == dict(Counter(GOLD.values()))
    assert result.answer == f"Answer: {list(GOLD.values()).count('location')}"
    (rejection,) = [e for e in Trace.load(result.trace_path)
                    if e.kind == "gist_rejected" and "re-labelling" in e.data["reason"]]
    assert "labels each item 3 times" in rejection.data["reason"]
    # One careless labelling (one batch), then three: the first again plus two votes.
    assert len(sub_prompts) == 4 and sum("(Labelling " in p for p in sub_prompts) == 2


def test_superseded_needs_its_winner_and_persists(tmp_path: Path) -> None:
    with pytest.raises(ValueError, match="superseded_by"):
        Gist(kind="fact", text="x", status=GistStatus.SUPERSEDED)
    with pytest.raises(ValueError, match="superseded_by"):
        Gist(kind="fact", text="x", superseded_by="g2")
    store = RunStore(tmp_path / "store.sqlite")
    context = SharedContext(store, ["a b"])
    a = context.record(Gist(kind="fact", text="n is 1", value=1, provenance=PROV))
    b = context.record(Gist(kind="fact", text="n is 2", value=2, provenance=PROV))
    failure = Gist(kind="failure", text="Superseded FACT 'n is 1' by g2: votes", provenance=PROV)
    loser, recorded = context.supersede(a.id, b.id, "votes said g2", failure=failure)
    assert loser.status == GistStatus.SUPERSEDED and loser.superseded_by == b.id
    with pytest.raises(ConfigError, match="only ADMITTED"):
        context.supersede(a.id, b.id, "again")
    store.close()
    reopened = RunStore(tmp_path / "store.sqlite")
    assert reopened.get_gist(a.id).superseded_by == b.id
    assert [g.id for g in reopened.list_gists(status="superseded")] == [a.id]
    assert recorded is not None and reopened.get_gist(recorded.id).status == GistStatus.ADMITTED
    assert f"superseded by {b.id})" in SharedContext(reopened).unfold(a.id, 0)
