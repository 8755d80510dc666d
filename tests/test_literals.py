"""What a program looks for that its data lacks, named in the rejection an agent reads.

The issue-12 benchmark: on a 32K labelled window the 1.5B model counted with
`line.split("label: ")` over lines that say `Label: `, answered `Answer: 0` for 227, and every
retry was told only that its output did not come from the data. Rules are unit-tested on
text; the verifier's rejections are tested with real kernels.
"""

from __future__ import annotations

from pathlib import Path

from hypothesis import given, settings
from hypothesis import strategies as st

from delm_rlm.gists import Gist, Provenance
from delm_rlm.state.context import SharedContext
from delm_rlm.state.sqlite import RunStore
from delm_rlm.trace import Trace
from delm_rlm.verify import Verifier, answer_replay_check
from delm_rlm.literals import cell_error_hint, pattern_text, unmatched_literals
from sandbox import make_sandbox

LOG = "\n".join(
    f"2024-05-0{d} 10:00:0{d} {level} worker-{d}: job finished" for d, level in
    zip(range(1, 8), ["INFO", "WARN", "INFO", "ERROR", "INFO", "ERROR", "INFO"])
) + "\n"
CSV = "id,Region,amount\n1,North,10\n2,South,5\n3,North,7\n"
PROV = Provenance(task_id="t1", agent_id="a1")


def test_a_literal_in_another_case_is_named_with_the_spelling_the_data_uses() -> None:
    code = "print(sum(1 for line in chunk.splitlines() if ' error ' in line))"
    (hint,) = unmatched_literals(code, LOG)
    assert "' error ' is not in the data, but ' ERROR ' is (2 times)" in hint


def test_patterns_spacing_and_absent_words_are_each_named() -> None:
    code = (
        "import re\n"
        "a = re.findall(r'region=(\\w+)', chunk)\n"
        "c = df[df['line'].str.contains('West')]\n"
    )
    hints = unmatched_literals(code, CSV)
    assert len(hints) == 2, hints
    assert "in the pattern 'region=(\\\\w+)', 'region=' occurs nowhere in the data" in hints[0]
    assert "'West' occurs nowhere in the data" in hints[1]
    (spacing,) = unmatched_literals("print(chunk.count('INFO  worker'))", LOG)
    assert "'INFO  worker' is not in the data, but 'INFO worker' is: the spacing differs" == spacing


def test_a_pattern_is_read_for_its_plain_text_never_run() -> None:
    """The host never runs an agent's regular expression (a pattern like `(a+)+$` could
    hang it on a long corpus): it reads off the text every match must contain."""
    # Its longest plain run ('worker-') is in the data: what else fails cannot be told unrun.
    assert unmatched_literals("import re\nprint(len(re.findall(r'worker-\\d+: (warn)', chunk)))", LOG) == []
    (hint,) = unmatched_literals("import re\nprint(len(re.findall(r'(\\d+) warn ', chunk)))", LOG)
    assert "' warn ' is not in the data, but ' WARN ' is (once)" in hint
    assert pattern_text(r"(a+)+$") == "" and pattern_text(r"ab|cd") == "" and pattern_text(r"(?i)label") == ""
    assert pattern_text(r"Label:\s*(\w+)") == "Label:" and pattern_text(r"colou?r") == "colo"
    assert pattern_text(r"[Ll]abel: x{2}y") == "abel: " and pattern_text(r"ERROR\]") == "ERROR]"


def test_code_that_ignores_case_is_not_told_to_match_it() -> None:
    for code in ("n = sum(' error ' in line.lower() for line in chunk.splitlines())",
                 "import re\nn = re.findall(' error ', chunk, re.I)",
                 "n = df[df['line'].str.contains(' error ', case=False)]"):
        assert unmatched_literals(code, LOG) == [], code


def test_a_name_bound_to_one_string_is_read_as_that_string() -> None:
    """The team's own prompt example binds the field to a name (`field = "status: "`);
    agents copy it as `field = "label: "` over lines that say `Label: ` (issue-12 32K run:
    four chunks counted everything under None). A name bound to two values is not read."""
    lines = "a || Label: x\nb || Label: y\n"
    copied = (
        "from collections import Counter\n"
        "field = \"label: \"\n"
        "counts = Counter(line.split(field)[1].split(' |')[0] if field in line else None "
        "for line in chunk.splitlines())\n"
        "print(dict(counts))\n"
    )
    assert unmatched_literals(copied, lines) == [
        "'label: ' is not in the data, but 'Label: ' is (2 times): match the case the data uses"]
    assert unmatched_literals("field = 'a'\nfield = 'label: '\nparts = chunk.split(field)", lines) == []
    assert unmatched_literals("for field in ['label: ']:\n    parts = chunk.split(field)", lines) == []


def test_text_the_code_does_not_match_against_the_data_is_never_reported() -> None:
    """An answer template, an f-string, a dict key, a label classify gives: none of them is
    looked up in the data, so none is named."""
    code = (
        "labels = classify(chunk.splitlines(), ['urgent', 'routine'])\n"
        "counts = {'urgent': labels.count('urgent')}\n"
        "answer['content'] = f'Answer: {counts[\"urgent\"]}'\n"
        "print('done')\n"
    )
    assert unmatched_literals(code, LOG, labels=["urgent", "routine"]) == []
    assert unmatched_literals("this is not python (", LOG) == []
    assert unmatched_literals("x = chunk.split('nowhere')", None) == []


