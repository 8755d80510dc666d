"""The verifier against proposals written to lie (issue 13): real kernels, in every isolation
mode this machine offers where the attack is on the kernel itself; ScriptedLM as the judge.

Each test here failed on the verifier before issue 13 (a check patching `sum` or `print`
for every later check, `print(42)` admitted for 42, a proposer's tolerance of 1e9, inf in a
gist, FAILURE and EVIDENCE gists admitted on form, unrelated quotes admitted), except those
marked as kept behaviour: what already held stays tested.
"""

from __future__ import annotations

import asyncio
import json
import pickle
import sys
import time
from pathlib import Path

import pytest
from hypothesis import given
from hypothesis import strategies as st
from pydantic import ValidationError

import fake_e2b
from delm_rlm.classify import ClassificationLog
from delm_rlm.gists import CodeEvidence, Gist, GistKind, GistStatus, Provenance, QuoteEvidence
from delm_rlm.llm.scripted import ScriptedLM
from delm_rlm.state.context import OPEN_QUESTIONS_HEADING, SharedContext
from delm_rlm.state.sqlite import RunStore
from delm_rlm.trace import Trace
from delm_rlm.values import compare_printed, is_nothing, values_equal
from delm_rlm.verify import Verifier
from delm_rlm.verify.code_check import answer_replay_check, check_parts
from delm_rlm.verify.substance import spelled_numbers, unsupported
from sandbox import E2BSandbox, KernelSandbox
from sandbox import isolation as iso

DOCS = [
    "spam: win money now\nham: lunch at noon\nspam: cheap pills\nham: see you\n",
    "ham: the report is attached\nham: meeting moved to Tuesday\n",
]
PROV = Provenance(task_id="t1", agent_id="a1")
CHUNK0 = {"chunk_doc": 0, "chunk_start": 0, "chunk_end": len(DOCS[0])}
SPAM_IN_CHUNK = 'print(sum(1 for line in chunk.splitlines() if line.startswith("spam")))'
MODES = iso.available()


def _verifier(tmp_path: Path, isolation: str = "auto", docs: list[str] = DOCS, **kw) -> tuple[Verifier, RunStore]:
    store = RunStore(tmp_path / "store.sqlite")
    kw.setdefault("sandbox_factory", lambda: KernelSandbox(isolation=isolation))
    kw.setdefault("judge", False)
    return Verifier(SharedContext(store, docs), docs, trace=Trace(tmp_path / "trace.jsonl"), **kw), store


def _partial(text: str, value: object, check: str) -> Gist:
    return Gist(kind="partial", text=text, value=value, check=check, provenance=PROV)


def _count_check(doc: int, word: str) -> str:
    return f"print(sum(1 for line in docs[{doc}].splitlines() if line.startswith({word!r})))"


# -- one check cannot change what another sees ----------------------------------------------

POISON = (
    "import builtins, json, __main__\n"
    "builtins.sum = lambda *a, **k: 42\n"
    "builtins.print = (lambda p: lambda *a, **k: p(42))(builtins.print)\n"
    "json._rt = 42\n"
    "__main__.docs[0] = 'spam: x\\n' * 42\n"
    "print(len(docs))"
)


@pytest.mark.parametrize("isolation", MODES)
async def test_a_check_cannot_change_what_later_checks_see(tmp_path: Path, isolation: str) -> None:
    verifier, store = _verifier(tmp_path, isolation)
    async with verifier:
        poisoned = await verifier.verify(_partial("the corpus has 3 docs", 3, POISON))
        honest = await verifier.verify(_partial("doc 0 has 2 spam lines", 2, _count_check(0, "spam")))
        false = await verifier.verify(_partial("doc 0 has 42 spam lines", 42, _count_check(0, "spam")))
        left = await verifier.verify(
            Gist(kind="fact", text="json._rt is 42", value=42, check="import json\nprint(json._rt)", provenance=PROV)
        )
    assert poisoned.status == "rejected"  # even a rejected check changed the old shared kernel
    assert honest.status == "admitted", honest.reason
    assert false.status == "rejected" and "printed '2'" in false.reason
    assert left.status == "rejected" and "AttributeError" in left.reason
    assert [g.value for g in store.list_gists(status="admitted", kinds="partial")] == [2]


