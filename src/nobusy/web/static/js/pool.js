// The status board's pool: per local server, bars of running and waiting requests against its
// slots and of its KV-cache use; per tier, utilisation, spilled share and what the spill cost,
// and the split of answers across tiers over time (differences of the tiers' running totals
// between two polls). Drawn in SVG with attributes only (the CSP allows no inline styles).

import { t } from "./i18n.js";

const SVG = "http://www.w3.org/2000/svg";
const HISTORY = 60; // polls kept for the tier split: two minutes
const BAR_W = 200;
const BAR_H = 14;
const SPLIT_W = 360;
const SPLIT_H = 60;

const split = []; // per poll: {tier: answers in that interval}
let previous = null; // the last poll's {tier: answered}

function el(tag, className, text) {
  const node = document.createElement(tag);
  if (className) node.className = className;
  if (text !== undefined) node.textContent = text;
  return node;
}

function svg(tag, attrs) {
  const node = document.createElementNS(SVG, tag);
  for (const [name, value] of Object.entries(attrs)) node.setAttribute(name, String(value));
  return node;
}

const pct = (share) => (share == null ? "—" : `${Math.round(share * 100)}%`);

/** A horizontal bar: `parts` as [value, class] stacked from the left, over `max`. */
function bar(parts, max, label) {
  const box = svg("svg", { viewBox: `0 0 ${BAR_W} ${BAR_H}`, class: "pool-bar", role: "img", "aria-label": label, preserveAspectRatio: "none" });
  box.append(svg("rect", { x: 0, y: 0, width: BAR_W, height: BAR_H, class: "pool-bar-bg" }));
  let x = 0;
  for (const [value, className] of parts) {
    const width = Math.min(BAR_W - x, (Math.max(0, value) / Math.max(max, 1e-9)) * BAR_W);
    if (width <= 0) continue;
    box.append(svg("rect", { x: x.toFixed(1), y: 0, width: width.toFixed(1), height: BAR_H, class: className }));
    x += width;
  }
  return box;
}

function serverRow(s) {
  const row = el("div", "pool-server");
  row.dataset.server = s.name;
  const name = el("span", "pool-name", s.name);
  if (s.drained) name.append(" ", el("span", "pill warn", t("poolDrained")));
  const running = s.running ?? s.in_flight;
  const waiting = s.waiting ?? 0;
  const slots = s.slots || 1;
  // Running fills the slots; waiting is drawn past them, on a scale of twice the slots.
  const load = bar([[running, "pool-running"], [waiting, "pool-waiting"]], 2 * slots, t("poolLoadLabel", { name: s.name }));
  const loadText = el("span", "pool-figure", t("poolLoad", { running: Math.round(running), waiting: Math.round(waiting), slots }));
  const kv = bar([[s.kv_usage ?? 0, "pool-kv"]], 1, t("poolKvLabel", { name: s.name }));
  const kvText = el("span", "pool-figure", `${t("poolKv")} ${pct(s.kv_usage)}`);
  const signals = el("span", "dim pool-signals", s.problem ? s.problem : s.signals === "metrics" ? "" : t("poolLearned"));
  row.append(name, load, loadText, kv, kvText, signals);
  return row;
}

function record(tiers) {
  const now = Object.fromEntries(tiers.map((tier) => [tier.tier, tier.answered]));
  if (previous) {
    const interval = {};
    for (const [tier, answered] of Object.entries(now)) {
      interval[tier] = Math.max(0, answered - (previous[tier] ?? 0)); // a restart starts again
    }
    split.push(interval);
    if (split.length > HISTORY) split.shift();
  }
  previous = now;
}

/** Stacked columns, one per poll: the answers of each tier in that interval. */
function splitChart(tiers) {
  const chart = svg("svg", { viewBox: `0 0 ${SPLIT_W} ${SPLIT_H}`, class: "pool-split", role: "img", "aria-label": t("poolSplit"), preserveAspectRatio: "none" });
  const top = Math.max(1, ...split.map((i) => Object.values(i).reduce((a, b) => a + b, 0)));
  const step = SPLIT_W / HISTORY;
  split.forEach((interval, i) => {
    let y = SPLIT_H;
    for (const tier of tiers) {
      const height = ((interval[tier.tier] ?? 0) / top) * SPLIT_H;
      if (height <= 0) continue;
      y -= height;
      const x = (HISTORY - split.length + i) * step;
      chart.append(svg("rect", { x: x.toFixed(1), y: y.toFixed(1), width: Math.max(1, step - 1).toFixed(1), height: height.toFixed(1), class: `pool-tier-${Math.min(tier.tier, 3)}` }));
    }
  });
  return chart;
}

function tierRow(tier) {
  const row = el("div", "pool-tier");
  row.dataset.tier = tier.tier;
  const swatch = el("span", `pool-swatch pool-tier-${Math.min(tier.tier, 3)}`);
  const name = el("span", "pool-name");
  name.append(swatch, t("poolTier", { tier: tier.tier }), " ", el("span", "dim", tier.upstreams.join(", ")));
  const util = bar([[tier.utilisation, `pool-tier-${Math.min(tier.tier, 3)}`]], 1, t("poolUtilLabel", { tier: tier.tier }));
  const facts = el("span", "pool-figure", t("poolTierFacts", {
    util: pct(tier.utilisation),
    share: pct(tier.share),
    spilled: pct(tier.spilled_share),
    cost: `${tier.spill_cost.toFixed(4)} ${tier.currency}`,
  }));
  row.append(name, util, facts);
  return row;
}

/** Draw the pool from a `/v1/nobusy/pool` answer; hidden without local servers or an alias
 * that spills (`spill_after`): plain failover tiers are the upstream cards' business. */
export function renderPool(pool) {
  const servers = pool.data ?? [];
  const tiers = pool.tiers ?? [];
  record(tiers);
  const section = document.getElementById("status-pool");
  section.hidden = !servers.length && !pool.spill;
  if (section.hidden) return;
  document.getElementById("status-servers").replaceChildren(...servers.map(serverRow));
  const box = document.getElementById("status-tiers");
  box.replaceChildren(...tiers.map(tierRow));
  if (tiers.length > 1) {
    const legend = el("p", "dim pool-legend", t("poolSplitLegend"));
    box.append(splitChart(tiers), legend);
  }
}
