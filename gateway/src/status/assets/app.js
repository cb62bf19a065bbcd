// Roost dashboard: reads the operator JSON API (/api/...) and draws it. No build step; uPlot is
// the only library. Every value from the API goes into the page as text, never as HTML.
"use strict";

const PAGE = 50;
const REFRESH_MS = 5000;
const roost = (window.roost = { charts: [], timer: null });

const $ = (sel, root = document) => root.querySelector(sel);
function el(tag, attrs = {}, ...children) {
  const node = document.createElement(tag);
  for (const [k, v] of Object.entries(attrs)) {
    if (k === "class") node.className = v;
    else if (k.startsWith("on")) node.addEventListener(k.slice(2), v);
    else node.setAttribute(k, v);
  }
  for (const child of children) {
    node.append(child instanceof Node ? child : document.createTextNode(child ?? ""));
  }
  return node;
}
async function getJson(path) {
  const response = await fetch(path, { headers: { Accept: "application/json" } });
  if (!response.ok) throw new Error(`${path}: ${response.status}`);
  return response.json();
}
function ago(ms) {
  if (ms === null || ms === undefined) return "";
  return age(Math.max(0, (Date.now() - ms) / 1000)) + " ago";
}
function age(s) {
  if (s === null || s === undefined) return "";
  if (s < 60) return `${Math.round(s)} s`;
  if (s < 3600) return `${Math.round(s / 60)} min`;
  if (s < 86400) return `${(s / 3600).toFixed(1)} h`;
  return `${(s / 86400).toFixed(1)} d`;
}
const time = (ms) => (ms ? new Date(ms).toISOString().replace("T", " ").slice(0, 19) : "");
const deviceLink = (id) => el("a", { href: `/devices/${encodeURIComponent(id)}` }, id);

// ---- header cards, on every page -------------------------------------------------------------
async function refreshCards() {
  const state = $("#gateway-state");
  try {
    const s = await getJson("/api/status");
    state.textContent = s.state;
    state.className = `pill ${s.state}`;
    const cards = [
      ["queued", s.requests.queued], ["running", s.requests.running], ["held", s.requests.held],
      ["done", s.requests.done_total], ["failed", s.requests.failed_total],
      ["dead", s.requests.dead_total], ["awake", `${s.devices.awake} / ${s.devices.known}`],
      ["uptime", age(s.uptime_s)],
    ];
    $("#cards").replaceChildren(...cards.map(([k, v]) => el("div", {}, el("b", {}, String(v)), el("span", {}, k))));
  } catch (e) {
    state.textContent = "unreachable";
    state.className = "pill unreachable";
  }
}

// ---- overview: charts and the device list ----------------------------------------------------
const CHARTS = [
  { title: "Requests / s by outcome", series: [["accepted", "#2a7"], ["done", "#27c"], ["failed", "#c33"], ["rejected", "#c7c"], ["refused", "#e90"]] },
  { title: "Request → final reply latency (ms)", series: [["p50_ms", "#27c"], ["p99_ms", "#c33"]] },
  { title: "Queue, held replies, devices awake", series: [["queued", "#e90"], ["running", "#a60"], ["held", "#27c"], ["awake", "#2a7"]] },
  { title: "Oldest queued and oldest held (s)", series: [["oldest_queued_s", "#e90"], ["oldest_held_s", "#27c"]] },
];

function makeCharts(container) {
  roost.charts = CHARTS.map((spec, i) => {
    const box = el("div", { class: "chart", id: `chart-${i}`, "data-points": "0" }, el("h3", {}, spec.title));
    container.append(box);
    const width = Math.max(420, box.clientWidth - 16);
    const opts = {
      width, height: 200,
      series: [{}, ...spec.series.map(([label, stroke]) => ({ label, stroke, width: 1.5, spanGaps: false }))],
      axes: [{}, { size: 50 }],
      scales: { x: { time: true } },
    };
    return { spec, box, plot: new uPlot(opts, [[], ...spec.series.map(() => [])], box) };
  });
}

