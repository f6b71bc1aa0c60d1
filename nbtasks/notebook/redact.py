"""Masking for shared dashboards: `nbtasks.dashboard(redact=["payload.card", "metadata.*.token"])`.

A path starts with the part of a run it applies to (`payload`, `output`, `metadata`, or `logs`
for log attributes), then names keys with dots; `*` matches any key or list item. A masked value
is shown as `MASK` wherever the dashboard would show it. The run itself is never changed: a
replay of a masked payload puts the stored values back wherever the mask was left in place.

>>> rules = Redactor(["payload.card", "payload.items.*.secret"])
>>> rules.mask("payload", {"card": "4242", "items": [{"secret": 1, "n": 2}]})
{'card': '•••', 'items': [{'secret': '•••', 'n': 2}]}
"""

from __future__ import annotations

import copy
from collections.abc import Iterable
from typing import Any

MASK = "•••"
ROOTS = ("payload", "output", "metadata", "logs")


class Redactor:
    """Parsed `redact=` paths (see the module docstring); bad paths raise at construction."""

    def __init__(self, paths: Iterable[str] = ()) -> None:
        if isinstance(paths, str):
            raise TypeError(f"redact: pass a list of paths, like [{paths!r}], not a string")
        self.paths: dict[str, list[tuple[str, ...]]] = {}
        for path in paths:
            if not isinstance(path, str) or not path.strip():
                raise ValueError(f"redact: {path!r} is not a path like 'payload.card'")
            root, *keys = path.strip().split(".")
            if root not in ROOTS:
                raise ValueError(f"redact: {path!r} must start with one of {', '.join(ROOTS)}")
            self.paths.setdefault(root, []).append(tuple(keys))

    def __bool__(self) -> bool:
        return bool(self.paths)

    def mask(self, root: str, value: Any) -> Any:
        """A copy of `value` with every path under `root` masked (`value` itself if none)."""
        paths = self.paths.get(root)
        if not paths:
            return value
        out = copy.deepcopy(value)
        for keys in paths:
            if not keys:
                return MASK
            out = _set(out, keys, lambda _old: MASK)
        return out

    def restore(self, root: str, edited: Any, original: Any) -> Any:
        """`edited` with the stored value put back wherever it still holds the mask."""
        paths = self.paths.get(root)
        if not paths:
            return edited
        if edited == MASK and () in paths:
            return original
        for keys in paths:
            for where in _matches(edited, keys):
                if _get(edited, where) == MASK:
                    try:
                        stored = _get(original, where)
                    except (KeyError, IndexError, TypeError):
                        continue
                    edited = _set(edited, where, lambda _old, v=stored: v)
        return edited


def _children(value: Any) -> Iterable[tuple[Any, Any]]:
    if isinstance(value, dict):
        return value.items()
    if isinstance(value, list):
        return enumerate(value)
    return ()


def _matches(value: Any, keys: tuple[str, ...], here: tuple[Any, ...] = ()) -> list[tuple[Any, ...]]:
    """Concrete paths (keys and list indexes) in `value` that `keys` names."""
    if not keys:
        return [here]
    head, rest = keys[0], keys[1:]
    out: list[tuple[Any, ...]] = []
    for k, child in _children(value):
        if head == "*" or str(k) == head:
            out += _matches(child, rest, (*here, k))
    return out


def _get(value: Any, where: tuple[Any, ...]) -> Any:
    for k in where:
        value = value[k]
    return value


def _set(value: Any, keys: tuple[Any, ...], fn: Any) -> Any:
    """Replace what `keys` (with `*`) names in a (copied) structure by `fn(old)`."""
    for where in _matches(value, tuple(str(k) if not isinstance(k, str) else k for k in keys)):
        parent = _get(value, where[:-1])
        parent[where[-1]] = fn(parent[where[-1]])
    return value
