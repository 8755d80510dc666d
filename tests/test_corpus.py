"""Corpus: every input a user can pass to `delm-rlm ask --context` becomes the right shape."""

from __future__ import annotations

import json
from pathlib import Path

import pandas as pd
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from delm_rlm.corpus import Corpus, CorpusError


def test_one_text_file_is_one_text(tmp_path: Path) -> None:
    f = tmp_path / "report.txt"
    f.write_text("line one\nline two\n", encoding="utf-8")
    c = Corpus.from_paths([f])
    assert c.kind == "text"
    assert c.value == "line one\nline two\n"
    assert c.doc(0) == "line one\nline two\n"
    assert c.names == [str(f)]


def test_folder_is_sorted_documents_recursively_skipping_hidden_and_binary(tmp_path: Path) -> None:
    (tmp_path / "b.md").write_text("bee")
    (tmp_path / "a.txt").write_text("ay")
    (tmp_path / "sub").mkdir()
    (tmp_path / "sub" / "c.py").write_text("print('see')")
    (tmp_path / ".git").mkdir()
    (tmp_path / ".git" / "HEAD").write_text("ref: main")
    (tmp_path / "image.png").write_bytes(b"\x89PNG\x00\x00\x01")
    c = Corpus.from_paths([tmp_path])
    assert c.kind == "documents"
    assert c.value == ["ay", "bee", "print('see')"]
    assert [Path(n).name for n in c.names] == ["a.txt", "b.md", "c.py"]
    assert c.name(2).endswith("sub/c.py")


def test_jsonl_uses_text_field_else_first_string_field(tmp_path: Path) -> None:
    f = tmp_path / "docs.jsonl"
    rows = [{"id": 1, "text": "first"}, {"id": 2, "title": "second", "body": "x"}, "third"]
    f.write_text("\n".join(json.dumps(r) for r in rows) + "\n\n")
    c = Corpus.from_paths([f])
    assert c.kind == "documents"
    assert c.value == ["first", "second", "third"]
    assert c.names == [f"{f}:1", f"{f}:2", f"{f}:3"]


def test_csv_and_parquet_are_tables(tmp_path: Path) -> None:
    frame = pd.DataFrame({"user": [1, 2], "text": ["hi", "yo"]})
    frame.to_csv(tmp_path / "t.csv", index=False)
    frame.to_parquet(tmp_path / "t.parquet")
    for name in ("t.csv", "t.parquet"):
        c = Corpus.from_paths([tmp_path / name])
        assert c.kind == "table"
        pd.testing.assert_frame_equal(c.value.reset_index(drop=True), frame)
        assert c.doc(1) == "yo"  # a `text` column is the document, as in the REPL
    both = Corpus.from_paths([tmp_path / "t.csv", tmp_path / "t.parquet"])
    assert len(both) == 4 and set(both.value["source"]) == {str(tmp_path / "t.csv"), str(tmp_path / "t.parquet")}


def test_in_memory_values() -> None:
    assert Corpus.coerce("some text").kind == "text"
    docs = Corpus.coerce(["a", "b"])
    assert docs.kind == "documents" and docs.doc(1) == "b" and docs.names == ["doc 0", "doc 1"]
    table = Corpus.coerce(pd.DataFrame({"x": [1], "y": ["a"]}))
    assert table.kind == "table" and table.docs == ["x: 1 | y: a"] and table.doc(0) == "x: 1 | y: a"
    assert Corpus.coerce(docs) is docs


@pytest.mark.parametrize(
    ("make", "needle"),
    [
        (lambda d: d / "missing.txt", "no such file or folder"),
        (lambda d: _write(d / "paper.pdf", b"%PDF-1.4\x00"), "pdftotext"),
        (lambda d: _write(d / "blob.bin", b"\x00\x01\x02"), "unsupported file type"),
        (lambda d: _write(d / "bad.jsonl", b'{"text": "ok"}\n{oops\n'), "line 2 is not valid JSON"),
        (lambda d: _write(d / "nums.jsonl", b'{"n": 1}\n'), 'give each line a "text" field'),
    ],
)
def test_bad_inputs_say_what_to_do(tmp_path: Path, make, needle: str) -> None:
    with pytest.raises(CorpusError, match=needle):
        Corpus.from_paths([make(tmp_path)])


