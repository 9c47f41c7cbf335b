// Cross-check in the Compare view: the question goes to POST /v1/nobusy/crosscheck (its SSE
// variant, docs/crosscheck.md) instead of one chat per model. Each answer shows as it arrives;
// when the analysis comes, each answer gets its verdict on top, its flagged spans marked (hover
// or tap says why) and the sentences other answers also say shaded, with the overall agreement.
//
// The flags' offsets index the answer's text as the service returned it, so a checked answer
// is shown as that plain text (pre-wrap), not re-rendered as markdown: markdown would drop or
// move characters (`**`, list markers, links) and the offsets would no longer land. Offsets
// count code points (Python's str), so the text is cut with Array.from, not UTF-16 indices.
// Every piece goes in as a text node: nothing from the server is ever parsed as HTML.

import { AnswerView } from "./answer.js";
import { streamCrosscheck } from "./api.js";
import { language, t } from "./i18n.js";

const SEVERITY = { low: 0, medium: 1, high: 2 };

function el(tag, className, text) {
  const node = document.createElement(tag);
  if (className) node.className = className;
  if (text !== undefined) node.textContent = text;
  return node;
}

/** Ask `models` through the cross-check, drawing a slot per model into `panels`. */
export async function runCrosscheck({ models, messages, panels, summary, signal }) {
  const slots = new Map();
  for (const model of models) {
    const panel = el("section", "compare-panel");
    panel.append(el("h2", "", model));
    const verdict = el("p", "verdict");
    verdict.hidden = true;
    panel.append(verdict);
    panels.append(panel);
    const view = new AnswerView(panel);
    view.root.setAttribute("aria-busy", "true");
    view.setStatus(t("crosscheckWaiting"));
    slots.set(model, { panel, verdict, view, done: false });
  }
  summary.replaceChildren();
  summary.hidden = true;
  try {
    await streamCrosscheck({ models, messages, language: language(), signal }, {
      source(source) {
        const slot = slots.get(source.model);
        if (slot) showSource(slot, source);
      },
      analysis(report) {
        for (const source of report.sources ?? []) {
          const slot = slots.get(source.model);
          if (!slot) continue;
          showSource(slot, source);
          if (source.status === "ok") showAnalysis(slot, source, report.mode === "cross");
        }
        showSummary(summary, report);
      },
    });
  } catch (error) {
    const stopped = error.name === "AbortError";
    for (const slot of slots.values()) {
      if (slot.done) continue;
      const meta = stopped ? { stopped: true } : { error: error.message };
      slot.view.show({ content: "", meta });
    }
  }
}

// An answer (or a failure) in its slot, once; its text is plain until the analysis marks it.
function showSource(slot, source) {
  if (slot.done) return;
  slot.done = true;
  if (source.status !== "ok") {
    const error = source.error?.error ?? source.error ?? {};
    slot.panel.classList.add("failed");
    slot.view.show({ content: "", meta: { error: error.message || error.code || "failed" } });
    setVerdict(slot, "failed");
    return;
  }
  const meta = { upstreams: source.upstream ? [source.upstream] : [], usage: source.usage };
  slot.view.show({ content: source.answer ?? "", meta });
  renderChecked(slot.view, source.answer ?? "", {});
  slot.view.setStatus(t("crosscheckAnalysing"));
}

function showAnalysis(slot, source, shade) {
  slot.view.setStatus("");
  renderChecked(slot.view, source.answer ?? "", {
    flags: source.flags ?? [],
    sentences: shade ? (source.sentences ?? []) : [],
  });
  const details = [];
  if (typeof source.score === "number") {
    details.push(t("crosscheckScore", { score: source.score.toFixed(2) }));
  }
  if (source.decided_by) details.push(t("crosscheckBy", { who: source.decided_by }));
  setVerdict(slot, source.verdict, details);
}

function setVerdict(slot, verdict, details = []) {
  const pill = el("span", `pill verdict-${verdict}`, t(`verdict_${verdict}`));
  pill.dataset.verdict = verdict;
  slot.verdict.replaceChildren(pill, ...details.map((text) => el("span", "", text)));
  slot.verdict.hidden = false;
}

function showSummary(summary, report) {
  let text;
  if (report.mode === "cross") {
    text = t("crosscheckAgreement", { percent: Math.round((report.agreement ?? 0) * 100) });
  } else {
    text = t(report.mode === "single" ? "crosscheckSingle" : "crosscheckNone");
  }
  const line = el("p", "crosscheck-agreement", text);
  summary.replaceChildren(line);
  if (report.mode === "cross") summary.append(el("p", "crosscheck-legend", t("crosscheckLegend")));
  summary.hidden = false;
}

/** What a flag means, in the reader's language. */
export function flagText(flag) {
  return t("flagTitle", {
    type: t(`flag_${flag.type}`),
    severity: t(`severity_${flag.severity}`),
    explanation: flag.explanation ?? "",
  });
}

// Cut the text at every flag and shared-sentence edge; each piece is a text node, wrapped in a
// <mark> when flags cover it and in a shaded <span> when another answer says its sentence.
function renderChecked(view, text, { flags = [], sentences = [] }) {
  const chars = Array.from(text);
  const size = chars.length;
  const fits = (r) => Number.isInteger(r.start) && Number.isInteger(r.end) && r.start >= 0 && r.start < r.end && r.end <= size;
  const marks = flags.filter(fits);
  const shared = sentences.filter((s) => fits(s) && !s.only_this_source);
  const cuts = new Set([0, size]);
  for (const range of [...marks, ...shared]) cuts.add(range.start).add(range.end);
  const points = [...cuts].sort((a, b) => a - b);
  const body = view.body;
  body.className = "answer checked-text";
  body.replaceChildren();
  for (let i = 0; i + 1 < points.length; i++) {
    const [start, end] = [points[i], points[i + 1]];
    let node = document.createTextNode(chars.slice(start, end).join(""));
    const covering = marks.filter((f) => f.start <= start && end <= f.end);
    if (covering.length) node = flagMark(node, covering);
    if (shared.some((s) => s.start <= start && end <= s.end)) {
      const span = el("span", "supported");
      span.append(node);
      node = span;
    }
    body.append(node);
  }
  if (!view.flagDetail) attachDetail(view);
  view.flagDetail.textContent = "";
}

function flagMark(textNode, covering) {
  const worst = covering.reduce((a, b) => ((SEVERITY[b.severity] ?? 0) > (SEVERITY[a.severity] ?? 0) ? b : a));
  const mark = el("mark", `flag flag-${worst.type} sev-${worst.severity}`);
  mark.append(textNode);
  mark.title = covering.map(flagText).join("\n");
  mark.dataset.types = covering.map((f) => f.type).join(" ");
  mark.tabIndex = 0;
  return mark;
}

// Hover shows the mark's title; a tap, click or keyboard focus writes it under the answer,
// where phones (no hover) and screen readers (role=status) get it too.
function attachDetail(view) {
  const detail = el("p", "flag-detail");
  detail.setAttribute("role", "status");
  view.body.after(detail);
  view.flagDetail = detail;
  const show = (event) => {
    const mark = event.target.closest?.("mark.flag");
    if (!mark) return;
    for (const other of view.body.querySelectorAll("mark.active")) other.classList.remove("active");
    mark.classList.add("active");
    detail.textContent = mark.title;
  };
  view.body.addEventListener("click", show);
  view.body.addEventListener("focusin", show);
}