@pytest.mark.parametrize("isolation", MODES)
async def test_a_check_that_kills_the_verifier_kernel_cannot_poison_the_next(tmp_path: Path, isolation: str) -> None:
    """A check rewrites the corpus file the kernel reloads after a restart, plants a module
    in its working directory, and kills the kernel. The next checks see the true corpus."""
    verifier, store = _verifier(tmp_path, isolation)
    async with verifier:
        warm = await verifier.verify(_partial("doc 0 has 2 spam lines", 2, _count_check(0, "spam")))
        sb = verifier.checks.sandbox
        kernel_pid = int((await sb.execute("import os; print(os.getpid())")).stdout)
        workspace = str(sb.workspace)
        poisoned = pickle.dumps(["spam: x\n" * 42, DOCS[1]], protocol=5)
        attack = (
            "import os, signal\n"
            # Where the sandbox already makes the corpus file read-only, the kill still comes.
            f"try:\n    open({workspace!r} + '/.delm/context.pkl', 'wb').write({poisoned!r})\nexcept OSError:\n    pass\n"
            f"open({workspace!r} + '/statistics.py', 'w').write('def mean(*a, **k):\\n    return 42\\n')\n"
            f"os.kill({kernel_pid}, signal.SIGKILL)\n"
            "print(len(docs))"
        )
        killed = await verifier.verify(_partial("the corpus has 9 docs", 9, attack))
        after = await verifier.verify(_partial("doc 0 has 2 spam lines again", 2, _count_check(0, "spam")))
        mean = await verifier.verify(_partial(
            "the mean spam-line length is 18", 18,
            "import statistics\nprint(statistics.mean(len(l) for l in docs[0].splitlines() if l.startswith('spam')))",
        ))
    assert warm.status == "admitted", warm.reason
    assert killed.status == "rejected", killed.reason
    assert after.status == "admitted", after.reason
    assert mean.status == "admitted", mean.reason
    # Either the kill landed (the sandbox was rebuilt) or the sandbox kept the check from
    # signalling its kernel at all (bubblewrap/unshare: the check printed the true count).
    assert verifier.stats.kernel_restarts >= 1 or "printed '2'" in (killed.reason or ""), killed.reason


async def test_checks_are_fresh_interpreters_with_nothing_left_running(tmp_path: Path) -> None:
    """Kept behaviour, now per check: a hanging check is stopped, a crash is contained, and
    no process a check started outlives it (even in a new session)."""
    verifier, _ = _verifier(tmp_path, check_timeout=1.5)
    async with verifier:
        started = time.monotonic()
        hang = await verifier.verify(Gist(kind="fact", text="slow", value=1, check="while True: pass", provenance=PROV))
        hang_s = time.monotonic() - started
        crash = await verifier.verify(Gist(kind="fact", text="crash", value=1, check="import os; os._exit(1)", provenance=PROV))
        daemons = (  # detached the classic way: fork, new session, fork again, parent exits
            "import os, subprocess, time\n"
            "subprocess.Popen(['sleep', '300'], start_new_session=True)\n"
            "for _ in range(5):\n"
            "    if os.fork() == 0:\n"
            "        os.setsid()\n"
            "        if os.fork() == 0:\n"
            "            time.sleep(300)\n"
            "        os._exit(0)\n"
        )
        spawn = await verifier.verify(_partial("doc 0 has 2 spam lines", 2, daemons + _count_check(0, "spam")))
        listing = await verifier.checks.sandbox.execute(
            "import _delm_checks as c\nif c.REAPING[0] is not None: c.REAPING[0].join()\nprint(sorted(c.children()))"
        )
        after = await verifier.verify(_partial("doc 1 has 0 spam lines", 0, _count_check(1, "spam")))
    assert hang.status == "rejected" and "timed out after 1.5 s" in hang.reason and hang_s < 10
    assert crash.status == "rejected" and "exit code 1" in crash.reason
    assert spawn.status == "admitted", spawn.reason
    assert listing.stdout.strip() == "[]", listing
    assert after.status == "admitted", after.reason


