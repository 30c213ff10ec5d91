// ntkal label: plain JavaScript over the JSON API (no build step, no external scripts).
"use strict";
const params = new URLSearchParams(location.search);
const token = params.get("token") || "";
const csrf = document.querySelector('meta[name="ntkal-csrf"]').content;
const client = sessionStorage.getItem("ntkalClient") ||
  (() => { const id = "tab-" + Math.random().toString(36).slice(2, 10);
           sessionStorage.setItem("ntkalClient", id); return id; })();
let classes = [];
let keys = [];
let current = null;
let zoom = null;              // null: own size, shrunk to fit when larger than the view
const latencies = [];         // key press -> next item drawn, ms (this page's own measurement)
window.ntkalLatencies = latencies;

// ------------------------------------------------------------------ requests
function withToken(url) {
  if (!token) return url;
  return url + (url.includes("?") ? "&" : "?") + "token=" + encodeURIComponent(token);
}

async function api(method, url, body) {
  const headers = {};
  if (token) headers["X-Ntkal-Token"] = token;
  let payload;
  if (method !== "GET") {
    headers["Content-Type"] = "application/json";
    headers["X-Ntkal-Csrf"] = csrf;
    payload = JSON.stringify(body === undefined ? {} : body);
  }
  let res;
  try {
    res = await fetch(url, { method, headers, body: payload });
  } catch (err) {
    throw new Error("The labelling server is not answering. Is `ntkal label` still running? " +
                    "Nothing was stored for this action.");
  }
  const data = await res.json().catch(() => ({}));
  if (!res.ok) {
    const what = { 400: "Refused", 403: "Refused", 409: "Conflict", 413: "Too large",
                   415: "Refused", 503: "The label store is busy", 500: "Server error" }[res.status] || `Error ${res.status}`;
    throw new Error(`${what}: ${data.detail || res.statusText}`);
  }
  return data;
}

// ------------------------------------------------------------------ messages
function say(text) {
  document.getElementById("message").textContent = text || "";
}

function toast(text, kind) {
  const box = document.getElementById("toasts");
  const el = document.createElement("div");
  el.className = "toast " + (kind || "error");
  el.setAttribute("role", "alert");
  el.textContent = text;
  const close = document.createElement("button");
  close.textContent = "×";
  close.title = "dismiss";
  close.addEventListener("click", () => el.remove());
  el.appendChild(close);
  box.appendChild(el);
  while (box.children.length > 4) box.firstChild.remove();
  setTimeout(() => el.remove(), 8000);
}

// ------------------------------------------------------------------ the action queue
// Keys typed while a request runs are queued and applied in order, each to the item on screen
// when its turn comes: none is dropped, none applies to an item the annotator has not seen.
const queue = [];
let running = false;

function enqueue(action) {
  queue.push(action);
  document.body.dataset.queued = String(queue.length);
  pump();
}

async function pump() {
  if (running) return;
  running = true;
  document.body.dataset.busy = "1";
  while (queue.length) {
    const action = queue.shift();
    document.body.dataset.queued = String(queue.length);
    try { await action(); } catch (err) { toast(err.message); }
  }
  running = false;
  document.body.dataset.busy = "";
}

// ------------------------------------------------------------------ showing an item
function keyFor(i) {
  const single = classes.every(c => /^[0-9a-z]$/i.test(c)) && new Set(classes.map(c => c.toLowerCase())).size === classes.length;
  if (single) return classes[i].toLowerCase();
  return i < 10 ? "1234567890"[i] : "qwertyuiopasdfhjklzxcvbnm"[i - 10] || "";
}

