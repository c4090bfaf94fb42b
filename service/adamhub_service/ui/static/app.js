/* adamhub's dashboard: the tenant's sessions, and a session's training, live.
 * Plain JavaScript over the service's own API; charts by uPlot (vendored). Nothing is
 * loaded from elsewhere. The API key, when the service asks for one, is kept in
 * sessionStorage: for this tab only. */
"use strict";

const KEY_STORAGE = "adamhub-api-key";
const RATE_WINDOW_SECONDS = 10;
const CHARTS = [
  { key: "loss", label: "loss", color: "#2b6cb0" },
  { key: "grad_norm", label: "gradient norm", color: "#c05621" },
  { key: "update_norm", label: "update norm ‖Δθ‖", color: "#2f855a" },
  { key: "lr", label: "learning rate", color: "#6b46c1" },
  { key: "steps_per_s", label: "steps/s", color: "#4a5568" },
];

const view = document.getElementById("view");
const status = document.getElementById("status");
let current = { timers: [], abort: null };

// -- the API ---------------------------------------------------------------------------

let keyPrompt = null;

function askKey(message) {
  if (keyPrompt) return keyPrompt;
  const dialog = document.getElementById("key-dialog");
  const input = document.getElementById("key-input");
  document.getElementById("key-error").textContent = message || "";
  keyPrompt = new Promise((resolve) => {
    document.getElementById("key-form").onsubmit = () => {
      sessionStorage.setItem(KEY_STORAGE, input.value.trim());
      input.value = "";
      keyPrompt = null;
      dialog.close();
      document.getElementById("forget-key").hidden = false;
      resolve();
    };
  });
  if (!dialog.open) dialog.showModal();
  return keyPrompt;
}

function authHeaders() {
  const key = sessionStorage.getItem(KEY_STORAGE);
  return key ? { Authorization: "Bearer " + key } : {};
}

async function api(path, options = {}) {
  const headers = Object.assign({}, options.headers || {}, authHeaders());
  const response = await fetch(path, Object.assign({}, options, { headers }));
  if (response.status === 401) {
    const retried = sessionStorage.getItem(KEY_STORAGE) !== null;
    await askKey(retried ? "That key was refused." : "");
    return api(path, options);
  }
  if (!response.ok) {
    let detail = response.statusText;
    try { detail = (await response.json()).detail; } catch (_) { /* not JSON */ }
    throw new Error(`${response.status}: ${detail}`);
  }
  return response;
}

async function json(path, options) {
  return (await api(path, options)).json();
}

// -- small helpers ---------------------------------------------------------------------

function el(tag, attributes = {}, ...children) {
  const node = document.createElement(tag);
  for (const [name, value] of Object.entries(attributes)) {
    if (name === "text") node.textContent = value;
    else node.setAttribute(name, value);
  }
  for (const child of children) node.append(child);
  return node;
}

function mount(templateId) {
  view.replaceChildren(document.getElementById(templateId).content.cloneNode(true));
}

function ago(seconds) {
  if (seconds < 1) return "now";
  if (seconds < 90) return `${Math.round(seconds)} s ago`;
  if (seconds < 5400) return `${Math.round(seconds / 60)} min ago`;
  return `${Math.round(seconds / 3600)} h ago`;
}

function number(value, digits = 4) {
  if (value === null || value === undefined) return "–";
  return Math.abs(value) >= 1e4 || (value !== 0 && Math.abs(value) < 1e-3)
    ? value.toExponential(2) : Number(value.toPrecision(digits)).toString();
}

function stepsPerSecond(points) {
  if (points.length < 2) return 0;
  const last = points[points.length - 1];
  const window = points.filter((p) => p.time >= last.time - RATE_WINDOW_SECONDS);
  const first = window[0];
  return last.time > first.time ? (last.t - first.t) / (last.time - first.time) : 0;
}

function lastLoss(points) {
  for (let i = points.length - 1; i >= 0; i--) if (points[i].loss !== null) return points[i].loss;
  return null;
}

function showError(error) {
  status.textContent = String(error.message || error);
  status.className = "error";
}

function leave() {
  current.timers.forEach(clearInterval);
  if (current.abort) current.abort.abort();
  current = { timers: [], abort: null };
  status.textContent = "";
  status.className = "muted";
}