async function refreshCharts() {
  const data = await getJson("/api/series");
  for (const chart of roost.charts) {
    chart.plot.setData([data.t, ...chart.spec.series.map(([key]) => data[key])]);
    chart.box.setAttribute("data-points", String(data.t.length));
  }
}

const listState = { offset: 0, q: "", awake: false, held: false, errors: false };

function deviceListView(container) {
  const search = el("input", { type: "search", id: "search", placeholder: "search device id", value: listState.q });
  let debounce = null;
  search.addEventListener("input", () => {
    clearTimeout(debounce);
    debounce = setTimeout(() => { listState.q = search.value.trim(); listState.offset = 0; refreshDevices(); }, 250);
  });
  const toggle = (key, label) => {
    const box = el("input", { type: "checkbox", id: `filter-${key}` });
    box.checked = listState[key];
    box.addEventListener("change", () => { listState[key] = box.checked; listState.offset = 0; refreshDevices(); });
    return el("label", {}, box, ` ${label}`);
  };
  container.append(
    el("h2", {}, "Devices"),
    el("div", { class: "toolbar" }, search, toggle("awake", "awake"), toggle("held", "has held replies"), toggle("errors", "has errors"), el("span", { id: "device-count" })),
    el("table", { id: "devices" },
      el("thead", {}, el("tr", {}, ...["device", "state", "last seen", "queued", "held", "oldest held", "last error"].map((h, i) => el("th", { class: i >= 3 && i <= 5 ? "num" : "" }, h)))),
      el("tbody")),
    el("div", { class: "pager", id: "pager" }));
}

async function refreshDevices() {
  const params = new URLSearchParams({ offset: listState.offset, limit: PAGE });
  if (listState.q) params.set("q", listState.q);
  for (const key of ["awake", "held", "errors"]) if (listState[key]) params.set(key, "1");
  const page = await getJson(`/api/devices?${params}`);
  const body = $("#devices tbody");
  if (!body) return;
  body.replaceChildren(...page.devices.map((d) => el("tr", { "data-device": d.id },
    el("td", {}, deviceLink(d.id)),
    el("td", { class: d.awake ? "awake" : "asleep" }, d.awake ? "awake" : "asleep"),
    el("td", { title: d.last_seen || "" }, ago(d.last_seen_ms)),
    el("td", { class: "num" }, String(d.queued)),
    el("td", { class: "num" }, String(d.held)),
    el("td", { class: "num" }, age(d.oldest_held_age_s)),
    el("td", { class: "error" }, d.last_error || ""))));
  const last = Math.min(page.offset + page.devices.length, page.total);
  $("#device-count").textContent = page.total ? `${page.offset + 1}–${last} of ${page.total}` : "no devices";
  const pager = $("#pager");
  const go = (offset) => () => { listState.offset = offset; refreshDevices(); };
  pager.replaceChildren(
    el("button", page.offset > 0 ? { onclick: go(Math.max(0, page.offset - PAGE)) } : { disabled: "" }, "‹ previous"),
    el("button", last < page.total ? { onclick: go(page.offset + PAGE) } : { disabled: "" }, "next ›"));
}

function overview() {
  const view = $("#view");
  const charts = el("div", { class: "charts" });
  view.replaceChildren(charts);
  makeCharts(charts);
  deviceListView(view);
  return async () => { await Promise.all([refreshCharts(), refreshDevices()]); };
}

