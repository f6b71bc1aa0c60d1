// The dashboard's eyes in the page: tells the kernel whether the dashboard is on screen (so a
// hidden dashboard does no work), scrolls a part into view when the kernel asks (so a run
// opened below a long table is not left off-screen), and with `shortcuts` on, reports Ctrl/Cmd+Enter
// pressed inside its part (the Test form's "run it").
function targetOf(el, cls) {
  return (cls && el.closest("." + cls)) || el.parentElement || el;
}

function render({ model, el }) {
  el.classList.add("nbt-probe-view");
  let observer = null;
  let target = null;
  let onScreen = false;
  const report = () => {
    const visible = onScreen && document.visibilityState === "visible";
    if (model.get("visible") !== visible) {
      model.set("visible", visible);
      model.save_changes();
    }
  };
  const attach = () => {
    if (!el.isConnected) {
      requestAnimationFrame(attach);
      return;
    }
    target = targetOf(el, model.get("target"));
    observer = new IntersectionObserver((entries) => {
      for (const entry of entries) onScreen = entry.isIntersecting;
      report();
    });
    observer.observe(target);
  };
  attach();
  const onVisibility = () => report();
  document.addEventListener("visibilitychange", onVisibility);
  const scroll = () => {
    const part = target || targetOf(el, model.get("target"));
    // "nearest": no jump when it is already in view; the page only moves as far as it must
    requestAnimationFrame(() => part.scrollIntoView({ block: "nearest", behavior: "auto" }));
  };
  model.on("change:scroll_seq", scroll);
  const onKey = (event) => {
    if (event.key === "Enter" && (event.ctrlKey || event.metaKey) && model.get("shortcuts")) {
      event.preventDefault();
      event.stopPropagation();  // not JupyterLab's "run cell"
      model.set("submits", model.get("submits") + 1);
      model.save_changes();
    }
  };
  const listen = () => {
    const part = target || targetOf(el, model.get("target"));
    if (!el.isConnected) { requestAnimationFrame(listen); return; }
    part.addEventListener("keydown", onKey, true);
  };
  if (model.get("shortcuts")) listen();
  return () => {
    const part = target || targetOf(el, model.get("target"));
    part.removeEventListener("keydown", onKey, true);
    if (observer) observer.disconnect();
    document.removeEventListener("visibilitychange", onVisibility);
    model.off("change:scroll_seq", scroll);
  };
}

export default { render };
