"""Benchmark: the methods compared on OOLONG-style windows and LongBench-v2 dev items.

Not a test: a real run with a real model (by default the offline local model), sized by the
flags. It generates OOLONG-synth-style `trec_coarse` windows from the TREC pool (unlabelled
and labelled text, the same questions on both), picks a spread of question types per window,
adds a few LongBench-v2 dev rows, runs every method through `evals.runner` into one
resumable results file, and prints the report (Markdown and PNG beside the results).

    python -m evals.bench_methods --sizes 8192,32768 --questions 3 --longbench 2 \\
        --methods direct,rlm,orchestrator,hybrid --out results/bench.jsonl

Rerunning the same command resumes: finished (task, method) rows are skipped.
"""

from __future__ import annotations

import argparse
import asyncio
import sys
import tempfile
from collections.abc import Sequence
from pathlib import Path

from rich.console import Console

from delm_rlm.console import out_console
from evals.methods import MethodOptions, parse_methods
from evals.report import render_report
from evals.runner import arun_eval
from tasks.model import Task

REPO_ROOT = Path(__file__).resolve().parent.parent
SHARED_DATA = REPO_ROOT.parent / "shared" / "data"
# Question types in the order they are picked, so a small --questions still spans the task
# groups: a label question, a count, a user question, a timeline question, then the rest.
PREFERRED = (
    ("counting", "TASK_TYPE.MOST_FREQ"),
    ("counting", "TASK_TYPE.NUMERIC_ONE_CLASS"),
    ("user", "TASK_TYPE.MOST_FREQ"),
    ("timeline", "TASK_TYPE.RELATIVE_FREQ"),
    ("counting", "TASK_TYPE.RELATIVE_FREQ"),
    ("counting", "TASK_TYPE.LEAST_FREQ"),
    ("user", "TASK_TYPE.NUMERIC_ONE_CLASS"),
    ("timeline", "TASK_TYPE.REPRESENTED_N_TIMES"),
)


def pick_questions(rows: Sequence[dict], n: int, start: int = 0) -> list[dict]:
    """`n` rows of one window, spread over task groups and types (deterministic). `start`
    rotates the preferred order, so that with one question per window successive windows
    ask different types instead of all asking the first."""
    picked: list[dict] = []
    k = start % len(PREFERRED)
    for group, task in PREFERRED[k:] + PREFERRED[:k]:
        for row in rows:
            if row["task_group"] == group and row["task"] == task and row not in picked:
                picked.append(row)
                break
        if len(picked) >= n:
            return picked
    for row in rows:  # fewer preferred types than asked: fill in row order
        if len(picked) >= n:
            break
        if row not in picked:
            picked.append(row)
    return picked


VARIANTS = ("unlabelled", "labelled")


def parse_variants(text: str) -> tuple[str, ...]:
    """`"unlabelled,labelled"` -> the window texts to run, checked, in the given order."""
    names = tuple(dict.fromkeys(v.strip() for v in text.split(",") if v.strip()))
    unknown = [v for v in names if v not in VARIANTS]
    if unknown or not names:
        raise argparse.ArgumentTypeError(f"--variants takes {' and/or '.join(VARIANTS)}, comma-separated; got {text!r}")
    return names


def parse_team_options(pairs: Sequence[str]) -> dict[str, object]:
    """`["spot_check_sample=0", "plan=split"]` -> Team(...) keyword arguments; values are read
    as JSON where they parse (numbers, booleans, null), else kept as strings."""
    import json

    options: dict[str, object] = {}
    for pair in pairs:
        key, sep, value = pair.partition("=")
        if not sep or not key.strip():
            raise argparse.ArgumentTypeError(f"--team takes KEY=VALUE (a Team(...) argument), got {pair!r}")
        try:
            options[key.strip()] = json.loads(value)
        except json.JSONDecodeError:
            options[key.strip()] = value
    return options


def oolong_tasks(pool: Path, sizes: Sequence[int], windows: int, questions: int, seed: int,
                 variants: Sequence[str] = VARIANTS) -> list[Task]:
    from tasks.oolong import generate, load

    tasks: list[Task] = []
    for size in sizes:
        rows = generate(pool, size, seed=seed, windows=windows)
        by_window: dict[int, list[dict]] = {}
        for row in rows:
            by_window.setdefault(row["context_window_id"], []).append(row)
        chosen = [r for i, window_rows in enumerate(by_window.values())
                  for r in pick_questions(window_rows, questions, start=i)]
        for variant in variants:
            tasks += load(chosen, labels=variant == "labelled")
    return tasks