@pytest.mark.parametrize("isolation", MODES)
async def test_a_check_cannot_reach_into_the_verifier_process(tmp_path: Path, isolation: str) -> None:
    """The parent is not dumpable and the check's interpreter holds no capabilities (root
    inside a user namespace, or a root host, would otherwise open the parent's memory)."""
    verifier, _ = _verifier(tmp_path, isolation)
    async with verifier:
        mem = await verifier.verify(_partial("doc 0 has 2 spam lines", 2, (
            "import os\nopen(f'/proc/{os.getppid()}/mem', 'rb')\n" + _count_check(0, "spam")
        )))
    assert mem.status == "rejected" and "PermissionError" in mem.reason


async def test_500_mb_of_output_is_cut_short(tmp_path: Path) -> None:
    """Kept behaviour: output is bounded, quickly."""
    verifier, _ = _verifier(tmp_path, check_timeout=20)
    async with verifier:
        started = time.monotonic()
        flood = await verifier.verify(Gist(kind="fact", text="flood", value=1, provenance=PROV,
                                           check="for _ in range(500):\n    print('x' * 1_000_000)"))
        elapsed = time.monotonic() - started
    assert flood.status == "rejected" and "printed more than" in flood.reason
    assert elapsed < 15 and len(flood.output or "") <= 2000


# -- a check must print exactly the value, from the data ------------------------------------


async def test_a_check_must_read_the_data_and_print_only_the_value(tmp_path: Path) -> None:
    verifier, store = _verifier(tmp_path)
    typed = answer_replay_check(["n = len(chunk.splitlines())", 'answer["content"] = "42"', 'answer["ready"] = True'])
    computed = answer_replay_check([
        "print(chunk[:40])",  # an agent looks at its data: not part of the value
        "display(chunk[:10])",  # IPython's, in a notebook-trained model's cells
        'n = sum(1 for line in chunk.splitlines() if line.startswith("spam"))',
        "print(n)", 'answer["content"] = str(n)', 'answer["ready"] = True',
    ])
    most_common = (
        "from collections import Counter\n"
        "print(Counter(line.split(':')[0] for line in chunk.splitlines()).most_common(1)[0][0])"
    )
    async with verifier:
        constant = await verifier.verify(_partial("chunk has 42 spam lines", 42, "print(42)"), check_vars=CHUNK0)
        progress = await verifier.verify(_partial("chunk is 43", 43, "print(len(chunk)); print(43)"), check_vars=CHUNK0)
        typed_in = await verifier.verify(_partial("t1: 42", 42, typed), check_vars=CHUNK0)
        replayed = await verifier.verify(_partial("t1: 2", 2, computed), check_vars=CHUNK0)
        honest = await verifier.verify(_partial("chunk has 2 spam lines", 2, SPAM_IN_CHUNK), check_vars=CHUNK0)
        zero = await verifier.verify(_partial(
            "chunk has 0 eggs lines", 0, SPAM_IN_CHUNK.replace('"spam"', '"eggs"')), check_vars=CHUNK0)
        label = await verifier.verify(_partial("most common is spam", "spam", most_common), check_vars=CHUNK0)
    assert constant.status == "rejected" and "does not come from the data" in constant.reason
    assert constant.failure_gist_id is not None  # recorded: no agent repeats it
    assert progress.status == "rejected" and "print exactly the value" in progress.reason
    assert typed_in.status == "rejected" and "does not come from the data" in typed_in.reason
    for ok in (replayed, honest, zero, label):
        assert ok.status == "admitted", ok.reason
    assert store.get_gist(replayed.admitted_id).evidence[-1].output.strip() == "2"


