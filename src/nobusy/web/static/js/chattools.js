// What the chat view offers around a conversation: its system prompt and sampling parameters,
// files attached to the next message (read as text: txt and md here, pdf, docx and html by the
// server's parsers; or put in the conversation's own vector store, which the server searches
// for every answer in it), search over conversations, and the keyboard shortcuts with their help.

import { ApiError, authHeaders, call } from "./api.js";
import { t } from "./i18n.js";

const $ = (id) => document.getElementById(id);
const PLAIN = /\.(txt|md|markdown|csv|json|log)$/i;
// A file's text past this is cut: a message is not the place for a whole manual (use a
// knowledge base), and most models' windows would refuse it anyway.
const MAX_ATTACHED_CHARS = 60_000;

// ---- System prompt and parameters ----

const PARAMS = [
  ["opt-temperature", "temperature", Number],
  ["opt-top-p", "top_p", Number],
  ["opt-max-tokens", "max_tokens", (v) => Math.round(Number(v))],
];

/** Show a conversation's options (`{system, params}`) in the panel. */
export function showOptions(options) {
  $("opt-system").value = options?.system ?? "";
  for (const [id, name] of PARAMS) $(id).value = options?.params?.[name] ?? "";
  // Open when set, so that what shapes the answers is in view.
  $("chat-options").open = Boolean(options?.system || Object.keys(options?.params ?? {}).length);
}

/** The panel's options: `{system, params}`, empty fields left out (the model's defaults). */
export function readOptions() {
  const params = {};
  for (const [id, name, parse] of PARAMS) {
    const raw = $(id).value.trim();
    if (raw !== "" && Number.isFinite(Number(raw))) params[name] = parse(raw);
  }
  return { system: $("opt-system").value.trim(), params };
}

// ---- Attachments ----

export const attachments = []; // [{name, text}] for the next message

export function initAttachments() {
  $("attach-file").addEventListener("change", async () => {
    const files = [...$("attach-file").files];
    $("attach-file").value = "";
    await Promise.all(files.map(attach)); // each shows at once, "reading" until it is read
  });
  renderAttachments();
}

async function attach(file) {
  const entry = { name: file.name, file, text: "", error: "", busy: true, status: "" };
  attachments.push(entry);
  renderAttachments();
  try {
    entry.text = PLAIN.test(file.name) ? await file.text() : await extract(file);
    if (entry.text.length > MAX_ATTACHED_CHARS) entry.text = entry.text.slice(0, MAX_ATTACHED_CHARS);
  } catch (error) {
    entry.error = error.message;
  }
  entry.busy = false;
  renderAttachments();
}

async function extract(file) {
  const body = { filename: file.name, data: await base64(file) };
  return (await call("/v1/nobusy/extract", { method: "POST", body })).text;
}

function base64(file) {
  return new Promise((resolve, reject) => {
    const reader = new FileReader();
    reader.addEventListener("load", () => resolve(String(reader.result).split(",", 2)[1] ?? ""));
    reader.addEventListener("error", () => reject(reader.error));
    reader.readAsDataURL(file);
  });
}

export function renderAttachments() {
  const list = $("attachments");
  list.replaceChildren();
  for (const entry of attachments) {
    const item = document.createElement("li");
    item.className = entry.error ? "attachment failed" : "attachment";
    let label = entry.name;
    if (entry.status) label = entry.status;
    else if (entry.busy) label = t("attachReading", { name: entry.name });
    else if (entry.error) label = t("attachFailed", { name: entry.name, reason: entry.error });
    else label = t("attachReady", { name: entry.name, n: entry.text.length });
    const text = document.createElement("span");
    text.textContent = label;
    const remove = document.createElement("button");
    remove.type = "button";
    remove.className = "icon";
    remove.textContent = "✕";
    remove.setAttribute("aria-label", `${t("attachRemove")}: ${entry.name}`);
    remove.addEventListener("click", () => {
      attachments.splice(attachments.indexOf(entry), 1);
      renderAttachments();
    });
    item.append(text, remove);
    list.append(item);
  }
  list.hidden = !attachments.length;
  $("attach-store-choice").hidden = !attachments.length;
}

/** Whether the attachments go into the conversation's knowledge base rather than the text. */
export function intoStore() {
  return $("attach-store").checked && attachments.some((a) => !a.busy && !a.error);
}

/**
 * Put the ready attachments in `conversation`'s own vector store (made on first use, its id kept
 * in `conversation.stores`), showing each file's upload and indexing; resolves when every file
 * is indexed or failed, to `{files}` for the message (the failed ones say why in the list).
 */
