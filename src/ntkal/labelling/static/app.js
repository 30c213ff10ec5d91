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
let busy = false;

function withToken(url) {
  if (!token) return url;
  return url + (url.includes("?") ? "&" : "?") + "token=" + encodeURIComponent(token);
}

async function api(method, url, body, contentType) {
  const headers = {};
  if (token) headers["X-Ntkal-Token"] = token;
  let payload;
  if (method !== "GET") {
    headers["Content-Type"] = "application/json";
    headers["X-Ntkal-Csrf"] = csrf;
    payload = JSON.stringify(body === undefined ? {} : body);
  }
  const res = await fetch(url, { method, headers, body: payload });
  const data = await res.json().catch(() => ({}));
  if (!res.ok) throw new Error(data.detail || res.statusText);
  return data;
}

function say(text, error) {
  const el = document.getElementById("message");
  el.textContent = text || "";
  el.className = error ? "error" : "";
}

function keyFor(i) {
  const single = classes.every(c => /^[0-9a-z]$/i.test(c)) && new Set(classes).size === classes.length;
  if (single) return classes[i].toLowerCase();
  return i < 10 ? "1234567890"[i] : "qwertyuiopasdfghjklzxcvbnm"[i - 10] || "";
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
    b.addEventListener("click", () => submit(i));
    box.appendChild(b);
  });
}

