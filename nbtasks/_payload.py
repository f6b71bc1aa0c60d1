"""JSON in and out of the store: strict, size-limited, with errors that name the offending path.

Everything a caller hands over (payloads, metadata, token data) and everything a run returns is
encoded here, so the store only ever holds text that is valid JSON and valid UTF-8. "Strict":

- NaN and ±inf are refused (they are not JSON; SQLite's JSON functions reject them);
- a str holding a lone surrogate (`os.fsdecode(b"report-\\xff.csv")`) is refused, because
  SQLite can't store it as UTF-8;
- circular and absurdly deep values are refused instead of raising RecursionError, and so is
  a value nested deeper than SQLite's JSON functions read (`MAX_DEPTH`, 1,000 levels): the
  dashboard and the history read stored JSON with them, and one such row would fail every
  query that does, whatever depth the interpreter's own encoder allows (3.13's 10,000);
- a value over its size limit (`LIMITS`, set by `configure(limits=...)`) is refused.

The encoder runs at C speed and the path of the problem is looked for only once it has failed,
so the common case costs one `json` encode and one `str.isascii()` (or one UTF-8 encode).

>>> dumps({"rows": [1, 2, 3, object()]}, what="payload")
Traceback (most recent call last):
...
nbtasks._errors.PayloadSerializationError: payload["rows"][3] is a object, which JSON cannot hold
>>> dumps({"ratio": float("nan")}, what="payload")
Traceback (most recent call last):
...
nbtasks._errors.PayloadSerializationError: payload["ratio"] is nan; JSON holds only finite numbers
"""

from __future__ import annotations

import functools
import json
import math
import sqlite3
from contextlib import closing
from dataclasses import dataclass, fields
from typing import Any

from ._errors import ConfigurationError, PayloadSerializationError

_encode_any = json.JSONEncoder(ensure_ascii=False, separators=(",", ":"), allow_nan=False).encode


def _encode(value: Any) -> str:
    """Compact, strict JSON. An int (a batch of ids, of row numbers) is spelled as the encoder
    spells it, without the encoder's per-call set-up (a few µs, a batch item's largest cost)."""
    if type(value) is int:
        return int.__repr__(value)
    return _encode_any(value)


#: How deep SQLite's JSON functions read (its JSON_MAX_DEPTH: 1,000 since 3.45, 2,000 before).
#: A value nested deeper has more brackets than this, so text with fewer is never handed to
#: SQLite to check (`readable_by_sqlite`).
MAX_DEPTH = 1000 if sqlite3.sqlite_version_info >= (3, 45, 0) else 2000


class _TooDeep(ValueError):
    """Encoded, but nested deeper than SQLite's JSON functions read."""


def readable_by_sqlite(text: str) -> bool:
    """Whether SQLite's JSON functions can read `text`, JSON our encoder made: only its depth
    can stop them. Text with at most MAX_DEPTH brackets can't be that deep and costs two
    C-speed counts (nothing at all when short); the rest is asked of SQLite itself, on an
    in-memory connection of its own (opening one costs about a twentieth of encoding such a
    value, and needs no lock, no care across a fork and nothing to close at exit)."""
    if len(text) <= 2 * MAX_DEPTH or text.count("[") + text.count("{") <= MAX_DEPTH:
        return True
    with closing(sqlite3.connect(":memory:")) as conn:
        return bool(conn.execute("SELECT json_valid(?)", (text,)).fetchone()[0])


def valid_json(column: str) -> str:
    """SQL for `column` where SQLite's JSON functions can read it, else NULL. A query that
    extracts from stored JSON then reads an odd row (text that isn't JSON, or nested too deep,
    written by hand or by an older version) as having no value, instead of failing whole with
    "malformed JSON"."""
    return f"(CASE WHEN json_valid({column}) THEN {column} END)"


_decoder = json.JSONDecoder()
_decode = _decoder.decode
#: The decoder's C scanner: what `decode` runs after two regex calls for surrounding whitespace,
#: which the compact JSON stored here never has (a payload is decoded on every attempt).
_scan = _decoder.scan_once  # type: ignore[attr-defined]

MB = 1024 * 1024
#: Trigger.dev's metadata limit, and ours by default.
MAX_METADATA_BYTES = 262_144


