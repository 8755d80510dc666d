"""Reports over a results file: the tables the papers print, cost, and a score plot.

`render_report(results.jsonl)` reads the rows `evals.runner` wrote (the last row per
(bench, task, method, model) wins, so a retried task replaces its earlier error) and builds:

- a summary per method: tasks, errors, official score, lenient score, tokens, calls, seconds,
  dollars per task and accuracy per dollar ("free (local)" for the offline model, "n/a" when a
  price is unknown: never a division by zero);
- OOLONG: score by context length, by task group and by window variant (labelled or not);
- LongBench-v2: accuracy overall / easy / hard / short / medium / long, and how often an
  answer rested on evidence read from the documents (`evals.evidence`), with its cost;
- a PNG plot of score against context length, one line per method (needs the `report`
  extra: matplotlib). Methods whose points coincide are drawn side by side, each with its
  own marker, and the shared point is labelled with their names, so no line hides another.

Scores are means of the official per-task scores, printed x100 with the number of tasks in
parentheses, as in the papers' tables.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from rich.console import Console
from rich.table import Table as RichTable

from delm_rlm.errors import DatasetError
from evals.evidence import JUDGED_METHODS
from evals.results import ResultRow, load_results

# The papers' column order for LongBench-v2.
LONGBENCH_COLUMNS: tuple[tuple[str, Callable[[ResultRow], bool]], ...] = (
    ("overall", lambda r: True),
    ("easy", lambda r: r.difficulty == "easy"),
    ("hard", lambda r: r.difficulty == "hard"),
    ("short", lambda r: r.length == "short"),
    ("medium", lambda r: r.length == "medium"),
    ("long", lambda r: r.length == "long"),
)
OOLONG_BENCHES = ("oolong", "oolong-real")
TASK_GROUP_ORDER = ("counting", "user", "timeline")
MARKERS = ("o", "s", "^", "D", "v", "P", "X")
PLOT_HINT = "pip install 'delm-rlm[report]' (matplotlib)"


@dataclass
class ReportTable:
    """One table, rendered identically to the terminal and to Markdown."""

    title: str
    columns: list[str]
    rows: list[list[str]]
    caption: str = ""


@dataclass
class Report:
    tables: list[ReportTable] = field(default_factory=list)
    rows: list[ResultRow] = field(default_factory=list)

    def markdown(self) -> str:
        parts: list[str] = []
        for table in self.tables:
            parts.append(f"### {table.title}\n")
            parts.append("| " + " | ".join(table.columns) + " |")
            parts.append("|" + "|".join("---" if i == 0 else "---:" for i in range(len(table.columns))) + "|")
            for row in table.rows:
                parts.append("| " + " | ".join(cell.replace("|", "\\|") for cell in row) + " |")
            if table.caption:
                parts.append(f"\n{table.caption}")
            parts.append("")
        return "\n".join(parts).rstrip() + "\n"

    def print(self, console: Console) -> None:
        for table in self.tables:
            rich_table = RichTable(title=table.title, caption=table.caption or None, title_justify="left")
            for i, column in enumerate(table.columns):
                rich_table.add_column(column, justify="left" if i == 0 else "right", no_wrap=i == 0)
            for row in table.rows:
                rich_table.add_row(*row)
            console.print(rich_table)


def render_report(
    results_path: str | Path,
    markdown: str | Path | None = None,
    plot: str | Path | None = None,
    console: Console | None = None,
) -> Report:
    """Build the report for `results_path`; print it to `console` when given, write Markdown
    to `markdown` and a PNG to `plot` when given. Returns the tables."""
    rows = load_results(results_path)
    if not rows:
        raise DatasetError(results_path, None, None, "no result rows; run `delm-rlm eval` first")
    report = build_report(rows)
    if console is not None:
        report.print(console)
    if markdown is not None:
        path = Path(markdown)
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(f"# Results: {Path(results_path).name}\n\n" + report.markdown(), encoding="utf-8")
    if plot is not None:
        plot_scores(rows, plot)
    return report


def build_report(rows: Sequence[ResultRow]) -> Report:
    report = Report(rows=list(rows))
    methods = _ordered_methods(rows)
    report.tables.append(summary_table(rows, methods))
    oolong = [r for r in rows if r.bench in OOLONG_BENCHES]
    if oolong:
        lengths = sorted({r.context_len for r in oolong if r.context_len is not None})
        if lengths:
            report.tables.append(
                _grouped_table(
                    "OOLONG: score by context length",
                    oolong,
                    methods,
                    [(_length_label(n), (lambda r, n=n: r.context_len == n)) for n in lengths]
                    + [("all", lambda r: True)],
                )
            )
        groups = sorted({r.task_group for r in oolong if r.task_group}, key=_group_key)
        if groups:
            report.tables.append(
                _grouped_table(
                    "OOLONG: score by task group",
                    oolong,
                    methods,
                    [(g, (lambda r, g=g: r.task_group == g)) for g in groups],
                )
            )
        variants = sorted({r.variant for r in oolong if r.variant})
        if len(variants) > 1:
            report.tables.append(
                _grouped_table(
                    "OOLONG: score by window variant",
                    oolong,
                    methods,
                    [(v, (lambda r, v=v: r.variant == v)) for v in variants],
                )
            )
    audited = [r for r in rows if r.detail.get("labels")]
    if audited:
        report.tables.append(label_table(rows, methods))
    longbench = [r for r in rows if r.bench == "longbench"]
    if longbench:
        report.tables.append(
            _grouped_table("LongBench-v2: accuracy", longbench, methods, list(LONGBENCH_COLUMNS))
        )
        report.tables.append(evidence_table(longbench, methods))
    return report


def summary_table(rows: Sequence[ResultRow], methods: Sequence[str]) -> ReportTable:
    columns = [
        "method", "bench", "tasks", "errors", "score", "lenient", "tokens in/task",
        "tokens out/task", "calls/task", "s/task", "$/task", "score per $",
    ]
    table_rows: list[list[str]] = []
    order = (*OOLONG_BENCHES, "longbench")
    benches = sorted({r.bench for r in rows}, key=lambda b: (order.index(b) if b in order else len(order), b))
    for bench in benches:
        for method in methods:
            group = [r for r in rows if r.method == method and r.bench == bench]
            if not group:
                continue
            n = len(group)
            errors = sum(1 for r in group if r.status == "error")
            mean_score = _mean(r.score for r in group)
            lenient = [r.score_lenient for r in group if r.score_lenient is not None]
            table_rows.append(
                [
                    method,
                    bench,
                    str(n),
                    str(errors),
                    _pct(mean_score),
                    _pct(_mean(lenient)) if lenient else "-",
                    f"{_mean(r.input_tokens for r in group):,.0f}",
                    f"{_mean(r.output_tokens for r in group):,.0f}",
                    f"{_mean(r.calls for r in group):.1f}",
                    f"{_mean(r.seconds for r in group):.1f}",
                    dollars_per_task(group),
                    _score_per_dollar(group, mean_score),
                ]
            )
    return ReportTable(
        title="Summary per method",
        columns=columns,
        rows=table_rows,
        caption="score: mean official score x100 (errors count 0); lenient: the documented lenient "
        "synth scorer, reported beside, never instead; score per $: score points per dollar per task.",
    )


def label_table(rows: Sequence[ResultRow], methods: Sequence[str]) -> ReportTable:
    """How right the labels a run's classify() calls gave were (rows measured by
    `evals.labels`: OOLONG-synth tasks whose run used classify)."""
    table_rows: list[list[str]] = []
    for method in methods:
        mine = [r for r in rows if r.method == method and r.bench in OOLONG_BENCHES]
        audits = [r.detail["labels"] for r in mine if r.detail.get("labels")]
        if not mine:
            continue
        accuracies = [a["accuracy"] for a in audits if a.get("accuracy") is not None]
        table_rows.append([
            method,
            f"{len(audits)} of {len(mine)}",
            _pct(_mean(accuracies)) if accuracies else "-",
            _pct(_mean(a["coverage"] for a in audits)) if audits else "-",
            f"{_mean(a['calls'] for a in audits):.1f}" if audits else "-",
        ])
    return ReportTable(
        title="OOLONG: labels given by classify() against the window's true labels",
        columns=["method", "tasks measured", "label accuracy", "lines labelled", "classify calls/task"],
        rows=table_rows,
        caption="label accuracy: share of labelled lines whose final label is the true one; lines "
        "labelled: share of the window's lines some call labelled; a task whose run never called "
        "classify (e.g. labels read from the text, or asked with llm_query) is not measured.",
    )


def evidence_table(rows: Sequence[ResultRow], methods: Sequence[str]) -> ReportTable:
    """LongBench-v2: how often an answer rested on evidence read from the documents
    (`evals.evidence`), beside what the items cost."""
    table_rows: list[list[str]] = []
    for method in methods:
        mine = [r for r in rows if r.method == method]
        if not mine:
            continue
        judged = [r.detail["evidence"] for r in mine if isinstance(r.detail.get("evidence"), dict)]
        if method in JUDGED_METHODS:  # a run that gave no answer (a timeout) rested on nothing
            judged += [{"read": False} for r in mine if not r.answer and "evidence" not in r.detail]
        read = sum(1 for e in judged if e.get("read"))
        read_right = sum(1 for r in mine if (r.detail.get("evidence") or {}).get("read") and r.score >= 1.0)
        table_rows.append([
            method,
            str(len(mine)),
            f"{read} of {len(judged)}" if judged else "-",
            f"{read_right} of {read}" if judged and read else "-",
            f"{_mean(r.input_tokens for r in mine):,.0f}",
            f"{_mean(r.calls for r in mine):.1f}",
            f"{_mean(r.seconds for r in mine):.1f}",
        ])
    return ReportTable(
        title="LongBench-v2: answers resting on read evidence, and cost",
        columns=["method", "items", "rested on read evidence", "of those right", "tokens in/item",
                 "calls/item", "s/item"],
        rows=table_rows,
        caption="rested on read evidence: team answers from an admitted gist whose quote is found in the "
        "documents; rlm answers after an llm_query call or printing a passage of them; a run with no "
        "answer (timed out) counts as not; direct and orchestrator put the text in the prompt and are "
        "not judged (-).",
    )


def _grouped_table(
    title: str,
    rows: Sequence[ResultRow],
    methods: Sequence[str],
    columns: Sequence[tuple[str, Callable[[ResultRow], bool]]],
) -> ReportTable:
    table_rows: list[list[str]] = []
    for method in methods:
        mine = [r for r in rows if r.method == method]
        if not mine:
            continue
        cells = [method]
        for _, keep in columns:
            picked = [r for r in mine if keep(r)]
            cells.append(f"{_pct(_mean(r.score for r in picked))} ({len(picked)})" if picked else "-")
        table_rows.append(cells)
    return ReportTable(
        title=title,
        columns=["method", *[name for name, _ in columns]],
        rows=table_rows,
        caption="mean official score x100 (tasks)",
    )


def plot_scores(rows: Sequence[ResultRow], path: str | Path) -> Path:
    """Score against context length, one line per method (OOLONG: nominal window tokens on a
    log axis; LongBench-v2: its short / medium / long buckets)."""
    try:
        import matplotlib
    except ImportError as exc:
        raise ImportError(f"the plot needs matplotlib: {PLOT_HINT}", name=exc.name) from exc

    matplotlib.use("Agg")  # no display here, and never pop a window from a CLI
    import matplotlib.pyplot as plt

    methods = _ordered_methods(rows)
    marker = {m: MARKERS[i % len(MARKERS)] for i, m in enumerate(methods)}
    oolong = [r for r in rows if r.bench in OOLONG_BENCHES and r.context_len is not None]
    longbench = [r for r in rows if r.bench == "longbench"]
    panels = [p for p in (("oolong", oolong), ("longbench", longbench)) if p[1]]
    if not panels:  # e.g. OOLONG rows without a context length: plot per method instead
        panels = [("all", list(rows))]
    fig, axes = plt.subplots(1, len(panels), figsize=(6 * len(panels), 4.2), squeeze=False)
    for ax, (kind, panel_rows) in zip(axes[0], panels):
        if kind == "all":
            for method in methods:
                mine = [r for r in panel_rows if r.method == method]
                if mine:
                    ax.bar(method, 100 * _mean(r.score for r in mine), label=method)
        else:
            series = score_series(kind, panel_rows, methods)
            positions = sorted({x for points in series.values() for x, _ in points}, key=_x_order)
            index = {x: i for i, x in enumerate(positions)}
            for x, y, shared in overlapping_points(series):
                ax.annotate("=".join(shared), (_dodged(kind, index[x], x, 0, 1), y), textcoords="offset points",
                            xytext=(0, 7), ha="center", fontsize=7, color="0.3")
            for method, points in series.items():
                xs = [_dodged(kind, index[x], x, *_slot(series, method, x, y)) for x, y in points]
                ax.plot(xs, [y for _, y in points], marker=marker[method], label=method, alpha=0.85)
            if kind == "longbench":
                ax.set_xticks(range(len(positions)), [str(p) for p in positions])
                ax.set_xlim(-0.5, len(positions) - 0.5)
        if kind == "oolong":
            ax.set_xscale("log", base=2)
            ticks = sorted({r.context_len for r in panel_rows if r.context_len is not None})
            ax.set_xticks(ticks, [_length_label(t) for t in ticks])
            ax.set_xlabel("context length (tokens, nominal)")
            ax.set_title("OOLONG")
        elif kind == "longbench":
            ax.set_xlabel("LongBench-v2 length bucket")
            ax.set_title("LongBench-v2")
        ax.set_ylabel("score (x100)")
        ax.set_ylim(-2, 108)  # room above 100 for the label of a shared point
        ax.grid(alpha=0.3)
        ax.legend()
    fig.tight_layout()
    out = Path(path)
    out.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(out, dpi=120)
    plt.close(fig)
    return out


def score_series(kind: str, rows: Sequence[ResultRow], methods: Sequence[str]) -> dict[str, list[tuple[int | str, float]]]:
    """Per method, (x, score x100) points: x a context length (oolong) or a length bucket."""
    out: dict[str, list[tuple[int | str, float]]] = {}
    for method in methods:
        mine = [r for r in rows if r.method == method]
        if kind == "oolong":
            xs: list[int | str] = sorted({r.context_len for r in mine if r.context_len is not None})
            points = [(x, 100 * _mean(r.score for r in mine if r.context_len == x)) for x in xs]
        else:
            buckets = [b for b in ("short", "medium", "long") if any(r.length == b for r in mine)]
            points = [(b, 100 * _mean(r.score for r in mine if r.length == b)) for b in buckets]
        if points:
            out[method] = points
    return out


def overlapping_points(series: dict[str, list[tuple[int | str, float]]]) -> list[tuple[int | str, float, list[str]]]:
    """Points two or more methods share (same x, same score): (x, y, the methods)."""
    at: dict[tuple[int | str, float], list[str]] = {}
    for method, points in series.items():
        for x, y in points:
            at.setdefault((x, round(y, 6)), []).append(method)
    return [(x, y, names) for (x, y), names in at.items() if len(names) > 1]


def _slot(series: dict[str, list[tuple[int | str, float]]], method: str, x: int | str, y: float) -> tuple[int, int]:
    """This method's place among the methods sharing its point (x, y), and how many share it."""
    sharing = [m for m, points in series.items() if any(px == x and abs(py - y) < 1e-6 for px, py in points)]
    return sharing.index(method), len(sharing)