def test_mixing_tables_and_documents_is_refused(tmp_path: Path) -> None:
    pd.DataFrame({"x": [1]}).to_csv(tmp_path / "t.csv", index=False)
    (tmp_path / "n.txt").write_text("note")
    with pytest.raises(CorpusError, match="cannot mix tables"):
        Corpus.from_paths([tmp_path / "t.csv", tmp_path / "n.txt"])


def test_empty_inputs_are_refused(tmp_path: Path) -> None:
    with pytest.raises(CorpusError, match="no context given"):
        Corpus.from_paths([])
    (tmp_path / ".hidden").write_text("x")
    with pytest.raises(CorpusError, match="no text-like files"):
        Corpus.from_paths([tmp_path])
    with pytest.raises(CorpusError, match="not a str"):
        Corpus([1, 2])  # type: ignore[list-item]


def test_doc_lookup_bounds() -> None:
    c = Corpus(["a", "b"])
    with pytest.raises(CorpusError, match="documents 0..1"):
        c.doc(2)


def test_describe_shows_shape_and_samples_not_the_whole_text(tmp_path: Path) -> None:
    (tmp_path / "big.txt").write_text("needle header\n" + "filler " * 5000)
    (tmp_path / "small.txt").write_text("short")
    c = Corpus.from_paths([tmp_path])
    d = c.describe()
    assert "2 documents" in d and "big.txt" in d and "needle header" in d and str(tmp_path) in d
    assert len(d) < 1200
    t = Corpus(pd.DataFrame({"label": ["a", "b"], "n": [1, 2]})).describe()
    assert "label" in t and "2 rows" in t.replace(",", "")
    assert "3 lines" in Corpus("x\ny\nz").describe()


@settings(max_examples=30, deadline=None)
@given(st.lists(st.text(alphabet=st.characters(blacklist_categories=("Cs",)), max_size=40), min_size=1, max_size=8))
def test_jsonl_round_trip_keeps_every_document(tmp_path_factory: pytest.TempPathFactory, docs: list[str]) -> None:
    f = tmp_path_factory.mktemp("rt") / "d.jsonl"
    f.write_text("".join(json.dumps({"text": d}) + "\n" for d in docs), encoding="utf-8")
    c = Corpus.from_paths([f])
    assert c.docs == docs
    assert [c.doc(i) for i in range(len(c))] == docs


def _write(path: Path, data: bytes) -> Path:
    path.write_bytes(data)
    return path


async def test_docs_are_numbered_as_in_the_repl(tmp_path: Path) -> None:
    """Quote evidence cites documents by index: Corpus.doc(i) must be the REPL's docs[i]."""
    from sandbox import KernelSandbox

    table = pd.DataFrame({"user": [7, 8], "note": ["a | b", "c"]})
    cases = [Corpus("one\ntext"), Corpus(["x", "y z"]), Corpus(table), Corpus(table.assign(text=["t0", "t1"]))]
    async with KernelSandbox() as sb:
        for corpus in cases:
            await sb.load_context(corpus.value)
            assert await sb.get_variable("docs") == corpus.docs == [corpus.doc(i) for i in range(len(corpus))]


async def test_text_is_the_repl_context_for_every_shape() -> None:
    """`Corpus.text` (what `direct` reads) is exactly the REPL's `context` (what agents read)."""
    from sandbox import KernelSandbox

    values = [
        "alpha beta\ngamma\n",
        ["doc one", "doc two\nline", ""],
        pd.DataFrame({"label": ["spam", "ham"], "n": [1, 2]}),
    ]
    async with KernelSandbox(timeout=60) as sb:
        for value in values:
            corpus = Corpus(value)
            await sb.load_context(corpus.value)
            assert await sb.get_variable("context") == corpus.text
    assert Corpus(["a", "b"]).text == "a\n\nb"
    assert Corpus(pd.DataFrame({"x": [1]})).text == "x\n1\n"
