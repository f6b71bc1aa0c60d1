"""The Test form: pick a task, edit a JSON payload, set a few options, trigger a test run.

The payload starts as an example built from a `schema_task`'s pydantic model, or as the task's
last payload. Every problem (bad JSON, a payload the schema rejects, an unknown duration) is
shown in the form, because a traceback in the kernel log is invisible from a widget.
"""

from __future__ import annotations

import enum
import json
import types
import typing
from collections.abc import Callable
from typing import TYPE_CHECKING, Any

from pydantic import BaseModel
from pydantic_core import to_jsonable_python

from .._errors import NbtasksError
from .._models import MACHINES
from .._tasks import Task
from . import queries
from ._ui import Guard, button, make, message, shared, widgets
from .display import esc

if TYPE_CHECKING:
    from .._engine import Engine

_DEFAULT_MACHINE = ""


def _blank(annotation: Any) -> Any:
    """A neutral value of a type: "", 0, False, [], {} or a nested example."""
    origin = typing.get_origin(annotation)
    args = typing.get_args(annotation)
    if origin in (typing.Union, types.UnionType):
        kinds = [a for a in args if a is not type(None)]
        return _blank(kinds[0]) if kinds else None
    if origin is typing.Literal:
        return args[0] if args else None
    if origin in (list, tuple, set, frozenset):
        return []
    if origin is dict:
        return {}
    if not isinstance(annotation, type):
        return None
    if issubclass(annotation, BaseModel):
        return example_payload(annotation)
    if issubclass(annotation, enum.Enum):
        return to_jsonable_python(next(iter(annotation)))
    for kind, value in ((bool, False), (int, 0), (float, 0.0), (str, ""), (list, []), (dict, {})):
        if issubclass(annotation, kind):
            return value
    return None


def example_payload(model: type[BaseModel]) -> dict[str, Any]:
    """A payload showing a schema's shape: its defaults and examples, neutral values elsewhere.

    >>> class Order(BaseModel):
    ...     sku: str
    ...     qty: int = 1
    >>> example_payload(Order)
    {'sku': '', 'qty': 1}
    """
    out: dict[str, Any] = {}
    for name, field in model.model_fields.items():
        key = field.alias or name
        if field.examples:
            out[key] = to_jsonable_python(field.examples[0])
        elif not field.is_required():
            try:
                out[key] = to_jsonable_python(field.get_default(call_default_factory=True))
            except Exception:  # a default JSON cannot hold: leave a neutral value instead
                out[key] = _blank(field.annotation)
        else:
            out[key] = _blank(field.annotation)
    return out


class TriggerForm(widgets.VBox):  # type: ignore[misc]
    """See the module docstring. `on_triggered(run_id)` runs after a successful trigger."""

    def __init__(self, engine: Engine, guard: Guard, on_triggered: Callable[[str], None]) -> None:
        self.engine = engine
        self._on_triggered = on_triggered
        self._quiet = False
        wide = "520px"
        self.task = make(widgets.Dropdown, "nbt-test-task", width=wide, description="task")
        self.payload = make(widgets.Textarea, "nbt-test-payload", width=wide, height="180px",
                            description="payload")
        self.delay = make(widgets.Text, "nbt-test-delay", width=wide, description="delay",
                          placeholder="e.g. 30s, 5m")
        self.tags = make(widgets.Text, "nbt-test-tags", width=wide, description="tags",
                         placeholder="comma, separated")
        self.machine = make(widgets.Dropdown, "nbt-test-machine", width=wide,
                            description="machine", value=_DEFAULT_MACHINE,
                            options=[("task default", _DEFAULT_MACHINE),
                                     *((m, m) for m in MACHINES)])
        self.go = button("Trigger test run", "nbt-test-trigger", button_style="primary")
        self.message = make(widgets.HTML, "nbt-test-message")
        self.task.observe(guard(self._on_task), "value")
        self.go.on_click(guard(lambda _b: self.trigger()))
        super().__init__([self.task, self.payload, self.delay, self.tags, self.machine,
                          self.go, self.message], layout=shared(widgets.Layout))
        self.add_class("nbt-test-form")

    def set_tasks(self, task_ids: list[str]) -> None:
        """Offer the tasks this kernel defines; keep the choice (and its edited payload)."""
        if list(self.task.options) == task_ids:
            return
        current = self.task.value
        self._quiet = True
        try:
            self.task.options = task_ids
            self.task.value = current if current in task_ids else (
                task_ids[0] if task_ids else None)
        finally:
            self._quiet = False
        if self.task.value != current:
            self._prefill()

    def _on_task(self, _change: Any) -> None:
        if not self._quiet:
            self._prefill()

    def _prefill(self) -> None:
        task_id = self.task.value
        self.message.value = ""
        if not task_id:
            self.payload.value = ""
            return
        defn = self.engine.registry.get(task_id)
        if defn is not None and defn.schema is not None:
            value: Any = example_payload(defn.schema)
        else:
            value = queries.last_payload(self.engine.store, task_id)
            value = {} if value is None else value
        self.payload.value = json.dumps(value, indent=2, ensure_ascii=False)

    def options(self) -> dict[str, Any]:
        opts: dict[str, Any] = {}
        if self.delay.value.strip():
            delay = self.delay.value.strip()
            opts["delay"] = float(delay) if delay.replace(".", "", 1).isdigit() else delay
        tags = [t.strip() for t in self.tags.value.split(",") if t.strip()]
        if tags:
            opts["tags"] = tags
        if self.machine.value:
            opts["machine"] = self.machine.value
        return opts

    def trigger(self) -> str | None:
        """Trigger a test run from the form; its id, or None with the reason shown in the form."""
        task_id = self.task.value
        if not task_id:
            self.message.value = message("define a task first: no task is defined in this kernel")
            return None
        try:
            payload = json.loads(self.payload.value) if self.payload.value.strip() else None
        except json.JSONDecodeError as exc:
            self.message.value = message(f"payload is not valid JSON: {esc(exc)}")
            return None
        eng = self.engine
        try:
            defn = eng.registry.require(task_id)
            body = Task(defn, eng.registry).encode(payload)
            handle = eng.trigger_encoded(defn, body, self.options(), is_test=True)
        except NbtasksError as exc:
            self.message.value = message(esc(exc))
            return None
        self.message.value = message(f"triggered test run <code>{esc(handle.id)}</code>", ok=True)
        self._on_triggered(handle.id)
        return handle.id
