"""The results file of an evaluation: one JSONL row per (task, method), read back for reports.

The row model and its reader live apart from the runner that writes rows and the report
that reads them, so neither has to import the other.
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any, Literal

from pydantic import BaseModel, ValidationError

from delm_rlm.errors import DatasetError

__all__ = ["ResultRow", "load_results", "repair_results_file"]


class ResultRow(BaseModel):
    """One line of a results file: one method on one task."""

    bench: str
    task_id: str
    method: str
    model: str
    status: Literal["answered", "budget", "error"]
    answer: str | None = None
    gold: str | None = None
    score: float = 0.0  # official scorer on the raw output; errors and no answer count 0
    score_lenient: float | None = None  # OOLONG-synth's documented lenient mode; None elsewhere
    input_tokens: int = 0
    output_tokens: int = 0
    calls: int = 0
    dollars: float | None = None  # None when some call had no known price
    seconds: float = 0.0  # wall clock of the method run
    error: str | None = None
    usage_by_role: dict[str, dict[str, Any]] = {}
    detail: dict[str, Any] = {}  # what the method reports: truncation, chunks, finished_by...
    # metadata for the report tables
    dataset: str | None = None
    context_len: int | None = None  # OOLONG: nominal window tokens; LongBench-v2: None
    context_tokens: int | None = None  # measured with the run's tokenizer
    task_group: str | None = None
    task: str | None = None
    difficulty: str | None = None
    length: str | None = None
    domain: str | None = None
    variant: str | None = None  # OOLONG window variant: "unlabelled" or "labelled"
    finished_at: str = ""
    code_version: str | None = None  # which delm-rlm produced the row (see `code_version()`)

    @property
    def key(self) -> tuple[str, str, str, str]:
        return (self.bench, self.task_id, self.method, self.model)


def load_results(path: str | Path) -> list[ResultRow]:
    """The rows of a results file, the last one per (bench, task, method, model).

    A last line cut short by a killed run is ignored; any other bad line is an error that
    names the file and line.
    """
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"{path}: no such results file (write one with `delm-rlm eval --out {path}`)")
    latest: dict[tuple[str, str, str, str], ResultRow] = {}
    lines = path.read_text(encoding="utf-8").split("\n")
    complete = lines[:-1]  # everything before the last newline; lines[-1] is "" or a cut line
    for number, line in enumerate(complete, start=1):
        if not line.strip():
            continue
        try:
            row = ResultRow.model_validate_json(line)
        except ValidationError as exc:
            raise DatasetError(  # "line", not "row": the file's line numbers are what an editor shows
                path, None, None,
                f"line {number} is not a result row ({exc.errors()[0]['msg']}); fix or delete that line, then rerun",
            ) from exc
        latest[row.key] = row
    return list(latest.values())


def repair_results_file(path: Path) -> None:
    """Cut a half-written last line (no trailing newline) so appends start on a fresh line."""
    if not path.is_file():
        return
    with path.open("rb+") as fh:
        fh.seek(0, os.SEEK_END)
        size = fh.tell()
        if size == 0:
            return
        fh.seek(size - 1)
        if fh.read(1) == b"\n":
            return
        # Walk back to the previous newline; the file is append-only so the tail is short.
        data_end = size
        chunk = 1 << 16
        pos = size
        while pos > 0:
            start = max(0, pos - chunk)
            fh.seek(start)
            block = fh.read(pos - start)
            index = block.rfind(b"\n")
            if index >= 0:
                data_end = start + index + 1
                break
            pos = start
        else:
            data_end = 0
        fh.truncate(data_end)