function escapeHtml(s) {
  return String(s).replace(/[&<>"']/g, c => ({ "&": "&amp;", "<": "&lt;", ">": "&gt;", '"': "&quot;", "'": "&#39;" }[c]));
}

function show(item) {
  current = item;
  const view = document.getElementById("item-view");
  const idx = document.getElementById("item-index");
  const src = document.getElementById("item-source");
  const pred = document.getElementById("prediction");
  document.querySelectorAll("#buttons button").forEach(b => b.classList.remove("predicted"));
  if (!item || item.index === null || item.index === undefined) {
    view.innerHTML = `<p class="muted">${item && item.done ? "Every item is labelled. 🎉" : escapeHtml((item && item.reason) || "nothing to show")}</p>`;
    idx.textContent = ""; src.textContent = ""; pred.textContent = "";
    document.body.dataset.index = "";
    return;
  }
  document.body.dataset.index = String(item.index);
  if (item.kind === "image") {
    view.innerHTML = `<img id="item-image" alt="item ${item.index}" src="${withToken(item.image_url)}">`;
  } else {
    const rows = Object.entries(item.row || {}).map(([k, v]) =>
      `<tr><th>${escapeHtml(k)}</th><td>${Number(v).toPrecision(6).replace(/\.?0+$/, "")}</td></tr>`).join("");
    view.innerHTML = `<table id="item-row">${rows}</table>`;
  }
  idx.textContent = "item #" + item.index;
  src.textContent = item.source ? "· " + item.source : "";
  const p = item.prediction;
  if (p) {
    const note = p.trained ? "" : " (model not trained yet)";
    pred.innerHTML = `model predicts <b>${escapeHtml(p.class)}</b>${note}`;
    const b = document.getElementById("class-" + p.label);
    if (b) b.classList.add("predicted");
  }
}

async function loadNext() {
  show(await api("GET", "/api/next?client=" + encodeURIComponent(client)));
}

async function submit(label) {
  if (busy || !current || current.index === null) return;
  busy = true;
  try {
    const res = await api("POST", "/api/labels", { index: current.index, label, client });
    const lat = res.latency;
    say(res.duplicate ? `item ${res.index} was already labelled ${classes[res.label]}` :
        `item ${res.index} → ${classes[res.label]}` +
        (lat ? ` · stored in ${lat.store_ms.toFixed(1)} ms, next query ready ${lat.total_ms.toFixed(1)} ms after` : ""));
    show(res.next);
    refreshStats();
  } catch (err) {
    say(err.message, true);
  } finally {
    busy = false;
  }
}

async function undo() {
  try {
    const res = await api("POST", "/api/undo", { client });
    if (res.undone) say(`undid item ${res.undone.index} (${res.undone.class})`);
    else say("nothing to undo");
    show(res.next);
    refreshStats();
  } catch (err) { say(err.message, true); }
}

async function skip() {
  if (!current || current.index === null) return;
  const skipped = current.index;
  try {
    await api("POST", "/api/release", { index: skipped, client });
    await loadNext();
    say(`skipped item ${skipped}`);
  } catch (err) { say(err.message, true); }
}

function drawCurve(curve) {
  const svg = document.getElementById("curve");
  const text = document.getElementById("curve-text");
  if (!curve.length) { svg.innerHTML = ""; text.textContent = "appears after the first retrain"; return; }
  const xs = curve.map(p => p.labels), ys = curve.map(p => p.accuracy);
  const x0 = Math.min(...xs), x1 = Math.max(...xs, x0 + 1);
  const px = x => 10 + 240 * (x - x0) / (x1 - x0), py = y => 110 - 100 * y;
  const pts = curve.map(p => `${px(p.labels).toFixed(1)},${py(p.accuracy).toFixed(1)}`).join(" ");
  svg.innerHTML = `<polyline fill="none" stroke="#2563eb" stroke-width="2" points="${pts}"/>` +
    curve.map(p => `<circle cx="${px(p.labels)}" cy="${py(p.accuracy)}" r="3" fill="#2563eb"/>`).join("");
  const last = curve[curve.length - 1];
  text.textContent = `${(100 * last.accuracy).toFixed(1)}% with ${last.labels} labels`;
}

async function refreshStats() {
  let s;
  try { s = await api("GET", "/api/stats"); } catch (err) { return; }
  if (!classes.length) { classes = s.classes; buildButtons(); }
  const phase = document.getElementById("phase");
  phase.textContent = s.phase;
  phase.className = "pill" + (s.phase === "warm-up" ? " warm" : "");
  document.getElementById("progress-text").textContent =
    `${s.labelled} / ${s.pool_size} labelled` + (s.phase === "warm-up" ? ` · look-ahead starts after ${s.warmup} labels and a retrain` : ` · scoring ${s.subset} candidates`);
  const lat = s.latency;
  document.getElementById("latency").textContent = lat.last ?
    `label → next query: ${lat.last.total_ms.toFixed(1)} ms (median ${lat.median_total_ms.toFixed(1)} ms)` : "";
  const max = Math.max(1, ...Object.values(s.per_class));
  document.getElementById("counts").innerHTML = Object.entries(s.per_class).map(([name, n]) =>
    `<div class="count-row"><span>${escapeHtml(name)}</span><div class="track"><div class="fill" style="width:${100 * n / max}%"></div></div><span>${n}</span></div>`).join("");
  const r = s.retrain;
  const bar = document.getElementById("retrain-bar");
  bar.style.width = r.epochs ? `${100 * r.epoch / r.epochs}%` : "0";
  const text = { idle: s.trained ? "weights loaded" : "not trained yet",
                 training: `training on ${r.labels} labels: epoch ${r.epoch} / ${r.epochs}`,
                 preparing: "building the new look-ahead session…",
                 done: `done: ${r.labels} labels in ${(r.seconds || 0).toFixed(1)} s` +
                       (r.accuracy !== null ? `, held-out accuracy ${(100 * r.accuracy).toFixed(1)}%` : ""),
                 failed: "failed: " + r.error }[r.state];
  document.getElementById("retrain-text").textContent = text;
  document.getElementById("retrain").disabled = r.state === "training" || r.state === "preparing";
  drawCurve(s.curve);
}

async function importFile(ev) {
  const file = ev.target.files[0];
  if (!file) return;
  const text = await file.text();
  try {
    const res = await api("POST", "/api/import", file.name.endsWith(".json") ? JSON.parse(text) : { csv: text });
    say(`imported ${res.added} labels (${res.skipped} already there)`);
    refreshStats();
    loadNext();
  } catch (err) { say(err.message, true); }
  ev.target.value = "";
}

document.addEventListener("keydown", ev => {
  if (ev.target.tagName === "INPUT") return;
  if ((ev.ctrlKey || ev.metaKey) && ev.key.toLowerCase() === "z") { ev.preventDefault(); undo(); return; }
  if (ev.ctrlKey || ev.metaKey || ev.altKey) return;
  if (ev.key === "Enter" && current && current.prediction) { ev.preventDefault(); submit(current.prediction.label); return; }
  if (ev.key === "Escape") { skip(); return; }
  const i = keys.indexOf(ev.key.toLowerCase());
  if (i >= 0) { ev.preventDefault(); submit(i); }
});

document.getElementById("accept").addEventListener("click", () => current && current.prediction && submit(current.prediction.label));
document.getElementById("skip").addEventListener("click", skip);
document.getElementById("undo").addEventListener("click", undo);
document.getElementById("retrain").addEventListener("click", async () => {
  try { await api("POST", "/api/retrain"); say("retraining in the background; keep labelling"); }
  catch (err) { say(err.message, true); }
  refreshStats();
});
document.getElementById("export-csv").href = withToken("/api/export?format=csv");
document.getElementById("export-json").href = withToken("/api/export?format=json");
document.getElementById("import-file").addEventListener("change", importFile);

(async () => {
  await refreshStats();
  await loadNext();
  document.body.dataset.ready = "1";
  setInterval(refreshStats, 1500);
})();
