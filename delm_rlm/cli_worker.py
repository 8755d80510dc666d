"""`delm-rlm worker`: one more process working on a team run whose state is in PostgreSQL.

    delm-rlm ask "..." --context data/ --store postgresql://user@db-host/runs   # prints the run id
    delm-rlm worker --store postgresql://user@db-host/runs --run RUN_ID --agents 4   # on any machine

The worker fetches the corpus from the store (SHA-256 checked), claims ready tasks under leases,
works them in its own sandboxes, and exits when the run has ended (team/team.py `Team.join`).
"""

from __future__ import annotations

import argparse
import asyncio
from collections.abc import Callable
from pathlib import Path
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from delm_rlm.llm import LM
    from delm_rlm.result import Result


def add_worker_parser(sub: Any, parents: list[argparse.ArgumentParser], *,
                      lm_from_args: Callable[[argparse.Namespace], LM],
                      finish: Callable[[Result, Path, argparse.Namespace], int]) -> None:
    """The `worker` subcommand, with `parents` (the CLI's common and model options), the CLI's
    way to make the model from the options, and its way to print a result."""
    worker = sub.add_parser("worker", parents=parents,
                            help="join a running team run whose state is in PostgreSQL, from any machine")
    worker.add_argument("--store", required=True, metavar="URL",
                        help="the run's database: postgresql://user@host/dbname (the run's store.url holds it)")
    worker.add_argument("--run", default=None, metavar="RUN_ID",
                        help="the run's id (default: the ?run= of --store)")
    worker.add_argument("--agents", type=int, default=None, help="this worker's agents (default: the run's team size)")
    worker.add_argument("--sandbox", choices=("local", "e2b"), default=None,
                        help="where this worker's agents run code (default: the run's own)")
    worker.add_argument("--out", default=None, help="this worker's directory: its trace and the fetched corpus "
                        "(default: a new one under $DELM_RLM_RUNS_DIR or ./runs)")
    worker.add_argument("--wait", type=float, default=60.0, metavar="SECONDS",
                        help="how long to wait for a run that is just starting to be planned (default 60)")
    worker.add_argument("--json", action="store_true", help="print the run's result as JSON on stdout")
    worker.set_defaults(handler=lambda args: cmd_worker(args, lm_from_args(args), finish))


def cmd_worker(args: argparse.Namespace, lm: LM, finish: Callable[[Result, Path, argparse.Namespace], int]) -> int:
    """Work on the run until it ends; exit 0 when it answered."""
    from delm_rlm.errors import CLIError, ConfigError
    from delm_rlm.runs import default_runs_dir
    from delm_rlm.team import Team

    if args.agents is not None and args.agents < 1:
        raise CLIError(f"--agents must be >= 1, got {args.agents}", code=2)

    async def go() -> Result:
        try:
            return await Team.join(args.store, lm=lm, run_id=args.run, agents=args.agents, sandbox=args.sandbox,
                                   run_dir=args.out, wait_s=args.wait)
        finally:
            await lm.aclose()

    try:
        result = asyncio.run(go())
    except ConfigError as exc:  # a store or run id that names no PostgreSQL run: bad input
        raise CLIError(str(exc), code=2) from exc
    # The worker's own directory (its trace), where it got that far.
    work_dir = Path(result.trace_path).parent if result.trace_path else Path(args.out or default_runs_dir())
    return finish(result, work_dir, args)
