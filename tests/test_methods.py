"""The methods registry on its own: a question over a corpus, no benchmark Task involved
(what `delm-rlm ask` runs), and the sandbox settings every method, agent and team accepts."""

from __future__ import annotations

from pathlib import Path

import pytest

from delm_rlm.errors import ConfigError
from delm_rlm.llm import Budget
from delm_rlm.llm.scripted import ScriptedLM
from delm_rlm.methods import METHOD_NAMES, MethodOptions, Question, get_method, parse_methods
from delm_rlm.trace import Trace
from sandbox import SANDBOX_KINDS, KernelSandbox, check_kind, check_sandbox_spec, make_sandbox, sandbox_factory


async def test_direct_answers_a_question_over_documents_with_its_trace(tmp_path: Path) -> None:
    lm = ScriptedLM(["Answer: 2"])
    seen: list[str] = []
    method = get_method("direct")(MethodOptions(answer_tokens=64))
    run = await method.answer(Question.of("How many docs?", ["apple", "pear"]), lm, run_dir=tmp_path,
                              subscribers=[lambda e: seen.append(e.kind)])
    assert run.result.answer == "Answer: 2" and run.result.status == "answered" and run.result.method == "direct"
    assert run.result.usage.calls == 1 and set(run.result.usage_by_role) == {"root"}
    assert run.detail["truncated"] is False
    messages, role = lm.received[0]
    assert role == "root" and messages[-1]["content"] == "apple\n\npear\n\nHow many docs?"
    kinds = [e.kind for e in Trace.load(tmp_path / "trace.jsonl")]
    assert kinds == seen == ["run_started", "model_call", "run_finished"]
    assert run.result.trace_path == str(tmp_path / "trace.jsonl")


async def test_a_budget_stop_is_a_result_and_a_custom_prompt_lays_out_the_call() -> None:
    lm = ScriptedLM(["never sent"])
    run = await get_method("direct")().answer(Question.of("q", "text"), lm, budget=Budget(max_calls=0))
    assert run.result.status == "budget" and run.result.answer is None and "budget exceeded" in (run.result.error or "")
    assert lm.received == [] and run.detail == {}

    framed = ScriptedLM(["ok"])
    question = Question.of("q", "the text", direct_prompt=lambda context: f"<<{context}>> then q")
    await get_method("direct")().answer(question, framed)
    assert framed.received[0][0][-1]["content"] == "<<the text>> then q"


def test_registry_names_and_errors() -> None:
    assert set(METHOD_NAMES) == {"direct", "rlm", "delm", "orchestrator", "hybrid"}
    assert parse_methods("direct, rlm,direct") == ["direct", "rlm"]
    with pytest.raises(ConfigError, match="unknown method 'magic'"):
        get_method("magic")
    with pytest.raises(ValueError, match="no methods given"):
        parse_methods(" , ")


async def test_sandbox_specs_are_checked_in_one_place() -> None:
    assert SANDBOX_KINDS == ("local", "e2b") and check_kind("e2b") == "e2b"
    with pytest.raises(ConfigError, match="unknown sandbox kind 'docker'; use one of local, e2b"):
        check_kind("docker")
    with pytest.raises(ValueError, match="sandbox must be 'local', 'e2b' or a zero-argument factory"):
        check_sandbox_spec("docker")
    with pytest.raises(TypeError, match="got int"):
        check_sandbox_spec(3)
    with pytest.raises(ConfigError, match="unknown sandbox kind"):
        make_sandbox("docker")

    def mine() -> KernelSandbox:
        return KernelSandbox(timeout=30)

    assert sandbox_factory(mine) is mine
    fresh = sandbox_factory("local")
    first, second = fresh(), fresh()
    assert isinstance(first, KernelSandbox) and isinstance(second, KernelSandbox) and first is not second
