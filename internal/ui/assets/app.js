// forq's dashboard: plain JS over the JSON API of the same origin. Every
// value from the API goes into the page as text (textContent), never as
// HTML.
"use strict";

const CSRF = document.querySelector('meta[name="forq-csrf"]').content;
const RUN_NOW = document.querySelector('meta[name="forq-run-now"]').content === "true";
const HISTORY = 120; // samples kept for the charts (one per poll)
const POLL_MS = 1000;

const state = {
  page: "queues",
  queue: "", // the queue whose tasks are shown
  stats: null,
  prev: null, // the previous sample: {t, workers: Map of succeeded}
  done: 0, // tasks done since the page loaded (the workers' increments)
  hist: [], // {t, done} of the last RATE_MS
  series: { queued: [], done: [], failed: [] },
  deadQueue: "",
  taskID: "",
  open: new Set(), // dead letters expanded, by seq
};

// el builds an element: attrs are attributes (or on* listeners), children
// are nodes or strings (as text).
function el(tag, attrs, ...children) {
  const e = document.createElement(tag);
  for (const [k, v] of Object.entries(attrs || {})) {
    if (v === undefined || v === null || v === false) continue;
    if (k.startsWith("on")) e.addEventListener(k.slice(2), v);
    else e.setAttribute(k, v === true ? "" : String(v));
  }
  for (const c of children.flat(Infinity)) {
    if (c === undefined || c === null) continue;
    e.append(c instanceof Node ? c : document.createTextNode(String(c)));
  }
  return e;
}

function fill(tbody, rows, cols, empty) {
  tbody.replaceChildren(...(rows.length ? rows : [el("tr", { class: "empty" }, el("td", { colspan: cols }, empty))]));
}

function fmtTime(s, ms) {
  if (!s) return "";
  const d = new Date(s);
  if (isNaN(d) || d.getUTCFullYear() < 2) return "";
  const opts = { hour12: false, year: "numeric", month: "2-digit", day: "2-digit", hour: "2-digit", minute: "2-digit", second: "2-digit" };
  if (ms) opts.fractionalSecondDigits = 3;
  return d.toLocaleString(undefined, opts);
}

function fmtNum(n) {
  return (n || 0).toLocaleString();
}

function fmtRate(n) {
  return n >= 100 ? n.toFixed(0) : n >= 10 ? n.toFixed(1) : n.toFixed(2);
}

function badge(text, cls) {
  return el("span", { class: "badge " + (cls || text) }, text);
}

function taskLink(id) {
  return el("a", { href: "#task/" + encodeURIComponent(id), class: "mono" }, id);
}

function preview(p) {
  if (!p) return "";
  let t = p.text;
  if (p.binary) t = "(binary) " + t;
  if (p.truncated) t += " … (" + fmtNum(p.size) + " bytes)";
  return t;
}

function showError(msg) {
  const e = document.getElementById("error");
  e.textContent = msg || "";
  e.hidden = !msg;
}

async function api(path, body) {
  const opts = body === undefined ? {} : {
    method: "POST",
    headers: { "Content-Type": "application/json", "X-Forq-CSRF": CSRF },
    body: JSON.stringify(body),
  };
  const r = await fetch(path, { credentials: "same-origin", ...opts });
  let data = null;
  try { data = await r.json(); } catch (e) { data = null; }
  if (!r.ok && !(r.status === 404 && data && data.id !== undefined)) {
    throw new Error((data && data.error) || r.status + " " + r.statusText);
  }
  return data;
}

async function act(path, body, what) {
  try {
    await api(path, body);
    showError("");
    setStatus(what, true);
  } catch (e) {
    showError(what + " failed: " + e.message);
  }
  await refresh();
}

// setStatus shows msg in the header; an action's message (notice) stays
// there for NOTICE_MS before the polls' "updated" line takes it back.
const NOTICE_MS = 8000;
let noticeUntil = 0;
function setStatus(msg, notice) {
  if (notice) noticeUntil = Date.now() + NOTICE_MS;
  else if (Date.now() < noticeUntil) return;
  document.getElementById("status").textContent = msg;
}

// ---- charts ----

function push(series, v) {
  series.push(v);
  if (series.length > HISTORY) series.shift();
}

