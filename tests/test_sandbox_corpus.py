"""Contexts reach the REPL through a workspace file as `context`, `docs` and `df`."""

from __future__ import annotations

import time

import pandas as pd
import pytest
import pytest_asyncio

from sandbox import KernelSandbox

pytestmark = pytest.mark.asyncio(loop_scope="module")


@pytest_asyncio.fixture(scope="module", loop_scope="module")
async def sb():
    async with KernelSandbox(timeout=60) as box:
        yield box


async def test_str_context_views(sb: KernelSandbox) -> None:
    await sb.load_context("alpha beta\ngamma\ndelta")
    result = await sb.execute("print(len(context), docs == [context], list(df['line']))")
    assert result.stdout == "22 True ['alpha beta', 'gamma', 'delta']\n"
    assert "pd" not in (await sb.execute("print(sorted(globals()))")).stdout.split("'")


async def test_list_context_views(sb: KernelSandbox) -> None:
    await sb.load_context(["doc one", "doc two", "three"])
    result = await sb.execute("print(repr(context)); print(docs[2], df.shape, list(df.doc_id))")
    assert result.stdout == "'doc one\\n\\ndoc two\\n\\nthree'\nthree (3, 2) [0, 1, 2]\n"


async def test_dataframe_context_views(sb: KernelSandbox) -> None:
    frame = pd.DataFrame({"label": ["spam", "ham"], "n": [1, 2]})
    await sb.load_context(frame)
    result = await sb.execute("print(repr(context)); print(docs); print(int(df.n.sum()))")
    assert result.stdout == "'label,n\\nspam,1\\nham,2\\n'\n['label: spam | n: 1', 'label: ham | n: 2']\n3\n"
    await sb.load_context(pd.DataFrame({"text": ["a", "b"], "y": [0, 1]}))
    assert (await sb.execute("print(docs)")).stdout == "['a', 'b']\n"


async def test_context_survives_restart_even_if_file_deleted(sb: KernelSandbox) -> None:
    await sb.load_context(["kept across restarts"])
    await sb.execute("import shutil; shutil.rmtree('.delm')")
    await sb.restart()
    assert (await sb.execute("print(docs[0])")).stdout == "kept across restarts\n"


async def test_context_is_not_sent_through_messages(sb: KernelSandbox) -> None:
    await sb.load_context("x" * 1000)
    files = list((sb.workspace / ".delm").iterdir())
    assert any(f.name.startswith("context") and f.stat().st_size == 1000 for f in files)


async def test_non_str_documents_are_refused(sb: KernelSandbox) -> None:
    with pytest.raises(TypeError, match="item 1"):
        await sb.load_context(["ok", 3])  # type: ignore[list-item]


async def test_100mb_corpus_loads(sb: KernelSandbox) -> None:
    line = "2024-01-01 || user_17 || the quick brown fox jumps over the lazy dog || label: spam\n"
    text = line * (100 * 1024**2 // len(line))
    t0 = time.perf_counter()
    await sb.load_context(text)
    seconds = time.perf_counter() - t0
    result = await sb.execute("print(len(context), len(df), context.count('spam'))")
    n = text.count("\n")
    assert result.stdout == f"{len(text)} {n + 1} {n}\n", result
    assert seconds < 30, seconds