// ---- one device --------------------------------------------------------------------------------
function requestTable(id, rows) {
  const head = ["request", "op", "status", "state", "received", "finished", "took", "published"];
  return el("table", { id },
    el("thead", {}, el("tr", {}, ...head.map((h) => el("th", {}, h)))),
    el("tbody", {}, ...rows.map((r) => el("tr", { "data-request-id": r.id },
      el("td", { title: r.id }, el("code", {}, r.id.slice(-12))),
      el("td", {}, r.op),
      el("td", {}, r.status === null ? "" : String(r.status)),
      el("td", { class: `lifecycle ${r.lifecycle}` }, r.lifecycle),
      el("td", {}, time(r.received_ms)),
      el("td", {}, time(r.finished_ms)),
      el("td", { class: "num" }, r.finished_ms ? `${r.finished_ms - r.received_ms} ms` : ""),
      el("td", { class: "num" }, String(r.published))))));
}
function deadTable(id, rows, withDevice) {
  const head = ["id", "at", "age", ...(withDevice ? ["device"] : []), "op", "status", "reason", "requeued"];
  return el("table", { id },
    el("thead", {}, el("tr", {}, ...head.map((h) => el("th", {}, h)))),
    el("tbody", {}, ...rows.map((d) => el("tr", { "data-dead-letter": String(d.id) },
      el("td", {}, String(d.id)), el("td", {}, time(d.at_ms)), el("td", {}, age(d.age_s ?? (Date.now() - d.at_ms) / 1000)),
      ...(withDevice ? [el("td", {}, d.device ? deviceLink(d.device) : "")] : []),
      el("td", {}, d.op || ""), el("td", {}, String(d.status)), el("td", { class: "error" }, d.reason),
      el("td", {}, d.requeued ? "yes" : "")))));
}

function devicePage(id) {
  const view = $("#view");
  return async () => {
    let data;
    try {
      data = await getJson(`/api/devices/${encodeURIComponent(id)}`);
    } catch (e) {
      view.replaceChildren(el("h2", {}, `Device ${id}`), el("p", {}, "Unknown device (it has sent nothing the store still keeps)."));
      return;
    }
    const d = data.device;
    const facts = [["state", d.awake ? "awake" : "asleep"], ["last seen", d.last_seen ? `${d.last_seen} (${ago(d.last_seen_ms)})` : "not since the gateway started"],
      ["queued", d.queued], ["held", d.held], ["oldest held", age(d.oldest_held_age_s)], ["requests kept", d.requests],
      ["last error", d.last_error ? `${d.last_error} (${ago(d.last_error_ms)})` : "none"]];
    view.replaceChildren(
      el("h2", { id: "device-id" }, `Device ${d.id}`),
      el("table", { id: "device-facts" }, el("tbody", {}, ...facts.map(([k, v]) => el("tr", {}, el("th", {}, k), el("td", {}, String(v)))))),
      el("h2", {}, "Recent requests ", el("small", {}, "queued → running → done → held → acked / dead")),
      requestTable("requests", data.recent_requests),
      el("h2", {}, `Held replies (${data.held_replies.length})`),
      requestTable("held", data.held_replies),
      el("h2", {}, `Dead letters (${data.dead_letters_total})`),
      deadTable("device-dead-letters", data.dead_letters, false));
  };
}

// ---- dead letters --------------------------------------------------------------------------------
function deadLettersPage() {
  const view = $("#view");
  let offset = 0;
  const refresh = async () => {
    const page = await getJson(`/api/deadletters?offset=${offset}&limit=${PAGE}`);
    const last = Math.min(offset + page.dead_letters.length, page.total);
    const go = (to) => () => { offset = to; refresh(); };
    view.replaceChildren(
      el("h2", {}, `Dead letters (${page.total})`),
      el("p", {}, "Requests refused at intake (400, 403, 404, 413) and replies whose TTL passed unacknowledged. Requeue a reply with ",
        el("code", {}, "gateway deadletters requeue ID"), "."),
      deadTable("dead-letters", page.dead_letters, true),
      el("div", { class: "pager" },
        el("span", {}, page.total ? `${offset + 1}–${last} of ${page.total} ` : "none "),
        el("button", offset > 0 ? { onclick: go(Math.max(0, offset - PAGE)) } : { disabled: "" }, "‹ newer"),
        el("button", last < page.total ? { onclick: go(offset + PAGE) } : { disabled: "" }, "older ›")));
  };
  return refresh;
}

// ---- routing by path -----------------------------------------------------------------------------
function route() {
  const path = location.pathname;
  const device = path.match(/^\/devices\/(.+)$/);
  if (device) return devicePage(decodeURIComponent(device[1]));
  if (path === "/deadletters") return deadLettersPage();
  return overview();
}

async function main() {
  const refresh = route();
  const tick = async () => {
    try { await Promise.all([refreshCards(), refresh()]); } catch (e) { console.error(e); }
  };
  await tick();
  roost.timer = setInterval(tick, REFRESH_MS);
}
main();