def test_an_answer_replay_is_recognised_only_in_the_teams_exact_shape() -> None:
    assert check_parts(answer_replay_check(["x = 1", "print(x)"])) == [
        'answer = {"content": None, "ready": False}', "x = 1\nprint(x)", 'print(answer["content"])']
    assert check_parts("print(1)\nprint(2)") == ["print(1)\nprint(2)"]
    assert compare_printed(5, "counting...\n5")[0] is False
    assert is_nothing({"spam": 0}) and is_nothing([]) and is_nothing(0.0) and not is_nothing({"spam": 1})


# -- numbers: the verifier's rule, finite only ------------------------------------------------


async def test_the_tolerance_is_the_verifiers_never_the_proposers(tmp_path: Path) -> None:
    verifier, store = _verifier(tmp_path)
    rounded = 'print(sum(0.1 for line in chunk.splitlines()[:3]))'  # 0.30000000000000004
    async with verifier:
        wide = await verifier.verify(
            Gist(kind="partial", text="chunk has 999 spam lines", value=999, check=SPAM_IN_CHUNK,
                 tolerance=1e9, provenance=PROV), check_vars=CHUNK0)
        float_ok = await verifier.verify(_partial("three tenths", 0.3, rounded), check_vars=CHUNK0)
        int_exact = await verifier.verify(_partial("chunk: 3 lines", 3, 'print(len(chunk.splitlines()) - 0.5)'),
                                          check_vars=CHUNK0)
        infinity = await verifier.verify(_partial("chunk has 999", 999, 'print("Infinity" if chunk else 0)'),
                                         check_vars=CHUNK0)
    assert wide.status == "rejected" and wide.stage == "form" and "tolerance" in wide.reason
    assert float_ok.status == "admitted", float_ok.reason
    assert int_exact.status == "rejected" and "printed '3.5'" in int_exact.reason
    assert infinity.status == "rejected" and "Infinity" in infinity.reason
    assert not values_equal(999, float("inf")) and not values_equal([5], [float("inf")])
    assert compare_printed(999, "Infinity")[0] is False
    assert [g.value for g in store.list_gists(status="admitted", kinds="partial")] == [0.3]


async def test_non_finite_numbers_never_reach_the_store(tmp_path: Path) -> None:
    with pytest.raises(ValidationError, match="finite"):
        Gist(kind="fact", text="x", tolerance=float("inf"))
    with pytest.raises(ValidationError, match="non-finite"):
        Gist(kind="partial", text="x", value={"spam": [1, float("nan")]})
    # A stored tolerance written as null by older versions reads back as none.
    assert Gist.model_validate({"kind": "fact", "text": "x", "tolerance": None}).tolerance == 0.0
    verifier, store = _verifier(tmp_path, sandbox_factory=None)
    bypass_value = Gist.model_construct(
        kind=GistKind.PARTIAL, text="t1: inf", value=float("inf"), check=None, evidence=[], summary=None,
        tolerance=0.0, provenance=PROV, status=GistStatus.PENDING, id=None, note=None, merged_into=None, support=1)
    bypass_tolerance = Gist.model_construct(
        kind=GistKind.PARTIAL, text="t1: 2", value=2, check=SPAM_IN_CHUNK, evidence=[], summary=None,
        tolerance=float("inf"), provenance=PROV, status=GistStatus.PENDING, id=None, note=None, merged_into=None, support=1)
    async with verifier:
        value = await verifier.verify(bypass_value, require_check=False)
        tolerance = await verifier.verify(bypass_tolerance)
    assert value.status == "rejected" and "non-finite" in value.reason
    assert tolerance.status == "rejected" and "tolerance" in tolerance.reason
    assert store.list_gists() == []  # refused before storing
    # A store written before this rule holds such a tolerance as null: it stays readable.
    legacy = RunStore(tmp_path / "legacy.sqlite")
    legacy.add_gist(bypass_tolerance.model_copy(update={"status": GistStatus.ADMITTED}))
    assert [g.tolerance for g in legacy.list_gists()] == [0.0]


