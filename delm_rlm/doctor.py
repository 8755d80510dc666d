"""`delm-rlm doctor`: what this machine offers (sandbox isolation, the local model, an API
endpoint, E2B, chromium for the report tests, the optional extras, the demo's data), one row
per check with the fix where something is missing."""

from __future__ import annotations

import asyncio
import os
import shutil
import time
import urllib.error
import urllib.request
from collections.abc import Callable
from pathlib import Path

from rich.console import Console
from rich.table import Table
from rich.text import Text

from delm_rlm.errors import CLIError

Check = Callable[[], tuple[bool | None, str]]
# (module, extra, what it is for): the optional extras the doctor looks for.
OPTIONAL_EXTRAS = (
    ("pyarrow", "parquet", "parquet files"),
    ("matplotlib", "report", "report plots (--plot)"),
    ("opentelemetry.sdk", "otel", "OpenTelemetry export"),
)


def run_doctor(console: Console, *, speed: bool, find_pool: Callable[[], Path], store: str | None = None) -> int:
    """Print the doctor's table; 0 when the sandbox and a model are usable (and the store,
    when one is named, is reachable with its schema and privileges), else 1."""
    table = Table(title="delm-rlm doctor", title_justify="left")
    for col in ("check", "status", "detail"):
        table.add_column(col, overflow="fold")
    results: dict[str, bool] = {}
    checks = doctor_checks(speed=speed, find_pool=find_pool)
    if store is not None:
        checks.insert(0, ("store", lambda: check_store_target(store)))
    for name, check in checks:
        try:
            ok, detail = check()
        except Exception as exc:  # a check that breaks is a finding, not a crash
            ok, detail = False, f"{type(exc).__name__}: {exc}"
        results[name] = bool(ok)
        mark = "[green]ok[/]" if ok is True else ("[yellow]-[/]" if ok is None else "[red]no[/]")
        table.add_row(name, mark, Text(detail))  # a detail is text, never markup: pip install 'delm-rlm[e2b]'
    console.print(table)
    usable_model = results.get("local model") or results.get("API endpoint")
    store_ok = store is None or results.get("store")
    return 0 if results.get("sandbox") and usable_model and store_ok else 1


def check_store_target(target: str) -> tuple[bool, str]:
    """A run store (SQLite path or postgresql:// URL): reachable, schema version, privileges."""
    from delm_rlm.state.check import check_store

    report = check_store(target)
    schema = (f"schema v{report.schema_version}" if report.schema_version is not None
              else "no schema yet (the first run creates it)")
    detail = f"{report.target}: {report.server or 'unreachable'}; {schema} (code v{report.code_schema_version})"
    if report.runs is not None:
        detail += f"; {report.runs} runs"
    missing = [name for name, ok in report.privileges.items() if not ok]
    if missing:
        detail += f"; missing privileges: {', '.join(missing)}"
    if report.problems:
        detail += "; " + "; ".join(report.problems)
    return report.ok, detail


def doctor_checks(*, speed: bool, find_pool: Callable[[], Path]) -> list[tuple[str, Check]]:
    """The checks, in the order the table shows them."""
    checks: list[tuple[str, Check]] = [
        ("sandbox", _check_sandbox),
        ("local model", _check_local_model),
    ]
    if speed:
        checks.append(("local model speed", _check_local_speed))
    checks += [("API endpoint", _check_api), ("E2B", _check_e2b), ("chromium (report tests)", _check_chromium),
               ("extras", check_extras), ("TREC pool (demo)", lambda: _check_pool(find_pool))]
    return checks


def _check_sandbox() -> tuple[bool, str]:
    from delm_rlm.errors import SandboxError
    from sandbox import KernelSandbox

    async def probe() -> tuple[str, float, str]:
        t0 = time.monotonic()
        async with KernelSandbox() as sb:
            r = await sb.execute("print(6 * 7)")
            return sb.isolation, time.monotonic() - t0, r.stdout.strip() or (r.error or "no output")

    try:
        isolation, seconds, out = asyncio.run(probe())
    except SandboxError as exc:  # no isolation here: the message says how to get it
        return False, str(exc)
    ok = out == "42"
    detail = f"isolation in force: {isolation}; kernel started and ran a cell in {seconds:.1f}s"
    return ok, detail if ok else f"{detail}; cell printed {out!r}"


