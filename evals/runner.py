"""The evaluation runner: every (task, method) pair once, one JSONL row each, resumable.

`run_eval(bench, data, methods, ...)` loads the benchmark's tasks, runs each method on each
task through one shared LM (every pair gets its own `lm.session()`, so usage is per row),
scores the raw output with the task's official scorer, and appends one `ResultRow` per pair
to the results file, flushed as soon as the pair finishes. Rerunning with the same file skips
the pairs already there; a half-written last line left by a killed run is cut off and that
pair runs again. A method that fails gives an error row, never a crash of the whole run.
"""

from __future__ import annotations

import asyncio
import functools
import importlib.metadata
import subprocess
from collections.abc import Iterable, Sequence
from datetime import datetime, timezone
from pathlib import Path
from typing import TYPE_CHECKING, Any, Literal

from rich.console import Console
from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn

from delm_rlm.errors import ConfigError
from evals.results import ResultRow, load_results, repair_results_file

__all__ = [
    "BENCHES",
    "ROW_METADATA",
    "ResultRow",
    "arun_eval",
    "code_version",
    "load_results",
    "load_tasks",
    "main_eval",
    "main_report",
    "repair_results_file",
    "run_eval",
    "run_pair",
    "summarize",
]

if TYPE_CHECKING:
    from delm_rlm.llm.gateway import LM
    from evals.methods import MethodOptions, MethodResult
    from tasks.model import Task

BENCHES: dict[str, str] = {
    "oolong": "OOLONG-synth rows (parquet / JSONL / JSON, published columns)",
    "oolong-real": "OOLONG-real (D&D) rows (parquet / JSONL / JSON, published columns)",
    "longbench": "LongBench-v2 rows (JSON list or JSONL, official fields)",
}
# Task metadata copied into every row so reports never need the data files again.
ROW_METADATA = ("dataset", "context_len", "task_group", "task", "difficulty", "length", "domain", "variant")


def load_tasks(bench: str, data: str | Path, *, limit: int | None = None, labels: bool = False) -> list[Task]:
    """Tasks of `bench` from `data` (a file or folder in the benchmark's published layout);
    `labels` picks OOLONG-synth's labelled window text."""
    if bench not in BENCHES:
        raise ConfigError(f"unknown bench {bench!r}: use one of {', '.join(BENCHES)}")
    if labels and bench != "oolong":
        raise ConfigError("labels=True (the labelled window text) exists only for --bench oolong")
    if bench in ("oolong", "oolong-real"):
        from tasks.oolong import load as load_oolong

        return load_oolong(data, variant="synth" if bench == "oolong" else "real", labels=labels, limit=limit)
    from tasks.longbench import load as load_longbench

    return load_longbench(data, limit=limit)


def run_eval(
    bench: str,
    data: str | Path | None,
    methods: Sequence[str] | str,
    model: str = "local",
    limit: int | None = None,
    out: str | Path = "results/run.jsonl",
    concurrency: int = 1,
    *,
    lm: LM | None = None,
    tasks: Sequence[Task] | None = None,
    labels: bool = False,
    options: MethodOptions | None = None,
    order: Literal["task", "method"] = "task",
    retry_errors: bool = False,
    timeout_s: float | None = None,
    console: Console | None = None,
    progress: bool = True,
    fresh_cache_dir: str | Path | None = None,
) -> Path:
    """Run `methods` on the tasks of `bench` and append rows to `out`; returns `out`.

    `data` is the benchmark file or folder (ignored when `tasks` is given); `labels` runs
    OOLONG-synth on the labelled window text (task ids get the suffix `-labels`). `model` names the
    LM (`LM(model)`) unless `lm` is given; the row's `model` column is `model` either way.
    `concurrency` bounds the (task, method) pairs in flight. `retry_errors` reruns pairs
    whose stored row is an error. `timeout_s` stops one pair after that many seconds (an
    error row). `order` is "task" (every method on a task, then the next task) or "method".
    `fresh_cache_dir` gives each method a response cache of its own there (see `arun_eval`).
    Blocking; see `arun_eval` inside an event loop.
    """
    return asyncio.run(
        arun_eval(
            bench, data, methods, model, limit, out, concurrency, lm=lm, tasks=tasks, labels=labels, options=options, order=order,
            retry_errors=retry_errors, timeout_s=timeout_s, console=console, progress=progress,
            fresh_cache_dir=fresh_cache_dir,
        )
    )


