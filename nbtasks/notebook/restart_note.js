// The hidden note inside every box of ipywidgets nbtasks shows (status lines, batch bars, the
// dashboard): its only work is to watch for a kernel restart (static/restart.js, prepended).

function render({ model, el }) {
  el.classList.add("nbt-restart-note-view");
  return nbtWatchRestart(model, el);
}

export default { render };
