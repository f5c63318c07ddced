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
const rates = new Map();      // tenant -> recent stream.batch.committed (for messages/s)

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
    // a daemon restarted keeps the session (signed cookie); a closed stream is opened again
    if (source.readyState === EventSource.CLOSED) {
      source = null;
      setTimeout(connect, 1000);
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

function refresh() {
  if (current) showTenant(current);
  else if (me && me.kind === "admin") showOverview();
}

function onFileEvent(data) {
  if (data.tenant === current) loadFiles(current);
  else if (!current && me && me.kind === "admin") showOverview();
}

function onProgress(data) {
  progress.set(data.ledger_id, data);
  const bar = document.querySelector(`progress[data-id="${CSS.escape(data.ledger_id || "")}"]`);
  if (bar) updateBar(bar, data);
  else if (data.tenant === current) loadFiles(current);
}

function onBatch(data) {
  const list = rates.get(data.tenant) || [];
  list.push([Date.now(), data.messages || 0]);
  rates.set(data.tenant, list.filter(([t]) => Date.now() - t < 10000));
}

function messagesPerSecond(tenant) {
  const list = (rates.get(tenant) || []).filter(([t]) => Date.now() - t < 10000);
  return list.reduce((sum, [, n]) => sum + n, 0) / 10;
}

function onStreamEvent(name, data) {
  if (data.tenant !== current) return;
  addTimeline(name, data);
  if (name === "stream.consumers.changed") loadStream(current);
}

function addTimeline(name, data) {
  const item = document.createElement("li");
  const when = new Date().toLocaleTimeString();
  const what = name === "monitor.alert" ? `alert ${data.rule}: ${data.value} over ${data.threshold}`
    : name === "stream.consumers.changed" ? `consumers ${data.from} → ${data.to}: ${data.reason || ""}`
    : `monitor: ${data.verdict || ""} ${data.reason || ""}`;
  item.textContent = `${when} ${what}`;
  $("timeline").prepend(item);
  while ($("timeline").children.length > 50) $("timeline").lastChild.remove();
}

// -- overview (operators) --------------------------------------------------------------------
async function showOverview() {
  current = null;
  show("overview");
  const body = $("tenants").tBodies[0];
  const rows = await Promise.all(me.tenants.map(async (tenant) => {
    const stats = await api("GET", `/tenants/${tenant}/stats`).catch(() => null);
    const stream = await api("GET", `/tenants/${tenant}/stream`).catch(() => null);
    return { tenant, stats, stream };
  }));
  body.replaceChildren();
  for (const { tenant, stats, stream } of rows) {
    const row = body.insertRow();
    const link = document.createElement("a");
    link.href = `#/tenants/${tenant}`;
    link.className = "tenant-link";
    link.textContent = tenant;
    row.insertCell().append(link);
    cell(row, number(stats && stats.batch.files_committed), "num");
    cell(row, number(stats && stats.batch.files_rejected), "num");
    cell(row, number(stats && stats.batch.records_written + stats.stream.documents), "num");
    cell(row, messagesPerSecond(tenant).toFixed(1), "num");
    cell(row, stream ? `${stream.consumers} (${stream.min_consumers}–${stream.max_consumers})` : "–", "num");
    cell(row, stream ? number(stream.queue_depth) : "–", "num");
    cell(row, number(stats && stats.scaling.alerts), "num");
  }
}

// -- a tenant --------------------------------------------------------------------------------
function showTenant(tenant) {
  current = tenant;
  show("tenant");
  $("back").hidden = me.kind !== "admin";
  $("tenant-title").textContent = `Tenant ${tenant}`;
  $("scale-form").hidden = me.kind !== "admin";
  loadFiles(tenant);
  loadStream(tenant);
  loadRejects(tenant, true);
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