// -- the list of sessions -------------------------------------------------------------

let search = "";
let tagFilter = "";

function filterTags() {
  return tagFilter.split(/[\s,]+/).filter((tag) => tag);
}

// A tag as a chip; clicking it filters the list by it.
function tagChip(tag) {
  const chip = el("button", { class: "tag", type: "button", "data-tag": tag, text: tag });
  chip.onclick = () => {
    if (!filterTags().includes(tag)) tagFilter = [...filterTags(), tag].join(" ");
    if (location.hash !== "#/" && location.hash !== "") location.hash = "#/";
    else showList().catch(showError);
  };
  return chip;
}

async function showList() {
  mount("list-template");
  const box = document.getElementById("search");
  box.value = search;
  box.oninput = () => { search = box.value; refreshList().catch(showError); };
  const tags = document.getElementById("tag-filter");
  tags.value = tagFilter;
  tags.oninput = () => { tagFilter = tags.value; refreshList().catch(showError); };
  await refreshList();
  current.timers.push(setInterval(() => refreshList().catch(showError), 2000));
}

async function refreshList() {
  const query = new URLSearchParams({ order: "-updated_at", limit: "100" });
  if (search.trim()) query.set("name", search.trim());
  for (const tag of filterTags()) query.append("tag", tag);
  const { sessions } = await json("/v1/sessions?" + query);
  const histories = await Promise.all(sessions.slice(0, 50).map(
    (s) => json(`/v1/sessions/${s.id}/history?limit=50`).then((h) => h.points)));
  const body = document.querySelector("#sessions tbody");
  if (!body) return;
  const now = Date.now() / 1000;
  body.replaceChildren(...sessions.map((session, i) => {
    const points = histories[i] || [];
    const link = el("a", { href: `#/s/${session.id}`, text: session.name || "(unnamed)" });
    return el("tr", { "data-session": session.id },
      el("td", {}, link),
      el("td", { class: "tags" }, ...(session.tags || []).map(tagChip)),
      el("td", { class: "muted", text: session.id }),
      el("td", { class: "num", text: session.size.toLocaleString() }),
      el("td", { class: "num", text: String(session.t) }),
      el("td", { class: "num", text: stepsPerSecond(points).toFixed(1) }),
      el("td", { class: "num", text: number(lastLoss(points)) }),
      el("td", { text: ago(now - Date.parse(session.updated_at) / 1000) }));
  }));
  document.getElementById("empty").hidden = sessions.length > 0;
}

// -- one session ------------------------------------------------------------------------

async function showSession(id) {
  mount("session-template");
  const session = await json(`/v1/sessions/${id}`);
  const { points } = await json(`/v1/sessions/${id}/history?limit=5000`);
  const page = { id, session, points, charts: [], dirty: true };
  renderFacts(page);
  refreshScreening(page).catch(showError);
  makeCharts(page);
  bindActions(page);
  redraw(page);
  current.timers.push(setInterval(() => { if (page.dirty) redraw(page); }, 250));
  current.timers.push(setInterval(() => refreshSession(page).catch(showError), 5000));
  follow(page, points.length ? points[points.length - 1].t : session.t);
}

function renderFacts(page) {
  const s = page.session;
  document.getElementById("session-name").textContent = s.name || "(unnamed)";
  document.getElementById("session-tags").replaceChildren(...(s.tags || []).map(tagChip));
  document.getElementById("session-facts").textContent =
    `${s.id} · ${s.size.toLocaleString()} ${s.dtype} parameters · t=${s.t}` +
    (s.rounds ? ` · rounds of ${s.rounds.contributions ?? s.rounds.target_samples + " samples"}` : "");
  const o = s.optimizer;
  const rows = [
    ["lr", number(o.lr)], ["betas", o.betas.join(", ")], ["eps", number(o.eps)],
    ["weight decay", `${number(o.weight_decay)}${o.decoupled_weight_decay ? " (AdamW)" : ""}`],
    ["amsgrad", String(o.amsgrad)], ["maximize", String(o.maximize)],
    ["schedule", o.schedule.kind === "constant" ? "constant"
      : `${o.schedule.kind}, warmup ${o.schedule.warmup_steps}, total ${o.schedule.total_steps}`],
    ["clip norm", o.max_grad_norm === null ? "off" : number(o.max_grad_norm)],
    ["param groups", s.param_groups ? String(s.param_groups.length) : "one"],
    ["history kept", `${s.history_points.toLocaleString()} steps`],
  ];
  document.getElementById("settings").replaceChildren(
    ...rows.flatMap(([name, value]) => [el("dt", { text: name }), el("dd", { text: value })]));
  const lr = document.getElementById("lr-input");
  if (document.activeElement !== lr) lr.value = o.lr;
}

