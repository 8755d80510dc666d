"""Benchmark: the offline local model's speed on this machine, through the real gateway.

    python -m evals.bench_local_model [--model local] [--sizes 512 2048] [--repeats 2] [--json out.json]

Measures, with the response cache off and every call through LM -> HTTP -> llama.cpp:
- server start (spawn to first healthy answer; the GGUF is assembled first if needed);
- prompt reading (tokens/s): fresh prompts of about N tokens (real TREC question lines), each
  starting with a distinct nonce so no cached prefix helps, one output token;
- generation (tokens/s): the same prompt asked twice; the second time the server's prefix
  cache already holds the prompt, so its time is (almost) all generation;
- prefix reuse: a long prompt followed by a follow-up turn that extends it, against reading
  the same extended prompt cold (what an agent's growing conversation costs);
- the gateway's approximate token count against the server's real one.

Prompt reading dominates an RLM run's cost on a small CPU, hence the prefix-reuse figure.
Figures depend on the machine's load: the table records the load average at the start.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import platform
import statistics
import time
import uuid
from pathlib import Path
from typing import Any

from rich.console import Console
from rich.table import Table

from delm_rlm.llm import local as local_model
from delm_rlm.llm.gateway import LM
from delm_rlm.llm.tokens import approx_message_tokens

TREC = Path(os.environ.get("DELM_RLM_SHARED_DATA", Path(__file__).resolve().parents[2] / "shared" / "data")) / "trec" / "train_5500.label"


def corpus_lines() -> list[str]:
    """Real question lines (the workload's kind of text); a plain fallback if the pool is absent."""
    if TREC.is_file():
        lines = [ln.split(" ", 1)[1].strip() for ln in TREC.read_text(encoding="latin-1").splitlines() if " " in ln]
        if lines:
            return lines
    return [f"Line {i}: the quick brown fox jumps over the lazy dog near river bank number {i}." for i in range(5000)]


def prompt_of(lines: list[str], tokens: int, start: int) -> list[dict[str, str]]:
    """A user prompt of about `tokens` tokens, beginning with a nonce (no shared prefix)."""
    head = f"[{uuid.uuid4().hex}] Read these questions, then answer the last instruction.\n"
    body: list[str] = []
    i = start
    while approx_message_tokens([{"role": "user", "content": head + "\n".join(body)}]) < tokens:
        body.append(lines[i % len(lines)])
        i += 1
    return [{"role": "user", "content": head + "\n".join(body) + "\nReply with one word: done."}]


async def bench(model: str, sizes: list[int], repeats: int, gen_tokens: int) -> dict[str, Any]:
    lines = corpus_lines()
    out: dict[str, Any] = {
        "model": model,
        "label": local_model.spec_for(model).label,  # type: ignore[union-attr]
        "machine": f"{platform.machine()}, {os.cpu_count()} CPUs, {platform.python_version()}",
        "n_ctx": local_model.n_ctx(),
        "n_threads": local_model.n_threads(),
        "load_avg_1m_at_start": round(os.getloadavg()[0], 2),
    }
    t0 = time.monotonic()
    server = await asyncio.to_thread(local_model.ensure_server, model)
    out["ready_s"] = round(time.monotonic() - t0, 2)
    out["server_start_s"] = round(server.startup_s or 0.0, 2)

    lm = LM(model, cache=False, max_tokens=1, timeout=900)
    await lm.complete("Say OK.", max_tokens=2)  # warm-up: first-request allocations

    prompt_rows = []
    approx_ratios = []
    for size in sizes:
        rates = []
        for r in range(repeats):
            msgs = prompt_of(lines, size, start=size * 7 + r * 997)
            c = await lm.complete(msgs, max_tokens=1)
            rates.append(c.input_tokens / c.seconds)
            approx_ratios.append(approx_message_tokens(msgs) / c.input_tokens)
        prompt_rows.append({"tokens": c.input_tokens, "tokens_per_s": round(statistics.median(rates), 1), "runs": [round(x, 1) for x in rates]})
    out["prompt"] = prompt_rows

    gen_rates = []
    for r in range(repeats):
        msgs = [{"role": "user", "content": f"[{uuid.uuid4().hex}] Write the numbers from 1 to 400 separated by commas, nothing else."}]
        await lm.complete(msgs, max_tokens=1)  # reads the prompt into the server's KV cache
        c = await lm.complete(msgs, max_tokens=gen_tokens)  # prefix hit: the time is generation
        gen_rates.append(c.output_tokens / c.seconds)
    out["generation"] = {"tokens": c.output_tokens, "tokens_per_s": round(statistics.median(gen_rates), 1), "runs": [round(x, 1) for x in gen_rates]}

    size = max(sizes)
    base = prompt_of(lines, size, start=31)
    follow = [*base, {"role": "assistant", "content": "done"}, {"role": "user", "content": "Now reply with one word: again."}]
    cold_first = await lm.complete(base, max_tokens=1)
    warm = await lm.complete(follow, max_tokens=1)  # extends the prompt the server just read
    await lm.complete(prompt_of(lines, 64, start=5), max_tokens=1)  # evict: another prompt in between
    cold = await lm.complete(follow, max_tokens=1)
    out["prefix_reuse"] = {
        "prompt_tokens": warm.input_tokens,
        "warm_s": round(warm.seconds, 2),
        "cold_s": round(cold.seconds, 2),
        "speedup": round(cold.seconds / warm.seconds, 1),
        "first_read_s": round(cold_first.seconds, 2),
    }
    out["approx_tokens_over_real"] = round(statistics.mean(approx_ratios), 3)
    out["usage"] = lm.usage.total.model_dump()
    out["server_rss_mib"] = _rss_mib(server.proc.pid) if server.proc else None
    out["load_avg_1m_at_end"] = round(os.getloadavg()[0], 2)
    return out


def _rss_mib(pid: int) -> int | None:
    """Resident memory of the server process (Linux), to check the n_ctx choice."""
    try:
        for line in Path(f"/proc/{pid}/status").read_text().splitlines():
            if line.startswith("VmRSS:"):
                return int(line.split()[1]) // 1024
    except OSError:
        pass
    return None


def show(res: dict[str, Any], console: Console) -> None:
    t = Table(title=f"Local model speed: {res['label']} ({res['model']})", title_justify="left")
    t.add_column("measure")
    t.add_column("value", justify="right")
    t.add_column("detail")
    t.add_row("machine", res["machine"], f"load avg (1 min) {res['load_avg_1m_at_start']} at start, {res['load_avg_1m_at_end']} at end")
    t.add_row("server", f"n_ctx {res['n_ctx']}", f"{res['n_threads']} threads, resident {res['server_rss_mib']} MiB after the run")
    t.add_row("server start", f"{res['server_start_s']:.2f} s", f"ready after {res['ready_s']:.2f} s incl. file check/assembly")
    for row in res["prompt"]:
        t.add_row(f"prompt reading, {row['tokens']} tokens", f"{row['tokens_per_s']:.1f} tok/s", f"runs {row['runs']}")
    g = res["generation"]
    t.add_row(f"generation, {g['tokens']} tokens", f"{g['tokens_per_s']:.1f} tok/s", f"runs {g['runs']}")
    p = res["prefix_reuse"]
    t.add_row(
        f"prefix reuse, {p['prompt_tokens']} tokens",
        f"{p['speedup']:.1f}x",
        f"follow-up turn {p['warm_s']:.2f} s vs cold {p['cold_s']:.2f} s",
    )
    t.add_row("approx tokens / real", f"{res['approx_tokens_over_real']:.3f}", "gateway estimate vs the server's tokenizer")
    console.print(t)


def main(argv: list[str] | None = None) -> None:
    ap = argparse.ArgumentParser(prog="python -m evals.bench_local_model", description=__doc__.splitlines()[0])
    ap.add_argument("--model", default="local", choices=["local", "local-1.5b", "local-0.5b"])
    ap.add_argument("--sizes", type=int, nargs="+", default=[512, 2048], help="prompt sizes (tokens) to read")
    ap.add_argument("--repeats", type=int, default=2)
    ap.add_argument("--gen-tokens", type=int, default=128)
    ap.add_argument("--json", type=Path, help="also write the figures here")
    ns = ap.parse_args(argv)
    if any(s < 16 or s > local_model.n_ctx() - 64 for s in ns.sizes):
        ap.error(f"--sizes must be between 16 and {local_model.n_ctx() - 64} (the served n_ctx minus room to answer)")
    res = asyncio.run(bench(ns.model, ns.sizes, ns.repeats, ns.gen_tokens))
    show(res, Console())
    if ns.json:
        ns.json.parent.mkdir(parents=True, exist_ok=True)
        ns.json.write_text(json.dumps(res, indent=2))


if __name__ == "__main__":
    main()
