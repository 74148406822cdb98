"""CSV cells a spreadsheet opens as text: one guard for every CSV the service writes (the decision log's
export and the population worklist)."""

from __future__ import annotations

from typing import Any

# a spreadsheet runs a cell that starts with one of these as a formula (OWASP "CSV injection")
FORMULA_START = ("=", "+", "-", "@", "\t", "\r")


def safe_cell(value: Any) -> Any:
    """`value`, with a leading apostrophe when it is text a spreadsheet would run as a formula."""
    if isinstance(value, str) and value.startswith(FORMULA_START):
        return "'" + value
    return value
