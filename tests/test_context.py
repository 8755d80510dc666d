"""SharedContext: prompt view (order, budget), unfold levels, verifier writes, duplicates."""

from __future__ import annotations

from pathlib import Path

import pytest

from hypothesis import given, settings
from hypothesis import strategies as st

from delm_rlm.state.context import SharedContext, estimate_tokens, values_equal
from delm_rlm.gists import (
    CodeEvidence,
    Gist,
    GistKind,
    GistStatus,
    Provenance,
    QuoteEvidence,
    normalize_text,
    text_numbers,
)
from delm_rlm.state.sqlite import NotFound, RunStore

DOCS = [
    "2024-01-03 | user 17 | label: spam\n2024-01-04 | user 18 | label: ham\n",
    "Quarterly revenue was 4.2 million. Costs were 3.1 million.",
]


@pytest.fixture
def ctx(tmp_path: Path) -> SharedContext:
    return SharedContext(RunStore(tmp_path / "run.sqlite"), DOCS)


def _admitted(ctx: SharedContext, kind: str, text: str, **kw: object) -> Gist:
    return ctx.record(Gist(kind=kind, text=text, **kw))


def test_prompt_view_orders_kinds_by_value_with_stable_ids(ctx: SharedContext) -> None:
    _admitted(ctx, "question", "Are labels case-sensitive?")
    _admitted(ctx, "fact", "doc 0 has 2 lines")
    _admitted(ctx, "evidence", "doc 1 states revenue")
    _admitted(ctx, "partial", "doc 0: 1 spam line", value=1)
    _admitted(ctx, "constraint", "Count only lines dated 2024")
    _admitted(ctx, "failure", "regex on 'label:' missed upper case")
    pending = ctx.add_pending(Gist(kind="fact", text="never shown: still pending"))
    view = ctx.prompt_view(1000)
    assert view.splitlines() == [
        "[g5 CONSTRAINT] Count only lines dated 2024",
        "[g2 FACT] doc 0 has 2 lines",
        "[g4 PARTIAL] doc 0: 1 spam line",
        "[g6 FAILURE] regex on 'label:' missed upper case",
        "[g3 EVIDENCE] doc 1 states revenue",
        # Questions are asked, not verified: apart, under their own heading (issue 13).
        "Open questions (asked by agents, not verified; not answers):",
        "[g1 QUESTION] Are labels case-sensitive?",
    ]
    assert pending.id not in view
    assert ctx.prompt_view(1000) == view  # stable


def test_prompt_view_respects_budget_and_says_what_was_left_out(ctx: SharedContext) -> None:
    for i in range(20):
        _admitted(ctx, "partial", f"chunk {i} has {i * 3} matching lines", value=i * 3)
    _admitted(ctx, "fact", "all chunks use the same format")
    full = ctx.prompt_view(10_000)
    assert len(full.splitlines()) == 21 and "left out" not in full
    for budget in (40, 100, 200):
        view = ctx.prompt_view(budget)
        lines = view.splitlines()
        assert estimate_tokens(view) <= budget
        assert lines[0] == "[g21 FACT] all chunks use the same format"  # highest value first
        shown = len(lines) - 1
        assert lines[-1].startswith(f"({21 - shown} more verified gists left out for space: ")
        assert f"{21 - shown} PARTIAL" in lines[-1] and "unfold(id, level)" in lines[-1]
        assert lines[1:-1] == full.splitlines()[1:shown]  # a prefix of the full order
    tiny = ctx.prompt_view(0)
    assert tiny.startswith("(21 more verified gists left out")  # never silently empty
    with pytest.raises(ValueError, match="token_budget"):
        ctx.prompt_view(-1)


def test_prompt_view_prefers_better_supported_gists_within_a_kind(ctx: SharedContext) -> None:
    _admitted(ctx, "fact", "first fact")
    strong = _admitted(ctx, "fact", "second fact, confirmed twice")
    ctx.merge(ctx.add_pending(Gist(kind="fact", text="second fact confirmed twice")).id, strong.id)
    assert ctx.prompt_view(1000).splitlines()[0] == "[g2 FACT] second fact, confirmed twice"


def test_empty_context_view(ctx: SharedContext) -> None:
    assert ctx.prompt_view(100) == "(no verified gists yet)"


