"""Walking and rewriting JSON documents, for the fuzz tests and the fuzz benchmark."""

from __future__ import annotations

import copy
from typing import Any


def paths(value: Any, prefix: tuple[Any, ...] = ()) -> list[tuple[Any, ...]]:
    """Every place in a JSON document where a value sits, as key and index paths."""
    found = [prefix] if prefix else []
    if isinstance(value, dict):
        for key, item in value.items():
            found += paths(item, (*prefix, key))
    elif isinstance(value, list):
        for index, item in enumerate(value):
            found += paths(item, (*prefix, index))
    return found


def replaced(document: Any, where: tuple[Any, ...], value: Any) -> Any:
    """A copy of `document` with the value at `where` replaced by (a copy of) `value`."""
    out = copy.deepcopy(document)
    target = out
    for part in where[:-1]:
        target = target[part]
    target[where[-1]] = copy.deepcopy(value)
    return out
