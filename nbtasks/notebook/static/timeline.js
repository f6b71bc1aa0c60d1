// The timeline: the runs of a time window per queue, coloured by status. A queue drawn run by
// run has one lane per run executing at once; a summarised queue (more runs than the widget
// draws) shows how many runs started in each time bucket. "now" ticks once a second while the
// widget is on screen. Wheel to zoom, drag to pan, double-click (or "reset") to see it all.

function render({ model, el }) {
  const root = nbtEl("div", "nbt-timeline-w nbt-w");
  el.appendChild(root);
  const tip = new NbtTip(root);
  const body = nbtEl("div", "nbt-tl-body");
  root.insertBefore(body, tip.node);
  let received = performance.now();
  // The view, as seconds before now: [-window, 0] unless zoomed or panned.
  let view = null;
  let dragged = false;

  const data = () => model.get("data") || {};
  const now = () => (data().now || 0) + (performance.now() - received) / 1000;
  const fullView = () => [-(data().window || 300), 0];

  function clampView(lo, hi) {
    const [min, max] = fullView();
    const width = Math.min(Math.max(hi - lo, 0.5), max - min);
    lo = Math.max(min, Math.min(lo, max - width));
    return [lo, lo + width];
  }

  function runLines(bar, tNow) {
    const lines = [`${bar.task} · ${bar.id}`, `status: ${bar.status}`, `queue: ${bar.queue}`,
      `created: ${nbtTime(bar.created, true)}`];
    if (bar.started !== null) {
      lines.push(`waited in queue: ${nbtDuration(bar.started - bar.created)}`);
      lines.push(`started: ${nbtTime(bar.started, true)}`);
      const end = bar.ended === null ? tNow : bar.ended;
      lines.push(bar.ended === null ? `running for ${nbtDuration(end - bar.started)}`
        : `ended: ${nbtTime(bar.ended, true)} (ran ${nbtDuration(end - bar.started)})`);
    } else {
      lines.push(`not started (${nbtDuration(tNow - bar.created)} so far)`);
    }
    lines.push("click to open this run");
    return lines;
  }

  function draw() {
    const d = data();
    body.replaceChildren();
    tip.hide();
    const tNow = now();
    const [lo, hi] = view || fullView();
    const t0 = tNow + lo;
    const span = hi - lo;
    const x = (t) => ((t - t0) / span) * 100;

    const head = nbtEl("div", "nbt-tl-head");
    const present = new Set((d.bars || []).map((b) => b.status));
    for (const cell of d.summary || []) for (const s of Object.keys(cell.counts)) present.add(s);
    for (const status of [...present].sort()) {
      const item = nbtEl("span", "nbt-tl-legend");
      item.appendChild(nbtEl("span", `nbt-swatch ${nbtStatusClass(status)}`));
      item.appendChild(nbtEl("span", "", status));
      head.appendChild(item);
    }
    const tools = nbtEl("span", "nbt-tl-tools");
    const zoomBy = (factor) => {
      const [a, b] = view || fullView();
      const mid = (a + b) / 2;
      view = clampView(mid - ((b - a) * factor) / 2, mid + ((b - a) * factor) / 2);
      draw();
    };
    for (const [text, cls, act] of [["−", "nbt-tl-zoomout", () => zoomBy(1.5)],
      ["+", "nbt-tl-zoomin", () => zoomBy(1 / 1.5)], ["reset", "nbt-tl-reset", () => { view = null; draw(); }]]) {
      const b = nbtEl("button", `nbt-btn ${cls}`, text);
      b.type = "button";
      b.addEventListener("click", act);
      tools.appendChild(b);
    }
    tools.appendChild(nbtEl("span", "nbt-muted nbt-tl-hint", "wheel: zoom · drag: pan"));
    head.appendChild(tools);
    body.appendChild(head);

    const plot = nbtEl("div", "nbt-tl-plot");
    const axis = nbtEl("div", "nbt-tl-row nbt-tl-axisrow");
    axis.appendChild(nbtEl("div", "nbt-tl-label", ""));
    const ticks = nbtEl("div", "nbt-tl-track nbt-tl-axis");
    const step = nbtNiceStep(span, 6);
    for (let t = Math.ceil(lo / step) * step; t <= hi + 1e-9; t += step) {
      nbtTick(ticks, (t - lo) / span, Math.abs(t) < step / 2 ? "now" : `-${nbtDuration(-t)}`);
    }
    axis.appendChild(ticks);
    plot.appendChild(axis);

    if (!(d.queues || []).length) {
      plot.appendChild(nbtEl("div", "nbt-empty", "no runs in this window"));
    }
    const barsBy = new Map();
    for (const bar of d.bars || []) {
      if (!barsBy.has(bar.queue)) barsBy.set(bar.queue, []);
      barsBy.get(bar.queue).push(bar);
    }
    const cellsBy = new Map();
    let peak = 1;
    for (const cell of d.summary || []) {
      if (!cellsBy.has(cell.queue)) cellsBy.set(cell.queue, []);
      cellsBy.get(cell.queue).push(cell);
      peak = Math.max(peak, cell.total);
    }
    for (const queue of d.queues || []) {
      const row = nbtEl("div", `nbt-tl-row nbt-tl-${queue.mode}`);
      row.dataset.queue = queue.name;
      const label = nbtEl("div", "nbt-tl-label");
      label.appendChild(nbtEl("div", "nbt-tl-qname", queue.name));
      label.appendChild(nbtEl("div", "nbt-muted nbt-tl-qcount", queue.mode === "summary"
        ? `${queue.count} runs, summarised` : `${queue.count} run${queue.count === 1 ? "" : "s"}`));
      row.appendChild(label);
      const lanes = Math.max(1, queue.lanes);
      const summaryHeight = queue.mode === "summary" ? 36 : 0;
      const track = nbtEl("div", "nbt-tl-track");
      track.style.height = `${summaryHeight + lanes * 16 + 6}px`;
      for (const cell of cellsBy.get(queue.name) || []) {
        if (cell.end < t0 || cell.start > t0 + span) continue;
        const col = nbtEl("div", "nbt-tl-cell");
        col.style.left = `${x(cell.start)}%`;
        col.style.width = `${Math.max(0.2, x(cell.end) - x(cell.start))}%`;
        const h = Math.max(2, (cell.total / peak) * 34);
        col.style.height = `${h}px`;
        col.style.top = `${2 + 34 - h}px`;
        for (const [status, n] of Object.entries(cell.counts)) {
          const part = nbtEl("div", `nbt-tl-part ${nbtStatusClass(status)}`);
          part.style.flexGrow = String(n);
          col.appendChild(part);
        }
        col.addEventListener("mousemove", (e) => {
          e.stopPropagation();
          tip.show([`${cell.total} runs started`, `${nbtTime(cell.start)} – ${nbtTime(cell.end)}`,
            ...Object.entries(cell.counts).map(([s, n]) => `${s}: ${n}`)], e);
        });
        col.addEventListener("mouseleave", () => tip.hide());
        track.appendChild(col);
      }
      for (const bar of barsBy.get(queue.name) || []) {
        const end = bar.ended === null ? tNow : bar.ended;
        const start = bar.created;
        if (end < t0 || start > t0 + span) continue;
        const top = summaryHeight + 3 + bar.lane * 16;
        const waitEnd = bar.started === null ? end : bar.started;
        if (waitEnd > start) {
          const wait = nbtEl("div", "nbt-bar nbt-tl-wait");
          wait.style.left = `${x(start)}%`;
          wait.style.width = `${Math.max(0, x(waitEnd) - x(start))}%`;
          wait.style.top = `${top + 5}px`;
          track.appendChild(wait);
        }
        if (bar.started !== null) {
          const b = nbtEl("div", `nbt-bar nbt-tl-bar ${nbtStatusClass(bar.status)}`);
          b.dataset.run = bar.id;
          b.style.left = `${x(bar.started)}%`;
          b.style.width = `max(3px, ${x(end) - x(bar.started)}%)`;
          b.style.top = `${top}px`;
          if (bar.ended === null) b.classList.add("nbt-live");
          b.addEventListener("mousemove", (e) => { e.stopPropagation(); tip.show(runLines(bar, now()), e); });
          b.addEventListener("mouseleave", () => tip.hide());
          b.addEventListener("click", (e) => {
            e.stopPropagation();
            if (dragged) return;  // the end of a pan, not a click
            nbtSend(model, "clicked", { run: bar.id, span: null, kind: "run", key: bar.id });
          });
          track.appendChild(b);
        }
      }
      row.appendChild(track);
      plot.appendChild(row);
    }
    if (d.summarised) {
      plot.appendChild(nbtEl("div", "nbt-muted nbt-tl-note",
        `${d.summarised} runs on busy queues are summarised per ${nbtDuration(d.bucket)}`));
    }
    body.appendChild(plot);

    plot.addEventListener("wheel", (e) => {
      const track = plot.querySelector(".nbt-tl-track");
      if (!track) return;
      e.preventDefault();
      const box = track.getBoundingClientRect();
      const f = Math.min(1, Math.max(0, (e.clientX - box.left) / box.width));
      const [a, b] = view || fullView();
      const at = a + f * (b - a);
      const factor = e.deltaY > 0 ? 1.25 : 1 / 1.25;
      view = clampView(at - (at - a) * factor, at + (b - at) * factor);
      draw();
    }, { passive: false });
    plot.addEventListener("mousedown", (e) => {
      const track = plot.querySelector(".nbt-tl-track");
      if (!track || e.button !== 0) return;
      const width = track.getBoundingClientRect().width;
      const startX = e.clientX;
      const [a, b] = view || fullView();
      dragged = false;
      const move = (m) => {
        const shift = ((m.clientX - startX) / width) * (b - a);
        if (Math.abs(m.clientX - startX) > 3) {
          dragged = true;
          view = clampView(a - shift, b - shift);
          draw();
        }
      };
      const up = () => {
        window.removeEventListener("mousemove", move);
        window.removeEventListener("mouseup", up);
        setTimeout(() => { dragged = false; }, 0);  // after the click this mouseup may fire
      };
      window.addEventListener("mousemove", move);
      window.addEventListener("mouseup", up);
    });
    plot.addEventListener("dblclick", () => { view = null; draw(); });
  }

  model.on("change:data", () => { received = performance.now(); draw(); });
  draw();
  const stop = nbtTicking(root, draw);
  // after a kernel restart this view is dead: one line replaces it (restart.js)
  const unwatch = nbtWatchRestart(model, el);
  return () => { stop(); unwatch(); };
}

export default { render };
