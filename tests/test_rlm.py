"""RLM agent mechanics: ScriptedLM for the model, real Jupyter kernels for the REPL.

These tests check what a user of `RLM` relies on (the loop, finishing by state, truncation,
sub-calls, recursion, budgets, the cache), never a model's intelligence.
"""

from __future__ import annotations

import textwrap
from collections.abc import Callable
from typing import Any

import pandas as pd
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from delm_rlm import prompts
from delm_rlm.codeblocks import extract_code_blocks, strip_code_blocks
from delm_rlm.llm import Budget
from delm_rlm.rlm import RLM
from delm_rlm.llm.scripted import ScriptedLM
from delm_rlm.trace import Trace

LINES = "\n".join(f"row {i} SECRET-{i}" for i in range(50))


class Script:
    """A scripted model that records every prompt; root and sub roles answer separately."""

    def __init__(
        self,
        root: list[str],
        sub: Callable[[list[dict[str, Any]]], str] | None = None,
    ) -> None:
        self.root = list(root)
        self.sub = sub
        self.prompts: list[list[dict[str, Any]]] = []
        self.roles: list[str] = []

    def __call__(self, messages: list[dict[str, Any]], role: str) -> str:
        self.prompts.append(messages)
        self.roles.append(role)
        if role == "sub" and self.sub is not None:
            return self.sub(messages)
        if not self.root:
            raise AssertionError("the script ran out of root replies")
        return self.root.pop(0)

    def last_user(self, index: int = -1) -> str:
        return self.prompts[index][-1]["content"]


def repl(code: str, fence: str = "repl") -> str:
    return f"```{fence}\n{textwrap.dedent(code).strip()}\n```"


FINISH = repl('answer["content"] = str(n)\nanswer["ready"] = True')


async def run(script: Script, context: Any = LINES, question: str = "How many rows?", **kw: Any):
    budget = kw.pop("budget", None)
    lm = kw.pop("lm", None) or ScriptedLM(script)
    return await RLM(lm, **kw).run(question, context, budget=budget)


# -- the loop ----------------------------------------------------------------------------


async def test_loop_runs_code_and_finishes_by_state() -> None:
    script = Script([repl("n = len(context.splitlines())\nprint(n)"), FINISH])
    result = await run(script)

    assert result.status == "answered"
    assert result.answer == "50"
    assert result.finished_by == "state"
    assert result.iterations == 2
    # The model saw the cell's output, and never the context itself (only a description).
    assert "REPL output:\n50" in script.last_user()
    seen = "".join(m["content"] for p in script.prompts for m in p)
    assert "SECRET-37" not in seen
    assert "50 lines" in script.prompts[0][1]["content"]
    # The system prompt is the same on every call (prefix cache), history append-only.
    assert script.prompts[0][0] == script.prompts[1][0]
    assert script.prompts[1][: len(script.prompts[0])] == script.prompts[0]
    kinds = [e.kind for e in result.trace]
    assert kinds[0] == "run_started" and kinds[-1] == "run_finished"
    assert kinds.count("code_cell") == 2 and kinds.count("model_call") == 2
    assert result.usage.calls == 2 and result.usage_by_role["root"].calls == 2


async def test_loop_is_reusable_on_one_sandbox_with_a_stable_system_prompt() -> None:
    # The team's agents call `loop` once per task on their own sandbox.
    from sandbox import KernelSandbox

    script = Script([
        FINISH.replace("str(n)", "'1'"),
        repl("print(answer)"),  # `answer` was reset: the first loop's finish does not leak
        FINISH.replace("str(n)", "'2'"),
    ])
    lm = ScriptedLM(script)
    rlm = RLM(lm)
    tools = "gists() -> str   the verified facts so far"
    async with KernelSandbox() as sb:
        await sb.load_context("one\ntwo")
        a = await rlm.loop(sb, question="first?", context_description="2 lines", lm=lm, extra_tools_doc=tools)
        b = await rlm.loop(sb, question="second?", context_description="2 lines", lm=lm,
                           extra_tools_doc=tools, agent_id="a2", task_id="t7")
    assert (a.answer, a.iterations) == ("1", 1)
    assert (b.answer, b.iterations) == ("2", 2) and "'ready': False" in script.last_user()
    assert b.cells[0].code == "print(answer)"
    assert script.prompts[0][0] == script.prompts[1][0]  # same system prompt across tasks
    assert "  gists() -> str   the verified facts so far" in script.prompts[0][0]["content"]
    assert script.prompts[0][1] != script.prompts[1][1]


