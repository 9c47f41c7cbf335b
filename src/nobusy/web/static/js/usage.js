// The usage page: daily requests, tokens, spend, errors and failovers over a date range, by
// key, model or upstream (GET /v1/nobusy/usage/series), a chart, a table, a CSV export.

import { call } from "./api.js";
import { legend, lineChart } from "./chart.js";
import { language, t } from "./i18n.js";
import { sparkline } from "./sparkline.js";
import { showAuthNotice } from "./status.js";

const $ = (id) => document.getElementById(id);
const METRICS = ["requests", "tokens", "spend_micros", "errors", "failovers"];
const CHART_SERIES = 6; // the total and the five largest groups
let active = false;
let last = null;

export function initUsage() {
  const today = new Date();
  const from = new Date(today.getTime() - 29 * 86_400_000);
  $("usage-from").value = from.toISOString().slice(0, 10);
  $("usage-to").value = today.toISOString().slice(0, 10);
  $("usage-form").addEventListener("submit", (event) => {
    event.preventDefault();
    refresh();
  });
  $("usage-by").addEventListener("change", refresh);
  $("usage-metric").addEventListener("change", () => last && render(last));
  document.addEventListener("nobusy:keys", () => active && refresh());
}

export function showUsage(visible) {
  active = visible;
  if (visible) refresh();
}

function query() {
  const params = new URLSearchParams({ from: $("usage-from").value, to: $("usage-to").value });
  return params;
}

async function refresh() {
  const started = performance.now();
  const params = query();
  params.set("by", $("usage-by").value);
  $("usage-export").href = `/v1/nobusy/usage/export.csv?${query()}`;
  $("usage-error").textContent = "";
  try {
    const data = await call(`/v1/nobusy/usage/series?${params}`, { admin: true });
    $("usage-auth").hidden = true;
    $("usage-body").hidden = false;
    last = data;
    render(data);
    // For the bench (python -m bench --only console): fetch to drawn, in milliseconds.
    $("usage-body").dataset.renderedMs = String(Math.round(performance.now() - started));
  } catch (error) {
    if (error.status === 401) {
      showAuthNotice($("usage-auth"));
      $("usage-body").hidden = true;
    } else {
      $("usage-error").textContent = t("errorPrefix", { message: error.message });
    }
  }
}

export function money(micros, currency) {
  const locale = language() === "zh" ? "zh-CN" : "en";
  return new Intl.NumberFormat(locale, { style: "currency", currency, maximumFractionDigits: 4 })
    .format(micros / 1e6);
}

function formatter(metric, currency) {
  const locale = language() === "zh" ? "zh-CN" : "en";
  if (metric === "spend_micros") return (v) => money(v, currency);
  const number = new Intl.NumberFormat(locale, { notation: "compact", maximumFractionDigits: 1 });
  return (v) => number.format(v);
}

function render(data) {
  const metric = $("usage-metric").value;
  const format = formatter(metric, data.currency);
  const totals = Object.fromEntries(METRICS.map((m) => [m, data.days.map(() => 0)]));
  let extra = 0;
  for (const group of data.groups) {
    for (const m of METRICS) group[m].forEach((v, i) => (totals[m][i] += v));
    extra += group.failover_extra_micros;
  }
  renderTiles(totals, extra, data.currency);
  const ranked = [...data.groups].sort((a, b) => b.totals[metric] - a.totals[metric]);
  const series = [
    { label: t("usageTotal"), values: totals[metric] },
    ...ranked.slice(0, CHART_SERIES - 1).map((g) => ({ label: g.label, values: g[metric] })),
  ];
  const label = t("usageChartLabel", { metric: t(`metric_${metric}`) });
  $("usage-chart").replaceChildren(lineChart({ days: data.days, series, format, label }), legend(series));
  renderTable(ranked, metric, data.currency, format);
}

function renderTiles(totals, extra, currency) {
  const sum = (m) => totals[m].reduce((a, b) => a + b, 0);
  const tiles = [
    [t("metric_requests"), sum("requests").toLocaleString()],
    [t("metric_tokens"), sum("tokens").toLocaleString()],
    [t("metric_spend_micros"), money(sum("spend_micros"), currency)],
    [t("metric_errors"), sum("errors").toLocaleString()],
    [t("metric_failovers"), sum("failovers").toLocaleString()],
    [t("failoverExtra"), money(extra, currency)],
  ];
  $("usage-tiles").replaceChildren(
    ...tiles.map(([name, value]) => {
      const tile = document.createElement("div");
      tile.className = "tile";
      const v = document.createElement("span");
      v.className = "tile-value";
      v.textContent = value;
      const n = document.createElement("span");
      n.className = "tile-label";
      n.textContent = name;
      tile.append(n, v);
      return tile;
    }),
  );
}

function renderTable(groups, metric, currency, format) {
  const body = $("usage-table").tBodies[0];
  const rows = groups.map((g) => {
    const row = document.createElement("tr");
    const cells = [
      g.label,
      g.totals.requests.toLocaleString(),
      g.totals.tokens.toLocaleString(),
      money(g.totals.spend_micros, currency),
      g.totals.errors.toLocaleString(),
      g.totals.failovers.toLocaleString(),
      money(g.failover_extra_micros, currency),
      g.last_used ?? "—",
    ];
    cells.forEach((text, i) => {
      const cell = document.createElement(i === 0 ? "th" : "td");
      if (i === 0) cell.scope = "row";
      if (i > 0 && i < 7) cell.className = "num";
      cell.textContent = text;
      row.append(cell);
    });
    const trend = document.createElement("td");
    trend.append(sparkline(g[metric], `${g.label}: ${format(g.totals[metric])}`));
    row.append(trend);
    return row;
  });
  if (!rows.length) {
    const row = document.createElement("tr");
    const cell = document.createElement("td");
    cell.colSpan = 9;
    cell.textContent = t("noUsageRange");
    row.append(cell);
    rows.push(row);
  }
  body.replaceChildren(...rows);
}