# -- who may write which kind -----------------------------------------------------------------


async def test_only_the_verifier_writes_failures_and_evidence_code_is_rerun(tmp_path: Path) -> None:
    verifier, store = _verifier(tmp_path)
    lines = "print(len(docs[0].splitlines()))"
    async with verifier:
        failure = await verifier.verify(Gist(kind="failure", text="counting spam is impossible", provenance=PROV))
        faked = await verifier.verify(Gist(kind="evidence", text="doc 0 has 999 lines", provenance=PROV,
                                           evidence=[CodeEvidence(code=lines, output="999")]))
        rerun = await verifier.verify(Gist(kind="evidence", text="doc 0 line count", provenance=PROV,
                                           evidence=[CodeEvidence(code=lines, output="")]))
        constant = await verifier.verify(Gist(kind="evidence", text="the answer", provenance=PROV,
                                              evidence=[CodeEvidence(code="print('the answer is 999')", output="")]))
    assert failure.status == "rejected" and failure.stage == "form" and "only the verifier" in failure.reason
    assert faked.status == "rejected" and "printed '4'" in faked.reason and "999" in faked.reason
    assert rerun.status == "admitted", rerun.reason
    assert [e.output for e in store.get_gist(rerun.admitted_id).evidence] == ["4\n"]  # the verifier's
    assert constant.status == "rejected" and "does not come from the data" in constant.reason
    failures = store.list_gists(status="admitted", kinds="failure")
    assert failures and all(g.provenance.agent_id == "verifier" for g in failures)


async def test_questions_are_shown_as_open_never_as_verified(tmp_path: Path) -> None:
    verifier, store = _verifier(tmp_path, sandbox_factory=None)
    ev = QuoteEvidence(doc=1, start=0, end=27, quote="ham: the report is attached")
    async with verifier:
        fact = await verifier.verify(Gist(kind="fact", text="The report is attached", evidence=[ev], provenance=PROV))
        question = await verifier.verify(Gist(kind="question", text="Is the answer 999?", provenance=PROV))
        valued = await verifier.verify(Gist(kind="question", text="Is it 999?", value=999, provenance=PROV))
    assert fact.status == "admitted" and question.status == "admitted"
    assert valued.status == "rejected" and "QUESTION claims nothing" in valued.reason
    view = verifier.context.prompt_view(1000).splitlines()
    assert view == [f"[{fact.admitted_id} FACT] The report is attached", OPEN_QUESTIONS_HEADING,
                    f"[{question.admitted_id} QUESTION] Is the answer 999?"]
    assert "not verified" in store.get_gist(question.admitted_id).note
    only_questions = SharedContext(RunStore(tmp_path / "q.sqlite"))
    only_questions.record(Gist(kind="question", text="Which label?"))
    assert only_questions.prompt_view(1000).splitlines()[:2] == ["(no verified gists yet)", OPEN_QUESTIONS_HEADING]


# -- claims without a check -------------------------------------------------------------------