async def test_long_output_is_truncated_with_its_true_length() -> None:
    script = Script([repl('print("A" * 30000 + "Z" * 18211)'), FINISH.replace("str(n)", "'done'")])
    result = await run(script, output_limit=2000)

    assert result.answer == "done"
    shown = script.last_user()
    assert "[output truncated: 48,211 chars; showing first 1000 and last 1000]" in shown
    assert "A" * 1000 in shown and "Z" * 1000 in shown
    assert "A" * 1001 not in shown and "Z" * 1001 not in shown
    # The trace keeps the real size of what was printed.
    cell = next(e for e in result.trace if e.kind == "code_cell")
    assert cell.data["stdout_chars"] == 48212


async def test_python_fence_and_rebound_answer_dict_finish() -> None:
    # What the local 1.5B writes: a ```python fence and `answer = {}` before the keys.
    reply = "Here is the code:\n" + repl(
        "answer = {}\nanswer['content'] = 6 * 7\nanswer['ready'] = True", fence="python"
    )
    result = await run(Script([reply]))
    assert (result.status, result.answer, result.iterations) == ("answered", "42", 1)


async def test_answer_rebound_to_a_string_is_not_a_finish() -> None:
    script = Script([
        repl("answer = '42'"),
        repl('answer = {"content": answer, "ready": True}'),
    ])
    result = await run(script)
    assert "`answer` is now a str" in script.last_user()
    assert (result.answer, result.iterations) == ("42", 2)


async def test_ready_without_content_is_not_a_finish_and_numpy_content_is_read() -> None:
    script = Script([
        repl('answer["ready"] = True'),
        repl('import numpy as np\nanswer["content"] = np.int64(7)\nanswer["ready"] = np.bool_(True)'),
    ])
    result = await run(script)
    assert prompts.ANSWER_EMPTY in script.last_user()
    assert (result.status, result.answer) == ("answered", "7")


async def test_error_then_recovery() -> None:
    script = Script([
        repl("print(undefined_name)"),
        repl("n = len(docs)\nprint(n)"),
        FINISH,
    ])
    result = await run(script)
    assert "Error: NameError" in script.last_user(1)
    assert (result.status, result.answer, result.iterations) == ("answered", "1", 3)


async def test_a_failed_split_is_told_which_lines_lack_the_separator() -> None:
    """`line.split("level=")[1]` over a log with a header line raises IndexError; the agent
    is told how many lines lack the separator and shown one, read from the context on the
    host, so its next cell can skip them."""
    log = "service log, exported 2024-05-02\n" + "".join(
        f"t={t} level={lvl} msg=done\n" for t, lvl in enumerate(["info", "warn", "info"]))
    script = Script([
        repl("levels = [line.split('level=')[1].split()[0] for line in context.splitlines()]"),
        repl("levels = [line.split('level=')[1].split()[0] for line in context.splitlines() if 'level=' in line]\n"
             "n = levels.count('info')"),
        FINISH,
    ])
    result = await run(script, context=log, question="How many info lines?")
    told = script.last_user(1)
    assert "Error: IndexError" in told
    assert "1 of the 4 non-empty lines have no 'level=' (such as 'service log, exported 2024-05-02')" in told
    assert (result.status, result.answer) == ("answered", "2")


async def test_an_answer_gate_sends_a_refused_answer_back_to_the_agent() -> None:
    # The team verifies an answer before the agent stops: a refusal reaches the agent with
    # its REPL intact and costs one step; three refusals in a row end the loop.
    from sandbox import KernelSandbox

    seen: list[str] = []

    async def gate(answer: str, cells: Any) -> str | None:
        seen.append(answer)
        return None if answer == "2" else f"{answer} is not the count (cells so far: {len(cells)})"

    script = Script([FINISH.replace("str(n)", "'0'"), repl("n = 2"), FINISH])
    lm = ScriptedLM(script)
    async with KernelSandbox() as sb:
        await sb.load_context("one\ntwo")
        out = await RLM(lm).loop(sb, question="How many?", context_description="2 lines", lm=lm, accept=gate)
        assert (out.status, out.answer, out.iterations) == ("answered", "2", 3)
        assert seen == ["0", "2"]
        assert "not accepted: 0 is not the count (cells so far: 1)" in script.last_user(1)
        assert "'ready': False" not in script.last_user(1)

        script.root = [FINISH.replace("str(n)", "'0'")] * 3
        out = await RLM(lm, max_consecutive_errors=3).loop(
            sb, question="How many?", context_description="2 lines", lm=lm, accept=gate)
        assert out.status == "error" and "answer refused: 0 is not the count" in (out.error or "")


