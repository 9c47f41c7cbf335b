// The request log: recent requests newest first (GET /v1/nobusy/requests, keyset pages),
// filters, and a detail view with the audit log's events (content where it is kept).

import { call } from "./api.js";
import { t } from "./i18n.js";
import { money } from "./usage.js";
import { showAuthNotice } from "./status.js";

const $ = (id) => document.getElementById(id);
let active = false;
let cursors = []; // the cursor of each page shown so far: [null, page 2's, ...]

export function initRequests() {
  $("requests-form").addEventListener("submit", (event) => {
    event.preventDefault();
    cursors = [null];
    load();
  });
  $("requests-older").addEventListener("click", () => load());
  $("requests-newest").addEventListener("click", () => {
    cursors = [null];
    load();
  });
  $("request-detail-close").addEventListener("click", () => $("request-detail").close());
  document.addEventListener("nobusy:keys", () => active && reset());
}

export function showRequests(visible) {
  active = visible;
  if (visible) reset();
}

function reset() {
  cursors = [null];
  load();
}

function filters() {
  const params = new URLSearchParams({ limit: "50" });
  for (const [name, id] of [["key", "requests-key"], ["model", "requests-model"], ["status", "requests-status"], ["since", "requests-since"], ["until", "requests-until"]]) {
    const value = $(id).value.trim();
    if (value) params.set(name, value);
  }
  return params;
}

// Loads the page after the last cursor: the first page, or the next older one.
async function load() {
  const params = filters();
  const cursor = cursors.at(-1);
  if (cursor) params.set("cursor", cursor);
  $("requests-error").textContent = "";
  try {
    const page = await call(`/v1/nobusy/requests?${params}`, { admin: true });
    $("requests-auth").hidden = true;
    $("requests-body").hidden = false;
    render(page);
    if (page.next_cursor) cursors.push(page.next_cursor);
    $("requests-older").disabled = !page.next_cursor;
    $("requests-newest").disabled = cursors.length <= 2 && !cursor;
  } catch (error) {
    if (error.status === 401) {
      showAuthNotice($("requests-auth"));
      $("requests-body").hidden = true;
    } else {
      $("requests-error").textContent = t("errorPrefix", { message: error.message });
    }
  }
}

function ms(value) {
  return value == null ? "—" : `${Math.round(value)} ms`;
}

function route(row) {
  const path = row.tried.length ? row.tried.join(" → ") : row.upstream ?? "—";
  const marks = [];
  if (row.tried.length > 1) marks.push(t("failedOver"));
  if (row.notes.length) marks.push(t("continued"));
  if (row.overflow) marks.push(t("overflowed"));
  if (row.cache) marks.push(`cache ${row.cache}`);
  return marks.length ? `${path} (${marks.join(", ")})` : path;
}

function hits(row) {
  return Object.entries(row.hits).map(([kind, n]) => `${kind} ×${n}`).join(", ") || "—";
}

function render(page) {
  const body = $("requests-table").tBodies[0];
  const rows = page.data.map((r) => {
    const row = document.createElement("tr");
    row.dataset.id = String(r.id);
    const cells = [
      r.time,
      r.key_name ?? r.key_id ?? "—",
      r.alias,
      route(r),
      r.outcome,
      ms(r.ttft_ms),
      ms(r.duration_ms),
      `${r.prompt_tokens} + ${r.completion_tokens}`,
      money(r.report_cost_micros, page.currency),
      hits(r),
    ];
    cells.forEach((text, i) => {
      const cell = row.insertCell();
      cell.textContent = text;
      if (i >= 5 && i <= 8) cell.className = "num";
      if (i === 4) cell.className = r.outcome === "ok" ? "outcome-ok" : "outcome-bad";
    });
    const open = document.createElement("button");
    open.type = "button";
    open.textContent = t("details");
    open.setAttribute("aria-label", `${t("details")}: ${r.request_id}`);
    open.addEventListener("click", () => detail(r.id));
    row.insertCell().append(open);
    return row;
  });
  if (!rows.length) {
    const row = document.createElement("tr");
    const cell = row.insertCell();
    cell.colSpan = 11;
    cell.textContent = t("noRequests");
    rows.push(row);
  }
  body.replaceChildren(...rows);
}

async function detail(id) {
  const data = await call(`/v1/nobusy/requests/${encodeURIComponent(id)}`, { admin: true });
  const list = $("request-detail-fields");
  const fields = [
    ["requestId", data.request_id],
    ["time", data.time],
    ["key", data.key_name ? `${data.key_name} (${data.key_id})` : data.key_id ?? "—"],
    ["model", data.alias],
    ["route", route(data)],
    ["firstChoice", data.first_choice ?? "—"],
    ["outcome", data.outcome],
    ["ttftShort", ms(data.ttft_ms)],
    ["queueTime", ms(data.queue_ms)],
    ["duration", ms(data.duration_ms)],
    ["tokensInOut", `${data.prompt_tokens} / ${data.completion_tokens} (${t("cachedTokens", { n: data.cached_tokens })})`],
    ["usageSource", data.usage_source ?? "—"],
    ["notesLabel", data.notes.join("; ") || "—"],
  ];
  list.replaceChildren(
    ...fields.flatMap(([name, value]) => {
      const dt = document.createElement("dt");
      dt.textContent = t(name);
      const dd = document.createElement("dd");
      dd.textContent = value;
      return [dt, dd];
    }),
  );
  const events = $("request-detail-events");
  events.replaceChildren();
  if (!data.audit.enabled) {
    events.textContent = t("auditOff");
  } else if (!data.audit.events.length) {
    events.textContent = t("auditNone");
  } else {
    for (const event of data.audit.events) {
      const item = document.createElement("section");
      item.className = "audit-event";
      const head = document.createElement("h3");
      head.textContent = `${event.event} · ${event.time}`;
      const body = document.createElement("pre");
      // Text content only, never markup: a request or an answer may hold anything.
      body.textContent = data.audit.content
        ? JSON.stringify(event.content, null, 2)
        : t("contentHidden", { hash: event.content_hash ?? "—" });
      item.append(head, body);
      events.append(item);
    }
  }
  $("request-detail").showModal();
}
