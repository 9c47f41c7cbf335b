// The status board: each upstream's circuit, load and speed, the queue, request and token
// rates, the replicas and shared backends (with `state`), the pool of local servers and its
// tiers (pool.js), and usage per key. Polls the admin endpoints every 2 s while it is on screen; rates
// are differences between two polls of the server's running totals.

import { call } from "./api.js";
import { t } from "./i18n.js";
import { renderPool } from "./pool.js";
import { openSettings } from "./settings.js";
import { sparkline } from "./sparkline.js";

const $ = (id) => document.getElementById(id);
const INTERVAL_MS = 2000;
const HISTORY = 60; // samples kept for the charts: two minutes

let timer = 0;
let active = false;
let generation = 0; // bumped by every poll: only the newest may schedule the next one
let previous = null; // the last /v1/nobusy/status answer, to difference against
let lastGood = null;
const series = { requests: [], tokens: [], inFlight: [], upstreams: new Map() };

export function initStatus() {
  document.addEventListener("visibilitychange", () => {
    if (active && !document.hidden) poll();
  });
  document.addEventListener("nobusy:keys", () => active && poll());
}

/** Start or stop polling as the view is shown or hidden. */
export function showStatus(visible) {
  active = visible;
  clearTimeout(timer);
  if (visible) poll();
}

async function poll() {
  clearTimeout(timer);
  const mine = ++generation;
  try {
    const [upstreams, status, keyList, pool] = await Promise.all([
      call("/v1/nobusy/upstreams", { admin: true }),
      call("/v1/nobusy/status", { admin: true }),
      call("/v1/nobusy/keys", { admin: true }),
      call("/v1/nobusy/pool", { admin: true }),
    ]);
    if (mine !== generation) return; // a newer poll started meanwhile: it draws and schedules
    $("status-auth").hidden = true;
    $("status-body").hidden = false;
    record(status, upstreams);
    render(upstreams, status, keyList.data);
    renderPool(pool);
    lastGood = new Date();
    $("status-updated").textContent = t("updated", { time: lastGood.toLocaleTimeString() });
  } catch (error) {
    if (mine !== generation) return;
    if (error.status === 401) {
      showAuthNotice($("status-auth"));
      $("status-body").hidden = true;
      return; // no point polling until a key is entered (nobusy:keys restarts)
    }
    const time = lastGood ? lastGood.toLocaleTimeString() : "—";
    $("status-updated").textContent = t("stale", { time, message: error.message });
  }
  // Never more often than every 2 s, and no overlapping polls: the next starts after this.
  if (active && !document.hidden) timer = setTimeout(poll, INTERVAL_MS);
}

/** The admin-key notice, with a button that opens Settings. */
export function showAuthNotice(element) {
  const button = document.createElement("button");
  button.type = "button";
  button.textContent = t("openSettings");
  button.addEventListener("click", openSettings);
  element.replaceChildren(t("adminNeeded"), " ", button);
  element.hidden = false;
}

function push(list, value) {
  list.push(value);
  if (list.length > HISTORY) list.shift();
}

function record(status, upstreams) {
  if (previous && status.time > previous.time) {
    const seconds = status.time - previous.time;
    // A restarted server starts its totals again from zero: count that interval as zero.
    const rate = (now, then) => Math.max(0, now - then) / seconds;
    push(series.requests, rate(status.requests.total, previous.requests.total));
    push(series.tokens, rate(status.tokens.total, previous.tokens.total));
  }
  push(series.inFlight, status.in_flight);
  for (const upstream of upstreams.data) {
    if (!series.upstreams.has(upstream.name)) series.upstreams.set(upstream.name, []);
    push(series.upstreams.get(upstream.name), upstream.in_flight);
  }
  previous = status;
}

function render(upstreams, status, keyList) {
  renderTiles(status, upstreams.queue);
  renderFleet(status);
  $("status-upstreams").replaceChildren(...upstreams.data.map(upstreamCard));
  renderUsage(status.keys.data, keyList);
}

function el(tag, className, text) {
  const node = document.createElement(tag);
  if (className) node.className = className;
  if (text !== undefined) node.textContent = text;
  return node;
}

function tile(label, value, extra) {
  const box = el("div", "tile");
  box.append(el("span", "tile-label", label), el("span", "tile-value", value));
  if (extra) box.append(extra);
  return box;
}

function renderTiles(status, queue) {
  const lastRate = (list) => (list.length ? list.at(-1) : 0);
  const depths = Object.entries(queue);
  const waiting = depths.reduce((sum, [, depth]) => sum + depth, 0);
  const byPriority = el("span", "tile-detail", depths.map(([p, depth]) => `${t(priorityKey(p))}\u00a0${depth}`).join(" · "));
  $("status-tiles").replaceChildren(
    tile(t("requestsPerSec"), lastRate(series.requests).toFixed(1), sparkline(series.requests, t("requestsPerSec"))),
    tile(t("tokensPerSec"), lastRate(series.tokens).toFixed(0), sparkline(series.tokens, t("tokensPerSec"))),
    tile(t("inFlight"), String(status.in_flight), sparkline(series.inFlight, t("inFlight"))),
    tile(t("queue"), String(waiting), byPriority),
    tile(t("errors"), String(status.errors.total)),
    tile(t("uptime"), status.draining ? t("draining") : duration(status.time - status.started)),
  );
  const cache = status.cache; // null unless an alias enables the response cache
  if (cache) {
    const detail = el("span", "tile-detail", t("cacheDetail", cache));
    $("status-tiles").append(tile(t("cacheHits"), String(cache.hits), detail));
  }
}

const BACKEND = { ok: "backendOk", degraded: "backendDegraded", down: "backendDown" };

