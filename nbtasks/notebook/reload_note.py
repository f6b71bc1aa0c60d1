"""The restart note that survives a page reload: a stylesheet saved beside each nbtasks widget.

After a kernel restart, the live note (restart_note.js) replaces each dead widget with "kernel
restarted: run the cell again". A page reload loses that: the widget models died with the
kernel, so no nbtasks code runs in the page, and JupyterLab and Notebook 7 draw "Error
displaying widget: model not found" for every widget output. Those outputs can't fall back:
the widget manager's renderer wins over any text/plain or text/html beside it in the same
mimebundle, and its failure draws its own text.

What a reloaded page still renders is the saved outputs. So every nbtasks widget is published
with a second output, a text/html one that holds only a stylesheet and a marker: it hides its
own output row, and in an output area that holds the marker it replaces a widget output that
failed (the renderer's empty error box: `jupyter-widgets` with no child) with the same one line,
once per cell. JupyterLab renders a `<style>` only in trusted output; a notebook you ran and
saved is trusted, one from elsewhere is not, and then the page shows the manager's error as
before. A live widget has children, so the rule never touches one.
"""

from __future__ import annotations

from typing import Any

from .display import in_widget_kernel, show

#: The widget manager's box for a widget output it could not draw (model not found, or a view
#: that failed), in an output area that holds our marker.
_FAILED = (".jp-OutputArea:has(.nbt-reload-mark) "
           ".jp-OutputArea-output.jupyter-widgets.lm-Panel:not(:has(*))")
_ROW = ".jp-OutputArea-child"
NOTE_HTML = f"""<style>
{_ROW}:has(.nbt-reload-mark) {{ display: none; }}
{_FAILED} {{ font-size: 0; }}
{_FAILED}::before {{
  content: "kernel restarted: run the cell again"; display: block;
  color: var(--jp-ui-font-color1, inherit);
  border-left: 3px solid var(--jp-warn-color1, #bf8700);
  font-family: var(--jp-ui-font-family, system-ui, sans-serif);
  font-size: var(--jp-ui-font-size1, 13px); padding: 2px 8px; margin: 2px 0; }}
.jp-OutputArea:has(.nbt-reload-mark) {_ROW}:has(> .jupyter-widgets.lm-Panel:not(:has(*)))
  ~ {_ROW}:has(> .jupyter-widgets.lm-Panel:not(:has(*))) {{ display: none; }}
</style><span class="nbt-reload-mark"></span>"""


def display_with_note(widget: Any) -> None:
    """Publish `widget` as ipywidgets (or anywidget) would, then the reload note."""
    from IPython.display import display

    bundle = widget._repr_mimebundle_()
    if bundle is None:  # a widget with no view: nothing to draw, nothing to note
        return
    data, metadata = bundle if isinstance(bundle, tuple) else (bundle, None)
    display(data, raw=True, metadata=metadata)  # type: ignore[no-untyped-call]
    if in_widget_kernel():
        show({"text/html": NOTE_HTML}, raw=True)


class ReloadNoted:
    """Mixed into every widget nbtasks puts in a cell: shown as the widget plus the note."""

    def _ipython_display_(self) -> None:
        display_with_note(self)
