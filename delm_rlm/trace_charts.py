"""The run report's two pictures, as inline SVG (no script, nothing fetched):

- `timeline_svg(events)`: a Gantt chart, one row per agent, one bar per task it worked on
  (claimed until done, failed or requeued; the finalizer's round too), model calls as ticks
  inside the bars; times are wall-clock (`ts`), so a resumed run's sessions line up.
- `answer_graph_svg(gists, answer, totals)`: the admitted gists the answer rests on, each
  with its claimed value, joined to the answer, with the finalizer's printed totals beside it.

Every string from a run is escaped; each bar and box has a <title> for its details.
"""

from __future__ import annotations

import html
import json
import re
from collections.abc import Sequence
from dataclasses import dataclass
from datetime import datetime
from typing import Any

from delm_rlm.chunking import task_label
from delm_rlm.trace import TraceEvent

WIDTH = 960
LABEL_W = 90
ROW_H = 26
MAX_GRAPH_GISTS = 40
_COLORS = {"done": "#5b9b6b", "failed": "#c4574f", "requeued": "#d39b3f", "open": "#8a94a6", "final": "#2957c4"}


def esc(value: Any) -> str:
    return html.escape("" if value is None else str(value), quote=True)


@dataclass
class Bar:
    agent: str
    task: str
    start: float
    end: float
    outcome: str
    label: str = ""


def _seconds(event: TraceEvent, origin: datetime) -> float:
    return (datetime.fromisoformat(event.ts) - origin).total_seconds()


def task_bars(events: Sequence[TraceEvent], names: Sequence[str] | None = None) -> tuple[list[Bar], list[tuple[str, float, float]], float]:
    """Bars (one per claim of a task by an agent), model-call ticks (agent, start, end) and
    the run's length in seconds, from the events' wall-clock times."""
    if not events:
        return [], [], 0.0
    origin = datetime.fromisoformat(events[0].ts)
    goals: dict[str, str] = {}
    open_bars: dict[tuple[str, str], Bar] = {}
    bars: list[Bar] = []
    ticks: list[tuple[str, float, float]] = []
    end_of_run = 0.0
    for e in events:
        t = _seconds(e, origin)
        end_of_run = max(end_of_run, t)
        if e.kind == "task_created" and e.task:
            goals[e.task] = str(e.data.get("goal", ""))
        elif e.kind == "task_claimed" and e.agent and e.task:
            for key in [k for k in open_bars if k[1] == e.task]:  # an earlier claim lost its lease
                bars.append(_closed(open_bars.pop(key), "requeued"))
            open_bars[(e.agent, e.task)] = Bar(e.agent, e.task, t, t, "open", task_label(goals.get(e.task, ""), names))
        elif e.kind in ("task_done", "task_failed", "task_requeued") and e.task:
            # The queue may report a requeue without the agent (a lease that ran out).
            keys = [(e.agent, e.task)] if e.agent else [k for k in open_bars if k[1] == e.task]
            for key in keys:
                bar = open_bars.pop(key, None)
                if bar is not None:
                    bar.end = t
                    bars.append(_closed(bar, {"task_done": "done", "task_failed": "failed"}.get(e.kind, "requeued")))
        elif e.agent and e.task and e.kind in ("model_call", "code_cell", "agent_step", "finalize"):
            key = (e.agent, e.task)
            if key not in open_bars and e.task == "final":  # the finalizer's round has no claim event
                open_bars[key] = Bar(e.agent, e.task, t, t, "final", "finalize")
            if e.kind == "model_call":
                ticks.append((e.agent, max(0.0, t - float(e.data.get("seconds") or 0)), t))
            if key in open_bars:
                open_bars[key].end = t
    for bar in open_bars.values():  # still open when the trace ends (a killed run, the finalizer)
        bar.end = max(bar.end, bar.start)
        bars.append(bar)
    return sorted(bars, key=lambda b: (b.start, b.agent)), ticks, end_of_run


