// mysimbdp console: signs in with a token (exchanged for an HttpOnly session cookie), then
// reads the platform's API and follows its server-sent events. Every text from the platform
// is put in the page as text (textContent), never as HTML.
"use strict";

const $ = (id) => document.getElementById(id);
const SECTIONS = ["signin", "overview", "tenant"];
let me = null;          // the session: {kind, tenant, tenants, csrf}
let source = null;      // the EventSource
let broken = false;     // the event stream broke: say so, and catch up when it is back
let current = null;     // the tenant shown
let rejectsAfter = null;
const progress = new Map();   // ledger id -> last batch.file.progress
const BUCKET_MS = 10000;      // the charts' resolution
const WINDOW_MS = 15 * 60000; // and span: the last 15 minutes (since the page opened)
const series = new Map();     // "tenant kind" -> Map(bucket start -> value)

async function api(method, url, body) {
  const headers = {};
  if (body !== undefined) headers["Content-Type"] = "application/json";
  if (me && method !== "GET") headers["X-CSRF-Token"] = me.csrf;
  const response = await fetch(url, { method, headers, credentials: "same-origin",
                                      body: body === undefined ? undefined : JSON.stringify(body) });
  const data = await response.json().catch(() => ({}));
  if (!response.ok) {
    const error = new Error(data.message || response.statusText);
    error.status = response.status;
    throw error;
  }
  return data;
}

function show(name) {
  for (const id of SECTIONS) $(id).hidden = id !== name;
}

function cell(row, text, cls) {
  const td = row.insertCell();
  td.textContent = text === null || text === undefined ? "–" : String(text);
  if (cls) td.className = cls;
  return td;
}

function number(n) {
  return n === null || n === undefined ? "–" : Number(n).toLocaleString("en");
}

// -- session ---------------------------------------------------------------------------------
async function start() {
  try {
    me = await api("GET", "/console/session");
  } catch (error) {
    me = null;
  }
  render();
}

$("signin-form").addEventListener("submit", async (event) => {
  event.preventDefault();
  $("signin-error").textContent = "";
  try {
    await api("POST", "/console/session", { token: $("token").value });
    $("token").value = "";
    me = await api("GET", "/console/session");
    render();
  } catch (error) {
    $("signin-error").textContent = error.message;
  }
});

$("signout").addEventListener("click", async () => {
  await api("DELETE", "/console/session").catch(() => {});
  me = null;
  if (source) source.close();
  source = null;
  render();
});

window.addEventListener("hashchange", () => render());

