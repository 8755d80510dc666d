"""OpenTelemetry export: a real team run's trace becomes one tree of spans (run, task, agent
step, model call, cell, verdict) with the GenAI semantic-convention attributes, checked with
the SDK's in-memory exporter."""

from __future__ import annotations

import asyncio
from pathlib import Path
from typing import Any

import pytest

pytest.importorskip("opentelemetry.sdk", reason="the otel extra is not installed: pip install -e '.[otel]'")

from opentelemetry.sdk.trace import TracerProvider  # noqa: E402
from opentelemetry.sdk.trace.export import SimpleSpanProcessor  # noqa: E402
from opentelemetry.sdk.trace.export.in_memory_span_exporter import InMemorySpanExporter  # noqa: E402
from opentelemetry.trace import SpanKind, StatusCode  # noqa: E402

from delm_rlm.otel import OpenTelemetryExporter, export_trace  # noqa: E402
from delm_rlm.trace import Trace  # noqa: E402
from scripted_models import build_run  # noqa: E402


def provider_and_exporter() -> tuple[TracerProvider, InMemorySpanExporter]:
    exporter = InMemorySpanExporter()
    provider = TracerProvider()
    provider.add_span_processor(SimpleSpanProcessor(exporter))
    return provider, exporter


@pytest.fixture(scope="module")
def run_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    folder = tmp_path_factory.mktemp("run")
    asyncio.run(build_run(folder))
    return folder


def test_a_team_run_is_one_tree_of_spans_with_genai_attributes(run_dir: Path) -> None:
    events = Trace.load(run_dir / "trace.jsonl")
    provider, exporter = provider_and_exporter()
    export_trace(events, provider)
    spans = exporter.get_finished_spans()
    by_id = {s.context.span_id: s for s in spans}
    (run,) = [s for s in spans if s.name == "delm-rlm run hybrid"]
    assert run.parent is None and len({s.context.trace_id for s in spans}) == 1
    assert run.attributes["delm.status"] == "answered" and run.attributes["delm.answer"] == "Answer: 3"
    assert run.attributes["gen_ai.usage.input_tokens"] == sum(e.data["input_tokens"] for e in events if e.kind == "model_call")

    tasks = [s for s in spans if s.name.startswith("task ")]
    assert {s.attributes["delm.task.id"] for s in tasks} == {"t1", "t2"}
    assert all(s.parent.span_id == run.context.span_id for s in tasks)
    t2 = sorted((s for s in tasks if s.attributes["delm.task.id"] == "t2"), key=lambda s: s.start_time)
    assert [s.attributes["delm.task.outcome"] for s in t2] == ["requeued", "done"]  # the false claim, then the retry
    assert t2[0].status.status_code == StatusCode.ERROR

    calls = [s for s in spans if s.name == "chat scripted"]
    assert len(calls) == len([e for e in events if e.kind == "model_call"])
    for s in calls:
        a = s.attributes
        assert s.kind == SpanKind.CLIENT
        assert a["gen_ai.operation.name"] == "chat" and a["gen_ai.request.model"] == "scripted"
        assert a["gen_ai.system"] == "delm_rlm.scripted" and a["gen_ai.response.model"] == "scripted"
        assert a["gen_ai.usage.input_tokens"] > 0 and a["gen_ai.usage.output_tokens"] > 0
        assert a["delm.role"] in ("root", "finalizer")
        assert "gen_ai.prompt" not in a and not s.events  # content only with capture_content=True
    in_tasks = [s for s in calls if s.attributes["delm.role"] == "root"]
    assert in_tasks and all(by_id[s.parent.span_id].name.startswith("task ") for s in in_tasks)

    cells = [s for s in spans if s.name == "execute_code"]
    steps = [s for s in spans if s.name.startswith("agent_step")]
    assert len(cells) == len([e for e in events if e.kind == "code_cell"]) and steps
    verdicts = {s.attributes["delm.verdict"] for s in spans if s.name.startswith("verify ")}
    assert verdicts == {"admitted", "rejected"}
    rejected = next(s for s in spans if s.name.startswith("verify ") and s.attributes["delm.verdict"] == "rejected")
    assert "check printed" in rejected.attributes["delm.verdict.reason"] and rejected.status.status_code == StatusCode.ERROR
    for s in spans:  # every span lies inside the run
        assert run.start_time <= s.start_time <= s.end_time <= run.end_time


def test_the_exporter_is_a_live_subscriber_and_captures_content_when_asked() -> None:
    provider, exporter = provider_and_exporter()
    otel = OpenTelemetryExporter(provider, capture_content=True)
    trace = Trace(subscribers=[otel])
    trace.emit("run_started", question="How many?", method="rlm", corpus="c", config={"model": "gpt-4o-mini"})
    trace.emit("model_call", agent="rlm", role="root", model="gpt-4o-mini", input_tokens=12, output_tokens=3,
               seconds=0.2, cached=True, cost_usd=0.0, prompt="How many?", response="```repl\nprint(1)\n```")
    trace.emit("model_call_failed", agent="rlm", role="sub", model="gpt-4o-mini", error="HTTP 500", seconds=0.1, prompt="")
    assert [s.name for s in exporter.get_finished_spans()] == ["chat gpt-4o-mini", "chat gpt-4o-mini"]
    otel.close()  # a run that never finished: its span still ends
    spans: dict[str, Any] = {s.name: s for s in exporter.get_finished_spans()}
    call, failed = [s for s in exporter.get_finished_spans() if s.name.startswith("chat")]
    assert call.attributes["gen_ai.system"] == "openai" and call.attributes["delm.cached"] is True
    assert {e.name for e in call.events} == {"gen_ai.content.prompt", "gen_ai.content.completion"}
    assert failed.status.status_code == StatusCode.ERROR and "HTTP 500" in failed.status.description
    assert spans["delm-rlm run rlm"].attributes["gen_ai.request.model"] == "gpt-4o-mini"
    assert call.parent.span_id == spans["delm-rlm run rlm"].context.span_id


def test_without_the_extra_the_error_names_the_install_command(monkeypatch: pytest.MonkeyPatch) -> None:
    import builtins

    real_import = builtins.__import__

    def no_otel(name: str, *args: Any, **kwargs: Any) -> Any:
        if name.startswith("opentelemetry"):
            raise ModuleNotFoundError(f"No module named {name!r}", name=name)
        return real_import(name, *args, **kwargs)

    monkeypatch.setattr(builtins, "__import__", no_otel)
    with pytest.raises(ImportError, match=r"pip install 'delm-rlm\[otel\]'"):
        OpenTelemetryExporter()
