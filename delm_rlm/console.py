"""The two consoles everything that prints for a person shares: the CLI, the eval runner and
the benchmarks. It lives below all of them so none has to import another to print alike.
"""

from __future__ import annotations

from rich.console import Console

# A pipe or a log file gets tables this wide instead of rich's 80 (the eval report has 12 columns).
PIPE_WIDTH = 160


def out_console() -> Console:
    """Results, on stdout. Soft wrapping keeps long answers intact when piped."""
    console = Console(soft_wrap=True)
    if not console.is_terminal:
        console.width = max(console.width, PIPE_WIDTH)
    return console


def err_console() -> Console:
    """Progress, live views and errors, on stderr."""
    return Console(stderr=True, soft_wrap=True)


__all__ = ["PIPE_WIDTH", "err_console", "out_console"]