async def test_quotes_must_carry_the_claim_and_values_need_a_check(tmp_path: Path) -> None:
    at = DOCS[0].index("ham: lunch")
    lunch = QuoteEvidence(doc=0, start=at, end=at + 18, quote="ham: lunch at noon")
    meeting_at = DOCS[1].index("meeting")
    meeting = QuoteEvidence(doc=1, start=meeting_at, end=meeting_at + 24, quote="meeting moved to Tuesday")
    verifier, store = _verifier(tmp_path, sandbox_factory=None)
    async with verifier:
        unrelated = await verifier.verify(Gist(kind="fact", text="the answer is 999", evidence=[lunch], provenance=PROV))
        friday = await verifier.verify(Gist(kind="fact", text="The meeting moved to Friday", evidence=[meeting],
                                            provenance=PROV))
        valued = await verifier.verify(Gist(kind="fact", text="doc 0 says lunch is at noon", value=999,
                                            evidence=[lunch], provenance=PROV), require_check=False)
        supported = await verifier.verify(Gist(kind="fact", text="Lunch is at noon", evidence=[lunch], provenance=PROV))
    assert unrelated.status == "rejected" and unrelated.stage == "quotes" and "999" in unrelated.reason
    assert friday.status == "rejected" and "Friday" in friday.reason
    assert valued.status == "rejected" and "no check and no judge" in valued.reason
    assert supported.status == "admitted", supported.reason
    assert [g.text for g in store.list_gists(status="admitted", kinds="fact")] == ["Lunch is at noon"]

    # With a judge, the rule runs first: a gullible judge is never asked about an unrelated quote.
    judge = ScriptedLM(lambda messages, role: "ADMIT: looks fine")
    (tmp_path / "judged").mkdir()
    verifier, store = _verifier(tmp_path / "judged", sandbox_factory=None, judge=True, lm=judge)
    async with verifier:
        judged = await verifier.verify(Gist(kind="fact", text="the answer is 999", evidence=[lunch], provenance=PROV))
    assert judged.status == "rejected" and "verifier" not in judge.usage.by_role


PLEDGE = (
    "Estate Pledge. I hereby subscribe the sum of Five Thousand Dollars.\n\n"
    "On the reverse side is the indorsement: In loving memory this gift shall\nbe known as "
    "the Memorial Fund.\n\nThe court held that the pledge was a binding promise.\n"
)


async def test_a_phrase_the_claim_quotes_is_grounded_in_its_document_or_rejected(tmp_path: Path) -> None:
    """A reader's point quotes a clause from elsewhere in the document than its anchor (the
    issue-15 pledge item: 'In loving memory this gift shall be known as ...' beside an anchor
    on the court's holding). The verifier finds the phrase in the cited document, line break
    and all, and keeps that span as evidence; a phrase the document lacks, or one only an
    uncited document holds, is rejected as before."""
    at = PLEDGE.index("The court held")
    holding = QuoteEvidence(doc=0, start=at, end=at + 53, quote=PLEDGE[at:at + 53])
    docs = [PLEDGE, "Another case: In loving memory of the founders."]
    verifier, store = _verifier(tmp_path, sandbox_factory=None, docs=docs)

    def fact(text: str) -> Gist:
        return Gist(kind="fact", text=text, evidence=[holding], provenance=PROV)

    async with verifier:
        grounded = await verifier.verify(fact(
            "The court held the pledge with 'In loving memory this gift shall be known as the Memorial Fund' binding"))
        invented = await verifier.verify(fact("The court held the pledge 'void for want of consideration' binding"))
        elsewhere = await verifier.verify(fact("The court held the pledge 'In loving memory of the founders' binding"))
    assert grounded.status == "admitted", grounded.reason
    spans = [(e.doc, e.start, e.end) for e in store.get_gist(grounded.admitted_id).evidence if e.type == "quote"]
    start = PLEDGE.index("In loving memory")
    assert (0, start, PLEDGE.index(" Fund") + len(" Fund")) in spans
    assert invented.status == "rejected" and "void for want of consideration" in invented.reason
    assert elsewhere.status == "rejected" and "In loving memory of the founders" in elsewhere.reason