def _dodged(kind: str, position: int, x: int | str, slot: int, count: int) -> float:
    """x moved aside for the `slot`-th of `count` methods on one point (log axis: a factor)."""
    offset = (slot - (count - 1) / 2) * 0.08 if count > 1 else 0.0
    if kind == "oolong":
        return float(x) * (2 ** offset)  # type: ignore[arg-type]
    return position + offset


def _x_order(x: int | str) -> tuple[int, Any]:
    order = ("short", "medium", "long")
    return (0, x) if isinstance(x, int) else (1, order.index(x) if x in order else len(order))


def _ordered_methods(rows: Iterable[ResultRow]) -> list[str]:
    from delm_rlm.methods import METHOD_NAMES

    present = {r.method for r in rows}
    known = [m for m in METHOD_NAMES if m in present]
    return known + sorted(present - set(known))


def _mean_dollars(group: Sequence[ResultRow]) -> float | None:
    """Mean dollars per task, or None when any row's price is unknown."""
    dollars = [r.dollars for r in group]
    if any(d is None for d in dollars):
        return None
    return _mean(d for d in dollars if d is not None)


def dollars_per_task(group: Sequence[ResultRow]) -> str:
    mean = _mean_dollars(group)
    if mean is None:
        return "unknown"  # the same word for an unknown cost as every other report
    if mean == 0:
        return _free_label(group)
    return f"${mean:.4f}"


def _score_per_dollar(group: Sequence[ResultRow], mean_score: float) -> str:
    mean = _mean_dollars(group)
    if mean is None:
        return "n/a (price unknown)"
    if mean == 0:
        return _free_label(group)
    return f"{100 * mean_score / mean:,.1f}"


def _free_label(group: Sequence[ResultRow]) -> str:
    return "free (local)" if all(r.model.startswith("local") for r in group) else "free"


def _mean(values: Iterable[float]) -> float:
    items = list(values)
    return sum(items) / len(items) if items else 0.0


def _pct(value: float) -> str:
    return f"{100 * value:.1f}"


def _length_label(tokens: int) -> str:
    if tokens >= 1024 * 1024 and tokens % (1024 * 1024) == 0:
        return f"{tokens // (1024 * 1024)}M"
    if tokens >= 1024 and tokens % 1024 == 0:
        return f"{tokens // 1024}K"
    return str(tokens)


def _group_key(group: str) -> tuple[int, str]:
    return (TASK_GROUP_ORDER.index(group) if group in TASK_GROUP_ORDER else len(TASK_GROUP_ORDER), group)