function series(page, key) {
  const xs = [], ys = [];
  const points = page.points;
  for (let i = 0; i < points.length; i++) {
    xs.push(points[i].t);
    if (key === "steps_per_s") {
      const j = Math.max(0, i - 10);
      const dt = points[i].time - points[j].time;
      ys.push(i > 0 && dt > 0 ? (points[i].t - points[j].t) / dt : null);
    } else {
      ys.push(points[i][key]);
    }
  }
  return [xs, ys];
}

function makeCharts(page) {
  const box = document.getElementById("charts");
  for (const chart of CHARTS) {
    const holder = el("div", { class: "chart", "data-chart": chart.key, "data-points": "0" },
      el("h3", { text: chart.label }));
    box.append(holder);
    const width = Math.max(300, holder.clientWidth - 10);
    const plot = new uPlot({
      width, height: 180, legend: { show: false },
      scales: { x: { time: false } },
      series: [{}, { label: chart.label, stroke: chart.color, width: 1.5, spanGaps: true }],
      axes: [{ label: "t" }, {}],
    }, [[], []], holder);
    page.charts.push({ chart, plot, holder });
  }
}

function redraw(page) {
  page.dirty = false;
  for (const { chart, plot, holder } of page.charts) {
    const data = series(page, chart.key);
    plot.setData(data);
    holder.setAttribute("data-points", String(data[1].filter((v) => v !== null).length));
  }
  renderWorkers(page);
}

function renderWorkers(page) {
  const workers = new Map();
  for (const p of page.points) {
    const name = p.worker || "(round)";
    const w = workers.get(name) || { steps: 0, last: 0, staleness: null };
    w.steps += 1;
    w.last = Math.max(w.last, p.time);
    w.staleness = p.staleness;
    workers.set(name, w);
  }
  const now = Date.now() / 1000;
  document.querySelector("#workers tbody").replaceChildren(...[...workers].map(([name, w]) =>
    el("tr", {}, el("td", { text: name }), el("td", { class: "num", text: String(w.steps) }),
      el("td", { text: ago(now - w.last) }),
      el("td", { class: "num", text: w.staleness === null ? "–" : String(w.staleness) }))));
}

async function refreshSession(page) {
  page.session = await json(`/v1/sessions/${page.id}`);
  renderFacts(page);
  await refreshScreening(page);
}

// What screening refused, and the workers in quarantine (each can be released).
async function refreshScreening(page) {
  const on = Boolean(page.session.screen);
  document.getElementById("screening-off").hidden = on;
  const { refusals, quarantined } = await json(`/v1/sessions/${page.id}/history?limit=50`);
  const now = Date.now() / 1000;
  const held = Object.entries(quarantined || {});
  const holding = document.getElementById("quarantined");
  holding.hidden = held.length === 0;
  holding.querySelector("tbody").replaceChildren(...held.map(([worker, until]) => {
    const release = el("button", { type: "button", "data-worker": worker, text: "release" });
    release.onclick = async () => {
      await api(`/v1/sessions/${page.id}/quarantine/${encodeURIComponent(worker)}`,
        { method: "DELETE" });
      await refreshScreening(page);
    };
    return el("tr", { "data-worker": worker }, el("td", { text: worker }),
      el("td", { text: `in ${ago(until - now).replace(" ago", "")}` }), el("td", {}, release));
  }));
  const list = document.getElementById("refusals");
  const recent = (refusals || []).slice(-10).reverse();
  list.hidden = recent.length === 0;
  list.querySelector("tbody").replaceChildren(...recent.map((r) =>
    el("tr", {}, el("td", { text: ago(now - r.time) }), el("td", { text: r.worker }),
      el("td", { text: r.reason }), el("td", { class: "num", text: number(r.norm) }),
      el("td", { class: "num", text: number(r.bound) }))));
}

