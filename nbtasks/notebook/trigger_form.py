"""The Test form: pick a task, edit a JSON payload, set options, trigger a test run.

The payload starts as an example built from a `schema_task`'s pydantic model, or as the task's
last payload; the task's recent payloads and the templates saved in this kernel are one pick
away. The JSON is checked as you type. Options: queue, machine, delay, ttl, idempotency key,
max attempts, tags and metadata. Every problem (bad JSON, a payload the schema rejects, an
unknown duration) is shown in the form, because a traceback in the kernel log is invisible
from a widget.
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
from ._ui import Guard, button, classed, make, message, shared, widgets
from .display import esc
from .probe import Probe
from .redact import Redactor

if TYPE_CHECKING:
    from .._engine import Engine

_DEFAULT_MACHINE = ""

#: Payload templates saved from the form, per task id, for this kernel's lifetime.
TEMPLATES: dict[str, dict[str, Any]] = {}


def check_json(text: str) -> str:
    """"" when `text` is empty or valid JSON, else where and why it is not.

    >>> check_json('{"a": 1}'), check_json('{"a": }')
    ('', 'line 1, column 7: Expecting value')
    """
    if not text.strip():
        return ""
    try:
        json.loads(text)
    except json.JSONDecodeError as exc:
        return f"line {exc.lineno}, column {exc.colno}: {exc.msg}"
    return ""


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

    def __init__(self, engine: Engine, guard: Guard, on_triggered: Callable[[str], None], *,
                 rules: Redactor | None = None) -> None:
        self.engine = engine
        self.rules = rules or Redactor()
        self._on_triggered = on_triggered
        self._quiet = False
        self._busy = False
        wide = "520px"
        self.task = make(widgets.Dropdown, "nbt-test-task", width=wide, description="task")
        self.recent = make(widgets.Dropdown, "nbt-test-recent", width=wide,
                           description="start from", options=[("the example payload", -1)],
                           value=-1)
        self.payload = make(widgets.Textarea, "nbt-test-payload", width=wide, height="180px",
                            description="payload", continuous_update=True)
        self.check = make(widgets.HTML, "nbt-test-check")
        self.save = button("Save as template", "nbt-test-save", "nbt-fit")
        self.template_name = make(widgets.Text, "nbt-test-template-name", width="200px",
                                  placeholder="template name")
        self.delay = make(widgets.Text, "nbt-test-delay", width=wide, description="delay",
                          placeholder="e.g. 30s, 5m")
        self.ttl = make(widgets.Text, "nbt-test-ttl", width=wide, description="ttl",
                        placeholder="e.g. 10m: expire if not started by then")
        self.tags = make(widgets.Text, "nbt-test-tags", width=wide, description="tags",
                         placeholder="comma, separated")
        self.machine = make(widgets.Dropdown, "nbt-test-machine", width=wide,
                            description="machine", value=_DEFAULT_MACHINE,
                            options=[("task default", _DEFAULT_MACHINE),
                                     *((m, m) for m in MACHINES)])
        self.queue = make(widgets.Text, "nbt-test-queue", width=wide, description="queue",
                          placeholder="task default")
        self.idempotency_key = make(widgets.Text, "nbt-test-idempotency-key", width=wide,
                                    description="idem. key", placeholder="none")
        self.max_attempts = make(widgets.Text, "nbt-test-max-attempts", width=wide,
                                 description="attempts", placeholder="task default")
        self.metadata = make(widgets.Textarea, "nbt-test-metadata", width=wide, height="60px",
                             description="metadata", placeholder="{}")
        self.go = button("Trigger test run", "nbt-test-trigger", "nbt-fit",
                         button_style="primary")
        self.message = make(widgets.HTML, "nbt-test-message")
        self._payloads: list[Any] = []
        #: The payload text the form itself last put in the box: anything else there was typed.
        self._filled = ""
        self.task.observe(guard(self._on_task), "value")
        self.recent.observe(guard(self._on_recent), "value")
        self.payload.observe(guard(lambda _c: self._check()), "value")
        self.save.on_click(guard(lambda _b: self._save()))
        self.go.on_click(guard(lambda _b: self._go()))
        self.shortcut = Probe("nbt-test-form", shortcuts=True)  # Ctrl/Cmd+Enter in the form
        self.shortcut.observe(guard(lambda _c: self._go()), "submits")
        box = shared(widgets.Layout)
        super().__init__([
            self.shortcut, self.task, self.recent, self.payload, self.check,
            classed(widgets.HBox([self.template_name, self.save], layout=box), "nbt-test-tpl"),
            self.delay, self.ttl, self.tags, self.machine, self.queue, self.idempotency_key,
            self.max_attempts, self.metadata, self.go, self.message], layout=box)
        self.add_class("nbt-test-form")

    def _check(self) -> None:
        problem = check_json(self.payload.value)
        self.check.value = (message(f"not valid JSON: {esc(problem)}") if problem else
                            '<span class="nbt-ago">valid JSON</span>' if self.payload.value.strip()
                            else "")
        self.go.disabled = bool(problem)

    def _go(self) -> None:
        if self._busy:  # a trigger already on its way (a double click, or Ctrl+Enter twice)
            return
        self._busy = self.go.disabled = True
        try:
            self.trigger()
        finally:
            self._busy = False
            self.go.disabled = bool(check_json(self.payload.value))

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
            # The kernel's doing, not the user's: it may land after the user began typing in
            # a form that showed no task yet (a busy kernel answers late), and keeps that text.
            self._prefill(keep_typed=True)

    def _on_task(self, _change: Any) -> None:
        if not self._quiet:
            self._prefill()

    def _fill(self, text: str, keep_typed: bool = False) -> None:
        """Put `text` in the payload box, unless `keep_typed` and the user typed there since
        the form last filled it."""
        if keep_typed and self.payload.value != self._filled:
            return
        self._filled = self.payload.value = text

    def _prefill(self, keep_typed: bool = False) -> None:
        task_id = self.task.value
        self.message.value = ""
        if not task_id:
            self._fill("", keep_typed)
            return
        defn = self.engine.registry.get(task_id)
        self._payloads = [self.rules.mask("payload", p)
                          for p in queries.recent_payloads(self.engine.store, task_id)]
        saved = TEMPLATES.get(task_id, {})
        options: list[tuple[str, int]] = [("the example payload", -1)]
        options += [(f"template: {name}", -2 - i) for i, name in enumerate(saved)]
        options += [(f"recent: {json.dumps(p, default=str)[:60]}", i)
                    for i, p in enumerate(self._payloads)]
        self._quiet = True
        try:
            self.recent.options = options
            self.recent.value = -1
        finally:
            self._quiet = False
        if defn is not None and defn.schema is not None:
            value: Any = example_payload(defn.schema)
        else:
            value = self._payloads[0] if self._payloads else {}
        self._fill(json.dumps(value, indent=2, ensure_ascii=False), keep_typed)

    def _on_recent(self, _change: Any) -> None:
        if self._quiet:
            return
        pick = self.recent.value
        if pick == -1:
            self._prefill()
            return
        if pick <= -2:
            value = list(TEMPLATES.get(self.task.value, {}).values())[-2 - pick]
        else:
            value = self._payloads[pick]
        self._fill(json.dumps(value, indent=2, ensure_ascii=False))

    def _save(self) -> None:
        name = self.template_name.value.strip()
        if not name or not self.task.value:
            self.message.value = message("name the template first")
            return
        problem = check_json(self.payload.value)
        if problem:
            self.message.value = message(f"payload is not valid JSON: {esc(problem)}")
            return
        TEMPLATES.setdefault(self.task.value, {})[name] = json.loads(self.payload.value or "null")
        current = self.payload.value
        self._prefill()
        self.payload.value = current
        self.message.value = message(f"saved template {esc(name)}", ok=True)

    def options(self) -> dict[str, Any]:
        """The options typed in the form, for `trigger` (a bad one raises NbtasksError there)."""
        opts: dict[str, Any] = {}
        for name, widget in (("delay", self.delay), ("ttl", self.ttl)):
            text = widget.value.strip()
            if text:
                opts[name] = float(text) if text.replace(".", "", 1).isdigit() else text
        tags = [t.strip() for t in self.tags.value.split(",") if t.strip()]
        if tags:
            opts["tags"] = tags
        if self.machine.value:
            opts["machine"] = self.machine.value
        if self.queue.value.strip():
            opts["queue"] = self.queue.value.strip()
        if self.idempotency_key.value.strip():
            opts["idempotency_key"] = self.idempotency_key.value.strip()
        attempts = self.max_attempts.value.strip()
        if attempts:
            opts["max_attempts"] = int(attempts) if attempts.isdigit() else attempts
        meta = self.metadata.value.strip()
        if meta:
            problem = check_json(meta)
            if problem:
                raise _FormError(f"metadata is not valid JSON: {problem}")
            opts["metadata"] = json.loads(meta)
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
        except (NbtasksError, _FormError) as exc:
            self.message.value = message(esc(exc))
            return None
        self.message.value = message(f"triggered test run <code>{esc(handle.id)}</code>", ok=True)
        self._on_triggered(handle.id)
        return handle.id


class _FormError(ValueError):
    """A form field that can't be used; its message is shown in the form."""
