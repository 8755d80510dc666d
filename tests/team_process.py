"""The coordinating process of a team run for tests/test_workers.py: `Team(store=URL).run`
with ScriptedLM(worker_counter) and short leases, its result as JSON on stdout.

    python tests/team_process.py URL RUN_DIR CORPUS_DIR AGENTS
"""

from __future__ import annotations

import asyncio
import sys
from pathlib import Path

from delm_rlm import ScriptedLM, Team
from scripted_models import worker_counter

QUESTION = "How many lines mention 'apple'?"
LEASE_S = 2.0  # a stopped process's tasks (and coordinator role) pass on after this


def main() -> None:
    url, run_dir, corpus_dir, agents = sys.argv[1:5]
    docs = [p.read_text() for p in sorted(Path(corpus_dir).glob("*.txt"))]
    team = Team(ScriptedLM(worker_counter), agents=int(agents), plan="split", lease_s=LEASE_S, max_attempts=5,
                run_dir=run_dir, store=url)
    result = asyncio.run(team.run(QUESTION, docs))
    print(result.to_json())


if __name__ == "__main__":
    main()
