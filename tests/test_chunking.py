"""The team's split: small documents and rows packed up to the chunk size, a task cap, chunks
of a table keeping every column, and the REPL's `chunk` equal to `Chunk.text` for every kind
of chunk (the existing one-chunk-per-document rules are in tests/test_team.py)."""

from __future__ import annotations

import logging
from pathlib import Path
from typing import Any

import pandas as pd
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from delm_rlm.chunking import (
    DEFAULT_MAX_TASKS,
    Chunk,
    split_corpus,
    task_label,
    team_split,
    whole_corpus_setup,
)
from delm_rlm.corpus import Corpus
from sandbox.corpus import encode, loader_code


def log_csv(path: Path, rows: int = 300) -> Path:
    """A 300-row log table of about 13 KB, the size of the file in issue 17."""
    services = ["api", "db", "auth", "web"]
    frame = pd.DataFrame({
        "ts": [f"2025-01-01T00:{i // 60:02d}:{i % 60:02d}" for i in range(rows)],
        "level": ["ERROR" if i % 7 == 0 else "INFO" for i in range(rows)],
        "service": [services[i % 4] for i in range(rows)],
        "msg": ["request timeout after 30s" if i % 3 == 0 else "request served" for i in range(rows)],
    })
    frame.to_csv(path, index=False)
    return path


def repl_namespace(corpus: Corpus, tmp_path: Path) -> dict[str, Any]:
    """`context`, `docs` and `df` exactly as a sandbox defines them (its own loader code)."""
    encoded = encode(corpus.value)
    target = tmp_path / encoded.filename
    target.write_bytes(encoded.data)
    namespace: dict[str, Any] = {}
    exec(loader_code(encoded.kind, str(target)), namespace)  # noqa: S102 (our own loader)
    return namespace


def test_a_300_row_csv_is_at_most_three_tasks_with_every_row_and_column(tmp_path: Path) -> None:
    csv = log_csv(tmp_path / "logs.csv")
    assert 11_000 < csv.stat().st_size < 15_000
    corpus = Corpus.from_paths([csv])
    chunks = team_split(corpus.docs, table=corpus.table)
    assert 1 <= len(chunks) <= 3
    assert all(c.rows for c in chunks)
    covered = [i for c in chunks for i in c.documents]
    assert covered == list(range(300))  # every row once, in order
    for c in chunks:
        lines = c.text(corpus.docs, corpus.table).splitlines()
        assert len(lines) == len(c.documents)
        assert all(line.startswith("ts: ") and " | level: " in line and " | service: " in line and " | msg: " in line
                   for line in lines)
    # One row per task, as before, only when asked for.
    assert len(split_corpus(corpus.docs, table=corpus.table, by="documents")) == 300


def test_a_table_with_a_text_column_keeps_its_other_columns_in_the_chunk(tmp_path: Path) -> None:
    frame = pd.DataFrame({"user": ["ann", "bob", "cy"], "text": ["hello", "timeout again", "bye"]})
    corpus = Corpus(frame)
    assert corpus.docs == ["hello", "timeout again", "bye"]  # the REPL's docs: the text column
    (chunk,) = team_split(corpus.docs, table=corpus.table)
    assert chunk.text(corpus.docs, corpus.table) == "user: ann | text: hello\nuser: bob | text: timeout again\nuser: cy | text: bye"


def test_the_repl_chunk_is_chunk_text_for_every_kind_of_chunk(tmp_path: Path) -> None:
    table = pd.DataFrame({"n": [1, 2, 3, 4], "x": [0.5, 1.5, 2.5, 3.5], "label": ["a", "b", "a", "c"]})
    cases: list[tuple[Corpus, list[Chunk]]] = []
    table_corpus = Corpus(table)
    cases.append((table_corpus, split_corpus(table_corpus.docs, table=table, size=30)))
    docs = Corpus(["a\nb\n", "c", "d" * 50 + "\n" + "e" * 10, "", "f\n"])
    cases.append((docs, split_corpus(docs.docs, size=12, by="pack")))
    cases.append((docs, split_corpus(docs.docs, size=12)))
    text = Corpus("one\ntwo\nthree\n")
    cases.append((text, split_corpus(text.docs, size=5)))
    kinds = set()
    for corpus, chunks in cases:
        namespace = repl_namespace(corpus, tmp_path)
        for c in chunks:
            kinds.add("rows" if c.rows else ("packed" if c.last_doc != c.doc else "slice"))
            scope = dict(namespace)
            exec(c.repl_setup(), scope)  # noqa: S102
            assert scope["chunk"] == c.text(corpus.docs, corpus.table), c
            assert scope["chunk_docs"] == list(c.documents)
            if c.rows:
                pd.testing.assert_frame_equal(scope["chunk_df"], table.iloc[c.doc : c.last_doc + 1])
            else:
                assert scope["chunk_df"] is None  # never a previous task's rows
        scope = dict(namespace)
        exec(whole_corpus_setup(), scope)  # noqa: S102
        assert scope["chunk"] == namespace["context"] and scope["chunk_df"] is None
    assert kinds == {"rows", "packed", "slice"}


