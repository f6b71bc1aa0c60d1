"""The kernel's side of "pickle an unchanged task once": when can last attempt's bytes be reused?

cloudpickle takes a notebook function by value: its code, its defaults, its closure's cells,
the globals it names, and (recursively) the notebook functions those name. Pickling all that
again for every attempt of an unchanged task was the largest cost the kernel paid per pool run.
`Fingerprint` says cheaply whether anything it would capture can have changed since last time:

- it identifies each captured object by identity, and keeps the objects alive as long as the
  cached bytes, so an identity can't be reused by a new object meanwhile;
- a value that can change in place (a dict, a list, an instance, a class defined in the
  notebook) makes the task uncacheable: it is pickled at every attempt, as before, so a run
  always sees the values its attempt started with.

Functions and classes from importable modules travel by reference (the worker imports them), so
they are identified, not walked.
"""

from __future__ import annotations

import sys
import types
from collections import OrderedDict
from typing import Any

#: Values that can't change in place.
_ATOMS = (int, float, complex, str, bytes, bool, type(None), range, types.ModuleType,
          types.BuiltinFunctionType, types.CodeType)
_ATOM_TYPES = frozenset(_ATOMS)
_NOT_TUPLES = _ATOM_TYPES | {types.FunctionType}
#: How many fingerprints (and their pickles) the kernel keeps.
SIZE = 256


class Uncacheable(Exception):
    """Something captured can change in place: pickle this task at every attempt."""


def _by_reference(obj: Any) -> bool:
    """cloudpickle's rule, simplified: importable module-level objects go by name."""
    module = getattr(obj, "__module__", None)
    if module in (None, "__main__") or module not in sys.modules:
        return False
    found: Any = sys.modules[module]
    for part in getattr(obj, "__qualname__", "<>").split("."):
        found = getattr(found, part, None)
    return found is obj


class Fingerprint:
    """What a set of functions would capture, by identity (see the module docstring)."""

    def __init__(self, stubs: tuple[type, ...]) -> None:
        self.stubs = stubs  # kernel objects that travel as stubs (a Task, nbtasks.wait...)
        self.keep: list[Any] = []
        self.ids: list[int] = []
        self._seen: set[int] = set()

    def add_parts(self, parts: tuple[Any, ...]) -> None:
        """`add` each of `parts` in order; an absent one (None, the usual hook) costs a marker."""
        for part in parts:
            if part is None:
                self.ids.append(0)  # no object's id
            else:
                self.add(part)

    def add(self, obj: Any) -> None:
        # Every attempt of a pool run walks this: the exact-type tests come first, as they
        # are what most objects are (a tuple, None, a str, a function).
        kind = type(obj)
        if kind is tuple or kind is frozenset or (
                kind not in _NOT_TUPLES and isinstance(obj, tuple | frozenset)):
            self.ids.append(-len(obj))  # by content: a tuple may be built per call
            for item in obj:
                self.add(item)
            return
        key = id(obj)
        self.ids.append(key)
        if key in self._seen:
            return
        self._seen.add(key)
        if obj is None:
            return  # immortal: nothing to keep
        self.keep.append(obj)
        if kind in _ATOM_TYPES or isinstance(obj, _ATOMS):
            return
        if kind is types.FunctionType:
            if not _by_reference(obj):
                self._function(obj)
        elif isinstance(obj, types.MethodType):
            self.add(obj.__func__)
            self.add(obj.__self__)
        elif isinstance(obj, type):
            if not _by_reference(obj):
                raise Uncacheable(obj)
        elif isinstance(obj, self.stubs):
            definition = getattr(obj, "definition", None)  # a Task: its id and schema travel
            if definition is not None:
                self.add(definition.id)
                self.add(definition.schema)
        else:
            raise Uncacheable(obj)

    def _function(self, fn: types.FunctionType) -> None:
        self.add(fn.__code__)
        if fn.__defaults__:
            self.add(fn.__defaults__)
        if fn.__kwdefaults__:
            self.add(tuple(fn.__kwdefaults__.items()))
        if fn.__dict__:
            raise Uncacheable(fn)
        for cell in fn.__closure__ or ():
            try:
                self.add(cell.cell_contents)
            except ValueError:  # an empty cell
                continue
        namespace = fn.__globals__
        for name in _global_names(fn.__code__):
            if name in namespace:
                self.add(namespace[name])


def _global_names(code: types.CodeType) -> set[str]:
    names = set(code.co_names)
    for const in code.co_consts:
        if isinstance(const, types.CodeType):
            names |= _global_names(const)
    return names


class PickleCache:
    """Fingerprint -> (the pickle, its hash), the oldest out first past `SIZE`."""

    def __init__(self) -> None:
        self._entries: OrderedDict[tuple[int, ...], tuple[list[Any], bytes, bytes]] = (
            OrderedDict())

    def get(self, print_: Fingerprint) -> tuple[bytes, bytes] | None:
        entry = self._entries.get(tuple(print_.ids))
        return None if entry is None else (entry[1], entry[2])

    def put(self, print_: Fingerprint, code: bytes, code_hash: bytes) -> None:
        self._entries[tuple(print_.ids)] = (print_.keep, code, code_hash)
        while len(self._entries) > SIZE:
            self._entries.popitem(last=False)