def _check_local_model() -> tuple[bool, str]:
    from delm_rlm.llm import local as lm_mod

    spec = lm_mod.QWEN_1_5B
    try:
        lm_mod.check_server_installed()
    except lm_mod.LocalModelUnavailable as exc:
        return False, str(exc)
    target = lm_mod.model_file_path(spec)
    if lm_mod.is_verified(target, spec.sha256, spec.size):
        return True, f"{spec.label}: {target} ({spec.size / 1e9:.2f} GB), SHA-256 verified"
    try:
        lm_mod.part_files(spec)
    except lm_mod.LocalModelUnavailable as exc:
        return False, str(exc)
    return True, (f"{spec.label}: all {spec.n_parts} parts installed; the file is assembled and verified on first use "
                  f"into {target}")


def _check_local_speed() -> tuple[bool, str]:
    from delm_rlm.llm.gateway import LM

    async def probe() -> tuple[float, int, float]:
        lm = LM("local", cache=False)
        try:
            t0 = time.monotonic()
            c = await lm.complete("Count from 1 to 20, separated by spaces.", max_tokens=64)
            return time.monotonic() - t0, c.output_tokens, c.seconds
        finally:
            await lm.aclose()

    total, tokens, seconds = asyncio.run(probe())
    return True, f"{tokens} tokens in {seconds:.1f}s ({tokens / max(seconds, 1e-9):.1f} tokens/s incl. prompt; {total:.1f}s with server start)"


def _check_api() -> tuple[bool | None, str]:
    base = os.environ.get("OPENAI_BASE_URL")
    key_set = bool(os.environ.get("OPENAI_API_KEY"))
    if not base and not key_set:
        return None, "not configured (set OPENAI_BASE_URL and/or OPENAI_API_KEY to use an API model; the local model needs neither)"
    url = (base or "https://api.openai.com/v1").rstrip("/") + "/models"
    request = urllib.request.Request(url, headers={"Authorization": f"Bearer {os.environ.get('OPENAI_API_KEY', 'none')}"})
    try:
        with urllib.request.urlopen(request, timeout=3.0) as response:  # noqa: S310 (the user's own endpoint)
            return True, f"{url} answered {response.status}; API key {'set' if key_set else 'not set'}"
    except urllib.error.HTTPError as exc:
        hint = " (check OPENAI_API_KEY)" if exc.code in (401, 403) else ""
        return False, f"{url} answered HTTP {exc.code}{hint}"
    except (urllib.error.URLError, OSError, TimeoutError) as exc:
        reason = getattr(exc, "reason", exc)
        return False, f"{url} unreachable ({reason}); check OPENAI_BASE_URL or the network"


def _check_e2b() -> tuple[bool | None, str]:
    import importlib.util

    installed = importlib.util.find_spec("e2b_code_interpreter") is not None
    key = bool(os.environ.get("E2B_API_KEY"))
    if key and installed:
        return True, "E2B_API_KEY set, e2b-code-interpreter installed (--sandbox e2b is possible)"
    if not installed:
        return None, "e2b-code-interpreter not installed (optional: pip install 'delm-rlm[e2b]')"
    return None, "E2B_API_KEY not set (optional: cloud sandboxes)"


def _check_chromium() -> tuple[bool | None, str]:
    browser = shutil.which("chromium") or shutil.which("chromium-browser")
    driver = shutil.which("chromedriver")
    if browser and driver:
        return True, f"{browser}, {driver}"
    return None, "not found (optional, for tests/test_browser.py: apt-get install chromium chromium-driver)"


def _check_pool(find_pool: Callable[[], Path]) -> tuple[bool | None, str]:
    try:
        return True, str(find_pool())
    except CLIError as exc:
        return None, str(exc)


def installed(module: str) -> bool:
    """Whether `module` can be imported here (without importing it)."""
    import importlib.util

    try:
        return importlib.util.find_spec(module) is not None
    except ModuleNotFoundError:  # its parent package is missing
        return False


def check_extras() -> tuple[bool | None, str]:
    missing = [f"{feature}: pip install 'delm-rlm[{extra}]'" for module, extra, feature in OPTIONAL_EXTRAS
               if not installed(module)]
    if not missing:
        return True, "parquet (pyarrow), report plots (matplotlib), OpenTelemetry export: all installed"
    return None, "optional, not installed: " + "; ".join(missing)


__all__ = ["OPTIONAL_EXTRAS", "check_extras", "doctor_checks", "installed", "run_doctor"]
