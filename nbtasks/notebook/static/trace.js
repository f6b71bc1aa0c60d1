// The run trace: one run's life as a waterfall on one time axis. Rows come from the kernel
// (nbtasks.notebook.trace_model); this file only draws them, ticks "now" while the run is live
// and on screen, shows times on hover, and reports clicks through the `clicked` trait.

const DETAIL_TIMES = new Set(["until", "next retry at", "timeout at"]);

function traceLines(row, now) {
  const lines = [row.kind === "child" ? `child run ${row.label}` : row.label];
  lines.push(`status: ${row.status}`);
  const end = row.end === null ? null : row.end;
  lines.push(`start: ${nbtTime(row.start, true)}`);
  lines.push(end === null ? `end: still going (${nbtTime(now, true)})` : `end: ${nbtTime(end, true)}`);
  lines.push(`duration: ${nbtDuration((end === null ? now : end) - row.start)}`);
  for (const [key, value] of Object.entries(row.detail || {})) {
    if (value === null || value === undefined || value === "") continue;
    if (DETAIL_TIMES.has(key)) lines.push(`${key}: ${nbtTime(value, true)}`);
    else if (key === "duration") lines.push(`${key}: ${nbtDuration(value)}`);
    else lines.push(`${key}: ${typeof value === "object" ? JSON.stringify(value) : value}`);
  }
  if (row.open && row.kind === "child") lines.push("click to open this run");
  else if (row.span) lines.push("click to open this span");
  return lines;
}

