"""The floor plan holds (docs/architecture): packages by feature, small modules and functions,
imports in one direction and never in a circle (type-only imports included)."""

from __future__ import annotations

import ast
import re
import sys
from collections.abc import Iterator
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]
PACKAGES = ("runs", "workers")
STDLIB = set(sys.stdlib_module_names) | {"__future__"}


def modules() -> dict[str, Path]:
    found = {}
    for package in PACKAGES:
        for path in (ROOT / package).rglob("*.py"):
            if "migrations" in path.parts:
                continue
            name = ".".join(path.relative_to(ROOT).with_suffix("").parts)
            found[name.removesuffix(".__init__")] = path
    return found


MODULES = modules()


def imported(path: Path) -> Iterator[str]:
    """Every module a file imports, type-only imports included."""
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
            for alias in node.names:
                full = f"{node.module}.{alias.name}"
                yield full if full in MODULES else node.module
        elif isinstance(node, ast.Import):
            yield from (alias.name for alias in node.names)


IMPORTS = {name: set(imported(path)) for name, path in MODULES.items()}


def ours(names: set[str]) -> set[str]:
    return {n for n in names if n in MODULES}


def test_the_top_of_each_package_holds_few_modules_and_no_package_many() -> None:
    def top_level(package: str) -> list[Path]:
        return [p for p in (ROOT / package).glob("*.py") if p.name != "__init__.py"]

    assert len(top_level("runs")) <= 6, top_level("runs")
    assert len(top_level("workers")) <= 8, top_level("workers")
    for folder in {p.parent for p in MODULES.values()}:
        inside = [p for p in folder.glob("*.py") if p.name != "__init__.py"]
        assert len(inside) <= 15, (folder, len(inside))


@pytest.mark.parametrize("name", sorted(MODULES))
def test_a_module_is_at_most_400_lines_and_a_function_at_most_60(name: str) -> None:
    text = MODULES[name].read_text()
    assert text.count("\n") <= 400, f"{name}: {text.count(chr(10))} lines"
    for node in ast.walk(ast.parse(text)):
        if isinstance(node, ast.FunctionDef | ast.AsyncFunctionDef):
            length = (node.end_lineno or node.lineno) - node.lineno + 1
            assert length <= 60, f"{name}.{node.name}: {length} lines"


def test_no_module_imports_itself_back_type_only_imports_included() -> None:
    graph = {name: ours(found) - {name} for name, found in IMPORTS.items()}
    cycles: list[list[str]] = []
    state: dict[str, int] = {}

    def visit(node: str, path: list[str]) -> None:
        state[node] = 1
        for target in sorted(graph[node]):
            if state.get(target) == 1:
                cycles.append([*path[path.index(target) :], target])
            elif target not in state:
                visit(target, [*path, target])
        state[node] = 2

    for name in sorted(graph):
        if name not in state:
            visit(name, [name])
    assert not cycles, cycles


# What each layer may import of ours (besides itself), by the first two parts of a name.
MAY_IMPORT = {
    "runs.domain": set(),
    "runs.persistence": {"runs.domain"},
    "runs.schemas": {"runs.domain"},
    "runs.client": {"runs.schemas"},
    "runs.services": {
        "runs.domain",
        "runs.persistence",
        "runs.observability",
        "runs.messaging",  # routing: which queue a target goes to (no broker)
    },
}


def test_imports_go_one_way() -> None:
    wrong = []
    for name, found in IMPORTS.items():
        if name.startswith("runs.") and any(m.split(".")[0] == "workers" for m in found):
            wrong.append((name, "imports workers"))
        if name.startswith("runs.domain"):
            foreign = {m.split(".")[0] for m in found if m.split(".")[0] not in ("runs",)}
            if not foreign <= STDLIB:
                wrong.append((name, foreign - STDLIB))
        layer = ".".join(name.split(".")[:2])
        if layer in MAY_IMPORT:
            layers = {".".join(m.split(".")[:2]) for m in ours(found)} - {layer}
            if not layers <= MAY_IMPORT[layer]:
                wrong.append((name, layers - MAY_IMPORT[layer]))
    assert not wrong, wrong


def test_every_file_the_docs_name_exists() -> None:
    """A path the README or a docs page names in code (``runs/settings.py``) is there (but
    for the table of where modules were before the regrouping)."""
    pattern = re.compile(r"`((?:runs|workers|tests|benchmarks|config|docs)/[\w./-]+)`")
    pages = [ROOT / "README.md", *(ROOT / "docs" / "pages").glob("*.md")]
    missing = [
        (page.name, path)
        for page in pages
        for path in pattern.findall(page.read_text().split("## Where things were")[0])
        if not (ROOT / path.rstrip("/")).exists()
    ]
    assert not missing, missing
