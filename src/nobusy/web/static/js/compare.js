// Compare: one question to 2-4 models at once, their answers streaming side by side; with the
// Cross-check switch on, asked through the cross-check instead (crosscheck.js).

import { AnswerView, streamInto } from "./answer.js";
import { runCrosscheck } from "./crosscheck.js";
import { t } from "./i18n.js";
import { handleCopyButtons } from "./markdown.js";
import { models } from "./models.js";

const $ = (id) => document.getElementById(id);
const MIN = 2;
const MAX = 4;

let running = null;

export function initCompare() {
  $("compare-form").addEventListener("submit", (event) => {
    event.preventDefault();
    run();
  });
  $("compare-prompt").addEventListener("keydown", (event) => {
    if (event.key === "Enter" && !event.shiftKey && !event.isComposing) {
      event.preventDefault();
      run();
    }
  });
  $("compare-stop").addEventListener("click", () => running?.abort());
  document.addEventListener("keydown", (event) => {
    if (event.key === "Escape" && running) running.abort();
  });
  $("compare-models").addEventListener("change", limitChoices);
  handleCopyButtons($("compare-panels"));
  document.addEventListener("nobusy:models", fillModels);
}

function fillModels() {
  const box = $("compare-models");
  const chosen = new Set(checked());
  box.replaceChildren();
  for (const [i, id] of models.ids.entries()) {
    const label = document.createElement("label");
    const input = document.createElement("input");
    input.type = "checkbox";
    input.value = id;
    input.checked = chosen.size ? chosen.has(id) : i < MIN;
    label.append(input, " ", id);
    box.append(label);
  }
  limitChoices();
}

function checked() {
  return [...$("compare-models").querySelectorAll("input:checked")].map((i) => i.value);
}

// At most MAX: the other boxes are disabled once MAX are ticked.
function limitChoices() {
  const full = checked().length >= MAX;
  for (const input of $("compare-models").querySelectorAll("input")) {
    input.disabled = full && !input.checked;
  }
}

async function run() {
  const question = $("compare-prompt").value.trim();
  const chosen = checked();
  if (running) return;
  if (!question || chosen.length < MIN || chosen.length > MAX) {
    $("compare-hint").textContent = t("comparePick");
    return;
  }
  $("compare-hint").textContent = "";
  running = new AbortController();
  $("compare-send").hidden = true;
  $("compare-stop").hidden = false;
  const panels = $("compare-panels");
  panels.replaceChildren();
  panels.dataset.count = String(chosen.length);
  const messages = [{ role: "user", content: question }];
  const summary = $("compare-summary");
  summary.hidden = true;
  if ($("compare-crosscheck").checked) {
    await runCrosscheck({ models: chosen, messages, panels, summary, signal: running.signal });
  } else {
    await Promise.all(
      chosen.map((model) => {
        const panel = document.createElement("section");
        panel.className = "compare-panel";
        const heading = document.createElement("h2");
        heading.textContent = model;
        panel.append(heading);
        panels.append(panel);
        return streamInto(new AnswerView(panel), { model, messages, signal: running.signal });
      }),
    );
  }
  running = null;
  $("compare-send").hidden = false;
  $("compare-stop").hidden = true;
}