@dataclass(slots=True)
class Limits:
    """Size limits on what enters the store (UTF-8 bytes, or characters for keys).

    Process-wide: they guard what this process writes, whichever engine it writes to, and are
    checked in the caller before anything is recorded. The defaults follow Trigger.dev's (3 MB
    payloads, 256 KB metadata); `configure(limits={"payload_bytes": 10 * 1024**2})` changes them.
    """

    payload_bytes: int = 3 * MB
    output_bytes: int = 3 * MB
    metadata_bytes: int = MAX_METADATA_BYTES
    token_data_bytes: int = 3 * MB
    #: Concurrency keys, idempotency keys (before hashing) and wait-token idempotency keys.
    key_chars: int = 512

    def bytes_for(self, what: str) -> tuple[str, int]:
        """The limit's name and bytes for a value described as `what` ("output", "metadata")."""
        name = _limit_name(what)
        return name, getattr(self, name)


_LIMIT_NAMES = {"output": "output_bytes", "metadata": "metadata_bytes", "data": "token_data_bytes"}


@functools.lru_cache(maxsize=1024)
def _limit_name(what: str) -> str:
    """The name of the limit for `what`, parsed once per description: a batch asks for each
    of its items (`items[0]` to `items[499]`) on every call."""
    return _LIMIT_NAMES.get(what.split("[", 1)[0].split(" ", 1)[0], "payload_bytes")


LIMITS = Limits()


def check_limits(value: object, *, where: str = "configure: limits") -> dict[str, int]:
    """Validate `configure(limits={...})`: known names, ints from 1 to 2**31-1."""
    if not isinstance(value, dict):
        raise ConfigurationError(f"{where}: expected a dict such as {{'payload_bytes': 1048576}}, "
                                 f"got {value!r}")
    names = [f.name for f in fields(Limits)]
    for name, n in value.items():
        if name not in names:
            raise ConfigurationError(f"{where}: unknown limit {name!r}; valid: {', '.join(names)}")
        if isinstance(n, bool) or not isinstance(n, int) or not 1 <= n <= 2**31 - 1:
            raise ConfigurationError(f"{where}: {name}={n!r} must be an int from 1 to 2**31-1")
    return value


def set_limits(value: object, *, where: str = "configure: limits") -> None:
    """Apply `configure(limits={...})` after checking all of it (nothing changes on an error)."""
    for name, n in check_limits(value, where=where).items():
        setattr(LIMITS, name, n)


def reset_limits() -> None:
    """Back to the defaults (`nbtasks.configure` resets, tests)."""
    for f in fields(Limits):
        setattr(LIMITS, f.name, f.default)


# --------------------------------------------------------------------------- text checks


def encodable(text: str) -> bool:
    """True when `text` can be stored as UTF-8 (no lone surrogates). ASCII costs one scan."""
    if text.isascii():
        return True
    try:
        text.encode("utf-8")
    except UnicodeEncodeError:
        return False
    return True


def escape(text: str) -> str:
    """`text` with lone surrogates written visibly as `\\udcff`, so it can be stored.

    Used for text a run produces (log lines, metadata, tags added inside a run): such text is
    kept, legibly, rather than failing the run that wrote it.
    """
    if encodable(text):
        return text
    return text.encode("utf-8", "backslashreplace").decode("utf-8")


def _plain(value: Any) -> bool:
    """A flat dict of ASCII keys and scalar values (most log attributes): nothing to escape."""
    if type(value) is not dict:
        return False
    for k, v in value.items():
        if type(k) is not str or not k.isascii():
            return False
        if type(v) is str:
            if not v.isascii():
                return False
        elif v is not None and type(v) not in (int, float, bool):
            return False
    return True


