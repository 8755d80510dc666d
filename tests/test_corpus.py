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


# ---- records reach the agents whole (issue 17) ---------------------------------------------------


def _log_records(n: int = 300) -> list[dict]:
    return [{"ts": f"2025-01-01T00:00:{i:03d}", "level": "ERROR" if i % 5 == 0 else "INFO",
             "service": ["api", "db"][i % 2], "msg": "upstream timeout" if (7 * i) % n < 134 else "served"} for i in range(n)]


def test_jsonl_log_records_are_a_table_with_every_field(tmp_path: Path) -> None:
    records = _log_records()
    f = tmp_path / "logs.jsonl"
    f.write_text("".join(json.dumps(r) + "\n" for r in records))
    c = Corpus.from_paths([f])
    assert c.kind == "table"
    assert list(c.value.columns) == ["ts", "level", "service", "msg"]
    pd.testing.assert_frame_equal(c.value, pd.DataFrame(records))  # what pandas.read_json(lines=True) gives
    # The question of the issue: every record's message is there to count (not just its timestamp).
    true_count = sum("timeout" in r["msg"] for r in records)
    assert true_count == 134 and sum("timeout" in d for d in c.docs) == true_count
    assert c.docs[0] == "ts: 2025-01-01T00:00:000 | level: ERROR | service: api | msg: upstream timeout"
    assert any("300 records read as a table with columns ts, level, service, msg" in n for n in c.notes)


def test_records_with_one_long_text_field_are_documents_holding_every_field(tmp_path: Path) -> None:
    body = "The reviewer liked the battery but not the screen. " * 8
    records = [{"id": i, "title": f"review {i}", "stars": i % 5, "text": body} for i in range(3)]
    f = tmp_path / "reviews.jsonl"
    f.write_text("\n".join(json.dumps(r) for r in records))
    c = Corpus.from_paths([f])
    assert c.kind == "documents"
    assert c.docs[1] == f"id: 1\ntitle: review 1\nstars: 1\ntext: {body}"
    assert c.names == [f"{f}:1", f"{f}:2", f"{f}:3"]


def test_what_is_left_out_is_said(tmp_path: Path, caplog: pytest.LogCaptureFixture) -> None:
    f = tmp_path / "mixed.jsonl"
    f.write_text('{"id": 1, "text": "first"}\n{"id": 2, "title": "second", "body": "x"}\n"third"\n')
    with caplog.at_level("WARNING", logger="delm_rlm"):
        c = Corpus.from_paths([f])
    assert c.value == ["first", "second", "third"]
    warning = next(r.getMessage() for r in caplog.records if r.levelname == "WARNING")
    assert "'id' (2x)" in warning and "'body' (1x)" in warning and "left out" in warning
    assert warning in c.notes
    # A folder: a binary file is skipped with a word, and bytes that are not UTF-8 are named.
    folder = tmp_path / "notes"
    folder.mkdir()
    (folder / "a.txt").write_text("apple")
    (folder / "b.txt").write_bytes(b"x" * 9000 + b" caf\xe9")  # valid UTF-8 where the type is sniffed, not after
    (folder / "logo.png").write_bytes(b"\x89PNG\x00\x00")
    caplog.clear()
    with caplog.at_level("WARNING", logger="delm_rlm"):
        c = Corpus.from_paths([folder])
    messages = [r.getMessage() for r in caplog.records]
    assert any("skipped 1 file(s) that are not text: logo.png" in m for m in messages)
    assert any("b.txt: 1 byte sequence(s) are not UTF-8" in m for m in messages)
    assert c.docs == ["apple", "x" * 9000 + " caf\ufffd"]


def test_records_beside_text_files_become_documents(tmp_path: Path) -> None:
    (tmp_path / "readme.txt").write_text("the service logs")
    (tmp_path / "logs.jsonl").write_text("".join(json.dumps(r) + "\n" for r in _log_records(2)))
    c = Corpus.from_paths([tmp_path])
    assert c.kind == "documents"
    assert c.docs[0] == "ts: 2025-01-01T00:00:000\nlevel: ERROR\nservice: api\nmsg: upstream timeout"
    assert c.docs[-1] == "the service logs" and len(c) == 3


def test_saved_corpus_round_trips_with_or_without_pyarrow(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    table = pd.DataFrame({"n": [1, 2], "label": ["spam", "ham"], "x": [0.5, None]})
    for corpus in (Corpus("one text"), Corpus(["a", "b"], names=["x.txt", "y.txt"]), Corpus(table, notes=["n1"])):
        folder = tmp_path / corpus.kind
        folder.mkdir()
        corpus.save(folder)
        back = Corpus.load(folder)
        assert (back.kind, back.names, back.notes) == (corpus.kind, corpus.names, corpus.notes)
        assert back.docs == corpus.docs
    assert (tmp_path / "table" / "corpus.parquet").is_file()

    def no_pyarrow(*args: object, **kwargs: object) -> None:
        raise ImportError("Unable to find a usable engine; tried using: 'pyarrow'")

    monkeypatch.setattr(pd.DataFrame, "to_parquet", no_pyarrow)
    folder = tmp_path / "plain"
    folder.mkdir()
    Corpus(table).save(folder)
    assert (folder / "corpus.table.json").is_file() and not (folder / "corpus.parquet").exists()
    pd.testing.assert_frame_equal(Corpus.load(folder).value, table)


def test_numbers_in_a_row_render_as_in_the_repl() -> None:
    table = pd.DataFrame({"n": [1, 2], "x": [0.5, 1.5]})  # a float row would make n 1.0 if read by .iloc[i]
    c = Corpus(table)
    assert c.doc(0) == c.docs[0] == "n: 1 | x: 0.5"
