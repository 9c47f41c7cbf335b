// The upstreams page: add, edit, test, disable and enable upstreams and model aliases, over
// /v1/nobusy/upstreams and /v1/nobusy/aliases with the admin key. The server writes each
// change to the managed overlay beside the config file and applies it without a restart; an
// edit that would break the config comes back as `nobusy check`'s message, nothing written.

import { call } from "./api.js";
import { t } from "./i18n.js";
import { showAuthNotice } from "./status.js";

const $ = (id) => document.getElementById(id);
let active = false;
let editing = null; // the upstream the form edits (null: adding one)
let editingAlias = null;
const probes = new Map(); // upstream -> its last probe result, kept across redraws

export function initUpstreams() {
  $("upstream-form").addEventListener("submit", (event) => {
    event.preventDefault();
    saveUpstream();
  });
  $("alias-form").addEventListener("submit", (event) => {
    event.preventDefault();
    saveAlias();
  });
  $("up-cancel").addEventListener("click", () => editUpstream(null));
  $("alias-cancel").addEventListener("click", () => editAlias(null));
  document.addEventListener("nobusy:keys", () => active && refresh());
  document.addEventListener("nobusy:language", () => active && refresh());
}

export function showUpstreams(visible) {
  active = visible;
  if (visible) refresh();
}

async function refresh() {
  try {
    const upstreams = await call("/v1/nobusy/upstreams", { admin: true });
    const aliases = await call("/v1/nobusy/aliases", { admin: true });
    $("upstreams-auth").hidden = true;
    $("upstreams-body").hidden = false;
    $("upstreams-where").textContent = t("upWhere", { file: upstreams.managed_file });
    renderUpstreams(upstreams.data);
    renderAliases(aliases.data);
  } catch (error) {
    if (error.status === 401) {
      showAuthNotice($("upstreams-auth"));
      $("upstreams-body").hidden = true;
    } else {
      $("up-form-error").textContent = t("errorPrefix", { message: error.message });
    }
  }
}

function button(label, onClick, className = "") {
  const b = document.createElement("button");
  b.type = "button";
  b.textContent = label;
  if (className) b.className = className;
  b.addEventListener("click", onClick);
  return b;
}

function renderUpstreams(rows) {
  const body = $("upstreams-table").tBodies[0];
  body.replaceChildren();
  for (const row of rows) {
    const config = row.config;
    const tr = body.insertRow();
    tr.dataset.upstream = row.name;
    tr.insertCell().textContent = row.name;
    tr.insertCell().textContent = config.kind;
    const where = tr.insertCell();
    const address = document.createElement("code");
    address.textContent = config.base_url ?? config.model_path ?? "";
    where.append(address);
    if (config.default_model) where.append(` · ${config.default_model}`);
    const circuit = document.createElement("span");
    circuit.className = `pill state-${row.state}`;
    circuit.textContent = t(`circuit_${row.state}`);
    tr.insertCell().append(circuit);
    const inFlight = tr.insertCell();
    inFlight.className = "num";
    inFlight.textContent = String(row.in_flight);
    tr.insertCell().textContent = row.enabled ? t("upYes") : t("upNo");
    const test = tr.insertCell();
    test.className = "probe";
    const result = document.createElement("span");
    result.className = "probe-result";
    result.setAttribute("role", "status");
    showProbe(result, probes.get(row.name));
    test.append(button(t("upTest"), () => probe(row.name, result)), " ", result);
    const actions = tr.insertCell();
    actions.append(
      button(t("edit"), () => editUpstream(row)),
      " ",
      row.enabled
        ? button(t("upDisable"), () => act(`/v1/nobusy/upstreams/${enc(row.name)}/disable`, "up-form-error"))
        : button(t("upEnable"), () => act(`/v1/nobusy/upstreams/${enc(row.name)}/enable`, "up-form-error")),
      " ",
      button(t("upDelete"), () => act(`/v1/nobusy/upstreams/${enc(row.name)}`, "up-form-error", "DELETE"), "danger"),
    );
  }
}