def _closed(bar: Bar, outcome: str) -> Bar:
    bar.outcome = outcome
    return bar


def _natural(name: str) -> list[Any]:
    return [int(p) if p.isdigit() else p for p in re.split(r"(\d+)", name)]


def timeline_svg(events: Sequence[TraceEvent], names: Sequence[str] | None = None) -> str:
    """The Gantt chart of a run ('' when no agent worked on a task)."""
    bars, ticks, length = task_bars(events, names)
    if not bars:
        return ""
    agents = sorted({b.agent for b in bars}, key=_natural)
    row = {a: i for i, a in enumerate(agents)}
    span = max(length, 1e-3)
    plot_w = WIDTH - LABEL_W - 10
    height = ROW_H * len(agents) + 30

    def x(t: float) -> float:
        return LABEL_W + plot_w * max(0.0, min(t, span)) / span

    parts = [f'<svg class="gantt" role="img" aria-label="timeline per agent" width="{WIDTH}" height="{height}" '
             f'viewBox="0 0 {WIDTH} {height}">']
    for a, i in row.items():
        y = i * ROW_H
        parts.append(f'<text x="4" y="{y + 17}" class="lane-label">{esc(a)}</text>'
                     f'<line x1="{LABEL_W}" y1="{y + ROW_H}" x2="{WIDTH - 10}" y2="{y + ROW_H}" class="grid"/>')
    for b in bars:
        y = row[b.agent] * ROW_H + 4
        w = max(2.0, x(b.end) - x(b.start))
        tip = f"{b.task} ({b.outcome}) {b.label}: {b.start:.1f}s - {b.end:.1f}s ({b.end - b.start:.1f}s) by {b.agent}"
        parts.append(f'<g class="bar {esc(b.outcome)}"><title>{esc(tip)}</title>'
                     f'<rect x="{x(b.start):.1f}" y="{y}" width="{w:.1f}" height="{ROW_H - 8}" rx="3" '
                     f'fill="{_COLORS.get(b.outcome, _COLORS["open"])}"/>'
                     + (f'<text x="{x(b.start) + 3:.1f}" y="{y + 13}" class="bar-label">{esc(b.task)}</text>' if w > 24 else "")
                     + "</g>")
    for agent, start, end in ticks:
        if agent in row:
            y = row[agent] * ROW_H + ROW_H - 6
            parts.append(f'<rect class="tick" x="{x(start):.1f}" y="{y}" width="{max(1.0, x(end) - x(start)):.1f}" height="3"/>')
    axis_y = ROW_H * len(agents) + 14
    for k in range(6):
        t = span * k / 5
        parts.append(f'<text x="{x(t):.1f}" y="{axis_y + 10}" class="axis" text-anchor="middle">{t:.1f}s</text>')
    parts.append("</svg>")
    legend = " ".join(f'<span class="swatch" style="background:{c}"></span>{esc(k)}' for k, c in _COLORS.items()
                      if any(b.outcome == k for b in bars))
    return f'<div class="chart">{"".join(parts)}<p class="muted legend">{legend} · ticks: model calls</p></div>'