async def test_max_consecutive_errors_stops_the_run() -> None:
    script = Script([
        "I think the answer is 12.",  # no code block: a failed step
        repl("1/0"),
        repl("raise ValueError('still wrong')"),
        FINISH,
    ])
    result = await run(script, max_consecutive_errors=3)
    assert result.status == "error"
    assert "3 failed steps in a row" in (result.error or "")
    assert "ValueError: still wrong" in (result.error or "")
    assert result.iterations == 3 and result.usage.calls == 3
    assert prompts.RLM_NO_CODE in script.last_user(1)


async def test_a_reply_without_code_gets_the_block_format_once_then_its_prose_is_the_answer() -> None:
    script = Script(["I think the answer is 12.", "The correct answer is (B)."])
    result = await run(script)
    assert (result.status, result.answer, result.finished_by) == ("answered", "The correct answer is (B).", "prose")
    assert result.iterations == 2 and result.usage.calls == 2 and result.error is None
    assert prompts.RLM_NO_CODE in script.last_user()  # the second call was shown the block format

    # Only two in a row count: prose after code gets the block format again.
    script = Script(["It is 12.", repl("n = 3"), "It is 3.", "The answer is 3."])
    result = await run(script)
    assert (result.status, result.answer, result.finished_by, result.iterations) == ("answered", "The answer is 3.", "prose", 4)
    assert prompts.RLM_NO_CODE in script.last_user()


async def test_an_answer_written_inside_a_code_fence_is_prose_not_a_syntax_error() -> None:
    """A small model puts its answer in a ```repl fence; running it is a SyntaxError, three in
    a row end the run. It is read as prose instead: the block format once, then the answer."""
    script = Script([repl("The correct answer is (B)"), repl("The correct answer is (B)")])
    result = await run(script)
    assert (result.status, result.answer, result.finished_by) == ("answered", "The correct answer is (B)", "prose")
    assert prompts.RLM_PROSE_BLOCK in script.last_user()
    assert not any(e.kind == "code_cell" for e in result.trace)  # nothing was run
    # A mistyped statement is still code: it runs, fails, and the error is shown.
    script = Script([repl("for i in range(3)\n    print(i)"), repl("n = 3"), FINISH])
    result = await run(script)
    assert result.answer == "3" and "SyntaxError" in script.last_user(1)


async def test_a_prose_answer_goes_through_the_accept_gate() -> None:
    from sandbox import KernelSandbox

    seen: list[str] = []

    async def gate(answer: str, cells: Any) -> str | None:
        seen.append(answer)
        return None if answer == "2" else "not the count"

    script = Script(["one", "0", "2"])
    lm = ScriptedLM(script)
    async with KernelSandbox() as sb:
        await sb.load_context("one\ntwo")
        out = await RLM(lm, max_consecutive_errors=4).loop(
            sb, question="How many?", context_description="2 lines", lm=lm, accept=gate)
    assert (out.status, out.answer, out.finished_by) == ("answered", "2", "prose")
    assert seen == ["0", "2"] and "not accepted: not the count" in script.last_user()


async def test_out_of_iterations_asks_once_for_a_final_answer() -> None:
    script = Script([
        repl("print(len(docs))"),
        repl("print('still looking')"),
        "Final answer: 50",
    ])
    result = await run(script, max_iterations=2)
    assert (result.status, result.answer, result.finished_by) == ("answered", "Final answer: 50", "final_call")
    assert result.usage.calls == 3
    assert "You have no steps left" in script.last_user()
    assert "next is your last step" in script.last_user(1)


async def test_several_blocks_run_in_order_and_stop_at_the_first_failure() -> None:
    reply = repl("x = 1\nprint('one')") + "\nthen\n" + repl("x += 'a'") + "\n" + repl("print('three')")
    script = Script([reply, repl('answer["content"] = str(x)\nanswer["ready"] = True')])
    result = await run(script, stop_after_block=False)
    feedback = script.last_user()
    assert "REPL output of block 1:\none" in feedback and "TypeError" in feedback
    assert "1 later block(s) not run" in feedback and "three" not in feedback
    assert result.answer == "1"