def longbench_tasks(path: Path, n: int) -> list[Task]:
    from tasks.longbench import load

    # Shortest contexts first: the local model reads prompts at 30-150 tokens/s on 2 cores.
    items = sorted(load(path), key=lambda t: (t.metadata.get("context_words") or 0, t.id))
    return items[:n]


async def bench(args: argparse.Namespace, console: Console) -> Path:
    from delm_rlm.llm.gateway import LM

    methods = parse_methods(args.methods)
    options = MethodOptions(agents=args.agents, max_iterations=args.max_iterations, chunk_chars=args.chunk_chars,
                            team=parse_team_options(args.team))
    sizes = [int(s) for s in args.sizes.split(",") if s.strip()] if args.sizes else []
    lm = LM(args.model)
    # A fresh response cache per method and per invocation (see arun_eval): no method is
    # served replies another method (or an earlier run) paid for; "shared" keeps LM's own.
    fresh = tempfile.TemporaryDirectory(prefix="delm-bench-cache-") if args.cache == "fresh" else None
    cache_dir = fresh.name if fresh is not None else None
    try:
        for size in sizes:
            tasks = oolong_tasks(Path(args.pool), [size], args.windows, args.questions, args.seed, args.variants)
            console.print(f"[bold]OOLONG {size} tokens[/bold]: {len(tasks)} tasks x {len(methods)} methods")
            await arun_eval(
                "oolong", None, methods, args.model, None, args.out, args.concurrency, lm=lm, tasks=tasks,
                options=options, timeout_s=args.timeout, console=console, order=args.order,
                fresh_cache_dir=cache_dir,
            )
        if args.longbench:
            tasks = longbench_tasks(Path(args.longbench_data), args.longbench)
            console.print(f"[bold]LongBench-v2[/bold]: {len(tasks)} tasks x {len(methods)} methods")
            await arun_eval(
                "longbench", None, methods, args.model, None, args.out, args.concurrency, lm=lm, tasks=tasks,
                options=options, timeout_s=args.timeout, console=console, order=args.order,
                fresh_cache_dir=cache_dir,
            )
    finally:
        await lm.aclose()
        if fresh is not None:
            fresh.cleanup()
    return Path(args.out)


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m evals.bench_methods", description=__doc__.split("\n\n")[0])
    parser.add_argument("--methods", default="direct,rlm,orchestrator,hybrid")
    parser.add_argument("--model", default="local")
    parser.add_argument("--sizes", default="8192,32768", help="OOLONG window sizes (tokens), comma-separated")
    parser.add_argument("--windows", type=int, default=1, help="windows per size")
    parser.add_argument("--questions", type=int, default=3, help="questions per window")
    parser.add_argument("--variants", type=parse_variants, default=VARIANTS,
                        help="window texts: unlabelled (labels must be inferred) and/or labelled (`|| Label: x` "
                        "on each line), comma-separated; the same questions on each")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--pool", default=str(SHARED_DATA / "trec" / "train_5500.label"))
    parser.add_argument("--longbench", type=int, default=2, help="LongBench-v2 dev items (0: none)")
    parser.add_argument("--longbench-data", default=str(SHARED_DATA / "longbench_v2" / "multidoc_dev.jsonl"))
    parser.add_argument("--agents", type=int, default=3)
    parser.add_argument("--max-iterations", type=int, default=8)
    parser.add_argument("--chunk-chars", type=int, default=None, help="orchestrator chunk size (default: the team's)")
    parser.add_argument("--team", action="append", default=[], metavar="KEY=VALUE",
                        help="a Team(...) argument for delm and hybrid, e.g. spot_check_sample=0 (repeatable); "
                        "write variants to their own --out file: rows are keyed by task and method")
    parser.add_argument("--cache", choices=("fresh", "shared"), default="fresh",
                        help="fresh: each method gets an empty response cache of its own for this run (default); "
                        "shared: the model's usual cache, replies reused across methods and runs")
    parser.add_argument("--concurrency", type=int, default=1)
    parser.add_argument("--order", choices=("task", "method"), default="method",
                        help="method: each method runs all its tasks in a row (the local server reuses a shared prompt prefix)")
    parser.add_argument("--timeout", type=float, default=600.0, help="seconds per (task, method) before an error row")
    parser.add_argument("--out", default="results/bench.jsonl")
    args = parser.parse_args(argv)
    console = Console(stderr=True)
    out = asyncio.run(bench(args, console))
    stem = out.with_suffix("")
    render_report(out, markdown=f"{stem}.md", plot=f"{stem}.png", console=out_console())
    console.print(f"results: {out}, report: {stem}.md, plot: {stem}.png")
    return 0


if __name__ == "__main__":
    sys.exit(main())
