// tunesmith board: the page. Plain JS, no external files, so it works offline.
"use strict";
const $ = (sel, root = document) => root.querySelector(sel);
const el = (tag, attrs = {}, ...kids) => {
  const node = document.createElement(tag);
  for (const [k, v] of Object.entries(attrs)) {
    if (k === "text") node.textContent = v; else if (k.startsWith("on")) node.addEventListener(k.slice(2), v);
    else node.setAttribute(k, v);
  }
  for (const kid of kids) node.append(kid);
  return node;
};
const COLORS = ["#2563eb", "#dc2626", "#16a34a", "#9333ea", "#ea580c", "#0891b2", "#4b5563"];
const state = { runs: [], selected: new Set(), focus: null, schema: null, values: {} };

async function api(path, body) {
  const opts = body === undefined ? {} : {
    method: "POST", headers: { "Content-Type": "application/json" }, body: JSON.stringify(body) };
  const res = await fetch(path, opts);
  const data = await res.json().catch(() => ({ error: `HTTP ${res.status}` }));
  if (!res.ok || data.error) throw new Error(data.error || `HTTP ${res.status}`);
  return data;
}
const fmt = (v, d = 4) => (v === null || v === undefined || Number.isNaN(v)) ? "-" :
  (typeof v === "number" ? (Math.abs(v) < 1e-3 && v !== 0 ? v.toExponential(2) : +v.toFixed(d)) : String(v));

// ------------------------------------------------------------------ tabs
for (const tab of document.querySelectorAll(".tab")) {
  tab.addEventListener("click", () => {
    document.querySelectorAll(".tab").forEach(t => t.classList.toggle("active", t === tab));
    document.querySelectorAll(".panel").forEach(p => p.classList.toggle("hidden", p.id !== `panel-${tab.dataset.tab}`));
    if (tab.dataset.tab === "try") fillTryRuns();
  });
}

// ------------------------------------------------------------------ charts (SVG)
function lineChart(target, title, series, opts = {}) {
  const W = 520, H = 260, L = 60, R = 12, T = 24, B = 34;
  const pts = series.flatMap(s => s.points).filter(p => Number.isFinite(p[1]));
  const ns = "http://www.w3.org/2000/svg";
  const svg = document.createElementNS(ns, "svg");
  svg.setAttribute("width", W); svg.setAttribute("height", H); svg.setAttribute("data-title", title);
  const add = (tag, attrs, text) => {
    const n = document.createElementNS(ns, tag);
    for (const [k, v] of Object.entries(attrs)) n.setAttribute(k, v);
    if (text !== undefined) n.textContent = text;
    svg.append(n); return n;
  };
  add("text", { x: L, y: 16, "font-size": 13, "font-weight": 600 }, title);
  if (!pts.length) { add("text", { x: W / 2 - 30, y: H / 2, fill: "#889" }, "no data yet"); target.replaceChildren(svg); return; }
  const xs = pts.map(p => p[0]), ys = pts.map(p => p[1]);
  let [x0, x1, y0, y1] = [Math.min(...xs), Math.max(...xs), Math.min(...ys), Math.max(...ys)];
  if (x1 === x0) x1 = x0 + 1;
  if (y1 === y0) { y0 -= Math.abs(y0) * 0.1 || 1; y1 += Math.abs(y1) * 0.1 || 1; }
  const sx = x => L + (x - x0) / (x1 - x0) * (W - L - R), sy = y => T + (y1 - y) / (y1 - y0) * (H - T - B);
  add("line", { x1: L, y1: H - B, x2: W - R, y2: H - B, stroke: "#99a" });
  add("line", { x1: L, y1: T, x2: L, y2: H - B, stroke: "#99a" });
  for (let i = 0; i <= 4; i++) {
    const y = y0 + (y1 - y0) * i / 4;
    add("text", { x: L - 6, y: sy(y) + 4, "text-anchor": "end", "font-size": 10, fill: "#556" }, fmt(y, 3));
    add("line", { x1: L, y1: sy(y), x2: W - R, y2: sy(y), stroke: "#eef" });
  }
  // Steps are integers: ticks at a 1-2-5 spacing, so labels never repeat or skip unevenly.
  const decade = 10 ** Math.max(0, Math.floor(Math.log10((x1 - x0) / 5)));
  const spacing = [1, 2, 5, 10].map(m => m * decade).find(d => (x1 - x0) / d <= 5);
  for (let x = Math.ceil(x0 / spacing) * spacing; x <= x1; x += spacing)
    add("text", { x: sx(x), y: H - B + 14, "text-anchor": "middle", "font-size": 10, fill: "#556" }, x);
  add("text", { x: W - R, y: H - 4, "text-anchor": "end", "font-size": 10, fill: "#556" }, "step");
  series.forEach((s, i) => {
    const good = s.points.filter(p => Number.isFinite(p[1]));
    if (!good.length) return;
    add("polyline", { points: good.map(p => `${sx(p[0])},${sy(p[1])}`).join(" "), fill: "none",
      stroke: s.color, "stroke-width": 1.8, "stroke-dasharray": s.dash || "", "data-series": s.name,
      "data-points": good.length, class: "series" });
    if (good.length === 1) add("circle", { cx: sx(good[0][0]), cy: sy(good[0][1]), r: 3, fill: s.color });
    add("text", { x: W - R - 4, y: T + 12 + 13 * i, "text-anchor": "end", "font-size": 11, fill: s.color }, s.name);
  });
  target.replaceChildren(svg);
}

