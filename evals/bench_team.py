"""Benchmark (not a test): the team's admission gate and its prompt sizes as the work grows.

    python evals/bench_team.py                       # everything, printed as tables
    python evals/bench_team.py --sizes 4,16 --admit-n 300 --check-n 50 --out results/bench_team.json

1. Admission throughput without the model judge (gists/s through `Verifier.verify`, real
   SQLite store): quote-only gists, gists with a code check (real kernel, started before
   timing), and duplicates (merges). The duplicate search reads every admitted gist of the
   kind, so the rate is shown for the first and the last tenth of the proposals.
2. Prompt tokens per model call as the number of subtasks grows (4 -> 256): the team (hybrid
   and delm modes, ScriptedLM agents; the gist view is capped by `gist_tokens`) against a
   central orchestrator that reads every worker report in its own prompt (the prompts of
   `delm_rlm.methods.Orchestrator`). ScriptedLM counts prompt tokens the same way for both
   (delm_rlm.llm.tokens.approx_tokens); it measures prompt sizes, not answer quality.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import re
import statistics
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

from rich.console import Console
from rich.table import Table

ROOT = Path(__file__).resolve().parent.parent
if str(ROOT) not in sys.path:  # run as a script from a checkout
    sys.path.insert(0, str(ROOT))

from delm_rlm.state.context import SharedContext  # noqa: E402
from delm_rlm.gists import Gist, Provenance, QuoteEvidence  # noqa: E402
from delm_rlm.llm.scripted import ScriptedLM  # noqa: E402
from delm_rlm.state.sqlite import RunStore  # noqa: E402
from delm_rlm.team import Team  # noqa: E402
from delm_rlm.verify import Verifier  # noqa: E402

console = Console()
WORDS = ["invoice", "meeting", "lottery", "report", "crypto", "lunch", "prize", "notes"]


def corpus_lines(n: int) -> list[str]:
    """Deterministic labelled lines: 'spam: ...' or 'ham: ...'."""
    return [
        f"{'spam' if (i * 7) % 3 == 0 else 'ham'}: message {i} about {WORDS[i % len(WORDS)]}"
        for i in range(n)
    ]


# ---------------------------------------------------------------------------------------
# 1. admission throughput
# ---------------------------------------------------------------------------------------


async def bench_admission(admit_n: int, check_n: int) -> dict[str, Any]:
    from sandbox import make_sandbox

    lines = corpus_lines(max(admit_n, 200))
    text = "\n".join(lines) + "\n"
    docs = [text]
    offsets = []
    pos = 0
    for line in lines:
        offsets.append(pos)
        pos += len(line) + 1
    out: dict[str, Any] = {}
    with tempfile.TemporaryDirectory() as tmp:
        store = RunStore(Path(tmp) / "store.sqlite")
        verifier = Verifier(
            SharedContext(store, docs), docs, judge=False,
            sandbox_factory=lambda: make_sandbox("local"), corpus_value=text,
        )
        prov = Provenance(task_id="t1", agent_id="a1")

        def quote_gist(i: int) -> Gist:
            return Gist(
                kind="fact", text=f"Line {i} is labelled {lines[i].split(':')[0]}",
                evidence=[QuoteEvidence(doc=0, start=offsets[i], end=offsets[i] + len(lines[i]), quote=lines[i])],
                provenance=prov,
            )

        # quote-only
        times: list[float] = []
        for i in range(admit_n):
            t0 = time.perf_counter()
            verdict = await verifier.verify(quote_gist(i))
            times.append(time.perf_counter() - t0)
            assert verdict.status == "admitted", verdict.reason
        tenth = max(1, admit_n // 10)
        out["quote_only"] = {
            "gists": admit_n,
            "gists_per_s": admit_n / sum(times),
            "first_tenth_per_s": tenth / sum(times[:tenth]),
            "last_tenth_per_s": tenth / sum(times[-tenth:]),
        }
        # duplicates of admitted gists (merges)
        dup_n = min(admit_n, 200)
        t0 = time.perf_counter()
        for i in range(dup_n):
            verdict = await verifier.verify(quote_gist(i))
            assert verdict.status == "merged", verdict.reason
        out["merge"] = {"gists": dup_n, "gists_per_s": dup_n / (time.perf_counter() - t0),
                        "admitted_in_store": admit_n}
        # code checks (kernel started and warm before timing)
        warm = await verifier.verify(Gist(kind="fact", text="warm-up: lines", value=len(lines),
                                          check="print(len(context.splitlines()))", provenance=prov))
        assert warm.status == "admitted", warm.reason
        store2 = RunStore(Path(tmp) / "store2.sqlite")
        verifier.context = SharedContext(store2, docs)  # an empty store: time the check itself
        t0 = time.perf_counter()
        for i in range(check_n):
            a, b = i, i + 50
            n = sum(1 for line in lines[a:b] if line.startswith("spam"))
            verdict = await verifier.verify(Gist(
                kind="partial", text=f"lines {a}-{b} hold {n} spam", value=n, provenance=prov,
                check=f"print(sum(1 for l in context.splitlines()[{a}:{b}] if l.startswith('spam')))",
            ))
            assert verdict.status == "admitted", verdict.reason
        elapsed = time.perf_counter() - t0
        out["code_check"] = {"gists": check_n, "gists_per_s": check_n / elapsed,
                             "ms_per_check": 1000 * elapsed / check_n}
        await verifier.close()
    return out


# ---------------------------------------------------------------------------------------
# 2. prompt tokens per call: team vs central orchestrator
# ---------------------------------------------------------------------------------------

COUNT = 'sum(1 for line in chunk.splitlines() if line.startswith("spam"))'
AGENT_CODE = f"""```repl
n = {COUNT}
print(propose("partial", f"{{n}} spam lines in this chunk", value=n, check='print({COUNT})'))
answer["content"] = str(n)
answer["ready"] = True
```"""
FINAL_CODE = """```repl
answer["content"] = str(sum(g["value"] for g in gists(kind="partial")))
answer["ready"] = True
```"""


def hybrid_script(messages: list[dict], role: str) -> str:
    return FINAL_CODE if role == "finalizer" else AGENT_CODE


def delm_script(messages: list[dict], role: str) -> str:
    prompt = messages[-1]["content"]
    if role == "verifier":
        return "ADMIT: the quote shows it"
    if role == "finalizer":
        values = re.findall(r"\[g\d+ PARTIAL\][^\n]*\(value (\d+)\)", prompt)
        return json.dumps({"answer": str(sum(int(v) for v in values))})
    chunk = re.search(r"<chunk>\n(.*)\n</chunk>", prompt, re.DOTALL).group(1)
    spam = [line for line in chunk.splitlines() if line.startswith("spam")]
    return json.dumps({"answer": str(len(spam)), "gists": [
        {"kind": "partial", "text": f"{len(spam)} spam lines in this chunk", "value": len(spam), "quotes": spam[:1]}
    ]})


def _calls_by_role(trace: list[Any]) -> dict[str, list[int]]:
    out: dict[str, list[int]] = {}
    for e in trace:
        if e.kind == "model_call":
            out.setdefault(e.data["role"], []).append(e.data["input_tokens"])
    return out


async def team_prompts(n: int, mode: str, lines_per_doc: int, agents: int, gist_tokens: int) -> dict[str, Any]:
    lines = corpus_lines(n * lines_per_doc)
    docs = ["\n".join(lines[i * lines_per_doc:(i + 1) * lines_per_doc]) + "\n" for i in range(n)]
    truth = sum(line.startswith("spam") for line in lines)
    lm = ScriptedLM(hybrid_script if mode == "hybrid" else delm_script)
    with tempfile.TemporaryDirectory() as tmp:
        t0 = time.perf_counter()
        result = await Team(lm, agents=agents, mode=mode, plan="split", gist_tokens=gist_tokens, run_dir=tmp,
                            max_finalize_rounds=1).run("How many lines are spam?", docs)
        seconds = time.perf_counter() - t0
    calls = _calls_by_role(result.trace)
    agent = calls.get("root", [])
    return {
        "subtasks": n, "mode": mode, "status": result.status, "correct": result.answer == str(truth),
        "calls": sum(len(v) for v in calls.values()),
        "agent_mean": statistics.mean(agent) if agent else 0, "agent_max": max(agent, default=0),
        "finalizer": max(calls.get("finalizer", [0])), "judge_mean": statistics.mean(calls["verifier"]) if calls.get("verifier") else 0,
        "total_input": sum(sum(v) for v in calls.values()), "seconds": seconds,
    }


async def orchestrator_prompts(n: int, lines_per_doc: int) -> dict[str, Any]:
    from delm_rlm.prompts import ORCHESTRATOR_MERGE as MERGE_PROMPT
    from delm_rlm.prompts import ORCHESTRATOR_REPORT as REPORT_BLOCK
    from delm_rlm.prompts import ORCHESTRATOR_WORKER as WORKER_PROMPT

    lines = corpus_lines(n * lines_per_doc)
    chunks = ["\n".join(lines[i * lines_per_doc:(i + 1) * lines_per_doc]) for i in range(n)]
    question = "How many lines are spam?"

    def script(messages: list[dict], role: str) -> str:
        prompt = messages[-1]["content"]
        if role == "sub":  # a brief worker report: the count and one quote, like the team's gist
            part = re.search(r"<part>\n(.*)\n</part>", prompt, re.DOTALL).group(1)
            spam = [line for line in part.splitlines() if line.startswith("spam")]
            return f"{len(spam)} spam lines in this part, e.g. \"{spam[0] if spam else ''}\"."
        return "total"

    lm = ScriptedLM(script)
    reports = []
    worker_tokens = []
    for i, chunk in enumerate(chunks):
        c = await lm.complete(WORKER_PROMPT.format(total=n, index=i + 1, chunk=chunk, question=question), role="sub")
        reports.append(c.text)
        worker_tokens.append(c.input_tokens)
    blocks = "\n\n".join(REPORT_BLOCK.format(index=i + 1, total=n, text=r) for i, r in enumerate(reports))
    merge = await lm.complete(MERGE_PROMPT.format(total=n, reports=blocks, question=question), role="root")
    return {
        "subtasks": n, "calls": n + 1, "worker_mean": statistics.mean(worker_tokens),
        "manager": merge.input_tokens, "total_input": sum(worker_tokens) + merge.input_tokens,
    }


async def bench_prompts(sizes: list[int], lines_per_doc: int, agents: int, gist_tokens: int) -> list[dict[str, Any]]:
    rows = []
    for n in sizes:
        hybrid = await team_prompts(n, "hybrid", lines_per_doc, agents, gist_tokens)
        delm = await team_prompts(n, "delm", lines_per_doc, agents, gist_tokens)
        orch = await orchestrator_prompts(n, lines_per_doc)
        rows.append({"subtasks": n, "hybrid": hybrid, "delm": delm, "orchestrator": orch})
        console.print(f"  {n} subtasks: hybrid {hybrid['seconds']:.1f} s, delm {delm['seconds']:.1f} s")
    return rows


# ---------------------------------------------------------------------------------------


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--sizes", default="4,16,64,256", help="numbers of subtasks (comma-separated)")
    parser.add_argument("--admit-n", type=int, default=1000, help="quote-only gists to admit")
    parser.add_argument("--check-n", type=int, default=200, help="gists with a code check to admit")
    parser.add_argument("--lines-per-doc", type=int, default=20)
    parser.add_argument("--agents", type=int, default=4)
    parser.add_argument("--gist-tokens", type=int, default=800, help="the team's gist view budget")
    parser.add_argument("--skip-admission", action="store_true")
    parser.add_argument("--out", type=Path, default=None, help="write the figures as JSON here")
    args = parser.parse_args()
    sizes = [int(s) for s in args.sizes.split(",") if s.strip()]
    report: dict[str, Any] = {"settings": vars(args) | {"out": str(args.out)}}

    if not args.skip_admission:
        console.print("[bold]Admission throughput (no model judge)[/bold]")
        adm = asyncio.run(bench_admission(args.admit_n, args.check_n))
        report["admission"] = adm
        table = Table("gate", "gists", "gists/s", "note")
        q = adm["quote_only"]
        table.add_row("quote only", str(q["gists"]), f"{q['gists_per_s']:.0f}",
                      f"first tenth {q['first_tenth_per_s']:.0f}/s, last tenth {q['last_tenth_per_s']:.0f}/s")
        m = adm["merge"]
        table.add_row("duplicate -> merge", str(m["gists"]), f"{m['gists_per_s']:.0f}",
                      f"against {m['admitted_in_store']} admitted")
        c = adm["code_check"]
        table.add_row("code check (warm kernel)", str(c["gists"]), f"{c['gists_per_s']:.0f}", f"{c['ms_per_check']:.1f} ms/check")
        console.print(table)

    console.print("[bold]Prompt tokens per call vs subtasks[/bold] (ScriptedLM token counts)")
    rows = asyncio.run(bench_prompts(sizes, args.lines_per_doc, args.agents, args.gist_tokens))
    report["prompts"] = rows
    table = Table("subtasks", "hybrid agent mean/max", "hybrid finalizer", "delm agent mean/max",
                  "delm finalizer", "orch. worker mean", "orch. manager", "total input: hybrid / delm / orch.")
    for r in rows:
        h, d, o = r["hybrid"], r["delm"], r["orchestrator"]
        table.add_row(
            str(r["subtasks"]),
            f"{h['agent_mean']:.0f} / {h['agent_max']}", str(h["finalizer"]),
            f"{d['agent_mean']:.0f} / {d['agent_max']}", str(d["finalizer"]),
            f"{o['worker_mean']:.0f}", str(o["manager"]),
            f"{h['total_input']:,} / {d['total_input']:,} / {o['total_input']:,}",
        )
    console.print(table)
    wrong = [(r["subtasks"], m) for r in rows for m in ("hybrid", "delm") if not r[m]["correct"]]
    console.print("team answers exact at every size" if not wrong else f"[red]wrong team answers: {wrong}[/red]")
    if args.out:
        args.out.parent.mkdir(parents=True, exist_ok=True)
        args.out.write_text(json.dumps(report, indent=2, default=str))
        console.print(f"wrote {args.out}")


if __name__ == "__main__":
    main()