async def arun_eval(
    bench: str,
    data: str | Path | None,
    methods: Sequence[str] | str,
    model: str = "local",
    limit: int | None = None,
    out: str | Path = "results/run.jsonl",
    concurrency: int = 1,
    *,
    lm: LM | None = None,
    tasks: Sequence[Task] | None = None,
    labels: bool = False,
    options: MethodOptions | None = None,
    order: Literal["task", "method"] = "task",
    retry_errors: bool = False,
    timeout_s: float | None = None,
    console: Console | None = None,
    progress: bool = True,
    fresh_cache_dir: str | Path | None = None,
) -> Path:
    """Run `methods` on the bench's tasks into the JSONL file `out`, resuming what is there.

    `fresh_cache_dir`: each method's calls read and write a response cache of its own
    there (`<method>.sqlite`) instead of `lm`'s, so no method is served replies another
    method's run paid for (benchmarks give it an empty directory: a fresh cache per run)."""
    from evals.methods import parse_methods

    method_names = parse_methods(methods)  # unknown names fail here, before any work
    code_version()  # the code imported now is the code every row of this process comes from
    if concurrency < 1:
        raise ConfigError(f"concurrency must be at least 1, got {concurrency}")
    if tasks is None:
        if data is None:
            raise ConfigError(f"bench {bench!r} needs --data: a file or folder of {BENCHES.get(bench, 'rows')}")
        task_list = load_tasks(bench, data, limit=limit, labels=labels)
    else:
        task_list = list(tasks)[:limit] if limit is not None else list(tasks)
    if not task_list:
        raise ConfigError(f"no tasks to run for bench {bench!r} (data: {data})")

    out_path = Path(out)
    out_path.parent.mkdir(parents=True, exist_ok=True)
    repair_results_file(out_path)
    done: set[tuple[str, str, str, str]] = set()
    if out_path.is_file():
        for row in load_results(out_path):
            if row.status != "error" or not retry_errors:
                done.add(row.key)

    if order == "task":  # a partial run covers every method on its first tasks
        ordered = [(t, m) for t in task_list for m in method_names]
    elif order == "method":  # consecutive prompts share a context: a prefix cache reuses it
        ordered = [(t, m) for m in method_names for t in task_list]
    else:
        raise ConfigError(f"order must be 'task' or 'method', got {order!r}")
    pairs = [(t, m) for t, m in ordered if (bench, t.id, m, model) not in done]
    console = console or Console(stderr=True)
    skipped = len(task_list) * len(method_names) - len(pairs)
    if skipped:
        console.print(f"[dim]resuming {out_path}: {skipped} (task, method) rows already there, skipped[/dim]")
    if not pairs:
        return out_path

    own_lm = lm is None
    if lm is None:
        from delm_rlm.llm.gateway import LM

        lm = LM(model)
    semaphore = asyncio.Semaphore(concurrency)
    scores: dict[str, list[float]] = {m: [] for m in method_names}
    bar = Progress(
        TextColumn("[bold]{task.description}"),
        BarColumn(),
        MofNCompleteColumn(),
        TimeElapsedColumn(),
        TextColumn("{task.fields[scores]}"),
        console=console,
        disable=not progress,
        transient=False,
    )

    def score_line() -> str:
        return "  ".join(f"{m} {100 * sum(s) / len(s):.0f}" for m, s in scores.items() if s)

    try:
        with out_path.open("a", encoding="utf-8") as sink, bar:
            progress_id = bar.add_task(f"{bench} x {','.join(method_names)}", total=len(pairs), scores="")

            async def one(task: Task, method: str) -> None:
                async with semaphore:
                    method_lm = lm if fresh_cache_dir is None else lm.session(
                        cache_path=Path(fresh_cache_dir) / f"{method}.sqlite")
                    try:
                        row = await run_pair(bench, task, method, model, method_lm, options=options,
                                             timeout_s=timeout_s)
                    finally:
                        if method_lm is not lm:
                            method_lm.close_cache()
                # One write per row, flushed: a killed run loses at most the row being written.
                sink.write(row.model_dump_json() + "\n")
                sink.flush()
                scores[method].append(row.score)
                bar.update(progress_id, advance=1, scores=score_line())
                if row.status == "error":
                    bar.console.print(f"[yellow]{method} on {task.id}: {row.error}[/yellow]")

            await asyncio.gather(*(one(t, m) for t, m in pairs))
    finally:
        if own_lm:
            await lm.aclose()
    return out_path