function render({ model, el }) {
  const root = nbtEl("div", "nbt-trace nbt-w");
  el.appendChild(root);
  const tip = new NbtTip(root);
  const body = nbtEl("div", "nbt-tr-body");
  root.insertBefore(body, tip.node);
  let received = performance.now();
  let selectedKey = null;

  const now = () => {
    const data = model.get("data") || {};
    return (data.now || 0) + (performance.now() - received) / 1000;
  };
  const open = (value) => nbtSend(model, "clicked", value);

  function link(text, runId, cls) {
    const button = nbtEl("button", `nbt-link ${cls}`, text);
    button.type = "button";
    button.addEventListener("click", () => open({ run: runId, span: null, kind: "run" }));
    return button;
  }

  function draw() {
    const data = model.get("data") || {};
    body.replaceChildren();
    tip.hide();
    if (!data.run) {
      body.appendChild(nbtEl("div", "nbt-empty", data.message || "no run selected"));
      return;
    }
    const run = data.run;
    const tNow = now();
    const t0 = data.start;
    const t1 = Math.max(run.final ? data.end : Math.max(data.end, tNow), t0 + 0.001);
    const span = t1 - t0;
    const pct = (t) => Math.min(100, Math.max(0, ((t - t0) / span) * 100));

    const head = nbtEl("div", "nbt-tr-head");
    head.appendChild(nbtEl("span", `nbt-pill ${nbtStatusClass(run.status)}`, run.status));
    head.appendChild(nbtEl("b", "nbt-tr-task", run.task_id));
    head.appendChild(nbtEl("code", "nbt-tr-id", run.id));
    head.appendChild(nbtEl("span", "nbt-muted", nbtDuration(t1 - t0)));
    if (run.replayed_from) head.appendChild(link(`replay of ${run.replayed_from}`,
      run.replayed_from, "nbt-tr-replayed"));
    if (run.parent_id) head.appendChild(link(`parent ${run.parent_id}`, run.parent_id,
      "nbt-tr-parent"));
    body.appendChild(head);

    const grid = nbtEl("div", "nbt-tr-grid");
    const axis = nbtEl("div", "nbt-tr-row nbt-tr-axisrow");
    axis.appendChild(nbtEl("div", "nbt-tr-label nbt-muted", nbtTime(t0, true)));
    const ticks = nbtEl("div", "nbt-tr-track nbt-tr-axis");
    const step = nbtNiceStep(span, 6);
    for (let t = 0; t <= span + 1e-9; t += step) nbtTick(ticks, t / span, nbtOffset(t));
    axis.appendChild(ticks);
    grid.appendChild(axis);

    const marksBy = new Map();
    for (const mark of data.marks || []) {
      const key = mark.attempt === null ? "run" : `attempt:${mark.attempt}`;
      if (!marksBy.has(key)) marksBy.set(key, []);
      marksBy.get(key).push(mark);
    }

    for (const row of data.rows || []) {
      const line = nbtEl("div", `nbt-tr-row nbt-kind-${row.kind}`);
      line.dataset.key = row.key;
      if (row.key === selectedKey) line.classList.add("nbt-selected");
      const label = nbtEl("div", "nbt-tr-label");
      label.style.paddingLeft = `${4 + row.depth * 14}px`;
      label.appendChild(nbtEl("span", "nbt-tr-name", row.label));
      if (row.kind === "child") label.appendChild(nbtEl("code", "nbt-tr-childid", row.open));
      line.appendChild(label);
      const track = nbtEl("div", "nbt-tr-track");
      const bar = nbtEl("div", `nbt-bar nbt-tr-bar ${nbtStatusClass(row.status)}`);
      const end = row.end === null ? tNow : row.end;
      bar.style.left = `${pct(row.start)}%`;
      bar.style.width = `max(2px, ${pct(end) - pct(row.start)}%)`;
      if (row.end === null) bar.classList.add("nbt-live");
      track.appendChild(bar);
      const took = nbtEl("span", "nbt-tr-dur", nbtDuration(end - row.start));
      took.style.left = `calc(${pct(end)}% + 6px)`;
      track.appendChild(took);
      for (const mark of marksBy.get(row.key) || []) {
        const m = nbtEl("span", `nbt-mark nbt-level-${mark.level}`);
        m.style.left = `${pct(mark.ts)}%`;
        m.addEventListener("mousemove", (e) => {
          e.stopPropagation();
          tip.show([`log · ${mark.level}`, nbtTime(mark.ts, true), mark.message], e);
        });
        track.appendChild(m);
      }
      line.appendChild(track);
      line.addEventListener("mousemove", (e) => tip.show(traceLines(row, now()), e));
      line.addEventListener("mouseleave", () => tip.hide());
      const activate = () => {
        selectedKey = row.key;
        for (const other of grid.querySelectorAll(".nbt-selected")) other.classList.remove("nbt-selected");
        line.classList.add("nbt-selected");
        showDetail(row);
        open({ run: row.open || run.id, span: row.span, kind: row.kind, key: row.key });
      };
      line.tabIndex = 0;
      line.addEventListener("click", activate);
      line.addEventListener("keydown", (e) => { if (e.key === "Enter") activate(); });
      grid.appendChild(line);
    }
    if (!run.final) {
      const nowLine = nbtEl("div", "nbt-tr-now");
      nowLine.style.left = `calc(var(--nbt-label-width) + (100% - var(--nbt-label-width)) * ${pct(tNow) / 100})`;
      grid.appendChild(nowLine);
    }
    body.appendChild(grid);
    const detail = nbtEl("div", "nbt-tr-detail nbt-muted");
    body.appendChild(detail);
    function showDetail(row) {
      detail.replaceChildren(...traceLines(row, now()).map((t) => nbtEl("div", "", t)));
    }
    const selected = (data.rows || []).find((r) => r.key === selectedKey);
    if (selected) showDetail(selected);

    const left = data.left_out || {};
    if (left.spans || left.children) {
      body.appendChild(nbtEl("div", "nbt-muted",
        `not drawn: ${left.spans || 0} more spans, ${left.children || 0} more child runs`));
    }
    if ((data.errors || []).length) {
      const errors = nbtEl("div", "nbt-tr-errors");
      errors.appendChild(nbtEl("div", "nbt-tr-section", "Errors, every attempt"));
      data.errors.forEach((err, i) => {
        const box = nbtEl("details", "nbt-tr-error");
        if (i === data.errors.length - 1) box.open = true;
        const title = err.attempt === null ? "run" : `attempt ${err.attempt}`;
        box.appendChild(nbtEl("summary", "", `${title} · ${err.type}: ${err.message}`));
        box.appendChild(nbtEl("pre", "nbt-pre", err.traceback || `${err.type}: ${err.message}`));
        errors.appendChild(box);
      });
      body.appendChild(errors);
    }
  }

  model.on("change:data", () => { received = performance.now(); draw(); });
  draw();
  const stop = nbtTicking(root, () => {
    const data = model.get("data") || {};
    if (data.run && !data.run.final) draw();
  });
  // after a kernel restart this view is dead: one line replaces it (restart.js)
  const unwatch = nbtWatchRestart(model, el);
  return () => { stop(); unwatch(); };
}

export default { render };
