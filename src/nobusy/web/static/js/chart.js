// A line chart over days in SVG: one polyline per series, the axis' top value and the first
// and last day. Drawn with attributes and classes only (the CSP allows no inline styles).

const SVG = "http://www.w3.org/2000/svg";
const W = 720;
const H = 220;
const PAD = { left: 56, right: 8, top: 10, bottom: 24 };

function el(name, attrs, text) {
  const node = document.createElementNS(SVG, name);
  for (const [k, v] of Object.entries(attrs)) node.setAttribute(k, v);
  if (text !== undefined) node.textContent = text;
  return node;
}

/**
 * `series`: [{label, values}] (values per day, oldest first; the first is drawn boldest);
 * `days`: the x labels; `format`: a value as text. Returns an <svg role=img>.
 */
export function lineChart({ days, series, format, label }) {
  const svg = el("svg", { viewBox: `0 0 ${W} ${H}`, class: "chart", role: "img", "aria-label": label });
  let top = 0;
  for (const s of series) for (const v of s.values) if (v > top) top = v;
  top = top || 1;
  const plotW = W - PAD.left - PAD.right;
  const plotH = H - PAD.top - PAD.bottom;
  const x = (i) => PAD.left + (days.length > 1 ? (i * plotW) / (days.length - 1) : plotW / 2);
  const y = (v) => PAD.top + plotH - (v / top) * plotH;
  for (const frac of [0, 0.5, 1]) {
    const gy = (PAD.top + plotH - frac * plotH).toFixed(1);
    svg.append(el("line", { x1: PAD.left, x2: W - PAD.right, y1: gy, y2: gy, class: "chart-grid" }));
    svg.append(el("text", { x: PAD.left - 6, y: gy, class: "chart-axis chart-y" }, format(top * frac)));
  }
  if (days.length) {
    svg.append(el("text", { x: PAD.left, y: H - 6, class: "chart-axis" }, days[0]));
    svg.append(el("text", { x: W - PAD.right, y: H - 6, class: "chart-axis chart-end" }, days.at(-1)));
  }
  series.forEach((s, n) => {
    const points = s.values.map((v, i) => `${x(i).toFixed(1)},${y(v).toFixed(1)}`).join(" ");
    const line = el("polyline", { points, class: `chart-line c${n % 8}` });
    line.append(el("title", {}, s.label));
    svg.append(line);
  });
  return svg;
}

/** The chart's legend: a list of swatches with the series' labels. */
export function legend(series) {
  const list = document.createElement("ul");
  list.className = "chart-legend";
  series.forEach((s, n) => {
    const item = document.createElement("li");
    const swatch = document.createElement("span");
    swatch.className = `swatch c${n % 8}`;
    item.append(swatch, s.label);
    list.append(item);
  });
  return list;
}