function barChart(target, title, bins) {
  const series = [{ name: "examples", color: COLORS[0], points: [] }];
  const W = 520, H = 220, L = 50, B = 40, T = 24;
  const ns = "http://www.w3.org/2000/svg";
  const svg = document.createElementNS(ns, "svg");
  svg.setAttribute("width", W); svg.setAttribute("height", H);
  const add = (tag, attrs, text) => { const n = document.createElementNS(ns, tag);
    for (const [k, v] of Object.entries(attrs)) n.setAttribute(k, v); if (text !== undefined) n.textContent = text; svg.append(n); };
  add("text", { x: L, y: 16, "font-size": 13, "font-weight": 600 }, title);
  const top = Math.max(1, ...bins.map(b => b[2])), w = (W - L - 10) / Math.max(bins.length, 1);
  bins.forEach(([lo, hi, n], i) => {
    const h = (H - T - B) * n / top;
    add("rect", { x: L + i * w + 2, y: H - B - h, width: w - 4, height: h, fill: COLORS[0], class: "bin", "data-count": n });
    add("text", { x: L + i * w + w / 2, y: H - B + 13, "text-anchor": "middle", "font-size": 9, fill: "#556" }, `${lo}-${hi}`);
    add("text", { x: L + i * w + w / 2, y: H - B - h - 3, "text-anchor": "middle", "font-size": 9 }, n);
  });
  add("text", { x: W - 10, y: H - 6, "text-anchor": "end", "font-size": 10, fill: "#556" }, "tokens per example");
  void series; target.replaceChildren(svg);
}