def answer_graph_svg(gists: Sequence[dict[str, Any]], answer: str | None, totals: str | None = None) -> str:
    """Gists (dicts with id, kind, text, value) joined to the answer box, with `totals` (the
    finalizer's printed output) beside it ('' when the answer rests on no gist)."""
    if not gists:
        return ""
    shown = list(gists[:MAX_GRAPH_GISTS])
    box_h, gap = 34, 8
    left_w, right_x = 430, 560
    top = 8
    height = max(top + len(shown) * (box_h + gap) + (24 if len(gists) > len(shown) else 0), 90)
    answer_y = max(top, height / 2 - 30)
    parts = [f'<svg class="answer-graph" role="img" aria-label="gists the answer rests on" width="{WIDTH}" '
             f'height="{height:.0f}" viewBox="0 0 {WIDTH} {height:.0f}">']
    for i, g in enumerate(shown):
        y = top + i * (box_h + gap)
        value = json.dumps(g.get("value"), default=str, ensure_ascii=False) if g.get("value") is not None else ""
        text = str(g.get("text") or "")
        short = text if len(text) <= 56 else text[:53] + "..."
        gid = str(g.get("id") or "?")
        parts.append(
            f'<path class="edge" d="M{left_w} {y + box_h / 2:.0f} C{(left_w + right_x) / 2} {y + box_h / 2:.0f} '
            f'{(left_w + right_x) / 2} {answer_y + 30:.0f} {right_x} {answer_y + 30:.0f}"/>'
            f'<a href="#gist-{esc(re.sub(r"[^A-Za-z0-9_-]", "_", gid))}"><g class="node"><title>{esc(text)}</title>'
            f'<rect x="0" y="{y}" width="{left_w}" height="{box_h}" rx="4"/>'
            f'<text x="8" y="{y + 14}" class="node-id">{esc(gid)} {esc(str(g.get("kind") or "").upper())}'
            + (f' = {esc(value if len(value) <= 40 else value[:37] + "...")}' if value else "")
            + f'</text><text x="8" y="{y + 28}" class="node-text">{esc(short)}</text></g></a>'
        )
    if len(gists) > len(shown):
        parts.append(f'<text x="8" y="{height - 6:.0f}" class="axis">... and {len(gists) - len(shown)} more gists</text>')
    ans = "(no answer)" if answer is None else answer
    parts.append(f'<g class="answer-node"><title>{esc(ans)}</title><rect x="{right_x}" y="{answer_y:.0f}" width="{WIDTH - right_x - 10}" '
                 f'height="60" rx="6"/><text x="{right_x + 10}" y="{answer_y + 24:.0f}" class="node-id">answer</text>'
                 f'<text x="{right_x + 10}" y="{answer_y + 44:.0f}" class="answer-text">{esc(ans if len(ans) <= 44 else ans[:41] + "...")}</text></g>')
    parts.append("</svg>")
    totals_html = (f'<div class="totals"><div class="label">the finalizer\'s totals (its last cell\'s output)</div>'
                   f'<pre class="out">{esc(totals)}</pre></div>') if totals else ""
    return f'<div class="chart graph">{"".join(parts)}{totals_html}</div>'


CHART_CSS = """
.chart{overflow-x:auto;margin:6px 0 12px}.chart svg{background:var(--card);border:1px solid var(--line);border-radius:6px}
.gantt .lane-label{font:12px ui-monospace,monospace;fill:var(--fg)}.gantt .grid{stroke:var(--line)}
.gantt .bar-label{font:10px ui-monospace,monospace;fill:#fff}.gantt .tick{fill:#1d232b;opacity:.55}
.axis{font:10px ui-monospace,monospace;fill:var(--muted)}.legend{font-size:12px}
.swatch{display:inline-block;width:10px;height:10px;border-radius:2px;margin:0 3px 0 8px}
.answer-graph .edge{fill:none;stroke:#9aa4b5;stroke-width:1.5}.answer-graph .node rect{fill:#eef7ee;stroke:#b9dcbc}
.answer-graph .node-id{font:600 12px ui-monospace,monospace;fill:var(--fg)}.answer-graph .node-text{font:11px system-ui,sans-serif;fill:var(--muted)}
.answer-graph .answer-node rect{fill:#e8eefb;stroke:var(--accent)}.answer-graph .answer-text{font:600 14px system-ui,sans-serif;fill:var(--fg)}
.graph{display:flex;gap:12px;align-items:flex-start;flex-wrap:wrap}.totals{min-width:220px;max-width:420px}
"""

__all__ = ["CHART_CSS", "Bar", "answer_graph_svg", "task_bars", "timeline_svg"]
