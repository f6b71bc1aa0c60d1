"""JSON in and out of the store, with errors that name the offending path.

>>> dumps({"rows": [1, 2, 3, object()]})
Traceback (most recent call last):
...
nbtasks._errors.PayloadSerializationError: payload["rows"][3] is a object, which JSON cannot hold
"""

from __future__ import annotations

import json
from typing import Any

from ._errors import PayloadSerializationError

_encode = json.JSONEncoder(ensure_ascii=False, separators=(",", ":")).encode
_decode = json.JSONDecoder().decode


def _find_bad(value: Any, path: str) -> tuple[str, Any] | None:
    if value is None or isinstance(value, str | int | float | bool):
        return None
    if isinstance(value, dict):
        for k, v in value.items():
            if not isinstance(k, str | int | float | bool) and k is not None:
                return f"{path} key {k!r}", k
            found = _find_bad(v, f"{path}[{k!r}]".replace("'", '"'))
            if found:
                return found
        return None
    if isinstance(value, list | tuple):
        for i, v in enumerate(value):
            found = _find_bad(v, f"{path}[{i}]")
            if found:
                return found
        return None
    return path, value


def dumps(value: Any, *, what: str = "payload") -> str:
    """Encode as compact JSON or raise PayloadSerializationError naming the path."""
    try:
        return _encode(value)
    except (TypeError, ValueError) as exc:
        found = _find_bad(value, what)
        if found is None:
            raise PayloadSerializationError(f"{what} cannot be stored as JSON: {exc}") from None
        path, bad = found
        hint = " (use .isoformat())" if hasattr(bad, "isoformat") else ""
        raise PayloadSerializationError(
            f"{path} is a {type(bad).__name__}, which JSON cannot hold{hint}"
        ) from None


def loads(text: str | None) -> Any:
    """Decode stored JSON (None stays None). Never unpickles."""
    return None if text is None else _decode(text)
