// Citations in an answer from a knowledge base: every [n] the answer wrote that points at a
// retrieved passage becomes a button that shows the passage (file name and snippet) below the
// answer; the sources the answer did not cite are listed too, and an uncited answer is marked.

import { t } from "./i18n.js";

const CITE = /\[(\d{1,3})\]/g;

function el(tag, className, text) {
  const node = document.createElement(tag);
  if (className) node.className = className;
  if (text !== undefined) node.textContent = text;
  return node;
}

/**
 * Turn the [n] in `body` (rendered markdown) into buttons and fill `panel` with the sources of
 * `nobusy` (the response's `nobusy` object: citations, cited, uncited). Code blocks keep their
 * brackets as written.
 */
export function renderCitations(body, panel, nobusy) {
  panel.replaceChildren();
  panel.hidden = true;
  const citations = nobusy?.citations ?? [];
  if (!citations.length) return;
  const byIndex = new Map(citations.map((c) => [c.index, c]));
  const passage = el("blockquote", "cite-passage");
  passage.hidden = true;
  passage.setAttribute("role", "region");
  passage.setAttribute("aria-live", "polite");
  let open = null;
  const toggle = (citation, button) => {
    if (open === citation.index) {
      passage.hidden = true;
      button.setAttribute("aria-expanded", "false");
      open = null;
      return;
    }
    for (const other of panel.parentElement.querySelectorAll("button.cite[aria-expanded=true]")) {
      other.setAttribute("aria-expanded", "false");
    }
    open = citation.index;
    passage.replaceChildren(
      el("p", "cite-file", `[${citation.index}] ${citation.filename || citation.file_id}`),
      el("p", "cite-snippet", citation.snippet),
    );
    passage.setAttribute("aria-label", t("citeSource", { n: citation.index }));
    passage.hidden = false;
    button.setAttribute("aria-expanded", "true");
  };
  const makeButton = (citation) => {
    const button = el("button", "cite", `[${citation.index}]`);
    button.type = "button";
    button.setAttribute("aria-expanded", "false");
    button.setAttribute("aria-label", t("citeShow", { n: citation.index, file: citation.filename }));
    button.addEventListener("click", () => toggle(citation, button));
    return button;
  };

  const walker = document.createTreeWalker(body, NodeFilter.SHOW_TEXT);
  const texts = [];
  while (walker.nextNode()) {
    const node = walker.currentNode;
    if (!node.parentElement.closest("pre, code") && CITE.test(node.data)) texts.push(node);
    CITE.lastIndex = 0;
  }
  for (const node of texts) {
    const fragment = document.createDocumentFragment();
    let last = 0;
    for (const match of node.data.matchAll(CITE)) {
      const citation = byIndex.get(Number(match[1]));
      if (!citation) continue; // an index that points at no passage stays plain text
      fragment.append(node.data.slice(last, match.index), makeButton(citation));
      last = match.index + match[0].length;
    }
    fragment.append(node.data.slice(last));
    node.replaceWith(fragment);
  }

  const heading = el("p", "cite-heading", nobusy.uncited ? t("citeNone") : t("citeSources"));
  if (nobusy.uncited) heading.classList.add("uncited");
  const list = el("ol", "cite-list");
  for (const citation of citations) {
    const item = el("li");
    item.value = citation.index;
    const source = makeButton(citation);
    source.textContent = citation.filename || citation.file_id;
    if (!citation.cited) item.classList.add("not-cited");
    item.append(source);
    list.append(item);
  }
  panel.append(heading, list, passage);
  panel.hidden = false;
}
