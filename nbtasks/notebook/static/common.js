// Shared by the run trace and the timeline: formatting, a tooltip, status colours, and a clock
// that ticks once a second only while the widget is on screen. Plain ES2020, no build step:
// the Python side prepends this file to each widget's module.

const NBT_FINAL = new Set(["COMPLETED", "CANCELED", "FAILED", "CRASHED", "SYSTEM_FAILURE",
  "INTERRUPTED", "EXPIRED", "TIMED_OUT"]);

function nbtEl(tag, cls, text) {
  const node = document.createElement(tag);
  if (cls) node.className = cls;
  if (text !== undefined && text !== null) node.textContent = String(text);
  return node;
}

function nbtDuration(seconds) {
  if (seconds === null || seconds === undefined || !isFinite(seconds)) return "";
  if (seconds < 0.001) return "<1 ms";
  if (seconds < 1) return `${Math.round(seconds * 1000)} ms`;
  if (seconds < 60) return `${Number(seconds.toFixed(1))} s`;
  const minutes = Math.floor(seconds / 60);
  const secs = Math.floor(seconds % 60);
  if (minutes < 120) return secs ? `${minutes}m ${String(secs).padStart(2, "0")}s` : `${minutes} min`;
  return `${Math.floor(minutes / 60)}h ${String(minutes % 60).padStart(2, "0")}m`;
}

function nbtTime(ts, withMs) {
  if (ts === null || ts === undefined) return "";
  const d = new Date(ts * 1000);
  const pad = (n, w) => String(n).padStart(w || 2, "0");
  let text = `${pad(d.getHours())}:${pad(d.getMinutes())}:${pad(d.getSeconds())}`;
  if (withMs) text += `.${pad(d.getMilliseconds(), 3)}`;
  const today = new Date();
  if (d.toDateString() !== today.toDateString()) {
    text = `${d.getFullYear()}-${pad(d.getMonth() + 1)}-${pad(d.getDate())} ${text}`;
  }
  return text;
}

function nbtOffset(seconds) {
  // An axis label relative to the start: "+0", "+250 ms", "+1.5 s", "+2m 05s".
  if (seconds <= 0) return "0";
  return "+" + nbtDuration(seconds);
}

function nbtStatusClass(status) {
  return "nbt-st-" + String(status || "").replace(/[^A-Z_]/g, "");
}

class NbtTip {
  // One tooltip per widget, filled with text lines (never HTML), kept inside the widget.
  constructor(host) {
    this.host = host;
    this.node = nbtEl("div", "nbt-tip");
    this.node.setAttribute("role", "tooltip");
    this.node.style.display = "none";
    host.appendChild(this.node);
  }
  show(lines, event) {
    this.node.replaceChildren(...lines.map((line, i) => nbtEl("div", i ? "nbt-tip-line" :
      "nbt-tip-title", line)));
    this.node.style.display = "block";
    const box = this.host.getBoundingClientRect();
    let x = event.clientX - box.left + 14;
    const y = event.clientY - box.top + 14;
    const width = this.node.offsetWidth;
    if (x + width > box.width) x = Math.max(0, event.clientX - box.left - width - 14);
    this.node.style.left = `${x}px`;
    this.node.style.top = `${y}px`;
  }
  hide() { this.node.style.display = "none"; }
}

function nbtTicking(el, onTick) {
  // Calls onTick() once a second while `el` is in view and the page is visible; nothing
  // otherwise, so a widget in a closed tab or scrolled away costs no work. Not while the
  // pointer is over it either: a redraw would pull the bar being read (or clicked) from under
  // it. Returns a stopper.
  let visible = false;
  let timer = null;
  let pointer = false;
  el.addEventListener("mouseenter", () => { pointer = true; });
  el.addEventListener("mouseleave", () => { pointer = false; });
  const tick = () => { if (!pointer) onTick(); };
  const update = () => {
    const want = visible && document.visibilityState !== "hidden";
    if (want && timer === null) timer = setInterval(tick, 1000);
    if (!want && timer !== null) { clearInterval(timer); timer = null; }
  };
  const observer = new IntersectionObserver((entries) => {
    visible = entries.some((e) => e.isIntersecting);
    update();
  });
  observer.observe(el);
  document.addEventListener("visibilitychange", update);
  return () => {
    observer.disconnect();
    document.removeEventListener("visibilitychange", update);
    if (timer !== null) clearInterval(timer);
  };
}

const NBT_STEPS = [0.001, 0.002, 0.005, 0.01, 0.02, 0.05, 0.1, 0.2, 0.5, 1, 2, 5, 10, 15, 30,
  60, 120, 300, 600, 900, 1800, 3600, 7200, 10800, 21600, 43200, 86400];

function nbtNiceStep(span, target) {
  // A round tick step in time units (1 s, 15 s, 1 min, 5 min, 1 h ...) giving about `target`
  // ticks over `span` seconds.
  const raw = span / Math.max(1, target);
  for (const step of NBT_STEPS) if (step >= raw) return step;
  return Math.ceil(raw / 86400) * 86400;
}

function nbtTick(parent, fraction, text) {
  // An axis tick at `fraction` of the width; near the right end its label sits left of it.
  const tick = nbtEl("span", fraction > 0.92 ? "nbt-tick nbt-tick-end" : "nbt-tick", text);
  tick.style.left = `${fraction * 100}%`;
  parent.appendChild(tick);
}

function nbtSend(model, name, value) {
  // A click reaches the kernel as a synced trait; `n` makes a second click on the same thing
  // a change too.
  const previous = model.get(name) || {};
  model.set(name, { ...value, n: (previous.n || 0) + 1 });
  model.save_changes();
}
