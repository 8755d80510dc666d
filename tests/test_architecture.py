"""The shape the README's architecture section promises, checked from the source itself.

Layers, top to bottom: the CLI; evals; the methods registry; team, verify, the agent loop and
the reports; state, llm, sandbox (and classify, result); data types (errors, gists, values,
chunking, corpus, trace, prompts, console). A module may import its own layer or lower ones,
never a higher one; there are no import circles (lazy imports count; imports only for type
checkers do not); nothing imports a private name from another file; no code file is over
700 lines. A package's `__init__` only re-exports its own modules and is not checked as a
caller.
"""

from __future__ import annotations

import ast
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent
PACKAGES = ("delm_rlm", "sandbox", "tasks", "evals")
MAX_LINES = 700

# Longest prefix wins; the number is the layer (higher may import lower).
LAYERS: dict[str, int] = {
    "delm_rlm.errors": 0, "delm_rlm.values": 0, "delm_rlm.gists": 0, "delm_rlm.chunking": 0,
    "delm_rlm.corpus": 0, "delm_rlm.trace": 0, "delm_rlm.codeblocks": 0, "delm_rlm.prompts": 0,
    "delm_rlm.console": 0, "delm_rlm.runs": 0, "delm_rlm.literals": 0,
    "delm_rlm.llm": 1, "delm_rlm.state": 1, "sandbox": 1, "delm_rlm.classify": 1,
    "delm_rlm.result": 1,
    "delm_rlm.rlm": 2, "delm_rlm.rlm_answer": 2, "delm_rlm.verify": 2, "delm_rlm.team": 2, "delm_rlm.trace_html": 2,
    "delm_rlm.live": 2, "tasks": 2, "delm_rlm.trace_charts": 2, "delm_rlm.otel": 2,
    "delm_rlm.methods": 3, "delm_rlm.preview": 3,
    "evals": 4,
    "delm_rlm.cli": 5, "delm_rlm.cli_worker": 5, "delm_rlm.cli_tables": 5, "delm_rlm.doctor": 5,
}
# Same-layer pairs that must not point this way (the lower room of the two on the left).
FORBIDDEN = [("delm_rlm.verify", "delm_rlm.team"), ("delm_rlm.state", "delm_rlm.llm"),
             ("delm_rlm.state", "sandbox"), ("sandbox", "delm_rlm.state"), ("sandbox", "delm_rlm.llm"),
             ("tasks", "delm_rlm.team"), ("tasks", "delm_rlm.verify"), ("tasks", "delm_rlm.rlm")]


def module_name(path: Path) -> str:
    parts = list(path.relative_to(ROOT).with_suffix("").parts)
    if parts[-1] == "__init__":
        parts = parts[:-1]
    return ".".join(parts)


def source_files() -> dict[str, Path]:
    return {module_name(p): p for pkg in PACKAGES for p in sorted((ROOT / pkg).rglob("*.py"))}


MODULES = source_files()


def layer_of(module: str) -> int | None:
    best = None
    for prefix, layer in LAYERS.items():
        if (module == prefix or module.startswith(prefix + ".")) and (best is None or len(prefix) > len(best[0])):
            best = (prefix, layer)
    return best[1] if best else None


def type_checking_nodes(tree: ast.AST) -> set[int]:
    skip: set[int] = set()
    for node in ast.walk(tree):
        if isinstance(node, ast.If) and "TYPE_CHECKING" in ast.unparse(node.test):
            skip |= {id(n) for stmt in node.body for n in ast.walk(stmt)}
    return skip


def imports_of(module: str) -> list[tuple[str, list[str]]]:
    """(imported project module, names taken from it) for every run-time import."""
    path = MODULES[module]
    tree = ast.parse(path.read_text())
    skip = type_checking_nodes(tree)
    package = module if path.name == "__init__.py" else module.rpartition(".")[0]
    found: list[tuple[str, list[str]]] = []
    for node in ast.walk(tree):
        if id(node) in skip:
            continue
        if isinstance(node, ast.Import):
            found += [(a.name, []) for a in node.names if a.name in MODULES]
        elif isinstance(node, ast.ImportFrom):
            base = node.module or ""
            if node.level:
                anchor = package.split(".")
                anchor = anchor[: len(anchor) - (node.level - 1)]
                base = ".".join([*anchor, base] if base else anchor)
            for alias in node.names:
                sub = f"{base}.{alias.name}"
                if sub in MODULES:
                    found.append((sub, []))
                elif base in MODULES:
                    found.append((base, [alias.name]))
    return found


def is_package(module: str) -> bool:
    return MODULES[module].name == "__init__.py"


@pytest.mark.parametrize("module", sorted(MODULES))
def test_every_module_has_a_layer(module: str) -> None:
    if module in PACKAGES:
        return  # a top-level package's __init__ only re-exports (checked as no caller)
    assert layer_of(module) is not None, f"{module} is in no layer: add it to LAYERS and to the README"


def test_no_import_reaches_a_higher_layer() -> None:
    breaks = []
    for module in MODULES:
        if is_package(module):
            continue
        mine = layer_of(module)
        for target, _ in imports_of(module):
            theirs = layer_of(target)
            if mine is not None and theirs is not None and theirs > mine:
                breaks.append(f"{module} (layer {mine}) imports {target} (layer {theirs})")
            for low, high in FORBIDDEN:
                if (module == low or module.startswith(low + ".")) and (target == high or target.startswith(high + ".")):
                    breaks.append(f"{module} imports {target}")
    assert not breaks, "\n".join(breaks)


def test_no_import_circles() -> None:
    graph = {m: {t for t, _ in imports_of(m) if not is_package(t)} for m in MODULES if not is_package(m)}
    circles: set[tuple[str, ...]] = set()

    def walk(node: str, path: list[str]) -> None:
        for nxt in graph.get(node, ()):
            if nxt in path:
                cycle = path[path.index(nxt):]
                start = cycle.index(min(cycle))
                circles.add(tuple(cycle[start:] + cycle[:start]))
            elif len(path) < 12:
                walk(nxt, [*path, nxt])

    for module in graph:
        walk(module, [module])
    assert not circles, "\n".join(" -> ".join(c) for c in sorted(circles))


def test_no_private_name_is_imported_from_another_file() -> None:
    found = [
        f"{module} imports {target}.{name}"
        for module in MODULES
        for target, names in imports_of(module)
        for name in names
        if name.startswith("_") and not name.startswith("__")
    ]
    assert not found, "\n".join(found)


@pytest.mark.parametrize("module", sorted(MODULES))
def test_no_code_file_is_over_700_lines(module: str) -> None:
    lines = len(MODULES[module].read_text().splitlines())
    assert lines <= MAX_LINES, f"{MODULES[module].relative_to(ROOT)} has {lines} lines; split it by concept"
