// The jobqueue dashboard: plain JavaScript, no framework, nothing loaded from elsewhere.
// It follows /dashboard/events (the job list, locks, workers, filters) and, for the job
// selected, /dashboard/jobs/ID/events (its fields and log); both are server-sent events.
// Text from the queue is only ever set as textContent, never parsed as HTML.
"use strict";

const STATUSES = ["queued", "waiting", "running", "canceling", "success", "error", "canceled"];
const PRIORITY_NAMES = { "-10": "high", "0": "normal", "10": "low" };
const state = { statuses: new Set(), search: "", jobId: null, overview: null, jobStream: null,
  listStream: null, canWrite: false, job: null };

function $(id) { return document.getElementById(id); }

function el(tag, text, className) {
  const node = document.createElement(tag);
  if (text !== undefined && text !== null) node.textContent = String(text);
  if (className) node.className = className;
  return node;
}

function formatTime(stamp) {
  if (!stamp) return "";
  const date = new Date(stamp[0] * 1000 + Math.floor(stamp[1] / 1000));
  return date.toLocaleString();
}

function formatValue(value) {
  if (value === null || value === undefined) return "";
  return typeof value === "string" ? value : JSON.stringify(value);
}

function priorityText(priority) {
  const name = PRIORITY_NAMES[String(priority)];
  return name ? `${priority} (${name})` : String(priority);
}

// -- the job list and the rest of the overview -------------------------------------
function openOverview() {
  if (state.listStream) state.listStream.close();
  const params = new URLSearchParams();
  if (state.statuses.size) params.set("status", Array.from(state.statuses).join(","));
  if (state.search) params.set("search", state.search);
  const stream = new EventSource("/dashboard/events?" + params.toString());
  stream.addEventListener("open", () => setConnection(true));
  stream.addEventListener("error", () => setConnection(false));
  stream.addEventListener("overview", (event) => renderOverview(JSON.parse(event.data)));
  state.listStream = stream;
}

function setConnection(live) {
  const badge = $("connection");
  badge.textContent = live ? "live" : "reconnecting";
  badge.className = live ? "badge live" : "badge warn";
}

function renderOverview(overview) {
  state.overview = overview;
  const error = $("error");
  error.hidden = !overview.error;
  error.textContent = overview.error || "";
  const config = overview.config || {};
  $("master").textContent = config.master ? `${config.role} ${config.master}` : (config.role || "");
  $("drained").hidden = !config.drain_flag;
  renderStatusFilters(overview.counts || {});
  renderJobs(overview.jobs, overview.matching);
  renderLocks(overview.locks);
  renderWorkers(config, overview.running || []);
  renderFilters(overview.filters);
}

function renderStatusFilters(counts) {
  const box = $("status-filters");
  if (!box.childElementCount) {
    for (const status of STATUSES) {
      const label = el("label");
      const input = el("input");
      input.type = "checkbox";
      input.value = status;
      input.dataset.status = status;
      input.addEventListener("change", () => {
        if (input.checked) state.statuses.add(status); else state.statuses.delete(status);
        openOverview();
      });
      label.append(input, el("span", status));
      box.append(label);
    }
  }
  for (const label of box.children) {
    const status = label.firstChild.value;
    label.lastChild.textContent = `${status} (${counts[status] || 0})`;
  }
}

function renderJobs(jobs, matching) {
  const body = $("jobs-table").tBodies[0];
  const rows = jobs.map((job) => {
    const row = el("tr");
    row.dataset.jobId = job.id;
    row.dataset.status = job.status;
    if (job.id === state.jobId) row.classList.add("selected");
    row.append(el("td", job.id), el("td", job.status, "status-" + job.status),
      el("td", job.priority), el("td", (job.summary || []).join(", ")),
      el("td", formatTime(job.received_ts)), el("td", formatTime(job.start_ts)),
      el("td", formatTime(job.end_ts)));
    row.addEventListener("click", () => selectJob(job.id));
    return row;
  });
  body.replaceChildren(...rows);
  $("jobs-count").textContent = matching > jobs.length ?
    `(newest ${jobs.length} of ${matching})` : `(${matching})`;
}

function renderLocks(locks) {
  const rows = (locks || []).map((lock) => {
    const row = el("tr");
    row.dataset.lock = lock.name;
    const pending = (lock.pending || []).map((group) => `${group[0]}: ${group[1].join(", ")}`);
    row.append(el("td", lock.name), el("td", lock.mode || ""),
      el("td", (lock.owner || []).join(", ")), el("td", pending.join("; ")));
    return row;
  });
  $("locks-table").tBodies[0].replaceChildren(...rows);
}

function renderWorkers(config, running) {
  const workers = config.workers || 0;
  const busy = running.length;
  $("workers-summary").textContent =
    `${workers} workers: ${busy} busy, ${Math.max(0, workers - busy)} idle`;
  const items = running.map((job) => {
    const item = el("li", `job ${job.id}: ${(job.summary || []).join(", ")}`);
    item.dataset.jobId = job.id;
    item.addEventListener("click", () => selectJob(job.id));
    return item;
  });
  $("running-jobs").replaceChildren(...items);
}

