"""classify: batched labelling of many items, reply parsing, and the verifier's replay of it.

ScriptedLM plays the model (what it labels is fixed by the test, so these tests check the
mechanics: batching, parsing, re-asking for what a batch reply missed, recording, replay)."""

from __future__ import annotations

import re
from collections import Counter
from pathlib import Path

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from delm_rlm import RunStore, ScriptedLM, Team
from delm_rlm.classify import (
    ClassificationLog,
    batch_indices,
    classify,
    match_label,
    parse_numbered_labels,
)
from scripted_models import counts_finalizer

LABELS = ["location", "human being", "numeric value", "entity"]


def test_match_label_accepts_near_misses_and_refuses_guesses() -> None:
    assert match_label("location", LABELS) == "location"
    assert match_label("  Label: Location.", LABELS) == "location"
    assert match_label("**numeric value**", LABELS) == "numeric value"
    assert match_label("numeric", LABELS) == "numeric value"  # a prefix of exactly one label
    assert match_label("it is a location question", LABELS) == "location"
    assert match_label("place", LABELS) is None
    assert match_label("", LABELS) is None
    assert match_label("en", LABELS) is None  # too short to be a prefix match
    # Two allowed labels named equally: no guess.
    assert match_label("location or entity", LABELS) is None
    # The longest allowed label inside the reply wins ("human being", not "human").
    assert match_label("human being", ["human", "human being"]) == "human being"


@settings(max_examples=80)
@given(
    data=st.data(),
    gold=st.lists(st.sampled_from(LABELS), min_size=1, max_size=30),
)
def test_numbered_replies_parse_back_onto_their_items_in_any_order(data, gold) -> None:
    """However the lines are ordered, cased, prefixed or punctuated, each numbered line's
    label lands on its item; items without a line stay None."""
    n = len(gold)
    kept = data.draw(st.lists(st.booleans(), min_size=n, max_size=n))
    order = data.draw(st.permutations(range(n)))
    styles = ["{k}: {label}", "{k}. {label}", "{k}) Label: {label}", "{k} - {label}.", "#{k}: {upper}"]
    lines = []
    for i in order:
        if kept[i]:
            style = data.draw(st.sampled_from(styles))
            lines.append(style.format(k=i + 1, label=gold[i], upper=gold[i].upper()))
    lines.insert(0, "Here are the labels:")  # chatter around the lines is ignored
    parsed = parse_numbered_labels("\n".join(lines), n, LABELS)
    assert parsed == [gold[i] if kept[i] else None for i in range(n)]


@given(
    items=st.lists(st.text(max_size=600), max_size=60),
    max_items=st.integers(1, 10),
    max_chars=st.integers(1, 2000),
)
def test_batches_cover_every_item_once_in_order_within_limits(items, max_items, max_chars) -> None:
    batches = batch_indices(items, max_items, max_chars)
    assert [i for b in batches for i in b] == list(range(len(items)))
    for b in batches:
        assert 1 <= len(b) <= max_items
        if len(b) > 1:
            assert sum(min(len(items[i]), 400) for i in b) <= max_chars


QUESTIONS = [
    ("Where is the Eiffel Tower?", "location"),
    ("Who wrote Hamlet?", "human being"),
    ("How many legs has a spider?", "numeric value"),
    ("What is the largest planet?", "entity"),
    ("Where do pandas live?", "location"),
    ("Who painted the Mona Lisa?", "human being"),
    ("How tall is Everest?", "numeric value"),
]


def _gold(text: str) -> str:
    return dict(QUESTIONS)[text]


class Labeller:
    """Answers batch prompts by the gold labels, except: it never answers the first item of
    a batch and calls every 'numeric value' item 'number' (not an allowed label); a single
    item prompt gets the gold label."""

    def __init__(self) -> None:
        self.prompts: list[str] = []

    def __call__(self, messages: list[dict], role: str) -> str:
        prompt = messages[-1]["content"]
        self.prompts.append(prompt)
        assert role == "sub"
        if prompt.startswith("Give this item"):
            return _gold(prompt.rsplit("Item: ", 1)[1].strip())
        items = re.findall(r"^(\d+)\. (.*)$", prompt.split("Items:\n", 1)[1], re.MULTILINE)
        lines = []
        for k, text in items[1:]:
            label = _gold(text)
            lines.append(f"{k}: {'number' if label == 'numeric value' else label}")
        return "Sure!\n" + "\n".join(lines)


