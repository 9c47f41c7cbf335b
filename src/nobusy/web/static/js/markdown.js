// Markdown from a model, made safe to show: marked parses, DOMPurify sanitises (a model's
// text is untrusted input), highlight.js colours code, and each code block gets a copy button.

import { marked } from "../vendor/marked/marked.esm.js";
import DOMPurify from "../vendor/dompurify/purify.es.js";
import hljs from "../vendor/highlight.js/highlight.min.js";
import { t } from "./i18n.js";

marked.setOptions({ gfm: true, breaks: false });
hljs.configure({ ignoreUnescapedHTML: true });

// Links in answers open in a new tab and tell the target nothing about this page.
DOMPurify.addHook("afterSanitizeAttributes", (node) => {
  if (node.tagName === "A" && node.hasAttribute("href")) {
    node.setAttribute("target", "_blank");
    node.setAttribute("rel", "noopener noreferrer");
  }
});

// Auto-detection is costly and often wrong on long blocks; past this, plain text.
const AUTO_DETECT_LIMIT = 4000;

/** Replace `element`'s content with `markdown` rendered, sanitised and highlighted. */
export function renderMarkdown(element, markdown) {
  const html = marked.parse(markdown, { async: false });
  const fragment = DOMPurify.sanitize(html, { RETURN_DOM_FRAGMENT: true });
  for (const code of fragment.querySelectorAll("pre > code")) highlight(code);
  element.replaceChildren(fragment);
}

function highlight(code) {
  const language = /language-([\w+#-]+)/.exec(code.className)?.[1];
  if (language && !hljs.getLanguage(language)) code.classList.remove(`language-${language}`);
  if (language || code.textContent.length <= AUTO_DETECT_LIMIT) hljs.highlightElement(code);
  const pre = code.parentElement;
  const button = document.createElement("button");
  button.type = "button";
  button.className = "copy-code";
  button.textContent = t("copy");
  button.setAttribute("aria-label", t("copyCode"));
  pre.prepend(button);
}

/** Copy text to the clipboard; falls back to a hidden textarea where the API is missing
 * (the Clipboard API exists only in secure contexts: not on plain http to another host). */
export async function copyText(text) {
  if (navigator.clipboard?.writeText) {
    try {
      await navigator.clipboard.writeText(text);
      return;
    } catch {
      // Permission refused: fall through to the old way.
    }
  }
  const area = document.createElement("textarea");
  area.value = text;
  area.setAttribute("readonly", "");
  area.className = "offscreen";
  document.body.append(area);
  area.select();
  document.execCommand("copy");
  area.remove();
}

/** Wire copy buttons inside `root` (delegated, so re-rendered blocks need nothing). */
export function handleCopyButtons(root) {
  root.addEventListener("click", async (event) => {
    const button = event.target.closest("button.copy-code");
    if (!button) return;
    await copyText(button.parentElement.querySelector("code")?.textContent ?? "");
    flash(button);
  });
}

/** Show "Copied" on a button for a moment. */
export function flash(button) {
  const label = button.textContent;
  button.textContent = t("copied");
  setTimeout(() => (button.textContent = label), 1200);
}
