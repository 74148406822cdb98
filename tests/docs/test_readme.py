"""The README's endpoint table against the app's routes: every route is listed, every listed path is a route."""

from __future__ import annotations

import re
from pathlib import Path

from cds_service.app import create_app

ROOT = Path(__file__).resolve().parents[2]
README = (ROOT / "README.md").read_text(encoding="utf-8")
ASSETS = ("/static/", "/audit/static/")  # files, not endpoints


def _shape(path: str) -> str:
    """A path with its parameters as `{}`, however written: `<int:decision_id>` in a route, `{id}` in the table."""
    path = path.split("?", 1)[0]
    return re.sub(r"<[^>]+>|\{[^}]+\}", "{}", path)


def _table() -> str:
    section = README.split("## Endpoints", 1)[1]
    return section.split("\n\n", 2)[1]  # the table: after the heading's blank line, up to the next blank line


def _listed() -> set[str]:
    cells = [cell for row in _table().splitlines() for cell in row.split("|")[1:2]]  # the first column
    paths = re.findall(r"`(?:[A-Z]+ )?(/[^` ]*)`", " ".join(cells))
    return {_shape(path) for path in paths}


def _routes(tmp_path: Path) -> set[str]:
    app = create_app(
        {"instance_path": str(tmp_path), "database_url": f"sqlite:///{tmp_path}/routes.sqlite3", "metrics_enabled": True}
    )
    return {
        _shape(rule.rule)
        for rule in app.url_map.iter_rules()
        if rule.methods and rule.methods - {"HEAD", "OPTIONS"} and not rule.rule.startswith(ASSETS)
    }


def test_every_route_is_in_the_endpoint_table_and_every_listed_path_is_a_route(tmp_path: Path) -> None:
    routes, listed = _routes(tmp_path), _listed()
    assert sorted(routes - listed) == []
    assert sorted(listed - routes) == []