@settings(max_examples=60, deadline=None)
@given(text=st.text(alphabet="abcXYZ :|\n", min_size=1, max_size=200), data=st.data())
def test_a_literal_the_data_contains_gives_no_hint(text: str, data: st.DataObject) -> None:
    start = data.draw(st.integers(0, len(text) - 1))
    end = data.draw(st.integers(start + 1, len(text)))
    literal = text[start:end]
    code = f"n = sum(1 for line in chunk.splitlines() if {literal!r} in line)\nparts = chunk.split({literal!r})"
    assert unmatched_literals(code, text) == []


@settings(max_examples=60, deadline=None)
@given(word=st.text(alphabet="abcdefgh", min_size=2, max_size=10))
def test_a_literal_swapped_in_case_is_found_under_the_datas_case(word: str) -> None:
    text = f"id 1 || Status: {word.upper()}\nid 2 || Status: other\n"
    (hint,) = unmatched_literals(f"print(chunk.count({word!r}))", text)
    assert f"but {word.upper()!r} is (once)" in hint


def _verifier(tmp_path: Path, docs: list[str]) -> Verifier:
    store = RunStore(tmp_path / "store.sqlite")
    return Verifier(SharedContext(store, docs), docs, trace=Trace(tmp_path / "trace.jsonl"),
                    sandbox_factory=lambda: make_sandbox("local"), judge=False)


async def test_a_whole_corpus_answer_that_ignores_the_data_is_told_what_it_missed(tmp_path: Path) -> None:
    """The benchmark's program, replayed by the verifier: 'Answer: 0' on the real corpus and
    on the emptied one, rejected, and the reason names 'Label: ' as the data writes it."""
    corpus = "".join(f"Date: 2024 || User: {u} || Instance: q{u} || Label: {lab}\n"
                     for u, lab in enumerate(["location", "entity", "location", "human being"]))
    cells = [
        "from collections import Counter\n"
        "counts = Counter(line.split('label: ')[1].split(' ||')[0] for line in context.splitlines() "
        "if 'label: ' in line)\n"
        "answer['content'] = f\"Answer: {counts['location']}\"\n"
        "answer['ready'] = True"
    ]
    fixed = [cells[0].replace("label: ", "Label: ")]

    def answer(value: str, code: list[str]) -> Gist:
        return Gist(kind="partial", text=f"whole: {value}", value=value, check=answer_replay_check(code),
                    provenance=PROV)

    verifier = _verifier(tmp_path, [corpus])
    async with verifier:
        wrong = await verifier.verify(answer("Answer: 0", cells), source=corpus)
        right = await verifier.verify(answer("Answer: 2", fixed), source=corpus)
    assert wrong.status == "rejected" and wrong.stage == "code"
    assert "does not come from the data" in wrong.reason
    assert "'label: ' is not in the data, but 'Label: ' is (4 times)" in wrong.reason
    assert right.status == "admitted", right.reason


async def test_an_empty_partial_is_sent_back_with_the_field_the_lines_spell_otherwise(tmp_path: Path) -> None:
    check = ("from collections import Counter\n"
             "print(dict(Counter(line.split(',')[1] for line in chunk.splitlines() if line.startswith('region'))))")
    verifier = _verifier(tmp_path, [CSV])
    gist = Gist(kind="partial", text="rows per region: {}", value={}, check=check, provenance=PROV)
    async with verifier:
        verdict = await verifier.verify(gist, source=CSV, check_vars={"chunk": CSV}, reject_empty=True)
    assert verdict.status == "rejected" and verdict.stage == "empty"
    assert "'region' is not in the data, but 'Region' is (once)" in verdict.reason
    assert "4 non-empty lines" in verdict.reason


def test_a_failed_cell_is_told_what_the_data_says_about_its_error() -> None:
    """Read from the code and the text on the host, never by running the agent's code."""
    header = "id,Region,amount\n"
    rows = CSV[len(header):]
    split = "regions = [row.split('Region=')[1] for row in chunk.splitlines()]"
    assert "'Region=' occurs nowhere in the data" in cell_error_hint(split, "IndexError: list index out of range", CSV)
    some = "amounts = [row.split(',')[2] for row in chunk.splitlines()]"
    hint = cell_error_hint(some, "IndexError: list index out of range", CSV + "total\n")
    assert "1 of the 5 non-empty lines have no ',' (such as 'total')" in hint
    assert "keep only the lines that contain ','" in hint
    key = cell_error_hint("import json\nv = [json.loads(r)['region'] for r in rows]", "KeyError: 'region'", CSV)
    assert "there is no key 'region'" in key and "but 'Region' is (once)" in key
    assert cell_error_hint("x = {}['Region']", "KeyError: 'Region'", CSV) == ""  # the data has it as written
    assert cell_error_hint(some, "NameError: name 'chunk' is not defined", CSV) == ""
    assert cell_error_hint(some, "IndexError: list index out of range", rows) == ""  # every row has ','