/** Every replica and the shared backends; hidden for a lone replica without shared state. */
function renderFleet(status) {
  const replicas = status.replicas ?? [];
  const backends = status.backends ?? [];
  $("status-fleet").hidden = !backends.length && replicas.length < 2;
  $("status-backends").replaceChildren(...backends.map((b) => {
    const item = el("li", "backend");
    item.dataset.status = b.status;
    item.title = `${b.url}: ${b.detail}`;
    item.append(el("span", `pill backend-${b.status}`, t(BACKEND[b.status] ?? b.status, { backend: b.backend })));
    // Not as configured: say why and since when, not only in the tooltip.
    if (b.status !== "ok") {
      const since = b.since ? ` (${t("since", { time: new Date(b.since * 1000).toLocaleTimeString() })})` : "";
      item.append(" ", el("span", "dim", `${b.detail}${since}`));
    }
    return item;
  }));
  const body = $("status-replicas").tBodies[0];
  body.replaceChildren();
  for (const r of replicas) {
    const row = body.insertRow();
    row.dataset.replica = r.id;
    const name = row.insertCell();
    name.append(r.id);
    if (r.id === status.replica) name.append(" ", el("span", "dim", `(${t("thisReplica")})`));
    if (r.draining) name.append(" ", el("span", "pill warn", t("draining")));
    for (const value of [r.in_flight, r.queue]) {
      const cell = row.insertCell();
      cell.className = "num";
      cell.textContent = String(value);
    }
    const seen = row.insertCell();
    seen.className = "num";
    seen.textContent = t("secondsAgo", { n: Math.round(r.last_seen) });
    row.insertCell().textContent = r.version;
  }
}

const STATES = { closed: "stateClosed", open: "stateOpen", half_open: "stateHalfOpen" };

function upstreamCard(u) {
  const card = el("article", `card state-${u.state}`);
  card.dataset.upstream = u.name;
  const head = el("header", "card-head");
  head.append(el("h3", "", u.name), el("span", "kind", u.kind));
  const state = el("span", `pill state state-${u.state}`, t(STATES[u.state] ?? u.state));
  state.dataset.state = u.state;
  head.append(state);
  card.append(head);

  const facts = el("dl", "facts");
  const fact = (label, ...value) => {
    const row = el("div");
    const dd = el("dd");
    dd.append(...value);
    row.append(el("dt", "", label), dd);
    facts.append(row);
  };
  const limit = u.concurrency?.limit ?? null;
  const meter = el("meter");
  meter.min = 0;
  meter.max = Math.max(1, limit ?? u.in_flight);
  meter.value = u.in_flight;
  meter.setAttribute("aria-label", t("load"));
  fact(t("load"), `${u.in_flight} / ${limit == null ? "∞" : Math.round(limit)} `, meter);
  // Percentiles need 20 answers; until then the smoothed average is the best there is.
  const ttft = u.ttft_p50 == null && u.ttft_ewma != null
    ? `≈ ${seconds(u.ttft_ewma)}`
    : `${seconds(u.ttft_p50)} / ${seconds(u.ttft_p95)}`;
  fact(t("ttftP"), ttft);
  const rate = u.attempts ? `${Math.round((100 * u.failures) / u.attempts)}% (${u.failures}/${u.attempts})` : "—";
  fact(t("errorRate"), rate);
  const back = u.state === "open" && u.retry_in > 0 ? ` · ${t("retryIn", { seconds: Math.ceil(u.retry_in) })}` : "";
  fact(t("ejections"), `${u.ejections}${back}`);
  card.append(facts, sparkline(series.upstreams.get(u.name) ?? [], `${u.name}: ${t("inFlight")}`));
  const error = el("p", "last-error");
  error.append(el("span", "dim", `${t("lastError")}: `), u.last_error || t("none"));
  card.append(error);
  return card;
}

function renderUsage(usage, keyList) {
  const byId = new Map(keyList.map((k) => [k.id, k]));
  const body = $("status-usage").tBodies[0];
  body.replaceChildren();
  if (!usage.length) {
    const row = body.insertRow();
    const cell = row.insertCell();
    cell.colSpan = 5;
    cell.textContent = t("noUsage");
    return;
  }
  for (const u of usage) {
    const key = byId.get(u.key_id);
    const row = body.insertRow();
    const name = u.key_id ? `${u.name ?? u.key_id} (${key?.prefix ?? u.key_id})` : t("noKey");
    row.insertCell().textContent = name;
    for (const value of [u.requests, u.ok, `${u.prompt_tokens} / ${u.completion_tokens}`]) {
      const cell = row.insertCell();
      cell.className = "num";
      cell.textContent = String(value);
    }
    const balance = row.insertCell();
    balance.className = "num";
    balance.textContent = key?.quota_tokens == null ? (key ? t("unlimited") : "—") : `${key.balance} / ${key.quota_tokens}`;
  }
}

export function priorityKey(priority) {
  return `priority${priority[0].toUpperCase()}${priority.slice(1)}`;
}

// Units come from i18n.js: the Chinese page says 毫秒, 秒, 分, 小时, not ms, s, min, h.
export function seconds(value) {
  if (value == null) return "—";
  return value < 1
    ? t("unitMs", { n: Math.round(value * 1000) })
    : t("unitS", { n: value.toFixed(2) });
}

export function duration(total) {
  const s = Math.max(0, Math.floor(total));
  const h = Math.floor(s / 3600);
  const m = Math.floor((s % 3600) / 60);
  if (h) return t("unitHMin", { h, m });
  return m ? t("unitMinS", { m, s: s % 60 }) : t("unitS", { n: s });
}