// sample adds a poll's figures to the charts. Workers publish their
// counts every few seconds, so the rate of tasks done is taken over the
// last RATE_MS, from a running total of each live worker's increments (a
// worker that comes or goes makes no jump). Failures are the queues'
// failed attempts in the last minute, as the workers count them: a
// worker's deliveries minus its successes are not failures (a hand-back
// or a snooze is a delivery too).
const RATE_MS = 5000;
function sample(st) {
  const t = Date.now();
  const workers = new Map();
  for (const w of st.workers) workers.set(w.host + "/" + w.pid, w.succeeded);
  let queued = 0, failed = 0;
  for (const q of st.queues) { queued += q.queued; failed += q.failed_last_minute; }
  push(state.series.queued, queued);
  push(state.series.failed, failed);
  if (state.prev) {
    for (const [k, done] of workers) {
      const p = state.prev.workers.get(k);
      if (p !== undefined) state.done += Math.max(0, done - p);
    }
  }
  const hist = state.hist;
  hist.push({ t, done: state.done });
  while (hist.length > 2 && t - hist[1].t >= RATE_MS) hist.shift();
  const dt = (t - hist[0].t) / 1000;
  if (dt > 0) push(state.series.done, (state.done - hist[0].done) / dt);
  state.prev = { t, workers };
}

function drawChart(id, data, fmt) {
  const svg = document.getElementById(id);
  const W = 400, H = 120, top = 6, bottom = 4;
  const max = Math.max(1, ...data);
  const n = HISTORY - 1;
  const pts = data.map((v, i) => {
    const x = (W * (HISTORY - data.length + i)) / n;
    const y = H - bottom - ((H - top - bottom) * v) / max;
    return [x.toFixed(1), y.toFixed(1)];
  });
  const ns = "http://www.w3.org/2000/svg";
  const mk = (tag, attrs) => {
    const e = document.createElementNS(ns, tag);
    for (const [k, v] of Object.entries(attrs)) e.setAttribute(k, v);
    return e;
  };
  const kids = [mk("line", { class: "axis", x1: 0, y1: H - bottom, x2: W, y2: H - bottom })];
  if (pts.length > 1) {
    const line = "M" + pts.map((p) => p.join(",")).join("L");
    kids.push(mk("path", { class: "area", d: line + "L" + pts[pts.length - 1][0] + "," + (H - bottom) + "L" + pts[0][0] + "," + (H - bottom) + "Z" }));
    kids.push(mk("path", { class: "line", d: line, "data-points": pts.length }));
  }
  svg.replaceChildren(...kids);
  svg.parentElement.querySelector("figcaption .val").textContent =
    "now " + fmt(data.length ? data[data.length - 1] : 0) + " · peak " + fmt(Math.max(0, ...data));
}

// ---- pages ----

function renderQueues(st) {
  let queued = 0, running = 0, dead = 0, paused = 0;
  for (const q of st.queues) { queued += q.queued; running += q.running; dead += q.dead; if (q.paused) paused++; }
  const d = state.series.done;
  const card = (k, v, id) => el("div", { class: "card", id }, el("div", { class: "v" }, v), el("div", { class: "k" }, k));
  document.getElementById("cards").replaceChildren(
    card("queued", fmtNum(queued), "card-queued"),
    card("running", fmtNum(running), "card-running"),
    card("dead", fmtNum(dead), "card-dead"),
    card("workers", fmtNum(st.workers.length), "card-workers"),
    card("paused queues", fmtNum(paused), "card-paused"),
    card("done/s", fmtRate(d.length ? d[d.length - 1] : 0), "card-rate"),
  );
  drawChart("chart-queued", state.series.queued, fmtNum);
  drawChart("chart-done", state.series.done, fmtRate);
  drawChart("chart-failed", state.series.failed, fmtNum);
  const rows = st.queues.map((q) => {
    const prio = Object.entries(q.queued_by_priority || {}).filter(([, n]) => n > 0).map(([p, n]) => p + " " + fmtNum(n)).join(", ");
    const toggle = q.paused
      ? el("button", { class: "resume", onclick: () => act("/api/resume", { queue: q.queue }, "resumed " + q.queue) }, "Resume")
      : el("button", { class: "pause", onclick: () => act("/api/pause", { queue: q.queue }, "paused " + q.queue) }, "Pause");
    return el("tr", { "data-queue": q.queue, class: q.queue === state.queue ? "sel" : null },
      el("td", {}, el("a", { href: "#queues/" + encodeURIComponent(q.queue) }, q.queue)),
      el("td", { class: "qstate" }, q.paused ? badge("paused") : badge("active")),
      el("td", { class: "n queued" }, fmtNum(q.queued)),
      el("td", {}, prio),
      el("td", { class: "n running" }, fmtNum(q.running)),
      el("td", { class: "n" }, fmtNum(q.retrying)),
      el("td", { class: "n" }, fmtNum(q.scheduled)),
      el("td", { class: "n dead" }, fmtNum(q.dead)),
      el("td", { class: "n" }, fmtNum(q.processed_last_minute)),
      el("td", { class: "n" }, fmtNum(q.failed_last_minute)),
      el("td", {}, toggle));
  });
  fill(document.querySelector("#queues tbody"), rows, 11, "No queue yet: enqueue a task.");
}

