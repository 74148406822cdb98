"""docs/conformance.md against the CDS Hooks 2.0 requirements list and the tests that name them."""

from __future__ import annotations

import csv
import re
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]
CITATION = re.compile(r"\breqs? (\d+(?:\s*(?:,|and)\s*\d+)*)")
ROW = re.compile(r"^\| (\d+) \| (SHALL(?: NOT)?) \| [^|]+ \| (tested|not applicable): ([^|]+) \|$", re.MULTILINE)


def cited_by_tests() -> dict[int, set[str]]:
    cited: dict[int, set[str]] = {}
    for path in (ROOT / "tests").rglob("test_*.py"):
        for match in CITATION.finditer(path.read_text(encoding="utf-8")):
            for number in re.findall(r"\d+", match.group(1)):
                cited.setdefault(int(number), set()).add(path.relative_to(ROOT / "tests").as_posix())
    return cited


def documented() -> dict[int, tuple[str, str]]:
    text = (ROOT / "docs" / "conformance.md").read_text(encoding="utf-8")
    return {int(m.group(1)): (m.group(3), m.group(4)) for m in ROW.finditer(text)}


@pytest.fixture(scope="module")
def service_shalls(shared_data: Path) -> list[tuple[int, str]]:
    with (shared_data / "cds-hooks" / "cds-hooks-2.0-requirements.csv").open(encoding="utf-8") as handle:
        return [
            (int(row["ID"]), row["Conformance"])
            for row in csv.DictReader(handle)
            if "Service" in row["Actors"] and row["Conformance"] in ("SHALL", "SHALL NOT")
        ]


def test_every_service_shall_is_tested_or_explained(service_shalls: list[tuple[int, str]]) -> None:
    cited, rows = cited_by_tests(), documented()
    unaccounted = [i for i, _ in service_shalls if i not in cited and rows.get(i, ("",))[0] != "not applicable"]
    assert unaccounted == [], f"requirements neither named by a test nor explained in docs/conformance.md: {unaccounted}"


def test_the_table_lists_every_service_shall_once_with_its_conformance(service_shalls: list[tuple[int, str]]) -> None:
    text = (ROOT / "docs" / "conformance.md").read_text(encoding="utf-8")
    rows = {int(m.group(1)): m.group(2) for m in ROW.finditer(text)}
    assert rows == dict(service_shalls)
    assert len(ROW.findall(text)) == len(service_shalls)


def test_rows_marked_tested_name_files_that_cite_them() -> None:
    cited = cited_by_tests()
    for requirement, (status, where) in documented().items():
        if status != "tested":
            continue
        files = set(re.findall(r"`([^`]+)`", where))
        assert files, f"req {requirement}: no test file named"
        assert files <= cited.get(requirement, set()), (
            f"req {requirement}: {files - cited.get(requirement, set())} do not cite it"
        )


def test_not_applicable_rows_give_a_reason() -> None:
    for requirement, (status, reason) in documented().items():
        if status == "not applicable":
            assert len(reason.strip()) > 20, f"req {requirement} needs a reason"