// ------------------------------------------------------------------ runs tab
let runsCall = 0;
async function refreshRuns() {
  let data;
  const call = ++runsCall;
  try { data = await api("/api/runs"); } catch (e) { return; }
  if (call !== runsCall) return;
  state.runs = data.runs;
  $("#root").textContent = `runs in ${data.root}`;
  if (!state.focus && data.runs.length) { state.focus = data.runs[0].name; if (!state.selected.size) state.selected.add(state.focus); }
  const body = $("#runs-table tbody");
  body.replaceChildren(...data.runs.map(r => {
    const box = el("input", { type: "checkbox", "data-run": r.name });
    box.checked = state.selected.has(r.name);
    box.addEventListener("change", () => { box.checked ? state.selected.add(r.name) : state.selected.delete(r.name); state.focus = r.name; refreshCurves(); });
    const actions = el("td");
    if (r.status === "running") actions.append(el("button", { text: "Stop", "data-stop": r.name, onclick: () => act(r.name, "stop") }));
    if (r.status === "stopped" || r.status === "failed") actions.append(el("button", { text: "Resume", "data-resume": r.name, onclick: () => act(r.name, "resume") }));
    const s = r.summary || {};
    return el("tr", { "data-run": r.name, class: `run ${r.status}` },
      el("td", {}, box),
      el("td", {}, el("a", { href: "#", text: r.name, onclick: ev => { ev.preventDefault(); state.focus = r.name; if (!state.selected.size) state.selected.add(r.name); refreshRuns(); } })),
      el("td", {}, el("span", { class: `status ${r.status}`, text: r.status })),
      el("td", { class: "detail", text: r.detail }),
      el("td", { text: r.steps ?? "-" }),
      el("td", { text: fmt(s.final_loss) }),
      el("td", { text: fmt(s.best_val_loss) }),
      actions);
  }));
  await refreshCurves();
}

async function act(name, what) {
  try { await api(`/api/runs/${encodeURIComponent(name)}/${what}`, { nproc: +$("#nproc").value || 1 }); }
  catch (e) { alert(e.message); }
  setTimeout(refreshRuns, 300);
}

let curvesCall = 0;
async function refreshCurves() {
  const call = ++curvesCall;  // a slower, older refresh must not overwrite a newer one
  const names = [...state.selected].filter(n => state.runs.some(r => r.name === n));
  let metrics = {}, rows = [];
  if (names.length) { const d = await api("/api/diff", { runs: names }); metrics = d.metrics; rows = d.rows; }
  if (call !== curvesCall) return;
  const series = (key, dash) => names.map((n, i) => ({ name: `${n} ${key}`, color: COLORS[i % COLORS.length], dash,
    points: (metrics[n] || []).filter(r => typeof r[key] === "number").map(r => [r.step, r[key]]) }));
  lineChart($("#chart-loss"), "loss (solid: train, dashed: validation)", [...series("loss"), ...series("val_loss", "5 3")]);
  lineChart($("#chart-lr"), "learning rate", series("lr"));
  const diff = $("#diff-table");
  if (names.length < 2) diff.replaceChildren(el("tbody", {}, el("tr", {}, el("td", { class: "muted", text: "tick two or more runs" }))));
  else diff.replaceChildren(
    el("thead", {}, el("tr", {}, el("th", { text: "key" }), ...names.map(n => el("th", { text: n })))),
    el("tbody", {}, ...(rows.length ? rows.map(r => el("tr", { "data-key": r.key }, el("td", {}, el("code", { text: r.key })),
      ...names.map(n => el("td", { text: JSON.stringify(r.values[n]) })))) : [el("tr", {}, el("td", { text: "identical configs" }))])));
  if (state.focus && state.runs.some(r => r.name === state.focus)) {
    const d = await api(`/api/runs/${encodeURIComponent(state.focus)}`);
    if (call !== curvesCall) return;
    $("#focus-name").textContent = `${d.name}: ${d.status} (${d.detail})`;
    const s = d.summary || {};
    const last = [...d.metrics].reverse();
    const task = Object.entries(s).filter(([k]) => !["steps", "train_seconds", "tokens_per_s", "peak_memory_bytes", "trainable_params",
      "total_params", "final_loss", "best_val_loss", "output_dir", "world_size", "resumed_from_step", "skipped_steps", "examples_used"].includes(k));
    // Nested summary entries (compile: {enabled, reason, ...}) as "key value" pairs; empty ones skipped.
    const show = v => (v !== null && typeof v === "object")
      ? Object.entries(v).map(([k, x]) => `${k} ${fmt(x)}`).join(", ") : fmt(v);
    const seconds = s.train_seconds < 10 ? fmt(s.train_seconds, 2) : fmt(s.train_seconds, 1);
    const items = d.summary ? [["steps", s.steps], ["time", `${seconds} s`], ["tokens/s", fmt(s.tokens_per_s, 0)],
      ["trainable params", `${s.trainable_params} of ${s.total_params}`], ["final train loss", fmt(s.final_loss)],
      ["best val loss", fmt(s.best_val_loss)], ...task.filter(([, v]) => v !== null).map(([k, v]) => [k, show(v)])]
      : [["last loss", fmt((last.find(r => "loss" in r) || {}).loss)], ["last val loss", fmt((last.find(r => "val_loss" in r) || {}).val_loss)]];
    $("#focus-summary").replaceChildren(el("table", { class: "grid", id: "summary-table" }, el("tbody", {},
      ...items.map(([k, v]) => el("tr", {}, el("th", { text: k }), el("td", { text: String(v) }))))));
    $("#focus-log").textContent = d.log.join("\n");
  }
}