function escapeHtml(s) {
  return String(s).replace(/[&<>"']/g, c => ({ "&": "&amp;", "<": "&lt;", ">": "&gt;", '"': "&quot;", "'": "&#39;" }[c]));
}

function originText(origin) {
  if (!origin) return "";
  if (origin.file) return origin.file;
  if (origin.row) return "data row " + origin.row;
  return "";
}

function buildButtons() {
  const box = document.getElementById("buttons");
  box.innerHTML = "";
  keys = classes.map((_, i) => keyFor(i));
  classes.forEach((name, i) => {
    const b = document.createElement("button");
    b.dataset.label = String(i);
    b.id = "class-" + i;
    b.innerHTML = `${escapeHtml(name)}<kbd>${escapeHtml(keys[i])}</kbd>`;
    b.addEventListener("mousedown", ev => ev.preventDefault());   // no focus: Space never clicks it
    b.addEventListener("click", () => enqueue(() => submit(i, performance.now())));
    box.appendChild(b);
  });
  const help = document.getElementById("help-keys");
  const rows = classes.map((name, i) => [keys[i], "label as " + name]).concat([
    ["Enter", "accept the model's prediction"], ["Esc", "skip (it goes to the skipped list)"],
    ["Ctrl+Z", "undo your last label"], ["G", "grid of the next items"],
    ["+ / − / 0", "zoom in / out / fit or own size"], ["?", "this help"]]);
  help.innerHTML = rows.map(([k, what]) => `<tr><td><kbd>${escapeHtml(k)}</kbd></td><td>${escapeHtml(what)}</td></tr>`).join("");
}

function applyZoom() {
  const img = document.getElementById("item-image");
  if (!img || !img.naturalWidth) return;
  const view = document.getElementById("item-view");
  // Own size, shrunk to fit when larger than the view; a tiny image (8x8 digits) is enlarged
  // by a whole factor so its pixels stay sharp.
  const room = Math.min((view.clientWidth - 4) / img.naturalWidth, 520 / img.naturalHeight);
  const fit = img.naturalWidth < 160 ? Math.max(1, Math.floor(Math.min(room, 256 / img.naturalWidth))) : Math.min(1, room);
  const z = zoom === null ? fit : zoom;
  img.style.imageRendering = z > 1 ? "pixelated" : "auto";
  img.style.width = Math.round(img.naturalWidth * z) + "px";
  img.style.height = Math.round(img.naturalHeight * z) + "px";
  document.getElementById("zoom-level").textContent =
    `${z >= 1 ? "×" + +z.toFixed(2) : Math.round(100 * z) + "%"} of ${img.naturalWidth}×${img.naturalHeight} px`;
  document.body.dataset.zoom = String(z);
}

function drawn(started) {
  // Resolve once the item is on screen: its image decoded and a frame painted.
  return new Promise(resolve => {
    const img = document.getElementById("item-image");
    const paint = () => requestAnimationFrame(() => resolve(performance.now() - started));
    if (!img || (img.complete && img.naturalWidth)) paint();
    else { img.addEventListener("load", paint, { once: true }); img.addEventListener("error", paint, { once: true }); }
  });
}

function show(item) {
  current = item;
  const view = document.getElementById("item-view");
  const pred = document.getElementById("prediction");
  document.querySelectorAll("#buttons button").forEach(b => b.classList.remove("predicted"));
  document.getElementById("zoom-tools").hidden = true;
  document.getElementById("model-input").hidden = true;
  if (!item || item.index === null || item.index === undefined) {
    view.innerHTML = `<p class="muted">${item && item.done ? "Every item is labelled. 🎉" : escapeHtml((item && item.reason) || "nothing to show")}</p>`;
    ["item-index", "item-origin", "item-source"].forEach(id => { document.getElementById(id).textContent = ""; });
    pred.textContent = "";
    document.body.dataset.index = "";
    return;
  }
  if (item.kind === "image") {
    view.innerHTML = `<img id="item-image" alt="item ${item.index}" src="${withToken(item.original_url)}">`;
    const img = document.getElementById("item-image");
    img.addEventListener("load", applyZoom);
    document.getElementById("zoom-tools").hidden = false;
    const model = document.getElementById("model-image");
    model.src = withToken(item.image_url);
    document.getElementById("model-input").hidden = false;
  } else {
    const rows = Object.entries(item.row || {}).map(([k, v]) =>
      `<tr><th>${escapeHtml(k)}</th><td>${Number(v).toPrecision(6).replace(/\.?0+$/, "")}</td></tr>`).join("");
    view.innerHTML = `<table id="item-row">${rows}</table>`;
  }
  document.getElementById("item-index").textContent = "item #" + item.index;
  document.getElementById("item-origin").textContent = originText(item.origin);
  document.getElementById("item-source").textContent = item.source ? "· " + item.source : "";
  const p = item.prediction;
  if (p) {
    const pct = (100 * p.probability).toFixed(0);
    const note = p.trained ? "" : " (model not trained yet)";
    const rest = (p.top || []).slice(1).map(t => `${escapeHtml(t.class)} ${(100 * t.probability).toFixed(0)}%`).join(", ");
    pred.innerHTML = `model predicts <b>${escapeHtml(p.class)}</b> <span class="conf${p.probability < 0.5 ? " low" : ""}">${pct}%</span>${note}` +
      (rest ? ` <span class="muted small">then ${rest}</span>` : "");
    const b = document.getElementById("class-" + p.label);
    if (b) b.classList.add("predicted");
  }
  if (item.label !== undefined && item.label !== null) say(`item ${item.index} is labelled ${classes[item.label]}: change it in the history`);
  document.body.dataset.index = String(item.index);
}

// ------------------------------------------------------------------ actions
async function loadNext() {
  show(await api("GET", "/api/next?client=" + encodeURIComponent(client)));
}

async function submit(label, started) {
  if (!current || current.index === null || current.index === undefined) return;
  if (label === "predicted") {
    if (!current.prediction) return;
    label = current.prediction.label;
  }
  const index = current.index;
  const res = await api("POST", "/api/labels", { index, label, client });
  show(res.next);
  const ms = await drawn(started);
  latencies.push(ms);
  document.body.dataset.lastLatency = ms.toFixed(1);
  const lat = res.latency;
  say(res.duplicate ? `item ${res.index} was already labelled ${classes[res.label]}` :
      `item ${res.index} → ${classes[res.label]}` + (lat ? ` · next item on screen ${ms.toFixed(0)} ms after the key (server ${lat.total_ms.toFixed(0)} ms)` : ""));
  refreshSide();
}

async function undo() {
  const res = await api("POST", "/api/undo", { client });
  say(res.undone ? `undid item ${res.undone.index} (${res.undone.class})` : "nothing of yours to undo");
  if (res.next) show(res.next);
  refreshSide();
}

async function skip() {
  if (!current || current.index === null) return;
  const skipped = current.index;
  await api("POST", "/api/release", { index: skipped, client, skip: true });
  await loadNext();
  say(`skipped item ${skipped}: it is in the skipped list`);
  refreshSide();
}

async function openItem(index) {
  show(await api("POST", "/api/open", { index, client }));
}

async function relabel(index, label) {
  const res = await api("POST", "/api/relabel", { index, label, client });
  say(res.changed ? `item ${index}: ${classes[res.previous]} → ${classes[res.label]} (the look-ahead is conditioned anew)` : `item ${index} was already ${classes[res.label]}`);
  show(res.next);
  refreshSide();
}

// ------------------------------------------------------------------ grid
async function toggleGrid(force) {
  const grid = document.getElementById("grid");
  grid.hidden = force !== undefined ? !force : !grid.hidden;
  if (!grid.hidden) await loadGrid();
}

let gridItems = [];
async function loadGrid() {
  gridItems = await api("GET", `/api/grid?n=12&client=${encodeURIComponent(client)}`);
  document.getElementById("grid-tiles").innerHTML = gridItems.map(it => {
    const body = it.kind === "image" ? `<img alt="item ${it.index}" src="${withToken(it.image_url)}">` :
      `<div class="mini-row">${Object.entries(it.row || {}).slice(0, 4).map(([k, v]) => `${escapeHtml(k)}=${Number(v).toPrecision(3)}`).join(" ")}</div>`;
    const p = it.prediction;
    return `<button class="tile" data-index="${it.index}">${body}<span>${escapeHtml(p.class)} ${(100 * p.probability).toFixed(0)}%</span><span class="muted small">${escapeHtml(originText(it.origin) || "#" + it.index)}</span></button>`;
  }).join("") || `<p class="muted">nothing free to show</p>`;
  document.querySelectorAll("#grid-tiles .tile").forEach(t =>
    t.addEventListener("click", () => enqueue(() => openItem(Number(t.dataset.index)))));
}

async function acceptGrid() {
  for (const it of gridItems) {
    await api("POST", "/api/labels", { index: it.index, label: it.prediction.label, client: client + "-grid" });
  }
  say(`accepted ${gridItems.length} predictions from the grid`);
  await loadGrid();
  await loadNext();
  refreshSide();
}

// ------------------------------------------------------------------ dashboard
function drawCurve(curve, s) {
  const svg = document.getElementById("curve");
  const text = document.getElementById("curve-text");
  const L = 34, R = 270, T = 10, B = 122;
  let axes = `<line class="axis" x1="${L}" y1="${B}" x2="${R}" y2="${B}"/><line class="axis" x1="${L}" y1="${T}" x2="${L}" y2="${B}"/>` +
    [0, 0.5, 1].map(y => `<text class="tick" x="${L - 4}" y="${B - (B - T) * y + 3}" text-anchor="end">${100 * y}%</text>`).join("") +
    `<text class="tick" x="${(L + R) / 2}" y="146" text-anchor="middle">labels</text>`;
  if (!curve.length) {
    svg.innerHTML = axes;
    text.textContent = s.test_size ? "points appear after each retrain (held-out accuracy)" :
      "no labelled test split: a file's held-out rows or a built-in test set give the curve";
    return;
  }
  const xs = curve.map(p => p.labels);
  const x0 = Math.min(...xs), x1 = Math.max(...xs, x0 + 1);
  const px = x => L + (R - L) * (x - x0) / (x1 - x0), py = y => B - (B - T) * y;
  axes += `<text class="tick" x="${L}" y="134" text-anchor="start">${x0}</text><text class="tick" x="${R}" y="134" text-anchor="end">${x1}</text>`;
  const pts = curve.map(p => `${px(p.labels).toFixed(1)},${py(p.accuracy).toFixed(1)}`).join(" ");
  svg.innerHTML = axes + `<polyline fill="none" stroke="#2563eb" stroke-width="2" points="${pts}"/>` +
    curve.map(p => `<circle cx="${px(p.labels)}" cy="${py(p.accuracy)}" r="3" fill="#2563eb"><title>${p.labels} labels: ${(100 * p.accuracy).toFixed(1)}%</title></circle>`).join("");
  const last = curve[curve.length - 1];
  text.textContent = `${(100 * last.accuracy).toFixed(1)}% with ${last.labels} labels (${curve.length} retrain${curve.length > 1 ? "s" : ""}, ${s.test_size} held-out items)`;
}

async function refreshHistory() {
  const rows = await api("GET", "/api/history?limit=12");
  const box = document.getElementById("history");
  if (box.contains(document.activeElement)) return;   // do not redraw under an open <select>
  box.innerHTML = rows.map(r => `<li data-index="${r.index}"><span class="hist-item" title="open">#${r.index}</span> <span class="muted small">${escapeHtml(originText(r))}</span>` +
    `<select aria-label="label of item ${r.index}" data-index="${r.index}">${classes.map((c, i) => `<option value="${i}"${i === r.label ? " selected" : ""}>${escapeHtml(c)}</option>`).join("")}</select></li>`).join("");
  box.querySelectorAll("select").forEach(sel => sel.addEventListener("change", () => {
    const index = Number(sel.dataset.index), label = Number(sel.value);
    sel.blur();
    enqueue(() => relabel(index, label));
  }));
  box.querySelectorAll(".hist-item").forEach(el => el.addEventListener("click", () =>
    enqueue(() => openItem(Number(el.parentElement.dataset.index)))));
}

async function refreshSkipped() {
  const rows = await api("GET", "/api/skipped");
  document.getElementById("skipped-count").textContent = rows.length ? `(${rows.length})` : "";
  document.getElementById("skipped").innerHTML = rows.map(r =>
    `<li><a href="#" data-index="${r.index}">#${r.index}</a> <span class="muted small">${escapeHtml(originText(r))}</span></li>`).join("") ||
    `<li class="muted small">none</li>`;
  document.querySelectorAll("#skipped a").forEach(a => a.addEventListener("click", ev => {
    ev.preventDefault();
    enqueue(() => openItem(Number(a.dataset.index)));
  }));
}

function refreshSide() {
  refreshHistory().catch(() => {});
  refreshSkipped().catch(() => {});
}

let statsFailed = false;
async function refreshStats() {
  let s;
  try { s = await api("GET", "/api/stats"); statsFailed = false; }
  catch (err) { if (!statsFailed) toast(err.message); statsFailed = true; return; }
  if (!classes.length) { classes = s.classes; buildButtons(); }
  const phase = document.getElementById("phase");
  phase.textContent = s.phase;
  phase.className = "pill" + (s.phase === "warm-up" ? " warm" : "");
  document.getElementById("strategy").textContent = "strategy: " + s.strategy;
  document.getElementById("strategy").title = s.strategy_text;
  document.getElementById("progress-text").textContent =
    `${s.labelled} / ${s.pool_size} labelled` + (s.phase === "warm-up" ? ` · the strategy takes over after ${s.warmup} labels and a retrain` : ` · scoring ${s.scored} candidates`);
  const lat = s.latency;
  const mine = latencies.length ? latencies.slice(-50).sort((a, b) => a - b)[Math.floor(Math.min(latencies.length, 50) / 2)] : null;
  document.getElementById("latency").textContent = lat.last ?
    `key → next item ${mine !== null ? mine.toFixed(0) + " ms" : "–"} (median) · server ${lat.median_total_ms.toFixed(0)} ms` : "";
  const max = Math.max(1, ...Object.values(s.per_class));
  document.getElementById("counts").innerHTML = Object.entries(s.per_class).map(([name, n]) =>
    `<div class="count-row"><span>${escapeHtml(name)}</span><div class="track"><div class="fill" style="width:${100 * n / max}%"></div></div><span>${n}</span></div>`).join("");
  const r = s.retrain;
  document.getElementById("retrain-bar").style.width = r.epochs ? `${100 * r.epoch / r.epochs}%` : "0";
  const text = { idle: s.trained ? "weights loaded" : "not trained yet",
                 training: `training on ${r.labels} labels: epoch ${r.epoch} / ${r.epochs}`,
                 preparing: "building the new look-ahead session…",
                 done: `done: ${r.labels} labels in ${(r.seconds || 0).toFixed(1)} s` +
                       (r.accuracy !== null ? `, held-out accuracy ${(100 * r.accuracy).toFixed(1)}%` : ""),
                 failed: "failed: " + r.error }[r.state];
  document.getElementById("retrain-text").textContent = text;
  document.getElementById("retrain").disabled = r.state === "training" || r.state === "preparing";
  drawCurve(s.curve, s);
}

async function importFile(ev) {
  const file = ev.target.files[0];
  if (!file) return;
  const text = await file.text();
  ev.target.value = "";
  let body;
  if (file.name.endsWith(".json")) {
    try { body = JSON.parse(text); } catch (err) { toast(`${file.name} is not valid JSON (${err.message})`); return; }
  } else body = { csv: text };
  enqueue(async () => {
    const res = await api("POST", "/api/import", body);
    say(`imported ${res.added} labels (${res.skipped} already there)`);
    refreshStats();
    refreshSide();
    await loadNext();
  });
}

// ------------------------------------------------------------------ keys
function toggleHelp(force) {
  const help = document.getElementById("help");
  help.hidden = force !== undefined ? !force : !help.hidden;
}

document.addEventListener("keydown", ev => {
  if (ev.target.tagName === "INPUT" || ev.target.tagName === "SELECT") return;
  const started = performance.now();
  if ((ev.ctrlKey || ev.metaKey) && ev.key.toLowerCase() === "z") { ev.preventDefault(); enqueue(undo); return; }
  if (ev.ctrlKey || ev.metaKey || ev.altKey) return;
  if (ev.key === " ") { ev.preventDefault(); return; }   // Space never labels (nor clicks a button)
  if (ev.key === "?") { ev.preventDefault(); toggleHelp(); return; }
  if (!document.getElementById("help").hidden) { if (ev.key === "Escape") toggleHelp(false); return; }
  if (ev.key === "Enter") { ev.preventDefault(); enqueue(() => submit("predicted", started)); return; }
  if (ev.key === "Escape") { enqueue(skip); return; }
  if (ev.key === "+" || ev.key === "=") { zoomBy(1.25); return; }
  if (ev.key === "-") { zoomBy(0.8); return; }
  if (ev.key === "0") { if (keys.indexOf("0") < 0) { zoomFit(); return; } }
  const i = keys.indexOf(ev.key.toLowerCase());
  if (i >= 0) { ev.preventDefault(); enqueue(() => submit(i, started)); return; }
  if (ev.key.toLowerCase() === "g") { toggleGrid().catch(err => toast(err.message)); }
});

function currentZoom() { return Number(document.body.dataset.zoom || 1); }
function zoomBy(f) { zoom = Math.min(16, Math.max(0.05, currentZoom() * f)); applyZoom(); }
function zoomFit() { zoom = zoom === null ? 1 : null; applyZoom(); }

document.getElementById("accept").addEventListener("mousedown", ev => ev.preventDefault());
document.getElementById("accept").addEventListener("click", () => enqueue(() => submit("predicted", performance.now())));
document.getElementById("skip").addEventListener("click", () => enqueue(skip));
document.getElementById("undo").addEventListener("click", () => enqueue(undo));
document.getElementById("grid-toggle").addEventListener("click", () => toggleGrid().catch(err => toast(err.message)));
document.getElementById("grid-accept").addEventListener("click", () => enqueue(acceptGrid));
document.getElementById("zoom-in").addEventListener("click", () => zoomBy(1.25));
document.getElementById("zoom-out").addEventListener("click", () => zoomBy(0.8));
document.getElementById("zoom-fit").addEventListener("click", zoomFit);
document.getElementById("help-button").addEventListener("click", () => toggleHelp());
document.getElementById("help").addEventListener("click", ev => { if (ev.target.id === "help") toggleHelp(false); });
document.getElementById("retrain").addEventListener("click", async () => {
  try { await api("POST", "/api/retrain"); say("retraining in the background; keep labelling"); }
  catch (err) { toast(err.message); }
  refreshStats();
});
document.getElementById("export-csv").href = withToken("/api/export?format=csv");
document.getElementById("export-json").href = withToken("/api/export?format=json");
document.getElementById("import-file").addEventListener("change", importFile);
window.addEventListener("resize", applyZoom);

(async () => {
  await refreshStats();
  try { await loadNext(); } catch (err) { toast(err.message); }
  refreshSide();
  document.body.dataset.ready = "1";
  setInterval(refreshStats, 1500);
  setInterval(refreshSide, 5000);
})();
