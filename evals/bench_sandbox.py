"""Benchmark of the local sandbox (a script, not a test): ``python evals/bench_sandbox.py``.

Prints, in one run: the bare ``jupyter_client`` round trip versus ``KernelSandbox.execute``
(median of N trivial cells, per isolation mode), kernel start, restart, and the time to load
a 100 MB corpus as ``context``/``docs``/``df``. Target: our round trip within 1.2x of bare.
"""

from __future__ import annotations

import argparse
import asyncio
import shutil
import statistics
import tempfile
import time

from jupyter_client.manager import AsyncKernelManager
from rich.console import Console
from rich.table import Table

from sandbox import KernelSandbox
from sandbox import isolation as iso


class BareKernel:
    """A plain IPC kernel driven by jupyter_client: no wrapper, no sandbox logic."""

    async def start(self) -> float:
        self.tmp = tempfile.mkdtemp(prefix="bench-bare-")
        self.km = AsyncKernelManager(transport="ipc", ip=f"{self.tmp}/k", connection_file=f"{self.tmp}/c.json")
        t0 = time.perf_counter()
        await self.km.start_kernel(cwd=self.tmp)
        self.kc = self.km.client()
        self.kc.start_channels()
        await self.kc.wait_for_ready(timeout=60)
        return time.perf_counter() - t0

    async def round_trip(self) -> float:
        t = time.perf_counter()
        await self.kc.execute_interactive("1", output_hook=lambda msg: None, store_history=False)
        return time.perf_counter() - t

    async def close(self) -> None:
        self.kc.stop_channels()
        await self.km.shutdown_kernel(now=True)
        shutil.rmtree(self.tmp, ignore_errors=True)


async def sandbox_numbers(mode: str, n: int, bare: BareKernel) -> dict[str, float]:
    """Round trips interleaved with the bare kernel's, so machine load hits both alike."""
    box = KernelSandbox(isolation=mode)
    t0 = time.perf_counter()
    await box.start()
    out = {"start": time.perf_counter() - t0}
    try:
        ours, theirs = [], []
        for i in range(n + 10):
            b = await bare.round_trip()
            t = time.perf_counter()
            await box.execute("1")
            if i >= 10:  # warm-up excluded
                ours.append(time.perf_counter() - t)
                theirs.append(b)
        out["rt"], out["bare_rt"] = statistics.median(ours), statistics.median(theirs)
        restarts = []
        for _ in range(3):
            t = time.perf_counter()
            await box.restart()
            restarts.append(time.perf_counter() - t)
        out["restart"] = statistics.median(restarts)
    finally:
        await box.close()
    return out


async def corpus_numbers(mb: int) -> dict[str, float]:
    line = "2024-01-01 || user_17 || the quick brown fox jumps over the lazy dog || label: spam\n"
    text = line * (mb * 1024**2 // len(line))
    docs = [text[i : i + 100_000] for i in range(0, len(text), 100_000)]
    out: dict[str, float] = {}
    async with KernelSandbox(timeout=300) as box:
        for name, ctx in (("str", text), ("list", docs)):
            t = time.perf_counter()
            await box.load_context(ctx)
            out[name] = time.perf_counter() - t
        result = await box.execute("print(len(context))")
        assert result.ok and int(result.stdout) >= len(text), result
    return out


async def main(n: int, mb: int) -> None:
    console = Console()
    modes = iso.available()
    console.print(f"[bold]delm-rlm sandbox benchmark[/] - isolation available: {', '.join(modes)}")
    bare = BareKernel()
    bare_start = await bare.start()
    table = Table(title=f"Round trip of a trivial cell (median of {n}, interleaved with the bare kernel)")
    for col in ("what", "round trip ms", "bare ms", "ratio", "start s", "restart s"):
        table.add_column(col, justify="right" if col != "what" else "left")
    try:
        for mode in modes:
            nums = await sandbox_numbers(mode, n, bare)
            ratio = nums["rt"] / nums["bare_rt"]
            style = "green" if ratio <= 1.2 else "red"
            table.add_row(f"KernelSandbox ({mode})", f"{nums['rt'] * 1e3:.2f}", f"{nums['bare_rt'] * 1e3:.2f}",
                          f"[{style}]{ratio:.2f}[/]", f"{nums['start']:.2f}", f"{nums['restart']:.2f}")
    finally:
        await bare.close()
    table.add_row("bare jupyter_client (IPC, no isolation)", "-", "-", "1.00", f"{bare_start:.2f}", "-")
    console.print(table)
    load = await corpus_numbers(mb)
    corpus = Table(title=f"Loading a {mb} MB corpus ({modes[0]}): file in the workspace -> context, docs, df")
    corpus.add_column("context type")
    corpus.add_column("seconds", justify="right")
    corpus.add_row("str (df: one row per line)", f"{load['str']:.2f}")
    corpus.add_row("list[str] of 100 kB docs", f"{load['list']:.2f}")
    console.print(corpus)


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("-n", type=int, default=200, help="round trips per measurement")
    parser.add_argument("--mb", type=int, default=100, help="corpus size in MB")
    args = parser.parse_args()
    asyncio.run(main(args.n, args.mb))