async def test_reply_stops_at_the_first_block_and_imagined_output_is_dropped() -> None:
    # Small models go on to "show" the output and answer from it: the stop cuts that off.
    reply = repl("n = len(docs)\nprint(n)") + "\n```output\n999\n```\n" + repl('answer["content"] = "999"')
    script = Script([reply, FINISH])
    result = await run(script)
    assert script.prompts[1][2] == {"role": "assistant", "content": repl("n = len(docs)\nprint(n)")}
    assert len(result.trace) and sum(e.kind == "code_cell" for e in result.trace) == 2
    assert result.answer == "1"


async def test_dataframe_context_is_described_and_loaded() -> None:
    frame = pd.DataFrame({"city": ["Oslo", "Lima", "Oslo"], "temp": [3, 19, 5]})
    script = Script([repl('n = int(df[df.city == "Oslo"].temp.sum())\nprint(n)') + "\n", FINISH])
    result = await run(script, context=frame)
    assert "city (" in script.prompts[0][1]["content"] and "3 rows" in script.prompts[0][1]["content"]
    assert result.answer == "8"


# -- sub-calls and recursion -------------------------------------------------------------


async def test_llm_query_batched_returns_an_error_in_the_failed_slot_only() -> None:
    def sub(messages: list[dict[str, Any]]) -> str:
        prompt = messages[-1]["content"]
        if prompt == "boom":
            raise RuntimeError("sub-model fell over")
        return f"echo:{prompt}"

    script = Script(
        [repl('r = llm_query_batched(prompts=["a", "boom", "c"])\nprint(r)\nanswer["content"] = "|".join(r)\nanswer["ready"] = True')],
        sub=sub,
    )
    result = await run(script)
    first, failed, last = (result.answer or "").split("|")
    assert (first, last) == ("echo:a", "echo:c")
    assert failed.startswith("ERROR: ") and "sub-model fell over" in failed
    assert result.usage_by_role["sub"].calls == 2 and result.usage_by_role["sub"].failed_calls == 1


async def test_llm_query_failure_raises_bridge_error_in_the_repl() -> None:
    def sub(messages: list[dict[str, Any]]) -> str:
        raise RuntimeError("no luck")

    script = Script(
        [repl("try:\n    llm_query('x')\nexcept BridgeError as e:\n    n = 'caught: ' + str(e)")
         + "\n", FINISH],
        sub=sub,
    )
    result = await run(script)
    assert result.answer is not None and result.answer.startswith("caught: ") and "no luck" in result.answer


async def test_rlm_query_runs_a_child_that_degrades_at_max_depth() -> None:
    # Root (depth 0) -> child RLM (depth 1, its own kernel) -> rlm_query at max depth = llm_query.
    def sub(messages: list[dict[str, Any]]) -> str:
        if messages[0]["role"] == "system":  # the child agent's loop
            return repl(
                'n = len(context.splitlines())\ninner = rlm_query("shout", "hi")\n'
                'answer["content"] = f"{n}/{inner}"\nanswer["ready"] = True'
            )
        return "HI" if messages[-1]["content"].startswith("shout") else "?"

    script = Script(
        [repl('r = rlm_query("count the lines", "l1\\nl2\\nl3")\nanswer["content"] = r\nanswer["ready"] = True')],
        sub=sub,
    )
    result = await run(script, max_depth=1)

    assert result.status == "answered" and result.answer == "3/HI"
    child_cells = [e for e in result.trace if e.kind == "code_cell" and e.agent == "rlm.1"]
    assert len(child_cells) == 1 and "rlm_query" in child_cells[0].data["code"]
    assert any(e.data.get("action", "").startswith("rlm_query at max depth") for e in result.trace)
    # Child's calls count in the parent's usage: 1 root + child's 1 loop call + 1 degraded call.
    assert result.usage.calls == 3
    assert result.usage_by_role["root"].calls == 1 and result.usage_by_role["sub"].calls == 2
    degraded = script.prompts[-1][-1]["content"]
    assert degraded.startswith("shout") and "hi" in degraded