async def test_classify_batches_then_re_asks_for_what_a_batch_reply_missed() -> None:
    texts = [q for q, _ in QUESTIONS]
    model = Labeller()
    lm = ScriptedLM(model)
    log = ClassificationLog()
    labels = await classify(lm, texts, LABELS, "the kind of answer each question asks for",
                            batch_items=3, log=log)
    assert labels == [_gold(t) for t in texts]
    batches = [p for p in model.prompts if not p.startswith("Give this item")]
    singles = [p for p in model.prompts if p.startswith("Give this item")]
    assert len(batches) == 3  # 7 items, 3 per batch
    assert all("the kind of answer each question asks for" in p for p in model.prompts)
    # Re-asked: each batch's first item, and every item the batch called 'number'.
    missed = {0, 3, 6} | {i for i, (_, g) in enumerate(QUESTIONS) if g == "numeric value"}
    assert len(singles) == len(missed)
    assert lm.usage.total.calls == len(batches) + len(singles)
    # The log answers a replay of the same call, and only of the same call.
    assert log.replay(texts, LABELS, "the kind of answer each question asks for") == labels
    with pytest.raises(LookupError, match="replays only the classifications the agent made"):
        log.replay(texts[:-1], LABELS, "the kind of answer each question asks for")


async def test_classify_leaves_none_where_the_model_never_names_an_allowed_label() -> None:
    lm = ScriptedLM(lambda messages, role: "no idea, sorry")
    assert await classify(lm, ["a", "b"], ["x", "y"]) == [None, None]
    assert await classify(lm, [], ["x", "y"]) == []


@pytest.mark.parametrize(
    ("items", "labels", "error", "match"),
    [
        ("one long string", ["a"], TypeError, r"list of texts as items, e\.g\. chunk\.splitlines\(\)"),
        (["a"], [], TypeError, "non-empty list of label strings"),
        (["a"], "spam", TypeError, "non-empty list of label strings"),
        (["a"], ["x", "x"], ValueError, "distinct non-empty"),
        (["a"], [...], TypeError, "labels must be strings, the labels the question names"),  # a hint copied as is
        (["a"], ["spam"], ValueError, "at least two labels"),
    ],
)
async def test_classify_bad_arguments_say_what_to_pass(items, labels, error, match) -> None:
    with pytest.raises(error, match=match):
        await classify(ScriptedLM(lambda m, r: "x"), items, labels)


# -- in a team: the verifier replays an agent's classify() without a model ---------------

DOCS = ["\n".join(q for q, _ in QUESTIONS[:4]), "\n".join(q for q, _ in QUESTIONS[4:])]
QUESTION = "Which label is most common: location, human being, numeric value or entity?"
AGENT_CODE = """```repl
from collections import Counter
labels = classify(chunk.splitlines(), ["location", "human being", "numeric value", "entity"])
counts = Counter(labels)
print(dict(counts))
answer["content"] = str(dict(counts))
answer["ready"] = True
```"""
FINAL_CODE = counts_finalizer("Label: {total.most_common(1)[0][0]}")


async def test_a_team_agent_that_classifies_lines_is_verified_by_replay(tmp_path: Path) -> None:
    """Agents label unlabelled lines with classify() and set the counts without propose();
    the verifier re-runs their code, classify answered from the run's log (no model call),
    and admits the counts with code evidence; the judge is never asked."""
    judged: list[str] = []

    def script(messages: list[dict], role: str) -> str:
        if role == "finalizer":
            return FINAL_CODE
        if role == "verifier":
            judged.append(messages[-1]["content"])
            return "REJECT: cannot tell"
        if role == "sub":
            return Labeller()(messages, role)
        return AGENT_CODE

    # Spot checks off: this test is about the replay alone (tests/test_labels.py covers them).
    result = await Team(ScriptedLM(script), agents=2, spot_check_sample=0, run_dir=tmp_path / "run").run(QUESTION, DOCS)
    assert result.status == "answered", result.error
    expected = Counter(g for _, g in QUESTIONS)
    assert result.answer == f"Label: {expected.most_common(1)[0][0]}"
    partials = RunStore(result.store_path).list_gists(status="admitted", kinds="partial")
    assert sum((Counter(g.value) for g in partials), Counter()) == expected
    assert all(g.evidence and g.evidence[-1].type == "code" for g in partials)
    assert judged == []


async def test_blank_items_are_never_sent_to_the_model_and_stay_unlabelled() -> None:
    # chunk.splitlines() keeps a chunk's empty lines: they cost no call, and no label is
    # invented for them.
    model = Labeller()
    lm = ScriptedLM(model)
    texts = [QUESTIONS[0][0], "", "   ", QUESTIONS[1][0]]
    labels = await classify(lm, texts, LABELS, batch_items=10)
    assert labels == [_gold(texts[0]), None, None, _gold(texts[3])]
    assert all(not re.search(r"^\d+\. \s*$", p, re.MULTILINE) for p in model.prompts)
    assert not [p for p in model.prompts if p.startswith("Give this item") and p.rstrip().endswith("Item:")]
    assert await classify(lm, ["", " "], LABELS) == [None, None]
    assert lm.usage.total.calls == len(model.prompts)
