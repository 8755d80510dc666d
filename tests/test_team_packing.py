"""Issue 17: a team packs a table's rows into a few chunk tasks, each with every column,
and the verifier's code check rebuilds the same packed chunk (`chunk`, `chunk_df`)."""

from __future__ import annotations

import re
from pathlib import Path

from delm_rlm import RunStore, ScriptedLM, Team
from delm_rlm.corpus import Corpus
from delm_rlm.state.queue import TaskQueue, TaskState

COLUMNS = ["id", "region", "product", "amount", "status"]
REGIONS = ["north", "south", "east", "west"]
QUESTION = "How many orders are late?"

# The agent's `chunk` must be rows with every column ("col: value | ..."), and `chunk_df`
# those rows of the table; its check counts from `chunk_df`, the verifier's own rebuild.
AGENT_CODE = f"""```repl
assert list(chunk_df.columns) == {COLUMNS!r}, list(chunk_df.columns)
lines = chunk.splitlines()
assert len(lines) == len(chunk_df) == len(chunk_docs)
assert all(all(f"{{c}}: " in line for c in {COLUMNS!r}) for line in lines)
n = sum(1 for line in lines if "status: late" in line)
print(propose("partial", f"{{n}} late orders in rows {{chunk_doc}}-{{chunk_doc_end}}", value=n,
              check='print(int((chunk_df["status"] == "late").sum()))'))
answer["content"] = str(n)
answer["ready"] = True
```"""
FINAL_CODE = """```repl
answer["content"] = str(sum(g["value"] for g in gists(kind="partial")))
answer["ready"] = True
```"""


def script(messages: list[dict], role: str) -> str:
    if role == "finalizer":
        return FINAL_CODE
    if role == "verifier":
        return "REJECT: the code check should decide"
    return AGENT_CODE


def write_orders(path: Path, rows: int) -> int:
    """A CSV of `rows` orders (several columns); the number of late ones."""
    lines = [",".join(COLUMNS)]
    late = 0
    for i in range(rows):
        status = "late" if i % 7 == 0 else "shipped"
        late += status == "late"
        lines.append(f"{i},{REGIONS[i % 4]},widget-model-{i % 13},{(i * 37) % 500}.25,{status}")
    path.write_text("\n".join(lines) + "\n", encoding="utf-8")
    return late


async def test_a_300_row_csv_is_a_few_packed_tasks_with_every_column(tmp_path: Path) -> None:
    csv = tmp_path / "orders.csv"
    late = write_orders(csv, 300)
    corpus = Corpus.from_paths([csv])
    assert corpus.kind == "table" and len(corpus) == 300
    assert 10_000 < csv.stat().st_size < 16_000

    result = await Team(ScriptedLM(script), agents=2, plan="split", run_dir=tmp_path / "run").run(QUESTION, corpus)

    assert result.status == "answered", result.error
    assert result.answer == str(late)
    store = RunStore(result.store_path)
    tasks = TaskQueue(store).all()
    assert 1 <= len(tasks) <= 3
    assert [t.state for t in tasks] == [TaskState.DONE] * len(tasks)
    chunks = store.get_meta("chunks")
    assert all(c["rows"] for c in chunks.values())
    covered = [r for c in chunks.values() for r in range(c["doc"], (c["doc_end"] or c["doc"]) + 1)]
    assert sorted(covered) == list(range(300))
    # Every partial over a packed chunk was admitted by its code check (no judge).
    partials = store.list_gists(status="admitted", kinds="partial")
    assert len(partials) == len(tasks)
    assert all(g.evidence and g.evidence[-1].type == "code" for g in partials)
    assert sum(g.value for g in partials) == late
    assert "verifier" not in result.usage_by_role
    assert all(re.search(r"chunk \d of \d: rows \d+-\d+ of the table", t.goal) for t in tasks)


async def test_a_lower_task_cap_packs_rows_into_fewer_bigger_tasks(tmp_path: Path) -> None:
    csv = tmp_path / "orders.csv"
    late = write_orders(csv, 120)
    team = Team(ScriptedLM(script), agents=2, plan="split", chunk_chars=2_000, max_tasks=64, run_dir=tmp_path / "run")
    result = await team.run(QUESTION, Corpus.from_paths([csv]))
    assert result.status == "answered", result.error
    assert result.answer == str(late)
    many = TaskQueue(RunStore(result.store_path)).all()

    capped = Team(ScriptedLM(script), agents=2, plan="split", chunk_chars=2_000, max_tasks=2, run_dir=tmp_path / "capped")
    result = await capped.run(QUESTION, Corpus.from_paths([csv]))
    assert result.status == "answered", result.error
    assert result.answer == str(late)
    assert len(TaskQueue(RunStore(result.store_path)).all()) <= 2 < len(many)


SPAM_DOCS = ["spam: win\nham: lunch?\n", "ham: report\n", "spam: cruise\nspam: prize\n"]
SPAM_COUNT = 'sum(1 for line in chunk.splitlines() if line.startswith("spam"))'
SPAM_AGENT = f"""```repl
assert chunk_docs == [0, 1, 2] and chunk_df is None
n = {SPAM_COUNT}
print(propose("partial", f"{{n}} spam lines", value=n, check='print({SPAM_COUNT})'))
answer["content"] = str(n)
answer["ready"] = True
```"""


async def test_documents_pack_into_one_task_on_request_and_its_check_passes(tmp_path: Path) -> None:
    def spam_script(messages: list[dict], role: str) -> str:
        return FINAL_CODE if role == "finalizer" else SPAM_AGENT

    team = Team(ScriptedLM(spam_script), agents=1, plan="split", split_by="pack", run_dir=tmp_path / "run")
    result = await team.run("How many lines are spam?", SPAM_DOCS)
    assert result.status == "answered", result.error
    assert result.answer == "3"
    store = RunStore(result.store_path)
    assert len(TaskQueue(store).all()) == 1
    (partial,) = store.list_gists(status="admitted", kinds="partial")
    assert partial.value == 3 and partial.evidence[-1].type == "code"


def test_a_quote_is_located_in_whichever_document_of_a_packed_chunk_holds_it() -> None:
    from delm_rlm.chunking import split_corpus
    from delm_rlm.team.tools import locate_quote

    (chunk,) = split_corpus(SPAM_DOCS, by="pack")
    assert (chunk.doc, chunk.last_doc) == (0, 2)
    assert locate_quote(SPAM_DOCS, chunk, "spam: prize") == {
        "type": "quote", "doc": 2, "start": 13, "end": 24, "quote": "spam: prize"}
    near = locate_quote(SPAM_DOCS, chunk, "ham: reports")  # a near copy, mapped into doc 1
    assert near["doc"] == 1 and near["quote"] == SPAM_DOCS[1][near["start"]:near["end"]]
    missing = locate_quote(SPAM_DOCS, chunk, "no such words anywhere at all")
    assert (missing["doc"], missing["start"], missing["end"]) == (0, 0, len(SPAM_DOCS[0]))