// The step events, read with fetch (EventSource cannot send an Authorization header).
async function follow(page, after) {
  let last = after;
  const owner = current;  // leaving the page replaces it, and aborts the stream
  while (current === owner) {
    const abort = new AbortController();
    owner.abort = abort;
    try {
      const response = await api(`/v1/sessions/${page.id}/events`, {
        headers: { "Last-Event-ID": String(last) }, signal: abort.signal,
      });
      const reader = response.body.getReader();
      const decoder = new TextDecoder();
      let buffer = "";
      for (;;) {
        const { value, done } = await reader.read();
        if (done) break;
        buffer += decoder.decode(value, { stream: true });
        let end;
        while ((end = buffer.indexOf("\n\n")) >= 0) {
          const event = parseEvent(buffer.slice(0, end));
          buffer = buffer.slice(end + 2);
          if (event.type === "step") {
            const point = JSON.parse(event.data);
            page.points.push(point);
            if (page.points.length > 20000) page.points.splice(0, page.points.length - 20000);
            last = point.t;
            page.session.t = Math.max(page.session.t, point.t);
            page.dirty = true;
          } else if (event.type === "refusal") {
            refreshScreening(page).catch(showError);
          } else if (event.type === "rollback") {
            last = JSON.parse(event.data).t;
            page.points = page.points.filter((p) => p.t <= last);
            page.dirty = true;
          }
        }
      }
    } catch (error) {
      if (abort.signal.aborted) return;
      showError(error);
    }
    await new Promise((resolve) => setTimeout(resolve, 1000));
  }
}

function parseEvent(block) {
  const event = { type: "message", data: "" };
  for (const line of block.split("\n")) {
    if (line.startsWith("event: ")) event.type = line.slice(7);
    else if (line.startsWith("data: ")) event.data += line.slice(6);
  }
  return event;
}

function bindActions(page) {
  const result = document.getElementById("action-result");
  const done = (text) => { result.textContent = text; result.className = "muted"; };
  const failed = (error) => { result.textContent = String(error.message); result.className = "error"; };
  document.getElementById("lr-form").onsubmit = (e) => {
    e.preventDefault();
    const lr = Number(document.getElementById("lr-input").value);
    json(`/v1/sessions/${page.id}`, {
      method: "PATCH", headers: { "Content-Type": "application/json" },
      body: JSON.stringify({ optimizer: { lr } }),
    }).then((s) => { page.session = s; renderFacts(page); done(`lr is now ${lr}`); }, failed);
  };
  document.getElementById("rollback-form").onsubmit = (e) => {
    e.preventDefault();
    const t = Number(document.getElementById("rollback-input").value);
    json(`/v1/sessions/${page.id}/rollback`, {
      method: "POST", headers: { "Content-Type": "application/json" },
      body: JSON.stringify({ t }),
    }).then((s) => { page.session = s; renderFacts(page); done(`back at t=${s.t}`); }, failed);
  };
  document.getElementById("fork-button").onclick = () => {
    json(`/v1/sessions/${page.id}/fork`, {
      method: "POST", headers: { "Content-Type": "application/json" }, body: "{}",
    }).then((s) => { location.hash = `#/s/${s.id}`; }, failed);
  };
  document.getElementById("checkpoint-button").onclick = () => {
    api(`/v1/sessions/${page.id}/checkpoint`).then((r) => r.blob()).then((blob) => {
      const link = el("a", { href: URL.createObjectURL(blob),
        download: `${page.session.name || page.id}-t${page.session.t}.safetensors` });
      link.click();
      URL.revokeObjectURL(link.href);
      done("checkpoint downloaded");
    }, failed);
  };
}

// -- routing ----------------------------------------------------------------------------

async function route() {
  leave();
  const match = location.hash.match(/^#\/s\/(s_[0-9a-f]{32})$/);
  try {
    if (match) await showSession(match[1]);
    else await showList();
  } catch (error) {
    showError(error);
  }
}

document.getElementById("forget-key").onclick = () => {
  sessionStorage.removeItem(KEY_STORAGE);
  document.getElementById("forget-key").hidden = true;
  route();
};
document.getElementById("forget-key").hidden = sessionStorage.getItem(KEY_STORAGE) === null;
window.addEventListener("hashchange", route);
route();