def test_unfold_levels(ctx: SharedContext) -> None:
    g = _admitted(
        ctx, "fact", "Revenue was 4.2 million",
        summary="Doc 1 reports quarterly revenue of 4.2 million and costs of 3.1 million.",
        evidence=[QuoteEvidence(doc=1, start=0, end=33, quote="Quarterly revenue  was 4.2 million"),
                  CodeEvidence(code="print(docs[1].count('million'))", output="2")],
        check="print(4.2)", value=4.2, tolerance=0.01,
    )
    assert ctx.unfold(g.id, 0) == "[g1 FACT] Revenue was 4.2 million"
    assert ctx.unfold(g.id, 1).endswith("summary: Doc 1 reports quarterly revenue of 4.2 million and costs of 3.1 million.")
    raw = ctx.unfold(g.id, 2)
    assert "evidence 1: quote from doc 1 [0:33]" in raw
    assert "stored: 'Quarterly revenue  was 4.2 million'" in raw
    assert "source: 'Quarterly revenue was 4.2 million.'" not in raw  # exact span, not more
    assert "source: 'Quarterly revenue was 4.2 million'" in raw
    assert "DIFFERS" not in raw  # whitespace-normalized equal
    assert "evidence 2: code\n  print(docs[1].count('million'))\n  output:\n    2" in raw
    assert "check code:\n  print(4.2)" in raw and "claimed value: 4.2 (tolerance 0.01)" in raw


def test_unfold_summary_fallback_and_bad_pointers(ctx: SharedContext) -> None:
    g = ctx.add_pending(Gist(kind="evidence", text="user 18 is ham", evidence=[
        QuoteEvidence(doc=0, start=0, end=10, quote="2025-12-31"),
        QuoteEvidence(doc=5, start=0, end=3, quote="abc"),
        QuoteEvidence(doc=1, start=50, end=500, quote="past the end"),
    ]))
    assert "(status: pending)" in ctx.unfold(g.id, 0)
    assert "summary: (none; the text above is all there is)" in ctx.unfold(g.id, 1)
    raw = ctx.unfold(g.id, 2)
    assert "source: '2024-01-03'  (DIFFERS from the stored quote)" in raw
    assert "doc 5 does not exist; the corpus has 2 docs" in raw
    assert "past the end of doc 1" in raw
    with pytest.raises(ValueError, match="unfold level must be 0"):
        ctx.unfold(g.id, 3)
    with pytest.raises(NotFound):
        ctx.unfold("g99", 0)
    no_corpus = SharedContext(ctx.store, None)
    assert "corpus not available" in no_corpus.unfold(g.id, 2)


def test_verifier_operations(ctx: SharedContext) -> None:
    p = ctx.add_pending(Gist(kind="partial", text="doc 0 has 1 spam", value=1, status="admitted",
                             provenance=Provenance(task_id="t1", agent_id="a1", model="m")))
    assert p.status == GistStatus.PENDING and p.id == "g1"  # proposers cannot self-admit
    admitted = ctx.admit(p.id, "check printed 1", evidence=[CodeEvidence(code="print(1)", output="1\n")])
    assert admitted.status == GistStatus.ADMITTED and admitted.note == "check printed 1"
    assert admitted.evidence[-1].output == "1\n" and admitted.provenance.agent_id == "a1"
    with pytest.raises(ValueError, match="already admitted"):
        ctx.admit(p.id)
    bad = ctx.add_pending(Gist(kind="fact", text="doc 0 has 5 spam", value=5))
    rejected, failure = ctx.reject(
        bad.id, "check printed 1, not 5",
        failure=Gist(kind="failure", text="counting 'spam' substrings overcounts; count labels"),
    )
    assert rejected.status == GistStatus.REJECTED and rejected.note == "check printed 1, not 5"
    assert failure is not None and failure.status == GistStatus.ADMITTED and failure.id == "g3"
    with pytest.raises(ValueError, match="needs a note"):
        ctx.reject(ctx.add_pending(Gist(kind="fact", text="x")).id, " ")
    with pytest.raises(ValueError, match="must be a FAILURE gist"):
        ctx.reject("g4", "no", failure=Gist(kind="fact", text="x"))
    with pytest.raises(ValueError, match="only merge into an ADMITTED"):
        ctx.merge("g4", bad.id)
    target = ctx.merge("g4", p.id)
    assert target.support == 2
    merged = ctx.store.get_gist("g4")
    assert merged.status == GistStatus.MERGED and merged.merged_into == p.id
    assert ctx.unfold("g4", 0).endswith("(status: merged, merged into g1)")


