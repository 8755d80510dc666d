"""What the `delm-rlm` commands print: a run's answer, the gists it rests on and its usage;
the cost preview; a trace's summary. Every cell is plain text (`rich.text.Text`), never
markup, so a `[label]` in a gist or an error message is printed as it is."""

from __future__ import annotations

from collections import Counter
from pathlib import Path
from typing import TYPE_CHECKING, Any

from rich.console import Console
from rich.table import Table
from rich.text import Text

from delm_rlm.result import format_cost
from delm_rlm.state.opener import open_state
from delm_rlm.state.postgres_conn import is_postgres_url

if TYPE_CHECKING:
    from delm_rlm.llm import Usage
    from delm_rlm.preview import CostPreview
    from delm_rlm.result import Result

STORE_FILE = "store.sqlite"
USAGE_COLUMNS = ("role", "calls", "cached", "input tokens", "output tokens", "model seconds", "cost")


def plain(value: Any) -> Text:
    return Text("" if value is None else str(value))


def print_result(result: Result, run_dir: Path, console: Console) -> None:
    console.print()
    console.rule("answer")
    console.print(result.answer if result.answer is not None else "(no answer)", markup=False, highlight=False)
    if result.status != "answered":
        console.print(f"status: {result.status}" + (f" ({result.error})" if result.error else ""), markup=False)
    print_gists(result, run_dir, console)
    print_usage(result, console)
    console.print(f"run: {run_dir}  (report: delm-rlm trace {run_dir} --html {run_dir / 'report.html'})",
                  markup=False, highlight=False)


def print_gists(result: Result, run_dir: Path, console: Console) -> None:
    if not result.gist_ids:
        return
    store_path = Path(result.store_path) if result.store_path else run_dir / STORE_FILE
    gists: dict[str, Any] = {}
    if result.store_path and is_postgres_url(result.store_path):  # `ask --store`: the run is in PostgreSQL
        store = open_state(result.store_path)
        try:
            gists = {g.get("id"): g for g in store.snapshot().gists}
        finally:
            store.close()
    elif store_path.is_file():
        from delm_rlm.state.sqlite import read_snapshot

        gists = {g.get("id"): g for g in read_snapshot(store_path).gists}
    table = Table(title="the answer rests on", title_justify="left", show_edge=False)
    for col in ("gist", "kind", "text", "verification"):
        table.add_column(col, overflow="fold")
    for gid in result.gist_ids:
        g = gists.get(gid, {})
        table.add_row(plain(gid), plain(str(g.get("kind", "?")).upper()), plain(g.get("text", "")),
                      plain(g.get("note") or g.get("status") or ""))
    console.print(table)


def usage_row(name: str, u: Usage) -> list[Text]:
    return [plain(name), plain(f"{u.calls:,}"), plain(f"{u.cached_calls:,}"), plain(f"{u.input_tokens:,}"),
            plain(f"{u.output_tokens:,}"), plain(f"{u.seconds:.1f}"), plain(format_cost(u.cost_usd))]


def print_usage(result: Result, console: Console) -> None:
    table = Table(title=f"usage ({result.seconds:.1f}s wall clock)", title_justify="left", show_edge=False)
    for col in USAGE_COLUMNS:
        table.add_column(col, justify="right" if col != "role" else "left")
    for role, u in [*result.usage_by_role.items(), ("total", result.usage)]:
        table.add_row(*usage_row(role, u))
    console.print(table)


def print_preview(preview: CostPreview, console: Console, corpus_line: str | None = None) -> None:
    console.print("before the run (an estimate):", markup=False, highlight=False)
    if corpus_line:
        console.print(f"  corpus: {corpus_line}", markup=False, highlight=False)
    for line in preview.lines():
        console.print(f"  {line}", markup=False, highlight=False)


def print_trace_summary(report: Any, console: Console) -> None:
    head = Table(show_header=False, show_edge=False, title="run", title_justify="left")
    head.add_column(style="bold", justify="right")
    head.add_column(overflow="fold")
    head.add_row("question", plain(report.question or "(not recorded)"))
    head.add_row("answer", plain(report.answer))
    head.add_row("status", plain(report.status))
    head.add_row("method", plain(report.method or "?"))
    head.add_row("seconds", f"{report.seconds:.1f}")
    head.add_row("agents", plain(", ".join(a for a in report.lanes() if a != "run") or "-"))
    kinds = Counter(e.kind for e in report.events)
    head.add_row("events", plain(", ".join(f"{k} {n}" for k, n in sorted(kinds.items()))))
    gists = report.gists()
    status = Counter(g.status for g in gists)
    head.add_row("gists", plain(", ".join(f"{s} {n}" for s, n in sorted(status.items())) or "none"))
    console.print(head)
    usage = Table(title="usage by role", title_justify="left", show_edge=False)
    for col in USAGE_COLUMNS:
        usage.add_column(col, justify="left" if col == "role" else "right")
    for role, u in sorted(report.usage_by_role().items()):
        usage.add_row(plain(role), plain(f"{u.calls:,}"), plain(f"{u.cached:,}"), plain(f"{u.input_tokens:,}"),
                      plain(f"{u.output_tokens:,}"), plain(f"{u.seconds:.1f}"), plain(format_cost(u.cost_usd)))
    console.print(usage)
    admitted = [g for g in gists if g.status == "admitted"]
    if admitted:
        table = Table(title="admitted gists", title_justify="left", show_edge=False)
        for col in ("gist", "kind", "text"):
            table.add_column(col, overflow="fold")
        for g in admitted:
            table.add_row(plain(g.gist_id), plain(str(g.gist.get("kind", "?")).upper()), plain(g.gist.get("text", "")))
        console.print(table)


__all__ = ["plain", "print_gists", "print_preview", "print_result", "print_trace_summary", "print_usage", "usage_row"]