def test_the_substance_rule_reads_amounts_in_words_quotes_with_gaps_and_sentence_openings() -> None:
    """Read on LongBench-v2: a pledge "of Five Thousand Dollars" gisted as $5,000, a phrase
    quoted with "...", and "t1: Jordan ..." where the task label opens the claim."""
    pledge = ["I will pay to the order of the Treasurer the sum of Five Thousand Dollars; to be known as the "
              "Mary Yates Johnston Memorial Fund"]
    assert unsupported("She pledged $5,000 to the Treasurer", pledge) is None
    assert "6,000" in (unsupported("She pledged $6,000 to the Treasurer", pledge) or "")
    assert unsupported("It is the 'Mary Yates ... Memorial Fund'", pledge) is None
    assert "which the claim quotes" in (unsupported("It is the 'Mary Yates ... Memorial Trust'", pledge) or "")
    assert "'Olsen'" in (unsupported("t1: Treasurer Olsen is paid the sum", pledge) or "")
    assert unsupported("t1: Treasurer is paid the sum. Memorial fund named", pledge) is None


def spell(n: int) -> str:
    units = ("zero one two three four five six seven eight nine ten eleven twelve thirteen fourteen fifteen "
             "sixteen seventeen eighteen nineteen").split()
    tens = "twenty thirty forty fifty sixty seventy eighty ninety".split()

    def below_thousand(k: int) -> str:
        words = [f"{units[k // 100]} hundred"] if k >= 100 else []
        k %= 100
        if k >= 20:
            words.append(tens[k // 10 - 2] + (f"-{units[k % 10]}" if k % 10 else ""))
        elif k or not words:
            words.append(units[k])
        return " and ".join(words)

    if n < 1000:
        return below_thousand(n)
    rest = n % 1000
    return f"{below_thousand(n // 1000)} thousand" + (f" {below_thousand(rest)}" if rest else "")


@given(st.integers(min_value=0, max_value=999_999))
def test_a_number_spelled_out_in_the_text_has_its_value(n: int) -> None:
    assert spelled_numbers(f"the sum of {spell(n)} dollars") == {float(n)}


# -- the other backend and the replayed tools ------------------------------------------------


@pytest.fixture
def fake_sdk():
    real = sys.modules.get("e2b_code_interpreter")
    sys.modules["e2b_code_interpreter"] = fake_e2b  # type: ignore[assignment]
    yield
    if real is None:
        sys.modules.pop("e2b_code_interpreter", None)
    else:
        sys.modules["e2b_code_interpreter"] = real


async def test_e2b_checks_fork_too_and_replay_classify_from_the_child(tmp_path: Path, fake_sdk: None) -> None:
    log = ClassificationLog()
    lines = DOCS[0].splitlines()
    log.record(lines, ["spam", "ham"], "", ["spam", "ham", "spam", "ham"])
    classify_check = (
        "from collections import Counter\n"
        "print(dict(Counter(classify(chunk.splitlines(), ['spam', 'ham']))))"
    )
    factories = {
        "kernel": lambda: KernelSandbox(),
        "e2b": lambda: E2BSandbox(api_key="test-key", workspace=str(tmp_path / "e2b-ws"), timeout=30),
    }
    for name, factory in factories.items():
        (tmp_path / name).mkdir()
        verifier, _ = _verifier(tmp_path / name, sandbox_factory=factory, replay_tools={"classify": log.replay})
        async with verifier:
            poisoned = await verifier.verify(_partial("poison", 3, POISON))
            labels = await verifier.verify(_partial("chunk labels", {"spam": 2, "ham": 2}, classify_check),
                                           check_vars=CHUNK0)
            constant = await verifier.verify(_partial("chunk has 42", 42, "print(42)"), check_vars=CHUNK0)
            honest = await verifier.verify(_partial("doc 0 has 2 spam lines", 2, _count_check(0, "spam")))
        assert poisoned.status == "rejected", name
        assert labels.status == "admitted", (name, labels.reason)
        assert constant.status == "rejected" and "does not come from the data" in constant.reason, name
        assert honest.status == "admitted", (name, honest.reason)