async function renderQueueTasks() {
  const box = document.getElementById("queue-tasks");
  box.hidden = !state.queue;
  if (!state.queue) return;
  document.getElementById("queue-tasks-name").textContent = state.queue;
  const st = document.getElementById("task-state-filter").value;
  const list = await api("/api/tasks?limit=50&queue=" + encodeURIComponent(state.queue) + (st ? "&state=" + st : ""));
  const rows = list.map((t) => el("tr", {},
    el("td", {}, taskLink(t.id)),
    el("td", {}, badge(t.state)),
    el("td", {}, t.type),
    el("td", {}, t.priority),
    el("td", { class: "n" }, t.attempts),
    el("td", {}, fmtTime(t.state === "scheduled" ? t.due : t.enqueued)),
    el("td", {}, t.worker ? t.worker.host + " pid " + t.worker.pid : ""),
    el("td", { class: "mono" }, preview(t.payload).slice(0, 120))));
  fill(document.querySelector("#tasks tbody"), rows, 8, "No task in this queue.");
}

function renderWorkers(st) {
  const rows = st.workers.map((w) => el("tr", { "data-pid": w.pid },
    el("td", {}, w.host),
    el("td", { class: "n" }, w.pid),
    el("td", {}, (w.queues || []).join(", ")),
    el("td", {}, fmtTime(w.since)),
    el("td", { class: "n" }, fmtNum(w.in_flight)),
    el("td", { class: "n done" }, fmtNum(w.succeeded)),
    el("td", { class: "n" }, fmtNum(w.processed)),
    el("td", { class: "n restarts" }, fmtNum(w.restarts)),
    el("td", {}, (w.running || []).map((t, i) => [i ? " " : "", taskLink(t.id)]))));
  fill(document.querySelector("#workers tbody"), rows, 9, "No live worker.");
}

