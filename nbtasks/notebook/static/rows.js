// The runs table's rows: one widget for the whole page of rows (instead of five widgets a
// row), drawn from plain data and updated in place, so a refresh or a clock tick changes only
// the text that changed and a hovered row or a focused box stays as it is. A click on a run id
// or a pick box is reported through the `clicked` trait; the kernel decides what it means.
const COLUMNS = ["task", "created", "waited", "took", "att", "machine", "queue", "tags"];
const HEAD = { pick: "", status: "status", id: "run", task: "task", created: "created",
  waited: "waited", took: "duration", att: "att.", machine: "machine", queue: "queue",
  tags: "tags" };
const CELL = { took: "dur" };  // the duration column's class is nbt-c-dur

function span(cls, text) {
  const s = document.createElement("span");
  s.className = cls;
  if (text !== undefined) s.textContent = text;
  return s;
}

function setText(node, text) {
  if (node.textContent !== text) node.textContent = text;
}

function render({ model, el }) {
  el.classList.add("nbt-rows-view");
  const grid = document.createElement("div");
  grid.className = "nbt-rows-grid";
  el.appendChild(grid);
  let views = [];
  let clicks = 0;
  const report = (data) => {
    clicks += 1;
    model.set("clicked", { ...data, n: clicks });
    model.save_changes();
  };

  const build = () => {
    grid.replaceChildren();
    views = [];
    const pickable = model.get("pickable");
    const head = document.createElement("div");
    head.className = "nbt-head";
    for (const key of Object.keys(HEAD)) {
      if (key === "pick" && !pickable) continue;
      head.appendChild(span(`nbt-c-${CELL[key] || key}`, HEAD[key]));
    }
    grid.appendChild(head);
    for (let i = 0; i < model.get("page_size"); i++) {
      const row = document.createElement("div");
      row.className = "nbt-row nbt-blank";
      const v = { row, id: null, status: "", flash: 0 };
      if (pickable) {
        const box = document.createElement("input");
        box.type = "checkbox";
        box.className = "nbt-row-pick";
        box.title = "pick for a bulk action";
        box.addEventListener("change", () => {
          if (!v.id) return;
          // Until the kernel's rows say so, a redraw (a tick, an event) still carries the old
          // pick: remember the click so that redraw doesn't untick the box under the user.
          v.pending = { id: v.id, value: box.checked };
          report({ kind: "pick", run: v.id, value: box.checked });
        });
        row.appendChild(box);
        v.box = box;
      }
      v.badge = span("nbt-badge");
      const status = span("nbt-c-status");
      status.appendChild(v.badge);
      v.test = span("nbt-test");
      status.appendChild(v.test);
      row.appendChild(status);
      v.link = document.createElement("button");
      v.link.className = "nbt-link nbt-run-link";
      v.link.addEventListener("click", () => { if (v.id) report({ kind: "open", run: v.id }); });
      row.appendChild(v.link);
      const cells = span("nbt-cells");
      v.cells = {};
      for (const key of COLUMNS) {
        const cell = span(`nbt-c-${CELL[key] || key}`);
        if (key === "created") {
          v.clock = span("nbt-clock");
          v.ago = span("nbt-ago");
          cell.append(v.clock, " ", v.ago);
        }
        cells.appendChild(cell);
        v.cells[key] = cell;
      }
      row.appendChild(cells);
      grid.appendChild(row);
      views.push(v);
    }
  };

  const show = (v, r) => {
    const row = v.row;
    if (!r) {  // blank: keeps its height, matches no status or run selector
      if (v.id === null && row.classList.contains("nbt-blank")) return;
      v.id = null;
      v.pending = null;
      row.className = "nbt-row nbt-blank";
      v.status = "";
      v.link.textContent = "";
      if (v.box) v.box.checked = false;
      return;
    }
    v.id = r.id;
    row.classList.remove("nbt-blank");
    if (v.status !== r.status) {
      if (v.status) row.classList.remove(`nbt-row-${v.status}`);
      row.classList.add(`nbt-row-${r.status}`);
      v.status = r.status;
      v.badge.className = `nbt-badge nbt-s-${r.status}`;
      v.badge.style.cssText = `background:${model.get("colours")[r.status] || "#57606a"};` +
        "color:white;border-radius:4px;padding:1px 6px;font-size:0.85em;white-space:nowrap";
      setText(v.badge, r.status);
    }
    setText(v.test, r.test ? " test" : "");
    setText(v.link, r.id);
    v.link.title = `open ${r.id}`;
    for (const key of COLUMNS) {
      if (key === "created") {
        setText(v.clock, r.created);
        setText(v.ago, r.ago);
      } else {
        setText(v.cells[key], r[key]);
      }
    }
    row.classList.toggle("nbt-selected", !!r.selected);
    if (r.flash && r.flash !== v.flash) {  // a new jump to this run: play the flash again
      row.classList.remove("nbt-flash");
      void row.offsetWidth;
      row.classList.add("nbt-flash");
    } else if (!r.flash) {
      row.classList.remove("nbt-flash");
    }
    v.flash = r.flash || 0;
    if (v.pending && (v.pending.id !== r.id || v.pending.value === !!r.picked)) v.pending = null;
    const picked = v.pending ? v.pending.value : !!r.picked;
    if (v.box && v.box.checked !== picked) v.box.checked = picked;
  };

  const update = () => {
    const rows = model.get("rows");
    views.forEach((v, i) => show(v, rows[i]));
  };

  const rebuild = () => { build(); update(); };
  rebuild();
  model.on("change:rows", update);
  model.on("change:page_size", rebuild);
  model.on("change:pickable", rebuild);
  return () => {
    model.off("change:rows", update);
    model.off("change:page_size", rebuild);
    model.off("change:pickable", rebuild);
  };
}

export default { render };