// ------------------------------------------------------------------ new-run tab
function fieldRow(f) {
  let input;
  const value = state.values[f.key] ?? f.default;
  if (f.kind === "bool") { input = el("input", { type: "checkbox", "data-key": f.key }); input.checked = value === "true"; }
  else if (f.kind === "select") {
    input = el("select", { "data-key": f.key }, ...f.choices.map(c => el("option", { value: c, text: c })));
    input.value = value;
  } else input = el("input", { type: "text", "data-key": f.key, value });
  input.addEventListener("change", onFormChange);
  if (input.type === "text") input.addEventListener("input", onFormChange);
  return el("div", { class: "field" },
    el("label", {}, el("code", { text: f.key }), el("span", { class: "type", text: `${f.type} = ${f.default === "" ? "null" : f.default}` })),
    input, el("span", { class: "help", text: f.help }));
}

function unionSelect(union) {
  const sel = el("select", { "data-key": `${union}.name` }, ...Object.keys(state.schema.unions[union]).map(n => el("option", { value: n, text: n })));
  sel.value = state.values[`${union}.name`] || (union === "method" ? "full" : "single");
  sel.addEventListener("change", () => { readForm(); state.values[`${union}.name`] = sel.value; renderForm(); onFormChange(); });
  return el("div", { class: "field" }, el("label", {}, el("code", { text: `${union}.name` })), sel,
    el("span", { class: "help", text: `the ${union}; its options below` }));
}

function renderForm() {
  const s = state.schema, form = $("#config-form");
  const sets = [];
  for (const [name, fields] of Object.entries(s.sections)) {
    if (name === "train") for (const union of ["method", "strategy"]) {
      const tag = state.values[`${union}.name`] || (union === "method" ? "full" : "single");
      sets.push(el("fieldset", { "data-section": union }, el("legend", { text: union }), unionSelect(union),
        ...(s.unions[union][tag] || []).map(fieldRow)));
    }
    sets.push(el("fieldset", { "data-section": name }, el("legend", { text: name === "top" ? "top level" : name }), ...fields.map(fieldRow)));
  }
  form.replaceChildren(...sets);
}

function readForm() {
  const values = {};
  for (const input of document.querySelectorAll("#config-form [data-key]"))
    values[input.dataset.key] = input.type === "checkbox" ? String(input.checked) : input.value;
  Object.assign(state.values, values);
  return values;
}

let timer = null;
function onFormChange() { clearTimeout(timer); timer = setTimeout(checkForm, 350); }

async function checkForm() {
  const values = readForm();
  $("#form-note").textContent = "";
  try {
    const d = await api("/api/plan", { values, device: $("#plan-device").value, gpus: +$("#nproc").value || 1, compare: $("#plan-compare").checked });
    $("#form-error").textContent = "";
    renderPlan(d.rows, d.would_fit || []);
    return true;
  } catch (e) {
    // The plan shown was for the last valid form: clear it rather than let it pass for this one.
    $("#form-error").textContent = e.message; renderPlan([], []);
    return false;
  }
}