export async function storeAttachments(conversation) {
  const ready = attachments.filter((a) => !a.busy && !a.error);
  for (const entry of ready) entry.busy = true;
  const show = (entry, status) => {
    entry.status = status;
    renderAttachments();
  };
  try {
    if (!conversation.stores?.length) {
      const name = `chat: ${conversation.title || ""}`.slice(0, 64);
      const made = await call("/v1/vector_stores", { method: "POST", body: { name, metadata: { source: "chat" } } });
      conversation.stores = [made.id];
    }
    const storeId = conversation.stores[0];
    for (const entry of ready) {
      show(entry, t("attachUploading", { name: entry.name }));
      try {
        entry.fileId = (await upload(entry.file)).id;
        await call(`/v1/vector_stores/${storeId}/files`, { method: "POST", body: { file_id: entry.fileId } });
      } catch (error) {
        entry.error = error.message;
        show(entry, "");
      }
    }
    await indexed(storeId, ready.filter((e) => e.fileId && !e.error), show);
  } catch (error) {
    for (const entry of ready) if (!entry.fileId) entry.error = error.message;
  }
  const stored = ready.filter((e) => e.fileId && !e.error);
  for (const entry of ready) {
    entry.busy = false;
    entry.status = "";
  }
  // The failed stay listed with their reason; the stored leave the list for the message.
  attachments.splice(0, attachments.length, ...attachments.filter((a) => !stored.includes(a)));
  renderAttachments();
  return { files: stored.map((e) => ({ name: e.name, file_id: e.fileId, stored: true })) };
}

async function upload(file) {
  const form = new FormData();
  form.append("purpose", "assistants");
  form.append("file", file);
  const response = await fetch("/v1/files", { method: "POST", headers: authHeaders(), body: form });
  const data = await response.json().catch(() => null);
  if (!response.ok) throw new ApiError(response.status, data);
  return data;
}

async function indexed(storeId, entries, show) {
  let waiting = entries;
  while (waiting.length) {
    const next = [];
    for (const entry of waiting) {
      const placed = await call(`/v1/vector_stores/${storeId}/files/${entry.fileId}`);
      if (placed.status === "in_progress") {
        const progress = placed.nobusy?.progress ?? {};
        show(entry, t("attachIndexing", { name: entry.name, done: progress.done ?? 0, total: progress.total ?? "?" }));
        next.push(entry);
      } else if (placed.status === "completed") {
        show(entry, t("attachIndexed", { name: entry.name }));
      } else {
        entry.error = placed.last_error?.message ?? placed.status;
        show(entry, "");
      }
    }
    waiting = next;
    if (waiting.length) await new Promise((resolve) => setTimeout(resolve, 400));
  }
}

/** Take the ready attachments for a message: `{files, text}` (text to append to it). */
export function takeAttachments() {
  const ready = attachments.filter((a) => !a.busy && !a.error && a.text);
  attachments.splice(0, attachments.length, ...attachments.filter((a) => a.busy));
  renderAttachments();
  const text = ready.map((a) => `<document name="${a.name.replace(/"/g, "'")}">\n${a.text}\n</document>`).join("\n\n");
  return { files: ready.map((a) => ({ name: a.name, characters: a.text.length })), text };
}

// ---- Search ----

/** Whether `conversation` matches every word of `query` (title or any message). */
export function matches(conversation, query) {
  const words = query.toLowerCase().split(/\s+/).filter(Boolean);
  if (!words.length) return true;
  const text = [conversation.title, ...conversation.messages.map((m) => m.display ?? m.content ?? "")]
    .join("\n")
    .toLowerCase();
  return words.every((w) => text.includes(w));
}

// ---- Shortcuts ----

/** Wire the shortcuts (Enter sends, in chat.js): `actions` has newChat, search and stop
 * (which says whether there was an answer to stop). */
export function initShortcuts(actions) {
  const dialog = $("shortcuts");
  $("shortcuts-open").addEventListener("click", () => dialog.showModal());
  document.addEventListener("keydown", (event) => {
    if ($("view-chat").hidden || document.querySelector("dialog[open]:not(#shortcuts)")) return;
    const mod = event.ctrlKey || event.metaKey;
    const key = event.key.toLowerCase();
    if (mod && event.shiftKey && key === "o") actions.newChat();
    else if (mod && key === "k") actions.search();
    else if (mod && key === "/") dialog.open ? dialog.close() : dialog.showModal();
    else if (key === "escape" && actions.stop()) {
      // stopped an answer: nothing else to do with this Escape
    } else return;
    event.preventDefault();
  });
}
