"""Where runs go: one place for the CLI and the Python API alike.

Every run writes a directory under `default_runs_dir()`: `$DELM_RLM_RUNS_DIR` when it is
set, else `runs/` in the current directory, named `<UTC time>-<pid>-<random>`. The CLI's
`--out` and the API's `run_dir=` name one explicitly.
"""

from __future__ import annotations

import os
from datetime import datetime, timezone
from pathlib import Path

RUNS_DIR_ENV = "DELM_RLM_RUNS_DIR"
DEFAULT_RUNS_DIR = "runs"


def default_runs_dir() -> Path:
    """$DELM_RLM_RUNS_DIR, else ./runs."""
    configured = os.environ.get(RUNS_DIR_ENV)
    return Path(configured).expanduser() if configured else Path(DEFAULT_RUNS_DIR)


def new_run_id() -> str:
    """A fresh run directory name: UTC time, pid and a random suffix (sortable by time)."""
    stamp = datetime.now(timezone.utc).strftime("%Y%m%d-%H%M%S")
    return f"{stamp}-{os.getpid()}-{os.urandom(3).hex()}"


def new_run_dir() -> Path:
    """A new run directory's path under `default_runs_dir()` (not created)."""
    return default_runs_dir() / new_run_id()


__all__ = ["DEFAULT_RUNS_DIR", "RUNS_DIR_ENV", "default_runs_dir", "new_run_dir", "new_run_id"]