function renderPlan(rows, wouldFit) {
  $("#plan-fit").replaceChildren(...(wouldFit.length ? [el("p", { text: "Does not fit. What would fit, cheapest change first:" }),
    el("ul", {}, ...wouldFit.map(f => el("li", {}, el("code", { text: f.overrides.join(" ") }), el("span", { text: ` ${f.total_gib.toFixed(2)} GiB per device` }))))] : []));
  const head = ["method", "trainable", "total/device", "fits", "TFLOPs/step", "est. step"];
  const gib = v => `${v.toFixed(3)} GiB`;
  const body = [];
  for (const r of rows) {
    if (r.error) { body.push(el("tr", {}, el("td", { text: r.method }), el("td", { colspan: 5, text: r.error }))); continue; }
    body.push(el("tr", { "data-method": r.method }, el("td", { text: r.method }), el("td", { text: `${(r.trainable / 1e6).toFixed(2)}M` }),
      el("td", { class: "total", text: gib(r.total_gib) }), el("td", { text: r.fits ? "yes" : "NO" }),
      el("td", { text: r.step_tflops.toFixed(4) }), el("td", { text: r.step_seconds < 1 ? `${(r.step_seconds * 1000).toFixed(0)} ms` : `${r.step_seconds.toFixed(1)} s` })));
    body.push(el("tr", { class: "breakdown" }, el("td", {}), el("td", { colspan: 5, class: "muted",
      text: `${Object.entries(r.components_gib).map(([k, v]) => `${k.replace("_", " ")} ${gib(v)}`).join(" · ")} (${r.seq_len} tokens/example)` })));
  }
  $("#plan-table").replaceChildren(el("thead", {}, el("tr", {}, ...head.map(h => el("th", { text: h })))), el("tbody", {}, ...body));
}

let loadSeq = 0;
async function loadStart() {
  // Only the latest load renders: a slower earlier one (the page's own first load) must not
  // overwrite a form the user has started to fill. data-loading marks the form meanwhile.
  const choice = $("#start-from").value, seq = ++loadSeq, form = $("#config-form");
  form.dataset.loading = "1";
  try {
    const d = choice.startsWith("run:") ? await api(`/api/runs/${encodeURIComponent(choice.slice(4))}/form`)
      : await api(`/api/recipe?path=${encodeURIComponent(choice)}`);
    if (seq !== loadSeq) return;
    state.values = d.values; renderForm();
  } catch (e) { if (seq === loadSeq) $("#form-error").textContent = e.message; }
  finally { if (seq === loadSeq) delete form.dataset.loading; }
  if (seq === loadSeq) await checkForm();
}

async function launch() {
  const values = readForm();
  $("#form-note").textContent = "";
  try {
    const d = await api("/api/launch", { name: $("#run-name").value.trim(), values, nproc: +$("#nproc").value || 1 });
    $("#form-error").textContent = "";
    $("#form-note").textContent = `launched ${d.run}: see the Runs tab`;
    state.selected = new Set([d.run]); state.focus = d.run; refreshRuns();
  } catch (e) { $("#form-error").textContent = e.message; }
}

// ------------------------------------------------------------------ data tab
async function preview() {
  $("#data-error").textContent = "loading...";
  try {
    const d = await api("/api/preview", { values: readForm(), n: +$("#data-n").value || 5 });
    $("#data-error").textContent = "";
    $("#data-splits").replaceChildren(el("thead", {}, el("tr", {}, ...["split", "examples", "truncated", "dropped", "details"].map(h => el("th", { text: h })))),
      el("tbody", {}, ...d.splits.map(s => el("tr", { "data-split": s.split }, el("td", { text: s.split }), el("td", { text: s.examples }),
        el("td", { class: "truncated", text: s.truncated }), el("td", { text: s.dropped }), el("td", { class: "muted", text: s.line })))));
    barChart($("#data-hist"), "example lengths (tokens)", d.histogram);
    $("#data-examples").replaceChildren(el("p", { class: "muted", text: "trained tokens are highlighted" }),
      ...d.examples.map((e, i) => el("div", { class: "example", "data-example": i },
        el("div", { class: "muted", text: `example ${i} (${e.tokens} tokens)` }),
        ...e.segments.map(([trained, text]) => trained ? el("mark", { text }) : document.createTextNode(text)))));
  } catch (e) { $("#data-error").textContent = e.message; }
}

