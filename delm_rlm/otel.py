"""OpenTelemetry export of a run: its trace events as spans (extra `otel`).

`OpenTelemetryExporter` is a trace subscriber (give it to `Team(trace_subscribers=[...])`,
or `trace.subscribe(...)`): every run becomes a tree of spans, so Langfuse, Phoenix, Jaeger
or any OTLP backend shows it.

    run "delm-rlm run hybrid"                 run_started .. run_finished
      task "task t1"                          task_claimed .. task_done / failed / requeued
        "chat <model>"                        one per model call, GenAI semantic conventions
        "execute_code"                        one per REPL cell
        "agent_step <n>"                      one per agent step (instant)
        "verify <gist id>"                    gist_proposed .. admitted / rejected / merged

Model-call spans carry `gen_ai.operation.name` ("chat"), `gen_ai.system` and
`gen_ai.provider.name`, `gen_ai.request.model`, `gen_ai.response.model`,
`gen_ai.usage.input_tokens` and `gen_ai.usage.output_tokens`, plus `delm.role`,
`delm.cached` and `delm.cost_usd`. Prompts and replies are left out unless
`capture_content=True` (they may hold the user's data). Span times are the events' own
times, so `export_trace(events)` replays a finished run's `trace.jsonl` as well.
"""

from __future__ import annotations

import threading
from collections.abc import Iterable
from datetime import datetime
from typing import Any

from delm_rlm.trace import TraceEvent

INSTALL_HINT = "pip install 'delm-rlm[otel]' (opentelemetry-api and opentelemetry-sdk)"
TRACER_NAME = "delm_rlm"
# Attribute values longer than this are cut (backends reject or truncate huge attributes).
MAX_ATTRIBUTE_CHARS = 4000


def _otel() -> Any:
    try:
        from opentelemetry import trace as ot_trace
    except ImportError as exc:
        raise ImportError(f"OpenTelemetry export needs the otel extra: {INSTALL_HINT}", name=exc.name) from exc
    return ot_trace


def _ns(event: TraceEvent, minus_seconds: float = 0.0) -> int:
    """The event's wall-clock time (its ISO `ts`) in nanoseconds, minus a duration."""
    stamp = datetime.fromisoformat(event.ts).timestamp() - max(0.0, minus_seconds)
    return int(stamp * 1e9)


def _cut(value: Any) -> str:
    text = "" if value is None else str(value)
    return text if len(text) <= MAX_ATTRIBUTE_CHARS else text[: MAX_ATTRIBUTE_CHARS - 3] + "..."


def _provider_of(model: str) -> str:
    """gen_ai.system for a model name: every endpoint here speaks the OpenAI API."""
    if model.startswith("local"):
        return "llama.cpp"
    if model.startswith("scripted"):
        return "delm_rlm.scripted"
    return "openai"