def escape_tree(value: Any, *, stringify: bool = True) -> Any:
    """`value` with every str (keys too) escaped and other JSON leaves kept; anything else is
    str()'d (log attributes) or, with `stringify=False`, kept for the encoder to refuse.

    Iterative, so a deep value can't raise RecursionError. A container met a second time (a
    cycle, or one shared) is not followed again: it is str()'d, or kept as it is.
    A flat dict with nothing to escape is returned as it is (no copy).
    """
    if _plain(value):
        return value
    root: list[Any] = [None]
    seen: set[int] = set()
    stack: list[tuple[Any, Any, Any]] = [(value, root, 0)]
    while stack:
        item, parent, slot = stack.pop()
        if isinstance(item, dict | list | tuple):
            if id(item) in seen:
                parent[slot] = escape(str(item)) if stringify else item
                continue
            seen.add(id(item))
        if isinstance(item, str):
            parent[slot] = escape(item)
        elif item is None or isinstance(item, bool | int | float):
            parent[slot] = item
        elif isinstance(item, dict):
            out: dict[Any, Any] = {}
            parent[slot] = out
            for k, v in item.items():
                key = escape(k) if isinstance(k, str) else k
                out[key] = None
                stack.append((v, out, key))
        elif isinstance(item, list | tuple):
            seq: list[Any] = [None] * len(item)
            parent[slot] = seq
            stack.extend((v, seq, i) for i, v in enumerate(item))
        else:
            parent[slot] = escape(str(item)) if stringify else item
    return root[0]


def check_text(value: object, *, where: str, max_chars: int | None = None,
               allow_empty: bool = False) -> str:
    """An option that must be a str SQLite can store, or ConfigurationError naming it."""
    if not isinstance(value, str):
        raise ConfigurationError(f"{where}: expected a string, got {_short(value)}")
    if not allow_empty and not value:
        raise ConfigurationError(f"{where}: must be a non-empty string")
    if max_chars is not None and len(value) > max_chars:
        raise ConfigurationError(
            f"{where}: {_short(value)} is {len(value)} characters, over the {max_chars}-character "
            "limit")
    if not encodable(value):
        raise ConfigurationError(
            f"{where}: {_short(value)} holds a lone surrogate (undecodable bytes, e.g. from "
            "os.fsdecode), which can't be stored as UTF-8; decode the bytes with an explicit "
            "encoding or errors='replace'")
    return value


def _short(value: object, width: int = 60) -> str:
    """repr() of a value for an error message, cut to `width` characters."""
    text = repr(value)
    return text if len(text) <= width else text[: width - 3] + "..."


# --------------------------------------------------------------------------- encoding

_EXIT = object()

#: A path kept as a chain (parent, step) and spelt out only for the message: building every
#: path string on the way down would cost O(depth**2) on a deeply nested value.
_Path = tuple[Any, str]


def _spell(node: _Path | None) -> str:
    steps: list[str] = []
    while node is not None:
        node, step = node
        steps.append(step)
    return "".join(reversed(steps))


def _key_step(k: Any) -> str:
    return f"[{json.dumps(k)}]" if isinstance(k, str) else f"[{k!r}]"


def _bad_key(where: str, k: Any) -> str | None:
    if k is not None and not isinstance(k, str | int | float | bool):
        return f"{where} key {k!r} is a {type(k).__name__}, which JSON cannot hold"
    if isinstance(k, float) and not math.isfinite(k):
        return f"{where} key {k!r}: JSON holds only finite numbers"
    if isinstance(k, str) and not encodable(k):
        return f"{where} key {_short(k)} holds a lone surrogate and can't be stored as UTF-8"
    return None