// ------------------------------------------------------------------ try tab
function fillTryRuns() {
  const sel = $("#try-run"), keep = sel.value;
  const done = state.runs.filter(r => r.has_model);
  sel.replaceChildren(...done.map(r => el("option", { value: r.name, text: r.name })));
  if (done.some(r => r.name === keep)) sel.value = keep;
}

// Each side keeps its own conversation: the base answers its own earlier replies, not the tuned ones.
const tryHistory = { tuned: [], base: [] };

function resetTry() {
  for (const which of ["tuned", "base"]) {
    tryHistory[which] = [];
    $(`#try-${which}-log`).replaceChildren();
    $(`#try-${which}`).textContent = ""; $(`#try-${which}`).dataset.done = "";
  }
}

async function streamInto(which, question) {
  const target = $(`#try-${which}`), note = $(`#try-${which}-note`);
  const messages = [...tryHistory[which], { role: "user", content: question }];
  target.textContent = "";
  const res = await fetch("/api/chat", { method: "POST", headers: { "Content-Type": "application/json" },
    body: JSON.stringify({ run: $("#try-run").value, messages, which, max_new_tokens: +$("#try-tokens").value || 32 }) });
  if (!res.ok) { const d = await res.json().catch(() => ({})); throw new Error(d.error || `HTTP ${res.status}`); }
  note.textContent = res.headers.get("X-Model") || "";
  const reader = res.body.getReader(), dec = new TextDecoder();
  for (;;) { const { done, value } = await reader.read(); if (done) break; target.textContent += dec.decode(value, { stream: true }); }
  tryHistory[which] = [...messages, { role: "assistant", content: target.textContent.trim() }];
  target.dataset.done = "1";
}

function logTurn(which) {
  // The exchange shown in the answer box moves into the conversation log above it.
  const h = tryHistory[which];
  if (!h.length) return;
  const [q, a] = h.slice(-2);
  $(`#try-${which}-log`).append(el("div", { class: "turn user", text: q.content }), el("div", { class: "turn model", text: a.content }));
}

async function trySend() {
  const question = $("#try-input").value;
  $("#try-error").textContent = "";
  for (const which of ["tuned", "base"]) { logTurn(which); $(`#try-${which}`).dataset.done = ""; }
  try { await streamInto("tuned", question); }
  catch (e) { $("#try-error").textContent = e.message; return; }
  try { await streamInto("base", question); }
  catch (e) { $("#try-base").textContent = e.message; $("#try-base").dataset.done = "1"; }
}

// ------------------------------------------------------------------ start
async function start() {
  state.schema = await api("/api/schema");
  $("#plan-device").replaceChildren(...state.schema.devices.map(d => el("option", { value: d, text: d })));
  await refreshRuns();
  const runOptions = state.runs.map(r => el("option", { value: `run:${r.name}`, text: `run ${r.name}` }));
  $("#start-from").replaceChildren(el("optgroup", { label: "recipes" }, ...state.schema.recipes.map(p => el("option", { value: p, text: p }))),
    el("optgroup", { label: "runs" }, ...runOptions));
  renderForm();
  $("#load-recipe").addEventListener("click", loadStart);
  $("#launch").addEventListener("click", launch);
  $("#plan-device").addEventListener("change", checkForm);
  $("#plan-compare").addEventListener("change", checkForm);
  $("#data-preview").addEventListener("click", preview);
  $("#try-send").addEventListener("click", trySend);
  $("#try-reset").addEventListener("click", resetTry);
  $("#try-run").addEventListener("change", resetTry);
  const first = state.schema.recipes.find(p => p.includes("quickstart")) || state.schema.recipes[0];
  if (first) { $("#start-from").value = first; await loadStart(); }
  document.body.dataset.ready = "1";
  setInterval(refreshRuns, 2000);
}
start();
