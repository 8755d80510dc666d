"""The team runtime: agents claiming tasks under leases and sharing verified gists.

    config.py     TeamConfig: the one declaration of the settings and their defaults
    team.py       Team: lifecycle (run, resume, finish) and scheduling (agents, leases)
    run.py        TeamRun, AgentState: the run context every part works on
    role.py       Role: how an agent works a task and finalizes a round
    hybrid.py     HybridRole: RLM agents, each in its own sandbox
    delm.py       DelmRole: no REPL, JSON gists (the DeLM paper's setting)
    tools.py      the team's REPL tools: gists, unfold, propose, add_task
    finalizer.py  finalization rounds, add_up
    planner.py    the first tasks: the split, or the model's plan
    replies.py    JSON replies (lenient, one repair request), plain answers, validation messages
    reading.py    reading or counting: the routing predicate (needs_reading, route_question)
    summaries.py  grounded summaries: anchors verified per slice, SummaryCache
    reading_steps.py  the reading path's gists, finalizer and answer gate (both modes)
    reading_roles.py  DelmReadingRole, HybridReadingRole: agents that read before they answer
    rundir.py     the run directory: file names, corpus, pid lock, earlier usage
"""

from delm_rlm.team.config import PlanMode, SandboxFactory, SandboxSpec, TeamConfig, TeamMode
from delm_rlm.team.delm import DelmRole
from delm_rlm.team.hybrid import HybridRole
from delm_rlm.team.role import FinalRound, Role, RoundOutcome, TaskOutcome
from delm_rlm.team.run import FINAL_TASK_ID, AgentState, TeamRun
from delm_rlm.team.rundir import PID_FILE, STORE_FILE, TRACE_FILE, default_runs_dir, usage_from_trace
from delm_rlm.team.team import ROLES, Team

__all__ = [
    "FINAL_TASK_ID",
    "PID_FILE",
    "ROLES",
    "STORE_FILE",
    "TRACE_FILE",
    "AgentState",
    "DelmRole",
    "FinalRound",
    "HybridRole",
    "PlanMode",
    "Role",
    "RoundOutcome",
    "SandboxFactory",
    "SandboxSpec",
    "TaskOutcome",
    "Team",
    "TeamConfig",
    "TeamMode",
    "TeamRun",
    "default_runs_dir",
    "usage_from_trace",
]
