"""The packages' layering, read from their imports: `hooks` (the clinical domain) imports neither of the others
nor a framework; `cds_service` imports `worker` only in its command line; workers never load Flask; no module
imports one that imports it back, at module level or inside a function."""

from __future__ import annotations

import ast
import subprocess
import sys
from functools import cache
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
PACKAGES = ("hooks", "cds_service", "worker")


def _module_name(path: Path) -> str:
    parts = path.relative_to(ROOT).with_suffix("").parts
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


@cache
def modules() -> dict[str, Path]:
    found = {}
    for package in PACKAGES:
        for path in (ROOT / package).rglob("*.py"):
            if "migrations" not in path.parts:
                found[_module_name(path)] = path
    return found


@cache
def imported(module: str) -> frozenset[str]:
    """Every module name an import statement anywhere in `module` names (absolute imports; the project uses no others)."""
    names: set[str] = set()
    for node in ast.walk(ast.parse(modules()[module].read_text(encoding="utf-8"))):
        if isinstance(node, ast.Import):
            names.update(alias.name for alias in node.names)
        elif isinstance(node, ast.ImportFrom) and node.module:
            assert node.level == 0, f"{module}: relative import"
            names.add(node.module)
            names.update(f"{node.module}.{alias.name}" for alias in node.names)
    return frozenset(names)


def _top(name: str) -> str:
    return name.split(".", 1)[0]


@pytest.mark.parametrize("module", sorted(m for m in modules() if _top(m) == "hooks"))
def test_the_domain_imports_no_other_package_and_no_framework(module: str) -> None:
    forbidden = {"cds_service", "worker", "flask", "celery", "sqlalchemy", "redis", "werkzeug"}
    assert sorted(n for n in imported(module) if _top(n) in forbidden) == []


def _command_line(module: str) -> bool:
    return module == "cds_service.cli" or module.startswith("cds_service.cli.")


@pytest.mark.parametrize("module", sorted(m for m in modules() if _top(m) == "cds_service" and not _command_line(m)))
def test_the_web_service_imports_no_worker_outside_its_command_line(module: str) -> None:
    assert sorted(n for n in imported(module) if _top(n) == "worker") == []


@pytest.mark.parametrize("module", sorted(m for m in modules() if _top(m) == "worker"))
def test_workers_import_nothing_of_the_web_application(module: str) -> None:
    web = {
        "flask",
        "werkzeug",
        "cds_service.app",
        "cds_service.components",
        "cds_service.cds_hooks.views",
        "cds_service.auditor.api",
        "cds_service.auditor.pages",
        "cds_service.population.views",
    }
    assert sorted(n for n in imported(module) if _top(n) in web or n in web) == []


def test_no_import_circles() -> None:
    graph = {m: {n for n in imported(m) if n in modules() and n != m} for m in modules()}
    circles: list[list[str]] = []
    for start in graph:
        # depth-first from each module: a path back to it is a circle
        stack = [(start, [start])]
        seen: set[str] = set()
        while stack:
            node, path = stack.pop()
            for nxt in graph[node]:
                if nxt == start:
                    circles.append(path)
                elif nxt not in seen:
                    seen.add(nxt)
                    stack.append((nxt, [*path, nxt]))
    assert circles == []


def test_importing_the_workers_does_not_load_flask() -> None:
    code = "import sys, worker.population, worker.tasks, worker.export_tasks; print('flask' in sys.modules)"
    result = subprocess.run([sys.executable, "-c", code], cwd=ROOT, capture_output=True, text=True, check=True)
    assert result.stdout.strip() == "False"