def test_pack_joins_small_documents_up_to_the_size() -> None:
    docs = ["aa\n", "bbb", "c" * 30, "dd", "", "e"]
    chunks = split_corpus(docs, size=10, by="pack")
    assert [(c.doc, c.last_doc) for c in chunks] == [(0, 1), (2, 2), (2, 2), (2, 2), (3, 5)]
    assert chunks[0].text(docs) == "aa\n\n\nbbb"
    assert chunks[-1].text(docs) == "dd\n\n\n\ne"  # the empty document 4 is between, as in `context`
    assert all(len(c.text(docs)) <= 10 for c in chunks)
    assert "".join(c.text(docs) for c in chunks if c.doc == 2) == docs[2]


def test_over_the_task_cap_chunks_grow_to_fit_and_say_so(caplog: pytest.LogCaptureFixture) -> None:
    docs = [f"note {i}: the server said timeout\n" for i in range(300)]
    assert len(split_corpus(docs)) == 300  # by default one document, one task (tests/test_team.py)
    with caplog.at_level(logging.INFO, logger="delm_rlm"):
        chunks = split_corpus(docs, max_tasks=DEFAULT_MAX_TASKS)
        capped = split_corpus(docs, size=200, max_tasks=10)
    assert len(chunks) == 1  # the whole 10 KB fits one chunk of 20,000 characters
    assert [i for c in chunks for i in c.documents] == list(range(300))
    assert len(capped) <= 10 and [i for c in capped for i in c.documents] == list(range(300))
    notes = [r.getMessage() for r in caplog.records if r.name == "delm_rlm.chunking"]
    assert any("300 tasks, over the cap of 64" in n for n in notes)
    assert any("over the cap of 10" in n and "--max-tasks" in n for n in notes)
    with pytest.raises(ValueError, match="max_tasks"):
        split_corpus(docs, max_tasks=0)


@settings(max_examples=120, deadline=None)
@given(st.lists(st.text(alphabet="ab \n", max_size=60), min_size=1, max_size=12).filter(any),
       st.integers(1, 40), st.sampled_from(["auto", "lines", "documents", "pack"]), st.integers(1, 6))
def test_every_split_covers_every_document_once_in_order_within_the_cap(docs: list[str], size: int, by: str, cap: int) -> None:
    chunks = split_corpus(docs, size=size, by=by, max_tasks=cap)  # type: ignore[arg-type]
    assert chunks == split_corpus(docs, size=size, by=by, max_tasks=cap)  # type: ignore[arg-type]  # deterministic
    assert len(chunks) <= cap
    assert [c.index for c in chunks] == list(range(len(chunks)))
    # Read back in order, the chunks are the non-empty documents: whole ones joined, cut ones rejoined.
    pieces: dict[int, list[str]] = {}
    for c in chunks:
        if c.last_doc == c.doc:
            pieces.setdefault(c.doc, []).append(c.text(docs))
        else:
            assert c.start == 0 and c.end == len(docs[c.last_doc])
            assert c.text(docs) == "\n\n".join(docs[c.doc : c.last_doc + 1])
            for d in c.documents:
                pieces.setdefault(d, []).append(docs[d])
    assert {d: "".join(p) for d, p in pieces.items() if docs[d]} == {d: t for d, t in enumerate(docs) if t}


def test_task_labels_name_the_files() -> None:
    names = ["notes/a.txt", "notes/b.md", "notes/c.md"]
    chunks = split_corpus(["x\n" * 3, "y", "z"], size=100)
    goal = f"Work on {chunks[1].describe(len(chunks), names)} for the team question; propose ..."
    assert "doc 1 (notes/b.md)" in goal
    assert task_label(goal, names) == "chunk 2/3: notes/b.md"
    # A goal written before names were passed still gets the file name from the index.
    assert task_label("Work on chunk 1 of 2: doc 0, characters 0-6 (3 lines) for the team", names) == "chunk 1/2: notes/a.txt"
    packed = split_corpus(["x", "y", "z"], by="pack")
    assert task_label(packed[0].describe(1, names), names) == "chunk 1/1: notes/a.txt .. notes/c.md"
    rows = split_corpus(["r0", "r1"], table=pd.DataFrame({"v": [0, 1]}))
    assert task_label(rows[0].describe(1), None) == "chunk 1/1: rows 0-1"
    assert task_label("sum the counts", names) == "sum the counts"