function renderFilters(filters) {
  $("filters-none").hidden = filters !== null && filters !== undefined;
  const rows = (filters || []).map((rule) => {
    const row = el("tr");
    row.append(el("td", rule.uuid), el("td", rule.priority), el("td", formatValue(rule.action)),
      el("td", formatValue(rule.predicates)));
    return row;
  });
  $("filters-table").tBodies[0].replaceChildren(...rows);
}

// -- one job, followed live ----------------------------------------------------------
function selectJob(jobId) {
  if (location.hash !== "#job=" + jobId) history.replaceState(null, "", "#job=" + jobId);
  followJob(jobId);
}

function followJob(jobId) {
  if (state.jobStream) state.jobStream.close();
  state.jobId = jobId;
  state.job = null;
  for (const row of $("jobs-table").tBodies[0].rows) {
    row.classList.toggle("selected", Number(row.dataset.jobId) === jobId);
  }
  $("job-id").textContent = jobId;
  $("job-none").hidden = true;
  $("job-detail").hidden = false;
  $("job-log").replaceChildren();
  $("action-result").textContent = "";
  const stream = new EventSource(`/dashboard/jobs/${jobId}/events`);
  stream.addEventListener("job", (event) => {
    const job = JSON.parse(event.data);
    state.job = job;
    renderJob(job);
    $("job-log").replaceChildren();
    appendLog(job.log);
  });
  stream.addEventListener("change", (event) => {
    const change = JSON.parse(event.data);
    if (!state.job) return;
    Object.assign(state.job, change.fields);
    renderJob(state.job);
    appendLog(change.log);
  });
  stream.addEventListener("end", () => stream.close());
  stream.addEventListener("failure", (event) => {
    $("action-result").textContent = JSON.parse(event.data).message;
    stream.close();
  });
  state.jobStream = stream;
}

function renderJob(job) {
  const status = $("job-status");
  status.textContent = job.status;
  status.className = "status-" + job.status;
  $("job-priority").textContent = priorityText(job.priority);
  $("job-received").textContent = formatTime(job.received_ts);
  $("job-started").textContent = formatTime(job.start_ts);
  $("job-ended").textContent = formatTime(job.end_ts);
  const finished = ["success", "error", "canceled"].includes(job.status);
  $("job-actions").hidden = !state.canWrite || finished;
  $("cancel-button").textContent = job.status === "running" ? "Kill" : "Cancel";
  const rows = (job.ops || []).map((op, index) => {
    const row = el("tr");
    const opStatus = (job.opstatus || [])[index];
    row.append(el("td", index), el("td", (job.summary || [])[index] || op.OP_ID),
      el("td", opStatus, "status-" + opStatus), el("td", formatValue((job.opresult || [])[index])));
    return row;
  });
  $("ops-table").tBodies[0].replaceChildren(...rows);
}

function appendLog(entries) {
  const log = $("job-log");
  for (const [serial, stamp, type, message] of entries || []) {
    const item = el("li", `${formatTime(stamp)} ${type}: ${formatValue(message)}`, type);
    item.value = serial;
    item.dataset.serial = serial;
    log.append(item);
  }
}

// -- actions (write users) -----------------------------------------------------------
async function act(method, path, body) {
  const options = { method, credentials: "same-origin", headers: {} };
  if (body !== undefined) {
    options.headers["Content-Type"] = "application/json";
    options.body = JSON.stringify(body);
  }
  const result = $("action-result");
  try {
    const response = await fetch(path, options);
    const answer = await response.json();
    if (!response.ok) result.textContent = `${answer.code}: ${answer.message}`;
    else if (Array.isArray(answer)) result.textContent = answer[1];
    else result.textContent = "done";
  } catch (err) {
    result.textContent = String(err);
  }
}

function cancelJob() {
  if (state.jobId === null) return;
  const kill = state.job && state.job.status === "running" ? "?kill=1" : "";
  act("DELETE", `/2/jobs/${state.jobId}${kill}`);
}

function changePriority() {
  if (state.jobId === null) return;
  const priority = Number($("priority-select").value);
  act("PUT", `/2/jobs/${state.jobId}/priority`, { priority });
}

// -- start ------------------------------------------------------------------------
async function start() {
  $("cancel-button").addEventListener("click", cancelJob);
  $("priority-button").addEventListener("click", changePriority);
  let timer = null;
  $("search").addEventListener("input", () => {
    clearTimeout(timer);
    timer = setTimeout(() => { state.search = $("search").value.trim(); openOverview(); }, 250);
  });
  window.addEventListener("hashchange", fromHash);
  try {
    const session = await (await fetch("/dashboard/session", { credentials: "same-origin" })).json();
    state.canWrite = Boolean(session.write);
    $("user").textContent = `${session.user}${session.write ? " (write)" : " (read only)"}`;
    document.body.dataset.write = state.canWrite ? "yes" : "no";
  } catch (err) {
    $("user").textContent = "?";
  }
  openOverview();
  fromHash();
}

function fromHash() {
  const match = /^#job=(\d+)$/.exec(location.hash);
  if (match && Number(match[1]) !== state.jobId) followJob(Number(match[1]));
}

start();
