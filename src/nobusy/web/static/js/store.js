// Conversations, kept in this browser's localStorage (nothing is stored on the server).

const KEY = "nobusy.conversations";

function readAll() {
  try {
    const data = JSON.parse(localStorage.getItem(KEY) || "[]");
    return Array.isArray(data) ? data : [];
  } catch {
    return []; // unreadable (edited by hand?): start again rather than break the page
  }
}

function writeAll(conversations) {
  try {
    localStorage.setItem(KEY, JSON.stringify(conversations));
  } catch (error) {
    // Storage full: the conversation still works on screen, it just is not kept.
    console.warn("nobusy: could not save conversations:", error.name);
  }
}

/** Every conversation, most recently used first. */
export function list() {
  return readAll().sort((a, b) => b.updated - a.updated);
}

export function get(id) {
  return readAll().find((c) => c.id === id) ?? null;
}

export function create(model, title) {
  const now = Date.now();
  const id = crypto.randomUUID ? crypto.randomUUID() : `${now}-${Math.random().toString(36).slice(2)}`;
  return { id, title, model, created: now, updated: now, messages: [] };
}

export function save(conversation) {
  conversation.updated = Date.now();
  const all = readAll().filter((c) => c.id !== conversation.id);
  all.push(conversation);
  writeAll(all);
}

export function remove(id) {
  writeAll(readAll().filter((c) => c.id !== id));
}

/** A conversation as a Markdown document. */
export function toMarkdown(conversation, labels) {
  const lines = [`# ${conversation.title}`, ""];
  for (const message of conversation.messages) {
    if (message.role === "user") {
      lines.push(`## ${labels.you}`, "", message.content, "");
      continue;
    }
    const meta = message.meta || {};
    const from = meta.upstreams?.length ? ` (${meta.upstreams.join(" → ")})` : "";
    lines.push(`## ${meta.model || labels.assistant}${from}`, "");
    if (message.reasoning) {
      lines.push(`<details><summary>${labels.reasoning}</summary>`, "", message.reasoning, "", "</details>", "");
    }
    lines.push(message.content, "");
  }
  return lines.join("\n");
}
