"""docs/architecture.md against the code: every module of the three packages is named, every path named exists."""

from __future__ import annotations

import re
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]
DOC = (ROOT / "docs" / "architecture.md").read_text(encoding="utf-8")
PACKAGES = ("hooks", "cds_service", "worker")
# paths as the page writes them: from the repository root, or within cds_service/ (as in the diagrams)
_PATH = re.compile(r"(?<![\w/.])((?:[a-z_]+/)+(?:[a-z_]+\.py)?)")
_CDS_FOLDERS = ("cds_hooks/", "decision_log/", "auditor/", "population/", "cli/")


def _named() -> set[str]:
    found = set()
    for path in _PATH.findall(DOC):
        found.add(f"cds_service/{path}" if path.startswith(_CDS_FOLDERS) else path)
    return found


def test_every_module_is_named() -> None:
    modules = {
        path.relative_to(ROOT).as_posix()
        for package in PACKAGES
        for path in (ROOT / package).rglob("*.py")
        if "migrations" not in path.parts and path.name not in ("__init__.py", "__main__.py")
    }
    assert sorted(modules - _named()) == []


def test_every_named_path_exists() -> None:
    named = {p for p in _named() if p.split("/", 1)[0] in (*PACKAGES, "tests", "docs")}
    assert named, "the page names no paths"
    assert sorted(p for p in named if not (ROOT / p).exists()) == []
