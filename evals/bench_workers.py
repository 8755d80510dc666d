"""Wall clock of one team run with 1 versus N worker processes on PostgreSQL (a benchmark, not
a test).

One OOLONG-style labelled window (`--length` tokens of TREC lines, "how many data points should
be classified as label X?"), split into chunk tasks (`plan="split"`). For each process count
the same window runs as a fresh run: the coordinating process (`Team(store=URL).run`) plus
N-1 `Team.join` workers, each with `--agents` agents and its own kernels, all on this machine.
The model is a ScriptedLM with `--delay` seconds per call, standing in for an API model's
latency: with the offline local model every process would start its own llama.cpp server on
the same two cores, which measures the cores, not the team. Reported per process count: wall
clock (start to the coordinator's exit), speedup against 1 process, the answer against the
gold, the coordinating process's model calls, and how many chunk tasks each process did.

    PYTHONPATH=tests python -m evals.bench_workers --postgres-url postgresql://me@db/bench \\
        --model scripted:scripted_models:team_counter --length 128000 --processes 1 3 --delay 2
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import subprocess
import sys
import tempfile
import time
from collections import Counter
from pathlib import Path
from typing import Any

from rich.console import Console
from rich.table import Table

from delm_rlm.gists import GistKind
from delm_rlm.state.opener import open_state
from delm_rlm.state.postgres import delete_run
from delm_rlm.state.postgres_conn import parse_postgres_url

REPO = Path(__file__).resolve().parent.parent
POOL = REPO.parent / "shared" / "data" / "trec" / "train_5500.label"


def scripted_lm(model: str, delay: float) -> Any:
    from delm_rlm.llm.scripted import ScriptedLM, load_script

    if not model.startswith("scripted:"):
        raise SystemExit("--model must be scripted:module:attribute (see the module docstring for why)")
    return ScriptedLM(load_script(model.removeprefix("scripted:")), delay=delay)


def coordinate(args: argparse.Namespace) -> None:
    """The coordinating process: start the run, print its result as JSON."""
    from delm_rlm import Team

    spec = json.loads(Path(args.spec).read_text())
    team = Team(scripted_lm(args.model, args.delay), agents=args.agents, plan="split", run_dir=args.run_dir,
                store=args.postgres_url, chunk_tokens=args.chunk_tokens, max_tasks=256)
    result = asyncio.run(team.run(spec["question"], spec["context"]))
    print(result.to_json())


def work(args: argparse.Namespace) -> None:
    from delm_rlm import Team

    result = asyncio.run(Team.join(args.postgres_url, lm=scripted_lm(args.model, args.delay), run_id=args.run_id,
                                   agents=args.agents, run_dir=args.run_dir))
    print(json.dumps({"status": result.status, "answer": result.answer}))


def one_run(args: argparse.Namespace, spec_path: Path, processes: int, scratch: Path) -> dict[str, Any]:
    base = [sys.executable, "-m", "evals.bench_workers", "--postgres-url", args.postgres_url, "--model", args.model,
            "--delay", str(args.delay), "--agents", str(args.agents), "--chunk-tokens", str(args.chunk_tokens)]
    env = dict(os.environ)
    run_dir = scratch / f"run-{processes}"
    started = time.monotonic()
    coordinator = subprocess.Popen(base + ["--as-coordinator", str(spec_path), "--run-dir", str(run_dir)],
                                   env=env, stdout=subprocess.PIPE, text=True)
    url_file = run_dir / "store.url"
    while not url_file.exists() or not url_file.read_text().strip():
        if coordinator.poll() is not None:
            raise SystemExit(f"the coordinator exited early (rc {coordinator.returncode})")
        time.sleep(0.05)
    run_id = str(parse_postgres_url(url_file.read_text().strip()).run_id)
    workers = [subprocess.Popen(base + ["--as-worker", run_id, "--run-dir", str(scratch / f"w{processes}-{i}")],
                                env=env, stdout=subprocess.PIPE, text=True) for i in range(processes - 1)]
    out, _ = coordinator.communicate()
    seconds = time.monotonic() - started
    for w in workers:
        w.communicate(timeout=120)
    result = json.loads(out)
    store = open_state(args.postgres_url, run_id=run_id)
    try:
        partials = store.list_gists(status="admitted", kinds=GistKind.PARTIAL)
        by_process = Counter(g.provenance.agent_id.rsplit(".", 1)[0] if "." in g.provenance.agent_id
                             else "coordinator" for g in partials)
    finally:
        store.close()
        delete_run(args.postgres_url, run_id)
    return {"processes": processes, "seconds": round(seconds, 1), "answer": result.get("answer"),
            "status": result.get("status"), "calls": result.get("usage", {}).get("calls"),
            "tasks_by_process": sorted(by_process.values(), reverse=True)}


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--postgres-url", default=os.environ.get("DELM_RLM_TEST_POSTGRES_URL"))
    parser.add_argument("--model", default="scripted:scripted_models:team_counter")
    parser.add_argument("--delay", type=float, default=2.0, help="seconds per model call (an API model's latency)")
    parser.add_argument("--length", type=int, default=128000, help="window size in tokens")
    parser.add_argument("--processes", type=int, nargs="+", default=[1, 3])
    parser.add_argument("--agents", type=int, default=2, help="agents per process")
    parser.add_argument("--chunk-tokens", type=int, default=4000)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--json", default=None, help="also write the rows here")
    parser.add_argument("--as-coordinator", dest="spec", default=None, help=argparse.SUPPRESS)
    parser.add_argument("--as-worker", dest="run_id", default=None, help=argparse.SUPPRESS)
    parser.add_argument("--run-dir", default=None, help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    if not args.postgres_url:
        raise SystemExit("give --postgres-url (or set DELM_RLM_TEST_POSTGRES_URL)")
    if args.spec:
        return coordinate(args)
    if args.run_id:
        return work(args)

    from evals.scoring import oolong_synth_gold
    from tasks.oolong import generate

    rows = generate(POOL, args.length, seed=args.seed)
    row = next(r for r in rows if r["task_group"] == "counting" and r["answer_type"] == "ANSWER_TYPE.NUMERIC")
    results = []
    with tempfile.TemporaryDirectory(prefix="bench-workers-") as scratch:
        spec = Path(scratch) / "spec.json"
        spec.write_text(json.dumps({"question": row["question"], "context": row["context_window_text_with_labels"]}))
        for n in args.processes:
            results.append(one_run(args, spec, n, Path(scratch)))
    gold = oolong_synth_gold(row["answer"])
    base = next((r["seconds"] for r in results if r["processes"] == min(args.processes)), None)
    table = Table(title=f"one {args.length:,}-token labelled window, {args.agents} agents per process, "
                        f"{args.delay:g} s per model call; gold {gold}")
    for col in ("processes", "seconds", "speedup", "answer", "coordinator calls", "chunk tasks by process"):
        table.add_column(col)
    for r in results:
        table.add_row(str(r["processes"]), f"{r['seconds']:.1f}", f"{base / r['seconds']:.2f}x" if base else "",
                      str(r["answer"]), str(r["calls"]), " / ".join(map(str, r["tasks_by_process"])))
    Console().print(table)
    if args.json:
        Path(args.json).write_text(json.dumps({"gold": gold, "rows": results}, indent=2))


if __name__ == "__main__":
    main()