async def run_pair(
    bench: str,
    task: Task,
    method: str,
    model: str,
    lm: LM,
    *,
    options: MethodOptions | None = None,
    timeout_s: float | None = None,
) -> ResultRow:
    """One method on one task, scored: always a row, whatever goes wrong."""
    from evals.methods import run_method
    from evals.scoring import score

    result: MethodResult = await run_method(method, task, lm, options=options, timeout_s=timeout_s)
    row = ResultRow(
        bench=bench,
        task_id=task.id,
        method=method,
        model=model,
        status=result.status,
        answer=result.answer,
        gold=task.answer,
        input_tokens=result.usage.input_tokens,
        output_tokens=result.usage.output_tokens,
        calls=result.usage.calls,
        dollars=result.usage.dollars,
        seconds=round(result.usage.seconds, 3),
        error=result.error,
        usage_by_role={k: v.model_dump() for k, v in result.usage_by_role.items()},
        context_tokens=result.context_tokens,
        detail=result.detail,
        finished_at=datetime.now(timezone.utc).isoformat(timespec="seconds"),
        code_version=code_version(),
        **_row_metadata(task),
    )
    try:
        row.score = score(task, result.answer)
        if task.scorer == "oolong_synth":
            row.score_lenient = score(task, result.answer, lenient=True)
    except Exception as exc:  # a bad gold is a data problem: keep the row, say why
        row.status = "error"
        row.score = 0.0
        row.error = f"scoring failed: {type(exc).__name__}: {exc}"
    return row


@functools.cache
def code_version() -> str:
    """The code that ran: `git describe --always --dirty` of the checkout delm-rlm is
    imported from (a results file may mix rows from several commits; a resumed run shows
    it), else the installed package version. Read once per process, when its first eval
    starts: a commit made while a long benchmark runs is not the code its rows came from."""
    root = Path(__file__).resolve().parent.parent
    try:
        done = subprocess.run(
            ["git", "-C", str(root), "describe", "--always", "--dirty"],
            capture_output=True, text=True, timeout=10,
        )
        if done.returncode == 0 and done.stdout.strip():
            return done.stdout.strip()
    except (OSError, subprocess.TimeoutExpired):
        pass
    try:
        return "delm-rlm " + importlib.metadata.version("delm-rlm")
    except importlib.metadata.PackageNotFoundError:
        return "unknown"


def _row_metadata(task: Task) -> dict[str, Any]:
    meta = dict(task.metadata)
    if task.scorer == "oolong_synth" and "variant" not in meta:
        meta["variant"] = "labelled" if meta.get("labelled") else "unlabelled"
    values: dict[str, Any] = {}
    for name in ROW_METADATA:
        value = meta.get(name)
        if name == "context_len" and value is not None:
            try:
                value = int(value)
            except (TypeError, ValueError):
                value = None
        elif value is not None:
            value = str(value)
        values[name] = value
    return values


def summarize(rows: Iterable[ResultRow]) -> dict[str, float]:
    """Mean official score per method (for quick checks and the CLI's closing line)."""
    by_method: dict[str, list[float]] = {}
    for row in rows:
        by_method.setdefault(row.method, []).append(row.score)
    return {m: sum(s) / len(s) for m, s in by_method.items()}


def main_eval(args: Any) -> int:
    """Entry point for `delm-rlm eval` (argparse namespace with the issue's flag names)."""
    methods = getattr(args, "methods", "direct,rlm,hybrid")
    out = run_eval(
        args.bench,
        getattr(args, "data", None),
        methods,
        model=getattr(args, "model", "local"),
        limit=getattr(args, "limit", None),
        out=getattr(args, "out", "results/run.jsonl"),
        concurrency=getattr(args, "concurrency", 1) or 1,
        labels=getattr(args, "labels", False),
        retry_errors=getattr(args, "retry_errors", False),
        timeout_s=getattr(args, "timeout", None),
    )
    console = Console()
    means = summarize(load_results(out))
    console.print(f"results: {out}  " + "  ".join(f"{m} {100 * s:.1f}" for m, s in means.items()))
    return 0


def main_report(args: Any) -> int:
    """Entry point for `delm-rlm report RESULTS [--markdown PATH] [--plot PATH]`."""
    from delm_rlm.console import out_console
    from evals.report import render_report

    render_report(args.results, markdown=getattr(args, "markdown", None), plot=getattr(args, "plot", None), console=out_console())
    return 0

