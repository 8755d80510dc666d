"""Did an answer rest on evidence read from the documents? Measured from a run's trace.

For reading questions (LongBench-v2) accuracy with a small model says little; whether the
answer was backed by text the method actually read says a lot (issue 15). This module judges
that from what a run recorded, re-checking against the corpus rather than trusting the
run's own gate:

- a team (`delm`, `hybrid`): the gists the finalizer answered from (its `finalize` event)
  include an admitted gist with a quote found verbatim where it points in the corpus
  (`delm_rlm.verify.support.corpus_quotes`, the quote verifier's own rule);
- `rlm`: it asked a sub-model about the text (an `llm_query` call, role `sub`), or its code
  printed a passage of the corpus (an output line of at least `MIN_PRINTED_CHARS` characters
  found verbatim in it) for the model to read;
- `direct` and `orchestrator` put the text itself in the prompt: not measured (None).

`python -m evals.evidence RESULTS.jsonl` fills `detail["evidence"]` in rows that lack it from
their run directories' traces, for results written before `solve()` recorded it.
"""

from __future__ import annotations

import argparse
import json
import sys
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from pydantic import BaseModel

from delm_rlm.gists import Gist
from delm_rlm.methods import METHODS, RLMMethod, TeamMethod
from delm_rlm.trace import Trace, TraceEvent
from delm_rlm.verify.support import corpus_quotes

__all__ = ["JUDGED_METHODS", "MIN_PRINTED_CHARS", "Evidence", "answer_evidence", "backfill", "trace_evidence"]

MIN_PRINTED_CHARS = 60  # shorter printed lines (labels, numbers, headers) are not reading
# Which methods are judged, and how, follows the registry's classes (a new team mode is a team).
TEAM_METHODS = frozenset(name for name, cls in METHODS.items() if issubclass(cls, TeamMethod))
RLM_METHODS = frozenset(name for name, cls in METHODS.items() if issubclass(cls, RLMMethod))
JUDGED_METHODS = TEAM_METHODS | RLM_METHODS


class Evidence(BaseModel):
    """Whether the answer rested on read evidence, and what showed it."""

    read: bool
    how: str
    gist_ids: list[str] = []  # team: the answer's gists that quote the corpus


def team_evidence(events: Sequence[TraceEvent], docs: Sequence[str]) -> Evidence:
    finals = [e for e in events if e.kind == "finalize"]
    if not finals:
        rounds = any(e.kind == "agent_step" and str(e.data.get("action", "")).startswith("finalizing") for e in events)
        return Evidence(read=False, how="its finalizer gave no answer" if rounds else "the run never reached its finalizer")
    answered_from = [str(i) for i in finals[-1].data.get("gist_ids") or []]
    admitted = {str(e.data.get("gist_id")) for e in events if e.kind == "gist_admitted"}
    proposed: dict[str, Gist] = {}
    for event in events:
        if event.kind == "gist_proposed" and event.data.get("gist"):
            gist = Gist.model_validate(event.data["gist"])
            if gist.id is not None:
                proposed[gist.id] = gist
    quoting = [i for i in answered_from if i in admitted and i in proposed and corpus_quotes(proposed[i], docs)]
    if quoting:
        return Evidence(read=True, how=f"admitted gists quoting the corpus: {', '.join(quoting)}", gist_ids=quoting)
    if not answered_from:
        return Evidence(read=False, how="the answer named no gist")
    return Evidence(read=False, how=f"its gists ({', '.join(answered_from)}) quote nothing found in the corpus")


def rlm_evidence(events: Sequence[TraceEvent], context: str) -> Evidence:
    sub_calls = sum(1 for e in events if e.kind == "model_call" and e.data.get("role") == "sub")
    printed = 0
    for event in events:
        if event.kind != "code_cell":
            continue
        for line in str(event.data.get("stdout") or "").splitlines():
            line = line.strip()
            if len(line) >= MIN_PRINTED_CHARS and line in context:
                printed += 1
    if sub_calls or printed:
        parts = [f"{sub_calls} llm_query call(s)"] if sub_calls else []
        parts += [f"{printed} printed corpus line(s)"] if printed else []
        return Evidence(read=True, how=", ".join(parts))
    return Evidence(read=False, how="no llm_query call and no corpus passage printed")


def trace_evidence(method: str, events: Sequence[TraceEvent], docs: Sequence[str]) -> Evidence | None:
    """The evidence judgement for one run of `method` (None where not measured)."""
    if method in TEAM_METHODS:
        return team_evidence(events, docs)
    if method in RLM_METHODS:
        return rlm_evidence(events, "\n".join(docs))
    return None


def answer_evidence(method: str, events: Sequence[TraceEvent], docs: Sequence[str]) -> dict[str, Any] | None:
    """`trace_evidence` as the JSON a result row's detail keeps."""
    evidence = trace_evidence(method, events, docs)
    return None if evidence is None else evidence.model_dump()


def backfill(results: Path, longbench_data: Path) -> int:
    """Fill `detail["evidence"]` of LongBench-v2 rows that lack it from their run's trace;
    returns how many rows were filled. Rows whose run directory is gone are left as they are."""
    from delm_rlm.corpus import Corpus
    from tasks.longbench import load

    tasks = {t.id: t for t in load(longbench_data)}
    lines = results.read_text(encoding="utf-8").splitlines()
    filled = 0
    out: list[str] = []
    for line in lines:
        row = json.loads(line) if line.strip() else None
        if row is None or row.get("bench") != "longbench" or "evidence" in row.get("detail", {}):
            out.append(line)
            continue
        trace_path = Path(str(row.get("detail", {}).get("run_dir", ""))) / "trace.jsonl"
        task = tasks.get(row["task_id"])
        if task is None or not trace_path.is_file():
            out.append(line)
            continue
        docs = Corpus.coerce(task.get_context()).docs
        evidence = answer_evidence(row["method"], Trace.load(trace_path), docs)
        if evidence is not None:
            row["detail"]["evidence"] = {**evidence, "measured": "afterwards, from the run's trace"}
            filled += 1
        out.append(json.dumps(row, ensure_ascii=False))
    results.write_text("\n".join(out) + "\n", encoding="utf-8")
    return filled


def main(argv: Sequence[str] | None = None) -> int:
    shared_data = Path(__file__).resolve().parent.parent.parent / "shared" / "data"  # as bench_methods
    parser = argparse.ArgumentParser(prog="python -m evals.evidence", description=__doc__.split("\n\n")[0])
    parser.add_argument("results", type=Path)
    parser.add_argument("--longbench-data", type=Path, default=shared_data / "longbench_v2" / "multidoc_dev.jsonl")
    args = parser.parse_args(argv)
    print(f"{args.results}: evidence filled in {backfill(args.results, args.longbench_data)} row(s)")
    return 0


if __name__ == "__main__":
    sys.exit(main())
