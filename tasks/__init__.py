"""Benchmark tasks: the Task model, OOLONG loader + generator, LongBench-v2 loader.

``tasks.oolong`` and ``tasks.longbench`` are imported on first use.
"""

from __future__ import annotations

from tasks.model import SCORERS, DatasetError, Scorer, Task

__all__ = ["SCORERS", "DatasetError", "Scorer", "Task"]
