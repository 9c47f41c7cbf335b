// The keys page: list, create (the secret is shown once), top up and revoke, over
// /v1/nobusy/keys with the admin key.

import { call } from "./api.js";
import { language, t } from "./i18n.js";
import { copyText, flash } from "./markdown.js";
import { priorityKey, showAuthNotice } from "./status.js";
import { money } from "./usage.js";

const $ = (id) => document.getElementById(id);
let active = false;

export function initKeys() {
  $("key-form").addEventListener("submit", (event) => {
    event.preventDefault();
    create();
  });
  $("new-key-copy").addEventListener("click", async () => {
    await copyText($("new-key-secret").value);
    flash($("new-key-copy"));
  });
  $("new-key-done").addEventListener("click", hideSecret);
  document.addEventListener("nobusy:keys", () => active && refresh());
}

export function showKeys(visible) {
  active = visible;
  if (visible) refresh();
  else hideSecret(); // leaving the page is the end of "shown once"
}

async function refresh() {
  try {
    const { data } = await call("/v1/nobusy/keys", { admin: true });
    // Usage per key over 30 days, from the daily rollup; the table shows without it if it fails.
    const usage = await call("/v1/nobusy/usage/series?by=key", { admin: true }).catch(() => null);
    $("keys-auth").hidden = true;
    $("keys-body").hidden = false;
    renderTable(data, usage);
  } catch (error) {
    if (error.status === 401) {
      showAuthNotice($("keys-auth"));
      $("keys-body").hidden = true;
    } else {
      $("key-form-error").textContent = t("errorPrefix", { message: error.message });
    }
  }
}

async function create() {
  const number = (id) => ($(id).value ? Number($(id).value) : undefined);
  const models = $("key-models").value.split(",").map((m) => m.trim()).filter(Boolean);
  const body = {
    name: $("key-name").value.trim(),
    priority: $("key-priority").value,
    rpm: number("key-rpm"),
    tpm: number("key-tpm"),
    quota_tokens: number("key-quota"),
    models: models.length ? models : undefined,
  };
  if ($("key-budget").value) {
    body.budget = $("key-budget").value; // a decimal string: money is never a float on the wire
    body.budget_period = $("key-budget-period").value;
  }
  if ($("key-group").value.trim()) body.group = $("key-group").value.trim();
  $("key-form-error").textContent = "";
  try {
    const key = await call("/v1/nobusy/keys", { method: "POST", body, admin: true });
    $("key-form").reset();
    showSecret(key.secret);
    await refresh();
  } catch (error) {
    $("key-form-error").textContent = t("errorPrefix", { message: error.message });
  }
}

function showSecret(secret) {
  $("new-key-secret").value = secret; // a DOM property, never markup
  $("new-key").hidden = false;
  $("new-key-secret").focus();
  $("new-key-secret").select();
}

function hideSecret() {
  $("new-key-secret").value = "";
  $("new-key").hidden = true;
}

async function act(path, body) {
  try {
    await call(path, { method: "POST", body, admin: true });
    await refresh();
  } catch (error) {
    $("key-form-error").textContent = t("errorPrefix", { message: error.message });
  }
}

