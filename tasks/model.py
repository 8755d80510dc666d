"""The task model shared by every benchmark loader, method and scorer."""

from __future__ import annotations

from pathlib import Path
from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field, PrivateAttr, model_validator

from delm_rlm.errors import ConfigError, DatasetError  # DatasetError: the loaders import it from here

Scorer = Literal["oolong_synth", "oolong_real", "longbench"]
SCORERS: tuple[str, ...] = ("oolong_synth", "oolong_real", "longbench")


class Task(BaseModel):
    """One question over one context, with its gold answer and the scorer that grades it.

    ``context`` holds the text inline; ``context_file`` points at a UTF-8 file instead (for
    corpora too big to carry around); exactly one is needed. ``answer`` is the gold as the
    benchmark publishes it (OOLONG: a Python list string such as ``"['human being']"``;
    LongBench-v2: a letter A-D). ``metadata`` carries the grouping keys reports use:
    ``dataset``, ``context_len``, ``task_group``, ``task``, ``difficulty``, ``length``,
    ``domain``... The raw source row is reachable as ``task.raw`` (not serialized).
    """

    model_config = ConfigDict(extra="forbid")

    id: str
    question: str
    context: str | None = None
    context_file: str | None = None
    answer: str
    answer_type: str | None = None
    scorer: Scorer
    metadata: dict[str, Any] = Field(default_factory=dict)

    _raw: dict[str, Any] | None = PrivateAttr(default=None)

    @model_validator(mode="after")
    def _needs_context(self) -> Task:
        if self.context is None and self.context_file is None:
            raise ConfigError(f"task {self.id}: give either context (the text) or context_file (a path)")
        return self

    def get_context(self) -> str:
        """The context text, read from ``context_file`` when it is not inline."""
        if self.context is not None:
            return self.context
        path = Path(self.context_file)  # type: ignore[arg-type]
        if not path.is_file():
            raise FileNotFoundError(f"task {self.id}: context file {path} does not exist")
        return path.read_text(encoding="utf-8")

    @property
    def raw(self) -> dict[str, Any] | None:
        """The source row this task was built from, unchanged (None when built by hand)."""
        return self._raw

    def with_raw(self, row: dict[str, Any]) -> Task:
        self._raw = row
        return self