class OpenTelemetryExporter:
    """Turns a run's trace events into OpenTelemetry spans (see the module docstring).

    tracer_provider: an SDK `TracerProvider` (default: the global one that
    `opentelemetry.trace.set_tracer_provider` set). Call `close()` after the run to end any
    span left open (a run killed before its run_finished event).
    """

    def __init__(self, tracer_provider: Any = None, *, capture_content: bool = False) -> None:
        ot_trace = _otel()
        self._ot = ot_trace
        self._tracer = (tracer_provider.get_tracer(TRACER_NAME) if tracer_provider is not None
                        else ot_trace.get_tracer(TRACER_NAME))
        self.capture_content = capture_content
        self._lock = threading.Lock()
        self._run: Any = None
        self._tasks: dict[tuple[str | None, str | None], Any] = {}  # (agent, task) -> open task span
        self._proposed: dict[str, TraceEvent] = {}  # gist id -> its proposal
        self._goals: dict[str, str] = {}

    # ---- the subscriber ---------------------------------------------------------------------

    def __call__(self, event: TraceEvent) -> None:
        with self._lock:
            handler = getattr(self, f"_on_{event.kind}", None)
            if handler is not None:
                handler(event)

    def close(self) -> None:
        """End every span still open (their end is now)."""
        with self._lock:
            for span in self._tasks.values():
                span.end()
            self._tasks.clear()
            if self._run is not None:
                self._run.end()
                self._run = None

    # ---- spans ------------------------------------------------------------------------------

    def _start(self, name: str, event: TraceEvent, *, parent: Any = None, minus_seconds: float = 0.0,
               kind: Any = None, attributes: dict[str, Any] | None = None) -> Any:
        context = self._ot.set_span_in_context(parent) if parent is not None else None
        extra = {"kind": kind} if kind is not None else {}
        span = self._tracer.start_span(name, context=context, start_time=_ns(event, minus_seconds), **extra)
        for key, value in (attributes or {}).items():
            if value is not None:
                span.set_attribute(key, value)
        return span

    def _parent(self, event: TraceEvent) -> Any:
        return self._tasks.get((event.agent, event.task)) or self._run

    def _error(self, span: Any, message: str) -> None:
        span.set_status(self._ot.Status(self._ot.StatusCode.ERROR, _cut(message)))

    def _on_run_started(self, event: TraceEvent) -> None:
        if self._run is not None:  # a second run on the same trace (a resume): the first ends
            self._run.end(end_time=_ns(event))
        d = event.data
        config = d.get("config") or {}
        self._run = self._start(f"delm-rlm run {d.get('method') or ''}".strip(), event, attributes={
            "delm.method": d.get("method"), "delm.question": _cut(d.get("question")),
            "delm.resumed": bool(config.get("resumed")) if isinstance(config, dict) else None,
            "delm.run_dir": config.get("run_dir") if isinstance(config, dict) else None,
            "gen_ai.request.model": config.get("model") if isinstance(config, dict) else None,
        })

    def _on_run_finished(self, event: TraceEvent) -> None:
        if self._run is None:
            return
        d = event.data
        usage = d.get("usage") if isinstance(d.get("usage"), dict) else {}
        self._run.set_attribute("delm.status", str(d.get("status")))
        if d.get("answer") is not None:
            self._run.set_attribute("delm.answer", _cut(d.get("answer")))
        for key, attr in (("input_tokens", "gen_ai.usage.input_tokens"), ("output_tokens", "gen_ai.usage.output_tokens"),
                          ("calls", "delm.calls"), ("cached_calls", "delm.cached_calls")):
            if usage.get(key) is not None:
                self._run.set_attribute(attr, int(usage[key]))
        if usage.get("cost_usd") is not None:
            self._run.set_attribute("delm.cost_usd", float(usage["cost_usd"]))
        if d.get("status") not in ("answered", None):
            self._error(self._run, f"run ended with status {d.get('status')}")
        for span in self._tasks.values():
            span.end(end_time=_ns(event))
        self._tasks.clear()
        self._run.end(end_time=_ns(event))
        self._run = None

    def _on_task_created(self, event: TraceEvent) -> None:
        if event.task:
            self._goals[event.task] = str(event.data.get("goal", ""))

    def _on_task_claimed(self, event: TraceEvent) -> None:
        key = (event.agent, event.task)
        for earlier in [k for k in self._tasks if k[1] == event.task]:  # a claim whose lease ran out
            span = self._tasks.pop(earlier)
            span.set_attribute("delm.task.outcome", "lease lost")
            span.end(end_time=_ns(event))
        self._tasks[key] = self._start(f"task {event.task}", event, parent=self._run, attributes={
            "delm.task.id": event.task, "delm.agent.id": event.agent, "delm.task.attempt": event.data.get("attempt"),
            "delm.task.goal": _cut(self._goals.get(event.task or "", "")),
        })

    def _end_task(self, event: TraceEvent, outcome: str, error: str | None = None) -> None:
        # The queue reports a requeue or a failure without the agent when it decides alone
        # (a rejected result, a lease that ran out): it ends whichever claim of the task is open.
        keys = [(event.agent, event.task)] if event.agent else [k for k in self._tasks if k[1] == event.task]
        for key in keys:
            span = self._tasks.pop(key, None)
            if span is None:
                continue
            span.set_attribute("delm.task.outcome", outcome)
            if error is not None:
                self._error(span, error)
            span.end(end_time=_ns(event))

    def _on_task_done(self, event: TraceEvent) -> None:
        self._end_task(event, "done")

    def _on_task_failed(self, event: TraceEvent) -> None:
        self._end_task(event, "failed", str(event.data.get("reason", "")))

    def _on_task_requeued(self, event: TraceEvent) -> None:
        self._end_task(event, "requeued", str(event.data.get("reason", "")))

    def _on_model_call(self, event: TraceEvent) -> None:
        d = event.data
        model = str(d.get("model") or "")
        span = self._start(f"chat {model}", event, parent=self._parent(event), minus_seconds=float(d.get("seconds") or 0),
                           kind=self._ot.SpanKind.CLIENT, attributes={
                               "gen_ai.operation.name": "chat", "gen_ai.system": _provider_of(model),
                               "gen_ai.provider.name": _provider_of(model),
                               "gen_ai.request.model": model, "gen_ai.response.model": model,
                               "gen_ai.usage.input_tokens": int(d.get("input_tokens") or 0),
                               "gen_ai.usage.output_tokens": int(d.get("output_tokens") or 0),
                               "delm.role": d.get("role"), "delm.cached": bool(d.get("cached")),
                               "delm.cost_usd": float(d["cost_usd"]) if d.get("cost_usd") is not None else None,
                               "delm.agent.id": event.agent, "delm.task.id": event.task,
                           })
        if self.capture_content:
            span.add_event("gen_ai.content.prompt", {"gen_ai.prompt": _cut(d.get("prompt"))}, timestamp=_ns(event))
            span.add_event("gen_ai.content.completion", {"gen_ai.completion": _cut(d.get("response"))}, timestamp=_ns(event))
        span.end(end_time=_ns(event))

    def _on_model_call_failed(self, event: TraceEvent) -> None:
        d = event.data
        model = str(d.get("model") or "")
        span = self._start(f"chat {model}", event, parent=self._parent(event), minus_seconds=float(d.get("seconds") or 0),
                           kind=self._ot.SpanKind.CLIENT, attributes={
                               "gen_ai.operation.name": "chat", "gen_ai.system": _provider_of(model),
                               "gen_ai.provider.name": _provider_of(model), "gen_ai.request.model": model,
                               "error.type": "model_call_failed", "delm.role": d.get("role"),
                           })
        self._error(span, str(d.get("error", "")))
        span.end(end_time=_ns(event))

    def _on_code_cell(self, event: TraceEvent) -> None:
        d = event.data
        span = self._start("execute_code", event, parent=self._parent(event), minus_seconds=float(d.get("duration_s") or 0),
                           attributes={"delm.iteration": d.get("iteration"), "delm.agent.id": event.agent,
                                       "delm.task.id": event.task, "delm.cell.timed_out": bool(d.get("timed_out")),
                                       "delm.cell.code": _cut(d.get("code")) if self.capture_content else None,
                                       "delm.cell.stdout": _cut(d.get("stdout")) if self.capture_content else None})
        if d.get("error") or d.get("timed_out"):
            self._error(span, str(d.get("error") or "timed out"))
        span.end(end_time=_ns(event))

    def _on_agent_step(self, event: TraceEvent) -> None:
        d = event.data
        iteration = d.get("iteration")
        span = self._start(f"agent_step {iteration}" if iteration is not None else "agent_step", event,
                           parent=self._parent(event), attributes={
                               "delm.agent.id": event.agent, "delm.task.id": event.task,
                               "delm.iteration": iteration, "delm.action": _cut(d.get("action"))})
        span.end(end_time=_ns(event))

    def _on_gist_proposed(self, event: TraceEvent) -> None:
        gist = event.data.get("gist") or {}
        if gist.get("id"):
            self._proposed[str(gist["id"])] = event

    def _verdict(self, event: TraceEvent, verdict: str, reason: Any) -> None:
        gist_id = str(event.data.get("gist_id") or "")
        proposed = self._proposed.pop(gist_id, None)
        start_event = proposed or event
        gist = (proposed.data.get("gist") or {}) if proposed else {}
        parent = self._tasks.get((start_event.agent, start_event.task)) or self._parent(event)
        span = self._start(f"verify {gist_id}".strip(), start_event, parent=parent, attributes={
            "delm.gist.id": gist_id, "delm.gist.kind": gist.get("kind"), "delm.verdict": verdict,
            "delm.verdict.reason": _cut(reason) if reason else None,
            "delm.verdict.checks": ", ".join(map(str, event.data.get("checks") or [])) or None,
            "delm.task.id": start_event.task, "delm.agent.id": start_event.agent,
        })
        if verdict == "rejected":
            self._error(span, str(reason or "rejected"))
        span.end(end_time=_ns(event))

    def _on_gist_admitted(self, event: TraceEvent) -> None:
        self._verdict(event, "admitted", event.data.get("note"))

    def _on_gist_rejected(self, event: TraceEvent) -> None:
        self._verdict(event, "rejected", event.data.get("reason"))

    def _on_gist_merged(self, event: TraceEvent) -> None:
        self._verdict(event, "merged", f"merged into {event.data.get('into')}")

    def _on_finalize(self, event: TraceEvent) -> None:
        if self._run is not None and event.data.get("answer") is not None:
            self._run.set_attribute("delm.answer", _cut(event.data.get("answer")))

    def _on_budget_exceeded(self, event: TraceEvent) -> None:
        if self._run is not None:
            d = event.data
            self._run.add_event("budget_exceeded", {"delm.budget.limit": str(d.get("limit")),
                                                   "delm.budget.used": float(d.get("used") or 0),
                                                   "delm.budget.allowed": float(d.get("allowed") or 0)},
                                timestamp=_ns(event))


def export_trace(events: Iterable[TraceEvent], tracer_provider: Any = None, *, capture_content: bool = False) -> None:
    """Replay the events of a run (e.g. `Trace.load(run_dir / "trace.jsonl")`) as spans."""
    exporter = OpenTelemetryExporter(tracer_provider, capture_content=capture_content)
    for event in events:
        exporter(event)
    exporter.close()


__all__ = ["INSTALL_HINT", "OpenTelemetryExporter", "export_trace"]