def test_find_duplicate(ctx: SharedContext) -> None:
    base = _admitted(ctx, "partial", "Chunk 3 contains 12 lines labelled spam, counted by code over the label column", value=12)
    _admitted(ctx, "fact", "the corpus has 4 documents", value=4)
    ctx.add_pending(Gist(kind="partial", text="chunk 3 has 99 lines", value=99))  # pending: ignored

    def dup(text: str, kind: str = "partial", value: object = 12, tol: float = 0.0) -> str | None:
        found = ctx.find_duplicate(Gist(kind=kind, text=text, value=value, tolerance=tol))
        return found.id if found else None

    assert dup("chunk 3 contains 12 lines labelled SPAM, counted by code over the label column.") == base.id
    assert dup("Chunk 3 contains 12 lines labelled spam, counted by code over the label column too") == base.id  # near
    assert dup("Chunk 4 contains 12 lines labelled spam, counted by code over the label column") is None  # other chunk
    assert dup("Chunk 3 contains 12 lines labelled spam", ) is None  # too different
    assert dup("Chunk 3 contains 12 lines labelled spam, counted by code over the label column", value=13) is None
    assert dup("Chunk 3 contains 12 lines labelled spam, counted by code over the label column", value=12.4, tol=0.5) == base.id
    assert dup("Chunk 3 contains 12 lines labelled spam, counted by code over the label column", kind="fact") is None
    assert dup("The corpus has 4 documents", kind="fact", value=4) == "g2"
    assert dup("chunk 3 has 99 lines", value=99) is None


_WORDS = st.sampled_from(["chunk", "Chunk", "3", "4", "12", "spam", "lines", "labelled", "the", "has", "doc", "3.5"])
_GISTS = st.lists(
    st.tuples(
        st.sampled_from(["partial", "fact"]),
        st.lists(_WORDS, min_size=1, max_size=8).map(" ".join),
        st.sampled_from([None, 3, 12, 12.0]),
        st.booleans(),  # admitted (else left pending)
    ),
    max_size=12,
)


@settings(max_examples=60, deadline=None)
@given(stored=_GISTS, probe=_GISTS.filter(bool))
def test_find_duplicate_by_index_equals_a_scan_of_every_admitted_gist(tmp_path_factory, stored, probe) -> None:
    """The indexed lookup (kind + numbers in the text) finds exactly what comparing the
    probe with every admitted gist would: the index only skips gists that cannot match."""
    ctx = SharedContext(RunStore(tmp_path_factory.mktemp("dup") / "run.sqlite"))
    for kind, text, value, admitted in stored:
        gist = Gist(kind=kind, text=text, value=value)
        ctx.record(gist) if admitted else ctx.add_pending(gist)

    def scan(gist: Gist) -> str | None:
        norm = normalize_text(gist.text)
        for other in ctx.store.list_gists(status="admitted", kinds=gist.kind):
            if not values_equal(gist.value, other.value):
                continue
            other_norm = normalize_text(other.text)
            a, b = set(norm.split()), set(other_norm.split())
            near = len(a & b) / len(a | b) >= 0.9 if a | b else True
            if other_norm == norm or (near and text_numbers(other.text) == text_numbers(gist.text)):
                return other.id
        return None

    for kind, text, value, _ in probe:
        gist = Gist(kind=kind, text=text, value=value)
        found = ctx.find_duplicate(gist)
        assert (found.id if found else None) == scan(gist)


def test_values_equal() -> None:
    assert values_equal(3, 3.0) and values_equal(3, 3.4, 0.5) and not values_equal(3, 3.6, 0.5)
    assert not values_equal(True, 1) and values_equal(None, None)
    assert values_equal({"a": [1, 2]}, {"a": [1, 2.0]}) and not values_equal([1], [1, 2])
    assert not values_equal("12", 12)


def test_gist_label_is_one_line() -> None:
    g = Gist(id="g7", kind=GistKind.CONSTRAINT, text="dates are\nDD/MM")
    assert g.label() == "[g7 CONSTRAINT] dates are DD/MM"