function render() {
  if (!me) {
    $("who").textContent = "";
    $("signout").hidden = true;
    $("live").textContent = "";
    show("signin");
    $("token").focus();
    return;
  }
  $("who").textContent = me.kind === "admin" ? "operator" : `tenant ${me.tenant}`;
  $("signout").hidden = false;
  connect();
  const match = location.hash.match(/^#\/tenants\/([a-z0-9_-]+)$/);
  if (me.kind === "tenant") showTenant(me.tenant);
  else if (match) showTenant(match[1]);
  else showOverview();
}

// -- live events -----------------------------------------------------------------------------
function connect() {
  if (source) return;
  source = new EventSource("/console/events");
  source.addEventListener("open", () => {
    if (broken) {
      setLive("reconnected: caught up", "ok");
      refresh();
    } else {
      setLive("live", "ok");
    }
    broken = false;
  });
  source.addEventListener("error", () => {
    broken = true;
    setLive("connection lost: reconnecting…", "bad");
    // a daemon restarted keeps the session (signed cookie); a closed stream is opened again,
    // unless the session ended (the token changed, it expired): then the page signs out
    if (source.readyState === EventSource.CLOSED) {
      source = null;
      setTimeout(async () => {
        try {
          await api("GET", "/console/session");
          connect();
        } catch (error) {
          if (error.status === 401) { me = null; render(); } else { setTimeout(connect, 2000); }
        }
      }, 1000);
    }
  });
  for (const name of ["batch.file.loading", "batch.file.resumed", "batch.file.committed", "batch.file.rejected",
                      "batch.file.undoing", "batch.file.undone", "upload.staged"]) {
    source.addEventListener(name, (event) => onFileEvent(JSON.parse(event.data)));
  }
  source.addEventListener("batch.file.progress", (event) => onProgress(JSON.parse(event.data)));
  source.addEventListener("stream.batch.committed", (event) => onBatch(JSON.parse(event.data)));
  for (const name of ["stream.consumers.changed", "monitor.alert", "monitor.scaled"]) {
    source.addEventListener(name, (event) => onStreamEvent(name, JSON.parse(event.data)));
  }
  source.addEventListener("missed", () => refresh());
}

function setLive(text, cls) {
  $("live").textContent = text;
  $("live").className = cls;
}

let refreshDue = null;  // at most one reading of the whole state every 2 s
function refresh() {
  if (refreshDue !== null) return;
  refreshDue = setTimeout(() => {
    refreshDue = null;
    if (current) showTenant(current);
    else if (me && me.kind === "admin") showOverview();
  }, refreshDue === null && !broken ? 0 : 2000);
}

let overviewDue = null;  // the overview is read again at most every 2 s, whatever the events
function onFileEvent(data) {
  if (data.tenant === current) loadFiles(current);
  else if (!current && me && me.kind === "admin" && overviewDue === null) {
    overviewDue = setTimeout(() => { overviewDue = null; if (!current) showOverview(); }, 2000);
  }
}

function addTo(tenant, kind, value, mode = "sum") {
  const key = `${tenant} ${kind}`;
  const buckets = series.get(key) || new Map();
  const at = Math.floor(Date.now() / BUCKET_MS) * BUCKET_MS;
  buckets.set(at, mode === "max" ? Math.max(buckets.get(at) || 0, value) : (buckets.get(at) || 0) + value);
  for (const t of buckets.keys()) if (t < at - WINDOW_MS) buckets.delete(t);
  series.set(key, buckets);
}

function points(tenant, kind, perSecond) {
  const buckets = series.get(`${tenant} ${kind}`) || new Map();
  const now = Math.floor(Date.now() / BUCKET_MS) * BUCKET_MS;
  const values = [];
  for (let t = now - WINDOW_MS + BUCKET_MS; t <= now; t += BUCKET_MS) {
    const v = buckets.get(t) || 0;
    values.push(perSecond ? v / (BUCKET_MS / 1000) : v);
  }
  return values;
}

function rateNow(tenant, kind) {  // per second, over the last full bucket and the current one
  const values = points(tenant, kind, true);
  return (values[values.length - 1] + values[values.length - 2]) / 2;
}

function spark(svg, values) {
  const max = Math.max(...values, 1e-9);
  const line = document.createElementNS("http://www.w3.org/2000/svg", "polyline");
  line.setAttribute("points", values.map((v, i) => `${(i * 90 / (values.length - 1)).toFixed(1)},${(23 - v / max * 22).toFixed(1)}`).join(" "));
  const title = document.createElementNS("http://www.w3.org/2000/svg", "title");
  title.textContent = `now ${values[values.length - 1].toFixed(1)}, highest ${max.toFixed(1)}`;
  svg.replaceChildren(title, line);
}

function newSpark(label) {
  const svg = document.createElementNS("http://www.w3.org/2000/svg", "svg");
  svg.setAttribute("class", "spark");
  svg.setAttribute("viewBox", "0 0 90 24");
  svg.setAttribute("role", "img");
  svg.setAttribute("aria-label", label);
  return svg;
}

function onProgress(data) {
  if (progress.size > 500) progress.clear();  // a long-open page keeps only recent files' progress
  const before = progress.get(data.ledger_id);
  addTo(data.tenant, "records", Math.max(0, data.records_written - (before ? before.records_written : 0)));
  progress.set(data.ledger_id, data);
  const bar = document.querySelector(`progress[data-id="${CSS.escape(data.ledger_id || "")}"]`);
  if (bar) updateBar(bar, data);
  else if (data.tenant === current) loadFiles(current);
}

function onBatch(data) {
  addTo(data.tenant, "messages", data.messages || 0);
  addTo(data.tenant, "records", data.documents || 0);
  if (data.oldest_latency_ms !== null && data.oldest_latency_ms !== undefined) {
    addTo(data.tenant, "latency", data.oldest_latency_ms, "max");
  }
  if (data.tenant === current) drawCharts(current);
}

function drawCharts(tenant) {
  spark($("chart-messages"), points(tenant, "messages", true));
  spark($("chart-latency"), points(tenant, "latency", false));
}

setInterval(() => {  // the charts move on with time, and the overview's rates with them
  if (current) drawCharts(current);
  for (const svg of document.querySelectorAll("#tenants svg[data-tenant]")) {
    spark(svg, points(svg.dataset.tenant, svg.dataset.kind, true));
    svg.nextElementSibling.textContent = rateNow(svg.dataset.tenant, svg.dataset.kind).toFixed(1);
  }
}, 5000);

function onStreamEvent(name, data) {
  if (data.tenant !== current) return;
  addTimeline(name, data);
  if (name === "stream.consumers.changed") loadStream(current);
}

function addTimeline(name, data) {
  const item = document.createElement("li");
  const when = new Date().toLocaleTimeString();
  const why = data.reason ? `: ${data.reason}` : "";  // operators only: a reason may name instances
  const what = name === "monitor.alert" ? `alert ${data.rule}: ${data.observed} over ${data.threshold}`
    : name === "stream.consumers.changed" ? `consumers ${data.from} → ${data.to}${why}`
    : `monitor: ${data.verdict || ""}${why}`;
  item.textContent = `${when} ${what}`;
  $("timeline").prepend(item);
  while ($("timeline").children.length > 50) $("timeline").lastChild.remove();
}

// -- overview (operators) --------------------------------------------------------------------
function today() {
  const now = new Date();
  return new Date(Date.UTC(now.getUTCFullYear(), now.getUTCMonth(), now.getUTCDate())).toISOString();
}

async function showOverview() {
  current = null;
  show("overview");
  const hourAgo = new Date(Date.now() - 3600000).toISOString();
  const rows = await Promise.all(me.tenants.map(async (tenant) => {
    const [day, hour, stream, files] = await Promise.all([
      api("GET", `/tenants/${tenant}/stats?since=${encodeURIComponent(today())}`).catch(() => null),
      api("GET", `/tenants/${tenant}/stats?since=${encodeURIComponent(hourAgo)}`).catch(() => null),
      api("GET", `/tenants/${tenant}/stream`).catch(() => null),
      api("GET", `/tenants/${tenant}/files?limit=100`).catch(() => ({ files: [] })),
    ]);
    return { tenant, day, hour, stream, files: files.files };
  }));
  const body = $("tenants").tBodies[0];
  body.replaceChildren();
  for (const { tenant, day, hour, stream, files } of rows) {
    const row = body.insertRow();
    const link = document.createElement("a");
    link.href = `#/tenants/${tenant}`;
    link.className = "tenant-link";
    link.textContent = tenant;
    row.insertCell().append(link);
    const staged = files.filter((f) => f.state === "staged").length;
    const loading = files.filter((f) => f.state === "loading").length;
    cell(row, `${staged} / ${loading}`, "num");
    cell(row, number(day && day.batch.files_committed), "num");
    cell(row, number(day && day.batch.files_rejected), "num");
    for (const kind of ["records", "messages"]) {
      const td = row.insertCell();
      td.className = "num";
      const svg = newSpark(`${kind} per second of ${tenant}, last 15 minutes`);
      svg.dataset.tenant = tenant;
      svg.dataset.kind = kind;
      spark(svg, points(tenant, kind, true));
      const value = document.createElement("span");
      value.textContent = rateNow(tenant, kind).toFixed(1);
      td.append(svg, value);
    }
    cell(row, stream ? `${stream.consumers} (${stream.min_consumers}–${stream.max_consumers})` : "–", "num");
    cell(row, stream ? number(stream.queue_depth) : "–", "num");
    const p95 = day && day.stream.ingest_ms.p95;
    cell(row, p95 === null || p95 === undefined ? "–" : `${Math.round(p95)} ms`, "num");
    cell(row, number(day && day.scaling.alerts), "num");
    cell(row, number(hour && hour.batch.records_rejected + hour.stream.rejected), "num");
  }
  const answer = await api("GET", "/instances").catch(() => ({ instances: [] }));
  const instances = $("instances").tBodies[0];
  instances.replaceChildren();
  for (const instance of answer.instances) {
    const row = instances.insertRow();
    cell(row, instance.id + (instance.this ? " (this one)" : ""));
    cell(row, instance.state, instance.state === "up" ? "state-committed" : "state-rejected");
    cell(row, `${instance.heartbeat_s_ago} s ago`);
    cell(row, (instance.loading || []).length);
    cell(row, Object.values(instance.consumers || {}).reduce((a, b) => a + b, 0));
  }
}

// -- a tenant --------------------------------------------------------------------------------
function showTenant(tenant) {
  current = tenant;
  show("tenant");
  $("back").hidden = me.kind !== "admin";
  $("tenant-title").textContent = `Tenant ${tenant}`;
  $("scale-form").hidden = me.kind !== "admin";
  $("stream-actions").hidden = me.kind !== "admin";
  loadFiles(tenant);
  loadStream(tenant);
  loadRejects(tenant, true);
  loadProfile(tenant);
  drawCharts(tenant);
}

async function loadProfile(tenant) {
  const [constraints, stream, schema] = await Promise.all([
    api("GET", `/tenants/${tenant}/constraints`).catch(() => null),
    api("GET", `/tenants/${tenant}/stream`).catch(() => null),
    api("GET", `/tenants/${tenant}/schema`).catch(() => null),
  ]);
  if (tenant !== current) return;
  const items = [];
  if (constraints) {
    items.push(["formats", constraints.formats.join(", ")],
               ["largest file", `${number(constraints.max_file_bytes)} bytes`],
               ["files waiting, at most", number(constraints.max_staged_files)],
               ["storage", `${number(constraints.usage.used_bytes)} of ${number(constraints.storage_quota_bytes)} bytes`]);
  }
  if (stream) items.push(["stream app", stream.app], ["consumers", `${stream.min_consumers} to ${stream.max_consumers}`]);
  for (const scope of (schema && schema.scopes) || []) {
    if (scope.contract) items.push([`contract (${scope.scope})`, `${scope.contract.on_violation}: ${Object.keys(scope.current).join(", ")}`]);
  }
  const list = $("profile");
  list.replaceChildren();
  for (const [term, value] of items) {
    const dt = document.createElement("dt");
    dt.textContent = term;
    const dd = document.createElement("dd");
    dd.textContent = value;
    list.append(dt, dd);
  }
}

for (const [id, action] of [["stream-start", "start"], ["stream-stop", "stop"]]) {
  $(id).addEventListener("click", async () => {
    if (!window.confirm(`${action === "start" ? "Start" : "Stop"} the stream of tenant ${current}?`)) return;
    try {
      await api("POST", `/tenants/${current}/stream/${action}`, {});
      $("scale-result").textContent = "";
      loadStream(current);
    } catch (error) {
      $("scale-result").textContent = error.message;
    }
  });
}

async function loadFiles(tenant) {
  const answer = await api("GET", `/tenants/${tenant}/files?limit=50`).catch(() => ({ files: [] }));
  if (tenant !== current) return;
  const body = $("files").tBodies[0];
  body.replaceChildren();
  for (const file of answer.files) {
    const row = body.insertRow();
    cell(row, file.name);
    cell(row, file.state, `state-${file.state}`);
    const td = row.insertCell();
    if (file.state === "loading") {
      const bar = document.createElement("progress");
      bar.max = 1;
      bar.dataset.id = file.id;
      bar.setAttribute("aria-label", `progress of ${file.name}`);
      td.append(bar);
      const info = document.createElement("span");
      info.className = "progress-info";
      td.append(" ", info);
      updateBar(bar, progress.get(file.id) || { bytes: file.bytes, bytes_read: 0, records_written: 0, seconds: 0 });
    } else if (file.state === "committed") {
      td.textContent = file.seconds !== undefined ? `${file.seconds} s` : "";
    }
    cell(row, number(file.records_written), "num");
    const detail = file.state === "rejected" ? `${file.code}: ${file.reason}`
      : file.state === "committed" ? `${number(file.records_rejected)} rejected, ${number(file.duplicates)} already present`
      : "";
    cell(row, detail);
  }
}

function updateBar(bar, data) {
  const info = bar.nextElementSibling;
  const fraction = !data.compressed && data.bytes ? Math.min(1, (data.bytes_read || 0) / data.bytes) : null;
  if (fraction === null) bar.removeAttribute("value");
  else bar.value = fraction;
  const rate = data.seconds ? data.records_written / data.seconds : 0;
  const left = fraction && fraction > 0 && data.seconds ? data.seconds * (1 - fraction) / fraction : null;
  if (info) {
    info.textContent = `${number(data.records_written)} records, ${number(data.bytes_read)} of ${number(data.bytes)} bytes`
      + (rate ? `, ${number(Math.round(rate))}/s` : "") + (left !== null ? `, ${Math.ceil(left)} s left` : "");
  }
}

async function loadStream(tenant) {
  try {
    const status = await api("GET", `/tenants/${tenant}/stream`);
    if (tenant !== current) return;
    $("stream-status").textContent = `${status.state}: ${status.consumers} consumers `
      + `(${status.min_consumers}–${status.max_consumers}), queue ${number(status.queue_depth)}, `
      + `${status.rates.committed_per_s} messages/s`;
    $("stream-status").dataset.consumers = status.consumers;
    $("scale-count").max = status.max_consumers;
  } catch (error) {
    $("stream-status").textContent = error.status === 404 ? "No stream." : error.message;
  }
}

$("scale-form").addEventListener("submit", async (event) => {
  event.preventDefault();
  const count = Number($("scale-count").value);
  if (!window.confirm(`Run ${count} consumers for tenant ${current}?`)) return;
  try {
    await api("PUT", `/tenants/${current}/stream/consumers`, { count });
    $("scale-result").textContent = "";
    loadStream(current);
  } catch (error) {
    $("scale-result").textContent = error.message;
  }
});

async function loadRejects(tenant, fresh) {
  if (fresh) {
    rejectsAfter = null;
    $("rejects").tBodies[0].replaceChildren();
    $("reject-detail").textContent = "";
  }
  const params = new URLSearchParams({ limit: "20" });
  if ($("reject-reason").value) params.set("reason", $("reject-reason").value);
  if (rejectsAfter) params.set("after", rejectsAfter);
  const page = await api("GET", `/tenants/${tenant}/rejects?${params}`).catch(() => ({ rejects: [], next: null }));
  if (tenant !== current) return;
  for (const reject of page.rejects) {
    const row = $("rejects").tBodies[0].insertRow();
    const button = document.createElement("button");
    button.type = "button";
    button.textContent = reject._id;
    button.addEventListener("click", () => showReject(tenant, reject._id));
    row.insertCell().append(button);
    cell(row, reject.kind);
    cell(row, reject.source === "file" ? `${reject.file} record ${reject.record_number}` : `message ${reject.message_id}`);
    cell(row, reject.reason);
  }
  rejectsAfter = page.next;
  $("rejects-more").hidden = !page.next;
}

$("reject-reason").addEventListener("change", () => loadRejects(current, true));
$("rejects-more").addEventListener("click", () => loadRejects(current, false));

async function showReject(tenant, id) {
  const reject = await api("GET", `/tenants/${tenant}/rejects/${encodeURIComponent(id)}`);
  $("reject-detail").textContent = `${reject.kind}: ${reject.reason}\n\nraw input:\n`
    + (typeof reject.raw === "string" ? reject.raw : JSON.stringify(reject.raw, null, 2))
    + (reject.record ? `\n\nrecord:\n${JSON.stringify(reject.record, null, 2)}` : "");
  $("reject-detail").focus();
}

start();
