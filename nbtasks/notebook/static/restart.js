// One clear line instead of dead widgets once the kernel restarts. JupyterLab and Notebook 7 keep
// showing the old widgets after a restart: they look alive but reach no kernel any more, so a
// click does nothing and nothing updates. `nbtWatchRestart(model, el)`, called by a view's render,
// notices and replaces the output that holds `el` with "kernel restarted: run the cell again"
// (once per cell). Used by the hidden note inside every box of ipywidgets (restart_note.js) and by
// the run trace and the timeline, whose own view watches. Plain ES2020, prepended to each module.

const NBT_RESTART_LINE = "kernel restarted: run the cell again";
const NBT_RESTART_STYLE_ID = "nbt-restart-note-style";
const NBT_RESTART_CSS = `
.nbt-kernel-gone > :not(.nbt-restart-line) { display: none !important; }
.nbt-kernel-gone-quiet { display: none !important; }
.nbt-restart-line {
  color: var(--jp-ui-font-color1, var(--vscode-editor-foreground, inherit));
  border-left: 3px solid var(--jp-warn-color1, var(--vscode-editorWarning-foreground, #bf8700));
  font-family: var(--jp-ui-font-family, system-ui, sans-serif);
  font-size: var(--jp-ui-font-size1, 13px);
  padding: 2px 8px;
  margin: 2px 0;
}`;

function nbtRestartStyle() {
  if (document.getElementById(NBT_RESTART_STYLE_ID)) return;
  const style = document.createElement("style");
  style.id = NBT_RESTART_STYLE_ID;
  style.textContent = NBT_RESTART_CSS;
  document.head.appendChild(style);
}

// The output item that holds this widget: JupyterLab/Notebook 7/Voila, classic, VS Code; else
// the outermost widget around it.
function nbtOutputOf(el) {
  const out = el.closest(
    ".jp-OutputArea-output, .output_subarea, .cell-output-ipywidget-background");
  if (out) return out;
  let top = el;
  for (let p = el.parentElement; p; p = p.parentElement) {
    if (p.classList.contains("jupyter-widgets")) top = p;
  }
  return top;
}

function nbtShowGone(el) {
  if (!el.isConnected) return;
  nbtRestartStyle();
  const out = nbtOutputOf(el);
  if (out.classList.contains("nbt-kernel-gone") || out.classList.contains("nbt-kernel-gone-quiet")) {
    return;
  }
  // several widgets in one cell: one line for the cell, the others just go
  const area = out.parentElement && out.closest(".jp-OutputArea, .output");
  if (area && area.querySelector(".nbt-restart-line")) {
    out.classList.add("nbt-kernel-gone-quiet");
    return;
  }
  const line = document.createElement("div");
  line.className = "nbt-restart-line";
  line.textContent = NBT_RESTART_LINE;
  out.classList.add("nbt-kernel-gone");
  out.prepend(line);
}

// Watch `model`'s comm and kernel; returns the view's cleanup.
function nbtWatchRestart(model, el) {
  let removed = false;
  // comm_live turns false when the kernel restarts (the view stays on the page) and when the
  // widget is closed from Python (then the view is removed): wait a moment to tell them apart.
  const onComm = () => setTimeout(() => { if (!removed) nbtShowGone(el); }, 300);
  model.on("comm_live_update", onComm);
  // A crash that restarts the kernel by itself leaves comm_live alone: watch the kernel too,
  // where the widget manager exposes it (JupyterLab's and Notebook 7's do).
  const kernel = model.widget_manager && model.widget_manager.kernel;
  const onStatus = (_kernel, status) => {
    if (status === "restarting" || status === "autorestarting" || status === "dead") onComm();
  };
  if (kernel && kernel.statusChanged) kernel.statusChanged.connect(onStatus);
  return () => {
    removed = true;
    model.off("comm_live_update", onComm);
    if (kernel && kernel.statusChanged) kernel.statusChanged.disconnect(onStatus);
  };
}