def _problem(value: Any, path: str, exc: BaseException) -> str:
    """Where `value` stops being storable JSON. Called only after encoding failed; iterative,
    so neither depth nor a cycle can break it."""
    on_path: set[int] = set()  # containers between the root and the current item
    deepest: tuple[int, _Path] = (0, (None, path))
    stack: list[tuple[Any, _Path, int]] = [(value, (None, path), 0)]
    while stack:
        item, node, depth = stack.pop()
        if item is _EXIT:
            on_path.discard(depth)  # for an exit marker, `depth` holds the container's id
            continue
        if depth > deepest[0]:
            deepest = (depth, node)
        if item is None or isinstance(item, bool | int):
            continue
        if isinstance(item, float):
            if not math.isfinite(item):
                return f"{_spell(node)} is {item!r}; JSON holds only finite numbers"
        elif isinstance(item, str):
            if not encodable(item):
                return (f"{_spell(node)} is {_short(item)}, which holds a lone surrogate "
                        "(undecodable bytes, e.g. from os.fsdecode) and can't be stored as UTF-8")
        elif isinstance(item, dict | list | tuple):
            if id(item) in on_path:
                return (f"{_spell(node)} refers back to a value that contains it "
                        "(a circular reference)")
            on_path.add(id(item))
            children: list[tuple[Any, _Path, int]] = []
            if isinstance(item, dict):
                for k, v in item.items():
                    if (bad := _bad_key(_spell(node), k)) is not None:
                        return bad
                    children.append((v, (node, _key_step(k)), depth + 1))
            else:
                children = [(v, (node, f"[{i}]"), depth + 1) for i, v in enumerate(item)]
            stack.append((_EXIT, node, id(item)))
            stack.extend(reversed(children))  # LIFO: the first child is looked at first
        else:
            hint = " (use .isoformat())" if hasattr(item, "isoformat") else ""
            return f"{_spell(node)} is a {type(item).__name__}, which JSON cannot hold{hint}"
    if isinstance(exc, RecursionError | _TooDeep):
        depth, node = deepest
        where = _spell(node)
        shown = where if len(where) <= 80 else where[:40] + "..." + where[-30:]
        limit = ("JSON encoding allows" if isinstance(exc, RecursionError)
                 else f"the store's JSON queries read ({MAX_DEPTH} levels)")
        return f"{path} is nested {depth + 1} levels deep (at {shown}), deeper than {limit}"
    return f"{path} cannot be stored as JSON: {exc}"


def dumps(value: Any, *, what: str | None = None, limit: int | None = None) -> str:
    """Encode as compact, strict JSON or raise PayloadSerializationError naming the path.

    `what` names what enters the store ("payload", "items[3]", "output", "metadata", "data"
    for token data): it starts the paths in errors and picks the size limit from `LIMITS`
    (output, metadata and data have their own; anything else is a payload). `limit` overrides
    it, in UTF-8 bytes.

    Without `what`, `value` is one of the engine's own records (a run's error, its already
    checked tags or metadata): text a run produced is kept with lone surrogates escaped
    visibly, as log lines are, and no size limit applies, so a record never fails its commit.
    """
    try:
        text = _encode(value)
        size = len(text) if text.isascii() else len(text.encode("utf-8"))
        if what is not None and not readable_by_sqlite(text):
            raise _TooDeep(text[:40])
    except (TypeError, ValueError, RecursionError) as exc:  # UnicodeEncodeError is a ValueError
        if what is None:
            return _record(value, exc)
        raise PayloadSerializationError(_problem(value, what, exc)) from None
    if what is None:
        return text
    if limit is not None:
        cap = limit
    elif what == "payload":  # the common case, without a lookup
        cap = LIMITS.payload_bytes
    else:
        cap = LIMITS.bytes_for(what)[1]
    if size > cap:
        name = LIMITS.bytes_for(what)[0]
        raise PayloadSerializationError(
            f"{what} is {size} bytes of JSON, over the {cap}-byte limit "
            f"(configure(limits={{{name!r}: ...}}) changes it)")
    return text


def _record(value: Any, exc: BaseException) -> str:
    """An engine record that failed to encode: escape its text, or say what else is wrong."""
    escaped = escape_tree(value, stringify=False)
    try:
        text = _encode(escaped)
        text.encode("utf-8")
    except (TypeError, ValueError, RecursionError) as again:
        raise PayloadSerializationError(_problem(escaped, "record", again)) from exc
    return text


def loads_or(text: str | None, default: Any = None) -> Any:
    """`loads`, or `default` for text that doesn't decode (not JSON, or nested deeper than the
    decoder goes): for views of many rows, where one odd row must not fail the rest."""
    try:
        return loads(text)
    except (ValueError, RecursionError):
        return default


def tags_of(text: str | None) -> tuple[str, ...]:
    """A stored tags column as a tuple; () for NULL or an odd row (not JSON, not a list)."""
    value = loads_or(text)
    return tuple(value) if isinstance(value, list) else ()


def loads(text: str | None) -> Any:
    """Decode stored JSON (None stays None). Never unpickles."""
    if text is None:
        return None
    try:
        value, end = _scan(text, 0)
    except StopIteration:  # leading whitespace, or not JSON: the full decoder's answer or error
        return _decode(text)
    return value if end == len(text) else _decode(text)