async def test_child_cannot_exceed_the_parents_remaining_budget() -> None:
    def sub(messages: list[dict[str, Any]]) -> str:
        return repl("print('child still working')")  # a child that never finishes

    script = Script(
        [repl('answer["content"] = "partial guess"\nr = rlm_query("dig", context="a\\nb")\nprint(r)')],
        sub=sub,
    )
    result = await run(script, budget=Budget(max_calls=4), max_iterations=10)

    assert result.status == "budget"
    assert result.answer == "partial guess"
    assert "calls" in (result.error or "")
    # The child ran on what was left (3 calls) and its calls counted against the parent.
    assert result.usage.calls + result.usage.failed_calls <= 4
    assert result.usage_by_role["sub"].calls == 3
    assert any(e.kind == "budget_exceeded" for e in result.trace)


# -- budgets and cache -------------------------------------------------------------------


@pytest.mark.parametrize(
    ("first_reply", "expected"),
    [
        (repl('print("counting...")\nanswer["content"] = "43"'), "43"),  # content set, not ready
        (repl('print("43 rows so far")'), "43 rows so far"),  # else the last output
    ],
)
async def test_budget_stops_the_run_with_the_partial_answer(first_reply: str, expected: str) -> None:
    script = Script([first_reply, FINISH])
    result = await run(script, budget=Budget(max_calls=1))
    assert result.status == "budget"
    assert result.answer == expected
    assert result.finished_by == "partial"
    assert result.usage.calls == 1 and len(script.prompts) == 1


async def test_second_identical_run_is_served_from_the_cache(tmp_path) -> None:
    replies = [repl("n = len(context.splitlines())\nprint(n)"), FINISH]
    lm = ScriptedLM(list(replies), cache=tmp_path / "cache.sqlite", temperature=0.0)
    rlm = RLM(lm)
    first = await rlm.run("How many rows?", LINES)
    calls_after_first = lm.transport_calls
    second = await rlm.run("How many rows?", LINES)  # the list is exhausted: only the cache can answer

    assert calls_after_first == 2 and lm.transport_calls == 2
    assert first.answer == second.answer == "50"
    assert second.usage.calls == 2 and second.usage.cached_calls == 2


def test_run_sync_and_a_file_trace(tmp_path) -> None:
    trace = Trace(tmp_path / "trace.jsonl")
    result = RLM(ScriptedLM([FINISH.replace("str(n)", "'ok'")]), trace=trace).run_sync("q?", ["a", "b"])
    assert result.answer == "ok" and result.trace_path == str(tmp_path / "trace.jsonl")
    assert [e.kind for e in Trace.load(tmp_path / "trace.jsonl")] == [e.kind for e in result.trace]


async def test_bad_input_is_refused_before_anything_starts() -> None:
    rlm = RLM(ScriptedLM([]))
    with pytest.raises(TypeError, match="context must be a str"):
        await rlm.run("q?", 42)
    with pytest.raises(TypeError, match="item 1 is a int"):
        await rlm.run("q?", ["a", 1])
    with pytest.raises(ValueError, match="question"):
        await rlm.run("  ", "text")
    with pytest.raises(ValueError, match="max_iterations"):
        RLM(ScriptedLM([]), max_iterations=0)
    with pytest.raises(ValueError, match="sandbox must be"):
        RLM(ScriptedLM([]), sandbox="docker")


# -- pure helpers (no kernel) -------------------------------------------------------------


def test_code_blocks_fences() -> None:
    text = "Plan.\n```python\nx = 1\n```\n```output\n1\n```\n```py\ny = 2\n```\nDone."
    assert extract_code_blocks(text) == ["x = 1", "y = 2"]
    assert strip_code_blocks(text) == "Plan.\nDone."
    # Untagged fences count only when they parse and no tagged block exists.
    assert extract_code_blocks("```\nprint(3)\n```") == ["print(3)"]
    assert extract_code_blocks("```\nthe answer is 3\n```") == []
    # A fence glued to the code, and a block cut off at the end of the reply.
    assert extract_code_blocks("```repl\nprint(1)```\nok") == ["print(1)"]
    assert extract_code_blocks("```repl\nfor i in range(3):\n    print(i)") == ["for i in range(3):\n    print(i)"]
    assert extract_code_blocks("no code here") == []
    # A fence-less reply that is plainly code runs; prose and bare values do not.
    assert extract_code_blocks('print(llm_query("hi"))\n') == ['print(llm_query("hi"))']
    assert extract_code_blocks("42") == [] and extract_code_blocks("The answer is 42.") == []