function renderAliases(rows) {
  const body = $("aliases-table").tBodies[0];
  body.replaceChildren();
  const text = (routes) => routes.map((r) => (Array.isArray(r) ? r.join(" | ") : r)).join(" → ");
  for (const row of rows) {
    const tr = body.insertRow();
    tr.dataset.alias = row.name;
    tr.insertCell().textContent = row.name;
    tr.insertCell().textContent = text(row.routes);
    tr.insertCell().textContent = text(row.overflow);
    tr.insertCell().textContent = row.enabled ? t("upYes") : t("upNo");
    const path = `/v1/nobusy/aliases/${enc(row.name)}`;
    tr.insertCell().append(
      button(t("edit"), () => editAlias(row)),
      " ",
      row.enabled
        ? button(t("upDisable"), () => act(`${path}/disable`, "alias-form-error"))
        : button(t("upEnable"), () => act(`${path}/enable`, "alias-form-error")),
      " ",
      button(t("upDelete"), () => act(path, "alias-form-error", "DELETE"), "danger"),
    );
  }
}

const enc = encodeURIComponent;

function showProbe(element, result) {
  if (!result) {
    element.textContent = "";
    return;
  }
  element.textContent =
    result.status === "ok"
      ? t("upProbeOk", { ms: Math.round(result.latency_ms) })
      : t("upProbeDown", { error: result.error });
  element.dataset.status = result.status;
}

async function probe(name, element) {
  element.textContent = t("upTesting");
  delete element.dataset.status;
  try {
    const result = await call(`/v1/nobusy/upstreams/${enc(name)}/probe`, { method: "POST", admin: true });
    probes.set(name, result);
    showProbe(element, result);
  } catch (error) {
    element.textContent = t("errorPrefix", { message: error.message });
  }
}

async function act(path, errorId, method = "POST") {
  $(errorId).textContent = "";
  $("up-form-status").textContent = "";
  try {
    await call(path, { method, admin: true });
  } catch (error) {
    $(errorId).textContent = t("errorPrefix", { message: error.message });
  }
  await refresh();
}

function editUpstream(row) {
  editing = row ? row.name : null;
  $("upstream-form").reset();
  $("up-form-error").textContent = "";
  $("up-name").disabled = Boolean(row);
  $("up-kind").disabled = Boolean(row);
  $("up-cancel").hidden = !row;
  $("upstream-form-heading").textContent = row ? t("upEdit", { name: row.name }) : t("upAdd");
  if (!row) return;
  const c = row.config;
  $("up-name").value = row.name;
  $("up-kind").value = c.kind;
  $("up-base-url").value = c.base_url ?? "";
  $("up-default-model").value = c.default_model ?? "";
  $("up-max-concurrency").value = c.max_concurrency ?? "";
  $("up-base-url").focus();
}

async function saveUpstream() {
  const value = (id) => $(id).value.trim();
  const body = {
    base_url: value("up-base-url") || undefined,
    default_model: value("up-default-model") || (editing ? null : undefined),
    max_concurrency: value("up-max-concurrency") ? Number(value("up-max-concurrency")) : editing ? null : undefined,
  };
  if (value("up-api-key")) body.api_key = value("up-api-key"); // empty: keep the current one
  if (!editing) {
    body.name = value("up-name");
    body.kind = $("up-kind").value;
  }
  $("up-form-error").textContent = "";
  $("up-form-status").textContent = "";
  try {
    const done = editing
      ? await call(`/v1/nobusy/upstreams/${enc(editing)}`, { method: "PATCH", body, admin: true })
      : await call("/v1/nobusy/upstreams", { method: "POST", body, admin: true });
    editUpstream(null);
    $("up-form-status").textContent = t("upSaved", { ms: Math.round(done.reload.seconds * 1000) });
    await refresh();
  } catch (error) {
    $("up-form-error").textContent = t("errorPrefix", { message: error.message });
  }
}

function editAlias(row) {
  editingAlias = row ? row.name : null;
  $("alias-form").reset();
  $("alias-form-error").textContent = "";
  $("alias-name").disabled = Boolean(row);
  $("alias-cancel").hidden = !row;
  $("alias-form-heading").textContent = row ? t("aliasEdit", { name: row.name }) : t("aliasAdd");
  if (!row) return;
  $("alias-name").value = row.name;
  $("alias-routes").value = row.routes.flat().join(", ");
  $("alias-routes").focus();
}

async function saveAlias() {
  const routes = $("alias-routes").value.split(",").map((r) => r.trim()).filter(Boolean);
  $("alias-form-error").textContent = "";
  try {
    if (editingAlias) {
      await call(`/v1/nobusy/aliases/${enc(editingAlias)}`, { method: "PATCH", body: { routes }, admin: true });
    } else {
      await call("/v1/nobusy/aliases", { method: "POST", body: { name: $("alias-name").value.trim(), routes }, admin: true });
    }
    editAlias(null);
    await refresh();
  } catch (error) {
    $("alias-form-error").textContent = t("errorPrefix", { message: error.message });
  }
}