async function renderTask() {
  const box = document.getElementById("task-detail");
  if (!state.taskID) { box.replaceChildren(el("p", { class: "hint" }, "Enter a task ID, or follow a task's link.")); return; }
  const d = await api("/api/task?id=" + encodeURIComponent(state.taskID));
  const r = d.record;
  const kids = [];
  if (!r && d.dead.length === 0 && !d.task) {
    box.replaceChildren(el("p", { class: "hint", id: "task-missing" }, "No record and no dead letter for " + d.id + ". " + (d.record_error || "")));
    return;
  }
  const kv = (k, v) => [el("dt", {}, k), el("dd", {}, v)];
  if (r) {
    kids.push(el("dl", { class: "kv", id: "task-record" },
      kv("ID", el("span", { class: "mono" }, r.id)),
      kv("State", el("span", { id: "task-state" }, badge(r.state))),
      kv("Queue", r.queue), kv("Type", r.type),
      kv("Attempts", String(r.attempts)),
      r.worker_pid ? kv("Worker", (r.host || "") + " pid " + r.worker_pid) : [],
      r.error ? kv("Error", el("span", { class: "err" }, r.error)) : [],
      r.result ? kv("Result", el("pre", {}, resultText(r.result))) : []));
  } else {
    kids.push(el("p", { class: "hint" }, d.record_error || ""));
  }
  if (d.task) {
    const t = d.task;
    kids.push(el("h2", {}, "In its queue"), el("dl", { class: "kv", id: "task-queued" },
      kv("Now", badge(t.state)), kv("Priority", t.priority),
      kv("Enqueued", fmtTime(t.enqueued)),
      t.due ? kv("Due", fmtTime(t.due)) : [],
      t.worker ? kv("Running on", t.worker.host + " pid " + t.worker.pid + " since " + fmtTime(t.worker.started)) : [],
      kv("Payload", el("pre", { class: "payload" }, preview(t.payload)))));
  }
  const events = [];
  if (r) {
    if (r.scheduled_at) events.push([r.scheduled_at, "due (delayed task)"]);
    if (r.deadline) events.push([r.deadline, "deadline"]);
    // Pushed before the failures: at the same millisecond, the start
    // comes first (the sort is stable).
    if (r.started_at) events.push([r.started_at, "attempt " + r.attempts + " started"]);
    for (const a of r.history || []) events.push([a.at, "attempt " + a.attempt + " failed on " + (a.host || "?") + " pid " + (a.pid || "?") + ": " + a.error, true]);
    if (r.finished_at) events.push([r.finished_at, r.state, r.state !== "succeeded"]);
  }
  if (d.task && d.task.enqueued) events.push([d.task.enqueued, "enqueued"]);
  for (const l of d.dead) events.push([l.time, "dead-lettered after " + l.attempts + " attempts", true]);
  events.sort((a, b) => new Date(a[0]) - new Date(b[0]));
  kids.push(el("h2", {}, "Timeline"), el("ol", { class: "timeline" },
    events.map(([t, what, bad]) => el("li", { class: bad ? "bad" : null }, el("span", { class: "t" }, fmtTime(t, true)), what))));
  if (r && r.history && r.history.length) {
    kids.push(el("h2", {}, "Failed attempts"), el("table", { class: "grid" },
      el("thead", {}, el("tr", {}, el("th", { class: "n" }, "Attempt"), el("th", {}, "Worker"), el("th", {}, "Ended"), el("th", {}, "Error"))),
      el("tbody", {}, r.history.map((a) => el("tr", {},
        el("td", { class: "n" }, a.attempt), el("td", {}, (a.host || "") + " pid " + (a.pid || "")),
        el("td", {}, fmtTime(a.at)), el("td", { class: "err" }, a.error))))));
  }
  for (const l of d.dead) {
    kids.push(el("h2", {}, "Dead letter #" + l.seq),
      el("p", {}, el("button", { class: "retry", onclick: () => act("/api/dead/retry", { refs: [String(l.seq)] }, "retried " + l.id) }, "Retry"),
        " ", el("span", { class: "err" }, l.error)),
      el("pre", { class: "payload" }, preview(l.payload)));
  }
  box.replaceChildren(...kids);
}

function resultText(b64) {
  try {
    const bin = atob(b64);
    const bytes = Uint8Array.from(bin, (c) => c.charCodeAt(0));
    const text = new TextDecoder().decode(bytes.slice(0, 4096));
    return bytes.length > 4096 ? text + " … (" + fmtNum(bytes.length) + " bytes)" : text;
  } catch (e) {
    return b64;
  }
}

// syncOptions makes select sel offer "" and names, keeping its choice.
function syncOptions(sel, names, all) {
  const cur = sel.value;
  const want = ["", ...names];
  const have = Array.from(sel.options).map((o) => o.value);
  if (want.join("\n") !== have.join("\n")) {
    sel.replaceChildren(...want.map((n) => el("option", { value: n }, n || all)));
  }
  sel.value = want.includes(cur) ? cur : "";
}