@settings(max_examples=200, deadline=None)
@given(
    code=st.text(alphabet=st.characters(min_codepoint=32, max_codepoint=126, blacklist_characters="`") | st.just("\n"), max_size=200),
    before=st.text(alphabet=st.characters(min_codepoint=32, max_codepoint=126, blacklist_characters="`"), max_size=40),
)
def test_code_block_roundtrip(code: str, before: str) -> None:
    expected = textwrap.dedent(code).strip("\n")
    blocks = extract_code_blocks(f"{before}\n```repl\n{code}\n```\nafter")
    assert blocks == ([expected] if expected.strip() else [])


@settings(max_examples=200, deadline=None)
@given(text=st.text(max_size=500), limit=st.integers(min_value=2, max_value=300))
def test_truncation_keeps_head_and_tail_and_states_the_length(text: str, limit: int) -> None:
    out = prompts.truncate_middle(text, limit)
    if len(text) <= limit:
        assert out == text
    else:
        head, tail = limit // 2, limit - limit // 2
        assert out.startswith(text[:head]) and out.endswith(text[-tail:])
        assert f"[output truncated: {len(text):,} chars; showing first {head} and last {tail}]" in out


def test_context_descriptions() -> None:
    text = prompts.describe_context("a\nb\nc")
    assert "3 lines" in text and "line 2: c" in text
    docs = prompts.describe_context(["x" * 10, "y" * 30])
    assert "2 documents" in docs and "40 chars" in docs and "max 30" in docs
    frame = prompts.describe_context(pd.DataFrame({"a": [1, 2], "b": ["u", "v"]}))
    assert "2 rows" in frame and "a (int64)" in frame and "b (" in frame


def test_long_sample_lines_keep_their_tail() -> None:
    """A structured line's last field (often what a question counts) survives the cut."""
    line = "Date: May 02 || Text: " + "word " * 60 + "|| Label: numeric value"
    shown = prompts.describe_context("header\n" + line + "\nfooter")
    assert "|| Label: numeric value" in shown and "Date: May 02" in shown
    assert max(len(ln) for ln in shown.splitlines()) < 200


def test_sample_lines_spread_inside_the_text() -> None:
    text = "\n".join(["HEADER"] + [f"row {i} || Label: x" for i in range(20)] + ["", "FOOTER"])
    shown = prompts.sample_lines(text, 3).splitlines()
    assert len(shown) == 3 and all(ln.startswith("  row ") for ln in shown)
    assert prompts.sample_lines("a\n\nb", 3).splitlines() == ["  a", "  b"]
    assert "no non-empty lines" in prompts.sample_lines("\n \n")


def test_history_drops_the_oldest_steps_when_over_the_window() -> None:
    lm = ScriptedLM([], context_window=1000, max_tokens=100)  # room for ~2,700 chars
    rlm = RLM(lm)
    history = []
    for i in range(10):
        history += [{"role": "assistant", "content": f"step {i} " + "x" * 200},
                    {"role": "user", "content": f"output {i} " + "y" * 200}]
    messages = rlm._messages("SYSTEM", "FIRST", history, lm, "root")
    assert messages[0]["content"] == "SYSTEM" and messages[1]["content"].startswith("FIRST")
    kept = messages[2:]
    assert kept[-2:] == history[-2:] and len(kept) < len(history) and len(kept) % 2 == 0
    assert sum(len(m["content"]) for m in messages) <= 2700
    assert f"[{(len(history) - len(kept)) // 2} earlier step(s) omitted" in messages[1]["content"]
    # Under the window nothing is dropped, so the prompt prefix stays stable for the cache.
    assert rlm._messages("SYSTEM", "FIRST", history[:4], lm, "root")[2:] == history[:4]


def test_a_key_error_says_how_to_find_the_real_names() -> None:
    """A guessed column name ("label" for "Label") is answered with how to look, not just
    the bare KeyError that small models then retry unchanged."""
    from sandbox import ExecResult

    shown = prompts.format_cell(ExecResult(error="KeyError: 'label'\nCell In[3], line 1\n----> 1 df['label']"), 2000)
    assert shown.startswith("Error: KeyError: 'label'") and "print(df.columns)" in shown
    other = prompts.format_cell(ExecResult(error="NameError: name 'x' is not defined"), 2000)
    assert "df.columns" not in other