function renderTable(keys, usage) {
  const perKey = new Map((usage?.groups ?? []).map((g) => [g.id, g]));
  const body = $("keys-table").tBodies[0];
  body.replaceChildren();
  if (!keys.length) {
    const cell = body.insertRow().insertCell();
    cell.colSpan = 10;
    cell.textContent = t("noKeys");
    return;
  }
  for (const key of keys) {
    const row = body.insertRow();
    row.dataset.key = key.id;
    const name = row.insertCell();
    name.append(key.name, " ");
    const prefix = document.createElement("code");
    prefix.textContent = `${key.prefix}…`;
    name.append(prefix);
    const status = row.insertCell();
    status.className = `key-status status-${key.status}`;
    status.textContent = t(`status${key.status[0].toUpperCase()}${key.status.slice(1)}`);
    row.insertCell().textContent = t(priorityKey(key.priority));
    row.insertCell().textContent = limits(key);
    const balance = row.insertCell();
    balance.className = "num";
    balance.textContent = key.quota_tokens == null ? t("unlimited") : `${key.balance} / ${key.quota_tokens}`;
    const budget = row.insertCell();
    budget.className = "num";
    budget.textContent = key.budget == null ? t("unlimited") : budgetText(key, usage?.currency);
    if (key.budget != null) {
      // The soft limit (80%) and the hard one, as the server warns and refuses: held counts.
      const used = (Number(key.budget_spent) + Number(key.budget_held ?? 0)) / Number(key.budget);
      if (used >= 1) budget.classList.add("budget-over");
      else if (used >= 0.8) budget.classList.add("budget-warn");
      if (Number(key.budget_held)) budget.title = t("budgetHeld", { held: amount(key.budget_held, usage?.currency) });
    }
    row.insertCell().textContent = key.group ?? "—"; // its key group (team), whose budget it shares
    const used = row.insertCell();
    used.className = "num";
    const group = perKey.get(key.id);
    used.textContent = group
      ? t("usageKey30", { requests: group.totals.requests, spend: money(group.totals.spend_micros, usage.currency) })
      : "—";
    const locale = language() === "zh" ? "zh-CN" : "en";
    row.insertCell().textContent = key.last_used_at ? new Date(key.last_used_at * 1000).toLocaleString(locale) : "—";
    row.insertCell().append(...actions(key));
  }
}

// A decimal string of the API (budgets are exact to the micro-unit) in the usage's currency.
function amount(text, currency) {
  return currency ? money(Math.round(Number(text) * 1e6), currency) : String(Number(text));
}

function budgetText(key, currency) {
  const every = key.budget_period ?? "daily"; // a budget with no period resets daily (money/budgets.py)
  const period = t(`period${every[0].toUpperCase()}${every.slice(1)}`);
  return t("budgetOf", { spent: amount(key.budget_spent, currency), budget: amount(key.budget, currency), period });
}

function limits(key) {
  const parts = [];
  if (key.rpm) parts.push(`${key.rpm} rpm`);
  if (key.tpm) parts.push(`${key.tpm} tpm`);
  if (key.max_concurrency) parts.push(`≤ ${key.max_concurrency}`);
  if (key.models) parts.push(key.models.join(", "));
  return parts.join(" · ") || t("unlimited");
}

function actions(key) {
  if (key.status === "revoked") return [];
  const path = `/v1/nobusy/keys/${encodeURIComponent(key.id)}`;
  const box = document.createElement("div");
  box.className = "row-actions";
  const amount = document.createElement("input");
  amount.type = "number";
  amount.min = "1";
  amount.inputMode = "numeric";
  amount.className = "topup-amount";
  amount.setAttribute("aria-label", t("topUpTokens", { name: key.name }));
  const topUp = document.createElement("button");
  topUp.type = "button";
  topUp.textContent = t("topUp");
  topUp.setAttribute("aria-label", `${t("topUp")}: ${key.name}`);
  topUp.addEventListener("click", () => {
    const tokens = Number(amount.value);
    if (Number.isInteger(tokens) && tokens > 0) act(`${path}/topup`, { tokens });
  });
  const revoke = document.createElement("button");
  revoke.type = "button";
  revoke.className = "danger";
  revoke.textContent = t("revoke");
  revoke.setAttribute("aria-label", `${t("revoke")}: ${key.name}`);
  revoke.addEventListener("click", () => {
    if (confirm(t("revokeConfirm", { name: key.name }))) act(`${path}/revoke`);
  });
  // Only a key with a quota has a balance to top up.
  if (key.quota_tokens != null) box.append(amount, topUp);
  box.append(revoke);
  return [box];
}