async function renderDead() {
  const sel = document.getElementById("dead-queue");
  syncOptions(sel, (state.stats ? state.stats.queues : []).filter((q) => q.dead > 0).map((q) => q.queue), "every queue");
  const list = await api("/api/dead" + (sel.value ? "?queue=" + encodeURIComponent(sel.value) : ""));
  const rows = [];
  for (const l of list) {
    const ref = { refs: [String(l.seq)] };
    rows.push(el("tr", { "data-id": l.id, "data-seq": l.seq },
      el("td", {}, fmtTime(l.time)), el("td", {}, l.queue), el("td", {}, l.type),
      el("td", {}, taskLink(l.id)), el("td", { class: "n" }, l.attempts),
      el("td", { class: "err" }, l.error),
      el("td", { style: null },
        el("button", { class: "inspect", onclick: () => { state.open.has(l.seq) ? state.open.delete(l.seq) : state.open.add(l.seq); refresh(); } }, state.open.has(l.seq) ? "Hide" : "Inspect"),
        el("button", { class: "retry", onclick: () => act("/api/dead/retry", ref, "retried " + l.id) }, "Retry"),
        el("button", { class: "purge danger", onclick: () => { if (confirm("Delete dead letter " + l.id + " for good?")) act("/api/dead/purge", ref, "purged " + l.id); } }, "Purge"))));
    if (state.open.has(l.seq)) {
      const hdrs = Object.entries(l.headers || {}).map(([k, v]) => k + ": " + v.join(", ")).join("\n");
      rows.push(el("tr", {}, el("td", { colspan: 7 }, el("strong", {}, "Headers"), el("pre", {}, hdrs),
        el("strong", {}, "Payload (" + fmtNum(l.payload.size) + " bytes)"), el("pre", {}, preview(l.payload)))));
    }
  }
  fill(document.querySelector("#dead tbody"), rows, 7, "No dead letter.");
}

async function runNow(name) {
  try {
    const r = await api("/api/schedules/run", { name });
    showError("");
    setStatus("enqueued " + r.id + " from " + name, true);
  } catch (e) {
    showError("run " + name + " failed: " + e.message);
  }
}

async function renderSchedules() {
  const list = await api("/api/schedules");
  const rows = list.map((s) => el("tr", { "data-name": s.name },
    el("td", {}, s.name), el("td", { class: "mono" }, s.spec + (s.time_zone ? " (" + s.time_zone + ")" : "")),
    el("td", {}, s.queue), el("td", {}, s.type), el("td", { class: "mono" }, preview(s.payload).slice(0, 120)),
    el("td", {}, fmtTime(s.created)),
    el("td", {},
      RUN_NOW ? el("button", { class: "run", onclick: () => runNow(s.name) }, "Run now") : null,
      el("button", { class: "danger", onclick: () => { if (confirm("Remove schedule " + s.name + "?")) act("/api/schedules/remove", { name: s.name }, "removed " + s.name); } }, "Remove"))));
  fill(document.querySelector("#schedules tbody"), rows, 7, "No schedule (forq schedule add).");
}

// ---- routing and polling ----

function route() {
  const h = decodeURIComponent(location.hash.slice(1));
  const [page, ...rest] = h.split("/");
  const arg = rest.join("/");
  state.page = ["queues", "workers", "task", "dead", "schedules"].includes(page) ? page : "queues";
  if (state.page === "queues") state.queue = arg;
  if (state.page === "task") {
    state.taskID = arg;
    document.getElementById("task-id").value = arg;
  }
  for (const s of document.querySelectorAll(".page")) s.hidden = s.id !== "page-" + state.page;
  for (const a of document.querySelectorAll("#tabs a")) a.classList.toggle("active", a.dataset.tab === state.page);
  refresh();
}

let busy = false;
async function refresh() {
  if (busy) return;
  busy = true;
  try {
    const st = await api("/api/stats");
    state.stats = st;
    sample(st);
    if (state.page === "queues") { renderQueues(st); await renderQueueTasks(); }
    if (state.page === "workers") renderWorkers(st);
    if (state.page === "task") await renderTask();
    if (state.page === "dead") await renderDead();
    if (state.page === "schedules") await renderSchedules();
    setStatus("updated " + new Date().toLocaleTimeString(undefined, { hour12: false }));
    if (document.getElementById("error").textContent.startsWith("API: ")) showError("");
  } catch (e) {
    showError("API: " + e.message);
  } finally {
    busy = false;
  }
}

document.getElementById("task-form").addEventListener("submit", (ev) => {
  ev.preventDefault();
  location.hash = "#task/" + encodeURIComponent(document.getElementById("task-id").value.trim());
});
window.addEventListener("hashchange", route);
for (const id of ["task-state-filter", "dead-queue"]) document.getElementById(id).addEventListener("change", refresh);
route();
setInterval(refresh, POLL_MS);
