// One assistant answer on screen: its reasoning (folded once the answer starts), the answer
// as markdown, what nobusy did on the way (queue, failover), and a badge saying where it came
// from, how fast the first token was, and how many tokens it took. Used by chat and compare.

import { streamChat } from "./api.js";
import { renderCitations } from "./citations.js";
import { t } from "./i18n.js";
import { copyText, flash, renderMarkdown } from "./markdown.js";

function el(tag, className, text) {
  const node = document.createElement(tag);
  if (className) node.className = className;
  if (text !== undefined) node.textContent = text;
  return node;
}

export class AnswerView {
  constructor(parent) {
    this.root = el("article", "msg msg-assistant");
    this.root.setAttribute("aria-label", t("assistant"));
    this.status = el("p", "msg-status");
    this.status.setAttribute("role", "status");
    this.reasoning = el("details", "reasoning");
    this.summary = el("summary", "", t("reasoning"));
    this.reasoningBody = el("div", "md reasoning-body");
    this.reasoning.append(this.summary, this.reasoningBody);
    this.reasoning.hidden = true;
    this.body = el("div", "md answer");
    this.sources = el("div", "cite-panel"); // a knowledge base's passages, when cited
    this.sources.hidden = true;
    this.notes = el("ul", "notes");
    this.badge = el("p", "badge");
    this.badge.hidden = true;
    this.copy = el("button", "ghost copy-answer", t("copy"));
    this.copy.type = "button";
    this.copy.setAttribute("aria-label", t("copyAnswer"));
    this.copy.hidden = true;
    this.copy.addEventListener("click", async () => {
      await copyText(this.text.content); // the markdown as written, which pastes anywhere
      flash(this.copy);
    });
    const footer = el("div", "msg-footer");
    footer.append(this.badge, this.copy);
    this.footer = footer;
    this.root.append(this.status, this.reasoning, this.body, this.sources, this.notes, footer);
    parent.append(this.root);
    this.text = { content: "", reasoning: "" };
    this.frame = 0;
    this.streamed = false;
  }

  setStatus(text) {
    this.status.textContent = text;
    this.status.hidden = !text;
  }

  /** Append streamed text; the DOM is redrawn at most once per frame. */
  append({ content, reasoning }) {
    if (reasoning && !this.text.reasoning) {
      this.reasoning.hidden = false;
      this.reasoning.open = true; // watch it think while there is nothing else to read
      this.summary.textContent = t("reasoningLive");
    }
    if (content && !this.text.content && this.text.reasoning) {
      this.reasoning.open = false; // the answer has started: fold the thinking away
      this.summary.textContent = t("reasoning");
    }
    this.streamed = true;
    this.text.content += content;
    this.text.reasoning += reasoning;
    this.frame ||= requestAnimationFrame(() => this.draw());
  }

  // The whole text is re-parsed each frame: half-written markdown (an open code fence, a table
  // missing its rows) only renders right as a whole, and marked is fast at answer sizes.
  draw() {
    this.frame = 0;
    if (this.text.reasoning) renderMarkdown(this.reasoningBody, this.text.reasoning);
    renderMarkdown(this.body, this.text.content);
  }

  addNote(text) {
    this.notes.append(el("li", "", text));
  }

  /** Show a finished answer (a stored one, or the end of a stream). */
  show(message) {
    this.text = { content: message.content || "", reasoning: message.reasoning || "" };
    cancelAnimationFrame(this.frame);
    this.draw();
    this.reasoning.hidden = !this.text.reasoning;
    // A streamed answer keeps whatever the reader did with the fold; a stored one opens
    // folded unless there is nothing but reasoning.
    if (!this.streamed) this.reasoning.open = Boolean(this.text.reasoning) && !this.text.content;
    this.summary.textContent = t("reasoning");
    this.setStatus("");
    const meta = message.meta || {};
    renderCitations(this.body, this.sources, meta.citations);
    this.notes.replaceChildren();
    for (const note of meta.notes || []) this.addNote(noteText(note));
    if (meta.stopped) this.addNote(t("stopped"));
    if (meta.error) this.addNote(t("errorPrefix", { message: meta.error }));
    this.showBadge(meta);
    this.copy.hidden = !this.text.content;
    this.root.setAttribute("aria-busy", "false");
  }

  showBadge(meta) {
    const parts = [];
    if (meta.upstreams?.length) parts.push(t("from", { upstream: meta.upstreams.join(" → ") }));
    if (meta.ttft != null) parts.push(t("ttft", { seconds: meta.ttft.toFixed(2) }));
    if (meta.usage) {
      const { prompt_tokens: prompt = 0, completion_tokens: completion = 0 } = meta.usage;
      parts.push(t("tokens", { prompt, completion }));
    }
    this.badge.replaceChildren();
    for (const [i, part] of parts.entries()) {
      if (i) this.badge.append(" · ");
      this.badge.append(el("span", "", part));
    }
    if (meta.notes?.some((n) => n.kind === "failover" || n.kind === "reasoningRestarted")) {
      this.badge.append(" ", el("span", "pill warn", t("failedOver")));
    }
    this.badge.hidden = parts.length === 0;
  }
}

/** A nobusy note in the reader's language. */
export function noteText(note) {
  switch (note.kind) {
    case "failover": {
      const variant = note.variant;
      const key = variant ? `failover${variant[0].toUpperCase()}${variant.slice(1)}` : "failover";
      return t(key, note);
    }
    case "reasoningRestarted":
      return t("reasoningRestarted", note);
    case "answering":
      return t("answeringFrom", note);
    default:
      return note.text ?? "";
  }
}

/**
 * Stream an answer into `view`. Resolves to the assistant message to keep:
 * `{role, content, reasoning, meta: {model, upstreams, ttft, usage, notes, stopped, error}}`;
 * an abort (Stop) keeps what arrived so far. Errors are shown in the view and returned in
 * `meta.error`; `meta.status` holds the HTTP status of a refused request.
 */
export async function streamInto(view, { model, messages, signal, params, stores }) {
  const started = performance.now();
  const meta = { model, upstreams: [], ttft: null, usage: null, notes: [] };
  view.root.setAttribute("aria-busy", "true");
  view.setStatus(t("connecting"));
  try {
    await streamChat({ model, messages, signal, params, stores }, {
      open({ upstream }) {
        if (upstream && upstream !== "queued") meta.upstreams.push(upstream);
        view.setStatus("");
      },
      note(note) {
        if (note.kind === "queued") {
          view.setStatus(t("queued", note));
        } else if (note.kind === "answering") {
          meta.upstreams.push(note.upstream);
          view.setStatus("");
        } else {
          if (note.kind === "failover") meta.upstreams.push(note.route);
          meta.notes.push(note);
          view.addNote(noteText(note));
        }
      },
      delta(delta) {
        if (meta.ttft === null) meta.ttft = (performance.now() - started) / 1000;
        view.append(delta);
      },
      usage(usage) {
        meta.usage = usage;
      },
      citations(nobusy) {
        meta.citations = nobusy;
      },
    });
  } catch (error) {
    if (error.name === "AbortError") {
      meta.stopped = true;
    } else {
      meta.error = error.message;
      meta.status = error.status ?? null;
    }
  }
  const message = { role: "assistant", content: view.text.content, reasoning: view.text.reasoning, meta };
  view.show(message);
  return message;
}
